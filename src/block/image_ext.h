/* Extensions to image.h (which is fixed): resizing, opening for a repair,
 * reopening part of a chain read-write. Same conventions as image.h. */
#ifndef KESTREL_IMAGE_EXT_H
#define KESTREL_IMAGE_EXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block/image.h"

/* image_open_ext() flags. */
/* For qemu-img check -r style repairs: opens a qcow2 image read-write even
 * with the corrupt bit set, and does not repair a dirty (lazy refcounts)
 * image on open: qcow2_check() does that. */
#define IMAGE_OPEN_CHECK 0x1

struct image *image_open_ext(const struct image_open_opts *o, unsigned flags, char *err,
			     size_t errlen);

/* Changes the virtual size (raw: the file size; qcow2: header, L1 grown as
 * needed). Shrinking needs allow_shrink (else -EINVAL); for qcow2 it frees
 * the clusters past the new end and is refused (-ENOTSUP) when the image
 * has internal snapshots. Sizes are rounded up to 512. */
int image_resize(struct image *img, uint64_t new_size, bool allow_shrink);

/* Reopens `img` (any image of a chain, e.g. image_backing(top)) read-write,
 * for commit. Its own backing stays read-only. */
int image_reopen_rw(struct image *img, char *err, size_t errlen);

/* The file name an image was opened with (after backing-name resolution). */
const char *image_path(const struct image *img);
enum image_format image_format(const struct image *img);

#endif
