/* Crash-test writer/verifier for tests/qcow2/test-crash.sh.
 *
 *   crash_writer write IMG SEED      runs random operations forever through
 *                                    image.h (synchronous); before
 *                                    operation i it prints "O i", after a
 *                                    flush that made operations 0..n-1
 *                                    durable it prints "F n" (unbuffered)
 *   crash_writer verify IMG SEED LOG replays the sequence: every byte not
 *                                    touched by an operation after the last
 *                                    "F" line must hold its flushed value
 *   crash_writer nwrite IMG SEED [none]  the same through the VMM's qcow2
 *                                    block node (block_int.h), up to 8
 *                                    non-overlapping requests in flight,
 *                                    sector-aligned; "none" = O_DIRECT
 *   crash_writer nverify IMG SEED LOG
 *
 * Operations: writes of random size (sub-sector to multi-cluster), discards,
 * write-zeroes, compressed cluster writes, and flushes. Discard semantics
 * as in scribbler.c (the image has no backing file: discarded whole
 * clusters read as zeros). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <poll.h>

#include "block/block_int.h"
#include "block/image.h"
#include "block/qcow2.h"

enum { OP_WRITE, OP_DISCARD, OP_ZERO, OP_COMP, OP_FLUSH };

struct op {
	int type;
	uint64_t off, len;
	uint64_t data_seed;
	bool compressible;
};

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void gen_op(uint64_t *s, uint64_t size, uint32_t cs, struct op *o)
{
	unsigned k = (unsigned)(xs(s) % 100);
	memset(o, 0, sizeof(*o));
	o->data_seed = xs(s) | 1;
	o->compressible = xs(s) & 1;
	if (k < 8) {
		o->type = OP_FLUSH;
		return;
	}
	unsigned lk = (unsigned)(xs(s) % 4);
	uint64_t len = lk == 0 ? 1 + xs(s) % 4096 : lk == 1 ? 512 * (1 + xs(s) % 8) : 1 + xs(s) % (3ull * cs);
	uint64_t off = xs(s) % size;
	if (xs(s) % 2) {
		off &= ~511ull;
		len = (len + 511) & ~511ull;
	}
	if (len > size - off)
		len = size - off;
	o->off = off;
	o->len = len;
	if (k < 70) {
		o->type = OP_WRITE;
	} else if (k < 80) {
		o->type = OP_DISCARD;
	} else if (k < 90) {
		o->type = OP_ZERO;
	} else {
		o->type = OP_COMP;
		o->off = (off / cs) * cs;
		o->len = size - o->off < cs ? size - o->off : cs;
	}
}

/* The node only takes whole sectors and has no compressed writes. */
static void gen_op_node(uint64_t *s, uint64_t size, uint32_t cs, struct op *o)
{
	gen_op(s, size, cs, o);
	if (o->type == OP_FLUSH)
		return;
	if (o->type == OP_COMP)
		o->type = OP_WRITE;
	uint64_t end = (o->off + o->len + 511) & ~511ull;
	o->off &= ~511ull;
	if (end > size)
		end = size & ~511ull;
	o->len = end - o->off;
	if (!o->len)
		o->len = 512, o->off = (size & ~511ull) - 512;
}

static void gen_data(const struct op *o, uint8_t *buf)
{
	uint64_t s = o->data_seed;
	if (o->compressible) {
		uint8_t v = (uint8_t)xs(&s);
		for (uint64_t i = 0; i < o->len; i++)
			buf[i] = (uint8_t)(v + (i / 64));
		return;
	}
	for (uint64_t i = 0; i < o->len; i++)
		buf[i] = (uint8_t)(xs(&s) >> 24);
}

static void say(const char *c, unsigned long long n)
{
	char line[64];
	int l = snprintf(line, sizeof(line), "%s %llu\n", c, n);
	if (write(1, line, (size_t)l) != l)
		exit(2);
}

/* The effect of `o` on the expected content. */
static void apply(const struct op *o, uint8_t *mem, uint64_t size, uint32_t cs, uint8_t *buf)
{
	switch (o->type) {
	case OP_WRITE:
	case OP_COMP:
		gen_data(o, buf);
		memcpy(mem + o->off, buf, o->len);
		break;
	case OP_ZERO:
		memset(mem + o->off, 0, o->len);
		break;
	case OP_DISCARD:
		for (uint64_t c = (o->off + cs - 1) / cs * cs; c < o->off + o->len; c += cs) {
			uint64_t n = size - c < cs ? size - c : cs;
			if (c + n > o->off + o->len)
				break;
			memset(mem + c, 0, n);
		}
		break;
	default:
		break;
	}
}

/* ---- node mode ---------------------------------------------------------- */

struct nreq {
	struct blk_req req;
	struct iovec iov;
	uint8_t *buf;
	int done, result;
};

static void nreq_done(struct blk_req *req, int result)
{
	struct nreq *n = req->opaque;
	n->done = 1;
	n->result = result;
}

static void wait_all(struct blk_engine *eng, struct nreq *r, int n)
{
	for (;;) {
		int pending = 0;
		for (int i = 0; i < n; i++)
			pending += !r[i].done;
		if (!pending)
			return;
		struct pollfd p = { .fd = eng->event_fd, .events = POLLIN };
		poll(&p, 1, 100);
		blk_engine_poll(eng);
	}
}

static int node_writer(const char *path, uint64_t seed, bool direct)
{
	char err[1024];
	struct blk_engine *eng = blk_uring_create(64, err, sizeof(err));
	if (!eng)
		eng = blk_threads_create(err, sizeof(err));
	struct blk_file *f = eng ? blk_file_open(path, false, direct ? BLK_CACHE_NONE : BLK_CACHE_WRITEBACK, eng,
						 err, sizeof(err))
				 : NULL;
	struct blk_node *n = f ? blk_format_qcow2.open(f, err, sizeof(err)) : NULL;
	if (!n) {
		fprintf(stderr, "crash_writer: %s\n", err);
		return 1;
	}
	struct image_open_opts oo = { .path = path, .format = "qcow2", .readonly = true, .no_backing = true };
	struct image *img = image_open(&oo, err, sizeof(err));
	struct image_info info;
	image_get_info(img, &info);
	image_close(img);
	uint32_t cs = info.cluster_size;
	uint64_t size = n->size;
	struct nreq r[8];
	for (int i = 0; i < 8; i++)
		if (posix_memalign((void **)&r[i].buf, 4096, 3ull * cs + 8192))
			return 1;
	unsigned long long i = 0;
	struct op pending;
	bool have = false;
	uint64_t bseed = seed ^ 0x5deece66dull; /* batch sizes: not the op sequence */
	for (;;) {
		int k = 0;
		int want = 1 + (int)(xs(&bseed) % 8);
		struct op batch[8];
		while (k < want) {
			struct op o;
			if (have) {
				o = pending;
				have = false;
			} else {
				gen_op_node(&seed, size, cs, &o);
			}
			bool clash = o.type == OP_FLUSH && k > 0;
			for (int j = 0; j < k && !clash; j++)
				clash = o.off < batch[j].off + batch[j].len && batch[j].off < o.off + o.len;
			if (clash) {
				pending = o;
				have = true;
				break;
			}
			batch[k++] = o;
			if (o.type == OP_FLUSH)
				break;
		}
		for (int j = 0; j < k; j++) {
			struct op *o = &batch[j];
			struct nreq *q = &r[j];
			memset(&q->req, 0, sizeof(q->req));
			q->done = 0;
			q->req.offset = o->off;
			q->req.len = o->len;
			q->req.done = nreq_done;
			q->req.opaque = q;
			switch (o->type) {
			case OP_WRITE:
				gen_data(o, q->buf);
				q->iov.iov_base = q->buf;
				q->iov.iov_len = o->len;
				q->req.iov = &q->iov;
				q->req.iovcnt = 1;
				q->req.op = BLK_OP_WRITE;
				break;
			case OP_DISCARD:
				q->req.op = BLK_OP_DISCARD;
				break;
			case OP_ZERO:
				q->req.op = BLK_OP_WRITE_ZEROES;
				break;
			default:
				q->req.op = BLK_OP_FLUSH;
				q->req.len = 0;
				break;
			}
			say("O", i + (unsigned long long)j);
			int rr = n->ops->submit(n, &q->req);
			if (rr < 0) {
				fprintf(stderr, "crash_writer: submit: %s\n", strerror(-rr));
				return 1;
			}
		}
		wait_all(eng, r, k);
		for (int j = 0; j < k; j++) {
			if (r[j].result < 0) {
				fprintf(stderr, "crash_writer: op %llu: %s\n", i + (unsigned long long)j,
					strerror(-r[j].result));
				return 1;
			}
		}
		i += (unsigned long long)k;
		if (k && batch[k - 1].type == OP_FLUSH)
			say("F", i);
	}
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "nwrite"))
		return node_writer(argv[2], strtoull(argv[3], NULL, 0) | 1, argc > 4 && !strcmp(argv[4], "none"));
	bool node = argc >= 2 && !strcmp(argv[1], "nverify");
	if (argc < 4) {
		fprintf(stderr, "usage: crash_writer write|verify IMG SEED [LOG]\n");
		return 1;
	}
	bool verify = !strcmp(argv[1], "verify") || node;
	char err[1024];
	struct image_open_opts oo = { .path = argv[2], .format = "qcow2", .readonly = verify };
	struct image *img = image_open(&oo, err, sizeof(err));
	if (!img) {
		fprintf(stderr, "crash_writer: %s\n", err);
		return 1;
	}
	struct image_info info;
	image_get_info(img, &info);
	uint64_t size = image_size(img);
	uint32_t cs = info.cluster_size;
	uint64_t seed = strtoull(argv[3], NULL, 0) | 1;
	uint8_t *buf = malloc(4ull * cs + 8192);
	if (!verify) {
		for (unsigned long long i = 0;; i++) {
			struct op o;
			gen_op(&seed, size, cs, &o);
			say("O", i);
			int r = 0;
			switch (o.type) {
			case OP_WRITE:
				gen_data(&o, buf);
				r = image_write(img, o.off, buf, o.len);
				break;
			case OP_COMP:
				gen_data(&o, buf);
				r = image_write_compressed(img, o.off, buf, o.len);
				break;
			case OP_DISCARD:
				r = image_discard(img, o.off, o.len);
				break;
			case OP_ZERO:
				r = image_write_zeroes(img, o.off, o.len, i & 1);
				break;
			case OP_FLUSH:
				r = image_flush(img);
				if (r == 0)
					say("F", i + 1);
				break;
			}
			if (r < 0) {
				fprintf(stderr, "crash_writer: op %llu type %d: %s\n", i, o.type, strerror(-r));
				return 1;
			}
		}
	}
	if (argc < 5)
		return 1;
	FILE *log = fopen(argv[4], "r");
	if (!log) {
		perror("log");
		return 1;
	}
	unsigned long long flushed = 0, started = 0, n;
	char c;
	while (fscanf(log, " %c %llu", &c, &n) == 2) {
		if (c == 'F')
			flushed = n;
		else if (c == 'O')
			started = n;
	}
	fclose(log);
	uint8_t *mem = calloc(1, size), *unsure = calloc(1, size), *got = malloc(size);
	if (!mem || !unsure || !got)
		return 1;
	for (unsigned long long i = 0; i <= started; i++) {
		struct op o;
		if (node)
			gen_op_node(&seed, size, cs, &o);
		else
			gen_op(&seed, size, cs, &o);
		if (i < flushed) {
			apply(&o, mem, size, cs, buf);
		} else if (o.type != OP_FLUSH) {
			uint64_t a = o.off, b = o.off + o.len;
			memset(unsure + a, 1, b - a);
		}
	}
	int r = image_read(img, 0, got, size);
	if (r < 0) {
		fprintf(stderr, "crash_writer: read: %s\n", strerror(-r));
		return 1;
	}
	uint64_t bad = 0, first = 0;
	for (uint64_t i = 0; i < size; i++) {
		if (!unsure[i] && got[i] != mem[i]) {
			if (!bad)
				first = i;
			bad++;
		}
	}
	image_close(img);
	if (bad) {
		fprintf(stderr, "crash_writer: %llu flushed bytes lost (first at %llu); flushed=%llu started=%llu\n",
			(unsigned long long)bad, (unsigned long long)first, flushed, started);
		return 1;
	}
	printf("verified: %llu operations flushed, %llu started\n", flushed, started);
	return 0;
}
