/* snapshot=on: a throwaway copy-on-write overlay over the (read-only)
 * image.
 *
 * The overlay is an unlinked sparse scratch file as large as the disk,
 * accessed through a raw node, plus a bitmap of SNAP_CLUSTER-sized
 * clusters that hold guest data in it ("present"). Reads take present
 * clusters from the overlay and the rest from the lower node. Writes,
 * discards and write-zeroes all go to the overlay; a cluster they only
 * partly cover, and which is not present yet, is first copied up: read
 * from the lower node, patched in memory, written whole. Discard is
 * treated as write-zeroes so that discarded data reads back as zeros, as
 * it does on a raw image that supports hole punching.
 *
 * A cluster being brought into the overlay is "busy" until that write
 * completes; another write touching it waits, because its own copy-up
 * would read the stale base and could overwrite the first write's data. */
#include "core/iov.h"
#include "block/block_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SNAP_CLUSTER (64u * 1024)
/* Copy-up buffers are read with O_DIRECT when cache=none. */
#define SNAP_BUF_ALIGN 4096u

struct snap_io;

struct snap {
	struct blk_node node;
	struct blk_node *lower;
	struct blk_file *scratch;
	struct blk_node *overlay;
	struct blk_engine *eng;
	uint64_t *present;
	uint64_t *busy;
	struct snap_io *waiters, **waiters_tail;
};

struct snap_io {
	struct snap *s;
	struct blk_req *req;
	int pending;                /* children in flight, +1 while issuing */
	int result;
	struct blk_fio defer;       /* completes an io with no children */
	struct snap_io *next;       /* on the waiters list */
};

struct snap_child {
	struct blk_req req;
	struct snap_io *parent;
	void *buf;                  /* copy-up cluster */
	uint64_t cluster;
	struct iovec iov[];         /* a slice of the parent's iovec */
};

static bool bit_get(const uint64_t *map, uint64_t i)
{
	return map[i / 64] >> (i % 64) & 1;
}

static void bit_set(uint64_t *map, uint64_t i)
{
	map[i / 64] |= UINT64_C(1) << (i % 64);
}

static void bit_clear(uint64_t *map, uint64_t i)
{
	map[i / 64] &= ~(UINT64_C(1) << (i % 64));
}

static uint64_t cluster_start(uint64_t c)
{
	return c * SNAP_CLUSTER;
}

static uint64_t cluster_end(const struct snap *s, uint64_t c)
{
	uint64_t e = (c + 1) * SNAP_CLUSTER;
	return e < s->node.size ? e : s->node.size;
}

static bool is_write_op(enum blk_op op)
{
	return op == BLK_OP_WRITE || op == BLK_OP_DISCARD || op == BLK_OP_WRITE_ZEROES;
}

static void snap_write_start(struct snap_io *io);

static void snap_finish(struct snap_io *io)
{
	struct snap *s = io->s;
	struct blk_req *req = io->req;
	int result = io->result;
	if (is_write_op(req->op) && req->len) {
		/* Every busy cluster in range is ours: others wait for it. On
		 * failure the overlay copy may be torn, so keep reading the
		 * base for clusters we were bringing in. */
		uint64_t c0 = req->offset / SNAP_CLUSTER;
		uint64_t c1 = (req->offset + req->len - 1) / SNAP_CLUSTER;
		for (uint64_t c = c0; c <= c1; c++) {
			if (!bit_get(s->busy, c))
				continue;
			bit_clear(s->busy, c);
			if (result == 0)
				bit_set(s->present, c);
		}
	}
	free(io);
	if (s->waiters) {
		struct snap_io *w = s->waiters;
		s->waiters = NULL;
		s->waiters_tail = &s->waiters;
		while (w) {
			struct snap_io *next = w->next;
			w->next = NULL;
			snap_write_start(w);
			w = next;
		}
	}
	req->done(req, result);
}

static void snap_defer_done(struct blk_fio *f, int result)
{
	(void)result;
	snap_finish(container_of(f, struct snap_io, defer));
}

/* Ends the issuing phase. An io that started no child finishes from the
 * next poll, never from inside blk_submit(). */
static void snap_issued(struct snap_io *io)
{
	if (--io->pending == 0)
		blk_engine_complete_later(io->s->eng, &io->defer, 0);
}

static void snap_fail(struct snap_io *io, int result)
{
	if (io->result == 0)
		io->result = result;
}

static void snap_child_put(struct snap_child *ch, int result)
{
	struct snap_io *io = ch->parent;
	if (result < 0)
		snap_fail(io, result);
	free(ch->buf);
	free(ch);
	if (--io->pending == 0)
		snap_finish(io);
}

static void snap_child_done(struct blk_req *req, int result)
{
	snap_child_put(container_of(req, struct snap_child, req), result);
}

static struct snap_child *child_new(struct snap_io *io, int iovcnt)
{
	size_t n = iovcnt > 0 ? (size_t)iovcnt : 1;
	struct snap_child *ch = calloc(1, sizeof(*ch) + sizeof(struct iovec) * n);
	if (!ch) {
		snap_fail(io, -ENOMEM);
		return NULL;
	}
	ch->parent = io;
	ch->req.done = snap_child_done;
	return ch;
}

static void child_submit(struct snap_child *ch, struct blk_node *to)
{
	struct snap_io *io = ch->parent;
	io->pending++;
	int r = to->ops->submit(to, &ch->req);
	if (r < 0) {
		io->pending--;
		snap_fail(io, r);
		free(ch->buf);
		free(ch);
	}
}

/* ---- reads ---------------------------------------------------------- */

static void snap_read_start(struct snap_io *io)
{
	struct snap *s = io->s;
	struct blk_req *req = io->req;
	uint64_t end = req->offset + req->len;
	io->pending = 1;
	for (uint64_t pos = req->offset; pos < end;) {
		/* The longest run of clusters that live in the same place. */
		bool in_overlay = bit_get(s->present, pos / SNAP_CLUSTER);
		uint64_t run_end = cluster_end(s, pos / SNAP_CLUSTER);
		while (run_end < end && bit_get(s->present, run_end / SNAP_CLUSTER) == in_overlay)
			run_end = cluster_end(s, run_end / SNAP_CLUSTER);
		if (run_end > end)
			run_end = end;
		struct snap_child *ch = child_new(io, req->iovcnt);
		if (!ch)
			break;
		ch->req.op = BLK_OP_READ;
		ch->req.offset = pos;
		ch->req.len = run_end - pos;
		ch->req.iov = ch->iov;
		ch->req.iovcnt = iov_slice(req->iov, req->iovcnt, pos - req->offset,
					       run_end - pos, ch->iov);
		child_submit(ch, in_overlay ? s->overlay : s->lower);
		pos = run_end;
	}
	snap_issued(io);
}

/* ---- writes, discards, write-zeroes --------------------------------- */

static void copyup_written(struct blk_req *creq, int result)
{
	snap_child_put(container_of(creq, struct snap_child, req), result);
}

/* The base cluster is in ch->buf: lay the request's data (or zeros) over
 * it and write the whole cluster to the overlay. */
static void copyup_read_done(struct blk_req *creq, int result)
{
	struct snap_child *ch = container_of(creq, struct snap_child, req);
	struct snap_io *io = ch->parent;
	struct snap *s = io->s;
	struct blk_req *req = io->req;
	if (result < 0) {
		snap_child_put(ch, result);
		return;
	}
	uint64_t cs = cluster_start(ch->cluster), ce = cluster_end(s, ch->cluster);
	uint64_t a = req->offset > cs ? req->offset : cs;
	uint64_t b = req->offset + req->len < ce ? req->offset + req->len : ce;
	if (req->op == BLK_OP_WRITE)
		iov_to_buf(req->iov, req->iovcnt, a - req->offset, (char *)ch->buf + (a - cs),
			       b - a);
	else
		memset((char *)ch->buf + (a - cs), 0, b - a);

	ch->req.op = BLK_OP_WRITE;
	ch->req.offset = cs;
	ch->req.len = ce - cs;
	ch->iov[0].iov_base = ch->buf;
	ch->iov[0].iov_len = (size_t)(ce - cs);
	ch->req.iov = ch->iov;
	ch->req.iovcnt = 1;
	ch->req.done = copyup_written;
	int r = s->overlay->ops->submit(s->overlay, &ch->req);
	if (r < 0)
		snap_child_put(ch, r);
}

static void copyup(struct snap_io *io, uint64_t c)
{
	struct snap *s = io->s;
	struct snap_child *ch = child_new(io, 1);
	if (!ch)
		return;
	uint64_t len = cluster_end(s, c) - cluster_start(c);
	/* Only a disk's last cluster can be short; rounding its read up keeps
	 * O_DIRECT happy, and whatever lies past the end is ignored (or read
	 * as zeros at end of file). */
	uint64_t rlen = (len + SNAP_BUF_ALIGN - 1) & ~(uint64_t)(SNAP_BUF_ALIGN - 1);
	if (posix_memalign(&ch->buf, SNAP_BUF_ALIGN, (size_t)rlen) != 0) {
		ch->buf = NULL;
		free(ch);
		snap_fail(io, -ENOMEM);
		return;
	}
	ch->cluster = c;
	ch->iov[0].iov_base = ch->buf;
	ch->iov[0].iov_len = (size_t)rlen;
	ch->req.op = BLK_OP_READ;
	ch->req.offset = cluster_start(c);
	ch->req.len = rlen;
	ch->req.iov = ch->iov;
	ch->req.iovcnt = 1;
	ch->req.done = copyup_read_done;
	child_submit(ch, s->lower);
}

/* Writes [a, b) of the request straight to the overlay. */
static void direct(struct snap_io *io, uint64_t a, uint64_t b)
{
	struct snap *s = io->s;
	struct blk_req *req = io->req;
	struct snap_child *ch = child_new(io, req->op == BLK_OP_WRITE ? req->iovcnt : 1);
	if (!ch)
		return;
	ch->req.offset = a;
	ch->req.len = b - a;
	if (req->op == BLK_OP_WRITE) {
		ch->req.op = BLK_OP_WRITE;
		ch->req.iov = ch->iov;
		ch->req.iovcnt = iov_slice(req->iov, req->iovcnt, a - req->offset, b - a, ch->iov);
	} else {
		/* Zeros, not a hole punch: raw's discard is advisory, but here
		 * the data must read back as zeros rather than from the base. */
		ch->req.op = BLK_OP_WRITE_ZEROES;
	}
	child_submit(ch, s->overlay);
}

static void snap_write_start(struct snap_io *io)
{
	struct snap *s = io->s;
	struct blk_req *req = io->req;
	io->pending = 1;
	if (req->len == 0) {
		snap_issued(io);
		return;
	}
	uint64_t off = req->offset, end = req->offset + req->len;
	uint64_t c0 = off / SNAP_CLUSTER, c1 = (end - 1) / SNAP_CLUSTER;
	for (uint64_t c = c0; c <= c1; c++) {
		if (!bit_get(s->present, c) && bit_get(s->busy, c)) {
			io->next = NULL;
			*s->waiters_tail = io;
			s->waiters_tail = &io->next;
			return;
		}
	}
	for (uint64_t c = c0; c <= c1; c++)
		if (!bit_get(s->present, c))
			bit_set(s->busy, c);

	bool head = !bit_get(s->present, c0) && (off > cluster_start(c0) || end < cluster_end(s, c0));
	bool tail = c1 != c0 && !bit_get(s->present, c1) && end < cluster_end(s, c1);
	uint64_t a = off, b = end;
	if (head) {
		copyup(io, c0);
		a = cluster_end(s, c0) < end ? cluster_end(s, c0) : end;
	}
	if (tail) {
		copyup(io, c1);
		b = cluster_start(c1);
	}
	if (a < b)
		direct(io, a, b);
	snap_issued(io);
}

static int snap_submit(struct blk_node *n, struct blk_req *req)
{
	struct snap *s = container_of(n, struct snap, node);
	struct snap_io *io = calloc(1, sizeof(*io));
	if (!io)
		return -ENOMEM;
	io->s = s;
	io->req = req;
	io->defer.done = snap_defer_done;
	switch (req->op) {
	case BLK_OP_READ:
		snap_read_start(io);
		return 0;
	case BLK_OP_WRITE:
	case BLK_OP_DISCARD:
	case BLK_OP_WRITE_ZEROES:
		snap_write_start(io);
		return 0;
	case BLK_OP_FLUSH:
		/* The base is read-only and the overlay is thrown away. */
		io->pending = 1;
		snap_issued(io);
		return 0;
	}
	free(io);
	return -EINVAL;
}

static void snap_close(struct blk_node *n)
{
	struct snap *s = container_of(n, struct snap, node);
	s->overlay->ops->close(s->overlay);
	blk_file_close(s->scratch);
	s->lower->ops->close(s->lower);
	free(s->present);
	free(s->busy);
	free(s);
}

static const struct blk_node_ops snap_ops = {
	.submit = snap_submit,
	.close = snap_close,
};

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return strdup(".");
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

struct blk_node *blk_snapshot_open(struct blk_node *lower, struct blk_engine *eng,
				   const char *image_path, char *err, size_t errlen)
{
	struct snap *s = calloc(1, sizeof(*s));
	char *dir = dir_of(image_path);
	uint64_t nclusters = (lower->size + SNAP_CLUSTER - 1) / SNAP_CLUSTER;
	size_t words = (size_t)((nclusters + 63) / 64) + 1;
	if (!s || !dir) {
		snprintf(err, errlen, "snapshot=on: %s", strerror(ENOMEM));
		goto fail;
	}
	s->present = calloc(words, sizeof(uint64_t));
	s->busy = calloc(words, sizeof(uint64_t));
	if (!s->present || !s->busy) {
		snprintf(err, errlen, "snapshot=on: %s", strerror(ENOMEM));
		goto fail;
	}
	s->scratch = blk_file_scratch(dir, lower->size, eng, err, errlen);
	if (!s->scratch)
		goto fail;
	s->overlay = blk_format_raw.open(s->scratch, err, errlen);
	if (!s->overlay)
		goto fail;
	free(dir);
	s->node.ops = &snap_ops;
	s->node.size = lower->size;
	s->node.can_discard = true;
	s->lower = lower;
	s->eng = eng;
	s->waiters_tail = &s->waiters;
	return &s->node;
fail:
	free(dir);
	if (s) {
		blk_file_close(s->scratch);
		free(s->present);
		free(s->busy);
		free(s);
	}
	lower->ops->close(lower);
	return NULL;
}
