/* Synchronous image access for `kestrel img` and for format drivers that
 * read their backing files: one interface over raw and qcow2 images, with
 * backing chains. Not thread-safe: an image has one owner at a time.
 * (The VMM's virtio-blk path goes through struct blk, block.h, whose qcow2
 * node is built on these same functions.) */
#ifndef KESTREL_IMAGE_H
#define KESTREL_IMAGE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum image_format { IMAGE_RAW, IMAGE_QCOW2 };

struct image;

struct image_open_opts {
	const char *path;
	const char *format;        /* "raw", "qcow2", or NULL = probe */
	bool readonly;
	bool no_backing;           /* do not open the backing chain (img info -U style, rebase -u) */
	/* Probing without a format must not trust a backing file named by an
	 * untrusted header; set this to allow it (the user asked for it). */
	bool allow_probed_backing;
	bool direct;               /* O_DIRECT */
	bool writethrough;         /* fdatasync after every write */
};

/* Block status of a range, as `qemu-img map` reports it. */
#define IMAGE_BS_DATA       0x1    /* reads come from this image's data (not zeroes) */
#define IMAGE_BS_ZERO       0x2    /* reads as zeroes */
#define IMAGE_BS_ALLOCATED  0x4    /* defined by this layer (not the backing) */
#define IMAGE_BS_COMPRESSED 0x8

struct image_info {
	enum image_format format;
	uint64_t virtual_size;
	uint64_t actual_size;      /* bytes allocated on the host */
	uint32_t cluster_size;     /* qcow2 */
	int qcow2_version;         /* 2 or 3 */
	unsigned refcount_bits;
	bool lazy_refcounts, corrupt, dirty, extended_l2;
	const char *compression_type; /* "zlib" or "zstd" */
	char backing_file[PATH_MAX];
	char backing_format[32];
	unsigned nr_snapshots;
};

/* Opens an image (and, unless no_backing, its backing chain). Returns NULL
 * with a one-line reason naming the file in `err`. */
struct image *image_open(const struct image_open_opts *o, char *err, size_t errlen);
void image_close(struct image *img);

int image_get_info(struct image *img, struct image_info *out);
uint64_t image_size(const struct image *img);
struct image *image_backing(struct image *img);   /* NULL at the end of the chain */

/* Byte-granular I/O; reads of unallocated ranges come from the backing
 * chain or are zeroes. Return 0 or -errno. */
int image_read(struct image *img, uint64_t off, void *buf, size_t len);
int image_write(struct image *img, uint64_t off, const void *buf, size_t len);
/* Writes one whole cluster compressed (qcow2 only; -ENOTSUP otherwise). */
int image_write_compressed(struct image *img, uint64_t off, const void *buf, size_t len);
int image_write_zeroes(struct image *img, uint64_t off, uint64_t len, bool may_unmap);
int image_discard(struct image *img, uint64_t off, uint64_t len);
int image_flush(struct image *img);
/* Status of [off, off+len): fills *flags for the first *pnum bytes, which
 * share it; *host_off is the offset in this layer's file when it has one
 * (else UINT64_MAX). */
int image_block_status(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		       unsigned *flags, uint64_t *host_off);

#endif
