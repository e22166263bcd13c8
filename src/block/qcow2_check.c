/* qcow2 consistency check and repair (qemu-img check semantics).
 *
 * The check counts, for every host cluster, the references the metadata
 * makes to it (header, L1/L2 tables and data of the active state and of
 * every snapshot, snapshot table, refcount table and blocks, bitmaps), and
 * compares that with the stored refcounts: stored > counted is a leak,
 * stored < counted a corruption. OFLAG_COPIED in the active tables must be
 * set exactly when the refcount is 1.
 *
 * Repairs change refcounts in place where their refcount block is sound;
 * when a block is missing or broken (or a cluster needs a refcount block
 * that does not exist), FIX_ALL rebuilds the whole refcount structure
 * after the end of the file and switches the header to it. */
#include "block/qcow2_int.h"
#include "block/image.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_MAX_CLUSTERS (1ull << 28)

struct chk {
	struct qcow2 *q;
	struct qcow2_check_result *r;
	uint32_t *rc;               /* counted references per cluster */
	uint64_t n;                 /* entries in rc (clusters in the file) */
	bool need_rebuild;
	uint64_t highest;           /* 1 + last cluster with a stored or counted reference */
	uint8_t *buf;               /* a cluster */
};

static void say(struct chk *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct chk *k, const char *fmt, ...)
{
	if (!k->r->report)
		return;
	char line[320];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	k->r->report(k->r->opaque, line);
}

static void inc(struct chk *k, uint64_t off, uint64_t len)
{
	if (!len)
		return;
	uint32_t cb = k->q->cluster_bits;
	uint64_t c0 = off >> cb, c1 = (off + len - 1) >> cb;
	for (uint64_t c = c0; c <= c1; c++) {
		if (c >= k->n) {
			say(k, "ERROR: reference to cluster %llu (offset 0x%llx) past the end of the file",
			    (unsigned long long)c, (unsigned long long)(c << cb));
			k->r->corruptions++;
			continue;
		}
		if (k->rc[c] != UINT32_MAX)
			k->rc[c]++;
	}
}

static int walk_l2(struct chk *k, uint64_t l2off, bool active)
{
	struct qcow2 *q = k->q;
	uint32_t cs = q->cluster_size;
	int r = img_pread(q->fd, q->direct, k->buf, cs, l2off);
	if (r < 0) {
		say(k, "ERROR: cannot read L2 table at 0x%llx: %s", (unsigned long long)l2off, strerror(-r));
		k->r->check_errors++;
		return 0;
	}
	uint64_t next = 0;
	for (uint64_t i = 0; i < q->l2_entries; i++) {
		uint64_t bm, e = qcow2_l2e_get(q, k->buf, i, &bm);
		if (e & QCOW2_OFLAG_COMPRESSED) {
			uint64_t coff, clen;
			qcow2_compressed_range(q, e, &coff, &clen);
			if (e & QCOW2_OFLAG_COPIED) {
				say(k, "ERROR: compressed cluster entry 0x%llx has OFLAG_COPIED set",
				    (unsigned long long)e);
				k->r->corruptions++;
			}
			if (coff >= QCOW2_MAX_HOST_OFFSET) {
				say(k, "ERROR: compressed cluster offset 0x%llx out of range", (unsigned long long)coff);
				k->r->corruptions++;
				continue;
			}
			inc(k, coff, clen);
			if (active) {
				/* fragmented by nature, as qemu-img counts them */
				k->r->allocated_clusters++;
				k->r->compressed_clusters++;
				k->r->fragmented_clusters++;
			}
			continue;
		}
		uint64_t res = QCOW2_L2_RESERVED | (q->ext_l2 ? QCOW2_OFLAG_ZERO : 0);
		if (e & res) {
			say(k, "ERROR: L2 entry 0x%llx has reserved bits set", (unsigned long long)e);
			k->r->corruptions++;
		}
		if (q->ext_l2 && ((bm >> 32) & bm & 0xffffffffull)) {
			say(k, "ERROR: L2 entry 0x%llx has a corrupted subcluster bitmap 0x%llx", (unsigned long long)e,
			    (unsigned long long)bm);
			k->r->corruptions++;
		}
		uint64_t off = e & QCOW2_OFFSET_MASK;
		if (!off) {
			if (q->ext_l2 && (bm & QCOW2_EXT_ALLOC_ALL)) {
				say(k, "ERROR: unallocated cluster with allocated subclusters (bitmap 0x%llx)",
				    (unsigned long long)bm);
				k->r->corruptions++;
			}
			continue;
		}
		if (off % cs) {
			say(k, "ERROR offset=%llx: Cluster is not properly aligned; L2 entry corrupted.",
			    (unsigned long long)off);
			k->r->corruptions++;
			continue;
		}
		if (active) {
			k->r->allocated_clusters++;
			if (next && off != next)
				k->r->fragmented_clusters++;
			next = off + cs;
		}
		inc(k, off, cs);
	}
	return 0;
}

static int walk_l1(struct chk *k, const uint64_t *l1, uint32_t n, bool active)
{
	struct qcow2 *q = k->q;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t e = l1[i];
		uint64_t off = e & QCOW2_OFFSET_MASK;
		if (!off)
			continue;
		if (e & QCOW2_L1_RESERVED || off % q->cluster_size) {
			say(k, "ERROR: L1 entry %u (0x%llx) is invalid: L2 table not aligned or reserved bits set", i,
			    (unsigned long long)e);
			k->r->corruptions++;
			continue;
		}
		if ((off >> q->cluster_bits) >= k->n) {
			say(k, "ERROR: L2 table at 0x%llx (L1 index %u) is past the end of the file",
			    (unsigned long long)off, i);
			k->r->corruptions++;
			continue;
		}
		inc(k, off, q->cluster_size);
		int r = walk_l2(k, off, active);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Bitmap clusters count only while the bitmaps are consistent (autoclear
 * bit 0): once a program without bitmap support (like us) has written the
 * image, qemu-img treats them as leaked too. */
static void walk_bitmaps(struct chk *k)
{
	struct qcow2 *q = k->q;
	if (!(q->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
		return;
	for (unsigned i = 0; i < q->nr_exts; i++) {
		if (q->exts[i].type != QCOW2_EXT_BITMAPS || q->exts[i].len < 24)
			continue;
		const uint8_t *d = q->exts[i].data;
		uint32_t nb = q_be32(d);
		uint64_t dsize = q_be64(d + 8), doff = q_be64(d + 16);
		if (!nb || dsize > (64u << 20) || doff % q->cluster_size || doff >= q->file_size ||
		    dsize > q->file_size - doff) {
			say(k, "ERROR: bitmap directory (offset 0x%llx, %llu bytes) is invalid", (unsigned long long)doff,
			    (unsigned long long)dsize);
			k->r->corruptions++;
			continue;
		}
		inc(k, doff, dsize);
		uint8_t *dir = malloc(dsize ? dsize : 1);
		if (!dir || img_pread(q->fd, q->direct, dir, (size_t)dsize, doff) < 0) {
			free(dir);
			k->r->check_errors++;
			continue;
		}
		uint64_t pos = 0;
		for (uint32_t b = 0; b < nb && pos + 24 <= dsize; b++) {
			uint64_t toff = q_be64(dir + pos);
			uint32_t tsize = q_be32(dir + pos + 8);
			uint16_t nlen = q_be16(dir + pos + 18);
			uint32_t xlen = q_be32(dir + pos + 20);
			pos += (24 + (uint64_t)xlen + nlen + 7) & ~7ull;
			uint64_t tbytes = (uint64_t)tsize * 8;
			if (toff % q->cluster_size || toff >= q->file_size || tbytes > (64u << 20) ||
			    tbytes > q->file_size - toff) {
				k->r->corruptions++;
				continue;
			}
			inc(k, toff, tbytes);
			uint8_t *tb = malloc(tbytes ? tbytes : 1);
			if (!tb || img_pread(q->fd, q->direct, tb, (size_t)tbytes, toff) < 0) {
				free(tb);
				k->r->check_errors++;
				continue;
			}
			for (uint32_t j = 0; j < tsize; j++) {
				uint64_t e = q_be64(tb + (size_t)j * 8) & QCOW2_OFFSET_MASK;
				if (e)
					inc(k, e, q->cluster_size);
			}
			free(tb);
		}
		free(dir);
	}
}

/* Counts every reference; the refcount structure's own clusters are
 * counted only when `with_refcount_structure`. */
static int count_refs(struct chk *k, bool with_refcount_structure)
{
	struct qcow2 *q = k->q;
	memset(k->rc, 0, k->n * sizeof(*k->rc));
	inc(k, 0, q->cluster_size);
	inc(k, q->l1_offset, (uint64_t)q->l1_size * 8);
	int r = walk_l1(k, q->l1, q->l1_size, true);
	if (r < 0)
		return r;
	if (q->nb_snapshots)
		inc(k, q->snapshots_offset, q->snap_table_bytes);
	for (uint32_t i = 0; i < q->nb_snapshots; i++) {
		const struct qcow2_snap *s = &q->snaps[i];
		inc(k, s->l1_offset, (uint64_t)s->l1_size * 8);
		uint64_t *l1 = calloc(s->l1_size ? s->l1_size : 1, 8);
		if (!l1)
			return -ENOMEM;
		r = s->l1_size ? img_pread(q->fd, q->direct, l1, (size_t)s->l1_size * 8, s->l1_offset) : 0;
		if (r < 0) {
			free(l1);
			k->r->check_errors++;
			continue;
		}
		for (uint32_t j = 0; j < s->l1_size; j++)
			l1[j] = q_be64(&l1[j]);
		r = walk_l1(k, l1, s->l1_size, false);
		free(l1);
		if (r < 0)
			return r;
	}
	walk_bitmaps(k);
	if (with_refcount_structure) {
		inc(k, q->rt_offset, (uint64_t)q->rt_clusters * q->cluster_size);
		for (uint64_t t = 0; t < q->rt_entries; t++) {
			uint64_t rb = q->reftable[t];
			if (!rb)
				continue;
			if (rb & QCOW2_RT_RESERVED || rb % q->cluster_size) {
				say(k, "ERROR refcount block %llu is not cluster aligned; refcount table entry corrupted",
				    (unsigned long long)t);
				k->r->corruptions++;
				k->need_rebuild = true;
				continue;
			}
			if ((rb >> q->cluster_bits) >= k->n) {
				say(k, "ERROR refcount block %llu is outside image", (unsigned long long)t);
				k->r->corruptions++;
				k->need_rebuild = true;
				continue;
			}
			inc(k, rb, q->cluster_size);
		}
	}
	return 0;
}

static bool rb_sound(const struct qcow2 *q, uint64_t t, uint64_t n)
{
	if (t >= q->rt_entries)
		return false;
	uint64_t rb = q->reftable[t];
	return rb && !(rb & QCOW2_RT_RESERVED) && rb % q->cluster_size == 0 && (rb >> q->cluster_bits) < n;
}

/* Compares counted and stored refcounts, fixing what `fix` allows in
 * place. */
static int compare(struct chk *k, int fix)
{
	struct qcow2 *q = k->q;
	uint64_t E = q->rb_entries;
	/* Like qemu-img: the clusters of the file (refcounts past its end
	 * describe nothing that exists). */
	for (uint64_t c = 0; c < k->n; c++) {
		uint64_t t = c / E;
		uint64_t counted = k->rc[c];
		if (!rb_sound(q, t, k->n)) {
			if (counted)
				k->highest = c + 1;
			if (counted) {
				say(k, "ERROR cluster %llu refcount=0 reference=%llu", (unsigned long long)c,
				    (unsigned long long)counted);
				k->r->corruptions++;
				k->need_rebuild = true;
			}
			continue;
		}
		uint64_t stored;
		int r = qcow2_get_refcount(q, c, &stored);
		if (r < 0) {
			k->r->check_errors++;
			continue;
		}
		if (stored || counted)
			k->highest = c + 1;
		if (stored == counted)
			continue;
		bool leak = stored > counted;
		if (counted > q->refcount_max) {
			say(k, "ERROR cluster %llu: %llu references exceed the refcount width", (unsigned long long)c,
			    (unsigned long long)counted);
			k->r->corruptions++;
			continue;
		}
		bool do_fix = leak ? (fix & (QCOW2_FIX_LEAKS | QCOW2_FIX_ALL)) != 0 : (fix & QCOW2_FIX_ALL) != 0;
		say(k, "%s cluster %llu refcount=%llu reference=%llu",
		    do_fix ? "Repairing" : (leak ? "Leaked" : "ERROR"), (unsigned long long)c,
		    (unsigned long long)stored, (unsigned long long)counted);
		if (do_fix) {
			r = qcow2_set_refcount(q, c, counted);
			if (r < 0) {
				k->r->check_errors++;
				continue;
			}
			if (leak)
				k->r->leaks_fixed++;
			else
				k->r->corruptions_fixed++;
		} else if (leak) {
			k->r->leaks++;
		} else {
			k->r->corruptions++;
		}
	}
	return 0;
}

/* Writes a fresh refcount table and blocks from k->rc (which must not
 * count the old structure) after everything in the file, then switches the
 * header to them. */
static int rebuild(struct chk *k)
{
	struct qcow2 *q = k->q;
	uint32_t cs = q->cluster_size;
	uint64_t E = q->rb_entries;
	uint64_t per = cs / 8;
	/* After the file and the old structure (still live until the switch). */
	uint64_t base = k->n;
	uint64_t old_end = (q->rt_offset >> q->cluster_bits) + q->rt_clusters;
	if (old_end > base)
		base = old_end;
	for (uint64_t t = 0; t < q->rt_entries; t++)
		if (rb_sound(q, t, UINT64_MAX) && (q->reftable[t] >> q->cluster_bits) + 1 > base)
			base = (q->reftable[t] >> q->cluster_bits) + 1;
	uint64_t nb = 1, tc = 1, end;
	for (;;) {
		end = base + tc + nb;
		uint64_t nb2 = qcow2_ceil_div(end, E);
		uint64_t tc2 = qcow2_ceil_div(nb2, per);
		if (nb2 == nb && tc2 == tc)
			break;
		nb = nb2;
		tc = tc2;
	}
	if (tc * cs > QCOW2_MAX_REFTABLE_BYTES || end > CHECK_MAX_CLUSTERS * 2)
		return -EFBIG;
	uint32_t *rc = realloc(k->rc, end * sizeof(*rc));
	if (!rc)
		return -ENOMEM;
	k->rc = rc;
	memset(rc + k->n, 0, (end - k->n) * sizeof(*rc));
	k->n = end;
	for (uint64_t c = base; c < end; c++)
		rc[c] = 1;
	uint8_t *blk = NULL, *tbl = NULL;
	if (posix_memalign((void **)&blk, 4096, cs) || posix_memalign((void **)&tbl, 4096, tc * cs)) {
		free(blk);
		return -ENOMEM;
	}
	memset(tbl, 0, tc * cs);
	int r = 0;
	for (uint64_t j = 0; j < nb && r == 0; j++) {
		memset(blk, 0, cs);
		for (uint64_t i = 0; i < E && j * E + i < end; i++) {
			uint64_t v = rc[j * E + i];
			if (v > q->refcount_max)
				v = q->refcount_max;
			qcow2_rc_set(blk, i, q->refcount_order, v);
		}
		uint64_t boff = (base + tc + j) * cs;
		q_put64(tbl + j * 8, boff);
		r = img_pwrite(q->fd, q->direct, blk, cs, boff);
	}
	if (r == 0)
		r = img_pwrite(q->fd, q->direct, tbl, tc * cs, base * cs);
	if (r == 0)
		r = qcow2_sync(q);
	uint8_t hb[12];
	q_put64(hb, base * cs);
	q_put32(hb + 8, (uint32_t)tc);
	if (r == 0)
		r = img_pwrite(q->fd, q->direct, hb, 12, 48);
	if (r == 0)
		r = qcow2_sync(q);
	if (r == 0) {
		uint64_t *nt = calloc(tc * per, 8);
		if (!nt) {
			r = -ENOMEM;
		} else {
			for (uint64_t t = 0; t < tc * per; t++)
				nt[t] = q_be64(tbl + t * 8);
			free(q->reftable);
			q->reftable = nt;
			q->rt_entries = tc * per;
			q->rt_offset = base * cs;
			q->rt_clusters = (uint32_t)tc;
			qcow2_cache_reset(q);
			q->free_hint = 0;
			if (end * cs > q->file_size)
				q->file_size = end * cs;
			if (end * cs > q->eof)
				q->eof = end * cs;
		}
	}
	free(blk);
	free(tbl);
	return r;
}

static int check_pass(struct qcow2 *q, int fix, struct qcow2_check_result *res)
{
	struct chk k;
	memset(&k, 0, sizeof(k));
	k.q = q;
	k.r = res;
	uint64_t fs = q->file_size;
	k.n = qcow2_ceil_div(fs, q->cluster_size);
	if (k.n > CHECK_MAX_CLUSTERS) {
		res->check_errors++;
		return -EFBIG;
	}
	k.rc = calloc(k.n ? k.n : 1, sizeof(*k.rc));
	k.buf = malloc(q->cluster_size);
	int r = -ENOMEM;
	if (!k.rc || !k.buf)
		goto out;
	r = count_refs(&k, true);
	if (r < 0)
		goto out;
	res->total_clusters = qcow2_ceil_div(q->size, q->cluster_size);
	r = compare(&k, fix);
	if (r < 0)
		goto out;
	res->image_end_offset = k.highest << q->cluster_bits;
	if (k.need_rebuild && (fix & QCOW2_FIX_ALL)) {
		int64_t before = res->corruptions;
		struct qcow2_check_result quiet = *res;
		quiet.report = NULL;
		k.r = &quiet;
		r = count_refs(&k, false);
		k.r = res;
		if (r < 0)
			goto out;
		r = rebuild(&k);
		if (r < 0) {
			res->check_errors++;
			goto out;
		}
		say(&k, "Rebuilt the refcount structure (%lld problems)", (long long)before);
		res->corruptions_fixed += res->corruptions;
		res->corruptions = 0;
	}
	if (!q->readonly)
		r = qcow2_flush(q);
	if (r < 0)
		goto out;
	/* OFLAG_COPIED against the stored (possibly just repaired) refcounts. */
	int64_t fixed = 0, errors = 0;
	r = qcow2_fix_copied(q, &fixed, &errors, (fix & QCOW2_FIX_ALL) != 0, res->report, res->opaque);
	if (r < 0) {
		res->check_errors++;
		r = 0;
	}
	res->corruptions += errors;
	res->corruptions_fixed += fixed;
	if (fixed && !q->readonly)
		r = qcow2_flush(q);
out:
	free(k.rc);
	free(k.buf);
	return r;
}

int qcow2_do_check(struct qcow2 *q, int fix, struct qcow2_check_result *res)
{
	void (*report)(void *, const char *) = res->report;
	void *opaque = res->opaque;
	memset(res, 0, sizeof(*res));
	res->report = report;
	res->opaque = opaque;
	if (fix && q->readonly)
		return -EROFS;
	int r;
	if (!q->readonly) {
		/* Check what is on disk: write back first. Twice: the first
		 * flush's deferred frees are written by the second. */
		bool saved = q->defer_apply;
		q->defer_apply = false;
		r = qcow2_flush(q);
		if (r == 0)
			r = qcow2_flush(q);
		q->defer_apply = saved;
		if (r < 0)
			return r;
	}
	r = check_pass(q, fix, res);
	if (r < 0)
		return r;
	if (fix && (res->leaks_fixed || res->corruptions_fixed)) {
		/* Report what is left, like qemu-img check -r. */
		struct qcow2_check_result again;
		memset(&again, 0, sizeof(again));
		r = check_pass(q, 0, &again);
		if (r < 0)
			return r;
		res->corruptions = again.corruptions;
		res->leaks = again.leaks;
		res->check_errors += again.check_errors;
		res->image_end_offset = again.image_end_offset;
		res->allocated_clusters = again.allocated_clusters;
		res->fragmented_clusters = again.fragmented_clusters;
		res->compressed_clusters = again.compressed_clusters;
	}
	if ((fix & QCOW2_FIX_ALL) && !res->corruptions && !res->check_errors &&
	    (q->incompat & QCOW2_INCOMPAT_CORRUPT))
		r = qcow2_update_incompat(q, q->incompat & ~QCOW2_INCOMPAT_CORRUPT);
	/* Repaired: the refcounts are right again, the image is clean. */
	if (r == 0 && fix && !res->corruptions && !res->check_errors && (q->incompat & QCOW2_INCOMPAT_DIRTY)) {
		r = qcow2_update_incompat(q, q->incompat & ~QCOW2_INCOMPAT_DIRTY);
		q->lazy_dirty_set = false;
	}
	return r;
}

int qcow2_check(struct image *img, int fix, struct qcow2_check_result *r)
{
	struct qcow2 *q = image_qcow2(img);
	if (!q)
		return -ENOTSUP;
	return qcow2_do_check(q, fix, r);
}
