/* The block layer against real files: every operation under both aio
 * engines and every cache mode, read-only images, image locking (within
 * the process and across processes), snapshot=on overlays, error messages,
 * and the fallbacks (zero writes where FALLOC_FL_ZERO_RANGE is missing,
 * aio=threads where io_uring is forbidden). Completions are driven the way
 * a device's I/O thread drives them: poll() on blk_event_fd(), then
 * blk_poll(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "block/block.h"
#include "core/log.h"

#define MiB (1024u * 1024u)
#define CLUSTER (64u * 1024u) /* snapshot.c's overlay granularity */

/* ---- fixture: a scratch directory per test -------------------------- */

struct mode {
	enum blk_aio aio;
	enum blk_cache cache;
};

struct fx {
	struct mode mode;
	char dir[64];
	char path[128];
	char loopdev[64];           /* a loop device to detach at teardown */
};

static int fx_setup_in(void **state, const char *base)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -1;
	if (*state)
		fx->mode = *(const struct mode *)*state;
	snprintf(fx->dir, sizeof(fx->dir), "%s/kestrel-blk-XXXXXX", base);
	if (!mkdtemp(fx->dir)) {
		free(fx);
		return -1;
	}
	snprintf(fx->path, sizeof(fx->path), "%s/disk.img", fx->dir);
	*state = fx;
	return 0;
}

static int fx_setup(void **state)
{
	return fx_setup_in(state, "/var/tmp");
}

static int fx_setup_shm(void **state)
{
	return fx_setup_in(state, "/dev/shm");
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;
	char p[256];
	if (fx->loopdev[0]) {
		snprintf(p, sizeof(p), "losetup -d %s", fx->loopdev);
		if (system(p) != 0)
			fprintf(stderr, "could not detach %s\n", fx->loopdev);
	}
	snprintf(p, sizeof(p), "%s/disk.img", fx->dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/sub", fx->dir);
	rmdir(p);
	rmdir(fx->dir);
	free(fx);
	return 0;
}

/* ---- data patterns -------------------------------------------------- */

static uint8_t pat(uint32_t seed, uint64_t off)
{
	uint64_t x = (off + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)seed * 0xBF58476D1CE4E5B9ull;
	return (uint8_t)(x >> 56 ^ x >> 24);
}

static void fill(void *buf, uint64_t len, uint32_t seed, uint64_t off)
{
	for (uint64_t i = 0; i < len; i++)
		((uint8_t *)buf)[i] = pat(seed, off + i);
}

static bool is_pattern(const void *buf, uint64_t len, uint32_t seed, uint64_t off)
{
	for (uint64_t i = 0; i < len; i++)
		if (((const uint8_t *)buf)[i] != pat(seed, off + i))
			return false;
	return true;
}

static bool is_zero(const void *buf, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++)
		if (((const uint8_t *)buf)[i])
			return false;
	return true;
}

static void *abuf(size_t len)
{
	void *p = NULL;
	assert_int_equal(posix_memalign(&p, 4096, len ? len : 4096), 0);
	return p;
}

/* An image of `size` bytes filled with pattern `seed`. */
static void make_image(const char *path, uint64_t size, uint32_t seed)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	uint8_t *b = malloc(MiB);
	assert_non_null(b);
	for (uint64_t off = 0; off < size; off += MiB) {
		uint64_t n = size - off < MiB ? size - off : MiB;
		fill(b, n, seed, off);
		assert_int_equal(pwrite(fd, b, n, (off_t)off), (ssize_t)n);
	}
	free(b);
	close(fd);
}

static uint8_t *slurp(const char *path, uint64_t *size)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	uint8_t *b = malloc((size_t)st.st_size + 1);
	assert_non_null(b);
	assert_int_equal(pread(fd, b, (size_t)st.st_size, 0), st.st_size);
	close(fd);
	*size = (uint64_t)st.st_size;
	return b;
}

static uint64_t fnv1a(const uint8_t *b, uint64_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (uint64_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t file_hash(const char *path)
{
	uint64_t n;
	uint8_t *b = slurp(path, &n);
	uint64_t h = fnv1a(b, n) ^ n;
	free(b);
	return h;
}

/* ---- requests ------------------------------------------------------- */

struct tio {
	struct blk_req req;         /* first: done() casts back */
	struct iovec iov[64];
	int result;
	int calls;
	int *pending;
};

static void tio_done(struct blk_req *req, int result)
{
	struct tio *t = (struct tio *)req;
	t->result = result;
	t->calls++;
	(*t->pending)--;
}

/* Runs the I/O loop until `*pending` reaches zero; returns the sum of
 * blk_poll()'s counts. */
static int drive(struct blk *b, int *pending)
{
	int total = 0;
	while (*pending > 0) {
		struct pollfd p = { .fd = blk_event_fd(b), .events = POLLIN };
		int r = poll(&p, 1, 10000);
		assert_true(r > 0); /* a lost wakeup shows up as a timeout */
		total += blk_poll(b);
	}
	return total;
}

/* Prepares `t` for op over `len` bytes of `buf`, split into `nseg`
 * equal segments. */
static void tio_init(struct tio *t, int *pending, enum blk_op op, uint64_t off, uint64_t len,
		     void *buf, int nseg)
{
	memset(t, 0, sizeof(*t));
	t->pending = pending;
	t->req.op = op;
	t->req.offset = off;
	t->req.done = tio_done;
	if (op == BLK_OP_READ || op == BLK_OP_WRITE) {
		for (int i = 0; i < nseg; i++) {
			t->iov[i].iov_base = (char *)buf + len / (uint64_t)nseg * (uint64_t)i;
			t->iov[i].iov_len = (size_t)(len / (uint64_t)nseg);
		}
		t->req.iov = t->iov;
		t->req.iovcnt = nseg;
	} else {
		t->req.len = len;
	}
}

/* Submits one request and waits for it: the submit error, or the result. */
static int run_seg(struct blk *b, enum blk_op op, uint64_t off, uint64_t len, void *buf, int nseg)
{
	struct tio t;
	int pending = 1;
	tio_init(&t, &pending, op, off, len, buf, nseg);
	int r = blk_submit(b, &t.req);
	if (r < 0)
		return r;
	assert_int_equal(drive(b, &pending), 1);
	assert_int_equal(t.calls, 1);
	assert_ptr_equal(t.req.done, tio_done); /* handed back untouched */
	return t.result;
}

static int run(struct blk *b, enum blk_op op, uint64_t off, uint64_t len, void *buf)
{
	return run_seg(b, op, off, len, buf, 1);
}

static struct blk *open_blk(const char *path, struct mode m, bool readonly, bool snapshot)
{
	struct blk_options o = {
		.path = path, .readonly = readonly, .cache = m.cache, .aio = m.aio, .snapshot = snapshot,
	};
	char err[512] = "";
	struct blk *b = blk_open(&o, err, sizeof(err));
	if (!b)
		fail_msg("blk_open(%s): %s", path, err);
	return b;
}

/* Opens and expects failure; returns the message. */
static void open_fails(struct blk_options o, char *err, size_t errlen)
{
	err[0] = 0;
	struct blk *b = blk_open(&o, err, errlen);
	if (b) {
		blk_close(b);
		fail_msg("blk_open(%s) succeeded", o.path);
	}
	assert_non_null(strchr(err, '\'')); /* names the file */
	assert_null(strchr(err, '\n'));     /* one line */
}

/* ---- every operation, per aio engine and cache mode ------------------ */

static void test_ops(void **state)
{
	struct fx *fx = *state;
	const uint64_t size = 8 * MiB;
	make_image(fx->path, size, 1);
	struct blk *b = open_blk(fx->path, fx->mode, false, false);
	assert_int_equal(blk_size(b), size);
	assert_false(blk_readonly(b));
	uint32_t align = blk_alignment(b);
	bool direct = fx->mode.cache == BLK_CACHE_NONE || fx->mode.cache == BLK_CACHE_DIRECTSYNC;
	if (direct)
		assert_true(align >= 512 && align <= 4096 && (align & (align - 1)) == 0);
	else
		assert_int_equal(align, 512);

	uint8_t *w = abuf(MiB), *r = abuf(MiB);

	/* Patterns in, patterns out: one segment, several, and a read that
	 * straddles written and untouched data. */
	fill(w, 64 * 1024, 2, 0);
	assert_int_equal(run(b, BLK_OP_WRITE, 0, 64 * 1024, w), 0);
	fill(w, 12288, 3, MiB + 4096);
	assert_int_equal(run_seg(b, BLK_OP_WRITE, MiB + 4096, 12288, w, 3), 0);
	assert_int_equal(run_seg(b, BLK_OP_READ, 0, 128 * 1024, r, 4), 0);
	assert_true(is_pattern(r, 64 * 1024, 2, 0));
	assert_true(is_pattern(r + 64 * 1024, 64 * 1024, 1, 64 * 1024));
	assert_int_equal(run(b, BLK_OP_READ, MiB, 5 * 4096, r), 0);
	assert_true(is_pattern(r, 4096, 1, MiB));
	assert_true(is_pattern(r + 4096, 12288, 3, MiB + 4096));
	assert_true(is_pattern(r + 16384, 4096, 1, MiB + 16384));

	/* A 1 MiB request in 64 segments, at the very end of the disk. */
	fill(w, MiB, 4, size - MiB);
	assert_int_equal(run_seg(b, BLK_OP_WRITE, size - MiB, MiB, w, 64), 0);
	memset(r, 0, MiB);
	assert_int_equal(run_seg(b, BLK_OP_READ, size - MiB, MiB, r, 16), 0);
	assert_true(is_pattern(r, MiB, 4, size - MiB));

	assert_int_equal(run(b, BLK_OP_FLUSH, 0, 0, NULL), 0);

	/* Discard is advisory; where holes can be punched it reads zeros. */
	assert_int_equal(run(b, BLK_OP_DISCARD, 0, 64 * 1024, NULL), 0);
	assert_int_equal(run(b, BLK_OP_READ, 0, 64 * 1024, r), 0);
	if (blk_can_discard(b))
		assert_true(is_zero(r, 64 * 1024));
	else
		assert_true(is_pattern(r, 64 * 1024, 2, 0));

	/* Write-zeroes always reads zeros, and leaves neighbours alone. */
	assert_int_equal(run(b, BLK_OP_WRITE_ZEROES, MiB + 4096, 8192, NULL), 0);
	assert_int_equal(run(b, BLK_OP_READ, MiB, 4 * 4096, r), 0);
	assert_true(is_pattern(r, 4096, 1, MiB));
	assert_true(is_zero(r + 4096, 8192));
	assert_true(is_pattern(r + 12288, 4096, 3, MiB + 12288));

	/* Zero-length requests complete, successfully. */
	assert_int_equal(run(b, BLK_OP_READ, 4096, 0, r), 0);
	assert_int_equal(run(b, BLK_OP_DISCARD, size, 0, NULL), 0);

	/* Unaligned memory is handled (bounced under O_DIRECT), in both
	 * directions, with the data where it belongs. */
	fill(w + 1, 8192, 5, 2 * MiB);
	assert_int_equal(run(b, BLK_OP_WRITE, 2 * MiB, 8192, w + 1), 0);
	memset(r, 0xAA, 8192 + 2);
	assert_int_equal(run_seg(b, BLK_OP_READ, 2 * MiB, 8192, r + 1, 2), 0);
	assert_int_equal(r[0], 0xAA);
	assert_true(is_pattern(r + 1, 8192, 5, 2 * MiB));
	assert_int_equal(r[8193], 0xAA);

	/* Offsets and lengths that are not whole sectors are rejected, and
	 * so is anything reaching past the end. Nothing is called back. */
	struct tio t;
	int pending = 1;
	tio_init(&t, &pending, BLK_OP_READ, 100, 4096, r, 1);
	assert_int_equal(blk_submit(b, &t.req), -EINVAL);
	tio_init(&t, &pending, BLK_OP_WRITE, 4096, 1000, w, 1);
	assert_int_equal(blk_submit(b, &t.req), -EINVAL);
	tio_init(&t, &pending, BLK_OP_READ, size, 4096, r, 1);
	assert_int_equal(blk_submit(b, &t.req), -EINVAL);
	tio_init(&t, &pending, BLK_OP_WRITE, size - 4096, 8192, w, 1);
	assert_int_equal(blk_submit(b, &t.req), -EINVAL);
	tio_init(&t, &pending, BLK_OP_DISCARD, size - 4096, 8192, NULL, 0);
	assert_int_equal(blk_submit(b, &t.req), -EINVAL);
	tio_init(&t, &pending, BLK_OP_WRITE_ZEROES, UINT64_MAX - 511, 1024, NULL, 0);
	assert_int_equal(blk_submit(b, &t.req), -EINVAL);
	assert_int_equal(t.calls, 0);
	assert_int_equal(pending, 1);

	/* 320 writes in flight at once, then 320 reads, then a mix with
	 * flushes; every one completes exactly once. */
	enum { N = 320 }; /* more than the io_uring completion ring holds */
	struct tio *ts = calloc(N, sizeof(*ts));
	uint8_t *big = abuf(N * 4096);
	assert_non_null(ts);
	pending = N;
	for (int i = 0; i < N; i++) {
		uint64_t off = 3 * MiB + (uint64_t)((i * 37) % N) * 4096;
		fill(big + i * 4096, 4096, 100 + (uint32_t)i, off);
		tio_init(&ts[i], &pending, BLK_OP_WRITE, off, 4096, big + i * 4096, 1);
		assert_int_equal(blk_submit(b, &ts[i].req), 0);
	}
	assert_int_equal(drive(b, &pending), N);
	memset(big, 0, N * 4096);
	pending = N;
	for (int i = 0; i < N; i++) {
		assert_int_equal(ts[i].result, 0);
		tio_init(&ts[i], &pending, BLK_OP_READ, 3 * MiB + (uint64_t)((i * 37) % N) * 4096, 4096,
			 big + i * 4096, 1);
		assert_int_equal(blk_submit(b, &ts[i].req), 0);
	}
	assert_int_equal(drive(b, &pending), N);
	for (int i = 0; i < N; i++) {
		assert_int_equal(ts[i].result, 0);
		assert_int_equal(ts[i].calls, 1);
		assert_true(is_pattern(big + i * 4096, 4096, 100 + (uint32_t)i,
				       3 * MiB + (uint64_t)((i * 37) % N) * 4096));
	}
	pending = N;
	for (int i = 0; i < N; i++) {
		enum blk_op op = i % 8 == 0 ? BLK_OP_FLUSH : i % 2 ? BLK_OP_READ : BLK_OP_WRITE;
		tio_init(&ts[i], &pending, op, 5 * MiB + (uint64_t)i * 4096, 4096, big + i * 4096, 1);
		assert_int_equal(blk_submit(b, &ts[i].req), 0);
	}
	assert_int_equal(drive(b, &pending), N);
	for (int i = 0; i < N; i++)
		assert_int_equal(ts[i].result, 0);
	free(ts);
	free(big);

	blk_close(b);

	/* What is on disk, seen without the block layer. */
	uint64_t n;
	uint8_t *disk = slurp(fx->path, &n);
	assert_int_equal(n, size);
	assert_true(is_pattern(disk + 64 * 1024, 64 * 1024, 1, 64 * 1024));
	assert_true(is_zero(disk + MiB + 4096, 8192));
	assert_true(is_pattern(disk + MiB + 12288, 4096, 3, MiB + 12288));
	assert_true(is_pattern(disk + 2 * MiB, 8192, 5, 2 * MiB));
	assert_true(is_pattern(disk + size - MiB, MiB, 4, size - MiB));
	free(disk);
	free(w);
	free(r);
}

/* A request still in flight at blk_close() completes before it returns. */
static void test_close_drains(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, MiB, 1);
	struct blk *b = open_blk(fx->path, fx->mode, false, false);
	uint8_t *w = abuf(4096);
	fill(w, 4096, 9, 8192);
	struct tio t;
	int pending = 1;
	tio_init(&t, &pending, BLK_OP_WRITE, 8192, 4096, w, 1);
	assert_int_equal(blk_submit(b, &t.req), 0);
	blk_close(b);
	assert_int_equal(t.calls, 1);
	assert_int_equal(t.result, 0);
	uint64_t n;
	uint8_t *disk = slurp(fx->path, &n);
	assert_true(is_pattern(disk + 8192, 4096, 9, 8192));
	free(disk);
	free(w);
}

/* Plugged submissions start at the outermost unplug, all together; a
 * blk_close() with a plug left behind still drains. */
static void test_plug(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, MiB, 1);
	struct blk *b = open_blk(fx->path, fx->mode, false, false);
	enum { N = 16 };
	struct tio ts[N];
	uint8_t *buf = abuf(N * 4096);
	int pending = N;
	blk_plug(b);
	blk_plug(b);
	for (int i = 0; i < N; i++) {
		fill(buf + i * 4096, 4096, 50 + (uint32_t)i, (uint64_t)i * 8192);
		tio_init(&ts[i], &pending, BLK_OP_WRITE, (uint64_t)i * 8192, 4096, buf + i * 4096, 1);
		assert_int_equal(blk_submit(b, &ts[i].req), 0);
	}
	blk_unplug(b);
	if (fx->mode.aio == BLK_AIO_IO_URING) {
		/* Still plugged once: nothing has reached the kernel. */
		struct pollfd p = { .fd = blk_event_fd(b), .events = POLLIN };
		assert_int_equal(poll(&p, 1, 100), 0);
	}
	blk_unplug(b);
	assert_int_equal(drive(b, &pending), N);
	memset(buf, 0, N * 4096);
	pending = N;
	blk_plug(b);
	for (int i = 0; i < N; i++) {
		tio_init(&ts[i], &pending, BLK_OP_READ, (uint64_t)i * 8192, 4096, buf + i * 4096, 1);
		assert_int_equal(blk_submit(b, &ts[i].req), 0);
	}
	blk_close(b); /* never unplugged */
	assert_int_equal(pending, 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(ts[i].result, 0);
		assert_true(is_pattern(buf + i * 4096, 4096, 50 + (uint32_t)i, (uint64_t)i * 8192));
	}
	free(buf);
}

/* The file shrinks under a running VM: reads past its new end see zeros
 * (the short read is continued, then hits end of file). */
static void test_file_shrinks(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, MiB, 1);
	struct blk *b = open_blk(fx->path, fx->mode, false, false);
	assert_int_equal(truncate(fx->path, MiB / 2 + 4096), 0);
	uint8_t *r = abuf(16384);
	memset(r, 0xAA, 16384);
	assert_int_equal(run(b, BLK_OP_READ, MiB / 2, 16384, r), 0);
	assert_true(is_pattern(r, 4096, 1, MiB / 2));
	assert_true(is_zero(r + 4096, 12288));
	blk_close(b);
	free(r);
}

/* ---- read-only ------------------------------------------------------ */

static void test_readonly(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, MiB, 7);
	uint64_t before = file_hash(fx->path);
	struct blk *b = open_blk(fx->path, fx->mode, true, false);
	assert_true(blk_readonly(b));
	assert_false(blk_can_discard(b));
	uint8_t *buf = abuf(8192);
	assert_int_equal(run(b, BLK_OP_READ, 4096, 8192, buf), 0);
	assert_true(is_pattern(buf, 8192, 7, 4096));
	assert_int_equal(run(b, BLK_OP_WRITE, 0, 4096, buf), -EROFS);
	assert_int_equal(run(b, BLK_OP_DISCARD, 0, 4096, NULL), -EROFS);
	assert_int_equal(run(b, BLK_OP_WRITE_ZEROES, 0, 4096, NULL), -EROFS);
	assert_int_equal(run(b, BLK_OP_FLUSH, 0, 0, NULL), 0);
	blk_close(b);
	assert_true(file_hash(fx->path) == before);
	free(buf);
}

/* ---- locking -------------------------------------------------------- */

static void test_lock_in_process(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, MiB, 1);
	struct mode m = { BLK_AIO_THREADS, BLK_CACHE_WRITEBACK };
	char err[512];

	struct blk *rw = open_blk(fx->path, m, false, false);
	open_fails((struct blk_options){ .path = fx->path }, err, sizeof(err));
	char want[512];
	snprintf(want, sizeof(want),
		 "image '%s' is in use by this process: use readonly=on or snapshot=on to share it",
		 fx->path);
	assert_string_equal(err, want);
	open_fails((struct blk_options){ .path = fx->path, .readonly = true }, err, sizeof(err));
	assert_non_null(strstr(err, "is open read-write by"));
	open_fails((struct blk_options){ .path = fx->path, .snapshot = true }, err, sizeof(err));
	blk_close(rw);

	/* Readers share, with snapshot users too; a writer is kept out until
	 * the last of them closes. */
	struct blk *ro1 = open_blk(fx->path, m, true, false);
	struct blk *ro2 = open_blk(fx->path, m, true, false);
	struct blk *snap = open_blk(fx->path, m, false, true);
	open_fails((struct blk_options){ .path = fx->path }, err, sizeof(err));
	assert_non_null(strstr(err, "is in use by this process"));
	blk_close(ro1);
	blk_close(snap);
	open_fails((struct blk_options){ .path = fx->path }, err, sizeof(err));
	blk_close(ro2);
	rw = open_blk(fx->path, m, false, false);
	blk_close(rw);
}

/* Another process holds the image: the message names its pid. */
static void test_lock_other_process(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, MiB, 1);
	for (int holder_ro = 0; holder_ro < 2; holder_ro++) {
		int ready[2], quit[2];
		assert_int_equal(pipe(ready), 0);
		assert_int_equal(pipe(quit), 0);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			struct blk_options o = { .path = fx->path, .readonly = holder_ro,
						 .aio = BLK_AIO_THREADS };
			char err[512];
			struct blk *b = blk_open(&o, err, sizeof(err));
			char c = b ? 'y' : 'n';
			if (write(ready[1], &c, 1) != 1 || read(quit[0], &c, 1) < 0)
				_exit(2);
			blk_close(b);
			_exit(b ? 0 : 1);
		}
		char c = 0;
		assert_int_equal(read(ready[0], &c, 1), 1);
		assert_int_equal(c, 'y');

		char err[512], want[512];
		open_fails((struct blk_options){ .path = fx->path }, err, sizeof(err));
		snprintf(want, sizeof(want),
			 "image '%s' is in use by another process (pid %d): use readonly=on or "
			 "snapshot=on to share it", fx->path, (int)pid);
		assert_string_equal(err, want);
		if (holder_ro) {
			struct mode m = { BLK_AIO_IO_URING, BLK_CACHE_WRITEBACK };
			blk_close(open_blk(fx->path, m, true, false));
		} else {
			open_fails((struct blk_options){ .path = fx->path, .readonly = true }, err,
				   sizeof(err));
			snprintf(want, sizeof(want),
				 "image '%s' is open read-write by another process (pid %d)", fx->path,
				 (int)pid);
			assert_string_equal(err, want);
		}
		assert_int_equal(write(quit[1], "q", 1), 1);
		int st;
		assert_int_equal(waitpid(pid, &st, 0), pid);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		close(ready[0]);
		close(ready[1]);
		close(quit[0]);
		close(quit[1]);
	}
	/* The holder is gone, and so is its lock. */
	struct mode m = { BLK_AIO_IO_URING, BLK_CACHE_WRITEBACK };
	blk_close(open_blk(fx->path, m, false, false));
}

/* ---- snapshot=on ---------------------------------------------------- */

/* Applies to `model` what a request does to the disk. */
static void model_op(uint8_t *model, enum blk_op op, uint64_t off, uint64_t len,
		     const uint8_t *data)
{
	if (op == BLK_OP_WRITE)
		memcpy(model + off, data, len);
	else
		memset(model + off, 0, len);
}

static void test_snapshot(void **state)
{
	struct fx *fx = *state;
	/* Not a whole number of clusters: the last one is short. */
	const uint64_t size = MiB + 3 * 512;
	make_image(fx->path, size, 11);
	uint64_t before = file_hash(fx->path);
	uint8_t *model = malloc(size);
	assert_non_null(model);
	fill(model, size, 11, 0);

	struct blk *b = open_blk(fx->path, fx->mode, false, true);
	assert_false(blk_readonly(b));
	assert_true(blk_can_discard(b));
	assert_int_equal(blk_size(b), size);

	uint8_t *w = abuf(4 * CLUSTER), *r = abuf(size + 4096);
	static const struct {
		enum blk_op op;
		uint64_t off, len;
	} ops[] = {
		{ BLK_OP_WRITE, CLUSTER, CLUSTER },                          /* whole cluster */
		{ BLK_OP_WRITE, 3 * CLUSTER + 1024, 512 },                   /* inside one */
		{ BLK_OP_WRITE, 3 * CLUSTER + 4096, 1024 },                  /* same, now present */
		{ BLK_OP_WRITE, 5 * CLUSTER + 1536, 2 * CLUSTER },           /* partial-full-partial */
		{ BLK_OP_WRITE, 8 * CLUSTER - 512, 1024 },                   /* straddles two */
		{ BLK_OP_WRITE, 16 * CLUSTER - 1024, 2048 + 512 },           /* into the short last one */
		{ BLK_OP_WRITE_ZEROES, 9 * CLUSTER + 512, 4096 },            /* partial zeroes */
		{ BLK_OP_DISCARD, 10 * CLUSTER, 2 * CLUSTER + 4096 },        /* discard reads zeros */
		{ BLK_OP_WRITE, 10 * CLUSTER + 512, 512 },                   /* over the discard */
		{ BLK_OP_WRITE_ZEROES, 5 * CLUSTER, CLUSTER },               /* over written data */
	};
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		fill(w, ops[i].len, 20 + (uint32_t)i, ops[i].off);
		int rc = ops[i].op == BLK_OP_WRITE ? run_seg(b, ops[i].op, ops[i].off, ops[i].len, w, 2)
						   : run(b, ops[i].op, ops[i].off, ops[i].len, NULL);
		assert_int_equal(rc, 0);
		model_op(model, ops[i].op, ops[i].off, ops[i].len, w);

		/* Whole disk, in pieces that cross present/absent runs. */
		memset(r, 0xEE, size);
		assert_int_equal(run_seg(b, BLK_OP_READ, 0, size - 3 * 512, r, 8), 0);
		assert_int_equal(run(b, BLK_OP_READ, size - 3 * 512, 3 * 512, r + size - 3 * 512), 0);
		assert_memory_equal(r, model, size);
	}
	assert_int_equal(run(b, BLK_OP_FLUSH, 0, 0, NULL), 0);

	/* Sixteen concurrent sector writes into one fresh cluster: each would
	 * copy the cluster up, so they must not clobber each other. */
	int pending = 16;
	struct tio ts[16];
	for (int i = 0; i < 16; i++) {
		uint64_t off = 13 * CLUSTER + (uint64_t)i * 2048;
		fill(w + i * 512, 512, 40 + (uint32_t)i, off);
		tio_init(&ts[i], &pending, BLK_OP_WRITE, off, 512, w + i * 512, 1);
		assert_int_equal(blk_submit(b, &ts[i].req), 0);
		model_op(model, BLK_OP_WRITE, off, 512, w + i * 512);
	}
	/* And a whole-cluster write racing a partial one on another. */
	uint8_t *w2 = abuf(CLUSTER);
	struct tio full, part;
	pending += 2;
	fill(w2, CLUSTER, 60, 14 * CLUSTER);
	tio_init(&full, &pending, BLK_OP_WRITE, 14 * CLUSTER, CLUSTER, w2, 1);
	fill(w + 16 * 512, 512, 61, 14 * CLUSTER + 4096);
	tio_init(&part, &pending, BLK_OP_WRITE, 14 * CLUSTER + 4096, 512, w + 16 * 512, 1);
	assert_int_equal(blk_submit(b, &full.req), 0);
	assert_int_equal(blk_submit(b, &part.req), 0);
	model_op(model, BLK_OP_WRITE, 14 * CLUSTER, CLUSTER, w2);
	model_op(model, BLK_OP_WRITE, 14 * CLUSTER + 4096, 512, w + 16 * 512);
	assert_int_equal(drive(b, &pending), 18);
	for (int i = 0; i < 16; i++)
		assert_int_equal(ts[i].result, 0);
	assert_int_equal(full.result, 0);
	assert_int_equal(part.result, 0);
	memset(r, 0xEE, size);
	assert_int_equal(run(b, BLK_OP_READ, 0, size, r), 0);
	assert_memory_equal(r, model, size);

	/* The image itself was never touched... */
	assert_true(file_hash(fx->path) == before);
	blk_close(b);
	assert_true(file_hash(fx->path) == before);

	/* ...and the overlay died with the blk. */
	b = open_blk(fx->path, fx->mode, false, true);
	assert_int_equal(run(b, BLK_OP_READ, 0, size, r), 0);
	assert_true(is_pattern(r, size, 11, 0));
	blk_close(b);
	free(w);
	free(w2);
	free(r);
	free(model);
}

static void test_snapshot_readonly(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, MiB, 3);
	struct mode m = { BLK_AIO_IO_URING, BLK_CACHE_WRITEBACK };
	struct blk *b = open_blk(fx->path, m, true, true);
	assert_true(blk_readonly(b));
	uint8_t *buf = abuf(4096);
	assert_int_equal(run(b, BLK_OP_WRITE, 0, 4096, buf), -EROFS);
	assert_int_equal(run(b, BLK_OP_READ, 0, 4096, buf), 0);
	assert_true(is_pattern(buf, 4096, 3, 0));
	blk_close(b);
	free(buf);
}

/* ---- fallbacks ------------------------------------------------------ */

/* tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE: write-zeroes must
 * fall back to writing zeros, larger than one fallback buffer. */
static void test_tmpfs_zeroes(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, 4 * MiB, 5);
	struct blk *b = open_blk(fx->path, fx->mode, false, false);
	uint8_t *r = abuf(4 * MiB);
	assert_int_equal(run(b, BLK_OP_WRITE_ZEROES, 512, 3 * MiB, NULL), 0);
	assert_int_equal(run(b, BLK_OP_WRITE_ZEROES, 3 * MiB + 4096, 4096, NULL), 0);
	assert_int_equal(run(b, BLK_OP_READ, 0, 4 * MiB, r), 0);
	assert_true(is_pattern(r, 512, 5, 0));
	assert_true(is_zero(r + 512, 3 * MiB));
	assert_true(is_pattern(r + 3 * MiB + 512, 4096 - 512, 5, 3 * MiB + 512));
	assert_true(is_zero(r + 3 * MiB + 4096, 4096));
	assert_true(blk_can_discard(b));
	assert_int_equal(run(b, BLK_OP_DISCARD, 3 * MiB + 65536, 65536, NULL), 0);
	assert_int_equal(run(b, BLK_OP_READ, 3 * MiB + 65536, 65536, r), 0);
	assert_true(is_zero(r, 65536));
	blk_close(b);
	free(r);
}

/* O_DIRECT where the kernel reports no alignment (tmpfs has no
 * STATX_DIOALIGN): the safe 4096 applies. Misaligned offsets and lengths
 * are rejected with -EINVAL (fixing them would need read-modify-write);
 * misaligned memory is bounced. */
static void test_direct_alignment(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, MiB, 6);
	struct blk_options o = { .path = fx->path, .cache = BLK_CACHE_NONE, .aio = fx->mode.aio };
	char err[512];
	struct blk *b = blk_open(&o, err, sizeof(err));
	if (!b && strstr(err, "O_DIRECT"))
		skip(); /* tmpfs without O_DIRECT (Linux < 6.6) */
	assert_non_null(b);
	assert_int_equal(blk_alignment(b), 4096);
	uint8_t *buf = abuf(3 * 4096);
	assert_int_equal(run(b, BLK_OP_READ, 512, 4096, buf), -EINVAL);
	assert_int_equal(run(b, BLK_OP_WRITE, 4096, 512, buf), -EINVAL);
	assert_int_equal(run_seg(b, BLK_OP_READ, 0, 4096, buf, 8), 0); /* 512-byte segments */
	assert_true(is_pattern(buf, 4096, 6, 0));
	fill(buf + 512, 8192, 7, 8192);
	assert_int_equal(run(b, BLK_OP_WRITE, 8192, 8192, buf + 512), 0);
	memset(buf, 0, 3 * 4096);
	assert_int_equal(run(b, BLK_OP_READ, 8192, 8192, buf + 8), 0);
	assert_true(is_pattern(buf + 8, 8192, 7, 8192));
	/* Sector-granular discard and write-zeroes need no alignment. */
	assert_int_equal(run(b, BLK_OP_WRITE_ZEROES, 8192 + 512, 1024, NULL), 0);
	assert_int_equal(run(b, BLK_OP_READ, 8192, 4096, buf), 0);
	assert_true(is_pattern(buf, 512, 7, 8192));
	assert_true(is_zero(buf + 512, 1024));
	assert_true(is_pattern(buf + 1536, 4096 - 1536, 7, 8192 + 1536));
	blk_close(b);
	free(buf);
}

/* With io_uring_setup forbidden by seccomp (as in many containers),
 * aio=io_uring falls back to threads, saying so once. */
static void test_uring_fallback(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, MiB, 2);
	int errp[2];
	assert_int_equal(pipe(errp), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct sock_filter filt[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = { .len = sizeof(filt) / sizeof(filt[0]), .filter = filt };
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
			_exit(10);
		dup2(errp[1], 2);
		log_set_level(LOG_INFO);
		struct blk_options o = { .path = fx->path, .aio = BLK_AIO_IO_URING };
		char err[512];
		struct blk *b = blk_open(&o, err, sizeof(err));
		if (!b)
			_exit(11);
		uint8_t buf[4096];
		struct tio t;
		int pending = 1;
		tio_init(&t, &pending, BLK_OP_READ, 4096, 4096, buf, 1);
		if (blk_submit(b, &t.req))
			_exit(12);
		while (pending) {
			struct pollfd p = { .fd = blk_event_fd(b), .events = POLLIN };
			if (poll(&p, 1, 10000) <= 0)
				_exit(13);
			blk_poll(b);
		}
		if (t.result || !is_pattern(buf, 4096, 2, 4096))
			_exit(14);
		blk_close(b);
		_exit(0);
	}
	close(errp[1]);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	char out[2048] = "";
	ssize_t n = read(errp[0], out, sizeof(out) - 1);
	close(errp[0]);
	out[n > 0 ? n : 0] = 0;
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_non_null(strstr(out, "io_uring unavailable"));
	assert_non_null(strstr(out, "using aio=threads"));
	assert_int_equal(strchr(out, '\n') - out, (long)strlen(out) - 1); /* one line */
}

/* ---- errors --------------------------------------------------------- */

static void test_open_errors(void **state)
{
	struct fx *fx = *state;
	char err[512], want[512];

	open_fails((struct blk_options){ .path = fx->path }, err, sizeof(err));
	snprintf(want, sizeof(want), "cannot open image '%s': No such file or directory", fx->path);
	assert_string_equal(err, want);

	open_fails((struct blk_options){ .path = fx->dir }, err, sizeof(err));
	snprintf(want, sizeof(want), "cannot open image '%s': Is a directory", fx->dir);
	assert_string_equal(err, want);
	open_fails((struct blk_options){ .path = fx->dir, .readonly = true }, err, sizeof(err));
	assert_string_equal(err, want);

	open_fails((struct blk_options){ .path = "/dev/null", .readonly = true }, err, sizeof(err));
	assert_string_equal(err, "cannot open image '/dev/null': not a regular file or block device");

	make_image(fx->path, MiB, 1);
	open_fails((struct blk_options){ .path = fx->path, .format = "vmdk" }, err, sizeof(err));
	snprintf(want, sizeof(want), "image '%s': format 'vmdk' is not supported (expected raw or qcow2)",
		 fx->path);
	assert_string_equal(err, want);
	/* format=qcow2 on a raw file: refused, never misread. */
	open_fails((struct blk_options){ .path = fx->path, .format = "qcow2" }, err, sizeof(err));
	snprintf(want, sizeof(want), "image '%s': not a qcow2 image (bad magic)", fx->path);
	assert_string_equal(err, want);
	struct blk *b = blk_open(&(struct blk_options){ .path = fx->path, .format = "raw" }, err,
				 sizeof(err));
	assert_non_null(b);
	blk_close(b);

	assert_null(blk_open(&(struct blk_options){ .path = NULL }, err, sizeof(err)));
	assert_string_equal(err, "no image file given");
	assert_null(blk_open(&(struct blk_options){ .path = "" }, err, sizeof(err)));

	/* A trailing partial sector is not part of the disk. */
	make_image(fx->path, 64 * 1024 + 100, 1);
	b = blk_open(&(struct blk_options){ .path = fx->path }, err, sizeof(err));
	assert_non_null(b);
	assert_int_equal(blk_size(b), 64 * 1024);
	blk_close(b);
}

static void test_parse(void **state)
{
	(void)state;
	static const char *const cache_words[] = { "writeback", "none", "writethrough",
						    "directsync", "unsafe" };
	static const enum blk_cache cache_modes[] = { BLK_CACHE_WRITEBACK, BLK_CACHE_NONE,
						      BLK_CACHE_WRITETHROUGH, BLK_CACHE_DIRECTSYNC,
						      BLK_CACHE_UNSAFE };
	for (int i = 0; i < 5; i++) {
		enum blk_cache c = (enum blk_cache)-1;
		assert_int_equal(blk_parse_cache(cache_words[i], &c), 0);
		assert_int_equal(c, cache_modes[i]);
	}
	static const char *const bad_cache[] = { "", "None", "write-back", "off", "direct", "on" };
	for (size_t i = 0; i < sizeof(bad_cache) / sizeof(bad_cache[0]); i++) {
		enum blk_cache c = BLK_CACHE_UNSAFE;
		assert_int_equal(blk_parse_cache(bad_cache[i], &c), -1);
		assert_int_equal(c, BLK_CACHE_UNSAFE);
	}
	enum blk_cache c;
	assert_int_equal(blk_parse_cache(NULL, &c), -1);

	enum blk_aio a = BLK_AIO_THREADS;
	assert_int_equal(blk_parse_aio("io_uring", &a), 0);
	assert_int_equal(a, BLK_AIO_IO_URING);
	assert_int_equal(blk_parse_aio("threads", &a), 0);
	assert_int_equal(a, BLK_AIO_THREADS);
	assert_int_equal(blk_parse_aio("native", &a), -1);
	assert_int_equal(blk_parse_aio("io-uring", &a), -1);
	assert_int_equal(blk_parse_aio("", &a), -1);
	assert_int_equal(blk_parse_aio(NULL, &a), -1);
}

/* ---- a block device, where the host allows loop devices ------------- */

static void test_block_device(void **state)
{
	struct fx *fx = *state;
	make_image(fx->path, 4 * MiB, 8);
	char cmd[256], dev[64] = "";
	snprintf(cmd, sizeof(cmd), "losetup --find --show %s 2>/dev/null", fx->path);
	FILE *p = popen(cmd, "r");
	if (!p || !fgets(dev, sizeof(dev), p) || strncmp(dev, "/dev/loop", 9)) {
		if (p)
			pclose(p);
		skip();
	}
	pclose(p);
	dev[strcspn(dev, "\n")] = 0;
	snprintf(fx->loopdev, sizeof(fx->loopdev), "%s", dev);
	struct mode dev_modes[] = { { BLK_AIO_IO_URING, BLK_CACHE_NONE },
				    { BLK_AIO_THREADS, BLK_CACHE_WRITEBACK } };
	for (int i = 0; i < 2; i++) {
		struct blk *b = open_blk(dev, dev_modes[i], false, false);
		assert_int_equal(blk_size(b), 4 * MiB);
		uint8_t *buf = abuf(8192);
		fill(buf, 8192, 30 + (uint32_t)i, 65536);
		assert_int_equal(run(b, BLK_OP_WRITE, 65536, 8192, buf), 0);
		memset(buf, 0, 8192);
		assert_int_equal(run(b, BLK_OP_READ, 65536, 8192, buf), 0);
		assert_true(is_pattern(buf, 8192, 30 + (uint32_t)i, 65536));
		assert_int_equal(run(b, BLK_OP_FLUSH, 0, 0, NULL), 0);
		assert_int_equal(run(b, BLK_OP_WRITE_ZEROES, 65536, 4096, NULL), 0);
		assert_int_equal(run(b, BLK_OP_DISCARD, 4096 * 100, 4096, NULL), 0);
		assert_int_equal(run(b, BLK_OP_READ, 65536, 8192, buf), 0);
		assert_true(is_zero(buf, 4096));
		blk_close(b);
		free(buf);
	}
}

/* ---- registration --------------------------------------------------- */

#define MODES(aio)                                              \
	{ aio, BLK_CACHE_WRITEBACK }, { aio, BLK_CACHE_NONE },      \
	{ aio, BLK_CACHE_WRITETHROUGH }, { aio, BLK_CACHE_DIRECTSYNC }, \
	{ aio, BLK_CACHE_UNSAFE }

static struct mode modes[] = { MODES(BLK_AIO_IO_URING), MODES(BLK_AIO_THREADS) };
static struct mode uring_wb = { BLK_AIO_IO_URING, BLK_CACHE_WRITEBACK };
static struct mode uring_none = { BLK_AIO_IO_URING, BLK_CACHE_NONE };
static struct mode threads_wb = { BLK_AIO_THREADS, BLK_CACHE_WRITEBACK };
static struct mode threads_none = { BLK_AIO_THREADS, BLK_CACHE_NONE };

#define T(fn, m) cmocka_unit_test_prestate_setup_teardown(fn, fx_setup, fx_teardown, &(m))
#define T_NAMED(name, fn, m)                                                                   \
	{ name, fn, fx_setup, fx_teardown, &(m) }
#define T_NAMED_SHM(name, fn, m)                                                               \
	{ name, fn, fx_setup_shm, fx_teardown, &(m) }

int main(void)
{
	const struct CMUnitTest tests[] = {
		T_NAMED("ops io_uring writeback", test_ops, modes[0]),
		T_NAMED("ops io_uring none", test_ops, modes[1]),
		T_NAMED("ops io_uring writethrough", test_ops, modes[2]),
		T_NAMED("ops io_uring directsync", test_ops, modes[3]),
		T_NAMED("ops io_uring unsafe", test_ops, modes[4]),
		T_NAMED("ops threads writeback", test_ops, modes[5]),
		T_NAMED("ops threads none", test_ops, modes[6]),
		T_NAMED("ops threads writethrough", test_ops, modes[7]),
		T_NAMED("ops threads directsync", test_ops, modes[8]),
		T_NAMED("ops threads unsafe", test_ops, modes[9]),
		T_NAMED("close drains io_uring", test_close_drains, uring_none),
		T_NAMED("close drains threads", test_close_drains, threads_wb),
		T_NAMED("plug io_uring", test_plug, uring_none),
		T_NAMED("plug threads", test_plug, threads_wb),
		T_NAMED("file shrinks io_uring", test_file_shrinks, uring_wb),
		T_NAMED("file shrinks threads", test_file_shrinks, threads_wb),
		T_NAMED("file shrinks io_uring direct", test_file_shrinks, uring_none),
		T_NAMED("readonly io_uring", test_readonly, uring_wb),
		T_NAMED("readonly threads", test_readonly, threads_none),
		T(test_lock_in_process, uring_wb),
		T(test_lock_other_process, uring_wb),
		T_NAMED("snapshot io_uring writeback", test_snapshot, uring_wb),
		T_NAMED("snapshot io_uring none", test_snapshot, uring_none),
		T_NAMED("snapshot threads writeback", test_snapshot, threads_wb),
		T_NAMED("snapshot threads none", test_snapshot, threads_none),
		T(test_snapshot_readonly, uring_wb),
		T_NAMED_SHM("tmpfs zeroes io_uring", test_tmpfs_zeroes, uring_wb),
		T_NAMED_SHM("tmpfs zeroes threads", test_tmpfs_zeroes, threads_wb),
		T_NAMED_SHM("direct alignment io_uring", test_direct_alignment, uring_none),
		T_NAMED_SHM("direct alignment threads", test_direct_alignment, threads_none),
		T(test_uring_fallback, uring_wb),
		T(test_open_errors, uring_wb),
		T(test_parse, uring_wb),
		T(test_block_device, uring_wb),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
