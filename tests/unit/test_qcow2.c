/* qcow2: refcount packing and L1/L2/refcount arithmetic checked against
 * the spec's formulas by walking the file independently, header
 * validation for hostile images, probing safety, round trips (data,
 * zero clusters, discard, compressed clusters, backing chains, snapshots,
 * resize, rebase), check/repair, creation options, measure, and the VMM's
 * qcow2 block node. Temporary files live in /var/tmp. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "block/block_int.h"
#include "block/image.h"
#include "block/image_ext.h"
#include "block/qcow2.h"
#include "block/qcow2_int.h"

#define MiB (1024ull * 1024)

/* ---- fixture ---------------------------------------------------------- */

struct fx {
	char dir[64];
	char path[128];             /* dir/a.qcow2 */
};

static int fx_setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -1;
	snprintf(fx->dir, sizeof(fx->dir), "/var/tmp/kestrel-qcow2-XXXXXX");
	if (!mkdtemp(fx->dir)) {
		free(fx);
		return -1;
	}
	snprintf(fx->path, sizeof(fx->path), "%s/a.qcow2", fx->dir);
	*state = fx;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", fx->dir);
	free(fx);
	return 0;
}

static char *pth(struct fx *fx, const char *name)
{
	static char bufs[4][192];
	static int k;
	char *p = bufs[k++ % 4];
	snprintf(p, 192, "%s/%s", fx->dir, name);
	return p;
}

/* ---- helpers ------------------------------------------------------------ */

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

static void create(const char *path, uint64_t size, uint32_t cs, const char *compat)
{
	char err[512];
	struct qcow2_create_opts o = { .size = size, .cluster_size = cs, .compat = compat };
	int r = qcow2_create(path, &o, err, sizeof(err));
	if (r < 0)
		fail_msg("create: %s", err);
}

static void create_o(const char *path, const struct qcow2_create_opts *o)
{
	char err[512];
	if (qcow2_create(path, o, err, sizeof(err)) < 0)
		fail_msg("create: %s", err);
}

static struct image *open_ex(const char *path, const char *fmt, bool rw, unsigned flags)
{
	char err[1024];
	struct image_open_opts o = { .path = path, .format = fmt, .readonly = !rw };
	struct image *img = image_open_ext(&o, flags, err, sizeof(err));
	if (!img)
		fail_msg("open %s: %s", path, err);
	return img;
}

static struct image *open_rw(const char *path)
{
	return open_ex(path, "qcow2", true, 0);
}

static struct image *open_ro(const char *path)
{
	return open_ex(path, "qcow2", false, 0);
}

/* Opens expecting failure; returns the message. */
static const char *open_fails(const char *path, const char *fmt, bool rw)
{
	static char err[1024];
	err[0] = 0;
	struct image_open_opts o = { .path = path, .format = fmt, .readonly = !rw };
	struct image *img = image_open(&o, err, sizeof(err));
	if (img) {
		image_close(img);
		fail_msg("open of %s unexpectedly succeeded", path);
	}
	assert_true(strlen(err) > 0);
	assert_null(strchr(err, '\n'));
	return err;
}

static void put_be(const char *path, uint64_t off, uint64_t v, int bytes)
{
	uint8_t b[8];
	for (int i = 0; i < bytes; i++)
		b[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, b, (size_t)bytes, (off_t)off), bytes);
	close(fd);
}

static uint64_t get_be(const char *path, uint64_t off, int bytes)
{
	uint8_t b[8] = { 0 };
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, b, (size_t)bytes, (off_t)off), bytes);
	close(fd);
	uint64_t v = 0;
	for (int i = 0; i < bytes; i++)
		v = v << 8 | b[i];
	return v;
}

static void pread_file(const char *path, void *buf, size_t len, uint64_t off)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static bool have_qemu_img(void)
{
	return access("/usr/bin/qemu-img", X_OK) == 0;
}

static int qemu_check(const char *path)
{
	if (!have_qemu_img())
		return 0;
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s' >/dev/null 2>&1", path);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void our_check_clean(const char *path)
{
	struct image *img = open_ro(path);
	struct qcow2_check_result r = { 0 };
	assert_int_equal(qcow2_check(img, 0, &r), 0);
	image_close(img);
	if (r.corruptions || r.leaks || r.check_errors)
		fail_msg("check %s: corruptions=%lld leaks=%lld errors=%lld", path, (long long)r.corruptions,
			 (long long)r.leaks, (long long)r.check_errors);
	assert_int_equal(qemu_check(path), 0);
}

static void write_pat(struct image *img, uint64_t off, uint64_t len, uint32_t seed)
{
	uint8_t *b = malloc(len);
	fill(b, len, seed, off);
	assert_int_equal(image_write(img, off, b, len), 0);
	free(b);
}

static void expect_pat(struct image *img, uint64_t off, uint64_t len, uint32_t seed)
{
	uint8_t *b = malloc(len);
	assert_int_equal(image_read(img, off, b, len), 0);
	assert_true(is_pattern(b, len, seed, off));
	free(b);
}

static void expect_zero(struct image *img, uint64_t off, uint64_t len)
{
	uint8_t *b = malloc(len);
	assert_int_equal(image_read(img, off, b, len), 0);
	assert_true(is_zero(b, len));
	free(b);
}

/* ---- refcount packing --------------------------------------------------- */

static void t_rc_packing(void **state)
{
	(void)state;
	uint8_t blk[512];
	for (unsigned order = 0; order <= 6; order++) {
		uint64_t n = 512 * 8 >> order;
		uint64_t max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
		uint64_t *model = calloc(n, 8);
		memset(blk, 0, sizeof(blk));
		uint64_t s = 12345 + order;
		for (int round = 0; round < 3; round++) {
			for (uint64_t i = 0; i < n; i++) {
				s = s * 6364136223846793005ull + 1442695040888963407ull;
				uint64_t v = (s >> 7) & max;
				if (order == 6)
					v = s;
				model[i] = v;
				qcow2_rc_set(blk, i, order, v);
			}
			for (uint64_t i = 0; i < n; i++)
				assert_int_equal(qcow2_rc_get(blk, i, order), model[i]);
		}
		free(model);
	}
	/* Bit positions as the spec defines them. */
	memset(blk, 0, sizeof(blk));
	qcow2_rc_set(blk, 9, 0, 1);
	assert_int_equal(blk[1], 0x02);
	memset(blk, 0, sizeof(blk));
	qcow2_rc_set(blk, 1, 2, 0xf);
	assert_int_equal(blk[0], 0xf0);
	memset(blk, 0, sizeof(blk));
	qcow2_rc_set(blk, 3, 1, 2);
	assert_int_equal(blk[0], 0x80);
	memset(blk, 0, sizeof(blk));
	qcow2_rc_set(blk, 1, 4, 0x1234);
	assert_int_equal(blk[2], 0x12);
	assert_int_equal(blk[3], 0x34);
	memset(blk, 0, sizeof(blk));
	qcow2_rc_set(blk, 1, 6, 0x0102030405060708ull);
	assert_int_equal(blk[8], 1);
	assert_int_equal(blk[15], 8);
}

/* A refcount decoded independently of qcow2.c, per the spec. */
static uint64_t spec_refcount(const char *path, uint64_t host)
{
	uint32_t cb = (uint32_t)get_be(path, 20, 4);
	uint64_t cs = 1ull << cb;
	uint32_t order = get_be(path, 4, 4) >= 3 ? (uint32_t)get_be(path, 96, 4) : 4;
	uint64_t bits = 1ull << order;
	uint64_t rt = get_be(path, 48, 8);
	uint64_t entries = cs * 8 / bits;
	uint64_t ti = (host / cs) / entries, bi = (host / cs) % entries;
	uint64_t rb = get_be(path, rt + ti * 8, 8);
	if (!rb)
		return 0;
	if (bits >= 8)
		return get_be(path, rb + bi * bits / 8, (int)(bits / 8));
	uint64_t byte = get_be(path, rb + bi * bits / 8, 1);
	return (byte >> (bi * bits % 8)) & ((1u << bits) - 1);
}

/* Guest offset -> host offset through the file, per the spec. */
static uint64_t spec_map(const char *path, uint64_t guest, uint64_t *l2e_out)
{
	uint32_t cb = (uint32_t)get_be(path, 20, 4);
	uint64_t cs = 1ull << cb;
	bool ext = get_be(path, 4, 4) >= 3 && (get_be(path, 72, 8) & 16);
	uint64_t l2_entries = cs / (ext ? 16 : 8);
	uint64_t l2_index = (guest / cs) % l2_entries;
	uint64_t l1_index = (guest / cs) / l2_entries;
	uint64_t l1 = get_be(path, 40, 8);
	uint64_t l1e = get_be(path, l1 + l1_index * 8, 8);
	uint64_t l2 = l1e & 0x00fffffffffffe00ull;
	if (!l2)
		return 0;
	uint64_t l2e = get_be(path, l2 + l2_index * (ext ? 16 : 8), 8);
	if (l2e_out)
		*l2e_out = l2e;
	uint64_t host = l2e & 0x00fffffffffffe00ull;
	return host ? host + guest % cs : 0;
}

static void t_geometry(void **state)
{
	struct fx *fx = *state;
	for (uint32_t cb = 9; cb <= 21; cb++) {
		uint32_t cs = 1u << cb;
		uint64_t size = 64 * MiB + 4096;
		create(fx->path, size, cs, NULL);
		struct image *img = open_ro(fx->path);
		struct qcow2 *q = image_qcow2(img);
		assert_non_null(q);
		assert_int_equal(q->cluster_size, cs);
		assert_int_equal(q->l2_entries, cs / 8);
		assert_int_equal(q->rb_entries, (uint64_t)cs * 8 / 16);
		assert_int_equal(q->csize_shift, 62 - (cb - 8));
		uint64_t need = (size + (uint64_t)cs * (cs / 8) - 1) / ((uint64_t)cs * (cs / 8));
		assert_int_equal(q->l1_size, need);
		image_close(img);
		if (cb >= 14) {
			struct qcow2_create_opts o = { .size = size, .cluster_size = cs, .extended_l2 = true };
			create_o(fx->path, &o);
			img = open_ro(fx->path);
			q = image_qcow2(img);
			assert_int_equal(q->l2_entries, cs / 16);
			assert_int_equal(q->sc_bits, cb - 5);
			image_close(img);
		}
	}
}

/* Writes land where the spec's formulas say, for every cluster size, and
 * every cluster they use has refcount 1. */
static void t_spec_walk(void **state)
{
	struct fx *fx = *state;
	for (uint32_t cb = 9; cb <= 21; cb++) {
		uint32_t cs = 1u << cb;
		uint64_t size = cb >= 20 ? 256 * MiB : 64 * MiB;
		for (int ext = 0; ext < (cb >= 14 ? 2 : 1); ext++) {
			struct qcow2_create_opts o = { .size = size, .cluster_size = cs, .extended_l2 = ext };
			create_o(fx->path, &o);
			struct image *img = open_rw(fx->path);
			uint64_t offs[] = { 0, size / 2 + cs / 2 + 7, size - 100, (uint64_t)cs * (cs / 8) + 3 };
			for (int i = 0; i < 4; i++)
				if (offs[i] + 100 <= size)
					write_pat(img, offs[i], 100, 7 + i);
			image_close(img);
			for (int i = 0; i < 4; i++) {
				if (offs[i] + 100 > size)
					continue;
				uint64_t l2e;
				uint64_t host = spec_map(fx->path, offs[i], &l2e);
				assert_true(host != 0);
				assert_true(l2e & (1ull << 63)); /* COPIED: refcount 1 */
				uint8_t b[100];
				pread_file(fx->path, b, 100, host);
				assert_true(is_pattern(b, 100, 7 + i, offs[i]));
				assert_int_equal(spec_refcount(fx->path, host & ~(uint64_t)(cs - 1)), 1);
			}
			assert_int_equal(spec_refcount(fx->path, 0), 1);
			our_check_clean(fx->path);
		}
	}
}

/* Every refcount width, with enough allocation to need several blocks and
 * a growing refcount table. */
static void t_refcount_orders(void **state)
{
	struct fx *fx = *state;
	for (unsigned bits = 1; bits <= 64; bits *= 2) {
		struct qcow2_create_opts o = { .size = 16 * MiB, .cluster_size = 512, .refcount_bits = bits };
		create_o(fx->path, &o);
		struct image *img = open_rw(fx->path);
		for (uint64_t off = 0; off + 8000 <= 16 * MiB; off += 64 * 1024 + 512)
			write_pat(img, off, 8000, bits);
		image_close(img);
		img = open_ro(fx->path);
		for (uint64_t off = 0; off + 8000 <= 16 * MiB; off += 64 * 1024 + 512)
			expect_pat(img, off, 8000, bits);
		struct qcow2 *q = image_qcow2(img);
		assert_true(q->rt_clusters > 1 || bits < 64);
		image_close(img);
		uint64_t host = spec_map(fx->path, 64 * 1024 + 512, NULL);
		assert_int_equal(spec_refcount(fx->path, host & ~511ull), 1);
		our_check_clean(fx->path);
	}
}

/* Compressed cluster descriptors, decoded per the spec. */
static void t_compressed_descriptor(void **state)
{
	struct fx *fx = *state;
	uint32_t sizes[] = { 4096, 65536, 2u << 20 };
	for (int i = 0; i < 3; i++) {
		uint32_t cs = sizes[i], cb = (uint32_t)__builtin_ctz(cs);
		create(fx->path, 8 * (uint64_t)cs, cs, NULL);
		struct image *img = open_rw(fx->path);
		uint8_t *b = malloc(cs);
		for (uint32_t k = 0; k < cs; k++)
			b[k] = (uint8_t)(k / 100);
		assert_int_equal(image_write_compressed(img, cs, b, cs), 0);
		assert_int_equal(image_write_compressed(img, 3ull * cs, b, cs), 0);
		assert_int_equal(image_write_compressed(img, 100, b, cs), -EINVAL); /* misaligned */
		uint64_t pnum, host;
		unsigned flags;
		assert_int_equal(image_block_status(img, cs, cs, &pnum, &flags, &host), 0);
		assert_true(flags & IMAGE_BS_COMPRESSED);
		image_close(img);
		uint64_t l2e;
		spec_map(fx->path, 3ull * cs, &l2e);
		assert_true(l2e & (1ull << 62));
		assert_false(l2e & (1ull << 63));
		unsigned x = 62 - (cb - 8);
		uint64_t coff = l2e & ((1ull << x) - 1);
		uint64_t nsect = ((l2e >> x) & ((1ull << (cb - 8)) - 1)) + 1;
		size_t clen = (size_t)(nsect * 512 - (coff & 511));
		uint8_t *c = malloc(clen), *out = malloc(cs);
		pread_file(fx->path, c, clen, coff);
		z_stream z = { 0 };
		assert_int_equal(inflateInit2(&z, -12), Z_OK);
		z.next_in = c;
		z.avail_in = (uInt)clen;
		z.next_out = out;
		z.avail_out = cs;
		int zr = inflate(&z, Z_FINISH);
		assert_true(zr == Z_STREAM_END || (zr == Z_BUF_ERROR && z.avail_out == 0));
		inflateEnd(&z);
		assert_memory_equal(out, b, cs);
		free(c);
		free(out);
		free(b);
		our_check_clean(fx->path);
	}
}

/* ---- hostile headers ------------------------------------------------------- */

struct patch {
	const char *what;
	uint64_t off;
	uint64_t val;
	int bytes;
	const char *expect;         /* substring of the error */
};

static void t_hostile_headers(void **state)
{
	struct fx *fx = *state;
	const uint64_t cs = 65536;
	static const struct patch patches[] = {
		{ "magic", 0, 0x514649fc, 4, "not a qcow2" },
		{ "version 1", 4, 1, 4, "version" },
		{ "version 4", 4, 4, 4, "version" },
		{ "cluster_bits 8", 20, 8, 4, "cluster" },
		{ "cluster_bits 22", 20, 22, 4, "cluster" },
		{ "cluster_bits 31", 20, 31, 4, "cluster" },
		{ "header_length 80", 100, 80, 4, "header_length" },
		{ "header_length 108", 100, 108, 4, "header_length" },
		{ "header_length > cluster", 100, 65536 + 8, 4, "header_length" },
		{ "refcount_order 7", 96, 7, 4, "refcount_order" },
		{ "refcount_order 99", 96, 99, 4, "refcount_order" },
		{ "huge l1_size", 36, 0xffffffff, 4, "L1" },
		{ "l1 past EOF", 40, 1ull << 40, 8, "L1" },
		{ "l1 misaligned", 40, 3 * 65536 + 8, 8, "L1" },
		{ "l1 on reftable", 40, 65536, 8, "overlap" },
		{ "l1 on header", 40, 0, 8, "L1" },
		{ "reftable past EOF", 48, 1ull << 40, 8, "refcount table" },
		{ "reftable misaligned", 48, 65536 + 512, 8, "refcount table" },
		{ "reftable 0 clusters", 56, 0, 4, "refcount table" },
		{ "reftable huge", 56, 0x7fffffff, 4, "refcount table" },
		{ "backing offset past cluster", 8, 70000, 8, "backing file" },
		{ "backing length too long", 16, 2000, 4, "backing file" },
		{ "snapshots past EOF", 64, 1ull << 40, 8, "snapshot" },
		{ "snapshot count huge", 60, 0x7fffffff, 4, "snapshot" },
		{ "unknown incompatible bit", 72, 1ull << 7, 8, "bit 7" },
		{ "external data file", 72, 1ull << 2, 8, "external data" },
		{ "compression bit, type 0", 72, 1ull << 3, 8, "compression" },
		{ "crypt", 32, 1, 4, "encrypt" },
		{ "size 2^63", 24, 1ull << 63, 8, "size" },
		{ "size needs a bigger L1", 24, 1ull << 50, 8, "L1" },
	};
	for (size_t i = 0; i < sizeof(patches) / sizeof(patches[0]); i++) {
		const struct patch *p = &patches[i];
		create(fx->path, 16 * MiB, 65536, NULL);
		if (!strcmp(p->what, "backing length too long") || !strcmp(p->what, "backing offset past cluster"))
			put_be(fx->path, 16, 10, 4), put_be(fx->path, 8, 65536 - 10, 8);
		if (!strcmp(p->what, "snapshot count huge") || !strcmp(p->what, "snapshots past EOF"))
			put_be(fx->path, 60, 1, 4);
		put_be(fx->path, p->off, p->val, p->bytes);
		const char *m = open_fails(fx->path, "qcow2", false);
		if (!strstr(m, p->expect))
			fail_msg("%s: error '%s' does not mention '%s'", p->what, m, p->expect);
		assert_non_null(strstr(m, fx->path));
	}
	/* The feature table names unknown bits: ours names bit 4... reuse it. */
	create(fx->path, 16 * MiB, 65536, NULL);
	put_be(fx->path, 72, 1ull << 33, 8);
	assert_non_null(strstr(open_fails(fx->path, "qcow2", false), "bit 33"));
	/* Extended L2 needs 16K clusters. */
	create(fx->path, 16 * MiB, 4096, NULL);
	put_be(fx->path, 72, 1ull << 4, 8);
	assert_non_null(strstr(open_fails(fx->path, "qcow2", false), "16 KiB"));
	/* Compression type 2 (unknown). */
	create(fx->path, 16 * MiB, 65536, NULL);
	put_be(fx->path, 72, 1ull << 3, 8);
	put_be(fx->path, 104, 2, 1);
	assert_non_null(strstr(open_fails(fx->path, "qcow2", false), "compression type"));
	/* A header extension running past the cluster. */
	create(fx->path, 16 * MiB, 65536, NULL);
	put_be(fx->path, 112, 0x12345678, 4);
	put_be(fx->path, 116, 70000, 4);
	assert_non_null(strstr(open_fails(fx->path, "qcow2", false), "extension"));
	/* Too short to be anything. */
	int fd = open(fx->path, O_RDWR | O_TRUNC);
	assert_int_equal(write(fd, "QFI\xfb", 4), 4);
	close(fd);
	assert_non_null(strstr(open_fails(fx->path, "qcow2", false), "too short"));
	(void)cs;
}

static void t_hostile_snapshot_table(void **state)
{
	struct fx *fx = *state;
	/* Garbage at the snapshot table: a big count of random entries. */
	for (uint32_t seed = 1; seed <= 20; seed++) {
		create(fx->path, 16 * MiB, 65536, NULL);
		struct image *img = open_rw(fx->path);
		write_pat(img, 0, 300000, seed);
		image_close(img);
		uint8_t junk[4096];
		fill(junk, sizeof(junk), seed, 0);
		int fd = open(fx->path, O_RDWR);
		struct stat st;
		fstat(fd, &st);
		assert_int_equal(pwrite(fd, junk, sizeof(junk), st.st_size), (ssize_t)sizeof(junk));
		close(fd);
		put_be(fx->path, 60, 1 + seed * 37, 4);
		put_be(fx->path, 64, (uint64_t)st.st_size, 8);
		struct image_open_opts o = { .path = fx->path, .format = "qcow2", .readonly = true };
		char err[512];
		img = image_open(&o, err, sizeof(err));
		if (img) {
			/* Parsed as valid by chance: listing must work. */
			struct qcow2_snapshot *s;
			unsigned n;
			assert_int_equal(qcow2_snapshot_list(img, &s, &n), 0);
			qcow2_snapshot_list_free(s, n);
			image_close(img);
		} else {
			assert_non_null(strstr(err, "snapshot"));
		}
	}
}

/* Corrupt tables found at I/O time: -EIO on that range only. */
static void t_hostile_entries(void **state)
{
	struct fx *fx = *state;
	const uint64_t cs = 65536;
	uint8_t b[512];
	struct {
		const char *what;
		uint64_t entry;         /* 0 = patch the L1 entry instead */
		uint64_t l1e;
	} cases[] = {
		{ "L2 reserved bits", (1ull << 5), 0 },
		{ "L2 reserved high bits", (1ull << 57), 0 },
		{ "L2 unaligned", 512, 0 },
		{ "L2 past EOF", 1ull << 40, 0 },
		{ "compressed past EOF", (1ull << 62) | (1ull << 40), 0 },
		{ "compressed in header", (1ull << 62) | 100, 0 },
		{ "L1 past EOF", 0, (1ull << 40) | (1ull << 63) },
		{ "L1 reserved", 0, 0, },
		{ "L1 unaligned", 0, 0x30200 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		create(fx->path, 16 * MiB, 65536, NULL);
		struct image *img = open_rw(fx->path);
		write_pat(img, 0, 2 * cs, 1);
		write_pat(img, 8 * MiB, 4096, 2);
		image_close(img);
		uint64_t l1 = get_be(fx->path, 40, 8);
		uint64_t l2 = get_be(fx->path, l1, 8) & QCOW2_OFFSET_MASK;
		if (cases[i].entry) {
			uint64_t e = get_be(fx->path, l2 + 8, 8);
			uint64_t ne = (cases[i].entry & ((1ull << 62) | 1)) && (cases[i].entry >> 62)
					      ? cases[i].entry
					      : (cases[i].entry >= cs ? cases[i].entry : e | cases[i].entry);
			put_be(fx->path, l2 + 8, ne, 8);
		} else {
			uint64_t v = cases[i].l1e ? cases[i].l1e : get_be(fx->path, l1, 8) | (1ull << 60);
			put_be(fx->path, l1, v, 8);
		}
		img = open_ro(fx->path);
		int r = image_read(img, cs, b, sizeof(b));
		if (r != -EIO)
			fail_msg("%s: read gave %d, expected -EIO", cases[i].what, r);
		if (cases[i].entry) {
			/* Cluster 0 of the same table is fine. */
			assert_int_equal(image_read(img, 0, b, sizeof(b)), 0);
			assert_true(is_pattern(b, sizeof(b), 1, 0));
		}
		image_close(img);
		/* Writes into the range fail too, without crashing. */
		img = open_rw(fx->path);
		memset(b, 1, sizeof(b));
		r = image_write(img, cs + 512, b, sizeof(b));
		assert_true(r == -EIO || r == 0);
		image_close(img);
	}
	/* Compressed garbage: a plausible descriptor over random bytes. */
	create(fx->path, 16 * MiB, 65536, NULL);
	struct image *img = open_rw(fx->path);
	write_pat(img, 0, 2 * cs, 1);
	image_close(img);
	uint64_t l1 = get_be(fx->path, 40, 8);
	uint64_t l2 = get_be(fx->path, l1, 8) & QCOW2_OFFSET_MASK;
	uint64_t host = get_be(fx->path, l2, 8) & QCOW2_OFFSET_MASK;
	put_be(fx->path, l2 + 8, (1ull << 62) | (10ull << 54) | host, 8);
	img = open_ro(fx->path);
	assert_int_equal(image_read(img, cs, b, sizeof(b)), -EIO);
	image_close(img);
	/* v2 has no zero flag. */
	create(fx->path, 16 * MiB, 65536, "0.10");
	img = open_rw(fx->path);
	write_pat(img, 0, 2 * cs, 1);
	image_close(img);
	l1 = get_be(fx->path, 40, 8);
	l2 = get_be(fx->path, l1, 8) & QCOW2_OFFSET_MASK;
	put_be(fx->path, l2 + 8, get_be(fx->path, l2 + 8, 8) | 1, 8);
	img = open_ro(fx->path);
	assert_int_equal(image_read(img, cs, b, sizeof(b)), -EIO);
	image_close(img);
	/* Extended L2: a subcluster both allocated and zero. */
	struct qcow2_create_opts o = { .size = 16 * MiB, .cluster_size = 65536, .extended_l2 = true };
	create_o(fx->path, &o);
	img = open_rw(fx->path);
	write_pat(img, 0, 2 * cs, 1);
	image_close(img);
	l1 = get_be(fx->path, 40, 8);
	l2 = get_be(fx->path, l1, 8) & QCOW2_OFFSET_MASK;
	put_be(fx->path, l2 + 16 + 8, 0x00000001ffffffffull, 8);
	img = open_ro(fx->path);
	assert_int_equal(image_read(img, cs, b, sizeof(b)), -EIO);
	assert_int_equal(image_read(img, cs + 4096, b, sizeof(b)), 0);
	image_close(img);
	/* A refcount block pointer past EOF: allocation fails cleanly. */
	create(fx->path, 16 * MiB, 65536, NULL);
	uint64_t rt = get_be(fx->path, 48, 8);
	put_be(fx->path, rt, 1ull << 40, 8);
	img = open_rw(fx->path);
	memset(b, 1, sizeof(b));
	assert_int_equal(image_write(img, 0, b, sizeof(b)), -EIO);
	assert_int_equal(image_read(img, 0, b, sizeof(b)), 0);
	image_close(img);
}

static void t_corrupt_and_autoclear_bits(void **state)
{
	struct fx *fx = *state;
	create(fx->path, 16 * MiB, 65536, NULL);
	struct image *img = open_rw(fx->path);
	write_pat(img, 0, 4096, 3);
	image_close(img);
	put_be(fx->path, 72, 2, 8);
	const char *m = open_fails(fx->path, "qcow2", true);
	assert_non_null(strstr(m, "corrupt"));
	img = open_ro(fx->path);
	expect_pat(img, 0, 4096, 3);
	struct image_info info;
	image_get_info(img, &info);
	assert_true(info.corrupt);
	image_close(img);
	img = open_ex(fx->path, "qcow2", true, IMAGE_OPEN_CHECK);
	struct qcow2_check_result r = { 0 };
	assert_int_equal(qcow2_check(img, QCOW2_FIX_ALL, &r), 0);
	assert_int_equal(r.corruptions, 0);
	image_close(img);
	assert_int_equal(get_be(fx->path, 72, 8) & 2, 0);
	img = open_rw(fx->path);
	image_close(img);
	/* Unknown autoclear bits are dropped on a read-write open. */
	put_be(fx->path, 88, 0x8000000000000005ull, 8);
	img = open_ro(fx->path);
	image_close(img);
	assert_int_equal(get_be(fx->path, 88, 8), 0x8000000000000005ull);
	img = open_rw(fx->path);
	image_close(img);
	assert_int_equal(get_be(fx->path, 88, 8), 0);
}

/* Unknown header extensions and additional header fields survive a
 * header rewrite. */
static void t_unknown_extension_kept(void **state)
{
	struct fx *fx = *state;
	create(fx->path, 16 * MiB, 65536, NULL);
	/* Our header: 112 bytes, then extensions. Insert one in front. */
	uint8_t h[4096];
	pread_file(fx->path, h, sizeof(h), 0);
	uint8_t nh[4096];
	memset(nh, 0, sizeof(nh));
	memcpy(nh, h, 112);
	nh[110] = 0xab; /* an unknown additional header field byte */
	uint8_t ext[16] = { 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 0 };
	memcpy(nh + 112, ext, 16);
	memcpy(nh + 128, h + 112, sizeof(h) - 128);
	int fd = open(fx->path, O_RDWR);
	assert_int_equal(pwrite(fd, nh, sizeof(nh), 0), (ssize_t)sizeof(nh));
	close(fd);
	struct image *img = open_rw(fx->path);
	assert_int_equal(qcow2_set_backing(img, "other.raw", "raw"), 0);
	image_close(img);
	pread_file(fx->path, h, sizeof(h), 0);
	assert_int_equal(h[110], 0xab);
	bool found = false;
	for (size_t i = 112; i + 16 <= sizeof(h); i += 8)
		if (!memcmp(h + i, ext, 13))
			found = true;
	assert_true(found);
}

/* ---- probing --------------------------------------------------------------------- */

static void t_probing(void **state)
{
	struct fx *fx = *state;
	uint8_t h[8] = { 'Q', 'F', 'I', 0xfb, 0, 0, 0, 3 };
	assert_true(qcow2_probe(h, 8));
	h[7] = 4;
	assert_false(qcow2_probe(h, 8));
	assert_false(qcow2_probe(h, 3));
	/* A raw disk whose guest wrote a qcow2 header naming a host file. */
	char *secret = pth(fx, "secret");
	int fd = open(secret, O_RDWR | O_CREAT, 0600);
	assert_int_equal(write(fd, "SECRET", 6), 6);
	close(fd);
	char *evil = pth(fx, "evil.img");
	struct qcow2_create_opts o = { .size = 1 * MiB, .backing_file = secret, .backing_fmt = "raw" };
	create_o(evil, &o);
	struct stat st;
	stat(evil, &st);
	/* format=raw: raw bytes, no backing file opened. */
	struct image *img = open_ex(evil, "raw", false, 0);
	assert_int_equal(image_size(img), (uint64_t)st.st_size);
	assert_null(image_backing(img));
	uint8_t b[8];
	assert_int_equal(image_read(img, 0, b, 8), 0);
	assert_memory_equal(b, "QFI\xfb", 4);
	struct image_info info;
	image_get_info(img, &info);
	assert_int_equal(info.format, IMAGE_RAW);
	image_close(img);
	/* Probing refuses to follow the backing file... */
	const char *m = open_fails(evil, NULL, false);
	assert_non_null(strstr(m, "backing"));
	/* ...unless asked to, or the format is explicit. */
	char err[512];
	struct image_open_opts oo = { .path = evil, .readonly = true, .allow_probed_backing = true };
	img = image_open(&oo, err, sizeof(err));
	assert_non_null(img);
	assert_non_null(image_backing(img));
	image_close(img);
	oo.allow_probed_backing = false;
	oo.no_backing = true;
	img = image_open(&oo, err, sizeof(err));
	assert_non_null(img);
	image_close(img);
	img = open_ex(evil, "qcow2", false, 0);
	assert_non_null(image_backing(img));
	image_close(img);
	/* A probed image without a backing file is fine. */
	create(fx->path, 1 * MiB, 65536, NULL);
	img = open_ex(fx->path, NULL, false, 0);
	image_get_info(img, &info);
	assert_int_equal(info.format, IMAGE_QCOW2);
	image_close(img);
	/* Unknown format names are refused. */
	assert_non_null(strstr(open_fails(fx->path, "vmdk", false), "vmdk"));
}

/* ---- round trips ------------------------------------------------------------------ */

static void t_roundtrip_random(void **state)
{
	struct fx *fx = *state;
	uint32_t sizes[] = { 512, 4096, 65536, 2u << 20 };
	for (int si = 0; si < 4; si++) {
		for (int v = 2; v <= 3; v++) {
			uint64_t size = 24 * MiB + 1024;
			create(fx->path, size, sizes[si], v == 2 ? "0.10" : "1.1");
			uint8_t *mem = calloc(1, size);
			struct image *img = open_rw(fx->path);
			uint64_t s = 99 + si;
			uint8_t *b = malloc(300000);
			for (int i = 0; i < 150; i++) {
				s = s * 6364136223846793005ull + 1;
				uint64_t off = (s >> 11) % size;
				uint64_t len = 1 + (s >> 40) % 300000;
				if (len > size - off)
					len = size - off;
				fill(b, len, (uint32_t)i, off);
				assert_int_equal(image_write(img, off, b, len), 0);
				memcpy(mem + off, b, len);
				if (i % 50 == 0) {
					image_close(img);
					img = open_rw(fx->path);
				}
			}
			image_close(img);
			img = open_ro(fx->path);
			uint8_t *got = malloc(size);
			assert_int_equal(image_read(img, 0, got, size), 0);
			assert_memory_equal(got, mem, size);
			assert_int_equal(image_read(img, size - 1, got, 2), -EINVAL);
			assert_int_equal(image_write(img, 0, got, 1), -EROFS);
			image_close(img);
			our_check_clean(fx->path);
			free(got);
			free(mem);
			free(b);
		}
	}
}

static void t_zero_discard(void **state)
{
	struct fx *fx = *state;
	const uint64_t cs = 65536;
	for (int v = 2; v <= 3; v++) {
		create(fx->path, 4 * MiB, cs, v == 2 ? "0.10" : "1.1");
		struct image *img = open_rw(fx->path);
		write_pat(img, 0, 4 * MiB, 5);
		/* Full clusters: zero flag (v3) or deallocation (v2). */
		assert_int_equal(image_write_zeroes(img, cs, 2 * cs, false), 0);
		/* Partial: zeros written. */
		assert_int_equal(image_write_zeroes(img, 5 * cs + 100, 1000, true), 0);
		assert_int_equal(image_discard(img, 8 * cs, 2 * cs), 0);
		assert_int_equal(image_discard(img, 12 * cs + 512, 1024), 0); /* partial: advisory no-op */
		expect_pat(img, 0, cs, 5);
		expect_zero(img, cs, 2 * cs);
		expect_pat(img, 5 * cs, 100, 5);
		expect_zero(img, 5 * cs + 100, 1000);
		expect_pat(img, 5 * cs + 1100, cs - 1100, 5);
		expect_zero(img, 8 * cs, 2 * cs);
		expect_pat(img, 12 * cs, cs, 5);
		uint64_t pnum, host;
		unsigned flags;
		assert_int_equal(image_block_status(img, cs, 2 * cs, &pnum, &flags, &host), 0);
		assert_int_equal(pnum, 2 * cs);
		if (v == 3) /* kept allocation (may_unmap false): zero flag */
			assert_int_equal(flags, IMAGE_BS_ZERO | IMAGE_BS_ALLOCATED);
		else /* v2 has no zero flag: zeros were written */
			assert_int_equal(flags, IMAGE_BS_DATA | IMAGE_BS_ALLOCATED);
		assert_int_equal(image_block_status(img, 8 * cs, 2 * cs, &pnum, &flags, &host), 0);
		assert_int_equal(flags, IMAGE_BS_ZERO);
		/* Writing into a zeroed cluster brings it back to data. */
		write_pat(img, cs + 10, 10, 6);
		expect_zero(img, cs, 10);
		expect_pat(img, cs + 10, 10, 6);
		expect_zero(img, cs + 20, cs - 20);
		image_close(img);
		our_check_clean(fx->path);
	}
}

static void t_backing_chain(void **state)
{
	struct fx *fx = *state;
	char err[512];
	/* base.raw (3 MiB) <- mid.qcow2 (v2) <- top.qcow2 (4 MiB, v3, 4K clusters) */
	char *base = pth(fx, "base.raw"), *mid = pth(fx, "mid.qcow2"), *top = pth(fx, "top.qcow2");
	assert_int_equal(image_create_raw(base, 3 * MiB, NULL, err, sizeof(err)), 0);
	struct image *img = open_ex(base, "raw", true, 0);
	write_pat(img, 0, 3 * MiB, 1);
	image_close(img);
	struct qcow2_create_opts o = { .backing_file = "base.raw", .backing_fmt = "raw", .compat = "0.10" };
	create_o(mid, &o); /* size from the backing file */
	img = open_rw(mid);
	assert_int_equal(image_size(img), 3 * MiB);
	write_pat(img, MiB, 100000, 2);
	image_close(img);
	struct qcow2_create_opts o2 = { .size = 4 * MiB, .cluster_size = 4096, .backing_file = "mid.qcow2",
					.backing_fmt = "qcow2" };
	create_o(top, &o2);
	img = open_rw(top);
	assert_non_null(image_backing(img));
	assert_non_null(image_backing(image_backing(img)));
	assert_null(image_backing(image_backing(image_backing(img))));
	expect_pat(img, 0, MiB, 1);
	expect_pat(img, MiB, 100000, 2);
	expect_pat(img, MiB + 100000, 2 * MiB - 100000, 1);
	expect_zero(img, 3 * MiB, MiB);
	/* Partial-cluster write: the rest of the cluster comes from below. */
	write_pat(img, MiB + 50, 100, 3);
	expect_pat(img, MiB, 50, 2);
	expect_pat(img, MiB + 50, 100, 3);
	expect_pat(img, MiB + 150, 100000 - 150, 2);
	/* Discard in v3 with a backing file reads zeros, not the backing. */
	assert_int_equal(image_discard(img, 8192, 4096), 0);
	expect_zero(img, 8192, 4096);
	expect_pat(img, 4096, 4096, 1);
	uint64_t pnum, host;
	unsigned flags;
	assert_int_equal(image_block_status(img, 0, 4096, &pnum, &flags, &host), 0);
	assert_int_equal(flags, 0); /* from the backing chain */
	assert_int_equal(image_block_status(img, 3 * MiB, MiB, &pnum, &flags, &host), 0);
	assert_int_equal(flags, IMAGE_BS_ZERO);
	struct image_info info;
	image_get_info(img, &info);
	assert_string_equal(info.backing_file, "mid.qcow2");
	assert_string_equal(info.backing_format, "qcow2");
	image_close(img);
	our_check_clean(top);
	/* no_backing: reads of unallocated ranges are zeros. */
	struct image_open_opts nb = { .path = top, .format = "qcow2", .readonly = true, .no_backing = true };
	img = image_open(&nb, err, sizeof(err));
	assert_non_null(img);
	assert_null(image_backing(img));
	expect_zero(img, 0, 4096);
	image_close(img);
	/* A missing backing file is an error naming it. */
	unlink(base);
	assert_non_null(strstr(open_fails(top, "qcow2", false), "base.raw"));
	/* A backing loop is refused. */
	struct qcow2_create_opts o3 = { .size = MiB, .backing_file = "loop.qcow2", .backing_fmt = "qcow2" };
	create_o(pth(fx, "loop.qcow2"), &o3);
	assert_non_null(strstr(open_fails(pth(fx, "loop.qcow2"), "qcow2", false), "loop"));
}

static void t_compressed_overwrite(void **state)
{
	struct fx *fx = *state;
	const uint32_t cs = 65536;
	for (int zstd = 0; zstd < 2; zstd++) {
		const uint64_t size = 2 * MiB + 1024;
		struct qcow2_create_opts o = { .size = size, .cluster_size = cs,
					       .compression_type = zstd ? "zstd" : "zlib" };
		create_o(fx->path, &o);
		struct image *img = open_rw(fx->path);
		uint8_t *b = malloc(cs);
		for (uint64_t c = 0; c < size; c += cs) {
			uint64_t n = size - c < cs ? size - c : cs;
			for (uint64_t k = 0; k < n; k++)
				b[k] = (uint8_t)((c + k) / 1000);
			assert_int_equal(image_write_compressed(img, c, b, n), 0);
		}
		uint64_t pnum, host;
		unsigned flags;
		assert_int_equal(image_block_status(img, 0, cs, &pnum, &flags, &host), 0);
		assert_true(flags & IMAGE_BS_COMPRESSED);
		/* A guest write to a compressed cluster rewrites it uncompressed. */
		write_pat(img, cs + 100, 50, 9);
		assert_int_equal(image_block_status(img, cs, cs, &pnum, &flags, &host), 0);
		assert_false(flags & IMAGE_BS_COMPRESSED);
		assert_true(flags & IMAGE_BS_DATA);
		uint8_t *got = malloc(cs);
		assert_int_equal(image_read(img, cs, got, cs), 0);
		for (uint64_t k = 0; k < cs; k++) {
			if (k >= 100 && k < 150)
				assert_int_equal(got[k], pat(9, cs + k));
			else
				assert_int_equal(got[k], (uint8_t)((cs + k) / 1000));
		}
		/* Incompressible data is stored plainly. */
		uint64_t x = 88172645463325252ull;
		for (uint32_t k = 0; k < cs; k++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			b[k] = (uint8_t)(x >> 32);
		}
		assert_int_equal(image_write_compressed(img, 4 * cs, b, cs), 0);
		assert_int_equal(image_block_status(img, 4 * cs, cs, &pnum, &flags, &host), 0);
		assert_false(flags & IMAGE_BS_COMPRESSED);
		image_close(img);
		our_check_clean(fx->path);
		img = open_ro(fx->path);
		struct image_info info;
		image_get_info(img, &info);
		assert_string_equal(info.compression_type, zstd ? "zstd" : "zlib");
		assert_int_equal(image_read(img, 2 * cs, got, cs), 0);
		for (uint64_t k = 0; k < cs; k++)
			assert_int_equal(got[k], (uint8_t)((2 * cs + k) / 1000));
		image_close(img);
		free(got);
		free(b);
	}
	/* Raw images have no compressed clusters. */
	char err[256];
	assert_int_equal(image_create_raw(pth(fx, "r.raw"), MiB, NULL, err, sizeof(err)), 0);
	struct image *r = open_ex(pth(fx, "r.raw"), "raw", true, 0);
	uint8_t z[512] = { 0 };
	assert_int_equal(image_write_compressed(r, 0, z, 512), -ENOTSUP);
	image_close(r);
}

static void t_snapshots(void **state)
{
	struct fx *fx = *state;
	char err[512];
	for (int v = 2; v <= 3; v++) {
		create(fx->path, 8 * MiB, 65536, v == 2 ? "0.10" : "1.1");
		struct image *img = open_rw(fx->path);
		write_pat(img, 0, 8 * MiB, 1);
		assert_int_equal(qcow2_snapshot_create(img, "one", err, sizeof(err)), 0);
		write_pat(img, MiB, 2 * MiB, 2);
		assert_int_equal(qcow2_snapshot_create(img, "two", err, sizeof(err)), 0);
		assert_int_equal(qcow2_snapshot_create(img, "two", err, sizeof(err)), -EEXIST);
		write_pat(img, 0, 100, 3);
		expect_pat(img, 0, 100, 3);
		struct qcow2_snapshot *s;
		unsigned n;
		assert_int_equal(qcow2_snapshot_list(img, &s, &n), 0);
		assert_int_equal(n, 2);
		assert_string_equal(s[0].id, "1");
		assert_string_equal(s[0].name, "one");
		assert_string_equal(s[1].id, "2");
		assert_int_equal(s[1].disk_size, 8 * MiB);
		assert_true(s[1].date_sec > 1600000000u);
		qcow2_snapshot_list_free(s, n);
		image_close(img);
		our_check_clean(fx->path);
		img = open_rw(fx->path);
		assert_int_equal(qcow2_snapshot_apply(img, "one", err, sizeof(err)), 0);
		expect_pat(img, 0, 8 * MiB, 1);
		write_pat(img, 4 * MiB, 4096, 4);
		assert_int_equal(qcow2_snapshot_apply(img, "nope", err, sizeof(err)), -ENOENT);
		image_close(img);
		our_check_clean(fx->path);
		img = open_rw(fx->path);
		assert_int_equal(qcow2_snapshot_apply(img, "2", err, sizeof(err)), 0);
		expect_pat(img, 0, MiB, 1);
		expect_pat(img, MiB, 2 * MiB, 2);
		expect_pat(img, 3 * MiB, 5 * MiB, 1);
		assert_int_equal(qcow2_snapshot_delete(img, "one", err, sizeof(err)), 0);
		image_close(img);
		our_check_clean(fx->path);
		img = open_rw(fx->path);
		assert_int_equal(qcow2_snapshot_delete(img, "two", err, sizeof(err)), 0);
		assert_int_equal(qcow2_snapshot_list(img, &s, &n), 0);
		assert_int_equal(n, 0);
		expect_pat(img, MiB, 2 * MiB, 2);
		/* Back to refcount 1 everywhere: writes go in place again. */
		write_pat(img, MiB, 4096, 5);
		image_close(img);
		our_check_clean(fx->path);
		if (have_qemu_img()) {
			/* qemu-img sees our snapshots. */
			img = open_rw(fx->path);
			assert_int_equal(qcow2_snapshot_create(img, "snap-x", err, sizeof(err)), 0);
			image_close(img);
			char cmd[512];
			snprintf(cmd, sizeof(cmd), "qemu-img snapshot -l '%s' | grep -q snap-x", fx->path);
			assert_int_equal(system(cmd), 0);
			snprintf(cmd, sizeof(cmd), "qemu-img snapshot -c qsnap '%s' && qemu-img check -q '%s'", fx->path,
				 fx->path);
			assert_int_equal(system(cmd), 0);
			img = open_rw(fx->path);
			assert_int_equal(qcow2_snapshot_delete(img, "qsnap", err, sizeof(err)), 0);
			assert_int_equal(qcow2_snapshot_apply(img, "snap-x", err, sizeof(err)), 0);
			image_close(img);
			our_check_clean(fx->path);
		}
	}
	/* Refused on raw images. */
	assert_int_equal(image_create_raw(pth(fx, "r.raw"), MiB, NULL, err, sizeof(err)), 0);
	struct image *r = open_ex(pth(fx, "r.raw"), "raw", true, 0);
	assert_int_equal(qcow2_snapshot_create(r, "x", err, sizeof(err)), -ENOTSUP);
	image_close(r);
}

static void t_resize(void **state)
{
	struct fx *fx = *state;
	/* 512-byte clusters: growing 1 MiB -> 64 MiB needs a bigger L1. */
	create(fx->path, MiB + 512, 512, NULL);
	struct image *img = open_rw(fx->path);
	write_pat(img, 0, MiB + 512, 1);
	uint32_t old_l1 = image_qcow2(img)->l1_size;
	assert_int_equal(image_resize(img, 64 * MiB, false), 0);
	assert_true(image_qcow2(img)->l1_size > old_l1);
	assert_int_equal(image_size(img), 64 * MiB);
	expect_pat(img, 0, MiB + 512, 1);
	expect_zero(img, MiB + 512, 63 * MiB - 512);
	write_pat(img, 60 * MiB, 4096, 2);
	assert_int_equal(image_resize(img, 32 * MiB, false), -EINVAL);
	assert_int_equal(image_resize(img, 32 * MiB, true), 0);
	image_close(img);
	our_check_clean(fx->path);
	img = open_rw(fx->path);
	assert_int_equal(image_size(img), 32 * MiB);
	expect_pat(img, 0, MiB + 512, 1);
	/* A grown tail shows zeros, not what was there before the shrink. */
	assert_int_equal(image_resize(img, 1000 * 512, true), 0);
	assert_int_equal(image_resize(img, 64 * MiB, false), 0);
	expect_pat(img, 0, 1000 * 512, 1);
	expect_zero(img, 1000 * 512, 63 * MiB);
	image_close(img);
	our_check_clean(fx->path);
	/* Snapshots: growing is fine, shrinking is refused. */
	img = open_rw(fx->path);
	char err[256];
	assert_int_equal(qcow2_snapshot_create(img, "s", err, sizeof(err)), 0);
	assert_int_equal(image_resize(img, 65 * MiB, false), 0);
	assert_int_equal(image_resize(img, 2 * MiB, true), -ENOTSUP);
	image_close(img);
	our_check_clean(fx->path);
	/* Raw. */
	char *raw = pth(fx, "r.raw");
	assert_int_equal(image_create_raw(raw, MiB, NULL, err, sizeof(err)), 0);
	img = open_ex(raw, "raw", true, 0);
	assert_int_equal(image_resize(img, 3 * MiB, false), 0);
	assert_int_equal(image_size(img), 3 * MiB);
	assert_int_equal(image_resize(img, MiB, false), -EINVAL);
	assert_int_equal(image_resize(img, MiB, true), 0);
	image_close(img);
	struct stat st;
	stat(raw, &st);
	assert_int_equal(st.st_size, MiB);
}

static void t_set_backing(void **state)
{
	struct fx *fx = *state;
	char err[256];
	char *b1 = pth(fx, "b1.raw"), *b2 = pth(fx, "b2.raw");
	assert_int_equal(image_create_raw(b1, MiB, NULL, err, sizeof(err)), 0);
	assert_int_equal(image_create_raw(b2, MiB, NULL, err, sizeof(err)), 0);
	struct image *img = open_ex(b1, "raw", true, 0);
	write_pat(img, 0, MiB, 1);
	image_close(img);
	img = open_ex(b2, "raw", true, 0);
	write_pat(img, 0, MiB, 2);
	image_close(img);
	struct qcow2_create_opts o = { .size = MiB, .backing_file = "b1.raw", .backing_fmt = "raw" };
	create_o(fx->path, &o);
	img = open_rw(fx->path);
	expect_pat(img, 0, MiB, 1);
	assert_int_equal(qcow2_set_backing(img, "b2.raw", "raw"), 0);
	image_close(img);
	img = open_rw(fx->path);
	expect_pat(img, 0, MiB, 2);
	char longname[1100];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	assert_int_equal(qcow2_set_backing(img, longname, NULL), -ENAMETOOLONG);
	assert_int_equal(qcow2_set_backing(img, NULL, NULL), 0);
	image_close(img);
	img = open_rw(fx->path);
	assert_null(image_backing(img));
	expect_zero(img, 0, MiB);
	struct image_info info;
	image_get_info(img, &info);
	assert_string_equal(info.backing_file, "");
	image_close(img);
	our_check_clean(fx->path);
}

static void t_measure(void **state)
{
	(void)state;
	char err[256];
	struct qcow2_measure m;
	/* Reference values from qemu-img 7.2 measure. */
	struct {
		uint64_t size;
		uint32_t cs;
		bool ext;
		const char *prealloc;
		uint64_t required, full;
	} cases[] = {
		{ 1ull << 30, 0, false, NULL, 393216, 1074135040 },
		{ 1ull << 30, 512, false, NULL, 21385216, 1095127040 },
		{ 1ull << 30, 0, false, "full", 1074135040, 1074135040 },
		{ 10ull << 30, 0, true, NULL, 3211264, 10740629504ull },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct qcow2_create_opts o = { .size = cases[i].size, .cluster_size = cases[i].cs,
					       .extended_l2 = cases[i].ext, .preallocation = cases[i].prealloc };
		assert_int_equal(qcow2_measure(&o, NULL, &m, err, sizeof(err)), 0);
		assert_int_equal(m.required, cases[i].required);
		assert_int_equal(m.fully_allocated, cases[i].full);
	}
	struct qcow2_create_opts bad = { .size = 1, .cluster_size = 1000 };
	assert_int_equal(qcow2_measure(&bad, NULL, &m, err, sizeof(err)), -EINVAL);
}

static void t_measure_source(void **state)
{
	struct fx *fx = *state;
	char err[256];
	create(fx->path, 16 * MiB, 65536, NULL);
	struct image *img = open_rw(fx->path);
	write_pat(img, 100, 10, 1);             /* 1 cluster */
	write_pat(img, 5 * MiB, 200000, 1);     /* 4 clusters */
	assert_int_equal(image_write_zeroes(img, 8 * MiB, MiB, false), 0);
	image_close(img);
	img = open_ro(fx->path);
	struct qcow2_create_opts o = { 0 };
	struct qcow2_measure m, empty;
	assert_int_equal(qcow2_measure(&o, img, &m, err, sizeof(err)), 0);
	o.size = 16 * MiB;
	assert_int_equal(qcow2_measure(&o, NULL, &empty, err, sizeof(err)), 0);
	assert_int_equal(m.required - empty.required, 5 * 65536);
	assert_int_equal(m.fully_allocated, empty.fully_allocated);
	image_close(img);
}

static void t_create_options(void **state)
{
	struct fx *fx = *state;
	char err[256];
	struct {
		struct qcow2_create_opts o;
		const char *msg;
	} bad[] = {
		{ { .size = MiB, .cluster_size = 1000 }, "cluster size" },
		{ { .size = MiB, .cluster_size = 256 }, "cluster size" },
		{ { .size = MiB, .cluster_size = 4u << 20 }, "cluster size" },
		{ { .size = MiB, .compat = "2.0" }, "compat" },
		{ { .size = MiB, .refcount_bits = 3 }, "refcount_bits" },
		{ { .size = MiB, .refcount_bits = 128 }, "refcount_bits" },
		{ { .size = MiB, .compat = "0.10", .refcount_bits = 8 }, "1.1" },
		{ { .size = MiB, .compat = "0.10", .compression_type = "zstd" }, "1.1" },
		{ { .size = MiB, .compression_type = "lz4" }, "compression" },
		{ { .size = MiB, .extended_l2 = true, .cluster_size = 4096 }, "16K" },
		{ { .size = MiB, .compat = "0.10", .lazy_refcounts = true }, "1.1" },
		{ { .size = MiB, .preallocation = "lots" }, "preallocation" },
		{ { .size = MiB, .backing_fmt = "raw" }, "backing" },
		{ { .size = MiB, .backing_file = "x", .backing_fmt = "vmdk" }, "vmdk" },
		{ { .size = 1ull << 62, .cluster_size = 512 }, "too large" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = 0;
		assert_true(qcow2_create(fx->path, &bad[i].o, err, sizeof(err)) < 0);
		if (!strstr(err, bad[i].msg))
			fail_msg("case %zu: '%s' lacks '%s'", i, err, bad[i].msg);
	}
	/* Preallocation: every cluster allocated, reads zeros, clean. */
	const char *modes[] = { "metadata", "falloc", "full" };
	for (int i = 0; i < 3; i++) {
		struct qcow2_create_opts o = { .size = 3 * MiB + 512, .cluster_size = 65536, .preallocation = modes[i] };
		create_o(fx->path, &o);
		struct image *img = open_rw(fx->path);
		uint64_t pnum, host;
		unsigned flags;
		assert_int_equal(image_block_status(img, 0, 3 * MiB + 512, &pnum, &flags, &host), 0);
		assert_true(flags & IMAGE_BS_DATA);
		expect_zero(img, 0, 3 * MiB + 512);
		write_pat(img, MiB, 100, 1);
		image_close(img);
		our_check_clean(fx->path);
		struct stat st;
		stat(fx->path, &st);
		assert_true((uint64_t)st.st_size >= 3 * MiB);
	}
	/* Options are recorded. */
	struct qcow2_create_opts o = { .size = MiB, .cluster_size = 16384, .refcount_bits = 8,
				       .lazy_refcounts = true, .extended_l2 = true, .compression_type = "zstd" };
	create_o(fx->path, &o);
	struct image *img = open_ro(fx->path);
	struct image_info info;
	image_get_info(img, &info);
	assert_int_equal(info.cluster_size, 16384);
	assert_int_equal(info.refcount_bits, 8);
	assert_true(info.lazy_refcounts);
	assert_true(info.extended_l2);
	assert_string_equal(info.compression_type, "zstd");
	assert_int_equal(info.qcow2_version, 3);
	image_close(img);
	our_check_clean(fx->path);
	if (have_qemu_img()) {
		char cmd[512];
		snprintf(cmd, sizeof(cmd),
			 "qemu-img info '%s' | grep -q 'extended l2: true' && qemu-img info '%s' | grep -q 'refcount bits: 8'",
			 fx->path, fx->path);
		assert_int_equal(system(cmd), 0);
	}
	/* raw creation */
	assert_int_equal(image_create_raw(pth(fx, "r"), 3 * MiB, "falloc", err, sizeof(err)), 0);
	assert_true(image_create_raw(pth(fx, "r"), 3 * MiB, "metadata", err, sizeof(err)) < 0);
}

/* ---- check / repair ---------------------------------------------------------------- */

static void set_refcount_raw(const char *path, uint64_t cluster, uint16_t v)
{
	uint64_t rt = get_be(path, 48, 8);
	uint64_t cs = 1ull << get_be(path, 20, 4);
	uint64_t per = cs * 8 / 16;
	uint64_t rb = get_be(path, rt + (cluster / per) * 8, 8);
	assert_true(rb != 0);
	put_be(path, rb + (cluster % per) * 2, v, 2);
}

static void t_check_leak_fix(void **state)
{
	struct fx *fx = *state;
	create(fx->path, 16 * MiB, 65536, NULL);
	struct image *img = open_rw(fx->path);
	write_pat(img, 0, 3 * 65536, 1);
	image_close(img);
	/* 8 clusters in use; leak two more inside the file. */
	assert_int_equal(truncate(fx->path, 12 * 65536), 0);
	set_refcount_raw(fx->path, 9, 1);
	set_refcount_raw(fx->path, 10, 3);
	set_refcount_raw(fx->path, 100, 1); /* past the end of the file: ignored, like qemu-img */
	img = open_ro(fx->path);
	struct qcow2_check_result r = { 0 };
	assert_int_equal(qcow2_check(img, 0, &r), 0);
	assert_int_equal(r.leaks, 2);
	assert_int_equal(r.corruptions, 0);
	assert_int_equal(r.total_clusters, 256);
	assert_int_equal(r.allocated_clusters, 3);
	assert_int_equal(r.image_end_offset, 11 * 65536);
	assert_int_equal(qcow2_check(img, QCOW2_FIX_LEAKS, &r), -EROFS);
	image_close(img);
	assert_int_equal(qemu_check(fx->path), have_qemu_img() ? 3 : 0);
	img = open_rw(fx->path);
	assert_int_equal(qcow2_check(img, QCOW2_FIX_LEAKS, &r), 0);
	assert_int_equal(r.leaks_fixed, 2);
	assert_int_equal(r.leaks, 0);
	expect_pat(img, 0, 3 * 65536, 1);
	image_close(img);
	our_check_clean(fx->path);
}

static void t_check_corruption_fix(void **state)
{
	struct fx *fx = *state;
	create(fx->path, 16 * MiB, 65536, NULL);
	struct image *img = open_rw(fx->path);
	write_pat(img, 0, 3 * 65536, 1);
	image_close(img);
	uint64_t host = spec_map(fx->path, 65536, NULL);
	set_refcount_raw(fx->path, host / 65536, 0);
	img = open_ro(fx->path);
	struct qcow2_check_result r = { 0 };
	assert_int_equal(qcow2_check(img, 0, &r), 0);
	assert_true(r.corruptions >= 1); /* refcount 0 < 1 reference, and COPIED */
	image_close(img);
	img = open_rw(fx->path);
	assert_int_equal(qcow2_check(img, QCOW2_FIX_LEAKS, &r), 0);
	assert_true(r.corruptions >= 1);
	assert_int_equal(qcow2_check(img, QCOW2_FIX_ALL, &r), 0);
	assert_true(r.corruptions_fixed >= 1);
	assert_int_equal(r.corruptions, 0);
	expect_pat(img, 0, 3 * 65536, 1);
	image_close(img);
	our_check_clean(fx->path);
	/* A broken refcount table entry: the structure is rebuilt. */
	uint64_t rt = get_be(fx->path, 48, 8);
	put_be(fx->path, rt, 12345, 8);
	img = open_rw(fx->path);
	assert_int_equal(qcow2_check(img, 0, &r), 0);
	assert_true(r.corruptions > 0);
	assert_int_equal(qcow2_check(img, QCOW2_FIX_ALL, &r), 0);
	assert_int_equal(r.corruptions, 0);
	assert_int_equal(r.leaks, 0);
	expect_pat(img, 0, 3 * 65536, 1);
	write_pat(img, 5 * MiB, 65536 * 3, 2);
	image_close(img);
	our_check_clean(fx->path);
	img = open_ro(fx->path);
	expect_pat(img, 5 * MiB, 65536 * 3, 2);
	image_close(img);
}

static void rep_cb(void *opaque, const char *line)
{
	char *out = opaque;
	snprintf(out, 200, "%s", line);
}

static void t_check_report_lines(void **state)
{
	struct fx *fx = *state;
	create(fx->path, 16 * MiB, 65536, NULL);
	assert_int_equal(truncate(fx->path, 64 * 65536), 0);
	set_refcount_raw(fx->path, 50, 1);
	char last[200] = "";
	struct image *img = open_ro(fx->path);
	struct qcow2_check_result r = { .report = rep_cb, .opaque = last };
	assert_int_equal(qcow2_check(img, 0, &r), 0);
	assert_string_equal(last, "Leaked cluster 50 refcount=1 reference=0");
	image_close(img);
	struct image_info info;
	char err[128];
	assert_int_equal(image_create_raw(pth(fx, "r"), MiB, NULL, err, sizeof(err)), 0);
	img = open_ex(pth(fx, "r"), "raw", false, 0);
	assert_int_equal(qcow2_check(img, 0, &r), -ENOTSUP);
	image_get_info(img, &info);
	image_close(img);
}

/* A lazy-refcounts image left dirty is repaired on a read-write open. */
static void t_lazy_dirty_repair(void **state)
{
	struct fx *fx = *state;
	struct qcow2_create_opts o = { .size = 16 * MiB, .cluster_size = 65536, .lazy_refcounts = true };
	create_o(fx->path, &o);
	pid_t pid = fork();
	if (pid == 0) {
		char err[256];
		struct image_open_opts oo = { .path = fx->path, .format = "qcow2" };
		struct image *img = image_open(&oo, err, sizeof(err));
		if (!img)
			_exit(1);
		uint8_t *b = malloc(MiB);
		memset(b, 0x5a, MiB);
		for (int i = 0; i < 8; i++)
			if (image_write(img, (uint64_t)i * 2 * MiB, b, MiB) < 0)
				_exit(2);
		if (image_flush(img) < 0)
			_exit(3);
		image_discard(img, 0, MiB);
		_exit(0); /* no close: the dirty bit stays */
	}
	int st;
	waitpid(pid, &st, 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_equal(get_be(fx->path, 72, 8) & 1, 1);
	struct image *img = open_ro(fx->path);
	struct image_info info;
	image_get_info(img, &info);
	assert_true(info.dirty);
	image_close(img);
	img = open_rw(fx->path);
	image_get_info(img, &info);
	assert_false(info.dirty);
	image_close(img);
	assert_int_equal(get_be(fx->path, 72, 8) & 1, 0);
	our_check_clean(fx->path);
	img = open_ro(fx->path);
	uint8_t b[512];
	assert_int_equal(image_read(img, 2 * MiB, b, sizeof(b)), 0);
	assert_int_equal(b[0], 0x5a);
	image_close(img);
}

/* Refcount table growth with small clusters and wide refcounts, and a
 * 2-deep qcow2 chain, checked by qemu-img when present. */
static void t_reftable_growth(void **state)
{
	struct fx *fx = *state;
	struct qcow2_create_opts o = { .size = 32 * MiB, .cluster_size = 512, .refcount_bits = 64 };
	create_o(fx->path, &o);
	struct image *img = open_rw(fx->path);
	uint32_t rt0 = image_qcow2(img)->rt_clusters;
	for (uint64_t off = 0; off < 32 * MiB; off += 64 * 1024)
		write_pat(img, off, 8192, 3);
	assert_true(image_qcow2(img)->rt_clusters > rt0);
	image_close(img);
	our_check_clean(fx->path);
	img = open_ro(fx->path);
	for (uint64_t off = 0; off < 32 * MiB; off += 64 * 1024)
		expect_pat(img, off, 8192, 3);
	image_close(img);
}

/* Data written by qemu-img (convert -c, zstd, extended L2) reads back
 * identically through image_read. */
static void t_interop_qemu(void **state)
{
	struct fx *fx = *state;
	if (!have_qemu_img()) {
		skip();
		return;
	}
	char *src = pth(fx, "src.raw");
	char err[256];
	assert_int_equal(image_create_raw(src, 8 * MiB + 512, NULL, err, sizeof(err)), 0);
	struct image *img = open_ex(src, "raw", true, 0);
	write_pat(img, 0, 3 * MiB, 1);
	uint8_t *b = malloc(MiB);
	memset(b, 7, MiB);
	assert_int_equal(image_write(img, 5 * MiB, b, MiB), 0);
	write_pat(img, 8 * MiB - 700, 1212, 2);
	image_close(img);
	const char *opts[] = {
		"-o compat=0.10", "-c -o compat=0.10", "-c -o compression_type=zstd", "-o cluster_size=512",
		"-c -o cluster_size=2M", "-o extended_l2=on", "-c -o extended_l2=on", "-o refcount_bits=1",
	};
	uint8_t *want = malloc(8 * MiB + 512), *got = malloc(8 * MiB + 512);
	img = open_ex(src, "raw", false, 0);
	assert_int_equal(image_read(img, 0, want, 8 * MiB + 512), 0);
	image_close(img);
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		char cmd[512];
		snprintf(cmd, sizeof(cmd), "qemu-img convert -f raw -O qcow2 %s '%s' '%s'", opts[i], src, fx->path);
		assert_int_equal(system(cmd), 0);
		img = open_ro(fx->path);
		assert_int_equal(image_read(img, 0, got, 8 * MiB + 512), 0);
		if (memcmp(got, want, 8 * MiB + 512))
			fail_msg("qemu-img convert %s: data differs", opts[i]);
		image_close(img);
		our_check_clean(fx->path);
		/* ...and we can write to it. */
		img = open_rw(fx->path);
		write_pat(img, 4 * MiB + 3, 70000, 9);
		image_close(img);
		our_check_clean(fx->path);
	}
	/* A qemu-img backing chain. */
	char cmd[768];
	snprintf(cmd, sizeof(cmd),
		 "cd '%s' && qemu-img create -q -f qcow2 -b src.raw -F raw mid.qcow2 && "
		 "qemu-io -c 'write -P 0x33 1M 64k' mid.qcow2 >/dev/null && "
		 "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 && "
		 "qemu-io -c 'write -P 0x44 1088k 4k' top.qcow2 >/dev/null",
		 fx->dir);
	assert_int_equal(system(cmd), 0);
	img = open_ro(pth(fx, "top.qcow2"));
	assert_int_equal(image_read(img, 0, got, 8 * MiB + 512), 0);
	memset(want + MiB, 0x33, 65536);
	memset(want + MiB + 65536, 0x44, 4096);
	assert_memory_equal(got, want, 8 * MiB + 512);
	image_close(img);
	free(want);
	free(got);
	free(b);
}

/* commit-style: the backing file reopened read-write under an open top. */
static void t_reopen_rw(void **state)
{
	struct fx *fx = *state;
	char err[256];
	char *base = pth(fx, "base.qcow2");
	create(base, 4 * MiB, 65536, NULL);
	struct qcow2_create_opts o = { .size = 4 * MiB, .backing_file = "base.qcow2", .backing_fmt = "qcow2" };
	create_o(fx->path, &o);
	struct image *top = open_rw(fx->path);
	write_pat(top, MiB, 100000, 1);
	struct image *b = image_backing(top);
	assert_int_equal(image_write(b, 0, "x", 1), -EROFS);
	assert_int_equal(image_reopen_rw(b, err, sizeof(err)), 0);
	assert_string_equal(image_path(b), base);
	assert_int_equal(image_format(b), IMAGE_QCOW2);
	uint8_t *buf = malloc(100000);
	assert_int_equal(image_read(top, MiB, buf, 100000), 0);
	assert_int_equal(image_write(b, MiB, buf, 100000), 0);
	write_pat(b, 3 * MiB, 4096, 2);
	assert_int_equal(image_flush(b), 0);
	expect_pat(top, 3 * MiB, 4096, 2); /* reads through the reopened backing */
	assert_int_equal(image_discard(top, MiB, 2 * 65536), 0);
	image_close(top);
	free(buf);
	our_check_clean(base);
	struct image *bi = open_ro(base);
	expect_pat(bi, MiB, 100000, 1);
	image_close(bi);
	/* A second read-write open of a busy image is refused. */
	top = open_rw(fx->path);
	const char *m = open_fails(fx->path, "qcow2", true);
	assert_non_null(strstr(m, "in use"));
	image_close(top);
}

/* Random byte flips in the metadata of a rich image (snapshots,
 * compressed clusters, zero clusters): opening, reading, mapping,
 * writing, checking and repairing must never crash or hang, whatever
 * they report. */
static void t_fuzz_metadata(void **state)
{
	struct fx *fx = *state;
	char err[512];
	char *base = pth(fx, "fuzz-base.qcow2");
	const uint64_t size = 2 * MiB;
	for (int variant = 0; variant < 2; variant++) {
		struct qcow2_create_opts o = { .size = size, .cluster_size = variant ? 16384 : 4096,
					       .extended_l2 = variant == 1, .compat = "1.1" };
		create_o(base, &o);
		struct image *img = open_rw(base);
		write_pat(img, 0, 300000, 1);
		uint8_t *b = malloc(16384);
		memset(b, 3, 16384);
		assert_int_equal(image_write_compressed(img, 512 * 1024, b, o.cluster_size), 0);
		assert_int_equal(image_write_zeroes(img, 64 * 1024, 3 * 16384, false), 0);
		assert_int_equal(qcow2_snapshot_create(img, "s1", err, sizeof(err)), 0);
		write_pat(img, 100000, 100000, 2);
		image_close(img);
		struct stat st;
		stat(base, &st);
		uint8_t *file = malloc((size_t)st.st_size);
		pread_file(base, file, (size_t)st.st_size, 0);
		uint64_t seed = 4242 + (uint64_t)variant;
		uint8_t *rb = malloc(size);
		/* QCOW2_FUZZ_ITERS=N for longer runs by hand. */
		int iters = getenv("QCOW2_FUZZ_ITERS") ? atoi(getenv("QCOW2_FUZZ_ITERS")) : 150;
		for (int it = 0; it < iters; it++) {
			uint8_t *copy = malloc((size_t)st.st_size);
			memcpy(copy, file, (size_t)st.st_size);
			int flips = 1 + it % 8;
			for (int k = 0; k < flips; k++) {
				seed = seed * 6364136223846793005ull + 1442695040888963407ull;
				/* Mostly the metadata at the front of the file. */
				uint64_t lim = (seed >> 60) < 12 ? (uint64_t)o.cluster_size * 8 : (uint64_t)st.st_size;
				if (lim > (uint64_t)st.st_size)
					lim = (uint64_t)st.st_size;
				uint64_t at = (seed >> 16) % lim;
				copy[at] ^= (uint8_t)(1u << ((seed >> 8) % 8));
				if ((seed >> 4) % 5 == 0)
					copy[at] = (uint8_t)(seed >> 24);
			}
			int fd = open(fx->path, O_RDWR | O_CREAT | O_TRUNC, 0644);
			assert_int_equal(write(fd, copy, (size_t)st.st_size), st.st_size);
			close(fd);
			free(copy);
			for (int rw = 0; rw < 2; rw++) {
				struct image_open_opts oo = { .path = fx->path, .format = "qcow2", .readonly = !rw };
				img = image_open_ext(&oo, rw ? IMAGE_OPEN_CHECK : 0, err, sizeof(err));
				if (!img) {
					assert_null(strchr(err, '\n'));
					continue;
				}
				uint64_t isz = image_size(img);
				for (uint64_t off = 0; off < isz && off < 64 * MiB; off += 65536) {
					uint64_t n = isz - off < 65536 ? isz - off : 65536;
					int r = image_read(img, off, rb, n);
					assert_true(r == 0 || r == -EIO);
				}
				for (uint64_t off = 0; off < isz && off < 64 * MiB;) {
					uint64_t pnum, host;
					unsigned flags;
					if (image_block_status(img, off, isz - off, &pnum, &flags, &host) < 0 || !pnum)
						break;
					off += pnum;
				}
				struct qcow2_snapshot *sl;
				unsigned sn;
				if (qcow2_snapshot_list(img, &sl, &sn) == 0)
					qcow2_snapshot_list_free(sl, sn);
				if (rw) {
					memset(rb, 9, 70000);
					image_write(img, 12345, rb, 70000);
					image_write_zeroes(img, 0, 8192, true);
					image_discard(img, 65536, 65536);
					image_flush(img);
				}
				struct qcow2_check_result cr = { 0 };
				qcow2_check(img, rw ? QCOW2_FIX_ALL : 0, &cr);
				image_close(img);
			}
		}
		free(rb);
		free(file);
		free(b);
	}
}

/* ---- the VMM node ---------------------------------------------------------------------- */

struct waiter {
	int done;
	int result;
};

static void req_done(struct blk_req *req, int result)
{
	struct waiter *w = req->opaque;
	w->done++;
	w->result = result;
}

static int node_io(struct blk_engine *eng, struct blk_node *n, enum blk_op op, uint64_t off, void *buf,
		   uint64_t len)
{
	struct waiter w = { 0 };
	struct iovec iov = { buf, (size_t)len };
	struct blk_req req = { .op = op, .offset = off, .len = len, .done = req_done, .opaque = &w };
	if (op == BLK_OP_READ || op == BLK_OP_WRITE) {
		req.iov = &iov;
		req.iovcnt = 1;
	}
	int r = n->ops->submit(n, &req);
	if (r < 0)
		return r;
	while (!w.done) {
		struct pollfd p = { .fd = eng->event_fd, .events = POLLIN };
		poll(&p, 1, 1000);
		blk_engine_poll(eng);
	}
	assert_int_equal(w.done, 1);
	return w.result;
}

static void node_exercise(struct fx *fx, enum blk_cache cache, bool uring, bool backing)
{
	char err[512];
	uint64_t size = 8 * MiB;
	if (backing) {
		char *b = pth(fx, "nb.raw");
		assert_int_equal(image_create_raw(b, size, NULL, err, sizeof(err)), 0);
		struct image *img = open_ex(b, "raw", true, 0);
		write_pat(img, 0, size, 1);
		image_close(img);
		struct qcow2_create_opts o = { .size = size, .cluster_size = 65536, .backing_file = "nb.raw",
					       .backing_fmt = "raw" };
		create_o(fx->path, &o);
	} else {
		create(fx->path, size, 65536, NULL);
	}
	struct blk_engine *eng = uring ? blk_uring_create(64, err, sizeof(err)) : NULL;
	if (!eng)
		eng = blk_threads_create(err, sizeof(err));
	assert_non_null(eng);
	struct blk_file *f = blk_file_open(fx->path, false, cache, eng, err, sizeof(err));
	if (!f && cache == BLK_CACHE_NONE) {
		blk_engine_destroy(eng);
		return; /* no O_DIRECT here */
	}
	assert_non_null(f);
	struct blk_node *n = blk_format_qcow2.open(f, err, sizeof(err));
	if (!n)
		fail_msg("node open: %s", err);
	assert_int_equal(n->size, size);
	assert_true(n->can_discard);
	uint8_t *mem = malloc(size), *buf = NULL, *got = NULL;
	assert_int_equal(posix_memalign((void **)&buf, 4096, MiB), 0);
	assert_int_equal(posix_memalign((void **)&got, 4096, MiB), 0);
	if (backing)
		fill(mem, size, 1, 0);
	else
		memset(mem, 0, size);
	uint64_t s = 77;
	for (int i = 0; i < 400; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		uint64_t off = ((s >> 20) % (size / 4096)) * 4096;
		uint64_t len = 4096 * (1 + (s >> 50) % 64);
		if (len > size - off)
			len = size - off;
		unsigned k = (unsigned)((s >> 8) % 10);
		if (k < 6) {
			fill(buf, len, (uint32_t)i, off);
			assert_int_equal(node_io(eng, n, BLK_OP_WRITE, off, buf, len), 0);
			memcpy(mem + off, buf, len);
		} else if (k < 7) {
			assert_int_equal(node_io(eng, n, BLK_OP_WRITE_ZEROES, off, NULL, len), 0);
			memset(mem + off, 0, len);
		} else if (k < 8) {
			assert_int_equal(node_io(eng, n, BLK_OP_DISCARD, off, NULL, len), 0);
			for (uint64_t c = (off + 65535) & ~65535ull; c + 65536 <= off + len; c += 65536)
				memset(mem + c, 0, 65536);
		} else if (k < 9) {
			assert_int_equal(node_io(eng, n, BLK_OP_FLUSH, 0, NULL, 0), 0);
		} else {
			assert_int_equal(node_io(eng, n, BLK_OP_READ, off, got, len), 0);
			assert_memory_equal(got, mem + off, len);
		}
	}
	for (uint64_t off = 0; off < size; off += MiB) {
		assert_int_equal(node_io(eng, n, BLK_OP_READ, off, got, MiB), 0);
		assert_memory_equal(got, mem + off, MiB);
	}
	n->ops->close(n);
	blk_file_close(f);
	blk_engine_destroy(eng);
	struct image *img = open_ro(fx->path);
	uint8_t *all = malloc(size);
	assert_int_equal(image_read(img, 0, all, size), 0);
	assert_memory_equal(all, mem, size);
	image_close(img);
	our_check_clean(fx->path);
	free(all);
	free(mem);
	free(buf);
	free(got);
}

static void t_node_io(void **state)
{
	struct fx *fx = *state;
	node_exercise(fx, BLK_CACHE_WRITEBACK, true, false);
	node_exercise(fx, BLK_CACHE_WRITEBACK, false, true);
	node_exercise(fx, BLK_CACHE_NONE, true, true);
	node_exercise(fx, BLK_CACHE_WRITETHROUGH, true, false);
}

static void t_node_errors(void **state)
{
	struct fx *fx = *state;
	char err[512];
	struct blk_engine *eng = blk_threads_create(err, sizeof(err));
	assert_non_null(eng);
	/* Not qcow2. */
	assert_int_equal(image_create_raw(fx->path, MiB, NULL, err, sizeof(err)), 0);
	struct blk_file *f = blk_file_open(fx->path, true, BLK_CACHE_WRITEBACK, eng, err, sizeof(err));
	assert_non_null(f);
	err[0] = 0;
	assert_null(qcow2_node_open(f, err, sizeof(err)));
	assert_non_null(strstr(err, "not a qcow2"));
	blk_file_close(f);
	/* Corrupt bit: read-only works, read-write does not. */
	create(fx->path, MiB, 65536, NULL);
	put_be(fx->path, 72, 2, 8);
	f = blk_file_open(fx->path, false, BLK_CACHE_WRITEBACK, eng, err, sizeof(err));
	assert_null(qcow2_node_open(f, err, sizeof(err)));
	assert_non_null(strstr(err, "corrupt"));
	blk_file_close(f);
	f = blk_file_open(fx->path, true, BLK_CACHE_WRITEBACK, eng, err, sizeof(err));
	struct blk_node *n = qcow2_node_open(f, err, sizeof(err));
	assert_non_null(n);
	assert_false(n->can_discard);
	n->ops->close(n);
	blk_file_close(f);
	/* Missing backing file. */
	struct qcow2_create_opts o = { .size = MiB, .backing_file = "gone.raw", .backing_fmt = "raw" };
	create_o(fx->path, &o);
	f = blk_file_open(fx->path, true, BLK_CACHE_WRITEBACK, eng, err, sizeof(err));
	assert_null(qcow2_node_open(f, err, sizeof(err)));
	assert_non_null(strstr(err, "gone.raw"));
	blk_file_close(f);
	blk_engine_destroy(eng);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(t_rc_packing),
		T(t_geometry),
		T(t_spec_walk),
		T(t_refcount_orders),
		T(t_compressed_descriptor),
		T(t_hostile_headers),
		T(t_hostile_snapshot_table),
		T(t_hostile_entries),
		T(t_corrupt_and_autoclear_bits),
		T(t_unknown_extension_kept),
		T(t_probing),
		T(t_roundtrip_random),
		T(t_zero_discard),
		T(t_backing_chain),
		T(t_compressed_overwrite),
		T(t_snapshots),
		T(t_resize),
		T(t_set_backing),
		cmocka_unit_test(t_measure),
		T(t_measure_source),
		T(t_create_options),
		T(t_check_leak_fix),
		T(t_check_corruption_fix),
		T(t_check_report_lines),
		T(t_lazy_dirty_repair),
		T(t_reftable_growth),
		T(t_interop_qemu),
		T(t_reopen_rw),
		T(t_fuzz_metadata),
		T(t_node_io),
		T(t_node_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
