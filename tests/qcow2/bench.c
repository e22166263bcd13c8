/* 4K random-write IOPS through the block layer's format nodes: raw vs
 * qcow2 (fresh image: every first write to a cluster allocates; then the
 * same again on the now-allocated image), queue depth 32, io_uring.
 *
 *   bench [DIR] [cache: writeback|none] [size MiB] [ops]
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "block/block_int.h"
#include "block/image.h"
#include "block/qcow2.h"

#define QD 32

struct slot {
	struct blk_req req;
	struct iovec iov;
	int busy;
};

static uint64_t rng = 0x1234567;
static unsigned completed, submitted, total;
static int errors;

static uint64_t xs(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void done(struct blk_req *req, int result)
{
	struct slot *s = req->opaque;
	if (result < 0)
		errors++;
	s->busy = 0;
	completed++;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double run(struct blk_engine *eng, struct blk_node *n, uint64_t size, unsigned ops)
{
	static struct slot slots[QD];
	static void *bufs[QD];
	for (int i = 0; i < QD; i++) {
		if (!bufs[i]) {
			if (posix_memalign(&bufs[i], 4096, 4096))
				exit(1);
			memset(bufs[i], 0xab, 4096);
		}
		slots[i].busy = 0;
	}
	completed = submitted = 0;
	total = ops;
	double t0 = now();
	while (completed < total) {
		for (int i = 0; i < QD && submitted < total; i++) {
			if (slots[i].busy)
				continue;
			struct slot *s = &slots[i];
			memset(&s->req, 0, sizeof(s->req));
			s->iov.iov_base = bufs[i];
			s->iov.iov_len = 4096;
			s->req.op = BLK_OP_WRITE;
			s->req.offset = (xs() % (size / 4096)) * 4096;
			s->req.iov = &s->iov;
			s->req.iovcnt = 1;
			s->req.len = 4096;
			s->req.done = done;
			s->req.opaque = s;
			s->busy = 1;
			if (n->ops->submit(n, &s->req) < 0) {
				errors++;
				s->busy = 0;
				completed++;
			}
			submitted++;
		}
		struct pollfd p = { .fd = eng->event_fd, .events = POLLIN };
		poll(&p, 1, 100);
		blk_engine_poll(eng);
	}
	return ops / (now() - t0);
}

static void bench(const char *dir, const char *fmt, enum blk_cache cache, uint64_t size, unsigned ops)
{
	char path[512], err[512];
	snprintf(path, sizeof(path), "%s/bench.%s", dir, fmt);
	unlink(path);
	if (!strcmp(fmt, "raw")) {
		if (image_create_raw(path, size, NULL, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s\n", err);
			exit(1);
		}
	} else {
		struct qcow2_create_opts o = { .size = size };
		if (qcow2_create(path, &o, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s\n", err);
			exit(1);
		}
	}
	struct blk_engine *eng = blk_uring_create(128, err, sizeof(err));
	if (!eng)
		eng = blk_threads_create(err, sizeof(err));
	struct blk_file *f = blk_file_open(path, false, cache, eng, err, sizeof(err));
	if (!f) {
		fprintf(stderr, "%s\n", err);
		exit(1);
	}
	struct blk_node *n = !strcmp(fmt, "raw") ? blk_format_raw.open(f, err, sizeof(err))
						 : blk_format_qcow2.open(f, err, sizeof(err));
	if (!n) {
		fprintf(stderr, "%s\n", err);
		exit(1);
	}
	rng = 0x1234567;
	double fresh = run(eng, n, size, ops);
	rng = 0x1234567;
	double again = run(eng, n, size, ops);
	n->ops->close(n);
	blk_file_close(f);
	blk_engine_destroy(eng);
	printf("%-6s cache=%-9s engine=%s: fresh %8.0f IOPS, allocated %8.0f IOPS%s\n", fmt,
	       cache == BLK_CACHE_NONE ? "none" : "writeback", eng ? "io_uring" : "threads", fresh, again,
	       errors ? " (ERRORS)" : "");
	unlink(path);
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "/var/tmp";
	enum blk_cache cache = argc > 2 && !strcmp(argv[2], "none") ? BLK_CACHE_NONE : BLK_CACHE_WRITEBACK;
	uint64_t size = (argc > 3 ? strtoull(argv[3], NULL, 0) : 1024) << 20;
	unsigned ops = argc > 4 ? (unsigned)atoi(argv[4]) : 50000;
	bench(dir, "raw", cache, size, ops);
	bench(dir, "qcow2", cache, size, ops);
	return errors != 0;
}
