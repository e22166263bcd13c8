/* qcow2 core: header parsing and validation, the L2/refcount caches, the
 * cluster allocator, mapping, reads (with deflate/zstd decompression) and
 * writes (copy-on-write, zero clusters, discard, compressed clusters), and
 * flush ordering. See qcow2_int.h for the crash-consistency rules. */
#include "block/qcow2_int.h"
#include "block/image.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#define L2_CACHE_BYTES (32u << 20)
#define L2_CACHE_MAX   8192u
#define RB_CACHE_BYTES (8u << 20)
#define RB_CACHE_MAX   1024u
#define PEND_FLUSH     16384u   /* deferred frees that trigger a flush */

uint64_t qcow2_ceil_div(uint64_t a, uint64_t b)
{
	return a / b + (a % b != 0);
}

static uint64_t align_up(uint64_t a, uint64_t b)
{
	return qcow2_ceil_div(a, b) * b;
}

/* ---- refcount packing ------------------------------------------------ */

uint64_t qcow2_rc_get(const uint8_t *b, uint64_t i, unsigned order)
{
	switch (order) {
	case 0:
	case 1:
	case 2: {
		unsigned bits = 1u << order;
		uint64_t bit = i * bits;
		return (uint64_t)(b[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
	}
	case 3:
		return b[i];
	case 4:
		return q_be16(b + 2 * i);
	case 5:
		return q_be32(b + 4 * i);
	default:
		return q_be64(b + 8 * i);
	}
}

void qcow2_rc_set(uint8_t *b, uint64_t i, unsigned order, uint64_t v)
{
	switch (order) {
	case 0:
	case 1:
	case 2: {
		unsigned bits = 1u << order;
		uint64_t bit = i * bits;
		unsigned mask = ((1u << bits) - 1) << (bit % 8);
		b[bit / 8] = (uint8_t)((b[bit / 8] & ~mask) | ((unsigned)(v << (bit % 8)) & mask));
		break;
	}
	case 3:
		b[i] = (uint8_t)v;
		break;
	case 4:
		q_put16(b + 2 * i, (uint16_t)v);
		break;
	case 5:
		q_put32(b + 4 * i, (uint32_t)v);
		break;
	default:
		q_put64(b + 8 * i, v);
		break;
	}
}

/* ---- table caches ------------------------------------------------------ */

static int qc_init(struct qcache *c, unsigned n, uint32_t size, bool is_l2)
{
	memset(c, 0, sizeof(*c));
	c->n = n;
	c->size = size;
	c->is_l2 = is_l2;
	unsigned h = 16;
	while (h < 2 * n)
		h *= 2;
	c->hmask = h - 1;
	void *mem = NULL;
	if (posix_memalign(&mem, 4096, (size_t)n * size))
		return -ENOMEM;
	c->mem = mem;
	c->off = calloc(n, sizeof(*c->off));
	c->lru = calloc(n, sizeof(*c->lru));
	c->dirty = calloc(n, 1);
	c->hnext = malloc(n * sizeof(int));
	c->hhead = malloc(h * sizeof(int));
	if (!c->off || !c->lru || !c->dirty || !c->hnext || !c->hhead)
		return -ENOMEM;
	for (unsigned i = 0; i < h; i++)
		c->hhead[i] = -1;
	return 0;
}

static void qc_destroy(struct qcache *c)
{
	free(c->mem);
	free(c->off);
	free(c->lru);
	free(c->dirty);
	free(c->hnext);
	free(c->hhead);
	memset(c, 0, sizeof(*c));
}

static unsigned qc_hash(const struct qcache *c, uint64_t off)
{
	return (unsigned)(((off >> 9) * 0x9E3779B97F4A7C15ull) >> 40) & c->hmask;
}

static int qc_find(const struct qcache *c, uint64_t off)
{
	for (int i = c->hhead[qc_hash(c, off)]; i >= 0; i = c->hnext[i])
		if (c->off[i] == off)
			return i;
	return -1;
}

static void qc_unlink(struct qcache *c, int slot)
{
	if (!c->off[slot])
		return;
	int *pp = &c->hhead[qc_hash(c, c->off[slot])];
	while (*pp >= 0 && *pp != slot)
		pp = &c->hnext[*pp];
	if (*pp == slot)
		*pp = c->hnext[slot];
	c->off[slot] = 0;
	c->dirty[slot] = 0;
}

static void qc_link(struct qcache *c, int slot, uint64_t off)
{
	unsigned h = qc_hash(c, off);
	c->off[slot] = off;
	c->hnext[slot] = c->hhead[h];
	c->hhead[h] = slot;
}

static uint8_t *qc_data(const struct qcache *c, int slot)
{
	return c->mem + (size_t)slot * c->size;
}

/* Forgets the table at `off` (its cluster was freed). */
static void qc_drop(struct qcache *c, uint64_t off)
{
	int s = qc_find(c, off);
	if (s >= 0)
		qc_unlink(c, s);
}

static int qc_write_slot(struct qcow2 *q, struct qcache *c, int s)
{
	int r = img_pwrite(q->fd, q->direct, qc_data(c, s), c->size, c->off[s]);
	if (r < 0)
		return r;
	c->dirty[s] = 0;
	if (c->off[s] + c->size > q->eof)
		q->eof = c->off[s] + c->size;
	return 0;
}

static int qc_write_all(struct qcow2 *q, struct qcache *c)
{
	for (unsigned i = 0; i < c->n; i++) {
		if (c->off[i] && c->dirty[i]) {
			int r = qc_write_slot(q, c, (int)i);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

static bool qc_any_dirty(const struct qcache *c)
{
	for (unsigned i = 0; i < c->n; i++)
		if (c->off[i] && c->dirty[i])
			return true;
	return false;
}

int qcow2_sync(struct qcow2 *q)
{
	if (fdatasync(q->fd) < 0)
		return -errno;
	return 0;
}

static bool lazy(const struct qcow2 *q)
{
	return q->lazy_dirty_set;
}

/* Before any L2 table reaches the disk: refcounts (and data) first. */
static int l2_writeback_all(struct qcow2 *q)
{
	int r = qc_write_all(q, &q->rbc);
	if (r < 0)
		return r;
	if (!lazy(q)) {
		r = qcow2_sync(q);
		if (r < 0)
			return r;
	}
	return qc_write_all(q, &q->l2c);
}

/* Returns the slot holding the table at `off`, loading it (or zero-filling
 * it when !load). The data pointer stays valid until the next qc_get on
 * the same cache. */
static int qc_get(struct qcow2 *q, struct qcache *c, uint64_t off, bool load, uint8_t **data)
{
	int s = qc_find(c, off);
	if (s >= 0) {
		c->lru[s] = ++c->tick;
		c->hits++;
		*data = qc_data(c, s);
		return s;
	}
	c->misses++;
	int victim = -1;
	uint64_t best = UINT64_MAX;
	for (unsigned i = 0; i < c->n; i++) {
		if (!c->off[i]) {
			victim = (int)i;
			break;
		}
		if (c->lru[i] < best) {
			best = c->lru[i];
			victim = (int)i;
		}
	}
	if (c->off[victim] && c->dirty[victim]) {
		int r = c->is_l2 ? l2_writeback_all(q) : qc_write_slot(q, c, victim);
		if (r < 0)
			return r;
	}
	qc_unlink(c, victim);
	uint8_t *d = qc_data(c, victim);
	if (load) {
		int r = img_pread(q->fd, q->direct, d, c->size, off);
		if (r < 0)
			return r;
	} else {
		memset(d, 0, c->size);
	}
	qc_link(c, victim, off);
	c->lru[victim] = ++c->tick;
	*data = d;
	return victim;
}

static void qc_mark_dirty(struct qcache *c, int slot)
{
	c->dirty[slot] = 1;
}

void qcow2_cache_reset(struct qcow2 *q)
{
	for (unsigned i = 0; i < q->l2c.n; i++)
		qc_unlink(&q->l2c, (int)i);
	for (unsigned i = 0; i < q->rbc.n; i++)
		qc_unlink(&q->rbc, (int)i);
	q->dc_desc = 0;
	q->comp_cluster = 0;
}

int qcow2_cache_flush_all(struct qcow2 *q)
{
	return l2_writeback_all(q);
}

/* ---- header ------------------------------------------------------------ */

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (err && errlen)
		vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static const char *feature_name(const struct qcow2 *q, int type, int bit)
{
	if (q->feature_names && q->feature_names[bit][type][0])
		return q->feature_names[bit][type];
	return NULL;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	if (!alen || !blen)
		return false;
	return a < b + blen && b < a + alen;
}

int qcow2_update_incompat(struct qcow2 *q, uint64_t incompat)
{
	if (q->version < 3)
		return 0;
	uint8_t b[8];
	q_put64(b, incompat);
	int r = img_pwrite(q->fd, q->direct, b, 8, 72);
	if (r < 0)
		return r;
	q->incompat = incompat;
	return qcow2_sync(q);
}

static size_t put_ext(uint8_t *h, size_t pos, size_t end, uint32_t type, const void *data, uint32_t len)
{
	size_t need = 8 + align_up(len, 8);
	if (pos + need > end)
		return 0;
	q_put32(h + pos, type);
	q_put32(h + pos + 4, len);
	memset(h + pos + 8, 0, align_up(len, 8));
	if (len)
		memcpy(h + pos + 8, data, len);
	return pos + need;
}

/* Builds the header cluster; returns its used length or -ENOSPC. */
int qcow2_build_header(const struct qcow2 *q, uint8_t *h)
{
	uint32_t cs = q->cluster_size;
	memset(h, 0, cs);
	uint32_t hl = 72;
	if (q->version >= 3) {
		hl = q->header_length < 112 ? 112 : q->header_length;
	}
	q_put32(h, QCOW2_MAGIC);
	q_put32(h + 4, q->version);
	q_put32(h + 20, q->cluster_bits);
	q_put64(h + 24, q->size);
	q_put32(h + 32, 0);
	q_put32(h + 36, q->l1_size);
	q_put64(h + 40, q->l1_offset);
	q_put64(h + 48, q->rt_offset);
	q_put32(h + 56, q->rt_clusters);
	q_put32(h + 60, q->nb_snapshots);
	q_put64(h + 64, q->snapshots_offset);
	if (q->version >= 3) {
		q_put64(h + 72, q->incompat);
		q_put64(h + 80, q->compat);
		q_put64(h + 88, q->autoclear);
		q_put32(h + 96, q->refcount_order);
		q_put32(h + 100, hl);
		h[104] = q->compression_type;
		if (q->header_tail_len)
			memcpy(h + 105, q->header_tail, q->header_tail_len < hl - 105 ? q->header_tail_len : hl - 105);
	}
	size_t blen = strlen(q->backing_file);
	size_t end = cs - blen;
	size_t pos = hl;
	if (q->backing_fmt[0]) {
		pos = put_ext(h, pos, end, QCOW2_EXT_BACKING_FMT, q->backing_fmt, (uint32_t)strlen(q->backing_fmt));
		if (!pos)
			return -ENOSPC;
	}
	for (unsigned i = 0; i < q->nr_exts; i++) {
		pos = put_ext(h, pos, end, q->exts[i].type, q->exts[i].data, q->exts[i].len);
		if (!pos)
			return -ENOSPC;
	}
	if (q->version >= 3) {
		static const struct {
			uint8_t type, bit;
			const char *name;
		} feats[] = {
			{ 0, 0, "dirty bit" },          { 0, 1, "corrupt bit" },
			{ 0, 2, "external data file" }, { 0, 3, "compression type" },
			{ 0, 4, "extended L2 entries" }, { 1, 0, "lazy refcounts" },
			{ 2, 0, "bitmaps" },            { 2, 1, "raw external data" },
		};
		uint8_t tbl[sizeof(feats) / sizeof(feats[0]) * 48];
		memset(tbl, 0, sizeof(tbl));
		for (size_t i = 0; i < sizeof(feats) / sizeof(feats[0]); i++) {
			tbl[i * 48] = feats[i].type;
			tbl[i * 48 + 1] = feats[i].bit;
			memcpy(tbl + i * 48 + 2, feats[i].name, strlen(feats[i].name));
		}
		/* Optional: left out when it does not fit (512-byte clusters). */
		size_t p2 = put_ext(h, pos, end >= 8 ? end - 8 : 0, QCOW2_EXT_FEATURES, tbl, sizeof(tbl));
		if (p2)
			pos = p2;
	}
	if (pos + 8 > end)
		return -ENOSPC;
	memset(h + pos, 0, 8); /* end of extensions */
	pos += 8;
	if (blen) {
		memcpy(h + pos, q->backing_file, blen);
		q_put64(h + 8, pos);
		q_put32(h + 16, (uint32_t)blen);
		pos += blen;
	}
	return (int)pos;
}

int qcow2_write_header(struct qcow2 *q)
{
	uint8_t *h = NULL;
	if (posix_memalign((void **)&h, 4096, q->cluster_size))
		return -ENOMEM;
	int len = qcow2_build_header(q, h);
	int r = len;
	if (len >= 0) {
		/* Whole sectors: the rest of the cluster is ours (zeros). */
		size_t wlen = align_up((uint64_t)len, 512);
		if (wlen > q->cluster_size)
			wlen = q->cluster_size;
		r = img_pwrite(q->fd, q->direct, h, wlen, 0);
		if (r == 0)
			r = qcow2_sync(q);
	}
	free(h);
	return r;
}

static int parse_extensions(struct qcow2 *q, const uint8_t *h, size_t start, size_t end, char *err,
			    size_t errlen)
{
	size_t pos = start;
	while (pos + 8 <= end) {
		uint32_t type = q_be32(h + pos);
		uint32_t len = q_be32(h + pos + 4);
		if (type == QCOW2_EXT_END)
			return 0;
		if (len > end - pos - 8) {
			seterr(err, errlen, "header extension 0x%08x (length %u) runs past the header", type, len);
			return -EINVAL;
		}
		const uint8_t *d = h + pos + 8;
		if (type == QCOW2_EXT_BACKING_FMT) {
			if (len >= sizeof(q->backing_fmt)) {
				seterr(err, errlen, "backing format name too long (%u bytes)", len);
				return -EINVAL;
			}
			memcpy(q->backing_fmt, d, len);
			q->backing_fmt[len] = 0;
		} else if (type == QCOW2_EXT_FEATURES) {
			if (!q->feature_names) {
				q->feature_names = calloc(64, sizeof(*q->feature_names));
				if (!q->feature_names)
					return -ENOMEM;
			}
			for (uint32_t i = 0; i + 48 <= len; i += 48) {
				unsigned t = d[i], bit = d[i + 1];
				if (t < 3 && bit < 64) {
					memcpy(q->feature_names[bit][t], d + i + 2, 46);
					q->feature_names[bit][t][46] = 0;
				}
			}
		} else {
			if (q->nr_exts >= 64) {
				seterr(err, errlen, "too many header extensions");
				return -EINVAL;
			}
			struct qcow2_ext *n = realloc(q->exts, (q->nr_exts + 1) * sizeof(*n));
			if (!n)
				return -ENOMEM;
			q->exts = n;
			n[q->nr_exts].type = type;
			n[q->nr_exts].len = len;
			n[q->nr_exts].data = malloc(len ? len : 1);
			if (!n[q->nr_exts].data)
				return -ENOMEM;
			memcpy(n[q->nr_exts].data, d, len);
			q->nr_exts++;
		}
		uint64_t next = pos + 8 + align_up(len, 8);
		if (next > end)
			return 0;
		pos = (size_t)next;
	}
	return 0;
}

static int file_size_of(int fd, uint64_t *size, bool *is_bdev)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	*is_bdev = S_ISBLK(st.st_mode);
	if (*is_bdev) {
		uint64_t s = 0;
		if (ioctl(fd, BLKGETSIZE64, &s) < 0)
			return -errno;
		*size = s;
	} else {
		*size = (uint64_t)st.st_size;
	}
	return 0;
}

uint64_t qcow2_l1_needed(const struct qcow2 *q, uint64_t size)
{
	return qcow2_ceil_div(size, (uint64_t)q->cluster_size << q->l2_bits);
}

static int setup_geometry(struct qcow2 *q)
{
	q->cluster_size = 1u << q->cluster_bits;
	q->ext_l2 = (q->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
	q->l2_entry_size = q->ext_l2 ? 16 : 8;
	q->l2_bits = q->cluster_bits - (q->ext_l2 ? 4 : 3);
	q->l2_entries = 1ull << q->l2_bits;
	q->sc_bits = q->cluster_bits - 5;
	q->refcount_bits = 1u << q->refcount_order;
	q->rb_bits = q->cluster_bits + 3 - q->refcount_order;
	q->rb_entries = 1ull << q->rb_bits;
	q->refcount_max = q->refcount_order == 6 ? UINT64_MAX : (1ull << q->refcount_bits) - 1;
	q->csize_shift = 62 - (q->cluster_bits - 8);
	q->csize_mask = (1ull << (q->cluster_bits - 8)) - 1;
	return 0;
}

static int setup_caches(struct qcow2 *q)
{
	uint32_t cs = q->cluster_size;
	uint64_t tables = qcow2_l1_needed(q, q->size);
	uint64_t n = L2_CACHE_BYTES / cs;
	if (n > L2_CACHE_MAX)
		n = L2_CACHE_MAX;
	if (tables + 4 < n)
		n = tables + 4;
	if (n < 8)
		n = 8;
	int r = qc_init(&q->l2c, (unsigned)n, cs, true);
	if (r < 0)
		return r;
	uint64_t m = RB_CACHE_BYTES / cs;
	if (m > RB_CACHE_MAX)
		m = RB_CACHE_MAX;
	if (m < 8)
		m = 8;
	return qc_init(&q->rbc, (unsigned)m, cs, false);
}

int qcow2_load_table(struct qcow2 *q, uint64_t off, uint64_t entries, uint64_t **out)
{
	uint64_t bytes = entries * 8;
	uint64_t *t = NULL;
	size_t alloc = (size_t)align_up(bytes ? bytes : 8, 4096);
	if (posix_memalign((void **)&t, 4096, alloc))
		return -ENOMEM;
	memset(t, 0, alloc);
	if (bytes) {
		int r = img_pread(q->fd, q->direct, t, (size_t)bytes, off);
		if (r < 0) {
			free(t);
			return r;
		}
	}
	for (uint64_t i = 0; i < entries; i++)
		t[i] = q_be64(&t[i]);
	*out = t;
	return 0;
}

static void qcow2_free(struct qcow2 *q)
{
	if (!q)
		return;
	qc_destroy(&q->l2c);
	qc_destroy(&q->rbc);
	free(q->l1);
	free(q->reftable);
	free(q->pend);
	for (unsigned i = 0; i < q->nr_exts; i++)
		free(q->exts[i].data);
	free(q->exts);
	free(q->feature_names);
	free(q->header_tail);
	qcow2_snap_free_all(q);
	if (q->zin) {
		inflateEnd(q->zin);
		free(q->zin);
	}
	if (q->zout) {
		deflateEnd(q->zout);
		free(q->zout);
	}
	if (q->zstd_d)
		ZSTD_freeDCtx(q->zstd_d);
	if (q->zstd_c)
		ZSTD_freeCCtx(q->zstd_c);
	free(q->dc_buf);
	free(q->cbuf);
	free(q->cbuf2);
	free(q);
}

struct qcow2 *qcow2_open(int fd, const char *path, bool readonly, bool direct, unsigned flags,
			 char *err, size_t errlen)
{
	struct qcow2 *q = calloc(1, sizeof(*q));
	uint8_t *h = NULL;
	if (!q) {
		seterr(err, errlen, "%s", strerror(ENOMEM));
		return NULL;
	}
	q->fd = fd;
	q->readonly = readonly;
	q->direct = direct;
	snprintf(q->path, sizeof(q->path), "%s", path ? path : "");
	int r = file_size_of(fd, &q->file_size, &q->is_bdev);
	if (r < 0) {
		seterr(err, errlen, "%s", strerror(-r));
		goto fail;
	}
	q->eof = q->file_size;
	if (q->file_size < 72) {
		seterr(err, errlen, "not a qcow2 image (file too short for a header)");
		goto fail;
	}
	uint8_t first[512];
	r = img_pread(fd, direct, first, sizeof(first), 0);
	if (r < 0) {
		seterr(err, errlen, "reading the header: %s", strerror(-r));
		goto fail;
	}
	if (q_be32(first) != QCOW2_MAGIC) {
		seterr(err, errlen, "not a qcow2 image (bad magic)");
		goto fail;
	}
	q->version = q_be32(first + 4);
	if (q->version != 2 && q->version != 3) {
		seterr(err, errlen, "unsupported qcow2 version %u", q->version);
		goto fail;
	}
	q->cluster_bits = q_be32(first + 20);
	if (q->cluster_bits < 9 || q->cluster_bits > 21) {
		seterr(err, errlen, "unsupported cluster size (cluster_bits %u; 9..21 allowed)", q->cluster_bits);
		goto fail;
	}
	uint32_t cs = 1u << q->cluster_bits;
	if (posix_memalign((void **)&h, 4096, cs)) {
		seterr(err, errlen, "%s", strerror(ENOMEM));
		goto fail;
	}
	r = img_pread(fd, direct, h, cs, 0);
	if (r < 0) {
		seterr(err, errlen, "reading the header: %s", strerror(-r));
		goto fail;
	}
	uint64_t bf_off = q_be64(h + 8);
	uint32_t bf_len = q_be32(h + 16);
	q->size = q_be64(h + 24);
	uint32_t crypt = q_be32(h + 32);
	q->l1_size = q_be32(h + 36);
	q->l1_offset = q_be64(h + 40);
	q->rt_offset = q_be64(h + 48);
	q->rt_clusters = q_be32(h + 56);
	q->nb_snapshots = q_be32(h + 60);
	q->snapshots_offset = q_be64(h + 64);
	if (q->version == 2) {
		q->refcount_order = 4;
		q->header_length = 72;
	} else {
		q->incompat = q_be64(h + 72);
		q->compat = q_be64(h + 80);
		q->autoclear = q_be64(h + 88);
		q->refcount_order = q_be32(h + 96);
		q->header_length = q_be32(h + 100);
		if (q->header_length < 104 || q->header_length % 8 || q->header_length > cs) {
			seterr(err, errlen, "invalid header_length %u (v3 needs 104..cluster size, a multiple of 8)",
			       q->header_length);
			goto fail;
		}
		if (q->header_length > 104)
			q->compression_type = h[104];
		if (q->header_length > 105) {
			q->header_tail_len = q->header_length - 105;
			q->header_tail = malloc(q->header_tail_len);
			if (!q->header_tail) {
				seterr(err, errlen, "%s", strerror(ENOMEM));
				goto fail;
			}
			memcpy(q->header_tail, h + 105, q->header_tail_len);
		}
	}
	if (q->refcount_order > 6) {
		seterr(err, errlen, "invalid refcount_order %u (at most 6)", q->refcount_order);
		goto fail;
	}

	/* Backing file name and header extensions. */
	size_t ext_end = cs;
	if (bf_off) {
		if (bf_len > QCOW2_MAX_BACKING_NAME) {
			seterr(err, errlen, "backing file name too long (%u bytes)", bf_len);
			goto fail;
		}
		if (bf_off < q->header_length || bf_off > cs || bf_len > cs - bf_off ||
		    bf_off + bf_len > q->file_size) {
			seterr(err, errlen, "backing file name (offset %llu, length %u) lies outside the header cluster",
			       (unsigned long long)bf_off, bf_len);
			goto fail;
		}
		memcpy(q->backing_file, h + bf_off, bf_len);
		q->backing_file[bf_len] = 0;
		if (strlen(q->backing_file) != bf_len) {
			seterr(err, errlen, "backing file name contains a NUL byte");
			goto fail;
		}
		ext_end = (size_t)bf_off;
	}
	char why[256] = "";
	r = parse_extensions(q, h, q->header_length, ext_end, why, sizeof(why));
	if (r < 0) {
		seterr(err, errlen, "%s", why[0] ? why : strerror(-r));
		goto fail;
	}

	/* Features. */
	uint64_t unknown = q->incompat & ~QCOW2_INCOMPAT_KNOWN;
	if (unknown) {
		int bit = __builtin_ctzll(unknown);
		const char *name = feature_name(q, 0, bit);
		seterr(err, errlen, "unsupported incompatible feature bit %d%s%s%s", bit, name ? " (" : "",
		       name ? name : "", name ? ")" : "");
		goto fail;
	}
	if (q->incompat & QCOW2_INCOMPAT_DATAFILE) {
		seterr(err, errlen, "images with an external data file are not supported (incompatible feature bit 2)");
		goto fail;
	}
	if (crypt) {
		seterr(err, errlen, "encrypted images are not supported (crypt_method %u)", crypt);
		goto fail;
	}
	if (q->incompat & QCOW2_INCOMPAT_COMPRESS) {
		if (q->header_length <= 104 || q->compression_type == 0) {
			seterr(err, errlen, "compression type bit set without a compression type");
			goto fail;
		}
	}
	if (q->compression_type > 1) {
		seterr(err, errlen, "unknown compression type %u", q->compression_type);
		goto fail;
	}
	if (q->compression_type == 1 && !(q->incompat & QCOW2_INCOMPAT_COMPRESS)) {
		seterr(err, errlen, "compression type zstd without the compression type feature bit");
		goto fail;
	}
	if ((q->incompat & QCOW2_INCOMPAT_EXTL2) && q->cluster_bits < 14) {
		seterr(err, errlen, "extended L2 entries need clusters of at least 16 KiB");
		goto fail;
	}
	if ((q->incompat & QCOW2_INCOMPAT_CORRUPT) && !readonly && !(flags & QCOW2_OPEN_CHECK)) {
		seterr(err, errlen, "image is marked corrupt: it can only be opened read-only "
				    "(repair it with 'kestrel img check -r all')");
		goto fail;
	}
	setup_geometry(q);

	/* Sizes and tables. */
	if (q->size > QCOW2_MAX_VSIZE) {
		seterr(err, errlen, "virtual size %llu too large", (unsigned long long)q->size);
		goto fail;
	}
	uint64_t l1_need = qcow2_l1_needed(q, q->size);
	if ((uint64_t)q->l1_size * 8 > QCOW2_MAX_L1_BYTES || l1_need * 8 > QCOW2_MAX_L1_BYTES) {
		seterr(err, errlen, "L1 table too large (%u entries)", q->l1_size);
		goto fail;
	}
	if (q->l1_size < l1_need) {
		seterr(err, errlen, "L1 table too small for the virtual size (%u < %llu entries)", q->l1_size,
		       (unsigned long long)l1_need);
		goto fail;
	}
	uint64_t l1_bytes = (uint64_t)q->l1_size * 8;
	if (q->l1_size && (q->l1_offset % cs || q->l1_offset == 0 || q->l1_offset > q->file_size ||
			   l1_bytes > q->file_size - q->l1_offset)) {
		seterr(err, errlen, "L1 table (offset %llu, %u entries) is misaligned or past the end of the file",
		       (unsigned long long)q->l1_offset, q->l1_size);
		goto fail;
	}
	uint64_t rt_bytes = (uint64_t)q->rt_clusters * cs;
	if (q->rt_clusters == 0 || rt_bytes > QCOW2_MAX_REFTABLE_BYTES) {
		seterr(err, errlen, "invalid refcount table size (%u clusters)", q->rt_clusters);
		goto fail;
	}
	if (q->rt_offset % cs || q->rt_offset == 0 || q->rt_offset > q->file_size ||
	    rt_bytes > q->file_size - q->rt_offset) {
		seterr(err, errlen, "refcount table (offset %llu) is misaligned or past the end of the file",
		       (unsigned long long)q->rt_offset);
		goto fail;
	}
	if (ranges_overlap(q->l1_offset, l1_bytes, q->rt_offset, rt_bytes) ||
	    ranges_overlap(0, cs, q->l1_offset, l1_bytes) || ranges_overlap(0, cs, q->rt_offset, rt_bytes)) {
		seterr(err, errlen, "overlapping metadata: header, L1 table and refcount table overlap");
		goto fail;
	}
	q->rt_entries = rt_bytes / 8;
	r = setup_caches(q);
	if (r < 0) {
		seterr(err, errlen, "%s", strerror(-r));
		goto fail;
	}
	r = qcow2_load_table(q, q->l1_offset, q->l1_size, &q->l1);
	if (r == 0)
		r = qcow2_load_table(q, q->rt_offset, q->rt_entries, &q->reftable);
	if (r < 0) {
		seterr(err, errlen, "reading tables: %s", strerror(-r));
		goto fail;
	}
	q->l1_dirty_lo = UINT64_MAX;
	why[0] = 0;
	r = qcow2_snap_parse(q, why, sizeof(why));
	if (r < 0) {
		seterr(err, errlen, "%s", why[0] ? why : strerror(-r));
		goto fail;
	}
	if (q->nb_snapshots &&
	    (ranges_overlap(q->snapshots_offset, 1, q->l1_offset, l1_bytes) ||
	     ranges_overlap(q->snapshots_offset, 1, q->rt_offset, rt_bytes) || q->snapshots_offset < cs)) {
		seterr(err, errlen, "overlapping metadata: snapshot table overlaps other tables");
		goto fail;
	}
	if (posix_memalign((void **)&q->cbuf, 4096, cs))
		q->cbuf = NULL;
	if (posix_memalign((void **)&q->cbuf2, 4096, 2 * (size_t)cs + 4096))
		q->cbuf2 = NULL;
	if (posix_memalign((void **)&q->dc_buf, 4096, cs))
		q->dc_buf = NULL;
	if (!q->cbuf || !q->cbuf2 || !q->dc_buf) {
		seterr(err, errlen, "%s", strerror(ENOMEM));
		goto fail;
	}
	q->free_hint = 0;

	if (!readonly) {
		/* We keep no bitmaps up to date: drop the autoclear bits. */
		if (q->autoclear && q->version >= 3) {
			q->autoclear = 0;
			r = qcow2_write_header(q);
			if (r < 0) {
				seterr(err, errlen, "rewriting the header: %s", strerror(-r));
				goto fail;
			}
		}
		if ((q->incompat & QCOW2_INCOMPAT_DIRTY) && !(flags & QCOW2_OPEN_CHECK)) {
			struct qcow2_check_result res;
			memset(&res, 0, sizeof(res));
			r = qcow2_do_check(q, QCOW2_FIX_ALL, &res);
			if (r < 0 || res.corruptions || res.check_errors) {
				seterr(err, errlen, "image was not closed cleanly and repairing its refcounts failed%s%s",
				       r < 0 ? ": " : "", r < 0 ? strerror(-r) : "");
				goto fail;
			}
			r = qcow2_update_incompat(q, q->incompat & ~QCOW2_INCOMPAT_DIRTY);
			if (r < 0) {
				seterr(err, errlen, "clearing the dirty bit: %s", strerror(-r));
				goto fail;
			}
		}
	}
	free(h);
	return q;
fail:
	free(h);
	qcow2_free(q);
	return NULL;
}

/* ---- refcounts and allocation ----------------------------------------- */

static int lazy_begin(struct qcow2 *q)
{
	if (q->readonly)
		return -EROFS;
	q->metadata_changed = true;
	if (q->lazy_dirty_set || q->version < 3 || !(q->compat & QCOW2_COMPAT_LAZY))
		return 0;
	int r = qcow2_update_incompat(q, q->incompat | QCOW2_INCOMPAT_DIRTY);
	if (r == 0)
		q->lazy_dirty_set = true;
	return r;
}

static int rb_check(const struct qcow2 *q, uint64_t rb)
{
	if (rb & QCOW2_RT_RESERVED || rb % q->cluster_size || rb >= align_up(q->file_size, q->cluster_size))
		return -EIO;
	return 0;
}

int qcow2_get_refcount(struct qcow2 *q, uint64_t c, uint64_t *rc)
{
	uint64_t t = c >> q->rb_bits;
	*rc = 0;
	if (t >= q->rt_entries || !q->reftable[t])
		return 0;
	uint64_t rb = q->reftable[t];
	if (rb_check(q, rb) < 0)
		return -EIO;
	uint8_t *d;
	int s = qc_get(q, &q->rbc, rb, true, &d);
	if (s < 0)
		return s;
	*rc = qcow2_rc_get(d, c & (q->rb_entries - 1), q->refcount_order);
	return 0;
}

static void cluster_freed(struct qcow2 *q, uint64_t c)
{
	uint64_t off = c << q->cluster_bits;
	if (c < q->free_hint)
		q->free_hint = c;
	qc_drop(&q->l2c, off);
	qc_drop(&q->rbc, off);
	q->dc_desc = 0;
	if (q->comp_cluster == c)
		q->comp_cluster = 0;
	if (!q->is_bdev && off < q->eof) {
		/* Give the space back; advisory. */
		if (fallocate(q->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
			      (off_t)q->cluster_size) < 0) {
			/* ignore: not every filesystem can */
		}
	}
}

int qcow2_update_refcount(struct qcow2 *q, uint64_t c, int64_t delta)
{
	uint64_t t = c >> q->rb_bits;
	if (t >= q->rt_entries || !q->reftable[t])
		return -EIO;
	uint64_t rb = q->reftable[t];
	if (rb_check(q, rb) < 0)
		return -EIO;
	int r = lazy_begin(q);
	if (r < 0)
		return r;
	uint8_t *d;
	int s = qc_get(q, &q->rbc, rb, true, &d);
	if (s < 0)
		return s;
	uint64_t i = c & (q->rb_entries - 1);
	uint64_t v = qcow2_rc_get(d, i, q->refcount_order);
	uint64_t nv;
	if (delta < 0) {
		if (v < (uint64_t)-delta)
			return -EIO; /* refcount underflow: corrupt */
		nv = v - (uint64_t)-delta;
	} else {
		if (q->refcount_max - v < (uint64_t)delta)
			return -ERANGE;
		nv = v + (uint64_t)delta;
	}
	qcow2_rc_set(d, i, q->refcount_order, nv);
	qc_mark_dirty(&q->rbc, s);
	if (nv == 0)
		cluster_freed(q, c);
	return 0;
}

static int write_reftable_entry(struct qcow2 *q, uint64_t t)
{
	/* One aligned sector around the entry, so O_DIRECT needs no RMW. */
	uint8_t *buf = NULL;
	if (posix_memalign((void **)&buf, 4096, 512))
		return -ENOMEM;
	uint64_t first = t & ~63ull;
	for (uint64_t i = 0; i < 64; i++)
		q_put64(buf + i * 8, first + i < q->rt_entries ? q->reftable[first + i] : 0);
	int r = img_pwrite(q->fd, q->direct, buf, 512, q->rt_offset + first * 8);
	free(buf);
	return r;
}

/* A refcount block for region `t`, placed at cluster `c` of that region
 * (every cluster of a region without a block is free). */
static int create_refblock(struct qcow2 *q, uint64_t t, uint64_t c)
{
	uint64_t off = c << q->cluster_bits;
	if (off + q->cluster_size > QCOW2_MAX_HOST_OFFSET)
		return -EFBIG;
	uint8_t *d;
	int s = qc_get(q, &q->rbc, off, false, &d);
	if (s < 0)
		return s;
	qcow2_rc_set(d, c & (q->rb_entries - 1), q->refcount_order, 1);
	int r = qc_write_slot(q, &q->rbc, s);
	if (r == 0 && !lazy(q))
		r = qcow2_sync(q);
	if (r < 0) {
		qc_drop(&q->rbc, off);
		return r;
	}
	q->reftable[t] = off;
	if (off + q->cluster_size > q->file_size)
		q->file_size = off + q->cluster_size;
	r = write_reftable_entry(q, t);
	if (r < 0) {
		q->reftable[t] = 0;
		qc_drop(&q->rbc, off);
	}
	return r;
}

/* Replaces the refcount table with a larger one covering region need_t.
 * The new table and the blocks describing it are placed right after the
 * old table's coverage, where every cluster is free. */
static int grow_reftable(struct qcow2 *q, uint64_t need_t)
{
	uint32_t cs = q->cluster_size;
	uint64_t per_cluster = cs / 8;
	uint64_t E = q->rb_entries;
	uint64_t old_n = q->rt_entries;
	uint64_t base = old_n * E;
	uint64_t t0 = old_n;
	uint64_t new_n = need_t + 1;
	if (new_n < old_n + old_n / 2 + 1)
		new_n = old_n + old_n / 2 + 1;
	new_n = align_up(new_n, per_cluster);
	uint64_t tc, nb;
	for (;;) {
		tc = new_n / per_cluster;
		nb = 1;
		while (qcow2_ceil_div(tc + nb, E) > nb)
			nb = qcow2_ceil_div(tc + nb, E);
		if (t0 + nb <= new_n)
			break;
		new_n = align_up(t0 + nb, per_cluster);
	}
	if (new_n * 8 > QCOW2_MAX_REFTABLE_BYTES || (base + tc + nb) * (uint64_t)cs > QCOW2_MAX_HOST_OFFSET)
		return -EFBIG;
	int r = lazy_begin(q);
	if (r < 0)
		return r;
	uint8_t *blk = NULL;
	uint8_t *tbl = NULL;
	uint64_t *nt = NULL;
	if (posix_memalign((void **)&blk, 4096, cs) || posix_memalign((void **)&tbl, 4096, tc * cs) ||
	    !(nt = calloc(new_n, 8))) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(nt, q->reftable, old_n * 8);
	for (uint64_t j = 0; j < nb; j++) {
		memset(blk, 0, cs);
		uint64_t region_lo = (t0 + j) * E;
		for (uint64_t c = base; c < base + tc + nb; c++)
			if (c >= region_lo && c < region_lo + E)
				qcow2_rc_set(blk, c - region_lo, q->refcount_order, 1);
		uint64_t boff = (base + tc + j) * cs;
		r = img_pwrite(q->fd, q->direct, blk, cs, boff);
		if (r < 0)
			goto out;
		nt[t0 + j] = boff;
	}
	memset(tbl, 0, tc * cs);
	for (uint64_t i = 0; i < new_n; i++)
		q_put64(tbl + i * 8, nt[i]);
	r = img_pwrite(q->fd, q->direct, tbl, tc * cs, base * cs);
	if (r < 0)
		goto out;
	if ((base + tc + nb) * cs > q->eof)
		q->eof = (base + tc + nb) * cs;
	if ((base + tc + nb) * cs > q->file_size)
		q->file_size = (base + tc + nb) * cs;
	/* Dirty refcount blocks of the old table stay valid: same offsets. */
	r = qc_write_all(q, &q->rbc);
	if (r == 0)
		r = qcow2_sync(q);
	if (r < 0)
		goto out;
	uint8_t hb[12];
	q_put64(hb, base * cs);
	q_put32(hb + 8, (uint32_t)tc);
	r = img_pwrite(q->fd, q->direct, hb, 12, 48);
	if (r == 0)
		r = qcow2_sync(q);
	if (r < 0)
		goto out;
	uint64_t old_off = q->rt_offset;
	uint32_t old_clusters = q->rt_clusters;
	free(q->reftable);
	q->reftable = nt;
	nt = NULL;
	q->rt_entries = new_n;
	q->rt_offset = base * cs;
	q->rt_clusters = (uint32_t)tc;
	r = qcow2_free_now(q, old_off, (uint64_t)old_clusters * cs);
out:
	free(blk);
	free(tbl);
	free(nt);
	return r;
}

int qcow2_alloc_clusters(struct qcow2 *q, uint64_t n, uint64_t *out)
{
	if (q->readonly)
		return -EROFS;
	int r = lazy_begin(q);
	if (r < 0)
		return r;
	uint64_t max_c = QCOW2_MAX_HOST_OFFSET >> q->cluster_bits;
	uint64_t c = q->free_hint, run_start = c, run = 0;
	uint64_t first_free = UINT64_MAX;
	while (run < n) {
		if (c + (n - run) > max_c)
			return -ENOSPC;
		uint64_t t = c >> q->rb_bits;
		if (t >= q->rt_entries) {
			r = grow_reftable(q, t);
			if (r < 0)
				return r;
			continue; /* the new table and blocks took clusters here */
		}
		if (!q->reftable[t]) {
			r = create_refblock(q, t, c);
			if (r < 0)
				return r;
			run = 0;
			c++;
			continue;
		}
		uint64_t rc;
		r = qcow2_get_refcount(q, c, &rc);
		if (r < 0)
			return r;
		if (rc == 0) {
			if (first_free == UINT64_MAX)
				first_free = c;
			if (run == 0)
				run_start = c;
			run++;
		} else {
			run = 0;
		}
		c++;
	}
	for (uint64_t i = 0; i < n; i++) {
		r = qcow2_update_refcount(q, run_start + i, 1);
		if (r < 0)
			return r;
	}
	/* The scan started at the hint: nothing below first_free is free. */
	q->free_hint = first_free == run_start ? run_start + n : first_free;
	uint64_t end = (run_start + n) << q->cluster_bits;
	if (end > q->file_size)
		q->file_size = end;
	*out = run_start << q->cluster_bits;
	return 0;
}

int qcow2_free_later(struct qcow2 *q, uint64_t c, uint64_t n)
{
	if (q->npend > q->npend_ready && q->pend[q->npend - 1].cluster + q->pend[q->npend - 1].n == c) {
		q->pend[q->npend - 1].n += n;
		return 0;
	}
	if (q->npend == q->pend_cap) {
		size_t cap = q->pend_cap ? q->pend_cap * 2 : 64;
		struct qcow2_pend *p = realloc(q->pend, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		q->pend = p;
		q->pend_cap = cap;
	}
	q->pend[q->npend].cluster = c;
	q->pend[q->npend].n = n;
	q->npend++;
	return 0;
}

int qcow2_free_now(struct qcow2 *q, uint64_t off, uint64_t bytes)
{
	if (!bytes)
		return 0;
	uint64_t c0 = off >> q->cluster_bits;
	uint64_t c1 = (off + bytes - 1) >> q->cluster_bits;
	for (uint64_t c = c0; c <= c1; c++) {
		int r = qcow2_update_refcount(q, c, -1);
		if (r < 0)
			return r;
	}
	return 0;
}

int qcow2_apply_ready(struct qcow2 *q)
{
	int ret = 0;
	size_t n = q->npend_ready;
	if (!n)
		return 0;
	for (size_t i = 0; i < n; i++) {
		for (uint64_t k = 0; k < q->pend[i].n; k++) {
			int r = qcow2_update_refcount(q, q->pend[i].cluster + k, -1);
			if (r < 0 && !ret)
				ret = r;
		}
	}
	memmove(q->pend, q->pend + n, (q->npend - n) * sizeof(*q->pend));
	q->npend -= n;
	q->npend_ready = 0;
	return ret;
}

int qcow2_set_refcount(struct qcow2 *q, uint64_t c, uint64_t v)
{
	uint64_t t = c >> q->rb_bits;
	if (t >= q->rt_entries || !q->reftable[t] || rb_check(q, q->reftable[t]) < 0)
		return -EIO;
	if (v > q->refcount_max)
		return -ERANGE;
	uint8_t *d;
	int s = qc_get(q, &q->rbc, q->reftable[t], true, &d);
	if (s < 0)
		return s;
	qcow2_rc_set(d, c & (q->rb_entries - 1), q->refcount_order, v);
	qc_mark_dirty(&q->rbc, s);
	if (v == 0 && c < q->free_hint)
		q->free_hint = c;
	return 0;
}

/* ---- L1/L2 ------------------------------------------------------------- */

int qcow2_l1e_check(const struct qcow2 *q, uint64_t l1e, uint64_t *l2_off)
{
	uint64_t off = l1e & QCOW2_OFFSET_MASK;
	*l2_off = 0;
	if (!off)
		return (l1e & QCOW2_L1_RESERVED) ? -EIO : 0;
	if (l1e & QCOW2_L1_RESERVED || off % q->cluster_size || off >= align_up(q->file_size, q->cluster_size))
		return -EIO;
	*l2_off = off;
	return 0;
}

int qcow2_l2_load(struct qcow2 *q, uint64_t l2_off, uint8_t **table)
{
	int s = qc_get(q, &q->l2c, l2_off, true, table);
	return s < 0 ? s : 0;
}

int qcow2_l2_mark_dirty(struct qcow2 *q, uint64_t l2_off)
{
	int s = qc_find(&q->l2c, l2_off);
	if (s < 0)
		return -EIO;
	qc_mark_dirty(&q->l2c, s);
	return 0;
}

uint64_t qcow2_l2e_get(const struct qcow2 *q, const uint8_t *t, uint64_t i, uint64_t *bitmap)
{
	const uint8_t *p = t + i * q->l2_entry_size;
	if (bitmap)
		*bitmap = q->ext_l2 ? q_be64(p + 8) : 0;
	return q_be64(p);
}

void qcow2_l2e_set(const struct qcow2 *q, uint8_t *t, uint64_t i, uint64_t e, uint64_t bitmap)
{
	uint8_t *p = t + i * q->l2_entry_size;
	q_put64(p, e);
	if (q->ext_l2)
		q_put64(p + 8, bitmap);
}

void qcow2_compressed_range(const struct qcow2 *q, uint64_t e, uint64_t *off, uint64_t *len)
{
	uint64_t coff = e & ((1ull << q->csize_shift) - 1);
	uint64_t nsect = (e >> q->csize_shift) & q->csize_mask;
	*off = coff;
	*len = (nsect + 1) * 512 - (coff & 511);
}

/* The L2 entry (and bitmap) for the guest cluster at `off`. */
static int get_l2e(struct qcow2 *q, uint64_t off, uint64_t *e, uint64_t *bm)
{
	uint64_t i1 = off >> (q->cluster_bits + q->l2_bits);
	*e = *bm = 0;
	if (i1 >= q->l1_size)
		return 0;
	uint64_t l2off;
	int r = qcow2_l1e_check(q, q->l1[i1], &l2off);
	if (r < 0 || !l2off)
		return r;
	uint8_t *t;
	r = qcow2_l2_load(q, l2off, &t);
	if (r < 0)
		return r;
	*e = qcow2_l2e_get(q, t, (off >> q->cluster_bits) & (q->l2_entries - 1), bm);
	return 0;
}

/* Classifies unit `sc` (a subcluster with extended L2, else 0) of an
 * entry. *host is the host offset of the unit's start for QT_DATA. */
static int classify(const struct qcow2 *q, uint64_t e, uint64_t bm, unsigned sc, enum qcow2_type *type,
		    uint64_t *host)
{
	uint64_t fend = align_up(q->file_size, q->cluster_size);
	*host = 0;
	if (e & QCOW2_OFLAG_COMPRESSED) {
		uint64_t coff, clen;
		qcow2_compressed_range(q, e, &coff, &clen);
		if (coff >= QCOW2_MAX_HOST_OFFSET || coff < q->cluster_size || coff >= q->file_size)
			return -EIO;
		*type = QT_COMPRESSED;
		return 0;
	}
	uint64_t off = e & QCOW2_OFFSET_MASK;
	if (!q->ext_l2) {
		if (e & QCOW2_L2_RESERVED)
			return -EIO;
		if (e & QCOW2_OFLAG_ZERO) {
			if (q->version < 3)
				return -EIO;
			*type = QT_ZERO;
			return 0;
		}
		if (!off) {
			*type = QT_UNALLOC;
			return (e & QCOW2_OFLAG_COPIED) ? -EIO : 0;
		}
		if (off % q->cluster_size || off >= fend)
			return -EIO;
		*type = QT_DATA;
		*host = off;
		return 0;
	}
	if (e & (QCOW2_L2_RESERVED | QCOW2_OFLAG_ZERO))
		return -EIO;
	if (off && (off % q->cluster_size || off >= fend))
		return -EIO;
	bool alloc = (bm >> sc) & 1, zero = (bm >> (32 + sc)) & 1;
	if (alloc && zero)
		return -EIO;
	if (alloc) {
		if (!off)
			return -EIO;
		*type = QT_DATA;
		*host = off + ((uint64_t)sc << q->sc_bits);
	} else if (zero) {
		*type = QT_ZERO;
	} else {
		*type = QT_UNALLOC;
	}
	return 0;
}

int qcow2_map(struct qcow2 *q, uint64_t off, uint64_t len, struct qcow2_map *m)
{
	uint32_t ubits = q->ext_l2 ? q->sc_bits : q->cluster_bits;
	uint64_t usize = 1ull << ubits;
	/* Stay within one L2 table. */
	uint64_t tspan = (uint64_t)q->cluster_size << q->l2_bits;
	uint64_t tend = (off | (tspan - 1)) + 1;
	if (len > tend - off)
		len = tend - off;
	memset(m, 0, sizeof(*m));
	uint64_t pos = off;
	bool first = true;
	uint64_t cur_e = 0, cur_bm = 0, cur_cluster = UINT64_MAX;
	while (pos < off + len) {
		uint64_t cl = pos >> q->cluster_bits;
		if (cl != cur_cluster) {
			int r = get_l2e(q, pos, &cur_e, &cur_bm);
			if (r < 0)
				return first ? r : 0;
			cur_cluster = cl;
		}
		unsigned sc = q->ext_l2 ? (unsigned)((pos >> q->sc_bits) & 31) : 0;
		enum qcow2_type type;
		uint64_t host;
		int r = classify(q, cur_e, cur_bm, sc, &type, &host);
		if (r < 0)
			return first ? r : 0;
		uint64_t in_unit = pos & (usize - 1);
		uint64_t n = usize - in_unit;
		if (type == QT_COMPRESSED) {
			uint64_t in_cl = pos & (q->cluster_size - 1);
			n = q->cluster_size - in_cl;
		}
		if (n > off + len - pos)
			n = off + len - pos;
		bool writable = type == QT_DATA && (cur_e & QCOW2_OFLAG_COPIED);
		if (first) {
			m->type = type;
			m->host = type == QT_DATA ? host + in_unit : 0;
			m->desc = type == QT_COMPRESSED ? cur_e : 0;
			m->writable = writable;
			m->len = n;
			first = false;
			if (type == QT_COMPRESSED)
				break;
		} else {
			if (type != m->type || type == QT_COMPRESSED)
				break;
			if (type == QT_DATA && (host != m->host + m->len || writable != m->writable))
				break;
			m->len += n;
		}
		pos += n;
	}
	return 0;
}

/* ---- compression -------------------------------------------------------- */

static int decompress_cluster(struct qcow2 *q, uint64_t desc)
{
	if (q->dc_desc == desc && desc)
		return 0;
	uint64_t coff, clen;
	qcow2_compressed_range(q, desc, &coff, &clen);
	if (coff >= q->file_size)
		return -EIO;
	if (clen > q->file_size - coff)
		clen = q->file_size - coff;
	int r = img_pread(q->fd, q->direct, q->cbuf2, (size_t)clen, coff);
	if (r < 0)
		return r;
	uint32_t cs = q->cluster_size;
	if (q->compression_type == 0) {
		if (!q->zin) {
			z_stream *z = calloc(1, sizeof(*z));
			if (!z)
				return -ENOMEM;
			if (inflateInit2(z, -12) != Z_OK) {
				free(z);
				return -ENOMEM;
			}
			q->zin = z;
		}
		z_stream *z = q->zin;
		if (inflateReset(z) != Z_OK)
			return -EIO;
		z->next_in = q->cbuf2;
		z->avail_in = (uInt)clen;
		z->next_out = q->dc_buf;
		z->avail_out = cs;
		int zr = inflate(z, Z_FINISH);
		if (!((zr == Z_STREAM_END || zr == Z_BUF_ERROR || zr == Z_OK) && z->avail_out == 0))
			return -EIO;
	} else {
		if (!q->zstd_d) {
			q->zstd_d = ZSTD_createDCtx();
			if (!q->zstd_d)
				return -ENOMEM;
		}
		ZSTD_DCtx_reset(q->zstd_d, ZSTD_reset_session_only);
		ZSTD_inBuffer in = { q->cbuf2, (size_t)clen, 0 };
		ZSTD_outBuffer out = { q->dc_buf, cs, 0 };
		while (out.pos < out.size) {
			size_t zr = ZSTD_decompressStream(q->zstd_d, &out, &in);
			if (ZSTD_isError(zr))
				return -EIO;
			if (zr == 0 && out.pos < out.size)
				return -EIO; /* frame ended early */
			if (in.pos == in.size && out.pos < out.size) {
				/* No input left: one more call may flush. */
				size_t before = out.pos;
				zr = ZSTD_decompressStream(q->zstd_d, &out, &in);
				if (ZSTD_isError(zr) || out.pos == before)
					return -EIO;
			}
		}
	}
	q->dc_desc = desc;
	return 0;
}

/* Compresses one cluster into q->cbuf2; returns the length, or 0 when it
 * does not shrink. */
static int compress_cluster(struct qcow2 *q, const uint8_t *src, size_t *outlen)
{
	uint32_t cs = q->cluster_size;
	*outlen = 0;
	if (q->compression_type == 0) {
		if (!q->zout) {
			z_stream *z = calloc(1, sizeof(*z));
			if (!z)
				return -ENOMEM;
			if (deflateInit2(z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
				free(z);
				return -ENOMEM;
			}
			q->zout = z;
		}
		z_stream *z = q->zout;
		if (deflateReset(z) != Z_OK)
			return -EIO;
		z->next_in = (Bytef *)(uintptr_t)src;
		z->avail_in = cs;
		z->next_out = q->cbuf2;
		z->avail_out = cs - 1;
		int zr = deflate(z, Z_FINISH);
		if (zr == Z_STREAM_END)
			*outlen = (cs - 1) - z->avail_out;
		return 0;
	}
	if (!q->zstd_c) {
		q->zstd_c = ZSTD_createCCtx();
		if (!q->zstd_c)
			return -ENOMEM;
	}
	size_t zr = ZSTD_compressCCtx(q->zstd_c, q->cbuf2, cs - 1, src, cs, ZSTD_CLEVEL_DEFAULT);
	if (!ZSTD_isError(zr))
		*outlen = zr;
	return 0;
}

/* ---- reads --------------------------------------------------------------- */

int qcow2_read(struct qcow2 *q, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len) {
		if (off >= q->size) {
			memset(p, 0, len);
			return 0;
		}
		uint64_t want = len;
		if (want > q->size - off)
			want = q->size - off;
		struct qcow2_map m;
		int r = qcow2_map(q, off, want, &m);
		if (r < 0)
			return r;
		size_t n = (size_t)m.len;
		switch (m.type) {
		case QT_UNALLOC:
			if (q->has_backing && q->backing_read)
				r = q->backing_read(q->backing_opaque, off, p, n);
			else
				memset(p, 0, n);
			break;
		case QT_ZERO:
			memset(p, 0, n);
			break;
		case QT_DATA:
			r = img_pread(q->fd, q->direct, p, n, m.host);
			break;
		case QT_COMPRESSED:
			r = decompress_cluster(q, m.desc);
			if (r == 0)
				memcpy(p, q->dc_buf + (off & (q->cluster_size - 1)), n);
			break;
		}
		if (r < 0)
			return r;
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* ---- writes ------------------------------------------------------------ */

/* The L2 table for l1 index i1, ready to be modified: allocated, and not
 * shared with a snapshot (copied when it is). */
static int l2_writable(struct qcow2 *q, uint64_t i1, uint8_t **table, uint64_t *l2off_out)
{
	if (i1 >= q->l1_size)
		return -EIO;
	int r = lazy_begin(q);
	if (r < 0)
		return r;
	uint64_t l1e = q->l1[i1], l2off;
	r = qcow2_l1e_check(q, l1e, &l2off);
	if (r < 0)
		return r;
	if (l2off && !(l1e & QCOW2_OFLAG_COPIED)) {
		uint64_t rc;
		r = qcow2_get_refcount(q, l2off >> q->cluster_bits, &rc);
		if (r < 0)
			return r;
		if (rc == 1) {
			q->l1[i1] = l1e | QCOW2_OFLAG_COPIED;
			goto dirty_l1;
		}
	} else if (l2off) {
		*l2off_out = l2off;
		return qcow2_l2_load(q, l2off, table);
	}
	/* A new table, or a copy of a shared one. */
	uint8_t *copy = NULL;
	if (l2off) {
		uint8_t *old;
		r = qcow2_l2_load(q, l2off, &old);
		if (r < 0)
			return r;
		copy = malloc(q->cluster_size);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, old, q->cluster_size);
	}
	uint64_t noff;
	r = qcow2_alloc_clusters(q, 1, &noff);
	if (r < 0) {
		free(copy);
		return r;
	}
	uint8_t *t;
	int s = qc_get(q, &q->l2c, noff, false, &t);
	if (s < 0) {
		free(copy);
		return s;
	}
	if (copy) {
		memcpy(t, copy, q->cluster_size);
		for (uint64_t i = 0; i < q->l2_entries; i++) {
			uint64_t bm, e = qcow2_l2e_get(q, t, i, &bm);
			if (e & QCOW2_OFLAG_COPIED)
				qcow2_l2e_set(q, t, i, e & ~QCOW2_OFLAG_COPIED, bm);
		}
		free(copy);
	}
	qc_mark_dirty(&q->l2c, s);
	q->l1[i1] = noff | QCOW2_OFLAG_COPIED;
	if (l2off) {
		r = qcow2_free_later(q, l2off >> q->cluster_bits, 1);
		if (r < 0)
			return r;
	}
dirty_l1:
	if (i1 < q->l1_dirty_lo)
		q->l1_dirty_lo = i1;
	if (i1 + 1 > q->l1_dirty_hi)
		q->l1_dirty_hi = i1 + 1;
	l2off = q->l1[i1] & QCOW2_OFFSET_MASK;
	*l2off_out = l2off;
	return qcow2_l2_load(q, l2off, table);
}

/* Host clusters an entry holds (for freeing). */
static int free_entry_later(struct qcow2 *q, uint64_t e)
{
	if (e & QCOW2_OFLAG_COMPRESSED) {
		uint64_t coff, clen;
		qcow2_compressed_range(q, e, &coff, &clen);
		uint64_t c0 = coff >> q->cluster_bits, c1 = (coff + clen - 1) >> q->cluster_bits;
		q->dc_desc = 0;
		return qcow2_free_later(q, c0, c1 - c0 + 1);
	}
	uint64_t off = e & QCOW2_OFFSET_MASK;
	if (off)
		return qcow2_free_later(q, off >> q->cluster_bits, 1);
	return 0;
}

/* Replaces the entry of guest cluster `goff`; the old one is returned. */
static int set_l2e(struct qcow2 *q, uint64_t goff, uint64_t e, uint64_t bm, uint64_t *old_e, uint64_t *old_bm)
{
	uint64_t i1 = goff >> (q->cluster_bits + q->l2_bits);
	uint64_t i2 = (goff >> q->cluster_bits) & (q->l2_entries - 1);
	if (!e && !bm && i1 < q->l1_size && !(q->l1[i1] & QCOW2_OFFSET_MASK)) {
		*old_e = *old_bm = 0;
		return 0; /* already unallocated */
	}
	uint8_t *t;
	uint64_t l2off;
	int r = l2_writable(q, i1, &t, &l2off);
	if (r < 0)
		return r;
	*old_e = qcow2_l2e_get(q, t, i2, old_bm);
	qcow2_l2e_set(q, t, i2, e, bm);
	return qcow2_l2_mark_dirty(q, l2off);
}

static bool entry_host_reusable(const struct qcow2 *q, uint64_t e)
{
	(void)q;
	return !(e & QCOW2_OFLAG_COMPRESSED) && (e & QCOW2_OFFSET_MASK) && (e & QCOW2_OFLAG_COPIED);
}

/* Does [off, off+len) read as zeros without looking at data? */
static int reads_zero(struct qcow2 *q, uint64_t off, uint64_t len, bool *zero)
{
	*zero = false;
	while (len) {
		struct qcow2_map m;
		int r = qcow2_map(q, off, len, &m);
		if (r < 0)
			return r;
		if (m.type == QT_ZERO) {
			/* fine */
		} else if (m.type == QT_UNALLOC) {
			if (q->has_backing && off < q->backing_size)
				return 0;
		} else {
			return 0;
		}
		off += m.len;
		len -= m.len;
	}
	*zero = true;
	return 0;
}

/* Rewrites guest cluster `cstart` with [in, in+n) replaced by `data` (or
 * zeros when data is NULL): the whole cluster is written to a cluster we
 * own (the existing one when it is ours alone, else a new one), then the
 * L2 entry is switched to it. */
static int cluster_rewrite(struct qcow2 *q, uint64_t cstart, uint64_t in, const uint8_t *data, uint64_t n)
{
	uint32_t cs = q->cluster_size;
	uint64_t valid = q->size - cstart < cs ? q->size - cstart : cs;
	uint64_t e, bm;
	int r = get_l2e(q, cstart, &e, &bm);
	if (r < 0)
		return r;
	uint64_t host = entry_host_reusable(q, e) ? e & QCOW2_OFFSET_MASK : 0;
	if (host) {
		enum qcow2_type ty;
		uint64_t h2;
		r = classify(q, e, bm, 0, &ty, &h2);
		if (r < 0)
			return r;
	}
	/* What the rest of the cluster holds: zeros, or data to copy. */
	bool rest_zero = false;
	if (in == 0 && n >= valid) {
		rest_zero = true;
	} else {
		bool z1 = true, z2 = true;
		if (in)
			r = reads_zero(q, cstart, in, &z1);
		if (r == 0 && in + n < valid)
			r = reads_zero(q, cstart + in + n, valid - in - n, &z2);
		if (r < 0)
			return r;
		rest_zero = z1 && z2;
	}
	uint8_t *buf = q->cbuf;
	bool new_cluster = !host;
	if (new_cluster) {
		r = qcow2_alloc_clusters(q, 1, &host);
		if (r < 0)
			return r;
	}
	if (rest_zero && new_cluster && host >= q->eof && !q->is_bdev) {
		/* Past the end of the file everything reads as zeros already. */
		/* Allocate the whole cluster in the filesystem now (one extent,
		 * reads as zeros), so later in-place writes into it do not each
		 * allocate blocks. */
		bool whole = data && in == 0 && n == cs;
		if (!whole && fallocate(q->fd, 0, (off_t)host, (off_t)cs) < 0 &&
		    ftruncate(q->fd, (off_t)(host + cs)) < 0)
			r = -errno;
		if (r == 0 && data)
			r = img_pwrite(q->fd, q->direct, data, (size_t)n, host + in);
		if (r == 0)
			q->eof = host + cs;
	} else {
		if (rest_zero)
			memset(buf, 0, cs);
		else {
			r = qcow2_read(q, cstart, buf, (size_t)valid);
			if (r < 0)
				goto undo;
			if (valid < cs)
				memset(buf + valid, 0, cs - valid);
		}
		if (data)
			memcpy(buf + in, data, n);
		else
			memset(buf + in, 0, n);
		r = img_pwrite(q->fd, q->direct, buf, cs, host);
		if (r == 0 && host + cs > q->eof)
			q->eof = host + cs;
	}
	if (r < 0)
		goto undo;
	uint64_t old_e, old_bm;
	r = set_l2e(q, cstart, host | QCOW2_OFLAG_COPIED, q->ext_l2 ? QCOW2_EXT_ALLOC_ALL : 0, &old_e, &old_bm);
	if (r < 0)
		goto undo;
	if (new_cluster)
		r = free_entry_later(q, old_e);
	return r;
undo:
	if (new_cluster)
		qcow2_free_later(q, host >> q->cluster_bits, 1);
	return r;
}

static int maybe_flush(struct qcow2 *q)
{
	if (q->npend >= PEND_FLUSH)
		return qcow2_flush(q);
	return 0;
}

int qcow2_write(struct qcow2 *q, uint64_t off, const void *buf, size_t len)
{
	if (q->readonly)
		return -EROFS;
	if (off > q->size || len > q->size - off)
		return -EINVAL;
	const uint8_t *p = buf;
	uint32_t cs = q->cluster_size;
	while (len) {
		struct qcow2_map m;
		int r = qcow2_map(q, off, len, &m);
		if (r < 0)
			return r;
		if (m.type == QT_DATA && m.writable) {
			r = img_pwrite(q->fd, q->direct, p, (size_t)m.len, m.host);
			if (r < 0)
				return r;
			p += m.len;
			off += m.len;
			len -= (size_t)m.len;
			continue;
		}
		uint64_t cstart = off & ~(uint64_t)(cs - 1);
		uint64_t in = off - cstart;
		uint64_t n = cs - in < len ? cs - in : len;
		r = cluster_rewrite(q, cstart, in, p, n);
		if (r < 0)
			return r;
		p += n;
		off += n;
		len -= (size_t)n;
	}
	return maybe_flush(q);
}

int qcow2_write_zeroes(struct qcow2 *q, uint64_t off, uint64_t len, bool may_unmap)
{
	if (q->readonly)
		return -EROFS;
	if (off > q->size || len > q->size - off)
		return -EINVAL;
	uint32_t cs = q->cluster_size;
	while (len) {
		uint64_t cstart = off & ~(uint64_t)(cs - 1);
		uint64_t in = off - cstart;
		uint64_t n = cs - in < len ? cs - in : len;
		bool full = in == 0 && (n == cs || cstart + n >= q->size);
		int r;
		bool z;
		r = reads_zero(q, off, n, &z);
		if (r < 0)
			return r;
		if (z) {
			/* nothing to do */
		} else if (full && q->version >= 3) {
			uint64_t e, bm;
			r = get_l2e(q, cstart, &e, &bm);
			if (r < 0)
				return r;
			bool keep = !may_unmap && entry_host_reusable(q, e);
			uint64_t ne, nbm, old_e, old_bm;
			if (q->ext_l2) {
				ne = keep ? (e & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED)) : 0;
				nbm = QCOW2_EXT_ZERO_ALL;
			} else {
				ne = (keep ? (e & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED)) : 0) | QCOW2_OFLAG_ZERO;
				nbm = 0;
			}
			r = set_l2e(q, cstart, ne, nbm, &old_e, &old_bm);
			if (r == 0 && !keep)
				r = free_entry_later(q, old_e);
		} else if (full && (!q->has_backing || cstart >= q->backing_size)) {
			/* v2: unallocated reads as zeros without a backing file. */
			uint64_t e, bm, old_e, old_bm;
			r = get_l2e(q, cstart, &e, &bm);
			if (r < 0)
				return r;
			if (!may_unmap && entry_host_reusable(q, e)) {
				r = cluster_rewrite(q, cstart, 0, NULL, n);
			} else {
				r = set_l2e(q, cstart, 0, 0, &old_e, &old_bm);
				if (r == 0)
					r = free_entry_later(q, old_e);
			}
		} else {
			struct qcow2_map m;
			r = qcow2_map(q, off, n, &m);
			if (r == 0 && m.type == QT_DATA && m.writable && m.len == n) {
				memset(q->cbuf, 0, (size_t)n);
				r = img_pwrite(q->fd, q->direct, q->cbuf, (size_t)n, m.host);
			} else if (r == 0) {
				r = cluster_rewrite(q, cstart, in, NULL, n);
			}
		}
		if (r < 0)
			return r;
		off += n;
		len -= n;
	}
	return maybe_flush(q);
}

int qcow2_discard(struct qcow2 *q, uint64_t off, uint64_t len)
{
	if (q->readonly)
		return -EROFS;
	if (off > q->size || len > q->size - off)
		return -EINVAL;
	uint32_t cs = q->cluster_size;
	while (len) {
		uint64_t cstart = off & ~(uint64_t)(cs - 1);
		uint64_t in = off - cstart;
		uint64_t n = cs - in < len ? cs - in : len;
		bool full = in == 0 && (n == cs || cstart + n >= q->size);
		if (full) {
			uint64_t e, bm, ne = 0, nbm = 0, old_e, old_bm;
			int r = get_l2e(q, cstart, &e, &bm);
			if (r < 0)
				return r;
			bool backed = q->has_backing && cstart < q->backing_size;
			if (backed && q->version < 3)
				goto next; /* cannot express "zero": discard is advisory */
			if (backed) {
				if (q->ext_l2)
					nbm = QCOW2_EXT_ZERO_ALL;
				else
					ne = QCOW2_OFLAG_ZERO;
			}
			if (e == ne && bm == nbm)
				goto next;
			r = set_l2e(q, cstart, ne, nbm, &old_e, &old_bm);
			if (r == 0)
				r = free_entry_later(q, old_e);
			if (r < 0)
				return r;
		}
next:
		off += n;
		len -= n;
	}
	return maybe_flush(q);
}

int qcow2_write_compressed(struct qcow2 *q, uint64_t off, const void *buf, size_t len)
{
	uint32_t cs = q->cluster_size;
	if (q->readonly)
		return -EROFS;
	if (off % cs || off >= q->size || len > cs || (len < cs && off + len != q->size))
		return -EINVAL;
	uint8_t *src = malloc(cs);
	if (!src)
		return -ENOMEM;
	memcpy(src, buf, len);
	memset(src + len, 0, cs - len);
	size_t clen;
	int r = compress_cluster(q, src, &clen);
	if (r < 0 || clen == 0 || clen > cs - 512) {
		/* Does not shrink: store it as a normal cluster. */
		if (r == 0)
			r = qcow2_write(q, off, src, len);
		free(src);
		return r;
	}
	free(src);
	uint64_t coff = 0;
	if (q->comp_cluster && q->comp_used + clen <= cs) {
		uint64_t rc;
		r = qcow2_get_refcount(q, q->comp_cluster, &rc);
		if (r < 0)
			return r;
		if (rc > 0 && rc < q->refcount_max) {
			r = qcow2_update_refcount(q, q->comp_cluster, 1);
			if (r < 0)
				return r;
			coff = (q->comp_cluster << q->cluster_bits) + q->comp_used;
		}
	}
	if (!coff) {
		uint64_t host;
		r = qcow2_alloc_clusters(q, 1, &host);
		if (r < 0)
			return r;
		q->comp_cluster = host >> q->cluster_bits;
		q->comp_used = 0;
		coff = host;
	}
	r = img_pwrite(q->fd, q->direct, q->cbuf2, clen, coff);
	if (r < 0)
		return r;
	q->comp_used = (uint32_t)((coff + clen) & (cs - 1));
	if (q->comp_used == 0)
		q->comp_cluster = 0;
	/* Whole sectors in the file, so reads of the last one are complete. */
	uint64_t end = (coff + clen + 511) & ~511ull;
	if (end > q->eof) {
		if (!q->is_bdev && ftruncate(q->fd, (off_t)end) < 0)
			return -errno;
		q->eof = end;
	}
	uint64_t nsect = ((coff + clen - 1) >> 9) - (coff >> 9);
	uint64_t desc = QCOW2_OFLAG_COMPRESSED | (nsect << q->csize_shift) | coff;
	uint64_t old_e, old_bm;
	q->dc_desc = 0;
	r = set_l2e(q, off, desc, 0, &old_e, &old_bm);
	if (r == 0)
		r = free_entry_later(q, old_e);
	if (r == 0)
		r = maybe_flush(q);
	return r;
}

/* ---- block status -------------------------------------------------------- */

int qcow2_block_status(struct qcow2 *q, uint64_t off, uint64_t len, uint64_t *pnum, unsigned *flags,
		       uint64_t *host_off)
{
	struct qcow2_map m;
	int r = qcow2_map(q, off, len, &m);
	if (r < 0)
		return r;
	*pnum = m.len;
	*host_off = UINT64_MAX;
	switch (m.type) {
	case QT_UNALLOC:
		*flags = 0;
		break;
	case QT_ZERO:
		*flags = IMAGE_BS_ZERO | IMAGE_BS_ALLOCATED;
		break;
	case QT_DATA:
		*flags = IMAGE_BS_DATA | IMAGE_BS_ALLOCATED;
		*host_off = m.host;
		break;
	case QT_COMPRESSED:
		*flags = IMAGE_BS_DATA | IMAGE_BS_ALLOCATED | IMAGE_BS_COMPRESSED;
		break;
	}
	return 0;
}

/* ---- flush / L1 ------------------------------------------------------------ */

static int write_l1_range(struct qcow2 *q, uint64_t lo, uint64_t hi)
{
	if (lo >= hi)
		return 0;
	/* Whole 512-byte sectors of the table. */
	uint64_t b0 = (lo * 8) & ~511ull;
	uint64_t b1 = align_up(hi * 8, 512);
	uint64_t tbytes = align_up((uint64_t)q->l1_size * 8, 512);
	if (b1 > tbytes)
		b1 = tbytes;
	uint8_t *buf = NULL;
	if (posix_memalign((void **)&buf, 4096, b1 - b0))
		return -ENOMEM;
	for (uint64_t i = 0; i < (b1 - b0) / 8; i++) {
		uint64_t idx = b0 / 8 + i;
		q_put64(buf + i * 8, idx < q->l1_size ? q->l1[idx] : 0);
	}
	int r = img_pwrite(q->fd, q->direct, buf, b1 - b0, q->l1_offset + b0);
	free(buf);
	return r;
}

int qcow2_write_l1(struct qcow2 *q)
{
	return write_l1_range(q, 0, q->l1_size);
}

int qcow2_flush(struct qcow2 *q)
{
	if (q->readonly)
		return 0;
	int r = 0;
	bool l1_dirty = q->l1_dirty_lo < q->l1_dirty_hi;
	bool meta = l1_dirty || qc_any_dirty(&q->l2c) || qc_any_dirty(&q->rbc);
	if (meta) {
		r = l2_writeback_all(q);
		if (r < 0)
			return r;
		if (l1_dirty) {
			r = qcow2_sync(q);
			if (r < 0)
				return r;
			r = write_l1_range(q, q->l1_dirty_lo, q->l1_dirty_hi);
			if (r < 0)
				return r;
			q->l1_dirty_lo = UINT64_MAX;
			q->l1_dirty_hi = 0;
		}
	}
	r = qcow2_sync(q);
	if (r < 0)
		return r;
	/* Every reference dropped so far is gone on disk now. */
	q->npend_ready = q->npend;
	if (!q->defer_apply)
		r = qcow2_apply_ready(q);
	q->metadata_changed = false;
	return r;
}

int qcow2_grow_l1(struct qcow2 *q, uint64_t entries)
{
	if (entries <= q->l1_size)
		return 0;
	if (entries * 8 > QCOW2_MAX_L1_BYTES)
		return -EFBIG;
	int r = qcow2_flush(q);
	if (r < 0)
		return r;
	uint32_t cs = q->cluster_size;
	uint64_t bytes = align_up(entries * 8, cs);
	uint64_t *nl1 = NULL;
	if (posix_memalign((void **)&nl1, 4096, bytes))
		return -ENOMEM;
	memset(nl1, 0, bytes);
	memcpy(nl1, q->l1, (size_t)q->l1_size * 8);
	uint64_t noff;
	r = qcow2_alloc_clusters(q, bytes / cs, &noff);
	if (r < 0) {
		free(nl1);
		return r;
	}
	uint8_t *buf = NULL;
	if (posix_memalign((void **)&buf, 4096, bytes)) {
		free(nl1);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < bytes / 8; i++)
		q_put64(buf + i * 8, nl1[i]);
	r = img_pwrite(q->fd, q->direct, buf, bytes, noff);
	free(buf);
	if (r == 0 && noff + bytes > q->eof)
		q->eof = noff + bytes;
	/* The new L1's own refcounts must be durable before the header. */
	if (r == 0)
		r = qc_write_all(q, &q->rbc);
	if (r == 0)
		r = qcow2_sync(q);
	if (r < 0) {
		free(nl1);
		return r;
	}
	uint8_t hb[12];
	q_put32(hb, (uint32_t)entries);
	q_put64(hb + 4, noff);
	r = img_pwrite(q->fd, q->direct, hb, 12, 36);
	if (r == 0)
		r = qcow2_sync(q);
	if (r < 0) {
		free(nl1);
		return r;
	}
	uint64_t old_off = q->l1_offset, old_bytes = (uint64_t)q->l1_size * 8;
	free(q->l1);
	q->l1 = nl1;
	q->l1_size = (uint32_t)entries;
	q->l1_offset = noff;
	return old_bytes ? qcow2_free_now(q, old_off, old_bytes) : 0;
}

int qcow2_fix_copied(struct qcow2 *q, int64_t *fixed, int64_t *errors, bool fix,
		     void (*report)(void *, const char *), void *opaque)
{
	char line[256];
	for (uint64_t i1 = 0; i1 < q->l1_size; i1++) {
		uint64_t l1e = q->l1[i1], l2off;
		if (qcow2_l1e_check(q, l1e, &l2off) < 0 || !l2off)
			continue;
		uint64_t rc;
		int r = qcow2_get_refcount(q, l2off >> q->cluster_bits, &rc);
		if (r < 0)
			return r;
		if ((rc == 1) != ((l1e & QCOW2_OFLAG_COPIED) != 0)) {
			if (report) {
				snprintf(line, sizeof(line), "%s OFLAG_COPIED L2 cluster: l1_index=%llu l1_entry=%llx refcount=%llu",
					 fix ? "Repairing" : "ERROR", (unsigned long long)i1, (unsigned long long)l1e,
					 (unsigned long long)rc);
				report(opaque, line);
			}
			if (fix) {
				q->l1[i1] = rc == 1 ? l1e | QCOW2_OFLAG_COPIED : l1e & ~QCOW2_OFLAG_COPIED;
				if (i1 < q->l1_dirty_lo)
					q->l1_dirty_lo = i1;
				if (i1 + 1 > q->l1_dirty_hi)
					q->l1_dirty_hi = i1 + 1;
				(*fixed)++;
			} else {
				(*errors)++;
			}
		}
		for (uint64_t i2 = 0; i2 < q->l2_entries; i2++) {
			uint8_t *t;
			r = qcow2_l2_load(q, l2off, &t);
			if (r < 0)
				return r;
			uint64_t bm, e = qcow2_l2e_get(q, t, i2, &bm);
			uint64_t host = e & QCOW2_OFFSET_MASK;
			if ((e & QCOW2_OFLAG_COMPRESSED) || !host)
				continue;
			if (host % q->cluster_size)
				continue;
			r = qcow2_get_refcount(q, host >> q->cluster_bits, &rc);
			if (r < 0)
				return r;
			if ((rc == 1) != ((e & QCOW2_OFLAG_COPIED) != 0)) {
				if (report) {
					snprintf(line, sizeof(line), "%s OFLAG_COPIED data cluster: l2_entry=%llx refcount=%llu",
						 fix ? "Repairing" : "ERROR", (unsigned long long)e, (unsigned long long)rc);
					report(opaque, line);
				}
				if (fix) {
					r = qcow2_l2_load(q, l2off, &t);
					if (r < 0)
						return r;
					qcow2_l2e_set(q, t, i2, rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED, bm);
					qcow2_l2_mark_dirty(q, l2off);
					(*fixed)++;
				} else {
					(*errors)++;
				}
			}
		}
	}
	return 0;
}

/* ---- close ------------------------------------------------------------------ */

int qcow2_close(struct qcow2 *q)
{
	if (!q)
		return 0;
	int r = 0;
	q->defer_apply = false; /* nothing is in flight any more */
	if (!q->readonly) {
		r = qcow2_flush(q);
		/* The deferred frees just applied: write them too. */
		if (r == 0 && (qc_any_dirty(&q->rbc) || q->npend))
			r = qcow2_flush(q);
		if (r == 0 && q->lazy_dirty_set)
			r = qcow2_update_incompat(q, q->incompat & ~QCOW2_INCOMPAT_DIRTY);
	}
	qcow2_free(q);
	return r;
}

/* ---- preallocation / deallocation (create, resize) ------------------------------ */

int qcow2_preallocate(struct qcow2 *q)
{
	uint32_t cs = q->cluster_size;
	for (uint64_t off = 0; off < q->size; off += cs) {
		uint64_t e, bm, old_e, old_bm, host;
		int r = get_l2e(q, off, &e, &bm);
		if (r < 0)
			return r;
		if ((e & QCOW2_OFFSET_MASK) || (e & QCOW2_OFLAG_COMPRESSED))
			continue;
		r = qcow2_alloc_clusters(q, 1, &host);
		if (r == 0)
			r = set_l2e(q, off, host | QCOW2_OFLAG_COPIED, q->ext_l2 ? QCOW2_EXT_ALLOC_ALL : 0, &old_e,
				    &old_bm);
		if (r < 0)
			return r;
	}
	int r = qcow2_flush(q);
	if (r < 0)
		return r;
	/* Data clusters must lie inside the file. */
	if (!q->is_bdev && q->file_size > q->eof) {
		if (ftruncate(q->fd, (off_t)q->file_size) < 0)
			return -errno;
		q->eof = q->file_size;
	}
	return 0;
}

int qcow2_deallocate(struct qcow2 *q, uint64_t off, uint64_t len)
{
	uint32_t cs = q->cluster_size;
	uint64_t c = (off + cs - 1) & ~(uint64_t)(cs - 1);
	for (; c < off + len && len - (c - off) >= cs; c += cs) {
		uint64_t e, bm, old_e, old_bm;
		int r = get_l2e(q, c, &e, &bm);
		if (r < 0)
			return r;
		if (!e && !bm)
			continue;
		r = set_l2e(q, c, 0, 0, &old_e, &old_bm);
		if (r == 0)
			r = free_entry_later(q, old_e);
		if (r < 0)
			return r;
	}
	return 0;
}
