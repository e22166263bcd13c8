/* qcow2 image creation, size estimates (measure), backing file changes and
 * resizing. */
#include "block/qcow2_int.h"
#include "block/image.h"
#include "block/image_ext.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum prealloc { PA_OFF, PA_METADATA, PA_FALLOC, PA_FULL };

struct params {
	uint32_t version;
	uint32_t cluster_bits;
	uint32_t refcount_order;
	uint8_t compression_type;
	enum prealloc prealloc;
	bool lazy, ext_l2;
};

static int ilog2_exact(uint64_t v)
{
	if (!v || (v & (v - 1)))
		return -1;
	return __builtin_ctzll(v);
}

static int parse_params(const struct qcow2_create_opts *o, struct params *p, char *err, size_t errlen)
{
	memset(p, 0, sizeof(*p));
	const char *compat = o->compat ? o->compat : "1.1";
	if (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))
		p->version = 2;
	else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3"))
		p->version = 3;
	else {
		snprintf(err, errlen, "invalid compat level '%s' (0.10 or 1.1)", compat);
		return -EINVAL;
	}
	uint64_t cs = o->cluster_size ? o->cluster_size : 65536;
	int cb = ilog2_exact(cs);
	if (cb < 9 || cb > 21) {
		snprintf(err, errlen, "invalid cluster size %llu (a power of two, 512 to 2M)", (unsigned long long)cs);
		return -EINVAL;
	}
	p->cluster_bits = (uint32_t)cb;
	unsigned rb = o->refcount_bits ? o->refcount_bits : 16;
	int ro = ilog2_exact(rb);
	if (ro < 0 || ro > 6) {
		snprintf(err, errlen, "invalid refcount_bits %u (a power of two, 1 to 64)", rb);
		return -EINVAL;
	}
	if (p->version == 2 && ro != 4) {
		snprintf(err, errlen, "refcount_bits other than 16 need compat 1.1");
		return -EINVAL;
	}
	p->refcount_order = (uint32_t)ro;
	const char *ct = o->compression_type ? o->compression_type : "zlib";
	if (!strcmp(ct, "zlib")) {
		p->compression_type = 0;
	} else if (!strcmp(ct, "zstd")) {
		if (p->version == 2) {
			snprintf(err, errlen, "compression_type zstd needs compat 1.1");
			return -EINVAL;
		}
		p->compression_type = 1;
	} else {
		snprintf(err, errlen, "invalid compression type '%s' (zlib or zstd)", ct);
		return -EINVAL;
	}
	const char *pa = o->preallocation ? o->preallocation : "off";
	if (!strcmp(pa, "off"))
		p->prealloc = PA_OFF;
	else if (!strcmp(pa, "metadata"))
		p->prealloc = PA_METADATA;
	else if (!strcmp(pa, "falloc"))
		p->prealloc = PA_FALLOC;
	else if (!strcmp(pa, "full"))
		p->prealloc = PA_FULL;
	else {
		snprintf(err, errlen, "invalid preallocation mode '%s' (off, metadata, falloc, full)", pa);
		return -EINVAL;
	}
	if (o->lazy_refcounts && p->version == 2) {
		snprintf(err, errlen, "lazy refcounts need compat 1.1");
		return -EINVAL;
	}
	p->lazy = o->lazy_refcounts;
	if (o->extended_l2) {
		if (p->version == 2) {
			snprintf(err, errlen, "extended L2 entries need compat 1.1");
			return -EINVAL;
		}
		if (cb < 14) {
			snprintf(err, errlen, "extended L2 entries need a cluster size of at least 16K");
			return -EINVAL;
		}
	}
	p->ext_l2 = o->extended_l2;
	if (o->backing_fmt && *o->backing_fmt && (!o->backing_file || !*o->backing_file)) {
		snprintf(err, errlen, "backing format given without a backing file");
		return -EINVAL;
	}
	if (o->backing_fmt && *o->backing_fmt && strcmp(o->backing_fmt, "raw") && strcmp(o->backing_fmt, "qcow2")) {
		snprintf(err, errlen, "backing format '%s' is not supported (raw or qcow2)", o->backing_fmt);
		return -EINVAL;
	}
	if (o->backing_file && strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME) {
		snprintf(err, errlen, "backing file name too long");
		return -EINVAL;
	}
	return 0;
}

static uint64_t l2_entries_of(const struct params *p)
{
	return (1ull << p->cluster_bits) / (p->ext_l2 ? 16 : 8);
}

static int backing_size(const char *path, const struct qcow2_create_opts *o, uint64_t *size, char *err,
			size_t errlen)
{
	char full[PATH_MAX];
	if (o->backing_file[0] == '/') {
		snprintf(full, sizeof(full), "%s", o->backing_file);
	} else {
		char tmp[PATH_MAX];
		snprintf(tmp, sizeof(tmp), "%s", path);
		snprintf(full, sizeof(full), "%s/%s", dirname(tmp), o->backing_file);
	}
	struct image_open_opts bo = {
		.path = full,
		.format = o->backing_fmt && *o->backing_fmt ? o->backing_fmt : NULL,
		.readonly = true,
		.no_backing = true,
	};
	struct image *b = image_open(&bo, err, errlen);
	if (!b)
		return -ENOENT;
	*size = image_size(b);
	image_close(b);
	return 0;
}

int qcow2_create(const char *path, const struct qcow2_create_opts *o, char *err, size_t errlen)
{
	struct params p;
	int r = parse_params(o, &p, err, errlen);
	if (r < 0)
		return r;
	uint64_t size = o->size;
	if (!size && o->backing_file && *o->backing_file) {
		r = backing_size(path, o, &size, err, errlen);
		if (r < 0)
			return r;
	}
	size = (size + 511) & ~511ull;
	if (size > QCOW2_MAX_VSIZE) {
		snprintf(err, errlen, "image size too large");
		return -EFBIG;
	}
	uint32_t cs = 1u << p.cluster_bits;
	uint64_t l1_entries = qcow2_ceil_div(size, (uint64_t)cs * l2_entries_of(&p));
	if (l1_entries * 8 > QCOW2_MAX_L1_BYTES) {
		snprintf(err, errlen, "image size too large for cluster size %u", cs);
		return -EFBIG;
	}
	uint64_t l1c = qcow2_ceil_div(l1_entries * 8, cs);
	uint64_t E = (uint64_t)cs * 8 >> p.refcount_order;
	uint64_t tc = 1, nb = 1, total;
	for (;;) {
		total = 1 + tc + nb + l1c;
		uint64_t nb2 = qcow2_ceil_div(total, E);
		uint64_t tc2 = qcow2_ceil_div(nb2 * 8, cs);
		if (nb2 <= nb && tc2 <= tc)
			break;
		nb = nb2 > nb ? nb2 : nb;
		tc = tc2 > tc ? tc2 : tc;
	}

	struct qcow2 *t = calloc(1, sizeof(*t));
	uint8_t *buf = NULL;
	if (!t || posix_memalign((void **)&buf, 4096, (size_t)cs * (tc > 1 ? tc : 1))) {
		free(t);
		snprintf(err, errlen, "%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	t->version = p.version;
	t->cluster_bits = p.cluster_bits;
	t->cluster_size = cs;
	t->size = size;
	t->l1_size = (uint32_t)l1_entries;
	t->rt_offset = cs;
	t->rt_clusters = (uint32_t)tc;
	t->l1_offset = (1 + tc + nb) * cs;
	t->refcount_order = p.refcount_order;
	t->header_length = p.version >= 3 ? 112 : 72;
	t->compression_type = p.compression_type;
	if (p.compression_type)
		t->incompat |= QCOW2_INCOMPAT_COMPRESS;
	if (p.ext_l2)
		t->incompat |= QCOW2_INCOMPAT_EXTL2;
	if (p.lazy)
		t->compat |= QCOW2_COMPAT_LAZY;
	if (o->backing_file)
		snprintf(t->backing_file, sizeof(t->backing_file), "%s", o->backing_file);
	if (o->backing_fmt && o->backing_file && *o->backing_file)
		snprintf(t->backing_fmt, sizeof(t->backing_fmt), "%s", o->backing_fmt);

	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "image '%s': %s", path, strerror(-r));
		goto out;
	}
	int hl = qcow2_build_header(t, buf);
	if (hl < 0) {
		r = hl;
		snprintf(err, errlen, "image '%s': the header does not fit in one cluster (backing file name too long)",
			 path);
		goto out;
	}
	r = img_pwrite(fd, false, buf, cs, 0);
	/* Refcount table. */
	memset(buf, 0, (size_t)cs * tc);
	for (uint64_t j = 0; j < nb; j++)
		q_put64(buf + j * 8, (1 + tc + j) * cs);
	if (r == 0)
		r = img_pwrite(fd, false, buf, (size_t)cs * tc, cs);
	/* Refcount blocks: clusters 0..total-1 are in use. */
	for (uint64_t j = 0; j < nb && r == 0; j++) {
		memset(buf, 0, cs);
		for (uint64_t i = 0; i < E && j * E + i < total; i++)
			qcow2_rc_set(buf, i, p.refcount_order, 1);
		r = img_pwrite(fd, false, buf, cs, (1 + tc + j) * cs);
	}
	if (r == 0 && ftruncate(fd, (off_t)(total * cs)) < 0)
		r = -errno;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r < 0) {
		snprintf(err, errlen, "image '%s': %s", path, strerror(-r));
		goto out;
	}
	if (p.prealloc != PA_OFF) {
		char why[256];
		struct qcow2 *q = qcow2_open(fd, path, false, false, 0, why, sizeof(why));
		if (!q) {
			snprintf(err, errlen, "image '%s': %s", path, why);
			r = -EIO;
			goto out;
		}
		r = qcow2_preallocate(q);
		if (r == 0 && p.prealloc == PA_FALLOC && fallocate(fd, 0, 0, (off_t)q->file_size) < 0)
			r = -errno;
		if (r == 0 && p.prealloc == PA_FULL) {
			uint8_t *z = calloc(1, 1u << 20);
			if (!z)
				r = -ENOMEM;
			for (uint64_t off = 0; r == 0 && off < q->size;) {
				struct qcow2_map m;
				r = qcow2_map(q, off, q->size - off, &m);
				if (r < 0)
					break;
				for (uint64_t k = 0; r == 0 && m.type == QT_DATA && k < m.len; k += 1u << 20) {
					size_t n = m.len - k < (1u << 20) ? (size_t)(m.len - k) : (1u << 20);
					r = img_pwrite(fd, false, z, n, m.host + k);
				}
				off += m.len;
			}
			free(z);
		}
		int r2 = qcow2_close(q);
		if (r == 0)
			r = r2;
		if (r < 0) {
			snprintf(err, errlen, "image '%s': preallocation: %s", path, strerror(-r));
			goto out;
		}
	}
out:
	if (fd >= 0 && close(fd) < 0 && r == 0) {
		r = -errno;
		snprintf(err, errlen, "image '%s': %s", path, strerror(-r));
	}
	free(buf);
	free(t);
	return r;
}

/* ---- measure --------------------------------------------------------------------- */

/* Refcount table + blocks needed to count `clusters` clusters plus
 * themselves (the smallest fixed point). */
static uint64_t refcount_meta(uint64_t clusters, uint32_t cs, uint32_t order, bool generous)
{
	uint64_t per_block = (uint64_t)cs * 8 >> order;
	uint64_t per_table_cluster = cs / 8;
	uint64_t blocks = 0, table = 0, last, cur = 0;
	do {
		last = cur;
		blocks = qcow2_ceil_div(clusters + table + blocks, per_block);
		table = qcow2_ceil_div(blocks, per_table_cluster);
		cur = clusters + blocks + table;
		if (cur == last && generous) {
			/* room for the table to grow by half */
			clusters += qcow2_ceil_div(table, 2);
			generous = false;
			cur = 0;
		}
	} while (cur != last);
	return (blocks + table) * cs;
}

static uint64_t full_size(uint64_t vsize, const struct params *p)
{
	uint32_t cs = 1u << p->cluster_bits;
	uint64_t aligned = (vsize + cs - 1) / cs * cs;
	uint64_t per_l2 = l2_entries_of(p);
	uint64_t meta = cs; /* header */
	uint64_t nl2e = aligned / cs;
	nl2e = (nl2e + per_l2 - 1) / per_l2 * per_l2;
	meta += nl2e * (p->ext_l2 ? 16 : 8);
	uint64_t nl1e = nl2e / per_l2;
	nl1e = (nl1e + cs / 8 - 1) / (cs / 8) * (cs / 8);
	meta += nl1e * 8;
	meta += refcount_meta((meta + aligned) / cs, cs, p->refcount_order, p->ext_l2);
	return meta + aligned;
}

/* Does the chain define data (not zeros) in [off, off+len)? *pnum bytes
 * share the answer. */
static int chain_data(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum, bool *data)
{
	unsigned flags;
	uint64_t host;
	int r = image_block_status(img, off, len, pnum, &flags, &host);
	if (r < 0)
		return r;
	if (*pnum == 0)
		*pnum = len;
	if (flags & IMAGE_BS_ALLOCATED || flags & IMAGE_BS_ZERO || !image_backing(img)) {
		*data = (flags & IMAGE_BS_DATA) && !(flags & IMAGE_BS_ZERO);
		return 0;
	}
	return chain_data(image_backing(img), off, *pnum, pnum, data);
}

int qcow2_measure(const struct qcow2_create_opts *o, struct image *src, struct qcow2_measure *out, char *err,
		  size_t errlen)
{
	struct params p;
	int r = parse_params(o, &p, err, errlen);
	if (r < 0)
		return r;
	uint64_t vsize = o->size ? o->size : (src ? image_size(src) : 0);
	vsize = (vsize + 511) & ~511ull;
	uint32_t cs = 1u << p.cluster_bits;
	uint64_t required = 0;
	if (p.prealloc == PA_FALLOC || p.prealloc == PA_FULL) {
		required = (vsize + cs - 1) / cs * cs;
	} else if (src) {
		uint64_t ssize = image_size(src);
		uint64_t off = 0;
		while (off < ssize) {
			uint64_t pnum;
			bool data;
			r = chain_data(src, off, ssize - off, &pnum, &data);
			if (r < 0) {
				snprintf(err, errlen, "image '%s': %s", image_path(src), strerror(-r));
				return r;
			}
			if (data) {
				uint64_t end = (off + pnum + cs - 1) / cs * cs;
				required += (off % cs) + (end - off);
				pnum = end - off;
			}
			off += pnum;
		}
	}
	out->fully_allocated = full_size(vsize, &p);
	out->required = out->fully_allocated - (vsize + cs - 1) / cs * cs + required;
	return 0;
}

/* ---- backing file ------------------------------------------------------------------ */

int qcow2_set_backing(struct image *img, const char *backing, const char *fmt)
{
	struct qcow2 *q = image_qcow2(img);
	if (!q)
		return -ENOTSUP;
	if (q->readonly)
		return -EROFS;
	if (backing && strlen(backing) > QCOW2_MAX_BACKING_NAME)
		return -ENAMETOOLONG;
	if (fmt && strlen(fmt) >= sizeof(q->backing_fmt))
		return -EINVAL;
	char old_b[sizeof(q->backing_file)], old_f[sizeof(q->backing_fmt)];
	memcpy(old_b, q->backing_file, sizeof(old_b));
	memcpy(old_f, q->backing_fmt, sizeof(old_f));
	snprintf(q->backing_file, sizeof(q->backing_file), "%s", backing ? backing : "");
	snprintf(q->backing_fmt, sizeof(q->backing_fmt), "%s", backing && *backing && fmt ? fmt : "");
	int r = qcow2_write_header(q);
	if (r < 0) {
		memcpy(q->backing_file, old_b, sizeof(old_b));
		memcpy(q->backing_fmt, old_f, sizeof(old_f));
	}
	return r;
}

/* ---- resize ------------------------------------------------------------------------- */

static int write_size(struct qcow2 *q, uint64_t size)
{
	uint8_t b[8];
	q_put64(b, size);
	int r = img_pwrite(q->fd, q->direct, b, 8, 24);
	if (r == 0)
		r = qcow2_sync(q);
	return r;
}

int qcow2_resize(struct qcow2 *q, uint64_t new_size, bool allow_shrink)
{
	if (q->readonly)
		return -EROFS;
	if (new_size == q->size)
		return 0;
	if (new_size > QCOW2_MAX_VSIZE)
		return -EFBIG;
	int r;
	if (new_size < q->size) {
		if (!allow_shrink)
			return -EINVAL;
		if (q->nb_snapshots)
			return -ENOTSUP;
		r = qcow2_deallocate(q, new_size, q->size - new_size);
		if (r == 0)
			r = qcow2_flush(q);
		if (r == 0)
			r = write_size(q, new_size);
		if (r == 0)
			q->size = new_size;
		return r;
	}
	uint64_t need = qcow2_l1_needed(q, new_size);
	if (need * 8 > QCOW2_MAX_L1_BYTES)
		return -EFBIG;
	r = qcow2_grow_l1(q, need);
	if (r < 0)
		return r;
	uint64_t old = q->size;
	uint32_t cs = q->cluster_size;
	q->size = new_size;
	/* What the new range shows must be zeros: the tail of the old last
	 * cluster may hold stale data, and a larger backing file would show
	 * through. */
	uint64_t zend = (old + cs - 1) / cs * cs;
	if (q->has_backing && q->backing_size > zend)
		zend = q->backing_size;
	if (zend > new_size)
		zend = new_size;
	if (zend > old)
		r = qcow2_write_zeroes(q, old, zend - old, false);
	if (r == 0)
		r = qcow2_flush(q);
	if (r == 0)
		r = write_size(q, new_size);
	if (r < 0)
		q->size = old;
	return r;
}
