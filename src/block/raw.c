/* The raw format: guest offsets are file offsets. Each request becomes one
 * file operation, plus the follow-ups the cache mode or the filesystem
 * forces (fdatasync after fallocate under writethrough, zero writes where
 * FALLOC_FL_ZERO_RANGE is unsupported). */
#include "block/block_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Zero-write fallback granularity: large enough to keep the syscall count
 * low, small enough not to matter as a lazily allocated buffer. */
#define RAW_ZERO_BUF (1u << 20)

struct raw {
	struct blk_node node;
	struct blk_file *file;
	void *zero_buf;             /* RAW_ZERO_BUF zero bytes, on first need */
};

struct raw_io {
	struct blk_fio fio;
	struct raw *raw;
	struct blk_req *req;
	uint64_t pos, end;          /* zero-write fallback progress */
	struct iovec ziov;
};

static void raw_finish(struct raw_io *io, int result)
{
	struct blk_req *req = io->req;
	free(io);
	req->done(req, result);
}

static void raw_simple_done(struct blk_fio *f, int result)
{
	raw_finish(container_of(f, struct raw_io, fio), result);
}

static void raw_start(struct raw_io *io, enum blk_fio_op op, uint64_t offset, uint64_t len,
		      blk_fio_done_fn done)
{
	io->fio.op = op;
	io->fio.offset = offset;
	io->fio.len = len;
	io->fio.done = done;
	blk_engine_submit(io->raw->file->eng, &io->fio);
}

/* fallocate() ignores O_DSYNC, so writethrough needs an explicit sync. */
static void raw_sync_or_finish(struct raw_io *io, int result)
{
	if (result == 0 && io->raw->file->dsync)
		raw_start(io, BLK_FIO_DATASYNC, 0, 0, raw_simple_done);
	else
		raw_finish(io, result);
}

static void raw_discard_done(struct blk_fio *f, int result)
{
	struct raw_io *io = container_of(f, struct raw_io, fio);
	if (result == -EOPNOTSUPP || result == -ENOSYS) {
		/* Discard is advisory: stop asking, report success. */
		io->raw->file->can_punch = false;
		io->raw->node.can_discard = false;
		raw_finish(io, 0);
		return;
	}
	raw_sync_or_finish(io, result);
}

static void raw_zero_write_done(struct blk_fio *f, int result);

static bool raw_zero_buf(struct raw *r)
{
	if (r->zero_buf)
		return true;
	uint32_t align = r->file->mem_align > 4096 ? r->file->mem_align : 4096;
	if (posix_memalign(&r->zero_buf, align, RAW_ZERO_BUF) != 0) {
		r->zero_buf = NULL;
		return false;
	}
	memset(r->zero_buf, 0, RAW_ZERO_BUF);
	return true;
}

static void raw_zero_write_next(struct raw_io *io)
{
	struct raw *r = io->raw;
	if (io->pos >= io->end) {
		/* The writes went through the O_DSYNC fd when writethrough. */
		raw_finish(io, 0);
		return;
	}
	if (!raw_zero_buf(r)) {
		raw_finish(io, -ENOMEM);
		return;
	}
	uint64_t n = io->end - io->pos;
	if (n > RAW_ZERO_BUF)
		n = RAW_ZERO_BUF;
	io->ziov.iov_base = r->zero_buf;
	io->ziov.iov_len = (size_t)n;
	io->fio.iov = &io->ziov;
	io->fio.iovcnt = 1;
	raw_start(io, BLK_FIO_WRITE, io->pos, n, raw_zero_write_done);
}

static void raw_zero_write_done(struct blk_fio *f, int result)
{
	struct raw_io *io = container_of(f, struct raw_io, fio);
	if (result < 0) {
		raw_finish(io, result);
		return;
	}
	io->pos += io->fio.len;
	raw_zero_write_next(io);
}

static void raw_zero_range_done(struct blk_fio *f, int result)
{
	struct raw_io *io = container_of(f, struct raw_io, fio);
	if (result == -EOPNOTSUPP || result == -ENOSYS) {
		io->raw->file->can_zero_range = false;
		raw_zero_write_next(io);
		return;
	}
	raw_sync_or_finish(io, result);
}

static int raw_submit(struct blk_node *n, struct blk_req *req)
{
	struct raw *r = container_of(n, struct raw, node);
	struct blk_file *file = r->file;
	struct raw_io *io = calloc(1, sizeof(*io));
	if (!io)
		return -ENOMEM;
	io->raw = r;
	io->req = req;
	io->fio.fd = file->fd;

	switch (req->op) {
	case BLK_OP_READ:
	case BLK_OP_WRITE:
		io->fio.iov = req->iov;
		io->fio.iovcnt = req->iovcnt;
		raw_start(io, req->op == BLK_OP_READ ? BLK_FIO_READ : BLK_FIO_WRITE, req->offset,
			  req->len, raw_simple_done);
		return 0;
	case BLK_OP_FLUSH:
		/* A read-only image has nothing of ours to make durable. */
		if (file->unsafe || file->readonly) {
			io->fio.done = raw_simple_done;
			blk_engine_complete_later(file->eng, &io->fio, 0);
		} else {
			raw_start(io, BLK_FIO_DATASYNC, 0, 0, raw_simple_done);
		}
		return 0;
	case BLK_OP_DISCARD:
		if (req->len == 0 || !file->can_punch) {
			io->fio.done = raw_simple_done;
			blk_engine_complete_later(file->eng, &io->fio, 0);
		} else {
			raw_start(io, BLK_FIO_PUNCH, req->offset, req->len, raw_discard_done);
		}
		return 0;
	case BLK_OP_WRITE_ZEROES:
		io->pos = req->offset;
		io->end = req->offset + req->len;
		if (req->len == 0) {
			io->fio.done = raw_simple_done;
			blk_engine_complete_later(file->eng, &io->fio, 0);
		} else if (file->can_zero_range) {
			raw_start(io, BLK_FIO_ZERO_RANGE, req->offset, req->len, raw_zero_range_done);
		} else if (raw_zero_buf(r)) {
			raw_zero_write_next(io); /* cannot finish synchronously now */
		} else {
			free(io);
			return -ENOMEM;
		}
		return 0;
	}
	free(io);
	return -EINVAL;
}

static void raw_close(struct blk_node *n)
{
	struct raw *r = container_of(n, struct raw, node);
	free(r->zero_buf);
	free(r);
}

static const struct blk_node_ops raw_node_ops = {
	.submit = raw_submit,
	.close = raw_close,
};

static struct blk_node *raw_open(struct blk_file *file, char *err, size_t errlen)
{
	struct raw *r = calloc(1, sizeof(*r));
	if (!r) {
		snprintf(err, errlen, "%s", strerror(ENOMEM));
		return NULL;
	}
	r->node.ops = &raw_node_ops;
	r->node.size = file->size;
	r->node.can_discard = file->can_punch && !file->readonly;
	r->file = file;
	return &r->node;
}

const struct blk_format_ops blk_format_raw = {
	.name = "raw",
	.open = raw_open,
};
