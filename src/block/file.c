/* The file layer: opening image and scratch files, the engine plumbing
 * both backends share (ready list, event fd, short-transfer continuation),
 * and iovec helpers. */
#include "core/iov.h"
#include "block/block_int.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- engine plumbing ------------------------------------------------ */

void blk_engine_init(struct blk_engine *e, const struct blk_engine_ops *ops, int event_fd)
{
	e->ops = ops;
	e->event_fd = event_fd;
	e->inflight = 0;
	e->ready = NULL;
	e->ready_tail = &e->ready;
}

void blk_engine_kick(struct blk_engine *e)
{
	uint64_t one = 1;
	/* The counter cannot overflow in practice; a failed write would
	 * only mean it is already readable. */
	ssize_t r = write(e->event_fd, &one, sizeof(one));
	(void)r;
}

static void fio_reset(struct blk_fio *f)
{
	f->xfered = 0;
	f->rest = NULL;
	f->restcnt = 0;
	f->result = 0;
	f->next = NULL;
}

void blk_engine_submit(struct blk_engine *e, struct blk_fio *f)
{
	fio_reset(f);
	e->inflight++;
	e->ops->submit(e, f);
}

void blk_engine_finish(struct blk_engine *e, struct blk_fio *f, int result)
{
	free(f->rest);
	f->rest = NULL;
	f->restcnt = 0;
	f->result = result;
	f->next = NULL;
	*e->ready_tail = f;
	e->ready_tail = &f->next;
}

void blk_engine_complete_later(struct blk_engine *e, struct blk_fio *f, int result)
{
	fio_reset(f);
	e->inflight++;
	blk_engine_finish(e, f, result);
	blk_engine_kick(e);
}

void blk_engine_plug(struct blk_engine *e)
{
	e->plugged++;
}

void blk_engine_unplug(struct blk_engine *e)
{
	if (e->plugged && --e->plugged == 0 && e->ops->unplug)
		e->ops->unplug(e);
}

int blk_engine_poll(struct blk_engine *e)
{
	uint64_t v;
	/* Drain first: anything that completes after this point re-arms it,
	 * so no wakeup is lost. */
	ssize_t r = read(e->event_fd, &v, sizeof(v));
	(void)r;
	/* Completion callbacks typically submit more work: batch it. */
	blk_engine_plug(e);
	e->ops->reap(e);
	struct blk_fio *list = e->ready;
	e->ready = NULL;
	e->ready_tail = &e->ready;
	int n = 0;
	while (list) {
		struct blk_fio *f = list;
		list = f->next;
		f->next = NULL;
		e->inflight--;
		f->done(f, f->result);
		n++;
	}
	blk_engine_unplug(e);
	/* Work that done() callbacks made ready went through
	 * blk_engine_complete_later(), which re-armed the event fd. */
	return n;
}

void blk_engine_destroy(struct blk_engine *e)
{
	if (e)
		e->ops->destroy(e);
}

/* ---- short transfers ------------------------------------------------ */

void blk_fio_cur(const struct blk_fio *f, const struct iovec **iov, int *iovcnt, uint64_t *offset)
{
	if (f->rest) {
		*iov = f->rest;
		*iovcnt = f->restcnt;
	} else {
		*iov = f->iov;
		*iovcnt = f->iovcnt;
	}
	*offset = f->offset + f->xfered;
}

bool blk_fio_progress(struct blk_fio *f, ssize_t res, int *result)
{
	if (res == -EINTR || res == -EAGAIN)
		return true;
	if (res < 0) {
		*result = (int)res;
		return false;
	}
	if (res == 0 && f->xfered < f->len) {
		if (f->op == BLK_FIO_READ) {
			/* End of file: the image shrank under us, or a read
			 * rounded up past its end. Like a sparse tail, it
			 * reads as zeros (QEMU does the same). */
			iov_memset(f->iov, f->iovcnt, f->xfered, 0, f->len - f->xfered);
			*result = 0;
		} else {
			*result = -EIO;
		}
		return false;
	}
	f->xfered += (uint64_t)res;
	if (f->xfered >= f->len) {
		*result = 0;
		return false;
	}
	/* Rebuild from the original iovec each time, so the allocation
	 * never needs more entries than the request had. */
	free(f->rest);
	f->rest = malloc(sizeof(*f->rest) * (size_t)f->iovcnt);
	if (!f->rest) {
		*result = -ENOMEM;
		return false;
	}
	f->restcnt = iov_slice(f->iov, f->iovcnt, f->xfered, f->len - f->xfered, f->rest);
	return true;
}

int blk_fio_run_sync(struct blk_fio *f)
{
	switch (f->op) {
	case BLK_FIO_READ:
	case BLK_FIO_WRITE:
		for (;;) {
			const struct iovec *iov;
			int cnt, result;
			uint64_t off;
			blk_fio_cur(f, &iov, &cnt, &off);
			ssize_t r = f->op == BLK_FIO_READ ? preadv(f->fd, iov, cnt, (off_t)off)
							  : pwritev(f->fd, iov, cnt, (off_t)off);
			if (r < 0)
				r = -errno;
			if (!blk_fio_progress(f, r, &result))
				return result;
		}
	case BLK_FIO_DATASYNC:
		return fdatasync(f->fd) < 0 ? -errno : 0;
	case BLK_FIO_PUNCH:
		return fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)f->offset,
				 (off_t)f->len) < 0 ? -errno : 0;
	case BLK_FIO_ZERO_RANGE:
		return fallocate(f->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)f->offset,
				 (off_t)f->len) < 0 ? -errno : 0;
	}
	return -EINVAL;
}

/* ---- files ---------------------------------------------------------- */

static void dio_alignment(struct blk_file *f, const struct stat *st)
{
	/* 4096 satisfies every device and filesystem in practice, so it is
	 * the answer when the kernel cannot tell us. */
	f->mem_align = 4096;
	f->off_align = 4096;
	if (f->is_bdev) {
		int lbs = 0;
		if (ioctl(f->fd, BLKSSZGET, &lbs) == 0 && lbs >= (int)BLK_SECTOR) {
			f->mem_align = (uint32_t)lbs;
			f->off_align = (uint32_t)lbs;
		}
		return;
	}
	(void)st;
#ifdef STATX_DIOALIGN
	struct statx sx;
	if (statx(f->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
	    (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align) {
		f->off_align = sx.stx_dio_offset_align;
		f->mem_align = sx.stx_dio_mem_align ? sx.stx_dio_mem_align : sx.stx_dio_offset_align;
	}
#endif
	/* Requests are in sectors anyway; never report less. */
	if (f->off_align < BLK_SECTOR)
		f->off_align = BLK_SECTOR;
}

/* Whether hole punching works, asked without touching data: a punch that
 * starts at end of file changes nothing, but filesystems without punch
 * support refuse it before looking at the range. */
static bool probe_punch(int fd, const struct stat *st)
{
	off_t at = (st->st_size + 4095) & ~(off_t)4095;
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, 4096) == 0)
		return true;
	return errno != EOPNOTSUPP && errno != ENOSYS;
}

struct blk_file *blk_file_open(const char *path, bool readonly, enum blk_cache cache,
			       struct blk_engine *eng, char *err, size_t errlen)
{
	bool direct = cache == BLK_CACHE_NONE || cache == BLK_CACHE_DIRECTSYNC;
	bool dsync = !readonly && (cache == BLK_CACHE_WRITETHROUGH || cache == BLK_CACHE_DIRECTSYNC);
	int flags = O_CLOEXEC | O_NOCTTY | (readonly ? O_RDONLY : O_RDWR);
	if (direct)
		flags |= O_DIRECT;
	if (dsync)
		flags |= O_DSYNC;

	int fd = open(path, flags);
	if (fd < 0) {
		int e = errno;
		if (e == EINVAL && direct)
			snprintf(err, errlen,
				 "cannot open image '%s': the filesystem does not support O_DIRECT "
				 "(needed by cache=none/directsync)", path);
		else if ((e == EACCES || e == EROFS || e == EPERM) && !readonly)
			snprintf(err, errlen, "cannot open image '%s' read-write: %s (use readonly=on?)",
				 path, strerror(e));
		else
			snprintf(err, errlen, "cannot open image '%s': %s", path, strerror(e));
		return NULL;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		snprintf(err, errlen, "cannot open image '%s': %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	struct blk_file *f = calloc(1, sizeof(*f));
	if (!f) {
		snprintf(err, errlen, "cannot open image '%s': %s", path, strerror(ENOMEM));
		close(fd);
		return NULL;
	}
	f->fd = fd;
	f->eng = eng;
	f->readonly = readonly;
	f->direct = direct;
	f->dsync = dsync;
	f->unsafe = cache == BLK_CACHE_UNSAFE;
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	f->mem_align = 1;
	f->off_align = BLK_SECTOR;

	if (S_ISREG(st.st_mode)) {
		/* A disk is made of sectors: a trailing partial sector is
		 * ignored (QEMU exposes it; no guest can address it anyway
		 * through virtio-blk, which counts in 512-byte sectors). */
		f->size = (uint64_t)st.st_size & ~(uint64_t)(BLK_SECTOR - 1);
	} else if (S_ISBLK(st.st_mode)) {
		uint64_t bytes = 0;
		if (ioctl(fd, BLKGETSIZE64, &bytes) < 0) {
			snprintf(err, errlen, "cannot open image '%s': BLKGETSIZE64: %s", path,
				 strerror(errno));
			goto fail;
		}
		f->is_bdev = true;
		f->size = bytes & ~(uint64_t)(BLK_SECTOR - 1);
	} else {
		snprintf(err, errlen, "cannot open image '%s': %s", path,
			 S_ISDIR(st.st_mode) ? strerror(EISDIR) : "not a regular file or block device");
		goto fail;
	}
	if (direct)
		dio_alignment(f, &st);
	if (!readonly) {
		/* Block devices answer only when asked for real, so they are
		 * assumed capable and corrected on the first EOPNOTSUPP. */
		f->can_punch = f->is_bdev || probe_punch(fd, &st);
		f->can_zero_range = true;
	}
	return f;
fail:
	close(fd);
	free(f);
	return NULL;
}

static int scratch_fd(const char *dir, char *why, size_t whylen)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
		snprintf(why, whylen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	/* No O_TMPFILE on this filesystem: a named file, unlinked at once. */
	char tmpl[4096];
	if ((size_t)snprintf(tmpl, sizeof(tmpl), "%s/kestrel-snapshot-XXXXXX", dir) >= sizeof(tmpl)) {
		snprintf(why, whylen, "%s: %s", dir, strerror(ENAMETOOLONG));
		return -1;
	}
	fd = mkostemp(tmpl, O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, whylen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	unlink(tmpl);
	return fd;
}

struct blk_file *blk_file_scratch(const char *fallback_dir, uint64_t size,
				  struct blk_engine *eng, char *err, size_t errlen)
{
	const char *dirs[3];
	int n = 0;
	const char *tmpdir = getenv("TMPDIR");
	if (tmpdir && *tmpdir)
		dirs[n++] = tmpdir;
	dirs[n++] = "/var/tmp";
	if (fallback_dir)
		dirs[n++] = fallback_dir;
	char why[512] = "";
	int fd = -1;
	for (int i = 0; i < n && fd < 0; i++)
		fd = scratch_fd(dirs[i], why, sizeof(why));
	if (fd < 0) {
		snprintf(err, errlen, "cannot create the snapshot overlay: %s", why);
		return NULL;
	}
	if (ftruncate(fd, (off_t)size) < 0) {
		snprintf(err, errlen, "cannot create the snapshot overlay: %s", strerror(errno));
		close(fd);
		return NULL;
	}
	struct blk_file *f = calloc(1, sizeof(*f));
	if (!f) {
		snprintf(err, errlen, "cannot create the snapshot overlay: %s", strerror(ENOMEM));
		close(fd);
		return NULL;
	}
	f->fd = fd;
	f->eng = eng;
	f->size = size;
	/* Its contents die with the process, so syncing it buys nothing. */
	f->unsafe = true;
	f->can_punch = true;
	f->can_zero_range = true;
	f->mem_align = 1;
	f->off_align = BLK_SECTOR;
	return f;
}

void blk_file_close(struct blk_file *f)
{
	if (!f)
		return;
	close(f->fd);
	free(f);
}
