/* The qcow2 scribbler: a seeded differential test. Random writes,
 * discards, write-zeroes, compressed writes, flushes and reopens go to a
 * qcow2 image (optionally over a raw, qcow2, or two-deep backing chain)
 * and, with the same expected effect, to a raw reference image; the two
 * are compared byte for byte every `check_every` operations and at the
 * end. At the end the image must pass our own check and, when qemu-img
 * exists, `qemu-img check` with no leaks, and `qemu-img convert -O raw`
 * must give the reference bytes.
 *
 * Expected effects (the semantics image.h's qcow2 implements):
 *   write, compressed write: the data;  write_zeroes: zeros;
 *   discard: whole clusters (the image's last, partial one counts as
 *   whole) read as zeros afterwards, except on a v2 image where a backing
 *   file covers the cluster (v2 cannot express "zero": unchanged); partial
 *   clusters are unchanged.
 *
 * Built standalone (tests/qcow2/run-scribbler.sh) or included by
 * tests/unit/test_qcow2_scribble.c with SCRIBBLER_NO_MAIN. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "block/image.h"
#include "block/image_ext.h"
#include "block/qcow2.h"

enum scribble_backing { SB_NONE, SB_RAW, SB_QCOW2, SB_CHAIN };

struct scribble_cfg {
	const char *dir;            /* scratch directory (created by the caller) */
	uint32_t cluster_size;
	int version;                /* 2 or 3 */
	enum scribble_backing backing;
	bool ext_l2, zstd, lazy;
	bool direct;                /* open the image under test with O_DIRECT */
	unsigned refcount_bits;     /* 0 = 16 */
	uint64_t size;
	unsigned ops;
	uint64_t seed;
	unsigned check_every;
	bool qemu_check;            /* run qemu-img check / convert at the end */
	bool verbose;
	/* results */
	unsigned n_write, n_discard, n_zero, n_comp, n_flush, n_reopen, n_compare;
};

static uint64_t sc_rng;

static uint64_t rnd(void)
{
	sc_rng ^= sc_rng << 13;
	sc_rng ^= sc_rng >> 7;
	sc_rng ^= sc_rng << 17;
	return sc_rng;
}

static uint64_t rnd_below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static void fill(uint8_t *buf, size_t len, bool compressible)
{
	if (compressible) {
		uint8_t pat[16];
		for (int i = 0; i < 16; i++)
			pat[i] = (uint8_t)rnd();
		size_t plen = 1 + rnd_below(16);
		for (size_t i = 0; i < len; i++)
			buf[i] = pat[i % plen];
		return;
	}
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		uint64_t v = rnd();
		memcpy(buf + i, &v, 8);
	}
	for (; i < len; i++)
		buf[i] = (uint8_t)rnd();
}

static int sc_fail(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int sc_fail(char *msg, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, len, fmt, ap);
	va_end(ap);
	return -1;
}

/* An image under test plus what its discard semantics depend on. */
struct layer {
	struct image *img;
	char path[512];
	const char *fmt;
	int version;
	uint32_t cs;
	uint64_t size;
	uint64_t backing_size;      /* 0 = no backing */
};

static bool sc_direct;

static struct image *sc_open(const char *path, const char *fmt, bool rw, char *msg, size_t msglen)
{
	char err[1024];
	struct image_open_opts o = { .path = path, .format = fmt, .readonly = !rw,
				     .direct = sc_direct && !strcmp(fmt, "qcow2") };
	struct image *img = image_open(&o, err, sizeof(err));
	if (!img)
		snprintf(msg, msglen, "open: %s", err);
	return img;
}

/* One random operation on `l`, mirrored on `ref`. */
static int one_op(struct scribble_cfg *c, struct layer *l, struct image *ref, uint8_t *buf, char *msg,
		  size_t msglen)
{
	uint32_t cs = l->cs;
	uint64_t size = l->size;
	unsigned kind = (unsigned)rnd_below(100);
	uint64_t off, len;
	/* Lengths: mostly small, some cluster-sized, some spanning clusters. */
	unsigned lk = (unsigned)rnd_below(10);
	uint64_t maxlen = 4ull * cs > (1u << 20) ? (1u << 20) : 4ull * cs;
	if (lk < 4)
		len = 1 + rnd_below(4096);
	else if (lk < 7)
		len = 512 * (1 + rnd_below(16));
	else
		len = 1 + rnd_below(maxlen);
	if (rnd_below(3) == 0) {
		off = rnd_below(size / 512) * 512;
		len = (len + 511) & ~511ull;
	} else {
		off = rnd_below(size);
	}
	if (off >= size)
		off = size - 1;
	if (len > size - off)
		len = size - off;
	int r;
	if (kind < 55) {
		fill(buf, len, rnd_below(2));
		r = image_write(l->img, off, buf, len);
		if (r < 0)
			return sc_fail(msg, msglen, "write %llu+%llu: %s", (unsigned long long)off,
				       (unsigned long long)len, strerror(-r));
		r = image_write(ref, off, buf, len);
		c->n_write++;
	} else if (kind < 67) {
		r = image_discard(l->img, off, len);
		if (r < 0)
			return sc_fail(msg, msglen, "discard %llu+%llu: %s", (unsigned long long)off,
				       (unsigned long long)len, strerror(-r));
		uint64_t c0 = (off + cs - 1) / cs * cs;
		if (!strcmp(l->fmt, "raw")) /* hole punching: exactly the range */
			r = image_write_zeroes(ref, off, len, false);
		for (uint64_t cl = c0; strcmp(l->fmt, "raw") && cl < off + len; cl += cs) {
			uint64_t n = size - cl < cs ? size - cl : cs;
			if (cl + n > off + len)
				break;
			bool backed = l->backing_size && cl < l->backing_size;
			if (l->version < 3 && backed)
				continue;
			r = image_write_zeroes(ref, cl, n, false);
			if (r < 0)
				break;
		}
		c->n_discard++;
	} else if (kind < 80) {
		bool unmap = rnd_below(2);
		r = image_write_zeroes(l->img, off, len, unmap);
		if (r < 0)
			return sc_fail(msg, msglen, "write_zeroes %llu+%llu: %s", (unsigned long long)off,
				       (unsigned long long)len, strerror(-r));
		r = image_write_zeroes(ref, off, len, false);
		c->n_zero++;
	} else if (kind < 92 && strcmp(l->fmt, "raw") != 0) {
		uint64_t cl = rnd_below((size + cs - 1) / cs) * cs;
		uint64_t n = size - cl < cs ? size - cl : cs;
		fill(buf, n, rnd_below(4) != 0);
		r = image_write_compressed(l->img, cl, buf, n);
		if (r < 0)
			return sc_fail(msg, msglen, "write_compressed %llu+%llu: %s", (unsigned long long)cl,
				       (unsigned long long)n, strerror(-r));
		r = image_write(ref, cl, buf, n);
		c->n_comp++;
	} else if (kind < 97) {
		r = image_flush(l->img);
		if (r < 0)
			return sc_fail(msg, msglen, "flush: %s", strerror(-r));
		c->n_flush++;
	} else {
		image_close(l->img);
		l->img = sc_open(l->path, l->fmt, true, msg, msglen);
		if (!l->img)
			return -1;
		c->n_reopen++;
		r = 0;
	}
	if (r < 0)
		return sc_fail(msg, msglen, "reference op: %s", strerror(-r));
	return 0;
}

static int compare_all(struct image *a, struct image *b, uint64_t size, uint8_t *b1, uint8_t *b2, size_t chunk,
		       char *msg, size_t msglen)
{
	for (uint64_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
		int r = image_read(a, off, b1, n);
		if (r < 0)
			return sc_fail(msg, msglen, "read %llu+%zu: %s", (unsigned long long)off, n, strerror(-r));
		r = image_read(b, off, b2, n);
		if (r < 0)
			return sc_fail(msg, msglen, "reference read: %s", strerror(-r));
		if (memcmp(b1, b2, n)) {
			size_t i = 0;
			while (b1[i] == b2[i])
				i++;
			return sc_fail(msg, msglen, "mismatch at byte %llu (image %02x, reference %02x)",
				       (unsigned long long)(off + i), b1[i], b2[i]);
		}
	}
	return 0;
}

static bool have_qemu_img(void)
{
	return access("/usr/bin/qemu-img", X_OK) == 0 || access("/usr/local/bin/qemu-img", X_OK) == 0;
}

static int run_cmd(const char *cmd)
{
	int st = system(cmd);
	if (st < 0 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

/* Builds a backing layer: fills random regions of `l` (and the same in
 * `ref`) with `nops` operations. */
static int populate(struct scribble_cfg *c, struct layer *l, struct image *ref, unsigned nops, uint8_t *buf,
		    char *msg, size_t msglen)
{
	struct scribble_cfg dummy = *c;
	for (unsigned i = 0; i < nops; i++)
		if (one_op(&dummy, l, ref, buf, msg, msglen) < 0)
			return -1;
	return image_flush(l->img) < 0 ? sc_fail(msg, msglen, "flush backing") : 0;
}

static int create_q(const char *path, uint64_t size, uint32_t cs, int version, const char *backing,
		    const char *bfmt, const struct scribble_cfg *c, char *msg, size_t msglen)
{
	char err[1024];
	struct qcow2_create_opts o = {
		.size = size,
		.cluster_size = cs,
		.compat = version == 2 ? "0.10" : "1.1",
		.backing_file = backing,
		.backing_fmt = bfmt,
		.compression_type = c->zstd && version == 3 ? "zstd" : NULL,
		.refcount_bits = version == 3 ? c->refcount_bits : 0,
		.extended_l2 = c->ext_l2 && version == 3,
		.lazy_refcounts = c->lazy && version == 3,
	};
	if (qcow2_create(path, &o, err, sizeof(err)) < 0)
		return sc_fail(msg, msglen, "create %s: %s", path, err);
	return 0;
}

int scribble_run(struct scribble_cfg *c, char *msg, size_t msglen);
int scribble_run(struct scribble_cfg *c, char *msg, size_t msglen)
{
	sc_rng = c->seed ? c->seed : 0x9e3779b97f4a7c15ull;
	sc_direct = c->direct;
	char ref_path[512], base_path[512], mid_path[512], top_path[512];
	snprintf(ref_path, sizeof(ref_path), "%s/ref.raw", c->dir);
	snprintf(base_path, sizeof(base_path), "%s/base.%s", c->dir, c->backing == SB_QCOW2 ? "qcow2" : "raw");
	snprintf(mid_path, sizeof(mid_path), "%s/mid.qcow2", c->dir);
	snprintf(top_path, sizeof(top_path), "%s/top.qcow2", c->dir);
	uint64_t size = c->size;
	uint64_t bsize = (size * 3 / 4) & ~511ull;
	size_t chunk = 1 << 20;
	uint8_t *buf = malloc(2u << 20), *b1 = malloc(chunk), *b2 = malloc(chunk);
	struct image *ref = NULL;
	struct layer top = { 0 };
	int ret = -1;
	if (!buf || !b1 || !b2) {
		sc_fail(msg, msglen, "out of memory");
		goto out;
	}
	char err[1024];
	if (image_create_raw(ref_path, size, NULL, err, sizeof(err)) < 0) {
		sc_fail(msg, msglen, "%s", err);
		goto out;
	}
	ref = sc_open(ref_path, "raw", true, msg, msglen);
	if (!ref)
		goto out;
	const char *tb = NULL, *tbf = NULL;
	if (c->backing != SB_NONE) {
		/* The bottom layer. */
		struct layer base = { .version = 3, .cs = 4096, .size = bsize };
		snprintf(base.path, sizeof(base.path), "%s", base_path);
		if (c->backing == SB_QCOW2) {
			struct scribble_cfg plain = *c;
			plain.ext_l2 = false;
			base.fmt = "qcow2";
			if (create_q(base_path, bsize, 4096, 3, NULL, NULL, &plain, msg, msglen) < 0)
				goto out;
		} else {
			base.fmt = "raw";
			if (image_create_raw(base_path, bsize, NULL, err, sizeof(err)) < 0) {
				sc_fail(msg, msglen, "%s", err);
				goto out;
			}
		}
		base.img = sc_open(base_path, base.fmt, true, msg, msglen);
		if (!base.img)
			goto out;
		int r = populate(c, &base, ref, 200, buf, msg, msglen);
		image_close(base.img);
		if (r < 0)
			goto out;
		tb = c->backing == SB_QCOW2 ? "base.qcow2" : "base.raw";
		tbf = base.fmt;
		if (c->backing == SB_CHAIN) {
			/* base.raw <- mid.qcow2 (other cluster size, same version). */
			struct layer mid = { .version = c->version, .cs = c->cluster_size == 65536 ? 16384 : 65536,
					     .size = bsize, .backing_size = bsize, .fmt = "qcow2" };
			snprintf(mid.path, sizeof(mid.path), "%s", mid_path);
			if (create_q(mid_path, bsize, mid.cs, c->version, "base.raw", "raw", c, msg, msglen) < 0)
				goto out;
			mid.img = sc_open(mid_path, "qcow2", true, msg, msglen);
			if (!mid.img)
				goto out;
			r = populate(c, &mid, ref, 200, buf, msg, msglen);
			image_close(mid.img);
			if (r < 0)
				goto out;
			tb = "mid.qcow2";
			tbf = "qcow2";
		}
	}
	if (create_q(top_path, size, c->cluster_size, c->version, tb, tbf, c, msg, msglen) < 0)
		goto out;
	top.version = c->version;
	top.cs = c->cluster_size;
	top.size = size;
	top.backing_size = tb ? bsize : 0;
	top.fmt = "qcow2";
	snprintf(top.path, sizeof(top.path), "%s", top_path);
	top.img = sc_open(top_path, "qcow2", true, msg, msglen);
	if (!top.img)
		goto out;
	c->n_write = c->n_discard = c->n_zero = c->n_comp = c->n_flush = c->n_reopen = c->n_compare = 0;
	for (unsigned i = 0; i < c->ops; i++) {
		if (one_op(c, &top, ref, buf, msg, msglen) < 0) {
			size_t l = strlen(msg);
			snprintf(msg + l, msglen - l, " (op %u)", i);
			goto out;
		}
		if (c->check_every && (i + 1) % c->check_every == 0) {
			c->n_compare++;
			if (compare_all(top.img, ref, size, b1, b2, chunk, msg, msglen) < 0) {
				size_t l = strlen(msg);
				snprintf(msg + l, msglen - l, " (after op %u)", i);
				goto out;
			}
		}
	}
	c->n_compare++;
	if (compare_all(top.img, ref, size, b1, b2, chunk, msg, msglen) < 0)
		goto out;
	/* Our own check on the live image, then after a clean close. */
	struct qcow2_check_result cr = { 0 };
	int r = qcow2_check(top.img, 0, &cr);
	if (r < 0 || cr.corruptions || cr.check_errors) {
		sc_fail(msg, msglen, "check: r=%d corruptions=%lld errors=%lld", r, (long long)cr.corruptions,
			(long long)cr.check_errors);
		goto out;
	}
	image_close(top.img);
	top.img = sc_open(top_path, "qcow2", false, msg, msglen);
	if (!top.img)
		goto out;
	memset(&cr, 0, sizeof(cr));
	r = qcow2_check(top.img, 0, &cr);
	if (r < 0 || cr.corruptions || cr.check_errors || cr.leaks) {
		sc_fail(msg, msglen, "check after close: r=%d corruptions=%lld leaks=%lld errors=%lld", r,
			(long long)cr.corruptions, (long long)cr.leaks, (long long)cr.check_errors);
		goto out;
	}
	c->n_compare++;
	if (compare_all(top.img, ref, size, b1, b2, chunk, msg, msglen) < 0) {
		size_t l = strlen(msg);
		snprintf(msg + l, msglen - l, " (after reopen)");
		goto out;
	}
	if (c->qemu_check && have_qemu_img()) {
		char cmd[2048];
		snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s' >/dev/null 2>&1", top_path);
		int rc = run_cmd(cmd);
		if (rc != 0) {
			snprintf(cmd, sizeof(cmd), "qemu-img check '%s' 2>&1 | head -20 >&2", top_path);
			run_cmd(cmd);
			sc_fail(msg, msglen, "qemu-img check exit %d", rc);
			goto out;
		}
		snprintf(cmd, sizeof(cmd), "cd '%s' && qemu-img convert -O raw top.qcow2 qemu.raw && cmp -s qemu.raw ref.raw",
			 c->dir);
		rc = run_cmd(cmd);
		if (rc != 0) {
			sc_fail(msg, msglen, "qemu-img convert output differs from the reference (exit %d)", rc);
			goto out;
		}
	}
	ret = 0;
out:
	image_close(top.img);
	image_close(ref);
	free(buf);
	free(b1);
	free(b2);
	return ret;
}

#ifndef SCRIBBLER_NO_MAIN
/* usage: scribbler [-s seed] [-n ops] [-q] [DIR]: runs the whole matrix. */
int main(int argc, char **argv)
{
	uint64_t seed = 1;
	unsigned ops = 3000;
	bool quick = false;
	const char *base = "/var/tmp";
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-s") && i + 1 < argc)
			seed = strtoull(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "-n") && i + 1 < argc)
			ops = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "-q"))
			quick = true;
		else
			base = argv[i];
	}
	static const uint32_t sizes[] = { 512, 4096, 65536, 2u << 20 };
	unsigned pass = 0, fail = 0;
	unsigned long long tot = 0;
	for (unsigned si = 0; si < 4; si++) {
		for (int v = 2; v <= 3; v++) {
			for (int b = SB_NONE; b <= SB_CHAIN; b++) {
				for (int variant = 0; variant < 4; variant++) {
					if (v == 2 && (variant == 1 || variant == 2))
						continue;
					struct scribble_cfg c = { 0 };
					c.cluster_size = sizes[si];
					c.version = v;
					c.backing = (enum scribble_backing)b;
					c.size = sizes[si] == (2u << 20) ? (96ull << 20) + 4096 : (16ull << 20) + 1536;
					c.ops = quick ? ops / 4 : ops;
					c.seed = seed * 1000003 + si * 101 + (unsigned)v * 11 + (unsigned)b * 3 + (unsigned)variant;
					c.check_every = 250;
					c.qemu_check = true;
					if (variant == 1) {
						c.zstd = true;
						c.refcount_bits = sizes[si] == 512 ? 64 : 2;
						c.lazy = true;
					}
					if (variant == 2) {
						if (sizes[si] < 16384)
							continue;
						c.ext_l2 = true;
					}
					if (variant == 3)
						c.direct = true;
					char dir[256];
					snprintf(dir, sizeof(dir), "%s/scribble-XXXXXX", base);
					if (!mkdtemp(dir)) {
						perror("mkdtemp");
						return 1;
					}
					c.dir = dir;
					char msg[1024] = "";
					int r = scribble_run(&c, msg, sizeof(msg));
					unsigned n = c.n_write + c.n_discard + c.n_zero + c.n_comp + c.n_flush + c.n_reopen;
					tot += n;
					printf("%s cs=%u v%d backing=%d %s%s%s ops=%u (w%u d%u z%u c%u f%u r%u cmp%u)%s%s\n",
					       r ? "FAIL" : "ok  ", c.cluster_size, v, b, c.zstd ? "zstd,rb,lazy " : "",
					       c.ext_l2 ? "extl2 " : "", c.direct ? "direct " : "", n, c.n_write, c.n_discard, c.n_zero, c.n_comp,
					       c.n_flush, c.n_reopen, c.n_compare, r ? ": " : "", msg);
					fflush(stdout);
					if (r) {
						fail++;
						printf("     (kept %s)\n", dir);
					} else {
						pass++;
						char cmd[512];
						snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
						run_cmd(cmd);
					}
				}
			}
		}
	}
	printf("scribbler: %llu operations; %u passed, %u failed\n", tot, pass, fail);
	return fail ? 1 : 0;
}
#endif
