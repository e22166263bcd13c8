/* aio=io_uring: one ring per blk, its completions signalled through a
 * registered eventfd.
 *
 * Requests are submitted as they come (one io_uring_enter each) unless the
 * engine is plugged; then SQEs accumulate and unplug submits them in one
 * call. The completions come back to the thread that submitted (io_uring
 * runs them as task_work there), so submitting from a vCPU thread would
 * interrupt KVM_RUN: submit from the I/O thread.
 *
 * At most `cap` (the CQ size) requests are in the kernel at once, so the
 * completion queue can never overflow; the rest wait in `backlog` and are
 * started as completions are reaped. Short reads and writes are restarted
 * for the remainder. */
#include "block/block_int.h"

#include <errno.h>
#include <linux/falloc.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct uring {
	struct blk_engine e;
	struct io_uring ring;
	unsigned cap;
	unsigned in_kernel;
	bool unsubmitted;           /* SQEs queued but not yet accepted by the kernel */
	bool single;                /* IORING_OP_READ/WRITE exist (Linux 5.6) */
	struct blk_fio *backlog, **backlog_tail;
};

/* Queues an SQE for `f`; false when the SQ ring is full. */
static bool prep(struct uring *u, struct blk_fio *f)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	if (!sqe) {
		io_uring_submit(&u->ring);
		sqe = io_uring_get_sqe(&u->ring);
		if (!sqe)
			return false;
	}
	const struct iovec *iov;
	int cnt;
	uint64_t off;
	switch (f->op) {
	/* A single segment goes as plain READ/WRITE: no iovec for the
	 * kernel to import and keep when it punts the request to a worker. */
	case BLK_FIO_READ:
		blk_fio_cur(f, &iov, &cnt, &off);
		if (cnt == 1 && u->single && iov[0].iov_len <= INT32_MAX)
			io_uring_prep_read(sqe, f->fd, iov[0].iov_base, (unsigned)iov[0].iov_len, off);
		else
			io_uring_prep_readv(sqe, f->fd, iov, (unsigned)cnt, off);
		break;
	case BLK_FIO_WRITE:
		blk_fio_cur(f, &iov, &cnt, &off);
		if (cnt == 1 && u->single && iov[0].iov_len <= INT32_MAX)
			io_uring_prep_write(sqe, f->fd, iov[0].iov_base, (unsigned)iov[0].iov_len, off);
		else
			io_uring_prep_writev(sqe, f->fd, iov, (unsigned)cnt, off);
		break;
	case BLK_FIO_DATASYNC:
		io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
		break;
	case BLK_FIO_PUNCH:
		io_uring_prep_fallocate(sqe, f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					(off_t)f->offset, (off_t)f->len);
		break;
	case BLK_FIO_ZERO_RANGE:
		io_uring_prep_fallocate(sqe, f->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
					(off_t)f->offset, (off_t)f->len);
		break;
	}
	io_uring_sqe_set_data(sqe, f);
	u->in_kernel++;
	return true;
}

static void to_backlog(struct uring *u, struct blk_fio *f)
{
	f->next = NULL;
	*u->backlog_tail = f;
	u->backlog_tail = &f->next;
}

static void flush_sq(struct uring *u)
{
	int r = io_uring_submit(&u->ring);
	if (r >= 0) {
		u->unsubmitted = false;
		return;
	}
	/* EAGAIN/EBUSY/EINTR: the kernel took nothing. The SQEs stay in
	 * the ring; retry from the next poll, which the kick guarantees
	 * even if nothing else is in flight. */
	u->unsubmitted = true;
	blk_engine_kick(&u->e);
}

static void uring_submit(struct blk_engine *e, struct blk_fio *f)
{
	struct uring *u = container_of(e, struct uring, e);
	if (u->backlog || u->in_kernel >= u->cap || !prep(u, f)) {
		to_backlog(u, f);
		return;
	}
	if (e->plugged)
		u->unsubmitted = true;
	else
		flush_sq(u);
}

static void uring_unplug(struct blk_engine *e)
{
	struct uring *u = container_of(e, struct uring, e);
	if (u->unsubmitted)
		flush_sq(u);
}

/* Called only from blk_engine_poll(), plugged. */
static void uring_reap(struct blk_engine *e)
{
	struct uring *u = container_of(e, struct uring, e);
	struct io_uring_cqe *cqe;
	while (io_uring_peek_cqe(&u->ring, &cqe) == 0) {
		struct blk_fio *f = io_uring_cqe_get_data(cqe);
		int res = cqe->res;
		io_uring_cqe_seen(&u->ring, cqe);
		u->in_kernel--;
		int result = res < 0 ? res : 0;
		if (f->op == BLK_FIO_READ || f->op == BLK_FIO_WRITE) {
			if (blk_fio_progress(f, res, &result)) {
				/* The restart goes to the back: fairness
				 * matters less than simplicity here. */
				to_backlog(u, f);
				continue;
			}
		}
		blk_engine_finish(e, f, result);
	}
	while (u->backlog && u->in_kernel < u->cap) {
		struct blk_fio *f = u->backlog;
		if (!prep(u, f))
			break;
		u->backlog = f->next;
		if (!u->backlog)
			u->backlog_tail = &u->backlog;
		f->next = NULL;
		/* Reaping happens inside a plugged poll: unplug submits. */
		u->unsubmitted = true;
	}
}

static void uring_destroy(struct blk_engine *e)
{
	struct uring *u = container_of(e, struct uring, e);
	io_uring_queue_exit(&u->ring);
	close(e->event_fd);
	free(u);
}

static const struct blk_engine_ops uring_ops = {
	.name = "io_uring",
	.submit = uring_submit,
	.reap = uring_reap,
	.unplug = uring_unplug,
	.destroy = uring_destroy,
};

struct blk_engine *blk_uring_create(unsigned depth, char *err, size_t errlen)
{
	struct uring *u = calloc(1, sizeof(*u));
	if (!u) {
		snprintf(err, errlen, "%s", strerror(ENOMEM));
		return NULL;
	}
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	int r = io_uring_queue_init_params(depth, &u->ring, &p);
	if (r < 0) {
		snprintf(err, errlen, "io_uring_setup: %s", strerror(-r));
		free(u);
		return NULL;
	}
	static const int needed[] = { IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC,
				      IORING_OP_FALLOCATE };
	struct io_uring_probe *probe = io_uring_get_probe_ring(&u->ring);
	if (!probe) {
		snprintf(err, errlen, "io_uring cannot report its opcodes (kernel too old)");
		goto fail;
	}
	for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
		if (!io_uring_opcode_supported(probe, needed[i])) {
			snprintf(err, errlen, "io_uring lacks opcode %d (kernel too old)", needed[i]);
			io_uring_free_probe(probe);
			goto fail;
		}
	}
	u->single = io_uring_opcode_supported(probe, IORING_OP_READ) &&
		    io_uring_opcode_supported(probe, IORING_OP_WRITE);
	io_uring_free_probe(probe);
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (efd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		goto fail;
	}
	r = io_uring_register_eventfd(&u->ring, efd);
	if (r < 0) {
		snprintf(err, errlen, "io_uring_register_eventfd: %s", strerror(-r));
		close(efd);
		goto fail;
	}
	blk_engine_init(&u->e, &uring_ops, efd);
	u->cap = p.cq_entries;
	u->backlog_tail = &u->backlog;
	return &u->e;
fail:
	io_uring_queue_exit(&u->ring);
	free(u);
	return NULL;
}
