/* The block layer: a device front end (virtio-blk) submits requests to a
 * `struct blk`, which runs them through a format driver (raw today, qcow2
 * next) over an async file engine (io_uring, or a thread pool).
 *
 * Completions are delivered on the thread that calls blk_poll(): the
 * device's I/O thread watches blk_event_fd() in its loop and calls
 * blk_poll() when it is readable. So request submission and completion for
 * one `struct blk` happen on one thread; only blk_open/blk_close are
 * setup-time calls. */
#ifndef KESTREL_BLOCK_H
#define KESTREL_BLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

enum blk_cache {
	BLK_CACHE_WRITEBACK,    /* host page cache; FLUSH -> fdatasync (default) */
	BLK_CACHE_NONE,         /* O_DIRECT; FLUSH -> fdatasync */
	BLK_CACHE_WRITETHROUGH, /* host page cache; every write followed by fdatasync */
	BLK_CACHE_DIRECTSYNC,   /* O_DIRECT and every write synced */
	BLK_CACHE_UNSAFE,       /* host page cache; FLUSH ignored */
};

enum blk_aio {
	BLK_AIO_IO_URING,       /* default where the kernel allows it */
	BLK_AIO_THREADS,        /* worker threads doing preadv/pwritev */
};

struct blk_options {
	const char *path;
	const char *format;     /* "raw" (NULL = raw) */
	bool readonly;
	enum blk_cache cache;
	enum blk_aio aio;
	bool snapshot;          /* writes go to a throwaway overlay */
};

enum blk_op {
	BLK_OP_READ,
	BLK_OP_WRITE,
	BLK_OP_FLUSH,
	BLK_OP_DISCARD,
	BLK_OP_WRITE_ZEROES,
};

struct blk_req;
/* `result` is 0 or -errno. Called from blk_poll() (or from blk_submit()
 * itself when the request fails before it is queued). */
typedef void (*blk_done_fn)(struct blk_req *req, int result);

struct blk_req {
	enum blk_op op;
	uint64_t offset;        /* bytes; sector-aligned for READ/WRITE */
	uint64_t len;           /* bytes, for DISCARD/WRITE_ZEROES (READ/WRITE: sum of iov) */
	const struct iovec *iov; /* host memory, owned by the caller until done */
	int iovcnt;
	blk_done_fn done;
	void *opaque;           /* the caller's */
	/* private to the block layer */
	void *priv[4];
};

struct blk;

/* Opens an image. Takes an OFD lock (shared for readonly, exclusive for
 * read-write) so two VMs cannot write one image; when another process
 * holds it, the error names the file and the holder's PID if known.
 * Returns NULL with a one-line reason in `err`. */
struct blk *blk_open(const struct blk_options *opts, char *err, size_t errlen);
void blk_close(struct blk *b);

uint64_t blk_size(const struct blk *b);          /* bytes */
bool blk_readonly(const struct blk *b);
bool blk_can_discard(const struct blk *b);       /* hole punching works */
uint32_t blk_alignment(const struct blk *b);     /* required buffer/offset alignment (O_DIRECT) */

/* Queues a request. Returns 0 (done() will be called exactly once, from
 * blk_poll()) or -errno (rejected; done() is not called): -EROFS for writes
 * to a read-only image, -EINVAL for ranges past the end. */
int blk_submit(struct blk *b, struct blk_req *req);

/* Batching, for a device that drains a queue: between blk_plug() and
 * blk_unplug(), blk_submit() may hold requests back, and blk_unplug()
 * starts them together (one io_uring_enter for the lot instead of one per
 * request). Pairs nest; call them on the submitting thread. blk_poll()
 * already batches what its callbacks submit. */
void blk_plug(struct blk *b);
void blk_unplug(struct blk *b);

/* An fd that becomes readable when completions are waiting. */
int blk_event_fd(const struct blk *b);
/* Runs the done() callbacks of finished requests. Returns how many. */
int blk_poll(struct blk *b);

/* Parses QEMU's cache=/aio= words. Return 0 or -1. */
int blk_parse_cache(const char *s, enum blk_cache *out);
int blk_parse_aio(const char *s, enum blk_aio *out);

#endif
