/* virtio-net against a fake driver (rings in fake guest RAM, as in
 * test_virtqueue.c) and a fake backend that records what is sent and
 * serves queued frames: headers, offload negotiation, mergeable receive
 * buffers, hostile chains, the control queue, rate limiting, reset,
 * multiqueue mapping and the vhost-net fallback. The device's loop runs
 * on the test thread (pump()). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <linux/vhost.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/vm.h"
#include "net/net.h"
#include "net/vhost_net.h"
#include "virtio/net.h"
#include "virtio/virtio.h"

#define MiB (1024ull * 1024)
#define RAM_SIZE (16 * MiB)
#define DATA_BASE (1 * MiB)

/* Feature bits (virtio 1.2 5.1.3) */
#define F_CSUM          0
#define F_GUEST_CSUM    1
#define F_CTRL_GUEST_OFFLOADS 2
#define F_MTU           3
#define F_MAC           5
#define F_GUEST_TSO4    7
#define F_GUEST_TSO6    8
#define F_GUEST_ECN     9
#define F_GUEST_UFO     10
#define F_HOST_TSO4     11
#define F_HOST_TSO6     12
#define F_HOST_ECN      13
#define F_HOST_UFO      14
#define F_MRG_RXBUF     15
#define F_STATUS        16
#define F_CTRL_VQ       17
#define F_CTRL_RX       18
#define F_MQ            22
#define F_CTRL_MAC_ADDR 23
#define B(x) VIRTIO_BIT(x)

#define D_NEXT  1
#define D_WRITE 2
#define D_IND   4

/* ---- the fake backend ---------------------------------------------------- */

#define MAX_SENT 64
#define MAX_RXQ 64

struct sent_frame {
	unsigned q;
	size_t len;                  /* header included */
	uint8_t data[2048];          /* the first bytes */
	int iovcnt;
	const void *base1;           /* iov[1].iov_base: zero copy check */
};

struct fake_be {
	struct net_backend be;
	unsigned nsent;
	struct sent_frame sent[MAX_SENT];
	int send_ret;
	struct {
		size_t len;
		uint8_t *data;
	} rx[NET_MAX_QUEUES][MAX_RXQ];
	unsigned rx_head[NET_MAX_QUEUES], rx_tail[NET_MAX_QUEUES];
	bool rx_on[NET_MAX_QUEUES];
	unsigned rx_notify_calls;
	unsigned offloads_set;
	int set_offloads_calls;
	int tap;
	bool destroyed;
};

static int fb_send(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt)
{
	struct fake_be *f = (struct fake_be *)be;
	if (f->send_ret)
		return f->send_ret;
	assert_true(f->nsent < MAX_SENT);
	struct sent_frame *s = &f->sent[f->nsent++];
	s->q = q;
	s->len = 0;
	s->iovcnt = iovcnt;
	s->base1 = iovcnt > 1 ? iov[1].iov_base : NULL;
	for (int i = 0; i < iovcnt; i++) {
		size_t room = s->len < sizeof(s->data) ? sizeof(s->data) - s->len : 0;
		memcpy(s->data + s->len, iov[i].iov_base, iov[i].iov_len < room ? iov[i].iov_len : room);
		s->len += iov[i].iov_len;
	}
	return 0;
}

static ssize_t fb_recv(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt)
{
	struct fake_be *f = (struct fake_be *)be;
	assert_true(f->rx_on[q] || true);
	if (f->rx_head[q] == f->rx_tail[q])
		return 0;
	size_t room = 0;
	for (int i = 0; i < iovcnt; i++)
		room += iov[i].iov_len;
	size_t len = f->rx[q][f->rx_head[q] % MAX_RXQ].len;
	uint8_t *data = f->rx[q][f->rx_head[q] % MAX_RXQ].data;
	f->rx_head[q]++;
	if (len > room) {
		free(data);
		return -EMSGSIZE;
	}
	size_t done = 0;
	for (int i = 0; i < iovcnt && done < len; i++) {
		size_t k = iov[i].iov_len < len - done ? iov[i].iov_len : len - done;
		memcpy(iov[i].iov_base, data + done, k);
		done += k;
	}
	free(data);
	return (ssize_t)len;
}

static void fb_rx_notify(struct net_backend *be, unsigned q, bool on)
{
	struct fake_be *f = (struct fake_be *)be;
	f->rx_on[q] = on;
	f->rx_notify_calls++;
}

static int fb_set_offloads(struct net_backend *be, unsigned offloads)
{
	struct fake_be *f = (struct fake_be *)be;
	f->offloads_set = offloads;
	f->set_offloads_calls++;
	return 0;
}

static int fb_tap_fd(struct net_backend *be, unsigned q)
{
	(void)q;
	return ((struct fake_be *)be)->tap;
}

static void fb_destroy(struct net_backend *be)
{
	struct fake_be *f = (struct fake_be *)be;
	f->destroyed = true;
	for (unsigned q = 0; q < NET_MAX_QUEUES; q++)
		while (f->rx_head[q] != f->rx_tail[q])
			free(f->rx[q][f->rx_head[q]++ % MAX_RXQ].data);
}

static const struct net_backend_ops fb_ops = {
	.name = "fake", .send = fb_send, .recv = fb_recv, .rx_notify = fb_rx_notify,
	.set_offloads = fb_set_offloads, .tap_fd = fb_tap_fd, .destroy = fb_destroy,
};

/* ---- fake vhost kernel (only what the device path needs) ---------------- */

static struct {
	int open_errno;
	unsigned opens, closes, set_backend_on, set_backend_off, get_base;
	int call_fd[2];
} vk;

static int vk_open(const char *path, int flags)
{
	(void)path;
	(void)flags;
	if (vk.open_errno) {
		errno = vk.open_errno;
		return -1;
	}
	vk.opens++;
	return 900 + (int)vk.opens;
}

static int vk_ioctl(int fd, unsigned long req, void *arg)
{
	(void)fd;
	if (req == VHOST_GET_FEATURES)
		*(uint64_t *)arg = ~0ull;
	if (req == VHOST_NET_SET_BACKEND) {
		if (((struct vhost_vring_file *)arg)->fd >= 0)
			vk.set_backend_on++;
		else
			vk.set_backend_off++;
	}
	if (req == VHOST_SET_VRING_CALL) {
		struct vhost_vring_file *f = arg;
		vk.call_fd[f->index & 1] = f->fd;
	}
	if (req == VHOST_GET_VRING_BASE) {
		vk.get_base++;
		((struct vhost_vring_state *)arg)->num = 0;
	}
	return 0;
}

static int vk_close(int fd)
{
	(void)fd;
	vk.closes++;
	return 0;
}

static const struct vhost_io vk_io = { vk_open, vk_ioctl, vk_close };

/* ---- fixture -------------------------------------------------------------- */

struct drv_q {
	uint16_t size;
	uint16_t avail;              /* the driver's avail->idx */
	uint16_t next_desc;
	uint64_t desc, avail_gpa, used;
};

static struct {
	struct vm vm;
	struct loop *loop;
	uint8_t *ram;
	struct net_config nc;
	struct fake_be fb;
	void *dev;
	struct virtio_dev *vdev;
	struct drv_q q[2 * NET_MAX_QUEUES + 1];
	uint64_t bump;
	unsigned notifies[2 * NET_MAX_QUEUES + 1];
	unsigned config_notifies;
} F;

static void t_notify_queue(struct virtio_dev *v, unsigned q)
{
	(void)v;
	F.notifies[q]++;
}

static void t_notify_config(struct virtio_dev *v)
{
	(void)v;
	F.config_notifies++;
}

static const struct virtio_transport_ops fake_transport = { t_notify_queue, t_notify_config };

static void build(unsigned be_queues, unsigned want, unsigned offloads)
{
	F.fb.be.ops = &fb_ops;
	F.fb.be.nr_queues = be_queues;
	F.fb.be.offloads = offloads;
	F.nc.queues = want;
	F.dev = virtio_net_new(&F.vm, &F.nc, &F.fb.be, F.loop, &vk_io);
	assert_non_null(F.dev);
	F.vdev = virtio_net_vdev(F.dev);
	F.vdev->transport = &fake_transport;
}

static int setup_common(void)
{
	memset(&F, 0, sizeof(F));
	memset(&vk, 0, sizeof(vk));
	F.ram = aligned_alloc(4096, RAM_SIZE);
	memset(F.ram, 0, RAM_SIZE);
	assert_int_equal(guest_mem_add_region(&F.vm.mem, 0, RAM_SIZE, F.ram), 0);
	F.loop = loop_create();
	F.bump = DATA_BASE;
	F.fb.tap = -1;
	memcpy(F.nc.mac, "\x52\x54\x00\x12\x34\x56", 6);
	F.nc.vhost = NET_VHOST_OFF;
	F.nc.index = 3;
	return 0;
}

static int setup(void **state)
{
	(void)state;
	setup_common();
	build(1, 1, 0);
	return 0;
}

static int setup_offloads(void **state)
{
	(void)state;
	setup_common();
	build(1, 1, NET_OFFLOAD_CSUM | NET_OFFLOAD_TSO4 | NET_OFFLOAD_TSO6 | NET_OFFLOAD_ECN | NET_OFFLOAD_UFO);
	return 0;
}

static int setup_mq(void **state)
{
	(void)state;
	setup_common();
	build(4, 4, 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	virtio_net_free(F.dev);
	assert_true(F.fb.destroyed);
	loop_destroy(F.loop);
	free(F.ram);
	return 0;
}

/* ---- the loop --------------------------------------------------------------- */

static void quit_loop(void *opaque, uint32_t events)
{
	(void)events;
	loop_quit(opaque);
}

static void pump_ms(unsigned ms)
{
	int t = loop_timer_add(F.loop, ms * 1000000ull, 0, quit_loop, F.loop);
	assert_true(t >= 0);
	loop_run(F.loop);
	loop_timer_remove(F.loop, t);
}

static void pump(void) { pump_ms(2); }

/* ---- the fake driver ----------------------------------------------------- */

static uint8_t *g2h(uint64_t gpa, uint64_t len)
{
	uint8_t *p = guest_mem_ptr(&F.vm.mem, gpa, len);
	assert_non_null(p);
	return p;
}

static void w16(uint64_t gpa, uint16_t v) { memcpy(g2h(gpa, 2), &v, 2); }
static void w32(uint64_t gpa, uint32_t v) { memcpy(g2h(gpa, 4), &v, 4); }
static void w64(uint64_t gpa, uint64_t v) { memcpy(g2h(gpa, 8), &v, 8); }
static uint16_t r16(uint64_t gpa) { uint16_t v; memcpy(&v, g2h(gpa, 2), 2); return v; }
static uint32_t r32(uint64_t gpa) { uint32_t v; memcpy(&v, g2h(gpa, 4), 4); return v; }

static uint64_t alloc(uint64_t len)
{
	uint64_t a = F.bump;
	F.bump = (F.bump + len + 63) & ~63ull;
	assert_true(F.bump < RAM_SIZE);
	return a;
}

static void lock(void) { pthread_mutex_lock(&F.vdev->lock); }
static void unlock(void) { pthread_mutex_unlock(&F.vdev->lock); }

static void set_status(uint8_t s)
{
	lock();
	virtio_dev_set_status(F.vdev, s);
	unlock();
}

/* Negotiates `features` (+ VERSION_1), sets up every queue with `qsize`
 * entries and sets DRIVER_OK. */
static void up_size(uint64_t features, uint16_t qsize)
{
	set_status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	lock();
	F.vdev->guest_features = features | B(VIRTIO_F_VERSION_1);
	unlock();
	set_status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	assert_true(F.vdev->status & VIRTIO_STATUS_FEATURES_OK);
	for (unsigned i = 0; i < F.vdev->nr_queues; i++) {
		struct drv_q *d = &F.q[i];
		uint64_t base = 0x10000ull * (i + 1);
		*d = (struct drv_q){ .size = qsize, .desc = base, .avail_gpa = base + 0x4000, .used = base + 0x8000 };
		memset(g2h(base, 0x10000), 0, 0x10000);
		struct virtio_queue *q = &F.vdev->queues[i];
		lock();
		q->vq.size = qsize;
		q->vq.desc_gpa = d->desc;
		q->vq.avail_gpa = d->avail_gpa;
		q->vq.used_gpa = d->used;
		int r = virtio_dev_enable_queue(F.vdev, i);
		unlock();   /* before asserting: a failed assert must not leave it held */
		assert_int_equal(r, 0);
	}
	set_status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
		   VIRTIO_STATUS_DRIVER_OK);
	pump();
}

static void up(uint64_t features) { up_size(features, 256); }

struct buf {
	uint64_t gpa;
	uint32_t len;
	bool write;
};

static void desc_at(uint64_t table, unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	uint64_t d = table + 16ull * i;
	w64(d, addr);
	w32(d + 8, len);
	w16(d + 12, flags);
	w16(d + 14, next);
}

static void avail_add(unsigned qi, uint16_t head)
{
	struct drv_q *d = &F.q[qi];
	w16(d->avail_gpa + 4 + 2ull * (d->avail % d->size), head);
	d->avail++;
	w16(d->avail_gpa + 2, d->avail);
}

/* Adds a chain of `n` buffers; returns its head. */
static uint16_t add_chain(unsigned qi, const struct buf *b, unsigned n)
{
	struct drv_q *d = &F.q[qi];
	uint16_t head = d->next_desc;
	for (unsigned i = 0; i < n; i++) {
		uint16_t idx = (uint16_t)((head + i) % d->size);
		uint16_t next = (uint16_t)((head + i + 1) % d->size);
		desc_at(d->desc, idx, b[i].gpa, b[i].len, (uint16_t)((b[i].write ? D_WRITE : 0) | (i + 1 < n ? D_NEXT : 0)),
			next);
	}
	d->next_desc = (uint16_t)((head + n) % d->size);
	avail_add(qi, head);
	return head;
}

static void kick(unsigned qi)
{
	uint64_t one = 1;
	assert_int_equal(write(F.vdev->queues[qi].kick_fd, &one, 8), 8);
	pump();
}

static uint16_t used_idx(unsigned qi) { return r16(F.q[qi].used + 2); }
static uint32_t used_id(unsigned qi, unsigned slot) { return r32(F.q[qi].used + 4 + 8ull * (slot % F.q[qi].size)); }
static uint32_t used_len(unsigned qi, unsigned slot) { return r32(F.q[qi].used + 8 + 8ull * (slot % F.q[qi].size)); }

static uint64_t stat(atomic_uint_fast64_t *c) { return atomic_load(c); }
#define STATS ((struct net_stats *)virtio_net_stats(F.dev))

/* TX: header + frame as one readable buffer, or split at `cuts`. */
static uint16_t tx_frame(unsigned qi, const struct virtio_net_hdr_v1 *h, const uint8_t *frame, size_t len,
			 const uint32_t *cuts, unsigned ncuts)
{
	uint64_t total = NET_HDR_LEN + len;
	uint64_t a = alloc(total);
	memcpy(g2h(a, NET_HDR_LEN), h, NET_HDR_LEN);
	memcpy(g2h(a + NET_HDR_LEN, len), frame, len);
	struct buf b[8];
	unsigned n = 0;
	uint64_t at = 0;
	for (unsigned i = 0; i < ncuts; i++) {
		b[n++] = (struct buf){ a + at, (uint32_t)(cuts[i] - at), false };
		at = cuts[i];
	}
	b[n++] = (struct buf){ a + at, (uint32_t)(total - at), false };
	return add_chain(qi, b, n);
}

static void make_frame(uint8_t *f, size_t len, uint8_t seed)
{
	for (size_t i = 0; i < len; i++)
		f[i] = (uint8_t)(i * 7 + seed);
}

/* Queues a frame (zero header + frame) in the fake backend's queue q and
 * says so if the device listens. */
static void be_inject(unsigned q, size_t frame_len, uint8_t seed)
{
	struct fake_be *f = &F.fb;
	if (f->rx_tail[q] - f->rx_head[q] >= MAX_RXQ)
		return;   /* full, as a tap queue would be */
	uint8_t *d = calloc(1, NET_HDR_LEN + frame_len);
	make_frame(d + NET_HDR_LEN, frame_len, seed);
	/* a tap leaves num_buffers alone: garbage there */
	d[10] = 0xee;
	d[11] = 0xee;
	f->rx[q][f->rx_tail[q] % MAX_RXQ].len = NET_HDR_LEN + frame_len;
	f->rx[q][f->rx_tail[q] % MAX_RXQ].data = d;
	f->rx_tail[q]++;
	if (f->rx_on[q])
		f->be.rx_ready(f->be.opaque, q);
}

static unsigned be_waiting(unsigned q) { return F.fb.rx_tail[q] - F.fb.rx_head[q]; }

/* An RX buffer of `len` bytes as one writable descriptor; returns its gpa. */
static uint64_t rx_post(unsigned qi, uint32_t len)
{
	uint64_t a = alloc(len);
	struct buf b = { a, len, true };
	add_chain(qi, &b, 1);
	return a;
}

static void check_frame(const uint8_t *p, size_t len, uint8_t seed)
{
	uint8_t *want = malloc(len);
	make_frame(want, len, seed);
	assert_memory_equal(p, want, len);
	free(want);
}

/* ---- tests: negotiation and config --------------------------------------- */

static void test_features_plain(void **state)
{
	(void)state;
	uint64_t h = F.vdev->host_features;
	assert_true(h & B(F_MAC));
	assert_true(h & B(F_STATUS));
	assert_true(h & B(F_MTU));
	assert_true(h & B(F_MRG_RXBUF));
	assert_true(h & B(F_CTRL_VQ));
	assert_true(h & B(F_CTRL_RX));
	assert_true(h & B(F_CTRL_MAC_ADDR));
	assert_true(h & B(VIRTIO_F_VERSION_1));
	/* No offloads without a backend that can carry them; no MQ with one pair. */
	assert_false(h & (B(F_CSUM) | B(F_GUEST_CSUM) | B(F_HOST_TSO4) | B(F_GUEST_TSO4) | B(F_CTRL_GUEST_OFFLOADS)));
	assert_false(h & B(F_MQ));
	assert_int_equal(F.vdev->nr_queues, 3);
	assert_string_equal(F.vdev->name, "virtio-net3");
	assert_int_equal(F.vdev->ops->device_id, VIRTIO_ID_NET);
	assert_int_equal(F.vdev->ops->pci_class, 0x020000);

	uint8_t cfg[12];
	lock();
	virtio_dev_config_read(F.vdev, 0, cfg, 12);
	unlock();
	assert_memory_equal(cfg, "\x52\x54\x00\x12\x34\x56", 6);
	assert_int_equal(cfg[6] | cfg[7] << 8, 1);            /* LINK_UP */
	assert_int_equal(cfg[8] | cfg[9] << 8, 1);            /* max_virtqueue_pairs */
	assert_int_equal(cfg[10] | cfg[11] << 8, 1500);       /* mtu */
}

static void test_features_offloads(void **state)
{
	(void)state;
	uint64_t h = F.vdev->host_features;
	uint64_t all = B(F_CSUM) | B(F_GUEST_CSUM) | B(F_CTRL_GUEST_OFFLOADS) | B(F_HOST_TSO4) | B(F_HOST_TSO6) |
		       B(F_HOST_ECN) | B(F_HOST_UFO) | B(F_GUEST_TSO4) | B(F_GUEST_TSO6) | B(F_GUEST_ECN) |
		       B(F_GUEST_UFO);
	assert_int_equal(h & all, all);
}

static void test_mq_offered(void **state)
{
	(void)state;
	assert_true(F.vdev->host_features & B(F_MQ));
	assert_int_equal(F.vdev->nr_queues, 9);
	uint16_t pairs;
	lock();
	virtio_dev_config_read(F.vdev, 8, &pairs, 2);
	unlock();
	assert_int_equal(pairs, 4);
}

/* A backend with fewer queues than asked for: the device offers what it got. */
static void test_pairs_capped_by_backend(void **state)
{
	(void)state;
	virtio_net_free(F.dev);
	memset(&F.fb, 0, sizeof(F.fb));
	F.fb.tap = -1;
	build(2, 8, 0);
	assert_int_equal(F.vdev->nr_queues, 5);
}

/* Guest RX offloads reach the backend at DRIVER_OK; then and only then. */
static void test_offload_translation(void **state)
{
	(void)state;
	assert_int_equal(F.fb.set_offloads_calls, 0);
	up(B(F_CSUM) | B(F_GUEST_CSUM) | B(F_GUEST_TSO4) | B(F_GUEST_TSO6) | B(F_GUEST_ECN) | B(F_GUEST_UFO) |
	   B(F_CTRL_VQ) | B(F_CTRL_GUEST_OFFLOADS));
	assert_int_equal(F.fb.set_offloads_calls, 1);
	assert_int_equal(F.fb.offloads_set, NET_OFFLOAD_CSUM | NET_OFFLOAD_TSO4 | NET_OFFLOAD_TSO6 |
						    NET_OFFLOAD_ECN | NET_OFFLOAD_UFO);
	set_status(0);
	pump();
	/* TSO without GUEST_CSUM means nothing (the spec requires it). */
	up(B(F_GUEST_TSO4));
	assert_int_equal(F.fb.offloads_set, 0);
	set_status(0);
	pump();
	up(B(F_GUEST_CSUM) | B(F_GUEST_TSO6));
	assert_int_equal(F.fb.offloads_set, NET_OFFLOAD_CSUM | NET_OFFLOAD_TSO6);
}

/* ---- tests: TX ---------------------------------------------------------- */

static void test_tx_basic(void **state)
{
	(void)state;
	up(0);
	uint8_t frame[60];
	make_frame(frame, sizeof(frame), 1);
	struct virtio_net_hdr_v1 h = { 0 };
	uint16_t head = tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(F.fb.nsent, 1);
	assert_int_equal(F.fb.sent[0].q, 0);
	assert_int_equal(F.fb.sent[0].len, NET_HDR_LEN + 60);
	assert_memory_equal(F.fb.sent[0].data + NET_HDR_LEN, frame, 60);
	/* Zero copy: the frame is sent from guest memory. */
	assert_true((const uint8_t *)F.fb.sent[0].base1 >= F.ram &&
		    (const uint8_t *)F.fb.sent[0].base1 < F.ram + RAM_SIZE);
	assert_int_equal(used_idx(1), 1);
	assert_int_equal(used_id(1, 0), head);
	assert_int_equal(used_len(1, 0), 0);
	assert_int_equal(F.notifies[1], 1);
	assert_int_equal(stat(&STATS->tx_packets), 1);
	assert_int_equal(stat(&STATS->tx_bytes), 60);
	assert_true(stat(&STATS->doorbells) >= 1);
	assert_true(stat(&STATS->irqs) >= 1);
}

/* The header in three pieces (5 + 4 + 3 bytes, the last buffer also
 * holding the frame's start), with checksum offload negotiated: passed on
 * intact, num_buffers cleared. */
static void test_tx_header_straddles(void **state)
{
	(void)state;
	up(B(F_CSUM) | B(F_HOST_TSO4));
	uint8_t frame[200];
	make_frame(frame, sizeof(frame), 2);
	struct virtio_net_hdr_v1 h = {
		.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .gso_type = VIRTIO_NET_HDR_GSO_TCPV4, .hdr_len = 54,
		.gso_size = 1448, .csum_start = 34, .csum_offset = 16, .num_buffers = 7,
	};
	const uint32_t cuts[] = { 5, 9, 30 };
	tx_frame(1, &h, frame, sizeof(frame), cuts, 3);
	kick(1);
	assert_int_equal(F.fb.nsent, 1);
	struct virtio_net_hdr_v1 got;
	memcpy(&got, F.fb.sent[0].data, sizeof(got));
	assert_int_equal(got.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
	assert_int_equal(got.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
	assert_int_equal(got.hdr_len, 54);
	assert_int_equal(got.gso_size, 1448);
	assert_int_equal(got.csum_start, 34);
	assert_int_equal(got.csum_offset, 16);
	assert_int_equal(got.num_buffers, 0);
	assert_memory_equal(F.fb.sent[0].data + NET_HDR_LEN, frame, sizeof(frame));
	/* header + the rest of the third buffer + the fourth */
	assert_int_equal(F.fb.sent[0].iovcnt, 3);
	assert_int_equal(F.fb.sent[0].len, NET_HDR_LEN + sizeof(frame));
}

/* Without offloads negotiated the header's fields reach the backend as
 * zeros; a request for an offload that was not negotiated is dropped. */
static void test_tx_header_zeroed_without_offloads(void **state)
{
	(void)state;
	up(0);
	uint8_t frame[64];
	make_frame(frame, sizeof(frame), 3);
	struct virtio_net_hdr_v1 h = { .hdr_len = 99, .gso_size = 1000, .csum_start = 5, .csum_offset = 6,
				       .num_buffers = 3, .flags = VIRTIO_NET_HDR_F_DATA_VALID };
	tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(F.fb.nsent, 1);
	static const uint8_t zero[NET_HDR_LEN];
	assert_memory_equal(F.fb.sent[0].data, zero, NET_HDR_LEN);

	struct virtio_net_hdr_v1 bad = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = 34, .csum_offset = 16 };
	tx_frame(1, &bad, frame, sizeof(frame), NULL, 0);
	struct virtio_net_hdr_v1 gso = { .gso_type = VIRTIO_NET_HDR_GSO_TCPV4, .gso_size = 1448 };
	tx_frame(1, &gso, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(F.fb.nsent, 1);
	assert_int_equal(stat(&STATS->tx_dropped), 2);
	assert_int_equal(F.vdev->bad_requests, 2);
	assert_int_equal(used_idx(1), 3);   /* every chain returned */
}

static void test_tx_gso_needs_its_feature(void **state)
{
	(void)state;
	up(B(F_CSUM) | B(F_HOST_TSO4));   /* no TSO6, no ECN, no UFO */
	uint8_t frame[100];
	make_frame(frame, sizeof(frame), 4);
	const struct virtio_net_hdr_v1 bad[] = {
		{ .flags = 1, .gso_type = VIRTIO_NET_HDR_GSO_TCPV6, .gso_size = 1400, .csum_start = 54, .csum_offset = 16 },
		{ .flags = 1, .gso_type = VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, .gso_size = 1400,
		  .csum_start = 34, .csum_offset = 16 },
		{ .flags = 1, .gso_type = VIRTIO_NET_HDR_GSO_UDP, .gso_size = 1400, .csum_start = 34, .csum_offset = 6 },
		{ .flags = 1, .gso_type = VIRTIO_NET_HDR_GSO_TCPV4, .gso_size = 0, .csum_start = 34, .csum_offset = 16 },
		{ .flags = 1, .gso_type = 2 /* unknown */, .gso_size = 1400, .csum_start = 34, .csum_offset = 16 },
		{ .flags = 1, .csum_start = 90, .csum_offset = 16 },   /* checksum beyond the frame */
		{ .gso_type = VIRTIO_NET_HDR_GSO_ECN },
	};
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		tx_frame(1, &bad[i], frame, sizeof(frame), NULL, 0);
	struct virtio_net_hdr_v1 ok = { .flags = 1, .gso_type = VIRTIO_NET_HDR_GSO_TCPV4, .gso_size = 1400,
					.csum_start = 34, .csum_offset = 16 };
	tx_frame(1, &ok, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(F.fb.nsent, 1);
	assert_int_equal(F.fb.sent[0].data[1], VIRTIO_NET_HDR_GSO_TCPV4);
	assert_int_equal(stat(&STATS->tx_dropped), sizeof(bad) / sizeof(bad[0]));
	assert_int_equal(used_idx(1), sizeof(bad) / sizeof(bad[0]) + 1);
}

/* Hostile TX chains are dropped and counted; the queue keeps going. */
static void test_tx_hostile(void **state)
{
	(void)state;
	up(B(VIRTIO_F_INDIRECT_DESC));
	uint8_t frame[64];
	make_frame(frame, sizeof(frame), 5);
	struct virtio_net_hdr_v1 h = { 0 };
	unsigned chains = 0;

	/* A writable buffer in a TX chain. */
	uint64_t a = alloc(NET_HDR_LEN + 64);
	struct buf wr[2] = { { a, NET_HDR_LEN + 64, false }, { alloc(64), 64, true } };
	add_chain(1, wr, 2), chains++;
	/* Too short for an Ethernet header. */
	struct buf shortb = { alloc(NET_HDR_LEN + 13), NET_HDR_LEN + 13, false };
	add_chain(1, &shortb, 1), chains++;
	/* Only a header. */
	struct buf hdr_only = { alloc(NET_HDR_LEN), NET_HDR_LEN, false };
	add_chain(1, &hdr_only, 1), chains++;
	/* Longer than any frame. */
	struct buf longb = { alloc(NET_HDR_LEN + NET_MAX_FRAME + 1), NET_HDR_LEN + NET_MAX_FRAME + 1, false };
	add_chain(1, &longb, 1), chains++;
	/* A next index past the table. */
	struct drv_q *d = &F.q[1];
	uint16_t bad_next = d->next_desc;
	desc_at(d->desc, bad_next, alloc(100), 100, D_NEXT, 300);
	d->next_desc++;
	avail_add(1, bad_next), chains++;
	/* An indirect table that loops. */
	uint64_t ind = alloc(32);
	desc_at(ind, 0, alloc(80), 80, D_NEXT, 1);
	desc_at(ind, 1, alloc(80), 80, D_NEXT, 0);
	uint16_t ind_head = d->next_desc++;
	desc_at(d->desc, ind_head, ind, 32, D_IND, 0);
	avail_add(1, ind_head), chains++;
	/* A main chain that loops. */
	uint16_t l0 = d->next_desc, l1 = (uint16_t)(d->next_desc + 1);
	desc_at(d->desc, l0, alloc(40), 40, D_NEXT, l1);
	desc_at(d->desc, l1, alloc(40), 40, D_NEXT, l0);
	d->next_desc = (uint16_t)(d->next_desc + 2);
	avail_add(1, l0), chains++;
	/* And a good frame after all that. */
	tx_frame(1, &h, frame, sizeof(frame), NULL, 0), chains++;
	kick(1);
	assert_int_equal(F.fb.nsent, 1);
	assert_memory_equal(F.fb.sent[0].data + NET_HDR_LEN, frame, 64);
	assert_int_equal(used_idx(1), chains);
	for (unsigned i = 0; i < chains; i++)
		assert_int_equal(used_len(1, i), 0);
	assert_int_equal(stat(&STATS->tx_dropped), chains - 1);
	assert_int_equal(F.vdev->bad_requests, chains - 1);
	assert_false(F.vdev->status & VIRTIO_STATUS_NEEDS_RESET);
}

/* A head index past the ring is not a chain: the device needs a reset. */
static void test_tx_bad_head(void **state)
{
	(void)state;
	up(0);
	rx_post(0, 2000);
	kick(0);
	assert_true(F.fb.rx_on[0]);
	avail_add(1, 4000);
	kick(1);
	assert_true(F.vdev->status & VIRTIO_STATUS_NEEDS_RESET);
	assert_int_equal(F.config_notifies, 1);
	assert_int_equal(F.fb.nsent, 0);
	/* A frame now is not delivered, and the backend stops calling. */
	be_inject(0, 100, 1);
	pump();
	assert_int_equal(used_idx(0), 0);
	assert_false(F.fb.rx_on[0]);
}

/* A backend error drops the frame, counted, the chain still returned. */
static void test_tx_backend_error(void **state)
{
	(void)state;
	up(0);
	F.fb.send_ret = -EAGAIN;
	uint8_t frame[60] = { 0 };
	struct virtio_net_hdr_v1 h = { 0 };
	tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(stat(&STATS->tx_dropped), 1);
	assert_int_equal(F.vdev->bad_requests, 0);
	assert_int_equal(used_idx(1), 1);
}

/* A full ring: a whole turn's worth of frames (the budget), then the
 * device comes back for more on the next turn and finds the ring empty. */
static void test_tx_full_ring(void **state)
{
	(void)state;
	up(0);
	uint8_t frame[60] = { 0 };
	struct virtio_net_hdr_v1 h = { 0 };
	for (unsigned i = 0; i < 256; i++)
		tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	F.fb.send_ret = 1;   /* success, not recorded: the fake keeps only a few */
	kick(1);
	pump();
	assert_int_equal(used_idx(1), 256);
	assert_int_equal(stat(&STATS->tx_packets), 256);
	for (unsigned i = 0; i < 10; i++)
		tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(used_idx(1), 266);
}

/* ---- tests: RX ------------------------------------------------------------ */

/* Without mergeable buffers every chain takes one whole frame (here split
 * into header and data descriptors); num_buffers is 1. */
static void test_rx_no_merge(void **state)
{
	(void)state;
	up(0);
	/* No buffers yet: the backend was told to wait. */
	assert_false(F.fb.rx_on[0]);
	uint64_t bufs[2];
	for (unsigned i = 0; i < 2; i++) {
		bufs[i] = alloc(NET_HDR_LEN + 1514);
		struct buf b[2] = { { bufs[i], NET_HDR_LEN, true }, { bufs[i] + NET_HDR_LEN, 1514, true } };
		add_chain(0, b, 2);
	}
	kick(0);
	assert_true(F.fb.rx_on[0]);
	be_inject(0, 60, 10);
	be_inject(0, 1514, 11);
	be_inject(0, 100, 12);
	pump();
	assert_int_equal(used_idx(0), 2);
	assert_int_equal(used_len(0, 0), NET_HDR_LEN + 60);
	assert_int_equal(used_len(0, 1), NET_HDR_LEN + 1514);
	check_frame(g2h(bufs[0] + NET_HDR_LEN, 60), 60, 10);
	check_frame(g2h(bufs[1] + NET_HDR_LEN, 1514), 1514, 11);
	assert_int_equal(r16(bufs[0] + 10), 1);
	assert_int_equal(r16(bufs[1] + 10), 1);
	/* Out of buffers: the third waits, the backend was told. */
	assert_int_equal(be_waiting(0), 1);
	assert_false(F.fb.rx_on[0]);
	uint64_t b3 = rx_post(0, NET_HDR_LEN + 1514);
	kick(0);
	assert_int_equal(used_idx(0), 3);
	check_frame(g2h(b3 + NET_HDR_LEN, 100), 100, 12);
	assert_int_equal(stat(&STATS->rx_packets), 3);
	assert_int_equal(stat(&STATS->rx_bytes), 60 + 1514 + 100);
	assert_true(F.notifies[0] >= 2);
}

/* A frame larger than the buffer is dropped and counted; the buffer is
 * used by the next frame. */
static void test_rx_too_big(void **state)
{
	(void)state;
	up(0);
	uint64_t b = rx_post(0, NET_HDR_LEN + 100);
	kick(0);
	be_inject(0, 500, 1);
	be_inject(0, 90, 2);
	pump();
	assert_int_equal(stat(&STATS->rx_dropped), 1);
	assert_int_equal(used_idx(0), 1);
	assert_int_equal(used_len(0, 0), NET_HDR_LEN + 90);
	check_frame(g2h(b + NET_HDR_LEN, 90), 90, 2);
}

/* Mergeable buffers: chains are gathered until a full-size frame fits
 * (1530 bytes without guest TSO), the frame spans as many as it needs,
 * num_buffers counts them, used lengths add up, and the unused chains are
 * given back (and reused in order). */
static void test_rx_merge(void **state)
{
	(void)state;
	up(B(F_MRG_RXBUF));
	uint64_t b[10];
	for (unsigned i = 0; i < 10; i++)
		b[i] = rx_post(0, 500);
	kick(0);
	assert_true(F.fb.rx_on[0]);
	assert_int_equal(F.vdev->queues[0].vq.last_avail, 0);
	be_inject(0, 1514, 20);
	pump();
	/* 1526 bytes over four chains. */
	assert_int_equal(used_idx(0), 4);
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(used_id(0, i), i);
		assert_int_equal(used_len(0, i), i < 3 ? 500 : 26);
	}
	assert_int_equal(r16(b[0] + 10), 4);
	uint8_t got[1514];
	memcpy(got, g2h(b[0] + NET_HDR_LEN, 488), 488);
	for (unsigned i = 1; i < 4; i++)
		memcpy(got + 488 + 500 * (i - 1), g2h(b[i], i < 3 ? 500 : 26), i < 3 ? 500 : 26);
	check_frame(got, 1514, 20);
	/* The others went back to the ring: only what was used is consumed. */
	assert_int_equal(F.vdev->queues[0].vq.last_avail, 4);

	be_inject(0, 60, 21);
	pump();
	assert_int_equal(used_idx(0), 5);
	assert_int_equal(used_id(0, 4), 4);
	assert_int_equal(used_len(0, 4), 72);
	assert_int_equal(r16(b[4] + 10), 1);
	check_frame(g2h(b[4] + NET_HDR_LEN, 60), 60, 21);
	assert_int_equal(F.vdev->queues[0].vq.last_avail, 5);

	be_inject(0, 1000, 22);
	pump();
	assert_int_equal(used_idx(0), 8);
	assert_int_equal(r16(b[5] + 10), 3);
	assert_int_equal(used_len(0, 5), 500);
	assert_int_equal(used_len(0, 6), 500);
	assert_int_equal(used_len(0, 7), 12);
	assert_int_equal(F.vdev->queues[0].vq.last_avail, 8);
	assert_int_equal(stat(&STATS->rx_packets), 3);

	/* Two chains left (1000 bytes): not enough for a full frame, so the
	 * device waits for more rather than risk dropping one. */
	be_inject(0, 100, 23);
	pump();
	assert_int_equal(used_idx(0), 8);
	assert_false(F.fb.rx_on[0]);
	rx_post(0, 500);
	rx_post(0, 500);
	kick(0);
	assert_int_equal(used_idx(0), 9);
	assert_int_equal(used_len(0, 8), 112);
}

/* Mergeable buffers with guest TSO: a 64 KiB frame may come, so the device
 * waits until that much is posted (then delivers a big frame). */
static void test_rx_merge_gso_waits_for_64k(void **state)
{
	(void)state;
	up(B(F_MRG_RXBUF) | B(F_GUEST_CSUM) | B(F_GUEST_TSO4));
	assert_int_equal(F.fb.offloads_set, NET_OFFLOAD_CSUM | NET_OFFLOAD_TSO4);
	for (unsigned i = 0; i < 10; i++)
		rx_post(0, 4096);
	kick(0);
	be_inject(0, 60000, 30);
	pump();
	/* 40 KiB posted: not enough for what may come; the frame waits. */
	assert_int_equal(used_idx(0), 0);
	assert_false(F.fb.rx_on[0]);
	assert_int_equal(F.vdev->queues[0].vq.last_avail, 0);
	for (unsigned i = 0; i < 7; i++)
		rx_post(0, 4096);
	kick(0);
	/* 60012 bytes over 15 chains of 4096. */
	assert_int_equal(used_idx(0), 15);
	for (unsigned i = 0; i < 14; i++)
		assert_int_equal(used_len(0, i), 4096);
	assert_int_equal(used_len(0, 14), 60012 - 14 * 4096);
	assert_int_equal(F.vdev->queues[0].vq.last_avail, 15);
	assert_int_equal(stat(&STATS->rx_bytes), 60000);
}

/* Hostile RX chains: a readable buffer, a too-small chain, a broken chain.
 * Each is completed with 0 and counted, and delivery goes on. */
static void test_rx_hostile(void **state)
{
	(void)state;
	up(B(F_MRG_RXBUF));
	struct buf rd = { alloc(2000), 2000, false };
	add_chain(0, &rd, 1);
	struct buf tiny = { alloc(8), 8, true };
	add_chain(0, &tiny, 1);
	struct drv_q *d = &F.q[0];
	uint16_t bad = d->next_desc++;
	desc_at(d->desc, bad, alloc(2000), 2000, D_WRITE | D_NEXT, 999);
	avail_add(0, bad);
	uint64_t good = rx_post(0, 2000);
	kick(0);
	be_inject(0, 100, 40);
	pump();
	assert_int_equal(F.vdev->bad_requests, 3);
	assert_int_equal(used_idx(0), 4);
	assert_int_equal(used_len(0, 0), 0);
	assert_int_equal(used_len(0, 1), 0);
	assert_int_equal(used_len(0, 2), 0);
	assert_int_equal(used_len(0, 3), NET_HDR_LEN + 100);
	check_frame(g2h(good + NET_HDR_LEN, 100), 100, 40);
	assert_false(F.vdev->status & VIRTIO_STATUS_NEEDS_RESET);

	/* Buffers gathered before a bad chain cannot be given back past it:
	 * they are returned empty. */
	rx_post(0, 1000);
	struct buf rd2 = { alloc(1000), 1000, false };
	add_chain(0, &rd2, 1);
	uint64_t g2 = rx_post(0, 2000);
	kick(0);
	be_inject(0, 200, 41);
	pump();
	assert_int_equal(used_idx(0), 7);
	assert_int_equal(used_len(0, 4), 0);
	assert_int_equal(used_len(0, 5), 0);
	assert_int_equal(used_len(0, 6), NET_HDR_LEN + 200);
	check_frame(g2h(g2 + NET_HDR_LEN, 200), 200, 41);
}

/* ---- tests: control queue ------------------------------------------------- */

/* Sends a command (class, cmd, data split after its first byte) and
 * returns the ack (or -1 if none was written). */
static int ctrl(unsigned qi, uint8_t cls, uint8_t cmd, const void *data, size_t len)
{
	uint64_t a = alloc(2 + len + 1);
	uint8_t *p = g2h(a, 2 + len + 1);
	p[0] = cls;
	p[1] = cmd;
	memcpy(p + 2, data, len);
	p[2 + len] = 0xaa;
	struct buf b[3];
	unsigned n = 0;
	if (len > 1) {
		b[n++] = (struct buf){ a, 3, false };
		b[n++] = (struct buf){ a + 3, (uint32_t)(len - 1), false };
	} else {
		b[n++] = (struct buf){ a, (uint32_t)(2 + len), false };
	}
	b[n++] = (struct buf){ a + 2 + len, 1, true };
	uint16_t before = used_idx(qi);
	add_chain(qi, b, n);
	kick(qi);
	assert_int_equal(used_idx(qi), (uint16_t)(before + 1));
	if (used_len(qi, before) != 1)
		return -1;
	return p[2 + len];
}

static void test_ctrl_commands(void **state)
{
	(void)state;
	up(B(F_CTRL_VQ) | B(F_CTRL_RX) | B(F_CTRL_MAC_ADDR) | B(F_MQ));
	unsigned cq = 8;
	uint16_t pairs;
	pairs = 0;
	assert_int_equal(ctrl(cq, 4, 0, &pairs, 2), 1);
	pairs = 5;
	assert_int_equal(ctrl(cq, 4, 0, &pairs, 2), 1);
	const uint8_t three[3] = { 3, 0, 0 };
	assert_int_equal(ctrl(cq, 4, 0, three, 3), 1);   /* wrong length */
	pairs = 3;
	assert_int_equal(ctrl(cq, 4, 0, &pairs, 2), 0);
	assert_int_equal(ctrl(cq, 4, 1, &pairs, 2), 1);   /* RSS: not offered */

	uint8_t mac[6] = { 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef };
	unsigned gen = F.vdev->config_generation;
	assert_int_equal(ctrl(cq, 1, 1, mac, 6), 0);
	uint8_t cfg[6];
	lock();
	virtio_dev_config_read(F.vdev, 0, cfg, 6);
	unlock();
	assert_memory_equal(cfg, mac, 6);
	assert_int_not_equal(F.vdev->config_generation, gen);
	assert_int_equal(ctrl(cq, 1, 1, mac, 5), 1);

	/* MAC table: one unicast, two multicast entries. */
	uint8_t table[4 + 6 + 4 + 12] = { 1, 0, 0, 0 };
	table[10] = 2;
	assert_int_equal(ctrl(cq, 1, 0, table, sizeof(table)), 0);
	assert_int_equal(ctrl(cq, 1, 0, table, sizeof(table) - 1), 1);
	table[0] = 200;   /* entries beyond the data */
	assert_int_equal(ctrl(cq, 1, 0, table, sizeof(table)), 1);

	uint8_t on = 0;
	assert_int_equal(ctrl(cq, 0, 0, &on, 1), 0);   /* promisc off */
	assert_int_equal(ctrl(cq, 0, 1, &on, 1), 0);   /* allmulti */
	assert_int_equal(ctrl(cq, 0, 2, &on, 1), 1);   /* ALLUNI: CTRL_RX_EXTRA not offered */
	assert_int_equal(ctrl(cq, 0, 0, &on, 0), 1);
	assert_int_equal(ctrl(cq, 2, 0, &on, 1), 1);   /* VLAN: not offered */
	assert_int_equal(ctrl(cq, 99, 0, &on, 1), 1);  /* unknown class */
	assert_int_equal(ctrl(cq, 5, 0, &on, 1), 1);   /* guest offloads: not negotiated */

	/* Malformed chains: no ack byte, only one byte of command. */
	struct buf nack = { alloc(3), 3, false };
	uint16_t before = used_idx(cq);
	add_chain(cq, &nack, 1);
	uint64_t one = alloc(2);
	struct buf onlyone[2] = { { one, 1, false }, { one + 1, 1, true } };
	add_chain(cq, onlyone, 2);
	kick(cq);
	assert_int_equal(used_idx(cq), (uint16_t)(before + 2));
	assert_int_equal(used_len(cq, before), 0);
	assert_int_equal(used_len(cq, before + 1), 1);
	assert_int_equal(*g2h(one + 1, 1), 1);   /* ERR */
	assert_false(F.vdev->status & VIRTIO_STATUS_NEEDS_RESET);
}

/* Without CTRL_MAC_ADDR/CTRL_RX/MQ negotiated, their commands fail. */
static void test_ctrl_not_negotiated(void **state)
{
	(void)state;
	up(B(F_CTRL_VQ));
	unsigned cq = 8;
	uint8_t mac[6] = { 0x52, 0x54, 0, 1, 2, 3 };
	uint16_t pairs = 1;
	uint8_t on = 1;
	assert_int_equal(ctrl(cq, 1, 1, mac, 6), 1);
	assert_int_equal(ctrl(cq, 4, 0, &pairs, 2), 1);
	assert_int_equal(ctrl(cq, 0, 0, &on, 1), 1);
}

static void test_ctrl_guest_offloads(void **state)
{
	(void)state;
	up(B(F_CTRL_VQ) | B(F_CTRL_GUEST_OFFLOADS) | B(F_GUEST_CSUM) | B(F_GUEST_TSO4) | B(F_MRG_RXBUF));
	assert_int_equal(F.fb.offloads_set, NET_OFFLOAD_CSUM | NET_OFFLOAD_TSO4);
	unsigned cq = 2;
	uint64_t v = B(F_GUEST_CSUM);
	assert_int_equal(ctrl(cq, 5, 0, &v, 8), 0);
	assert_int_equal(F.fb.offloads_set, NET_OFFLOAD_CSUM);
	v = B(F_GUEST_CSUM) | B(F_GUEST_TSO6);   /* TSO6 not negotiated */
	assert_int_equal(ctrl(cq, 5, 0, &v, 8), 1);
	assert_int_equal(F.fb.offloads_set, NET_OFFLOAD_CSUM);
	/* Without guest TSO, 1530 bytes of mergeable buffers are enough. */
	rx_post(0, 1600);
	kick(0);
	be_inject(0, 1500, 50);
	pump();
	assert_int_equal(used_idx(0), 1);
	v = 0;
	assert_int_equal(ctrl(cq, 5, 0, &v, 8), 0);
	assert_int_equal(F.fb.offloads_set, 0);
}

/* ---- tests: multiqueue ------------------------------------------------------ */

/* Until the driver enables more pairs, every backend queue delivers to
 * RX0; afterwards backend queue b delivers to RX b % pairs. TX queues map
 * to backend queues one to one. */
static void test_mq_mapping(void **state)
{
	(void)state;
	up(B(F_CTRL_VQ) | B(F_MQ));
	rx_post(0, 2000);
	rx_post(0, 2000);
	kick(0);
	be_inject(2, 100, 60);
	pump();
	assert_int_equal(used_idx(0), 1);
	assert_int_equal(used_len(0, 0), NET_HDR_LEN + 100);

	uint16_t pairs = 2;
	assert_int_equal(ctrl(8, 4, 0, &pairs, 2), 0);
	uint64_t b2 = rx_post(2, 2000);
	kick(2);
	be_inject(3, 200, 61);   /* 3 % 2 = RX1 */
	be_inject(2, 300, 62);   /* 2 % 2 = RX0 */
	pump();
	assert_int_equal(used_idx(2), 1);
	assert_int_equal(used_len(2, 0), NET_HDR_LEN + 200);
	check_frame(g2h(b2 + NET_HDR_LEN, 200), 200, 61);
	assert_int_equal(used_idx(0), 2);
	assert_int_equal(used_len(0, 1), NET_HDR_LEN + 300);

	uint8_t frame[60] = { 0 };
	struct virtio_net_hdr_v1 h = { 0 };
	tx_frame(3, &h, frame, sizeof(frame), NULL, 0);
	kick(3);
	assert_int_equal(F.fb.nsent, 1);
	assert_int_equal(F.fb.sent[0].q, 1);

	/* Back to one pair: backend queue 3 delivers to RX0 again, though
	 * RX1 still has a buffer. */
	rx_post(2, 2000);
	rx_post(0, 2000);
	kick(2);
	kick(0);
	pairs = 1;
	assert_int_equal(ctrl(8, 4, 0, &pairs, 2), 0);
	be_inject(3, 400, 63);
	pump();
	assert_int_equal(used_idx(2), 1);
	assert_int_equal(used_idx(0), 3);
	assert_int_equal(used_len(0, 2), NET_HDR_LEN + 400);
	/* RX0 is out of buffers now: every backend queue waits. */
	for (unsigned b = 0; b < 4; b++)
		assert_false(F.fb.rx_on[b]);
}

/* ---- tests: rate limiting ------------------------------------------------------ */

static void test_rate_limit_tx(void **state)
{
	(void)state;
	virtio_net_free(F.dev);
	memset(&F.fb, 0, sizeof(F.fb));
	F.fb.tap = -1;
	F.nc.pps = 100;   /* one frame per 10 ms, a burst of one */
	build(1, 1, 0);
	up(0);
	uint8_t frame[60] = { 0 };
	struct virtio_net_hdr_v1 h = { 0 };
	for (unsigned i = 0; i < 5; i++)
		tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	kick(1);
	/* At first only the burst goes; the rest wait for the timer. */
	assert_true(F.fb.nsent < 5);
	assert_true(stat(&STATS->throttled) >= 1);
	for (unsigned i = 0; i < 40 && F.fb.nsent < 5; i++)
		pump_ms(5);
	assert_int_equal(F.fb.nsent, 5);
	assert_int_equal(used_idx(1), 5);
}

static void test_rate_limit_rx(void **state)
{
	(void)state;
	virtio_net_free(F.dev);
	memset(&F.fb, 0, sizeof(F.fb));
	F.fb.tap = -1;
	F.nc.pps = 100;
	build(1, 1, 0);
	up(0);
	for (unsigned i = 0; i < 4; i++)
		rx_post(0, 2000);
	kick(0);
	for (unsigned i = 0; i < 4; i++)
		be_inject(0, 100, (uint8_t)i);
	pump();
	assert_true(used_idx(0) < 4);
	assert_true(stat(&STATS->throttled) >= 1);
	/* While throttled the backend is not asked for more. */
	assert_false(F.fb.rx_on[0]);
	for (unsigned i = 0; i < 40 && used_idx(0) < 4; i++)
		pump_ms(5);
	assert_int_equal(used_idx(0), 4);
	assert_int_equal(be_waiting(0), 0);
}

/* ---- tests: reset --------------------------------------------------------- */

static void test_reset(void **state)
{
	(void)state;
	up(B(F_CTRL_VQ) | B(F_CTRL_MAC_ADDR));
	rx_post(0, 2000);
	rx_post(0, 2000);
	kick(0);
	assert_true(F.fb.rx_on[0]);
	uint8_t mac[6] = { 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef };
	assert_int_equal(ctrl(2, 1, 1, mac, 6), 0);

	set_status(0);
	/* Frames arriving now must not land in guest memory. */
	uint16_t used = used_idx(0);
	be_inject(0, 100, 70);
	F.fb.be.rx_ready(F.fb.be.opaque, 0);
	pump();
	assert_int_equal(used_idx(0), used);
	assert_false(F.fb.rx_on[0]);
	uint8_t cfg[6];
	lock();
	virtio_dev_config_read(F.vdev, 0, cfg, 6);
	unlock();
	assert_memory_equal(cfg, F.nc.mac, 6);

	/* And it comes back up. */
	up(0);
	uint64_t b = rx_post(0, 2000);
	kick(0);
	assert_int_equal(used_idx(0), 1);
	check_frame(g2h(b + NET_HDR_LEN, 100), 100, 70);
}

/* ---- tests: vhost-net ----------------------------------------------------- */

static void rebuild_tap(enum net_vhost mode)
{
	virtio_net_free(F.dev);
	memset(&F.fb, 0, sizeof(F.fb));
	F.fb.tap = 5;
	F.nc.vhost = mode;
	build(1, 1, 0);
}

/* No /dev/vhost-net: the userspace path works, and it is not retried. */
static void test_vhost_unavailable_falls_back(void **state)
{
	(void)state;
	rebuild_tap(NET_VHOST_ON);
	vk.open_errno = ENOENT;
	up(0);
	assert_false(F.vdev->queues[1].kick_detached);
	uint8_t frame[60] = { 0 };
	struct virtio_net_hdr_v1 h = { 0 };
	tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(F.fb.nsent, 1);
	set_status(0);
	pump();
	vk.open_errno = 0;
	up(0);
	assert_int_equal(vk.opens, 0);
}

/* With vhost: the data queues' doorbells leave our loop, the control queue
 * stays, vhost's interrupts are forwarded and counted, and reset takes it
 * all back. */
static void test_vhost_start_stop(void **state)
{
	(void)state;
	rebuild_tap(NET_VHOST_AUTO);
	up(B(F_CTRL_VQ) | B(F_MRG_RXBUF));
	assert_int_equal(vk.opens, 1);
	assert_int_equal(vk.set_backend_on, 2);
	assert_true(F.vdev->queues[0].kick_detached);
	assert_true(F.vdev->queues[1].kick_detached);
	assert_false(F.vdev->queues[2].kick_detached);
	assert_false(F.fb.rx_on[0]);
	/* TX doorbells are vhost's now. */
	uint8_t frame[60] = { 0 };
	struct virtio_net_hdr_v1 h = { 0 };
	tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(F.fb.nsent, 0);
	/* The control queue is still ours. */
	uint8_t on = 0;
	assert_int_equal(ctrl(2, 0, 0, &on, 1), 1);   /* CTRL_RX not negotiated: ERR, but answered */
	/* vhost's call eventfd raises the queue's interrupt, counted. */
	uint64_t irqs = stat(&STATS->irqs);
	unsigned n1 = F.notifies[1];
	uint64_t one = 1;
	assert_int_equal(write(vk.call_fd[1], &one, 8), 8);
	pump();
	assert_int_equal(F.notifies[1], n1 + 1);
	assert_int_equal(stat(&STATS->irqs), irqs + 1);

	/* Reset: the taps are detached, the rings' positions read back, the
	 * doorbells ours again. */
	set_status(0);
	assert_int_equal(vk.set_backend_off, 2);
	assert_int_equal(vk.get_base, 2);
	assert_int_equal(vk.closes, 1);
	pump();
	assert_false(F.vdev->queues[0].kick_detached);
	assert_false(F.vdev->queues[1].kick_detached);
	/* A late call from vhost is ignored. */
	assert_int_equal(write(vk.call_fd[1], &one, 8), 8);
	pump();
	assert_int_equal(F.notifies[1], n1 + 1);
	/* Up again: vhost again, on fresh rings. */
	up(B(F_CTRL_VQ));
	assert_int_equal(vk.opens, 2);
}

/* bw/pps are enforced in userspace: with a limit, vhost is not used. */
static void test_vhost_not_with_limits(void **state)
{
	(void)state;
	F.nc.bw = 1000000;
	rebuild_tap(NET_VHOST_ON);
	up(0);
	assert_int_equal(vk.opens, 0);
	assert_false(F.vdev->queues[1].kick_detached);
	uint8_t frame[60] = { 0 };
	struct virtio_net_hdr_v1 h = { 0 };
	tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(F.fb.nsent, 1);
}

/* ---- tests: seeded fuzz ----------------------------------------------------- */

static uint32_t rnd_state;
static uint32_t rnd(void)
{
	rnd_state = rnd_state * 1103515245u + 12345u;
	return rnd_state >> 8;
}

/* Random chains (lengths, flags, next indices, addresses in and out of
 * RAM, indirect tables) on every queue, random bytes in every buffer,
 * random frames from the backend. Nothing may crash (ASan build) and the
 * device must still work afterwards. */
static void test_fuzz(void **state)
{
	(void)state;
	unsigned fuzz_resets = 0;
	up(B(F_MRG_RXBUF) | B(F_CTRL_VQ) | B(F_CTRL_RX) | B(F_CTRL_MAC_ADDR) | B(VIRTIO_F_INDIRECT_DESC) |
	   B(F_CSUM) | B(F_HOST_TSO4) | B(F_GUEST_CSUM) | B(F_GUEST_TSO4) | B(VIRTIO_F_EVENT_IDX));
	F.fb.send_ret = 1;
	const uint64_t span = 8 * MiB;
	for (uint64_t a = DATA_BASE; a < DATA_BASE + span; a += 4)
		w32(a, rnd() * 2654435761u);
	rnd_state = 12345;
	for (unsigned it = 0; it < 4000; it++) {
		unsigned qi = rnd() % 3;
		struct drv_q *d = &F.q[qi];
		if ((uint16_t)(d->avail - F.vdev->queues[qi].vq.last_avail) >= d->size - 8) {
			kick(qi);
			if ((uint16_t)(d->avail - F.vdev->queues[qi].vq.last_avail) >= d->size - 8)
				continue;   /* RX without frames: full */
		}
		unsigned n = 1 + rnd() % 4;
		uint16_t head = d->next_desc;
		for (unsigned i = 0; i < n; i++) {
			uint16_t idx = (uint16_t)((head + i) % d->size);
			uint64_t addr = rnd() % 16 == 0 ? ((uint64_t)rnd() << 24 | rnd()) : DATA_BASE + rnd() % (span - 70000);
			uint32_t len = rnd() % 16 == 0 ? rnd() : rnd() % 2500;
			uint16_t flags = (uint16_t)(rnd() % 8 == 0 ? rnd() & 7 : (qi == 0 ? D_WRITE : 0));
			if (qi == 2 && i == n - 1)
				flags |= D_WRITE;
			if (rnd() % 32 == 0) {
				flags = D_IND;
				len = 16 * (1 + rnd() % 8);
			}
			if (i + 1 < n)
				flags |= D_NEXT;
			uint16_t next = (uint16_t)(rnd() % 16 == 0 ? rnd() % 512 : (head + i + 1) % d->size);
			desc_at(d->desc, idx, addr, len, flags, next);
			/* Half the transmit chains start with a plausible header. */
			if (qi == 1 && i == 0 && len >= NET_HDR_LEN && rnd() % 2 &&
			    guest_mem_ptr(&F.vm.mem, addr, NET_HDR_LEN)) {
				struct virtio_net_hdr_v1 h = { 0 };
				if (rnd() % 2)
					h = (struct virtio_net_hdr_v1){ .flags = 1, .csum_start = (uint16_t)(rnd() % 100),
									.csum_offset = 16 };
				memcpy(g2h(addr, NET_HDR_LEN), &h, NET_HDR_LEN);
			}
		}
		d->next_desc = (uint16_t)((head + n) % d->size);
		avail_add(qi, head);
		if (rnd() % 4 == 0)
			kick(qi);
		if (rnd() % 3 == 0)
			be_inject(0, rnd() % 2000, (uint8_t)it);
		if (F.vdev->status & VIRTIO_STATUS_NEEDS_RESET) {
			fuzz_resets++;
			set_status(0);
			pump();
			up(B(F_MRG_RXBUF) | B(F_CTRL_VQ) | B(VIRTIO_F_INDIRECT_DESC));
			F.fb.send_ret = 1;
		}
	}
	pump();
	fprintf(stderr, "fuzz: %u resets, %llu bad, tx %llu/%llu dropped, rx %llu/%llu dropped\n", fuzz_resets,
		(unsigned long long)F.vdev->bad_requests, (unsigned long long)stat(&STATS->tx_packets),
		(unsigned long long)stat(&STATS->tx_dropped), (unsigned long long)stat(&STATS->rx_packets),
		(unsigned long long)stat(&STATS->rx_dropped));
	/* Still alive: a clean restart carries a frame each way. */
	set_status(0);
	pump();
	while (be_waiting(0))
		free(F.fb.rx[0][F.fb.rx_head[0]++ % MAX_RXQ].data);
	up(0);
	F.fb.send_ret = 0;
	F.fb.nsent = 0;
	uint8_t frame[60];
	make_frame(frame, sizeof(frame), 9);
	struct virtio_net_hdr_v1 h = { 0 };
	tx_frame(1, &h, frame, sizeof(frame), NULL, 0);
	kick(1);
	assert_int_equal(F.fb.nsent, 1);
	uint64_t b = rx_post(0, 2000);
	kick(0);
	be_inject(0, 80, 10);
	pump();
	check_frame(g2h(b + NET_HDR_LEN, 80), 80, 10);
	assert_true(F.vdev->bad_requests > 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
#define TO(f) cmocka_unit_test_setup_teardown(f, setup_offloads, teardown)
#define TM(f) cmocka_unit_test_setup_teardown(f, setup_mq, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_features_plain),
		TO(test_features_offloads),
		TM(test_mq_offered),
		T(test_pairs_capped_by_backend),
		TO(test_offload_translation),
		T(test_tx_basic),
		TO(test_tx_header_straddles),
		TO(test_tx_header_zeroed_without_offloads),
		TO(test_tx_gso_needs_its_feature),
		T(test_tx_hostile),
		T(test_tx_bad_head),
		T(test_tx_backend_error),
		T(test_tx_full_ring),
		T(test_rx_no_merge),
		T(test_rx_too_big),
		T(test_rx_merge),
		TO(test_rx_merge_gso_waits_for_64k),
		T(test_rx_hostile),
		TM(test_ctrl_commands),
		TM(test_ctrl_not_negotiated),
		TO(test_ctrl_guest_offloads),
		TM(test_mq_mapping),
		T(test_rate_limit_tx),
		T(test_rate_limit_rx),
		T(test_reset),
		T(test_vhost_unavailable_falls_back),
		T(test_vhost_start_stop),
		T(test_vhost_not_with_limits),
		TO(test_fuzz),
	};
	return cmocka_run_group_tests_name("virtio_net", tests, NULL, NULL);
}
