/* The qcow2 format node for the VMM's block layer (block_int.h).
 *
 * Design: all metadata work (mapping, allocation, copy-on-write, zero
 * clusters, discard, flush) runs synchronously on the blk thread, on a
 * second file descriptor of the same image (reopened through
 * /proc/self/fd, with the same O_DIRECT setting; misaligned metadata I/O
 * drops O_DIRECT on that private fd for the call).
 * Guest data of clusters that are allocated and owned by the active
 * state (refcount 1) goes through the engine asynchronously, on the
 * blk_file's fd: reads of such clusters and in-place overwrites. Anything
 * else (allocating writes, partial-cluster copy-on-write, compressed
 * clusters, backing-file reads, zero/unallocated ranges) is done inline
 * before submit() returns, so allocating writes are serialized by
 * construction. Images with extended L2 entries, and cache=none images
 * with clusters under 4 KiB, do all writes inline.
 *
 * Freed clusters: their refcount decrements wait until a flush made the
 * dropped references durable AND no asynchronous data I/O is in flight
 * (an in-flight write could otherwise land in a cluster just reused).
 *
 * cache modes: writethrough flushes qcow2 metadata after every request
 * that changed it; unsafe still writes metadata back on FLUSH. */
#include "core/iov.h"
#include "block/block_int.h"
#include "block/image.h"
#include "block/qcow2_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QN_CHUNK (1u << 20)

struct qnode {
	struct blk_node node;
	struct blk_file *file;
	int mfd;
	struct qcow2 *q;
	struct image *backing;
	unsigned data_inflight;
	bool inline_writes;         /* no asynchronous writes at all */
	uint8_t *buf;               /* QN_CHUNK bytes */
};

struct qreq {
	struct qnode *n;
	struct blk_req *req;
	int pending;                /* children in flight, +1 while issuing */
	int result;
	struct blk_fio defer;
};

struct qchild {
	struct blk_fio fio;
	struct qreq *parent;
	struct iovec iov[];
};

static void qreq_final(struct blk_fio *f, int result)
{
	struct qreq *qr = container_of(f, struct qreq, defer);
	struct blk_req *req = qr->req;
	free(qr);
	req->done(req, result);
}

static void qreq_put(struct qreq *qr)
{
	if (--qr->pending)
		return;
	qr->defer.done = qreq_final;
	blk_engine_complete_later(qr->n->file->eng, &qr->defer, qr->result);
}

static void apply_if_idle(struct qnode *n)
{
	if (!n->data_inflight && n->q->npend_ready)
		qcow2_apply_ready(n->q); /* a failure leaves leaks at worst */
}

static void child_done(struct blk_fio *f, int result)
{
	struct qchild *c = container_of(f, struct qchild, fio);
	struct qreq *qr = c->parent;
	struct qnode *n = qr->n;
	if (result < 0 && !qr->result)
		qr->result = result;
	free(c);
	n->data_inflight--;
	apply_if_idle(n);
	qreq_put(qr);
}

static int issue_child(struct qreq *qr, enum blk_fio_op op, uint64_t pos, uint64_t len, uint64_t host)
{
	struct qnode *n = qr->n;
	struct blk_req *req = qr->req;
	struct qchild *c = calloc(1, sizeof(*c) + (size_t)req->iovcnt * sizeof(struct iovec));
	if (!c)
		return -ENOMEM;
	c->parent = qr;
	int cnt = iov_slice(req->iov, req->iovcnt, pos, len, c->iov);
	c->fio.op = op;
	c->fio.fd = n->file->fd;
	c->fio.offset = host;
	c->fio.len = len;
	c->fio.iov = c->iov;
	c->fio.iovcnt = cnt;
	c->fio.done = child_done;
	qr->pending++;
	n->data_inflight++;
	blk_engine_submit(n->file->eng, &c->fio);
	return 0;
}

static int do_read(struct qreq *qr)
{
	struct qnode *n = qr->n;
	struct blk_req *req = qr->req;
	uint64_t pos = 0;
	while (pos < req->len) {
		uint64_t off = req->offset + pos;
		struct qcow2_map m;
		int r = qcow2_map(n->q, off, req->len - pos, &m);
		if (r < 0)
			return r;
		if (m.type == QT_DATA) {
			r = issue_child(qr, BLK_FIO_READ, pos, m.len, m.host);
			if (r < 0)
				return r;
		} else if (m.type == QT_ZERO || (m.type == QT_UNALLOC && !n->backing)) {
			iov_memset(req->iov, req->iovcnt, pos, 0, m.len);
		} else {
			for (uint64_t k = 0; k < m.len; k += QN_CHUNK) {
				size_t len = m.len - k < QN_CHUNK ? (size_t)(m.len - k) : QN_CHUNK;
				r = qcow2_read(n->q, off + k, n->buf, len);
				if (r < 0)
					return r;
				iov_from_buf(req->iov, req->iovcnt, pos + k, n->buf, len);
			}
		}
		pos += m.len;
	}
	return 0;
}

static int write_inline(struct qnode *n, struct blk_req *req, uint64_t pos, uint64_t len)
{
	for (uint64_t k = 0; k < len; k += QN_CHUNK) {
		size_t l = len - k < QN_CHUNK ? (size_t)(len - k) : QN_CHUNK;
		iov_to_buf(req->iov, req->iovcnt, pos + k, n->buf, l);
		int r = qcow2_write(n->q, req->offset + pos + k, n->buf, l);
		if (r < 0)
			return r;
	}
	return 0;
}

static int do_write(struct qreq *qr, bool *meta)
{
	struct qnode *n = qr->n;
	struct blk_req *req = qr->req;
	if (n->inline_writes) {
		*meta = true;
		return write_inline(n, req, 0, req->len);
	}
	uint64_t pos = 0;
	while (pos < req->len) {
		struct qcow2_map m;
		int r = qcow2_map(n->q, req->offset + pos, req->len - pos, &m);
		if (r < 0)
			return r;
		if (m.type == QT_DATA && m.writable) {
			r = issue_child(qr, BLK_FIO_WRITE, pos, m.len, m.host);
		} else {
			*meta = true;
			r = write_inline(n, req, pos, m.len);
		}
		if (r < 0)
			return r;
		pos += m.len;
	}
	return 0;
}

static int qnode_submit(struct blk_node *bn, struct blk_req *req)
{
	struct qnode *n = container_of(bn, struct qnode, node);
	struct qreq *qr = calloc(1, sizeof(*qr));
	if (!qr)
		return -ENOMEM;
	qr->n = n;
	qr->req = req;
	qr->pending = 1;
	apply_if_idle(n);
	bool meta = false;
	int r = 0;
	switch (req->op) {
	case BLK_OP_READ:
		r = do_read(qr);
		break;
	case BLK_OP_WRITE:
		r = do_write(qr, &meta);
		break;
	case BLK_OP_FLUSH:
		r = qcow2_flush(n->q);
		apply_if_idle(n);
		break;
	case BLK_OP_DISCARD:
		meta = true;
		r = qcow2_discard(n->q, req->offset, req->len);
		break;
	case BLK_OP_WRITE_ZEROES:
		meta = true;
		r = qcow2_write_zeroes(n->q, req->offset, req->len, false);
		break;
	default:
		r = -EINVAL;
		break;
	}
	if (r == 0 && meta && n->file->dsync)
		r = qcow2_flush(n->q);
	if (r < 0)
		qr->result = r;
	qreq_put(qr);
	return 0;
}

static void qnode_close(struct blk_node *bn)
{
	struct qnode *n = container_of(bn, struct qnode, node);
	qcow2_close(n->q);
	image_close(n->backing);
	if (n->mfd >= 0)
		close(n->mfd);
	free(n->buf);
	free(n);
}

static const struct blk_node_ops qnode_ops = {
	.submit = qnode_submit,
	.close = qnode_close,
};

struct blk_node *qcow2_node_open(struct blk_file *file, char *err, size_t errlen)
{
	struct qnode *n = calloc(1, sizeof(*n));
	if (!n) {
		snprintf(err, errlen, "%s", strerror(ENOMEM));
		return NULL;
	}
	n->mfd = -1;
	n->file = file;
	char link[64], path[PATH_MAX];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", file->fd);
	ssize_t pl = readlink(link, path, sizeof(path) - 1);
	if (pl < 0) {
		snprintf(err, errlen, "cannot find the image's path (%s): %s", link, strerror(errno));
		goto fail;
	}
	path[pl] = 0;
	/* Same O_DIRECT-ness as the data path: mixing buffered and direct
	 * writes on one file makes every direct write flush page cache. */
	n->mfd = open(link, (file->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (file->direct ? O_DIRECT : 0));
	if (n->mfd < 0) {
		snprintf(err, errlen, "reopening the image for metadata: %s", strerror(errno));
		goto fail;
	}
	if (posix_memalign((void **)&n->buf, 4096, QN_CHUNK))
		n->buf = NULL;
	if (!n->buf) {
		snprintf(err, errlen, "%s", strerror(ENOMEM));
		goto fail;
	}
	n->q = qcow2_open(n->mfd, path, file->readonly, file->direct, 0, err, errlen);
	if (!n->q)
		goto fail;
	if (n->q->backing_file[0]) {
		char bpath[PATH_MAX], why[1024];
		if (image_resolve_backing(path, n->q->backing_file, bpath, sizeof(bpath)) < 0) {
			snprintf(err, errlen, "backing file name too long");
			goto fail;
		}
		/* The user named this image's format: its header is trusted. */
		struct image_open_opts bo = {
			.path = bpath,
			.format = n->q->backing_fmt[0] ? n->q->backing_fmt : NULL,
			.readonly = true,
			.allow_probed_backing = true,
		};
		n->backing = image_open(&bo, why, sizeof(why));
		if (!n->backing) {
			snprintf(err, errlen, "cannot open backing file: %s", why);
			goto fail;
		}
		n->q->backing_read = image_backing_read;
		n->q->backing_opaque = n->backing;
		n->q->has_backing = true;
		n->q->backing_size = image_size(n->backing);
	}
	n->q->defer_apply = true;
	/* With O_DIRECT and clusters smaller than a page, metadata and guest
	 * data share pages: misaligned metadata writes go through the page
	 * cache, and a concurrent direct write to the same page would fail
	 * to invalidate it (the kernel then reports EIO at the next fsync).
	 * Writes are serialized there instead. */
	n->inline_writes = n->q->ext_l2 || (file->direct && n->q->cluster_size < 4096);
	n->node.ops = &qnode_ops;
	n->node.size = n->q->size & ~(uint64_t)(BLK_SECTOR - 1);
	n->node.can_discard = !file->readonly;
	return &n->node;
fail:
	if (n->q)
		qcow2_close(n->q);
	image_close(n->backing);
	if (n->mfd >= 0)
		close(n->mfd);
	free(n->buf);
	free(n);
	return NULL;
}

const struct blk_format_ops blk_format_qcow2 = {
	.name = "qcow2",
	.open = qcow2_node_open,
};
