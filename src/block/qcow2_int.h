/* qcow2 internals, shared by src/block/qcow2*.c and image.c only.
 *
 * The core (qcow2.c) works on one file descriptor with synchronous
 * pread/pwrite. It keeps the L1 table and the refcount table in memory,
 * and L2 tables and refcount blocks in two write-back caches.
 *
 * Crash consistency (every SIGKILL leaves at most leaked clusters):
 *  - a cluster's refcount is raised (in the refcount cache) before
 *    anything points at it, and qcow2_flush() writes dirty refcount blocks
 *    and fdatasyncs before it writes any L2 table; an L2 table evicted
 *    from its cache early does the same first;
 *  - data is written (pwrite) before the L2 entry pointing at it, and the
 *    fdatasync above covers it too;
 *  - new L2 tables are written and synced before the L1 entry that points
 *    at them is written;
 *  - freeing never decrements a refcount right away: the decrement waits
 *    in q->pend until the L2/L1 change that dropped the reference is
 *    durable (end of the next flush), so a freed cluster cannot be reused
 *    while an on-disk table still points at it;
 *  - new refcount blocks and refcount tables are written and synced before
 *    the table entry / header field that points at them.
 * With lazy_refcounts the dirty bit is set (and synced) before the first
 * change and refcount blocks are written without the separate sync; an
 * image opened read-write with the dirty bit gets its refcounts rebuilt. */
#ifndef KESTREL_QCOW2_INT_H
#define KESTREL_QCOW2_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block/qcow2.h"

#define QCOW2_MAGIC 0x514649fbu

#define QCOW2_INCOMPAT_DIRTY    (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT  (1ull << 1)
#define QCOW2_INCOMPAT_DATAFILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESS (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2    (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN    0x1full
#define QCOW2_COMPAT_LAZY       (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_RAWDATA (1ull << 1)

#define QCOW2_EXT_END         0x00000000u
#define QCOW2_EXT_BACKING_FMT 0xe2792acau
#define QCOW2_EXT_FEATURES    0x6803f857u
#define QCOW2_EXT_BITMAPS     0x23852875u
#define QCOW2_EXT_CRYPTO      0x0537be77u
#define QCOW2_EXT_DATAFILE    0x44415441u

#define QCOW2_OFLAG_COPIED     (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO       (1ull << 0)
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ull
#define QCOW2_L1_RESERVED      0x7f000000000001ffull
#define QCOW2_L2_RESERVED      0x3f000000000001feull /* standard; ext L2 adds bit 0 */
#define QCOW2_RT_RESERVED      0x00000000000001ffull

#define QCOW2_SUBCLUSTERS 32
#define QCOW2_EXT_ALLOC_ALL 0x00000000ffffffffull
#define QCOW2_EXT_ZERO_ALL  0xffffffff00000000ull

/* Implementation limits (hostile images are refused beyond them). */
#define QCOW2_MAX_L1_BYTES       (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (32u << 20)
#define QCOW2_MAX_SNAPSHOTS      65536u
#define QCOW2_MAX_SNAPTABLE      (64u << 20)
#define QCOW2_MAX_SNAP_EXTRA     1024u
#define QCOW2_MAX_BACKING_NAME   1023u
#define QCOW2_MAX_VSIZE          (1ull << 62)
#define QCOW2_MAX_HOST_OFFSET    (1ull << 56)

/* Open flags (qcow2_open). */
#define QCOW2_OPEN_CHECK 0x1    /* allow corrupt bit read-write, no repair on open */

struct qcache {
	unsigned n;                 /* slots */
	uint32_t size;              /* bytes per table */
	uint8_t *mem;
	uint64_t *off;              /* 0 = empty slot */
	uint64_t *lru;
	uint8_t *dirty;
	int *hnext;
	int *hhead;
	unsigned hmask;
	uint64_t tick;
	bool is_l2;
	uint64_t hits, misses;
};

struct qcow2_ext {                 /* a header extension kept verbatim */
	uint32_t type, len;
	uint8_t *data;
};

struct qcow2_snap {
	uint64_t l1_offset;
	uint32_t l1_size;
	char *id, *name;
	uint32_t date_sec, date_nsec;
	uint64_t vm_clock_nsec;
	uint64_t vm_state_size;
	uint64_t disk_size;
	int64_t icount;
	uint32_t extra_size;        /* as read/written */
	uint8_t *extra;             /* verbatim extra data (extra_size bytes) */
};

struct qcow2_pend {                /* a deferred refcount decrement */
	uint64_t cluster;
	uint64_t n;
};

/* Reads [off, off+len) of the backing chain (zeros beyond its end). */
typedef int (*qcow2_backing_read_fn)(void *opaque, uint64_t off, void *buf, size_t len);

struct qcow2 {
	int fd;
	bool readonly;
	bool direct;                /* fd is O_DIRECT: bounce misaligned I/O */
	char path[4096];

	uint64_t file_size;         /* bytes in the file, or allocated so far */
	uint64_t eof;               /* bytes actually in the file */
	bool is_bdev;

	/* header */
	uint32_t version;
	uint32_t cluster_bits;
	uint32_t cluster_size;
	uint64_t size;              /* virtual */
	uint32_t l1_size;
	uint64_t l1_offset;
	uint64_t rt_offset;
	uint32_t rt_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t incompat, compat, autoclear;
	uint32_t refcount_order;
	uint32_t header_length;
	uint8_t compression_type;   /* 0 deflate, 1 zstd */
	uint8_t *header_tail;       /* header bytes 105..header_length-1 kept verbatim */
	uint32_t header_tail_len;
	char backing_file[QCOW2_MAX_BACKING_NAME + 1];
	char backing_fmt[32];
	struct qcow2_ext *exts;     /* unknown/kept extensions, in order */
	unsigned nr_exts;
	char (*feature_names)[3][64]; /* [bit][type] names from the feature table */

	/* geometry */
	bool ext_l2;
	uint32_t l2_entry_size;     /* 8 or 16 */
	uint32_t l2_bits;           /* log2 entries per L2 table */
	uint64_t l2_entries;
	uint32_t sc_bits;           /* log2 subcluster size (ext L2) */
	uint32_t refcount_bits;
	uint64_t rb_entries;        /* refcounts per block */
	uint32_t rb_bits;           /* log2 rb_entries */
	uint64_t refcount_max;
	uint64_t rt_entries;        /* reftable entries (rt_clusters * cs / 8) */
	uint32_t csize_shift;       /* compressed descriptor: bits of offset */
	uint64_t csize_mask;

	uint64_t *l1;               /* host order */
	uint64_t l1_dirty_lo, l1_dirty_hi; /* dirty index range [lo, hi) */
	uint64_t *reftable;         /* host order, rt_entries */

	struct qcache l2c, rbc;

	uint64_t free_hint;         /* lowest cluster index that may be free */
	struct qcow2_pend *pend;
	size_t npend, pend_cap;
	size_t npend_ready;         /* the first npend_ready are durable: may be applied */
	bool defer_apply;           /* flush leaves applying to qcow2_apply_ready() (VMM node) */

	uint64_t comp_cluster;      /* cluster holding compressed data being packed (0 = none) */
	uint32_t comp_used;         /* bytes used in it */

	struct qcow2_snap *snaps;   /* nb_snapshots entries */
	uint64_t snap_table_bytes;  /* size of the snapshot table on disk */

	bool lazy_dirty_set;        /* we set the dirty bit (lazy refcounts) */
	bool metadata_changed;      /* something beyond data was modified since the last flush */

	/* decompression */
	void *zin;                  /* z_stream for inflate */
	void *zout;                 /* z_stream for deflate */
	void *zstd_d, *zstd_c;
	uint64_t dc_desc;           /* descriptor of the cluster in dc_buf (0 = none) */
	uint8_t *dc_buf;
	uint8_t *cbuf;              /* cluster-sized scratch */
	uint8_t *cbuf2;

	/* backing chain (set by the owner after qcow2_open) */
	qcow2_backing_read_fn backing_read;
	void *backing_opaque;
	bool has_backing;
	uint64_t backing_size;
};

/* ---- file I/O helpers (image.c) --------------------------------------- */

/* Whole-buffer pread/pwrite; reads past EOF give zeros. With `direct`,
 * misaligned requests go through an aligned bounce buffer (writes
 * read-modify-write the edges). Return 0 or -errno. */
int img_pread(int fd, bool direct, void *buf, size_t len, uint64_t off);
int img_pwrite(int fd, bool direct, const void *buf, size_t len, uint64_t off);

/* ---- core (qcow2.c) --------------------------------------------------- */

struct qcow2 *qcow2_open(int fd, const char *path, bool readonly, bool direct, unsigned flags,
			 char *err, size_t errlen);
/* Flushes (when writable), clears the dirty bit we set, frees. Returns
 * the flush result. */
int qcow2_close(struct qcow2 *q);
int qcow2_flush(struct qcow2 *q);
/* Reads a table of `entries` big-endian u64s at `off` into a malloc'd,
 * 4 KiB-aligned, host-endian array (*out, freed with free()). Returns 0
 * or -errno. */
int qcow2_load_table(struct qcow2 *q, uint64_t off, uint64_t entries, uint64_t **out);
/* Applies the deferred frees made safe by the last flush. */
int qcow2_apply_ready(struct qcow2 *q);
int qcow2_read(struct qcow2 *q, uint64_t off, void *buf, size_t len);
int qcow2_write(struct qcow2 *q, uint64_t off, const void *buf, size_t len);
int qcow2_write_compressed(struct qcow2 *q, uint64_t off, const void *buf, size_t len);
int qcow2_write_zeroes(struct qcow2 *q, uint64_t off, uint64_t len, bool may_unmap);
int qcow2_discard(struct qcow2 *q, uint64_t off, uint64_t len);
/* Status of [off, off+len) in this layer: IMAGE_BS_* flags; unallocated
 * ranges report 0 (caller consults the backing). */
int qcow2_block_status(struct qcow2 *q, uint64_t off, uint64_t len, uint64_t *pnum,
		       unsigned *flags, uint64_t *host_off);

/* Mapping for the VMM node: the run starting at `off` (at most `len`
 * bytes, within one L2 table) and how to access it. */
enum qcow2_type { QT_UNALLOC, QT_ZERO, QT_DATA, QT_COMPRESSED };
struct qcow2_map {
	enum qcow2_type type;
	uint64_t len;
	uint64_t host;              /* QT_DATA: file offset of `off` */
	uint64_t desc;              /* QT_COMPRESSED: the L2 entry */
	bool writable;              /* QT_DATA: refcount 1, may be written in place */
};
int qcow2_map(struct qcow2 *q, uint64_t off, uint64_t len, struct qcow2_map *m);

/* Header writes. */
int qcow2_build_header(const struct qcow2 *q, uint8_t *h); /* cluster-sized h; used length or -ENOSPC */
int qcow2_write_header(struct qcow2 *q);             /* whole header cluster */
int qcow2_update_incompat(struct qcow2 *q, uint64_t incompat);
int qcow2_sync(struct qcow2 *q);

/* Refcounts and allocation. */
int qcow2_get_refcount(struct qcow2 *q, uint64_t cluster, uint64_t *rc);
int qcow2_update_refcount(struct qcow2 *q, uint64_t cluster, int64_t delta);
/* Sets a refcount in an existing block (check/repair). */
int qcow2_set_refcount(struct qcow2 *q, uint64_t cluster, uint64_t v);
int qcow2_alloc_clusters(struct qcow2 *q, uint64_t n, uint64_t *off);
/* Defers a decrement of n clusters starting at cluster index `c`. */
int qcow2_free_later(struct qcow2 *q, uint64_t c, uint64_t n);
int qcow2_free_now(struct qcow2 *q, uint64_t off, uint64_t bytes);
/* Drops refcount-cache and L2-cache state (after a rebuild). */
void qcow2_cache_reset(struct qcow2 *q);
int qcow2_cache_flush_all(struct qcow2 *q);

/* L2 access. */
int qcow2_l2_load(struct qcow2 *q, uint64_t l2_off, uint8_t **table);
uint64_t qcow2_l2e_get(const struct qcow2 *q, const uint8_t *t, uint64_t i, uint64_t *bitmap);
int qcow2_l2_mark_dirty(struct qcow2 *q, uint64_t l2_off);
void qcow2_l2e_set(const struct qcow2 *q, uint8_t *t, uint64_t i, uint64_t e, uint64_t bitmap);
/* Validates an L1 entry read from disk; returns the L2 offset or 0. */
int qcow2_l1e_check(const struct qcow2 *q, uint64_t l1e, uint64_t *l2_off);
/* Host clusters covered by a compressed descriptor. */
void qcow2_compressed_range(const struct qcow2 *q, uint64_t l2e, uint64_t *off, uint64_t *len);

/* L1 resizing (grows the active L1 to at least `entries`). */
int qcow2_grow_l1(struct qcow2 *q, uint64_t entries);
uint64_t qcow2_l1_needed(const struct qcow2 *q, uint64_t size);
int qcow2_write_l1(struct qcow2 *q);

/* Sets/clears OFLAG_COPIED in the active L1/L2 from the refcounts. */
int qcow2_fix_copied(struct qcow2 *q, int64_t *fixed, int64_t *errors, bool fix,
		     void (*report)(void *, const char *), void *opaque);

/* Snapshots (qcow2_snap.c). */
int qcow2_snap_parse(struct qcow2 *q, char *err, size_t errlen);
void qcow2_snap_free_all(struct qcow2 *q);
/* Walks an L1 table's L2s and data clusters, adding `delta` to each. */
int qcow2_l1_refcounts(struct qcow2 *q, const uint64_t *l1, uint32_t l1_size, int delta);

/* Check (qcow2_check.c). */
int qcow2_do_check(struct qcow2 *q, int fix, struct qcow2_check_result *r);

/* Creation helpers (qcow2_create.c). */
uint64_t qcow2_ceil_div(uint64_t a, uint64_t b);
int qcow2_resize(struct qcow2 *q, uint64_t new_size, bool allow_shrink);
/* Allocates every guest cluster (preallocation=metadata). */
int qcow2_preallocate(struct qcow2 *q);
/* Entry-level deallocation of whole clusters in [off, off+len) (shrink). */
int qcow2_deallocate(struct qcow2 *q, uint64_t off, uint64_t len);

/* image.c */
struct image;
struct qcow2 *image_qcow2(struct image *img);
/* qcow2_backing_read_fn over a struct image: zeros past its end. */
int image_backing_read(void *opaque, uint64_t off, void *buf, size_t len);
/* A backing file name as stored, resolved against the image's path. */
int image_resolve_backing(const char *image_path, const char *name, char *out, size_t outlen);

/* Byte order. */
static inline uint64_t q_be64(const void *p)
{
	const uint8_t *b = p;
	return (uint64_t)b[0] << 56 | (uint64_t)b[1] << 48 | (uint64_t)b[2] << 40 |
	       (uint64_t)b[3] << 32 | (uint64_t)b[4] << 24 | (uint64_t)b[5] << 16 |
	       (uint64_t)b[6] << 8 | b[7];
}
static inline uint32_t q_be32(const void *p)
{
	const uint8_t *b = p;
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}
static inline uint16_t q_be16(const void *p)
{
	const uint8_t *b = p;
	return (uint16_t)(b[0] << 8 | b[1]);
}
static inline void q_put64(void *p, uint64_t v)
{
	uint8_t *b = p;
	for (int i = 7; i >= 0; i--, v >>= 8)
		b[i] = (uint8_t)v;
}
static inline void q_put32(void *p, uint32_t v)
{
	uint8_t *b = p;
	for (int i = 3; i >= 0; i--, v >>= 8)
		b[i] = (uint8_t)v;
}
static inline void q_put16(void *p, uint16_t v)
{
	uint8_t *b = p;
	b[0] = (uint8_t)(v >> 8);
	b[1] = (uint8_t)v;
}

/* Refcount packing within a block (refcount_order 0..6). */
uint64_t qcow2_rc_get(const uint8_t *block, uint64_t i, unsigned order);
void qcow2_rc_set(uint8_t *block, uint64_t i, unsigned order, uint64_t v);

#endif
