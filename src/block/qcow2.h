/* qcow2: creation, consistency check/repair, internal snapshots, backing
 * file changes and size estimates, on top of struct image (image.h).
 * Everything here is synchronous and, like struct image, not thread-safe.
 *
 * Errors: functions returning int give 0 or -errno; those taking
 * `err`/`errlen` also leave a one-line reason there (naming the file where
 * there is one). Functions on a struct image that is not qcow2 return
 * -ENOTSUP. Operations that change the image need it opened read-write. */
#ifndef KESTREL_QCOW2_H
#define KESTREL_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct image;
struct blk_file;
struct blk_node;
struct blk_format_ops;

/* ---- creation ------------------------------------------------------- */

struct qcow2_create_opts {
	uint64_t size;              /* virtual size in bytes (rounded up to 512) */
	uint32_t cluster_size;      /* power of two, 512..2M; 0 = 65536 */
	const char *compat;         /* "0.10" (v2) or "1.1" (v3); NULL = "1.1" ("v2"/"v3" also accepted) */
	const char *backing_file;   /* NULL = none; stored as given (relative to the image's directory) */
	const char *backing_fmt;    /* "raw"/"qcow2"; NULL = none recorded (only with backing_file) */
	const char *compression_type; /* "zlib" or "zstd"; NULL = zlib; zstd needs compat 1.1 */
	const char *preallocation;  /* "off", "metadata", "falloc", "full"; NULL = off */
	bool lazy_refcounts;        /* compat 1.1 only */
	unsigned refcount_bits;     /* 1,2,4,...,64; 0 = 16; v2 requires 16 */
	bool extended_l2;           /* compat 1.1 and cluster_size >= 16K */
	/* When size is 0 and backing_file is set, the size is taken from the
	 * backing file (opened read-only; backing_fmt or probing). */
};

/* Creates (truncates) `path` as an empty qcow2 image. */
int qcow2_create(const char *path, const struct qcow2_create_opts *o, char *err, size_t errlen);

/* Creates (truncates) `path` as a raw image of `size` bytes; preallocation
 * "off" (sparse), "falloc" or "full" (NULL = off). */
int image_create_raw(const char *path, uint64_t size, const char *preallocation, char *err,
		     size_t errlen);

/* ---- probing -------------------------------------------------------- */

/* True when the first bytes of a file look like qcow2 (magic + version 2/3). */
bool qcow2_probe(const void *buf, size_t len);

/* ---- check / repair ------------------------------------------------- */

#define QCOW2_FIX_LEAKS 1
#define QCOW2_FIX_ALL   2

struct qcow2_check_result {
	/* Input (optional): called once per problem found, with a line like
	 * qemu-img check prints ("Leaked cluster 5 refcount=1 reference=0",
	 * "ERROR cluster 7 refcount=0 reference=1", ...), without newline. */
	void (*report)(void *opaque, const char *line);
	void *opaque;

	/* Output. After a repair the counts describe the image as it is
	 * afterwards (like qemu-img check -r: what is left), and the *_fixed
	 * fields what was repaired. */
	int64_t corruptions;
	int64_t leaks;
	int64_t check_errors;       /* internal errors (I/O, out of memory) during the check */
	int64_t corruptions_fixed;
	int64_t leaks_fixed;
	uint64_t image_end_offset;  /* end of the last used cluster */
	uint64_t total_clusters;    /* guest clusters (virtual size / cluster size, rounded up) */
	uint64_t allocated_clusters;
	uint64_t fragmented_clusters;
	uint64_t compressed_clusters;
};

/* Checks the image's metadata; with `fix` (image opened read-write)
 * repairs leaks (QCOW2_FIX_LEAKS) or also corruptions of refcounts
 * (QCOW2_FIX_ALL; clears the corrupt bit when nothing is left).
 * Returns 0 when the check ran (look at the counts) or -errno when it
 * could not. A qcow2 image with the corrupt bit can be opened for a
 * repair with image_open_ext(..., IMAGE_OPEN_CHECK, ...) (image_ext.h). */
int qcow2_check(struct image *img, int fix, struct qcow2_check_result *r);

/* ---- internal snapshots --------------------------------------------- */

struct qcow2_snapshot {
	char *id;                   /* unique ID string ("1", "2", ...) */
	char *name;
	uint64_t vm_state_size;
	uint32_t date_sec;
	uint32_t date_nsec;
	uint64_t vm_clock_nsec;
	uint64_t disk_size;         /* virtual size when taken */
	int64_t icount;             /* -1 when not recorded */
	uint64_t l1_table_offset;
	uint32_t l1_size;
};

/* Returns the snapshot table in *out (free with qcow2_snapshot_list_free). */
int qcow2_snapshot_list(struct image *img, struct qcow2_snapshot **out, unsigned *count);
void qcow2_snapshot_list_free(struct qcow2_snapshot *s, unsigned count);
/* Takes a snapshot of the current disk state named `name` (a new numeric
 * ID is assigned; the date is now, vm_clock 0, no VM state). -EEXIST when
 * the name is in use. */
int qcow2_snapshot_create(struct image *img, const char *name, char *err, size_t errlen);
/* Reverts the disk to snapshot `id_or_name` (matched by ID first, then by
 * name). -ENOENT when there is none. */
int qcow2_snapshot_apply(struct image *img, const char *id_or_name, char *err, size_t errlen);
int qcow2_snapshot_delete(struct image *img, const char *id_or_name, char *err, size_t errlen);

/* ---- backing file --------------------------------------------------- */

/* Rewrites the header to name `backing` (NULL or "" = none) with format
 * `fmt` (NULL = no format recorded). Only the header changes: the data is
 * not touched (rebase -u; commit/rebase proper copy data first with
 * image_read/image_write). A chain already opened under `img` is not
 * reopened. */
int qcow2_set_backing(struct image *img, const char *backing, const char *fmt);

/* ---- measure -------------------------------------------------------- */

struct qcow2_measure {
	uint64_t required;          /* bytes a converted image needs */
	uint64_t fully_allocated;   /* bytes with every cluster allocated */
};

/* Like qemu-img measure -O qcow2: sizes for a new image created with `o`
 * (o->size is the virtual size; when `src` is given and o->size is 0, the
 * source's size). With `src`, `required` counts the clusters whose data
 * the source defines (allocated and not zero, whole chain); without, only
 * metadata (and all data for preallocation=falloc/full). */
int qcow2_measure(const struct qcow2_create_opts *o, struct image *src, struct qcow2_measure *out,
		  char *err, size_t errlen);

/* ---- the VMM's block layer (block_int.h) ---------------------------- */

/* A format for block.c's table: `--disk path,format=qcow2`. The node runs
 * metadata work synchronously on the blk thread; see qcow2_node.c. */
extern const struct blk_format_ops blk_format_qcow2;
struct blk_node *qcow2_node_open(struct blk_file *file, char *err, size_t errlen);

#endif
