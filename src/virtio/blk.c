/* virtio-blk (virtio 1.2 section 5.2) over the block layer. Requests are
 * parsed from each chain with arbitrary framing (header, data and status
 * may share or split descriptors), checked, and submitted asynchronously;
 * completions run on the same I/O thread and return the chain. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "block/block.h"
#include "core/device.h"
#include "core/iothread.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/vm.h"
#include "virtio/devices.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"

#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_TOPOLOGY     10
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VBLK_QUEUE_SIZE  256
#define VBLK_SEG_MAX     (VBLK_QUEUE_SIZE - 2) /* header and status take two */
#define VBLK_MAX_DISCARD_SEG 1
#define VBLK_MAX_SECTORS (1u << 22)            /* 2 GiB per discard/zeroes */
#define VBLK_CONFIG_SIZE 0x3c
#define SECTOR 512ULL

struct vblk;

struct vblk_req {
	struct blk_req breq;
	struct vblk *dev;
	unsigned q;
	uint16_t head;
	uint32_t written;          /* bytes written into the chain */
	uint8_t *status;           /* host pointer to the status byte */
	unsigned generation;
	bool in_use;
	int niov;
	struct iovec iov[VBLK_SEG_MAX + 2];
};

struct vblk {
	struct vm *vm;
	struct virtio_dev vdev;
	struct blk *blk;
	void *transport;
	enum virtio_transport_kind transport_kind;
	struct iothread iothread;
	bool has_iothread;
	struct loop *loop;
	char name[32];
	char serial[CONFIG_DISK_SERIAL_MAX + 1];
	uint64_t capacity;         /* sectors */
	unsigned generation;       /* bumped by reset: stale completions are dropped */
	unsigned inflight;
	struct vblk_req *reqs;     /* nr_queues * VBLK_QUEUE_SIZE */
	struct virtq_chain chain;  /* scratch for virtq_pop (large) */
};

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static void vblk_config_read(struct virtio_dev *vdev, unsigned off, void *data, unsigned len)
{
	struct vblk *b = vdev->priv;
	uint8_t c[VBLK_CONFIG_SIZE] = { 0 };
	put64(c + 0x00, b->capacity);
	put32(c + 0x0c, VBLK_SEG_MAX);
	/* 512-byte logical blocks whatever the host: the disk's geometry must
	 * not change with where the image lives (vblk_create makes sure the
	 * host accepts 512-byte I/O). */
	put32(c + 0x14, (uint32_t)SECTOR);           /* blk_size */
	c[0x18] = 3;                                 /* physical block = 4 KiB */
	put16(c + 0x1a, 4096 / SECTOR);              /* min_io_size, in logical blocks */
	put32(c + 0x1c, 0);                          /* opt_io_size: none */
	put16(c + 0x22, (uint16_t)vdev->nr_queues);
	put32(c + 0x24, VBLK_MAX_SECTORS);           /* max_discard_sectors */
	put32(c + 0x28, VBLK_MAX_DISCARD_SEG);
	put32(c + 0x2c, 8);                          /* discard alignment: 4 KiB */
	put32(c + 0x30, VBLK_MAX_SECTORS);           /* max_write_zeroes_sectors */
	put32(c + 0x34, VBLK_MAX_DISCARD_SEG);
	c[0x38] = 1;                                 /* write_zeroes may unmap */
	memcpy(data, c + off, len);
}

/* Completion: on the I/O thread with vdev->lock held (from blk_poll). */
static void vblk_complete(struct vblk_req *r, uint8_t status)
{
	struct vblk *b = r->dev;
	r->in_use = false;
	b->inflight--;
	if (r->generation != b->generation)
		return; /* the device was reset meanwhile: the chain is gone */
	*r->status = status;
	virtq_push(&b->vdev.queues[r->q].vq, r->head, r->written + 1);
	virtio_queue_notify_guest(&b->vdev, r->q);
}

static void vblk_done(struct blk_req *breq, int result)
{
	struct vblk_req *r = breq->opaque;
	if (result < 0) {
		r->written = 0;
		log_debug("%s: request failed: %s", r->dev->name, strerror(-result));
	}
	vblk_complete(r, result < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK);
}

/* Collects `len` bytes of buffers starting `skip` bytes into the chain's
 * readable (in == false) or writable part as an iovec list. Returns the
 * number of iovecs, or -1 if they do not fit. */
static int chain_slice(const struct virtq_chain *c, bool in, uint64_t skip, uint64_t len,
		       struct iovec *iov, int max)
{
	unsigned first = in ? c->nr_out : 0, end = in ? c->nr_out + c->nr_in : c->nr_out;
	int n = 0;
	for (unsigned i = first; i < end && len > 0; i++) {
		uint64_t l = c->iov[i].len;
		if (skip >= l) {
			skip -= l;
			continue;
		}
		uint64_t take = l - skip < len ? l - skip : len;
		if (n == max)
			return -1;
		iov[n].iov_base = (uint8_t *)c->iov[i].base + skip;
		iov[n].iov_len = take;
		n++;
		len -= take;
		skip = 0;
	}
	return len ? -1 : n;
}

static struct vblk_req *vblk_alloc_req(struct vblk *b, unsigned q)
{
	struct vblk_req *pool = &b->reqs[(size_t)q * VBLK_QUEUE_SIZE];
	for (unsigned i = 0; i < VBLK_QUEUE_SIZE; i++)
		if (!pool[i].in_use)
			return &pool[i];
	return NULL; /* cannot happen: at most queue-size chains are in flight */
}

/* Handles one chain. Returns false if the request could not even report a
 * status (no writable status byte): the chain is returned with length 0. */
static bool vblk_handle(struct vblk *b, unsigned q, const struct virtq_chain *c)
{
	struct {
		uint32_t type, reserved;
		uint64_t sector;
	} hdr;
	if (c->out_len < sizeof(hdr) || c->in_len < 1 || !c->nr_in)
		return false;
	virtq_copy_from_out(c, 0, &hdr, sizeof(hdr));
	/* The status byte is the chain's last writable byte. */
	const struct virtq_iov *last = &c->iov[c->nr_out + c->nr_in - 1];
	if (last->len == 0)
		return false;
	struct vblk_req *r = vblk_alloc_req(b, q);
	if (!r)
		return false;
	memset(&r->breq, 0, sizeof(r->breq));
	r->dev = b;
	r->q = q;
	r->head = c->head;
	r->status = (uint8_t *)last->base + last->len - 1;
	r->written = 0;
	r->generation = b->generation;
	r->in_use = true;
	b->inflight++;

	uint64_t data_out = c->out_len - sizeof(hdr); /* readable payload */
	uint64_t data_in = c->in_len - 1;              /* writable payload */
	struct blk_req *br = &r->breq;
	br->done = vblk_done;
	br->opaque = r;
	bool ro = blk_readonly(b->blk);
	switch (hdr.type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT: {
		bool in = hdr.type == VIRTIO_BLK_T_IN;
		uint64_t len = in ? data_in : data_out;
		if (len % SECTOR || hdr.sector > b->capacity || len / SECTOR > b->capacity - hdr.sector ||
		    (!in && ro)) {
			vblk_complete(r, VIRTIO_BLK_S_IOERR);
			return true;
		}
		if (len == 0) {
			vblk_complete(r, VIRTIO_BLK_S_OK);
			return true;
		}
		r->niov = chain_slice(c, in, in ? 0 : sizeof(hdr), len, r->iov, VBLK_SEG_MAX);
		if (r->niov < 0) {
			vblk_complete(r, VIRTIO_BLK_S_IOERR);
			return true;
		}
		br->op = in ? BLK_OP_READ : BLK_OP_WRITE;
		br->offset = hdr.sector * SECTOR;
		br->len = len;
		br->iov = r->iov;
		br->iovcnt = r->niov;
		if (in)
			r->written = (uint32_t)len;
		break;
	}
	case VIRTIO_BLK_T_FLUSH:
		br->op = BLK_OP_FLUSH;
		break;
	case VIRTIO_BLK_T_GET_ID: {
		char id[20] = { 0 };
		memcpy(id, b->serial, strnlen(b->serial, sizeof(id))); /* not NUL-terminated at 20 */
		size_t n = data_in < sizeof(id) ? data_in : sizeof(id);
		struct iovec tmp[VBLK_SEG_MAX];
		int k = chain_slice(c, true, 0, n, tmp, VBLK_SEG_MAX);
		size_t done = 0;
		for (int i = 0; i < k; i++) {
			memcpy(tmp[i].iov_base, id + done, tmp[i].iov_len);
			done += tmp[i].iov_len;
		}
		r->written = (uint32_t)done;
		vblk_complete(r, VIRTIO_BLK_S_OK);
		return true;
	}
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES: {
		struct {
			uint64_t sector;
			uint32_t num_sectors, flags;
		} seg;
		/* One segment per request (max_discard_seg = 1). */
		if (data_out != sizeof(seg) || ro) {
			vblk_complete(r, ro ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_UNSUPP);
			return true;
		}
		virtq_copy_from_out(c, sizeof(hdr), &seg, sizeof(seg));
		bool zeroes = hdr.type == VIRTIO_BLK_T_WRITE_ZEROES;
		/* Unknown flags (and unmap on a discard) are UNSUPP by the spec;
		 * a range outside the disk is an I/O error, as for reads. */
		if (seg.flags & ~(zeroes ? 1u : 0u)) {
			vblk_complete(r, VIRTIO_BLK_S_UNSUPP);
			return true;
		}
		if (seg.num_sectors > VBLK_MAX_SECTORS || seg.sector > b->capacity ||
		    seg.num_sectors > b->capacity - seg.sector) {
			vblk_complete(r, VIRTIO_BLK_S_IOERR);
			return true;
		}
		br->op = zeroes ? BLK_OP_WRITE_ZEROES : BLK_OP_DISCARD;
		br->offset = seg.sector * SECTOR;
		br->len = (uint64_t)seg.num_sectors * SECTOR;
		break;
	}
	default:
		vblk_complete(r, VIRTIO_BLK_S_UNSUPP);
		return true;
	}
	int ret = blk_submit(b->blk, br);
	if (ret) {
		r->written = 0;
		vblk_complete(r, VIRTIO_BLK_S_IOERR);
	}
	return true;
}

static void vblk_queue_notify(struct virtio_dev *vdev, unsigned q)
{
	struct vblk *b = vdev->priv;
	struct virtq *vq = &vdev->queues[q].vq;
	/* Batch: everything this kick makes available enters the kernel in
	 * one io_uring submission. */
	blk_plug(b->blk);
	for (;;) {
		/* Suppress kicks while draining; re-enable and re-check at the
		 * end so a buffer made available meanwhile is not missed. */
		virtq_enable_notify(vq, false);
		for (;;) {
			enum virtq_pop_result res = virtq_pop(vq, &b->chain);
			if (res == VIRTQ_EMPTY)
				break;
			if (res == VIRTQ_BAD_RING) {
				virtio_dev_needs_reset(vdev, "available ring is corrupt");
				blk_unplug(b->blk);
				return;
			}
			if (res == VIRTQ_BAD_CHAIN || !vblk_handle(b, q, &b->chain)) {
				vdev->bad_requests++;
				log_debug("%s: malformed request (head %u) failed", b->name, b->chain.head);
				virtq_push(vq, b->chain.head, 0);
				virtio_queue_notify_guest(vdev, q);
			}
		}
		if (!virtq_enable_notify(vq, true))
			break;
	}
	blk_unplug(b->blk);
}

/* blk completions are waiting (I/O thread). */
static void vblk_on_completion(void *opaque, uint32_t events)
{
	struct vblk *b = opaque;
	(void)events;
	pthread_mutex_lock(&b->vdev.lock);
	blk_poll(b->blk);
	pthread_mutex_unlock(&b->vdev.lock);
}

/* Reset (lock held): wait for in-flight requests, so no read lands in
 * guest memory after the driver believes the device is quiet. Holding the
 * lock keeps the I/O thread out, so polling here is single-threaded. */
static void vblk_reset(struct virtio_dev *vdev)
{
	struct vblk *b = vdev->priv;
	b->generation++;
	while (b->inflight > 0) {
		if (blk_poll(b->blk) == 0)
			usleep(100);
	}
}

static const struct virtio_device_ops vblk_ops = {
	.name = "virtio-blk",
	.device_id = VIRTIO_ID_BLOCK,
	.pci_class = 0x018000,
	.queue_notify = vblk_queue_notify,
	.config_read = vblk_config_read,
	.reset = vblk_reset,
};

static void vblk_free(struct vblk *b)
{
	if (b->blk)
		blk_close(b->blk);
	free(b->reqs);
	free(b);
}

static int vblk_create(struct vm *vm, const void *arg, void **state)
{
	const struct disk_config *dc = arg;
	struct vblk *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->vm = vm;
	snprintf(b->name, sizeof(b->name), "virtio-blk%u", vm->nr_blk++);
	snprintf(b->serial, sizeof(b->serial), "%s", dc->serial);
	struct blk_options bo = {
		.path = dc->path, .format = dc->format, .readonly = dc->readonly,
		.cache = dc->cache, .aio = dc->aio, .snapshot = dc->snapshot,
	};
	char err[PATH_MAX + 256];
	b->blk = blk_open(&bo, err, sizeof(err));
	if (!b->blk) {
		log_err("--disk: %s", err);
		free(b);
		return -EIO;
	}
	if (blk_alignment(b->blk) > SECTOR) {
		/* O_DIRECT here needs larger alignment than the guest's 512-byte
		 * sectors; keep the guest's view and give up the page-cache
		 * bypass, not the flush guarantees. */
		log_warn("--disk %s: direct I/O on this filesystem needs %u-byte alignment; "
			 "using the host page cache (cache=%s) instead", dc->path, blk_alignment(b->blk),
			 dc->cache == BLK_CACHE_DIRECTSYNC ? "writethrough" : "writeback");
		blk_close(b->blk);
		bo.cache = dc->cache == BLK_CACHE_DIRECTSYNC ? BLK_CACHE_WRITETHROUGH : BLK_CACHE_WRITEBACK;
		b->blk = blk_open(&bo, err, sizeof(err));
		if (!b->blk) {
			log_err("--disk: %s", err);
			free(b);
			return -EIO;
		}
	}
	b->capacity = blk_size(b->blk) / SECTOR;
	b->reqs = calloc((size_t)dc->num_queues * VBLK_QUEUE_SIZE, sizeof(*b->reqs));
	if (!b->reqs)
		goto fail;
	b->loop = vm->loop;
	if (dc->iothread) {
		if (iothread_init(&b->iothread, b->name)) {
			log_err("%s: cannot create its I/O thread", b->name);
			goto fail;
		}
		b->has_iothread = true;
		b->loop = b->iothread.loop;
	}
	uint64_t features = VIRTIO_BIT(VIRTIO_BLK_F_SEG_MAX) | VIRTIO_BIT(VIRTIO_BLK_F_BLK_SIZE) |
			    VIRTIO_BIT(VIRTIO_BLK_F_FLUSH) | VIRTIO_BIT(VIRTIO_BLK_F_TOPOLOGY);
	if (dc->num_queues > 1)
		features |= VIRTIO_BIT(VIRTIO_BLK_F_MQ);
	if (blk_readonly(b->blk))
		features |= VIRTIO_BIT(VIRTIO_BLK_F_RO);
	else
		features |= VIRTIO_BIT(VIRTIO_BLK_F_WRITE_ZEROES) |
			    (blk_can_discard(b->blk) ? VIRTIO_BIT(VIRTIO_BLK_F_DISCARD) : 0);
	if (virtio_dev_init(&b->vdev, vm, &vblk_ops, b, b->name, features, dc->num_queues, VBLK_QUEUE_SIZE,
			    VBLK_CONFIG_SIZE, b->loop))
		goto fail_thread;
	if (loop_add(b->loop, blk_event_fd(b->blk), EPOLLIN, vblk_on_completion, b))
		goto fail_vdev;
	b->transport_kind = dc->transport;
	b->transport = virtio_transport_add(vm, &b->vdev, dc->transport);
	if (!b->transport)
		goto fail_loop;
	if (b->has_iothread && iothread_start(&b->iothread)) {
		log_err("%s: cannot start its I/O thread", b->name);
		goto fail_transport;
	}
	static const char *const cache_names[] = { "writeback", "none", "writethrough", "directsync", "unsafe" };
	log_info("%s: '%s', %llu sectors%s%s, cache=%s", b->name, dc->path, (unsigned long long)b->capacity,
		 blk_readonly(b->blk) ? ", read-only" : "", dc->snapshot ? ", snapshot" : "",
		 (unsigned)bo.cache < 5 ? cache_names[bo.cache] : "?");
	*state = b;
	return 0;
fail_transport:
	virtio_transport_remove(vm, b->transport_kind, b->transport);
fail_loop:
	loop_remove(b->loop, blk_event_fd(b->blk));
fail_vdev:
	virtio_dev_destroy(&b->vdev);
fail_thread:
	if (b->has_iothread)
		iothread_destroy(&b->iothread);
fail:
	vblk_free(b);
	return -EIO;
}

static void vblk_destroy(struct vm *vm, void *state)
{
	struct vblk *b = state;
	/* Stop the I/O thread first: nothing may run the queues after this.
	 * Its loop lives on until the fds are removed from it. */
	if (b->has_iothread)
		iothread_stop(&b->iothread);
	pthread_mutex_lock(&b->vdev.lock);
	vblk_reset(&b->vdev);
	pthread_mutex_unlock(&b->vdev.lock);
	virtio_transport_remove(vm, b->transport_kind, b->transport);
	loop_remove(b->loop, blk_event_fd(b->blk));
	virtio_dev_destroy(&b->vdev);
	if (b->has_iothread)
		iothread_destroy(&b->iothread);
	vblk_free(b);
}

const struct device_ops virtio_blk_device_ops = {
	.name = "virtio-blk",
	.create = vblk_create,
	.destroy = vblk_destroy,
};
