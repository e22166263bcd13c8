/* Block layer internals, shared by the files in src/block only.
 *
 * Layering, top to bottom:
 *
 *   struct blk (block.c)   options, image locking, request validation,
 *                          O_DIRECT bounce buffers, completion counting
 *   struct blk_node        a request processor speaking struct blk_req:
 *                          the format driver (raw.c; qcow2 next), with the
 *                          snapshot overlay (snapshot.c) stacked on top of
 *                          it when snapshot=on
 *   struct blk_file        an open image or overlay file (file.c)
 *   struct blk_engine      the async syscall engine shared by every file of
 *                          one blk: io_uring (file_uring.c) or a thread
 *                          pool (file_threads.c); owns the event fd
 *
 * Everything above the engine runs on the one thread that calls
 * blk_submit()/blk_poll(). Only the thread pool's workers run elsewhere, and
 * they touch nothing but the syscall arguments in their struct blk_fio and
 * the engine's locked queues. */
#ifndef KESTREL_BLOCK_INT_H
#define KESTREL_BLOCK_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "block/block.h"

#define BLK_SECTOR 512u

#ifndef container_of
#define container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr) - offsetof(type, member)))
#endif

/* ---- file engine ---------------------------------------------------- */

enum blk_fio_op {
	BLK_FIO_READ,
	BLK_FIO_WRITE,
	BLK_FIO_DATASYNC,
	BLK_FIO_PUNCH,          /* fallocate(PUNCH_HOLE | KEEP_SIZE) */
	BLK_FIO_ZERO_RANGE,     /* fallocate(ZERO_RANGE | KEEP_SIZE) */
};

struct blk_fio;
/* `result` is 0 or -errno; a READ/WRITE reports 0 only once every byte was
 * transferred (a read that hits end of file reads zeros beyond it). */
typedef void (*blk_fio_done_fn)(struct blk_fio *f, int result);

/* One syscall-level operation. Callers embed it in their own context and
 * recover that with container_of() in done(). */
struct blk_fio {
	enum blk_fio_op op;
	int fd;
	uint64_t offset;
	uint64_t len;               /* READ/WRITE: sum of iov */
	const struct iovec *iov;
	int iovcnt;
	blk_fio_done_fn done;
	/* private to the engine */
	uint64_t xfered;            /* READ/WRITE progress across short transfers */
	struct iovec *rest;         /* remainder after a short transfer (malloc'd) */
	int restcnt;
	int result;
	struct blk_fio *next;
};

struct blk_engine;

struct blk_engine_ops {
	const char *name;
	/* Starts `f`. Never fails synchronously: errors arrive through done(). */
	void (*submit)(struct blk_engine *e, struct blk_fio *f);
	/* Moves every finished fio to the ready list with blk_engine_finish(),
	 * restarting short transfers. Called only by blk_engine_poll(), with
	 * the engine plugged. */
	void (*reap)(struct blk_engine *e);
	/* Starts whatever submit() queued while the engine was plugged
	 * (optional). */
	void (*unplug)(struct blk_engine *e);
	/* Frees the engine. Nothing may be in flight. */
	void (*destroy)(struct blk_engine *e);
};

struct blk_engine {
	const struct blk_engine_ops *ops;
	int event_fd;               /* EFD_NONBLOCK; readable when ready/reap has work */
	unsigned inflight;          /* submitted, done() not yet called */
	unsigned plugged;           /* nesting depth; while >0 submit() may defer the syscall */
	struct blk_fio *ready;      /* finished, done() pending; poll thread only */
	struct blk_fio **ready_tail;
};

/* Creates an io_uring engine with room for `depth` requests in the ring
 * (more are queued internally). NULL with the reason in `err` when the
 * kernel refuses (old kernel, seccomp, missing opcodes). */
struct blk_engine *blk_uring_create(unsigned depth, char *err, size_t errlen);
/* Creates a thread-pool engine; workers are started on demand. */
struct blk_engine *blk_threads_create(char *err, size_t errlen);

/* Common engine plumbing (file.c). */
void blk_engine_init(struct blk_engine *e, const struct blk_engine_ops *ops, int event_fd);
void blk_engine_submit(struct blk_engine *e, struct blk_fio *f);
/* Queues `f` to complete with `result` from the next blk_engine_poll():
 * how layers finish work that needs no syscall without calling done()
 * from inside a submit. */
void blk_engine_complete_later(struct blk_engine *e, struct blk_fio *f, int result);
/* For backends: `f` finished with `result`; queues its done() call. */
void blk_engine_finish(struct blk_engine *e, struct blk_fio *f, int result);
void blk_engine_kick(struct blk_engine *e);
/* Plugging: while plugged, submissions may be held back; the outermost
 * unplug starts them in one batch. */
void blk_engine_plug(struct blk_engine *e);
void blk_engine_unplug(struct blk_engine *e);
/* Drains the event fd, reaps, and runs the done() of every fio that was
 * ready when it started (ones finishing meanwhile re-arm the event fd).
 * Work submitted by those callbacks is started in one batch at the end.
 * Returns how many ran. */
int blk_engine_poll(struct blk_engine *e);
void blk_engine_destroy(struct blk_engine *e);

/* Accounts a READ/WRITE transfer of `res` bytes (or -errno). Returns true
 * when bytes remain; the remainder is then described by blk_fio_cur().
 * Returns false when the fio is finished, with its result in *result. */
bool blk_fio_progress(struct blk_fio *f, ssize_t res, int *result);
/* The iovec and file offset still to be transferred. */
void blk_fio_cur(const struct blk_fio *f, const struct iovec **iov, int *iovcnt, uint64_t *offset);
/* Runs `f` synchronously with plain syscalls; returns its result. Used by
 * worker threads. */
int blk_fio_run_sync(struct blk_fio *f);

/* ---- files ---------------------------------------------------------- */

struct blk_file {
	int fd;
	struct blk_engine *eng;
	uint64_t size;              /* usable bytes: a multiple of 512 */
	bool readonly;
	bool direct;                /* O_DIRECT */
	bool dsync;                 /* O_DSYNC: fallocate must be followed by fdatasync */
	bool unsafe;                /* FLUSH does nothing */
	bool is_bdev;
	bool can_punch;             /* cleared when the kernel says EOPNOTSUPP */
	bool can_zero_range;        /* likewise */
	uint32_t mem_align;         /* O_DIRECT buffer address alignment */
	uint32_t off_align;         /* O_DIRECT offset and segment length alignment */
	dev_t dev;
	ino_t ino;
};

/* Opens an image file (regular file or block device) with the open flags
 * the cache mode implies. NULL with "'path': reason" in `err`. */
struct blk_file *blk_file_open(const char *path, bool readonly, enum blk_cache cache,
			       struct blk_engine *eng, char *err, size_t errlen);
/* Creates an unlinked, sparse scratch file of `size` bytes for an overlay:
 * O_TMPFILE in $TMPDIR or /var/tmp, then in `fallback_dir`. Buffered and
 * never synced: its contents die with the process. */
struct blk_file *blk_file_scratch(const char *fallback_dir, uint64_t size,
				  struct blk_engine *eng, char *err, size_t errlen);
void blk_file_close(struct blk_file *f);

/* ---- nodes (format drivers and the snapshot overlay) ------------------ */

struct blk_node;

struct blk_node_ops {
	/* Same contract as blk_submit(), minus validation: the request is
	 * within the node's size and allowed. Returns 0 (done() will run from
	 * the engine's poll, never from inside submit) or -errno (done() will
	 * not run). A node may use req->priv[3] of the requests it receives;
	 * priv[0..2] belong to the front end. */
	int (*submit)(struct blk_node *n, struct blk_req *req);
	/* Frees the node; nothing may be in flight. */
	void (*close)(struct blk_node *n);
};

struct blk_node {
	const struct blk_node_ops *ops;
	uint64_t size;
	bool can_discard;
};

struct blk_format_ops {
	const char *name;
	/* Builds the format's node over an already opened and locked file,
	 * which stays owned by the caller and outlives the node. */
	struct blk_node *(*open)(struct blk_file *file, char *err, size_t errlen);
};

extern const struct blk_format_ops blk_format_raw;

/* Stacks a throwaway copy-on-write overlay over `lower` (which it takes
 * ownership of). `image_path` locates a fallback directory for the
 * scratch file. */
struct blk_node *blk_snapshot_open(struct blk_node *lower, struct blk_engine *eng,
				   const char *image_path, char *err, size_t errlen);

#endif
