/* struct image (image.h, image_ext.h): synchronous access to raw and qcow2
 * images with backing chains of any depth, for `kestrel img` and for the
 * qcow2 node's backing files.
 *
 * Locking: a read-write open takes an exclusive OFD lock on the file (like
 * the VMM's block layer), so a running VM's disk cannot be modified under
 * it; read-only opens take no lock (img info/map/compare on a live image
 * read a possibly inconsistent snapshot of it, like qemu-img -U).
 *
 * Block status: IMAGE_BS_ALLOCATED means "this layer defines the range".
 * A range a qcow2 layer leaves to its backing file reports flags 0 (look
 * at image_backing()), except where no backing data exists (no backing
 * file, or past its end): then IMAGE_BS_ZERO. Raw images are allocated
 * everywhere: holes (SEEK_HOLE) report ZERO, data DATA. */
#include "block/image.h"
#include "block/image_ext.h"
#include "block/qcow2_int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define IMG_ALIGN 4096u
#define MAX_CHAIN 64

struct image {
	enum image_format fmt;
	char path[PATH_MAX];
	int fd;
	bool readonly, direct, writethrough;
	bool is_bdev;
	bool probed;
	uint64_t size;
	struct qcow2 *q;
	struct image *backing;
};

/* ---- file I/O --------------------------------------------------------------- */

static bool sector_aligned(const void *buf, size_t len, uint64_t off)
{
	return (uintptr_t)buf % 512 == 0 && len % 512 == 0 && off % 512 == 0;
}

/* O_DIRECT cannot do byte-granular I/O. Sector-aligned requests go
 * straight to the file; others go through an aligned bounce buffer
 * (writes read-modify-write the edge sectors). Only when the device
 * wants more alignment than that (EINVAL), or a read-modify-write would
 * extend the file, O_DIRECT is dropped for that one call: mixing buffered
 * and direct writes on the same pages can make the kernel report EIO. */
static int direct_toggle(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	fl = on ? fl | O_DIRECT : fl & ~O_DIRECT;
	return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

static int pread_loop(int fd, uint8_t *p, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0) {
			memset(p, 0, len); /* past the end of the file */
			return 0;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static int pwrite_loop(int fd, const uint8_t *p, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static int buffered_io(int fd, bool write, void *buf, size_t len, uint64_t off)
{
	int r = direct_toggle(fd, false);
	if (r < 0)
		return r;
	r = write ? pwrite_loop(fd, buf, len, off) : pread_loop(fd, buf, len, off);
	int r2 = direct_toggle(fd, true);
	return r < 0 ? r : r2;
}

static int direct_io(int fd, bool write, void *buf, size_t len, uint64_t off)
{
	if (sector_aligned(buf, len, off)) {
		int r = write ? pwrite_loop(fd, buf, len, off) : pread_loop(fd, buf, len, off);
		if (r != -EINVAL)
			return r;
		return buffered_io(fd, write, buf, len, off);
	}
	uint64_t a0 = off & ~511ull, a1 = (off + len + 511) & ~511ull;
	if (write) {
		struct stat st;
		if (fstat(fd, &st) < 0)
			return -errno;
		if (S_ISREG(st.st_mode) && a1 > (uint64_t)st.st_size)
			return buffered_io(fd, true, buf, len, off);
	}
	uint8_t *b = NULL;
	if (posix_memalign((void **)&b, IMG_ALIGN, a1 - a0))
		return -ENOMEM;
	int r = pread_loop(fd, b, a1 - a0, a0);
	if (r == 0) {
		if (write) {
			memcpy(b + (off - a0), buf, len);
			r = pwrite_loop(fd, b, a1 - a0, a0);
		} else {
			memcpy(buf, b + (off - a0), len);
		}
	}
	free(b);
	if (r == -EINVAL)
		r = buffered_io(fd, write, buf, len, off);
	return r;
}

int img_pread(int fd, bool direct, void *buf, size_t len, uint64_t off)
{
	if (!len)
		return 0;
	if (!direct)
		return pread_loop(fd, buf, len, off);
	return direct_io(fd, false, buf, len, off);
}

int img_pwrite(int fd, bool direct, const void *buf, size_t len, uint64_t off)
{
	if (!len)
		return 0;
	if (!direct)
		return pwrite_loop(fd, buf, len, off);
	return direct_io(fd, true, (void *)(uintptr_t)buf, len, off);
}

/* ---- open / close -------------------------------------------------------------- */

bool qcow2_probe(const void *buf, size_t len)
{
	if (len < 8)
		return false;
	uint32_t v = q_be32((const uint8_t *)buf + 4);
	return q_be32(buf) == QCOW2_MAGIC && (v == 2 || v == 3);
}

int image_backing_read(void *opaque, uint64_t off, void *buf, size_t len)
{
	struct image *b = opaque;
	size_t n = 0;
	if (off < b->size)
		n = b->size - off < len ? (size_t)(b->size - off) : len;
	if (n) {
		int r = image_read(b, off, buf, n);
		if (r < 0)
			return r;
	}
	if (n < len)
		memset((uint8_t *)buf + n, 0, len - n);
	return 0;
}

static int lock_file(int fd, bool exclusive)
{
	struct flock fl = { .l_type = exclusive ? F_WRLCK : F_RDLCK, .l_whence = SEEK_SET };
	if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
		return 0;
	if (errno == EAGAIN || errno == EACCES)
		return -EBUSY;
	return 0; /* filesystems without locks: run unprotected */
}

/* Resolves a backing file name relative to the image naming it. */
int image_resolve_backing(const char *image_path, const char *name, char *out, size_t outlen)
{
	if (name[0] == '/') {
		if ((size_t)snprintf(out, outlen, "%s", name) >= outlen)
			return -ENAMETOOLONG;
		return 0;
	}
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s", image_path);
	const char *dir = dirname(tmp);
	if ((size_t)snprintf(out, outlen, "%s/%s", dir, name) >= outlen)
		return -ENAMETOOLONG;
	return 0;
}

static void attach_backing(struct image *img)
{
	if (img->q && img->backing) {
		img->q->backing_read = image_backing_read;
		img->q->backing_opaque = img->backing;
		img->q->has_backing = true;
		img->q->backing_size = img->backing->size;
	}
}

/* The images above the one being opened, to refuse backing loops. */
struct chain_link {
	dev_t dev;
	ino_t ino;
	const struct chain_link *up;
};

static struct image *open_one(const char *path, const char *fmt, bool readonly, const struct image_open_opts *o,
			      unsigned flags, int depth, bool trusted, const struct chain_link *up, char *err,
			      size_t errlen)
{
	struct image *img = calloc(1, sizeof(*img));
	if (!img) {
		snprintf(err, errlen, "image '%s': %s", path, strerror(ENOMEM));
		return NULL;
	}
	img->fd = -1;
	snprintf(img->path, sizeof(img->path), "%s", path);
	img->readonly = readonly;
	img->direct = o->direct;
	img->writethrough = o->writethrough && !readonly;
	int oflags = (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (o->direct ? O_DIRECT : 0);
	img->fd = open(path, oflags);
	if (img->fd < 0) {
		int e = errno;
		if (e == EINVAL && o->direct)
			snprintf(err, errlen, "image '%s': the filesystem does not support O_DIRECT (cache=none)", path);
		else
			snprintf(err, errlen, "image '%s': %s", path, strerror(e));
		goto fail;
	}
	struct stat st;
	if (fstat(img->fd, &st) < 0) {
		snprintf(err, errlen, "image '%s': %s", path, strerror(errno));
		goto fail;
	}
	if (S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "image '%s': is a directory", path);
		goto fail;
	}
	img->is_bdev = S_ISBLK(st.st_mode);
	for (const struct chain_link *l = up; l; l = l->up) {
		if (l->dev == st.st_dev && l->ino == st.st_ino) {
			snprintf(err, errlen, "image '%s': the backing chain loops back to this file", path);
			goto fail;
		}
	}
	struct chain_link self = { st.st_dev, st.st_ino, up };
	if (!readonly && lock_file(img->fd, true) < 0) {
		snprintf(err, errlen, "image '%s': in use by another process (locked)", path);
		goto fail;
	}
	if (!fmt) {
		uint8_t *hb = NULL;
		if (posix_memalign((void **)&hb, IMG_ALIGN, IMG_ALIGN)) {
			snprintf(err, errlen, "image '%s': %s", path, strerror(ENOMEM));
			goto fail;
		}
		int r = img_pread(img->fd, o->direct, hb, IMG_ALIGN, 0);
		bool is_q = r == 0 && qcow2_probe(hb, IMG_ALIGN);
		free(hb);
		if (r < 0) {
			snprintf(err, errlen, "image '%s': %s", path, strerror(-r));
			goto fail;
		}
		fmt = is_q ? "qcow2" : "raw";
		img->probed = true;
	}
	if (strcmp(fmt, "raw") == 0) {
		img->fmt = IMAGE_RAW;
		if (img->is_bdev) {
			uint64_t s = 0;
			if (ioctl(img->fd, BLKGETSIZE64, &s) < 0) {
				snprintf(err, errlen, "image '%s': %s", path, strerror(errno));
				goto fail;
			}
			img->size = s;
		} else {
			img->size = (uint64_t)st.st_size;
		}
		return img;
	}
	if (strcmp(fmt, "qcow2") != 0) {
		snprintf(err, errlen, "image '%s': format '%s' is not supported (expected raw or qcow2)", path, fmt);
		goto fail;
	}
	img->fmt = IMAGE_QCOW2;
	char why[512];
	why[0] = 0;
	img->q = qcow2_open(img->fd, path, readonly, o->direct,
			    (flags & IMAGE_OPEN_CHECK) ? QCOW2_OPEN_CHECK : 0, why, sizeof(why));
	if (!img->q) {
		snprintf(err, errlen, "image '%s': %s", path, why);
		goto fail;
	}
	img->size = img->q->size;
	if (img->q->backing_file[0] && !o->no_backing) {
		if (img->probed && !trusted) {
			snprintf(err, errlen,
				 "image '%s': its format was probed and it names a backing file ('%s'); "
				 "give the format explicitly to follow it",
				 path, img->q->backing_file);
			goto fail;
		}
		if (depth + 1 >= MAX_CHAIN) {
			snprintf(err, errlen, "image '%s': backing chain deeper than %d (a loop?)", path, MAX_CHAIN);
			goto fail;
		}
		char bpath[PATH_MAX];
		if (image_resolve_backing(path, img->q->backing_file, bpath, sizeof(bpath)) < 0) {
			snprintf(err, errlen, "image '%s': backing file name too long", path);
			goto fail;
		}
		const char *bfmt = img->q->backing_fmt[0] ? img->q->backing_fmt : NULL;
		char inner[1024];
		struct image_open_opts bo = *o;
		bo.readonly = true;
		bo.writethrough = false;
		img->backing = open_one(bpath, bfmt, true, &bo, 0, depth + 1, trusted, &self, inner, sizeof(inner));
		if (!img->backing) {
			snprintf(err, errlen, "image '%s': cannot open backing file: %s", path, inner);
			goto fail;
		}
		attach_backing(img);
	}
	return img;
fail:
	image_close(img);
	return NULL;
}

struct image *image_open_ext(const struct image_open_opts *o, unsigned flags, char *err, size_t errlen)
{
	if (!o || !o->path || !*o->path) {
		snprintf(err, errlen, "no image file given");
		return NULL;
	}
	bool trusted = o->format || o->allow_probed_backing;
	return open_one(o->path, o->format, o->readonly, o, flags, 0, trusted, NULL, err, errlen);
}

struct image *image_open(const struct image_open_opts *o, char *err, size_t errlen)
{
	return image_open_ext(o, 0, err, errlen);
}

void image_close(struct image *img)
{
	if (!img)
		return;
	if (img->q)
		qcow2_close(img->q);
	if (img->fd >= 0)
		close(img->fd);
	image_close(img->backing);
	free(img);
}

int image_reopen_rw(struct image *img, char *err, size_t errlen)
{
	if (!img->readonly)
		return 0;
	int fd = open(img->path, O_RDWR | O_CLOEXEC | (img->direct ? O_DIRECT : 0));
	if (fd < 0) {
		int e = errno;
		snprintf(err, errlen, "image '%s': %s", img->path, strerror(e));
		return -e;
	}
	if (lock_file(fd, true) < 0) {
		close(fd);
		snprintf(err, errlen, "image '%s': in use by another process (locked)", img->path);
		return -EBUSY;
	}
	if (img->fmt == IMAGE_QCOW2) {
		char why[512];
		struct qcow2 *nq = qcow2_open(fd, img->path, false, img->direct, 0, why, sizeof(why));
		if (!nq) {
			close(fd);
			snprintf(err, errlen, "image '%s': %s", img->path, why);
			return -EIO;
		}
		qcow2_close(img->q);
		img->q = nq;
		attach_backing(img);
	}
	close(img->fd);
	img->fd = fd;
	img->readonly = false;
	return 0;
}

/* ---- queries ---------------------------------------------------------------------- */

uint64_t image_size(const struct image *img)
{
	return img->size;
}

struct image *image_backing(struct image *img)
{
	return img->backing;
}

const char *image_path(const struct image *img)
{
	return img->path;
}

enum image_format image_format(const struct image *img)
{
	return img->fmt;
}

int image_get_info(struct image *img, struct image_info *out)
{
	memset(out, 0, sizeof(*out));
	out->format = img->fmt;
	out->virtual_size = img->size;
	struct stat st;
	if (fstat(img->fd, &st) == 0)
		out->actual_size = img->is_bdev ? img->size : (uint64_t)st.st_blocks * 512;
	if (img->fmt == IMAGE_QCOW2) {
		struct qcow2 *q = img->q;
		out->cluster_size = q->cluster_size;
		out->qcow2_version = (int)q->version;
		out->refcount_bits = q->refcount_bits;
		out->lazy_refcounts = (q->compat & QCOW2_COMPAT_LAZY) != 0;
		out->corrupt = (q->incompat & QCOW2_INCOMPAT_CORRUPT) != 0;
		out->dirty = (q->incompat & QCOW2_INCOMPAT_DIRTY) != 0;
		out->extended_l2 = q->ext_l2;
		out->compression_type = q->compression_type ? "zstd" : "zlib";
		snprintf(out->backing_file, sizeof(out->backing_file), "%s", q->backing_file);
		snprintf(out->backing_format, sizeof(out->backing_format), "%s", q->backing_fmt);
		out->nr_snapshots = q->nb_snapshots;
	}
	return 0;
}

/* ---- I/O ---------------------------------------------------------------------------- */

static int check_range(const struct image *img, uint64_t off, uint64_t len)
{
	if (off > img->size || len > img->size - off)
		return -EINVAL;
	return 0;
}

int image_read(struct image *img, uint64_t off, void *buf, size_t len)
{
	int r = check_range(img, off, len);
	if (r < 0)
		return r;
	if (img->fmt == IMAGE_RAW)
		return img_pread(img->fd, img->direct, buf, len, off);
	return qcow2_read(img->q, off, buf, len);
}

static int after_write(struct image *img, int r)
{
	if (r == 0 && img->writethrough)
		r = image_flush(img);
	return r;
}

int image_write(struct image *img, uint64_t off, const void *buf, size_t len)
{
	if (img->readonly)
		return -EROFS;
	int r = check_range(img, off, len);
	if (r < 0)
		return r;
	if (img->fmt == IMAGE_RAW)
		r = img_pwrite(img->fd, img->direct, buf, len, off);
	else
		r = qcow2_write(img->q, off, buf, len);
	return after_write(img, r);
}

int image_write_compressed(struct image *img, uint64_t off, const void *buf, size_t len)
{
	if (img->fmt != IMAGE_QCOW2)
		return -ENOTSUP;
	if (img->readonly)
		return -EROFS;
	int r = check_range(img, off, len);
	if (r < 0)
		return r;
	return after_write(img, qcow2_write_compressed(img->q, off, buf, len));
}

static int raw_write_zero_buf(struct image *img, uint64_t off, uint64_t len)
{
	size_t chunk = 1u << 20;
	uint8_t *z = NULL;
	if (posix_memalign((void **)&z, IMG_ALIGN, chunk))
		return -ENOMEM;
	memset(z, 0, chunk);
	int r = 0;
	while (len && r == 0) {
		size_t n = len < chunk ? (size_t)len : chunk;
		r = img_pwrite(img->fd, img->direct, z, n, off);
		off += n;
		len -= n;
	}
	free(z);
	return r;
}

int image_write_zeroes(struct image *img, uint64_t off, uint64_t len, bool may_unmap)
{
	if (img->readonly)
		return -EROFS;
	int r = check_range(img, off, len);
	if (r < 0 || !len)
		return r;
	if (img->fmt == IMAGE_QCOW2)
		return after_write(img, qcow2_write_zeroes(img->q, off, len, may_unmap));
	if (!img->is_bdev) {
		int mode = may_unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
				     : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
		if (fallocate(img->fd, mode, (off_t)off, (off_t)len) == 0)
			return after_write(img, 0);
	}
	return after_write(img, raw_write_zero_buf(img, off, len));
}

int image_discard(struct image *img, uint64_t off, uint64_t len)
{
	if (img->readonly)
		return -EROFS;
	int r = check_range(img, off, len);
	if (r < 0 || !len)
		return r;
	if (img->fmt == IMAGE_QCOW2)
		return after_write(img, qcow2_discard(img->q, off, len));
	if (!img->is_bdev &&
	    fallocate(img->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0 &&
	    errno != EOPNOTSUPP && errno != ENOSYS)
		return -errno;
	return after_write(img, 0);
}

int image_flush(struct image *img)
{
	if (img->readonly)
		return 0;
	if (img->fmt == IMAGE_QCOW2)
		return qcow2_flush(img->q);
	return fdatasync(img->fd) < 0 ? -errno : 0;
}

int image_block_status(struct image *img, uint64_t off, uint64_t len, uint64_t *pnum, unsigned *flags,
		       uint64_t *host_off)
{
	int r = check_range(img, off, len);
	if (r < 0)
		return r;
	*pnum = 0;
	*flags = 0;
	*host_off = UINT64_MAX;
	if (!len)
		return 0;
	if (img->fmt == IMAGE_RAW) {
		*flags = IMAGE_BS_DATA | IMAGE_BS_ALLOCATED;
		*host_off = off;
		*pnum = len;
		if (img->is_bdev)
			return 0;
		off_t d = lseek(img->fd, (off_t)off, SEEK_DATA);
		if (d < 0) {
			if (errno == ENXIO) { /* a hole up to the end */
				*flags = IMAGE_BS_ZERO | IMAGE_BS_ALLOCATED;
			}
			return 0; /* EINVAL etc.: no hole information */
		}
		if ((uint64_t)d > off) {
			*flags = IMAGE_BS_ZERO | IMAGE_BS_ALLOCATED;
			if ((uint64_t)d - off < len)
				*pnum = (uint64_t)d - off;
			return 0;
		}
		off_t h = lseek(img->fd, (off_t)off, SEEK_HOLE);
		if (h > (off_t)off && (uint64_t)h - off < len)
			*pnum = (uint64_t)h - off;
		return 0;
	}
	r = qcow2_block_status(img->q, off, len, pnum, flags, host_off);
	if (r < 0)
		return r;
	if (!(*flags & IMAGE_BS_ALLOCATED)) {
		uint64_t bsize = img->backing ? img->backing->size : 0;
		if (off >= bsize) {
			*flags = IMAGE_BS_ZERO;
		} else if (*pnum > bsize - off) {
			*pnum = bsize - off;
		}
	}
	return 0;
}

/* ---- resize ------------------------------------------------------------------------- */

int image_resize(struct image *img, uint64_t new_size, bool allow_shrink)
{
	if (img->readonly)
		return -EROFS;
	new_size = (new_size + 511) & ~511ull;
	if (new_size < img->size && !allow_shrink)
		return -EINVAL;
	if (img->fmt == IMAGE_RAW) {
		if (img->is_bdev)
			return new_size == img->size ? 0 : -ENOTSUP;
		if (ftruncate(img->fd, (off_t)new_size) < 0)
			return -errno;
		img->size = new_size;
		return 0;
	}
	int r = qcow2_resize(img->q, new_size, allow_shrink);
	if (r == 0)
		img->size = img->q->size;
	return r;
}

/* ---- qcow2 accessors for the other qcow2 files -------------------------------------- */

struct qcow2 *image_qcow2(struct image *img)
{
	return img && img->fmt == IMAGE_QCOW2 ? img->q : NULL;
}

int image_create_raw(const char *path, uint64_t size, const char *preallocation, char *err, size_t errlen)
{
	const char *pa = preallocation ? preallocation : "off";
	if (strcmp(pa, "off") && strcmp(pa, "falloc") && strcmp(pa, "full")) {
		snprintf(err, errlen, "image '%s': invalid preallocation mode '%s' (off, falloc, full)", path, pa);
		return -EINVAL;
	}
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		int e = errno;
		snprintf(err, errlen, "image '%s': %s", path, strerror(e));
		return -e;
	}
	int r = 0;
	if (ftruncate(fd, (off_t)size) < 0)
		r = -errno;
	if (r == 0 && size && strcmp(pa, "off") != 0) {
		if (strcmp(pa, "falloc") == 0) {
			if (fallocate(fd, 0, 0, (off_t)size) < 0)
				r = -errno;
		} else {
			size_t chunk = 1u << 20;
			uint8_t *z = calloc(1, chunk);
			if (!z)
				r = -ENOMEM;
			for (uint64_t o = 0; r == 0 && o < size; o += chunk) {
				size_t n = size - o < chunk ? (size_t)(size - o) : chunk;
				r = pwrite_loop(fd, z, n, o);
			}
			free(z);
		}
	}
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	close(fd);
	if (r < 0)
		snprintf(err, errlen, "image '%s': %s", path, strerror(-r));
	return r;
}
