/* The block layer's front end: option handling, image locking, request
 * validation, O_DIRECT bounce buffers and completion accounting. The work
 * itself is done by the node stack (format driver, optional snapshot
 * overlay) over the file engine; see block_int.h. */
#include "core/iov.h"
#include "block/block_int.h"
#include "block/qcow2.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"

#define BLK_URING_DEPTH 128

struct blk {
	struct blk_engine *eng;
	struct blk_file *file;
	struct blk_node *top;
	bool readonly;
	unsigned inflight;          /* accepted by blk_submit, done() not yet run */
	uint64_t completed;         /* done() calls so far */
};

/* Set when an O_DIRECT request's memory is misaligned: the request runs
 * on `buf` instead, and is put back before done() runs. */
struct bounce {
	void *buf;
	struct iovec iov;
	const struct iovec *orig_iov;
	int orig_iovcnt;
};

static const struct blk_format_ops *const formats[] = { &blk_format_raw, &blk_format_qcow2 };

/* ---- image locking -------------------------------------------------- */

/* OFD locks report no owner (F_OFD_GETLK says pid -1, and so does
 * /proc/locks), but /proc/PID/fdinfo/FD lists the locks held through
 * that open file. So: find the open files of this inode, then the one
 * with a conflicting lock. Returns 0 when it cannot tell (e.g. the holder
 * belongs to another user). */
static pid_t lock_holder(const struct blk_file *f, bool want_write)
{
	DIR *proc = opendir("/proc");
	if (!proc)
		return 0;
	pid_t self = getpid(), found = 0;
	struct dirent *pe;
	while (!found && (pe = readdir(proc))) {
		char *endp;
		long pid = strtol(pe->d_name, &endp, 10);
		if (*endp || pid <= 0)
			continue;
		char path[64];
		snprintf(path, sizeof(path), "/proc/%ld/fd", pid);
		DIR *fds = opendir(path);
		if (!fds)
			continue;
		struct dirent *fe;
		while (!found && (fe = readdir(fds))) {
			long fd = strtol(fe->d_name, &endp, 10);
			if (*endp || fe->d_name[0] == '.')
				continue;
			if (pid == self && fd == f->fd)
				continue;
			struct stat st;
			snprintf(path, sizeof(path), "/proc/%ld/fd/%ld", pid, fd);
			if (stat(path, &st) < 0 || st.st_dev != f->dev || st.st_ino != f->ino)
				continue;
			snprintf(path, sizeof(path), "/proc/%ld/fdinfo/%ld", pid, fd);
			FILE *fi = fopen(path, "re");
			if (!fi)
				continue;
			char line[256];
			while (fgets(line, sizeof(line), fi)) {
				if (strncmp(line, "lock:", 5) != 0)
					continue;
				/* A reader only conflicts with writers. */
				if (!want_write && !strstr(line, "WRITE"))
					continue;
				found = (pid_t)pid;
				break;
			}
			fclose(fi);
		}
		closedir(fds);
	}
	closedir(proc);
	return found;
}

static int lock_image(const struct blk_file *f, const char *path, bool exclusive, char *err,
		      size_t errlen)
{
	struct flock fl = {
		.l_type = exclusive ? F_WRLCK : F_RDLCK,
		.l_whence = SEEK_SET,
	};
	if (fcntl(f->fd, F_OFD_SETLK, &fl) == 0)
		return 0;
	int e = errno;
	if (e != EAGAIN && e != EACCES) {
		/* Some filesystems (old NFS, FUSE) cannot lock at all. Refusing
		 * to run would be worse than running unprotected. */
		log_warn("cannot lock image '%s' (%s); not protected against concurrent use", path,
			 strerror(e));
		return 0;
	}
	pid_t pid = lock_holder(f, exclusive);
	char who[64];
	if (pid == getpid())
		snprintf(who, sizeof(who), "this process");
	else if (pid > 0)
		snprintf(who, sizeof(who), "another process (pid %d)", (int)pid);
	else
		snprintf(who, sizeof(who), "another process");
	if (exclusive)
		snprintf(err, errlen, "image '%s' is in use by %s: use readonly=on or snapshot=on to share it",
			 path, who);
	else
		snprintf(err, errlen, "image '%s' is open read-write by %s", path, who);
	return -1;
}

/* ---- open/close ----------------------------------------------------- */

/* Beyond block.h: the image is a regular file (size rounded down to whole
 * sectors) or a block device; aio=io_uring quietly (log_info) becomes
 * aio=threads where the kernel refuses io_uring; snapshot=on with
 * readonly=on is plain read-only. */
struct blk *blk_open(const struct blk_options *opts, char *err, size_t errlen)
{
	if (!opts || !opts->path || !*opts->path) {
		snprintf(err, errlen, "no image file given");
		return NULL;
	}
	const char *path = opts->path;
	const struct blk_format_ops *fmt = NULL;
	const char *fmt_name = opts->format ? opts->format : "raw";
	for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
		if (strcmp(formats[i]->name, fmt_name) == 0)
			fmt = formats[i];
	if (!fmt) {
		snprintf(err, errlen, "image '%s': format '%s' is not supported (expected raw or qcow2)", path,
			 fmt_name);
		return NULL;
	}
	if ((unsigned)opts->cache > BLK_CACHE_UNSAFE || (unsigned)opts->aio > BLK_AIO_THREADS) {
		snprintf(err, errlen, "image '%s': invalid cache or aio mode", path);
		return NULL;
	}

	struct blk *b = calloc(1, sizeof(*b));
	if (!b) {
		snprintf(err, errlen, "image '%s': %s", path, strerror(ENOMEM));
		return NULL;
	}
	b->readonly = opts->readonly;
	if (opts->aio == BLK_AIO_IO_URING) {
		char why[256];
		b->eng = blk_uring_create(BLK_URING_DEPTH, why, sizeof(why));
		if (!b->eng)
			log_info("image '%s': io_uring unavailable (%s), using aio=threads", path, why);
	}
	if (!b->eng) {
		char why[256];
		b->eng = blk_threads_create(why, sizeof(why));
		if (!b->eng) {
			snprintf(err, errlen, "image '%s': %s", path, why);
			goto fail;
		}
	}

	/* snapshot=on never writes the image, so it only needs to share it. */
	bool ro_file = opts->readonly || opts->snapshot;
	b->file = blk_file_open(path, ro_file, opts->cache, b->eng, err, errlen);
	if (!b->file)
		goto fail;
	if (lock_image(b->file, path, !ro_file, err, errlen) < 0)
		goto fail;

	char why[256];
	b->top = fmt->open(b->file, why, sizeof(why));
	if (!b->top) {
		snprintf(err, errlen, "image '%s': %s", path, why);
		goto fail;
	}
	/* Read-only wins over snapshot: nothing could reach the overlay. */
	if (opts->snapshot && !opts->readonly) {
		b->top = blk_snapshot_open(b->top, b->eng, path, why, sizeof(why));
		if (!b->top) {
			snprintf(err, errlen, "image '%s': %s", path, why);
			goto fail;
		}
	}
	return b;
fail:
	if (b->top)
		b->top->ops->close(b->top);
	blk_file_close(b->file);
	blk_engine_destroy(b->eng);
	free(b);
	return NULL;
}

/* Waits for (and runs the callbacks of) requests still in flight, then
 * frees everything and drops the image lock. NULL is a no-op. */
void blk_close(struct blk *b)
{
	if (!b)
		return;
	/* Requests still in flight reference guest memory and our nodes:
	 * let them finish (running their callbacks) before freeing. A plug
	 * left behind would hold some of them back forever. */
	if (b->eng->plugged) {
		b->eng->plugged = 1;
		blk_engine_unplug(b->eng);
	}
	while (b->inflight) {
		struct pollfd p = { .fd = b->eng->event_fd, .events = POLLIN };
		poll(&p, 1, 100);
		blk_poll(b);
	}
	b->top->ops->close(b->top);
	blk_file_close(b->file); /* drops the image lock */
	blk_engine_destroy(b->eng);
	free(b);
}

uint64_t blk_size(const struct blk *b)
{
	return b->top->size;
}

bool blk_readonly(const struct blk *b)
{
	return b->readonly;
}

bool blk_can_discard(const struct blk *b)
{
	return !b->readonly && b->top->can_discard;
}

/* 512 (the sector, which READ/WRITE offsets must be multiples of anyway)
 * unless O_DIRECT needs more: then offsets and lengths of READ/WRITE must
 * be multiples of it. Memory need not be: misaligned buffers are bounced,
 * so a device only uses this to avoid the copy. */
uint32_t blk_alignment(const struct blk *b)
{
	const struct blk_file *f = b->file;
	if (!f->direct)
		return BLK_SECTOR;
	uint32_t a = f->off_align > f->mem_align ? f->off_align : f->mem_align;
	return a > BLK_SECTOR ? a : BLK_SECTOR;
}

int blk_event_fd(const struct blk *b)
{
	return b->eng->event_fd;
}

/* ---- requests ------------------------------------------------------- */

/* The caller's done() is parked in priv[1] while ours stands in. */
_Static_assert(sizeof(blk_done_fn) == sizeof(void *), "blk_done_fn fits in priv[]");

static void front_done(struct blk_req *req, int result)
{
	struct blk *b = req->priv[0];
	blk_done_fn done;
	memcpy(&done, &req->priv[1], sizeof(done));
	struct bounce *bb = req->priv[2];
	if (bb) {
		req->iov = bb->orig_iov;
		req->iovcnt = bb->orig_iovcnt;
		if (req->op == BLK_OP_READ && result == 0)
			iov_from_buf(req->iov, req->iovcnt, 0, bb->buf, req->len);
		free(bb->buf);
		free(bb);
	}
	req->done = done;
	req->priv[0] = req->priv[1] = req->priv[2] = NULL;
	b->inflight--;
	b->completed++;
	done(req, result);
}

static bool iov_aligned(const struct blk_req *req, uint32_t mem_align, uint32_t len_align)
{
	for (int i = 0; i < req->iovcnt; i++)
		if ((uintptr_t)req->iov[i].iov_base % mem_align || req->iov[i].iov_len % len_align)
			return false;
	return true;
}

static int bounce_setup(struct blk_req *req, uint32_t align)
{
	struct bounce *bb = calloc(1, sizeof(*bb));
	if (!bb)
		return -ENOMEM;
	if (posix_memalign(&bb->buf, align < 4096 ? 4096 : align, req->len ? (size_t)req->len : align)) {
		free(bb);
		return -ENOMEM;
	}
	if (req->op == BLK_OP_WRITE)
		iov_to_buf(req->iov, req->iovcnt, 0, bb->buf, req->len);
	bb->iov.iov_base = bb->buf;
	bb->iov.iov_len = (size_t)req->len;
	bb->orig_iov = req->iov;
	bb->orig_iovcnt = req->iovcnt;
	req->iov = &bb->iov;
	req->iovcnt = 1;
	req->priv[2] = bb;
	return 0;
}

/* Beyond block.h: done() never runs inside blk_submit(), even for requests
 * that need no I/O. For READ/WRITE, req->len is set to the iovec total.
 * Offsets and lengths must be whole sectors (and O_DIRECT-aligned, see
 * blk_alignment()) or the request is -EINVAL; iovcnt is at most IOV_MAX.
 * While in flight the block layer borrows req->done, req->iov/iovcnt and
 * priv[]; they are restored before done() runs. */
int blk_submit(struct blk *b, struct blk_req *req)
{
	if (!req || !req->done)
		return -EINVAL;
	bool rw = req->op == BLK_OP_READ || req->op == BLK_OP_WRITE;
	switch (req->op) {
	case BLK_OP_READ:
	case BLK_OP_WRITE:
		if (req->iovcnt < 0 || req->iovcnt > IOV_MAX || (req->iovcnt && !req->iov))
			return -EINVAL;
		req->len = iov_size(req->iov, req->iovcnt);
		break;
	case BLK_OP_DISCARD:
	case BLK_OP_WRITE_ZEROES:
	case BLK_OP_FLUSH:
		break;
	default:
		return -EINVAL;
	}
	if (b->readonly && req->op != BLK_OP_READ && req->op != BLK_OP_FLUSH)
		return -EROFS;
	uint64_t size = b->top->size;
	if (req->op != BLK_OP_FLUSH &&
	    (req->offset % BLK_SECTOR || req->len % BLK_SECTOR || req->offset > size ||
	     req->len > size - req->offset))
		return -EINVAL;

	req->priv[2] = NULL;
	if (rw && b->file->direct) {
		/* The file offset cannot be fixed up without read-modify-write
		 * of neighbouring data, which no virtio guest needs: refuse.
		 * Misaligned memory is common and cheap to fix: bounce. */
		uint32_t oa = b->file->off_align;
		if (req->offset % oa || req->len % oa)
			return -EINVAL;
		if (!iov_aligned(req, b->file->mem_align, oa)) {
			int r = bounce_setup(req, blk_alignment(b));
			if (r < 0)
				return r;
		}
	}

	blk_done_fn done = req->done;
	req->priv[0] = b;
	memcpy(&req->priv[1], &done, sizeof(done));
	req->done = front_done;
	int r = b->top->ops->submit(b->top, req);
	if (r < 0) {
		struct bounce *bb = req->priv[2];
		if (bb) {
			req->iov = bb->orig_iov;
			req->iovcnt = bb->orig_iovcnt;
			free(bb->buf);
			free(bb);
		}
		req->done = done;
		req->priv[0] = req->priv[1] = req->priv[2] = NULL;
		return r;
	}
	b->inflight++;
	return 0;
}

void blk_plug(struct blk *b)
{
	blk_engine_plug(b->eng);
}

void blk_unplug(struct blk *b)
{
	blk_engine_unplug(b->eng);
}

/* Also starts, in one batch, whatever the callbacks submitted. */
int blk_poll(struct blk *b)
{
	uint64_t before = b->completed;
	blk_engine_poll(b->eng);
	return (int)(b->completed - before);
}

/* ---- option words --------------------------------------------------- */

int blk_parse_cache(const char *s, enum blk_cache *out)
{
	static const struct {
		const char *word;
		enum blk_cache mode;
	} words[] = {
		{ "none", BLK_CACHE_NONE },
		{ "writeback", BLK_CACHE_WRITEBACK },
		{ "writethrough", BLK_CACHE_WRITETHROUGH },
		{ "directsync", BLK_CACHE_DIRECTSYNC },
		{ "unsafe", BLK_CACHE_UNSAFE },
	};
	for (size_t i = 0; s && i < sizeof(words) / sizeof(words[0]); i++) {
		if (strcmp(s, words[i].word) == 0) {
			*out = words[i].mode;
			return 0;
		}
	}
	return -1;
}

int blk_parse_aio(const char *s, enum blk_aio *out)
{
	if (s && strcmp(s, "io_uring") == 0)
		*out = BLK_AIO_IO_URING;
	else if (s && strcmp(s, "threads") == 0)
		*out = BLK_AIO_THREADS;
	else
		return -1;
	return 0;
}
