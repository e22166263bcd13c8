/* qcow2 internal snapshots: the snapshot table, and create/apply/delete.
 *
 * Ordering: refcount increments are made durable before anything new
 * references the clusters; the header switch (snapshot table, or active
 * L1 for apply) is the commit point; decrements of what is no longer
 * referenced come after it. A crash therefore leaves leaks at worst
 * (except for the OFLAG_COPIED flags, which qemu-img check -r all
 * repairs, as with QEMU itself). */
#include "block/qcow2_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void snap_clear(struct qcow2_snap *s)
{
	free(s->id);
	free(s->name);
	free(s->extra);
	memset(s, 0, sizeof(*s));
}

void qcow2_snap_free_all(struct qcow2 *q)
{
	for (uint32_t i = 0; q->snaps && i < q->nb_snapshots; i++)
		snap_clear(&q->snaps[i]);
	free(q->snaps);
	q->snaps = NULL;
}

static char *dup_bytes(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);
	if (s) {
		memcpy(s, p, n);
		s[n] = 0;
	}
	return s;
}

int qcow2_snap_parse(struct qcow2 *q, char *err, size_t errlen)
{
	uint32_t n = q->nb_snapshots;
	q->snap_table_bytes = 0;
	if (!n)
		return 0;
	if (n > QCOW2_MAX_SNAPSHOTS) {
		snprintf(err, errlen, "too many snapshots (%u)", n);
		return -EINVAL;
	}
	uint64_t base = q->snapshots_offset;
	if (base % q->cluster_size || base == 0 || base >= q->file_size) {
		snprintf(err, errlen, "snapshot table (offset %llu) is misaligned or past the end of the file",
			 (unsigned long long)base);
		return -EINVAL;
	}
	q->snaps = calloc(n, sizeof(*q->snaps));
	if (!q->snaps)
		return -ENOMEM;
	uint64_t pos = base;
	uint8_t *buf = malloc(40 + QCOW2_MAX_SNAP_EXTRA + 2 * 65536 + 8);
	if (!buf)
		return -ENOMEM;
	int r = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct qcow2_snap *s = &q->snaps[i];
		if (pos + 40 > q->file_size || pos + 40 - base > QCOW2_MAX_SNAPTABLE) {
			snprintf(err, errlen, "snapshot table runs past the end of the file");
			r = -EINVAL;
			break;
		}
		r = img_pread(q->fd, q->direct, buf, 40, pos);
		if (r < 0)
			break;
		s->l1_offset = q_be64(buf);
		s->l1_size = q_be32(buf + 8);
		uint16_t id_len = q_be16(buf + 12), name_len = q_be16(buf + 14);
		s->date_sec = q_be32(buf + 16);
		s->date_nsec = q_be32(buf + 20);
		s->vm_clock_nsec = q_be64(buf + 24);
		s->vm_state_size = q_be32(buf + 32);
		s->extra_size = q_be32(buf + 36);
		if (s->extra_size > QCOW2_MAX_SNAP_EXTRA) {
			snprintf(err, errlen, "snapshot %u: extra data too large (%u bytes)", i, s->extra_size);
			r = -EINVAL;
			break;
		}
		/* Entries are padded to 8 bytes, but QEMU writes the last one
		 * unpadded at the end of the file: check the bytes used. */
		uint64_t used = 40 + (uint64_t)s->extra_size + id_len + name_len;
		uint64_t total = (used + 7) & ~7ull;
		if (pos + used > q->file_size || pos + total - base > QCOW2_MAX_SNAPTABLE) {
			snprintf(err, errlen, "snapshot table runs past the end of the file");
			r = -EINVAL;
			break;
		}
		size_t rest = (size_t)(s->extra_size + id_len + name_len);
		r = img_pread(q->fd, q->direct, buf + 40, rest, pos + 40);
		if (r < 0)
			break;
		const uint8_t *x = buf + 40;
		s->extra = malloc(s->extra_size ? s->extra_size : 1);
		s->id = dup_bytes(x + s->extra_size, id_len);
		s->name = dup_bytes(x + s->extra_size + id_len, name_len);
		if (!s->extra || !s->id || !s->name) {
			r = -ENOMEM;
			break;
		}
		memcpy(s->extra, x, s->extra_size);
		s->disk_size = q->size;
		s->icount = -1;
		if (s->extra_size >= 8)
			s->vm_state_size = q_be64(x);
		if (s->extra_size >= 16)
			s->disk_size = q_be64(x + 8);
		if (s->extra_size >= 24)
			s->icount = (int64_t)q_be64(x + 16);
		if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES ||
		    (s->l1_size && (s->l1_offset % q->cluster_size || s->l1_offset == 0 ||
				    s->l1_offset > q->file_size ||
				    (uint64_t)s->l1_size * 8 > q->file_size - s->l1_offset))) {
			snprintf(err, errlen, "snapshot %u: invalid L1 table (offset %llu, %u entries)", i,
				 (unsigned long long)s->l1_offset, s->l1_size);
			r = -EINVAL;
			break;
		}
		pos += total;
	}
	free(buf);
	if (r < 0)
		return r;
	q->snap_table_bytes = pos - base;
	return 0;
}

/* Writes `snaps` as the new snapshot table and switches the header to it. */
static int write_snap_table(struct qcow2 *q, struct qcow2_snap *snaps, uint32_t n)
{
	uint64_t size = 0;
	for (uint32_t i = 0; i < n; i++)
		size += (40 + snaps[i].extra_size + strlen(snaps[i].id) + strlen(snaps[i].name) + 7) & ~7ull;
	if (size > QCOW2_MAX_SNAPTABLE)
		return -EFBIG;
	uint32_t cs = q->cluster_size;
	uint64_t alloc = (size + cs - 1) / cs * cs;
	uint8_t *buf = calloc(1, alloc ? alloc : 1);
	if (!buf)
		return -ENOMEM;
	uint64_t pos = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct qcow2_snap *s = &snaps[i];
		uint8_t *p = buf + pos;
		size_t il = strlen(s->id), nl = strlen(s->name);
		q_put64(p, s->l1_offset);
		q_put32(p + 8, s->l1_size);
		q_put16(p + 12, (uint16_t)il);
		q_put16(p + 14, (uint16_t)nl);
		q_put32(p + 16, s->date_sec);
		q_put32(p + 20, s->date_nsec);
		q_put64(p + 24, s->vm_clock_nsec);
		q_put32(p + 32, s->vm_state_size > UINT32_MAX ? 0 : (uint32_t)s->vm_state_size);
		q_put32(p + 36, s->extra_size);
		memcpy(p + 40, s->extra, s->extra_size);
		memcpy(p + 40 + s->extra_size, s->id, il);
		memcpy(p + 40 + s->extra_size + il, s->name, nl);
		pos += (40 + s->extra_size + il + nl + 7) & ~7ull;
	}
	uint64_t off = 0;
	int r = 0;
	if (n) {
		r = qcow2_alloc_clusters(q, alloc / cs, &off);
		if (r == 0)
			r = img_pwrite(q->fd, q->direct, buf, alloc, off);
		if (r == 0 && off + alloc > q->eof)
			q->eof = off + alloc;
	}
	free(buf);
	/* The table's refcounts, and all else, durable before the header. */
	if (r == 0)
		r = qcow2_flush(q);
	if (r < 0)
		return r;
	uint8_t hb[12];
	q_put32(hb, n);
	q_put64(hb + 4, off);
	r = img_pwrite(q->fd, q->direct, hb, 12, 60);
	if (r == 0)
		r = qcow2_sync(q);
	if (r < 0)
		return r;
	uint64_t old_off = q->snapshots_offset, old_bytes = q->snap_table_bytes;
	q->snapshots_offset = off;
	q->snap_table_bytes = size;
	if (old_off && old_bytes)
		r = qcow2_free_now(q, old_off, old_bytes);
	return r;
}

int qcow2_l1_refcounts(struct qcow2 *q, const uint64_t *l1, uint32_t l1_size, int delta)
{
	for (uint32_t i = 0; i < l1_size; i++) {
		uint64_t l2off;
		int r = qcow2_l1e_check(q, l1[i], &l2off);
		if (r < 0)
			return r;
		if (!l2off)
			continue;
		for (uint64_t j = 0; j < q->l2_entries; j++) {
			uint8_t *t;
			r = qcow2_l2_load(q, l2off, &t);
			if (r < 0)
				return r;
			uint64_t bm, e = qcow2_l2e_get(q, t, j, &bm);
			if (e & QCOW2_OFLAG_COMPRESSED) {
				uint64_t coff, clen;
				qcow2_compressed_range(q, e, &coff, &clen);
				uint64_t c0 = coff >> q->cluster_bits, c1 = (coff + clen - 1) >> q->cluster_bits;
				for (uint64_t c = c0; c <= c1; c++) {
					r = qcow2_update_refcount(q, c, delta);
					if (r < 0)
						return r;
				}
			} else if (e & QCOW2_OFFSET_MASK) {
				uint64_t host = e & QCOW2_OFFSET_MASK;
				if (host % q->cluster_size)
					return -EIO;
				r = qcow2_update_refcount(q, host >> q->cluster_bits, delta);
				if (r < 0)
					return r;
			}
		}
		/* The table itself last: a decrement may free it. */
		r = qcow2_update_refcount(q, l2off >> q->cluster_bits, delta);
		if (r < 0)
			return r;
	}
	return 0;
}

static int find_snap(const struct qcow2 *q, const char *id_or_name)
{
	for (uint32_t i = 0; i < q->nb_snapshots; i++)
		if (strcmp(q->snaps[i].id, id_or_name) == 0)
			return (int)i;
	for (uint32_t i = 0; i < q->nb_snapshots; i++)
		if (strcmp(q->snaps[i].name, id_or_name) == 0)
			return (int)i;
	return -1;
}

static struct qcow2 *writable_q(struct image *img, char *err, size_t errlen)
{
	struct qcow2 *q = image_qcow2(img);
	if (!q) {
		snprintf(err, errlen, "internal snapshots need a qcow2 image");
		return NULL;
	}
	if (q->readonly) {
		snprintf(err, errlen, "image '%s' is read-only", q->path);
		return NULL;
	}
	return q;
}

int qcow2_snapshot_list(struct image *img, struct qcow2_snapshot **out, unsigned *count)
{
	struct qcow2 *q = image_qcow2(img);
	*out = NULL;
	*count = 0;
	if (!q)
		return -ENOTSUP;
	if (!q->nb_snapshots)
		return 0;
	struct qcow2_snapshot *l = calloc(q->nb_snapshots, sizeof(*l));
	if (!l)
		return -ENOMEM;
	for (uint32_t i = 0; i < q->nb_snapshots; i++) {
		const struct qcow2_snap *s = &q->snaps[i];
		l[i].id = strdup(s->id);
		l[i].name = strdup(s->name);
		if (!l[i].id || !l[i].name) {
			qcow2_snapshot_list_free(l, q->nb_snapshots);
			return -ENOMEM;
		}
		l[i].vm_state_size = s->vm_state_size;
		l[i].date_sec = s->date_sec;
		l[i].date_nsec = s->date_nsec;
		l[i].vm_clock_nsec = s->vm_clock_nsec;
		l[i].disk_size = s->disk_size;
		l[i].icount = s->icount;
		l[i].l1_table_offset = s->l1_offset;
		l[i].l1_size = s->l1_size;
	}
	*out = l;
	*count = q->nb_snapshots;
	return 0;
}

void qcow2_snapshot_list_free(struct qcow2_snapshot *s, unsigned count)
{
	for (unsigned i = 0; s && i < count; i++) {
		free(s[i].id);
		free(s[i].name);
	}
	free(s);
}

/* Makes OFLAG_COPIED match the (durable) refcounts. */
static int refresh_copied(struct qcow2 *q)
{
	int r = qcow2_flush(q);
	if (r < 0)
		return r;
	int64_t fixed = 0, errors = 0;
	r = qcow2_fix_copied(q, &fixed, &errors, true, NULL, NULL);
	if (r == 0)
		r = qcow2_flush(q);
	return r;
}

int qcow2_snapshot_create(struct image *img, const char *name, char *err, size_t errlen)
{
	struct qcow2 *q = writable_q(img, err, errlen);
	if (!q)
		return image_qcow2(img) ? -EROFS : -ENOTSUP;
	if (!name || !*name || strlen(name) > 65535) {
		snprintf(err, errlen, "invalid snapshot name");
		return -EINVAL;
	}
	if (q->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
		snprintf(err, errlen, "too many snapshots");
		return -EFBIG;
	}
	for (uint32_t i = 0; i < q->nb_snapshots; i++) {
		if (strcmp(q->snaps[i].name, name) == 0) {
			snprintf(err, errlen, "a snapshot named '%s' already exists", name);
			return -EEXIST;
		}
	}
	unsigned long max_id = 0;
	for (uint32_t i = 0; i < q->nb_snapshots; i++) {
		char *end;
		unsigned long v = strtoul(q->snaps[i].id, &end, 10);
		if (!*end && v > max_id)
			max_id = v;
	}
	int r = qcow2_flush(q);
	if (r < 0)
		goto fail;
	/* Everything the active L1 reaches gains a reference. */
	r = qcow2_l1_refcounts(q, q->l1, q->l1_size, +1);
	if (r < 0)
		goto fail;
	int64_t fixed = 0, errors = 0;
	r = qcow2_fix_copied(q, &fixed, &errors, true, NULL, NULL);
	if (r < 0)
		goto fail;
	uint64_t l1_off = 0;
	uint64_t l1_bytes = (uint64_t)q->l1_size * 8;
	uint32_t cs = q->cluster_size;
	uint64_t l1_alloc = (l1_bytes + cs - 1) / cs * cs;
	if (l1_bytes) {
		r = qcow2_alloc_clusters(q, l1_alloc / cs, &l1_off);
		if (r < 0)
			goto fail;
	}
	r = qcow2_flush(q);
	if (r < 0)
		goto fail;
	if (l1_bytes) {
		uint8_t *buf = calloc(1, l1_alloc);
		if (!buf) {
			r = -ENOMEM;
			goto fail;
		}
		for (uint32_t i = 0; i < q->l1_size; i++)
			q_put64(buf + (size_t)i * 8, q->l1[i] & ~QCOW2_OFLAG_COPIED);
		r = img_pwrite(q->fd, q->direct, buf, l1_alloc, l1_off);
		free(buf);
		if (r == 0 && l1_off + l1_alloc > q->eof)
			q->eof = l1_off + l1_alloc;
		if (r == 0)
			r = qcow2_sync(q);
		if (r < 0)
			goto fail;
	}
	struct qcow2_snap *ns = calloc(q->nb_snapshots + 1, sizeof(*ns));
	if (!ns) {
		r = -ENOMEM;
		goto fail;
	}
	if (q->nb_snapshots)
		memcpy(ns, q->snaps, q->nb_snapshots * sizeof(*ns));
	struct qcow2_snap *s = &ns[q->nb_snapshots];
	char idbuf[32];
	snprintf(idbuf, sizeof(idbuf), "%lu", max_id + 1);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	s->l1_offset = l1_off;
	s->l1_size = q->l1_size;
	s->id = strdup(idbuf);
	s->name = strdup(name);
	s->date_sec = (uint32_t)ts.tv_sec;
	s->date_nsec = (uint32_t)ts.tv_nsec;
	s->disk_size = q->size;
	s->icount = -1;
	s->extra_size = 24;
	s->extra = calloc(1, 24);
	if (!s->id || !s->name || !s->extra) {
		snap_clear(s);
		free(ns);
		r = -ENOMEM;
		goto fail;
	}
	q_put64(s->extra, 0);
	q_put64(s->extra + 8, q->size);
	q_put64(s->extra + 16, UINT64_MAX);
	r = write_snap_table(q, ns, q->nb_snapshots + 1);
	if (r < 0) {
		snap_clear(s);
		free(ns);
		goto fail;
	}
	free(q->snaps);
	q->snaps = ns;
	q->nb_snapshots++;
	r = qcow2_flush(q);
	if (r < 0)
		goto fail;
	return 0;
fail:
	snprintf(err, errlen, "creating snapshot '%s' in '%s': %s", name, q->path, strerror(-r));
	return r;
}

/* The writable image and the index of snapshot `id_or_name` in it.
 * Returns the index, or -errno with the reason in `err`. */
static int snap_lookup(struct image *img, const char *id_or_name, struct qcow2 **qp, char *err, size_t errlen)
{
	struct qcow2 *q = writable_q(img, err, errlen);
	if (!q)
		return image_qcow2(img) ? -EROFS : -ENOTSUP;
	int i = find_snap(q, id_or_name);
	if (i < 0) {
		snprintf(err, errlen, "no snapshot '%s' in '%s'", id_or_name, q->path);
		return -ENOENT;
	}
	*qp = q;
	return i;
}

/* Drops the references an L1 table (`l1`, `size` entries, stored at
 * `off`) holds and frees the table's own clusters. Returns 0 or -errno. */
static int drop_l1(struct qcow2 *q, const uint64_t *l1, uint32_t size, uint64_t off)
{
	int r = qcow2_l1_refcounts(q, l1, size, -1);
	if (r == 0 && size)
		r = qcow2_free_now(q, off, (uint64_t)size * 8);
	return r;
}

int qcow2_snapshot_apply(struct image *img, const char *id_or_name, char *err, size_t errlen)
{
	struct qcow2 *q;
	int i = snap_lookup(img, id_or_name, &q, err, errlen);
	if (i < 0)
		return i;
	struct qcow2_snap *s = &q->snaps[i];
	if (s->disk_size != q->size) {
		snprintf(err, errlen, "snapshot '%s' has a different disk size (%llu, image %llu): not supported",
			 id_or_name, (unsigned long long)s->disk_size, (unsigned long long)q->size);
		return -ENOTSUP;
	}
	uint64_t *sl1 = NULL;
	int r = qcow2_load_table(q, s->l1_offset, s->l1_size, &sl1);
	if (r < 0)
		goto fail;
	r = qcow2_flush(q);
	if (r < 0)
		goto fail;
	r = qcow2_l1_refcounts(q, sl1, s->l1_size, +1);
	if (r < 0)
		goto fail;
	uint64_t need = qcow2_l1_needed(q, q->size);
	uint32_t nsize = s->l1_size > need ? s->l1_size : (uint32_t)need;
	uint32_t cs = q->cluster_size;
	uint64_t bytes = ((uint64_t)nsize * 8 + cs - 1) / cs * cs;
	uint64_t *nl1 = NULL;
	if (posix_memalign((void **)&nl1, 4096, bytes ? bytes : 8)) {
		r = -ENOMEM;
		goto fail;
	}
	memset(nl1, 0, bytes ? bytes : 8);
	for (uint32_t k = 0; k < s->l1_size; k++)
		nl1[k] = sl1[k] & ~QCOW2_OFLAG_COPIED;
	uint64_t noff = 0;
	if (bytes) {
		r = qcow2_alloc_clusters(q, bytes / cs, &noff);
		if (r < 0) {
			free(nl1);
			goto fail;
		}
		uint8_t *buf = calloc(1, bytes);
		if (!buf) {
			free(nl1);
			r = -ENOMEM;
			goto fail;
		}
		for (uint64_t k = 0; k < bytes / 8; k++)
			q_put64(buf + k * 8, nl1[k]);
		r = img_pwrite(q->fd, q->direct, buf, bytes, noff);
		free(buf);
		if (r == 0 && noff + bytes > q->eof)
			q->eof = noff + bytes;
	}
	if (r == 0)
		r = qcow2_flush(q);
	if (r < 0) {
		free(nl1);
		goto fail;
	}
	uint8_t hb[12];
	q_put32(hb, nsize);
	q_put64(hb + 4, noff);
	r = img_pwrite(q->fd, q->direct, hb, 12, 36);
	if (r == 0)
		r = qcow2_sync(q);
	if (r < 0) {
		free(nl1);
		goto fail;
	}
	uint64_t *old = q->l1;
	uint32_t old_size = q->l1_size;
	uint64_t old_off = q->l1_offset;
	q->l1 = nl1;
	q->l1_size = nsize;
	q->l1_offset = noff;
	q->l1_dirty_lo = UINT64_MAX;
	q->l1_dirty_hi = 0;
	r = drop_l1(q, old, old_size, old_off);
	free(old);
	if (r == 0)
		r = refresh_copied(q);
	if (r < 0)
		goto fail;
	free(sl1);
	return 0;
fail:
	free(sl1);
	snprintf(err, errlen, "applying snapshot '%s' to '%s': %s", id_or_name, q->path, strerror(-r));
	return r;
}

int qcow2_snapshot_delete(struct image *img, const char *id_or_name, char *err, size_t errlen)
{
	struct qcow2 *q;
	int i = snap_lookup(img, id_or_name, &q, err, errlen);
	if (i < 0)
		return i;
	struct qcow2_snap victim = q->snaps[i];
	uint64_t *sl1 = NULL;
	int r = qcow2_load_table(q, victim.l1_offset, victim.l1_size, &sl1);
	if (r < 0)
		goto fail;
	r = qcow2_flush(q);
	if (r < 0)
		goto fail;
	uint32_t n = q->nb_snapshots - 1;
	struct qcow2_snap *ns = calloc(n ? n : 1, sizeof(*ns));
	if (!ns) {
		r = -ENOMEM;
		goto fail;
	}
	for (uint32_t k = 0, j = 0; k < q->nb_snapshots; k++)
		if ((int)k != i)
			ns[j++] = q->snaps[k];
	r = write_snap_table(q, ns, n);
	if (r < 0) {
		free(ns);
		goto fail;
	}
	free(q->snaps);
	q->snaps = ns;
	q->nb_snapshots = n;
	r = drop_l1(q, sl1, victim.l1_size, victim.l1_offset);
	snap_clear(&victim);
	if (r == 0)
		r = refresh_copied(q);
	if (r < 0)
		goto fail;
	free(sl1);
	return 0;
fail:
	free(sl1);
	snprintf(err, errlen, "deleting snapshot '%s' from '%s': %s", id_or_name, q->path, strerror(-r));
	return r;
}
