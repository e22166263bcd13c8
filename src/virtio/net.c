/* virtio-net (virtio 1.2 section 5.1) over a network backend (net.h).
 *
 * Queues: RX0, TX0, RX1, TX1, ... then the control queue. Everything runs
 * on the device's I/O loop with vdev->lock held: doorbells (queue_notify),
 * the backend's rx_ready, the rate-limit timer and a "wake" eventfd that
 * reschedules work (a queue that used up its turn, or a state change the
 * vCPU thread asked for). The vCPU threads only flip state under the lock
 * (activate, reset) and ring the wake eventfd; the I/O thread then brings
 * the backend and vhost in line (vnet_sync), because the backend's recv,
 * rx_notify and set_offloads belong to the I/O thread and the loop is not
 * thread-safe.
 *
 * TX is zero-copy: the frame goes to the backend straight from the
 * chain's buffers; only the 12-byte header is copied out (and checked,
 * and what the driver did not negotiate is refused or cleared).
 *
 * RX pulls (net.h): while a receive queue has buffers the backend may
 * call rx_ready; then frames are received straight into the guest's
 * buffers. With VIRTIO_NET_F_MRG_RXBUF, chains are gathered until they
 * can hold the largest frame the guest may get, the frame lands across
 * them, num_buffers says how many it took, and the unused ones are given
 * back (virtq_unpop). Without buffers, the backend is told to wait
 * (rx_notify off) and the guest to kick.
 *
 * With a multiqueue backend and fewer pairs in use (the guest decides,
 * VIRTIO_NET_CTRL_MQ), backend queue b delivers to receive queue
 * b % active_pairs, so no flow is lost.
 *
 * vhost-net: with a tap backend, at DRIVER_OK the data queues may be
 * handed to the kernel (net/vhost_net.h); the control queue stays here. */
#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/device.h"
#include "core/iov.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/vm.h"
#include "net/net.h"
#include "net/vhost_net.h"
#include "virtio/devices.h"
#include "virtio/net.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"

/* Feature bits (5.1.3) */
#define VIRTIO_NET_F_CSUM                 0
#define VIRTIO_NET_F_GUEST_CSUM           1
#define VIRTIO_NET_F_CTRL_GUEST_OFFLOADS  2
#define VIRTIO_NET_F_MTU                  3
#define VIRTIO_NET_F_MAC                  5
#define VIRTIO_NET_F_GUEST_TSO4           7
#define VIRTIO_NET_F_GUEST_TSO6           8
#define VIRTIO_NET_F_GUEST_ECN            9
#define VIRTIO_NET_F_GUEST_UFO            10
#define VIRTIO_NET_F_HOST_TSO4            11
#define VIRTIO_NET_F_HOST_TSO6            12
#define VIRTIO_NET_F_HOST_ECN             13
#define VIRTIO_NET_F_HOST_UFO             14
#define VIRTIO_NET_F_MRG_RXBUF            15
#define VIRTIO_NET_F_STATUS               16
#define VIRTIO_NET_F_CTRL_VQ              17
#define VIRTIO_NET_F_CTRL_RX              18
#define VIRTIO_NET_F_MQ                   22
#define VIRTIO_NET_F_CTRL_MAC_ADDR        23

#define GUEST_OFFLOAD_FEATURES                                                                  \
	(VIRTIO_BIT(VIRTIO_NET_F_GUEST_CSUM) | VIRTIO_BIT(VIRTIO_NET_F_GUEST_TSO4) |             \
	 VIRTIO_BIT(VIRTIO_NET_F_GUEST_TSO6) | VIRTIO_BIT(VIRTIO_NET_F_GUEST_ECN) |              \
	 VIRTIO_BIT(VIRTIO_NET_F_GUEST_UFO))

#define VIRTIO_NET_S_LINK_UP 1

/* Control queue (5.1.6.5) */
#define VIRTIO_NET_OK  0
#define VIRTIO_NET_ERR 1
#define VIRTIO_NET_CTRL_RX                  0
#define VIRTIO_NET_CTRL_RX_PROMISC          0
#define VIRTIO_NET_CTRL_RX_ALLMULTI         1
#define VIRTIO_NET_CTRL_MAC                 1
#define VIRTIO_NET_CTRL_MAC_TABLE_SET       0
#define VIRTIO_NET_CTRL_MAC_ADDR_SET        1
#define VIRTIO_NET_CTRL_MQ                  4
#define VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET     0
#define VIRTIO_NET_CTRL_GUEST_OFFLOADS      5
#define VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET  0

#define VNET_QUEUE_SIZE  256
#define VNET_CONFIG_SIZE 12          /* mac, status, max_virtqueue_pairs, mtu */
#define VNET_MTU         1500
#define VNET_BUDGET      256         /* frames per queue per turn of the loop */
#define VNET_IOV_MAX     1024        /* IOV_MAX: what readv/writev take */
#define ETH_HLEN         14
/* The largest frame without GSO: the MTU, Ethernet header and a VLAN tag. */
#define VNET_RX_SMALL    (NET_HDR_LEN + VNET_MTU + ETH_HLEN + 4)
#define VNET_MAX_VQS     (2 * NET_MAX_QUEUES + 1)

/* A receive chain gathered for the frames to come. */
struct rx_buf {
	uint16_t head;
	uint16_t niov;          /* its iovecs in rx_iov, after the previous chains' */
	uint64_t len;
};

struct vnet_call {
	struct vnet *n;
	unsigned q;
};

struct vnet {
	struct virtio_dev vdev;
	struct vm *vm;
	struct net_backend *be;
	struct loop *loop;
	void *transport;
	enum virtio_transport_kind transport_kind;
	char name[24];
	uint8_t cfg_mac[6];          /* from the command line; reset restores it */
	uint8_t mac[6];              /* config space; VIRTIO_NET_CTRL_MAC_ADDR_SET changes it */
	unsigned pairs;              /* offered (max_virtqueue_pairs) */
	unsigned active_pairs;       /* in use (VIRTIO_NET_CTRL_MQ); 1 after reset */
	unsigned ctrl_q;             /* = 2 * pairs */
	bool promisc, allmulti;      /* remembered; every frame is delivered anyway */
	uint64_t rx_offload_features;   /* GUEST_* features in force */
	unsigned be_offloads;        /* last set_offloads() */
	bool be_offloads_valid;
	bool rx_on[NET_MAX_QUEUES];  /* what rx_notify last said, per backend queue */

	/* State changes from vCPU threads for the I/O thread (vnet_sync). */
	unsigned gen, synced_gen;
	bool in_io;                  /* the I/O thread is inside the device (lock held) */
	uint32_t pending;            /* virtqueues to run again, one bit each */
	uint32_t throttled;          /* virtqueues waiting for the rate limiter */
	int wake_fd;
	int timer_fd;
	bool timer_armed;
	bool limited;                /* bw or pps set */
	struct net_limiter tx_lim, rx_lim;

	struct net_stats stats;
	uint64_t kicks_seen[VNET_MAX_VQS];

	/* vhost-net */
	enum net_vhost vhost_mode;
	const struct vhost_io *vio;
	bool vhost_on;
	bool vhost_given_up;         /* failed once (or cannot apply): userspace from now on */
	bool vhost_noticed;          /* said why it is not used */
	struct vhost_net vhost;
	struct vhost_net_ring vrings[2 * NET_MAX_QUEUES];
	int call_fds[2 * NET_MAX_QUEUES];
	struct vnet_call calls[2 * NET_MAX_QUEUES];

	/* Scratch: one chain, the TX iovec, the gathered RX buffers. */
	struct virtq_chain chain;
	struct iovec tx_iov[VIRTQ_MAX_CHAIN + 1];
	unsigned rx_nbufs, rx_niov;
	uint64_t rx_total;
	struct rx_buf rx_bufs[VIRTQ_MAX_SIZE];
	struct iovec rx_iov[VNET_IOV_MAX];
};

static bool has(const struct vnet *n, unsigned bit)
{
	return virtio_dev_has_feature(&n->vdev, bit);
}

static bool vnet_running(const struct vnet *n)
{
	return (n->vdev.status & VIRTIO_STATUS_DRIVER_OK) && !(n->vdev.status & VIRTIO_STATUS_NEEDS_RESET);
}

static void vnet_wake(struct vnet *n)
{
	uint64_t one = 1;
	ssize_t w = write(n->wake_fd, &one, sizeof(one));
	(void)w;
}

static void vnet_notify_guest(struct vnet *n, unsigned q)
{
	if (virtio_queue_notify_guest(&n->vdev, q))
		atomic_fetch_add_explicit(&n->stats.irqs, 1, memory_order_relaxed);
}

static void stat_add(atomic_uint_fast64_t *c, uint64_t v)
{
	atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

/* ---- offloads -------------------------------------------------------- */

static unsigned offloads_of(uint64_t features)
{
	if (!(features & VIRTIO_BIT(VIRTIO_NET_F_GUEST_CSUM)))
		return 0;
	unsigned o = NET_OFFLOAD_CSUM;
	if (features & VIRTIO_BIT(VIRTIO_NET_F_GUEST_TSO4))
		o |= NET_OFFLOAD_TSO4;
	if (features & VIRTIO_BIT(VIRTIO_NET_F_GUEST_TSO6))
		o |= NET_OFFLOAD_TSO6;
	if (features & VIRTIO_BIT(VIRTIO_NET_F_GUEST_ECN))
		o |= NET_OFFLOAD_ECN;
	if (features & VIRTIO_BIT(VIRTIO_NET_F_GUEST_UFO))
		o |= NET_OFFLOAD_UFO;
	return o;
}

static void apply_offloads(struct vnet *n)
{
	unsigned o = offloads_of(n->rx_offload_features);
	if (!n->be->ops->set_offloads || (n->be_offloads_valid && n->be_offloads == o))
		return;
	int ret = n->be->ops->set_offloads(n->be, o);
	if (ret < 0)
		log_warn("%s: cannot set the backend's offloads to 0x%x: %s", n->name, o, strerror(-ret));
	n->be_offloads = o;
	n->be_offloads_valid = true;
}

/* Receive buffers must hold this much for one frame (mergeable buffers). */
static uint64_t rx_need(const struct vnet *n)
{
	unsigned o = offloads_of(n->rx_offload_features);
	if (o & (NET_OFFLOAD_TSO4 | NET_OFFLOAD_TSO6 | NET_OFFLOAD_UFO))
		return NET_HDR_LEN + NET_MAX_FRAME;
	return VNET_RX_SMALL;
}

/* ---- rate limiting ----------------------------------------------------- */

static void throttle(struct vnet *n, unsigned vq, struct net_limiter *l)
{
	n->throttled |= 1u << vq;
	stat_add(&n->stats.throttled, 1);
	if (n->timer_armed)
		return;
	uint64_t ns = net_limiter_wait_ns(l, net_now_ns());
	if (ns == 0)
		ns = 1;
	struct itimerspec its = { .it_value = { (time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL) } };
	if (timerfd_settime(n->timer_fd, 0, &its, NULL) == 0)
		n->timer_armed = true;
	else
		vnet_wake(n);   /* no timer: poll rather than stall */
}

/* ---- RX ------------------------------------------------------------ */

static void rx_set(struct vnet *n, unsigned b, bool on)
{
	if (n->rx_on[b] == on)
		return;
	n->rx_on[b] = on;
	n->be->ops->rx_notify(n->be, b, on);
}

/* Backend queues that deliver to receive queue g. */
#define for_each_mapped(n, g, b) for (unsigned b = (g); b < (n)->be->nr_queues; b += (n)->active_pairs)

/* Completes every gathered chain with nothing written: they were popped
 * before a malformed one and can no longer be given back. */
static void rx_drop_gathered(struct vnet *n, struct virtq *vq)
{
	for (unsigned i = 0; i < n->rx_nbufs; i++)
		virtq_push(vq, n->rx_bufs[i].head, 0);
	n->rx_nbufs = n->rx_niov = 0;
	n->rx_total = 0;
}

/* Pops chains until a frame fits: one chain without mergeable buffers,
 * else `need` bytes. Returns 1 when ready, 0 when the guest has no more
 * buffers (kicks enabled), -1 when the ring is broken. */
static int rx_gather(struct vnet *n, struct virtq *vq, bool merge, uint64_t need, bool *pushed)
{
	for (;;) {
		if (merge ? n->rx_total >= need : n->rx_nbufs >= 1)
			return 1;
		/* The guest cannot add more than its ring holds. */
		if (n->rx_nbufs >= vq->size)
			return 1;
		enum virtq_pop_result res = virtq_pop(vq, &n->chain);
		if (res == VIRTQ_EMPTY) {
			if (virtq_enable_notify(vq, true)) {
				virtq_enable_notify(vq, false);
				continue;
			}
			return 0;
		}
		if (res == VIRTQ_BAD_RING) {
			virtio_dev_needs_reset(&n->vdev, "receive ring is corrupt");
			return -1;
		}
		const struct virtq_chain *c = &n->chain;
		if (res == VIRTQ_BAD_CHAIN || c->nr_out || c->in_len < NET_HDR_LEN) {
			/* Not a receive buffer. Complete it, and what was gathered
			 * before it: virtq_unpop could not skip it. */
			n->vdev.bad_requests++;
			log_debug("%s: malformed receive buffer (head %u) dropped", n->name, c->head);
			virtq_push(vq, c->head, 0);
			rx_drop_gathered(n, vq);
			*pushed = true;
			continue;
		}
		if (n->rx_niov + c->nr_in > VNET_IOV_MAX) {
			virtq_unpop(vq, 1);   /* n->rx_nbufs > 0: a chain has at most 1024 */
			return 1;
		}
		struct rx_buf *rb = &n->rx_bufs[n->rx_nbufs++];
		rb->head = c->head;
		rb->niov = (uint16_t)c->nr_in;
		rb->len = c->in_len;
		for (unsigned i = 0; i < c->nr_in; i++) {
			const struct virtq_iov *v = &c->iov[c->nr_out + i];
			n->rx_iov[n->rx_niov++] = (struct iovec){ v->base, v->len };
		}
		n->rx_total += c->in_len;
	}
}

/* A frame of `len` bytes (header included) was received into the gathered
 * buffers: complete the chains it used. */
static void rx_deliver(struct vnet *n, struct virtq *vq, size_t len)
{
	unsigned k = 0;
	uint64_t cum = 0;
	while (k < n->rx_nbufs && cum < len)
		cum += n->rx_bufs[k++].len;
	if (k == 0)
		k = 1;
	/* The backend leaves num_buffers alone (a tap does not write it). */
	uint16_t nb = htole16((uint16_t)k);
	iov_from_buf(n->rx_iov, (int)n->rx_bufs[0].niov, offsetof(struct virtio_net_hdr_v1, num_buffers), &nb, 2);
	uint64_t left = len;
	unsigned used_iov = 0;
	for (unsigned i = 0; i < k; i++) {
		uint64_t l = n->rx_bufs[i].len < left ? n->rx_bufs[i].len : left;
		virtq_push(vq, n->rx_bufs[i].head, (uint32_t)l);
		left -= l;
		used_iov += n->rx_bufs[i].niov;
		n->rx_total -= n->rx_bufs[i].len;
	}
	n->rx_nbufs -= k;
	n->rx_niov -= used_iov;
	memmove(n->rx_bufs, n->rx_bufs + k, n->rx_nbufs * sizeof(n->rx_bufs[0]));
	memmove(n->rx_iov, n->rx_iov + used_iov, n->rx_niov * sizeof(n->rx_iov[0]));
	stat_add(&n->stats.rx_packets, 1);
	stat_add(&n->stats.rx_bytes, len - NET_HDR_LEN);
	if (n->limited)
		net_limiter_charge(&n->rx_lim, len - NET_HDR_LEN);
}

enum rx_stop { RX_IDLE, RX_NOBUF, RX_THROTTLED, RX_BUDGET, RX_BROKEN };

/* Receives into queue g from every backend queue mapped to it. */
static void rx_run(struct vnet *n, unsigned g)
{
	struct virtio_queue *q = &n->vdev.queues[2 * g];
	if (g >= n->active_pairs)
		return;   /* not in use: its backend queues belong to others now */
	if (!q->enabled) {
		for_each_mapped(n, g, b)
			rx_set(n, b, false);
		return;
	}
	struct virtq *vq = &q->vq;
	bool merge = has(n, VIRTIO_NET_F_MRG_RXBUF);
	uint64_t need = rx_need(n);
	bool pushed = false;
	unsigned frames = 0;
	enum rx_stop why = RX_IDLE;

	virtq_enable_notify(vq, false);
	n->rx_nbufs = n->rx_niov = 0;
	n->rx_total = 0;
	for_each_mapped(n, g, b) {
		for (;;) {
			if (frames == VNET_BUDGET) {
				why = RX_BUDGET;
				break;
			}
			if (n->limited && !net_limiter_ready(&n->rx_lim, net_now_ns())) {
				why = RX_THROTTLED;
				break;
			}
			int r = rx_gather(n, vq, merge, need, &pushed);
			if (r <= 0) {
				why = r < 0 ? RX_BROKEN : RX_NOBUF;
				break;
			}
			unsigned niov = merge ? n->rx_niov : n->rx_bufs[0].niov;
			ssize_t len = n->be->ops->recv(n->be, b, n->rx_iov, (int)niov);
			if (len == 0 || (len < 0 && len != -EMSGSIZE))
				break;   /* nothing waiting (or an error): next backend queue */
			frames++;
			if (len < NET_HDR_LEN) {
				stat_add(&n->stats.rx_dropped, 1);   /* the buffers stay for the next one */
				continue;
			}
			rx_deliver(n, vq, (size_t)len);
			pushed = true;
		}
		if (why != RX_IDLE)
			break;
	}
	if (n->rx_nbufs && why != RX_BROKEN)
		virtq_unpop(vq, (uint16_t)n->rx_nbufs);
	n->rx_nbufs = n->rx_niov = 0;
	n->rx_total = 0;
	if (pushed)
		vnet_notify_guest(n, 2 * g);

	switch (why) {
	case RX_IDLE:
		/* Every mapped backend queue is empty: tell us when it is not. */
		for_each_mapped(n, g, b)
			rx_set(n, b, true);
		break;
	case RX_BUDGET:
		n->pending |= 1u << (2 * g);
		vnet_wake(n);
		break;
	case RX_THROTTLED:
		throttle(n, 2 * g, &n->rx_lim);
		/* fall through */
	case RX_NOBUF:
	case RX_BROKEN:
		for_each_mapped(n, g, b)
			rx_set(n, b, false);
		break;
	}
}

/* ---- TX ------------------------------------------------------------ */

/* Checks the driver's header against what it negotiated; clears what the
 * backend must not see. Returns 0, or -1 to drop the frame. */
static int tx_check_hdr(const struct vnet *n, struct virtio_net_hdr_v1 *h, uint64_t frame_len)
{
	h->num_buffers = 0;
	/* DATA_VALID and RSC_INFO are for received frames only. */
	h->flags &= VIRTIO_NET_HDR_F_NEEDS_CSUM;
	if (!has(n, VIRTIO_NET_F_CSUM)) {
		/* No offloads: nothing in the header means anything. */
		if (h->flags || h->gso_type != VIRTIO_NET_HDR_GSO_NONE)
			return -1;
		memset(h, 0, sizeof(*h));
		return 0;
	}
	if ((h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) &&
	    (uint64_t)le16toh(h->csum_start) + le16toh(h->csum_offset) + 2 > frame_len)
		return -1;
	uint8_t gso = h->gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
	bool ecn = h->gso_type & VIRTIO_NET_HDR_GSO_ECN;
	if (gso == VIRTIO_NET_HDR_GSO_NONE) {
		if (ecn)
			return -1;
		h->gso_size = 0;
		return 0;
	}
	unsigned need;
	switch (gso) {
	case VIRTIO_NET_HDR_GSO_TCPV4: need = VIRTIO_NET_F_HOST_TSO4; break;
	case VIRTIO_NET_HDR_GSO_TCPV6: need = VIRTIO_NET_F_HOST_TSO6; break;
	case VIRTIO_NET_HDR_GSO_UDP:   need = VIRTIO_NET_F_HOST_UFO; break;
	default: return -1;
	}
	if (!has(n, need) || (ecn && !has(n, VIRTIO_NET_F_HOST_ECN)) || h->gso_size == 0)
		return -1;
	return 0;
}

/* The readable bytes from `skip` on, as iovecs. Returns how many. */
static unsigned chain_out_iov(const struct virtq_chain *c, uint64_t skip, struct iovec *iov)
{
	unsigned k = 0;
	for (unsigned i = 0; i < c->nr_out; i++) {
		uint64_t l = c->iov[i].len;
		if (skip >= l) {
			skip -= l;
			continue;
		}
		iov[k++] = (struct iovec){ (uint8_t *)c->iov[i].base + skip, l - skip };
		skip = 0;
	}
	return k;
}

/* One chain from TX queue t. */
static void tx_one(struct vnet *n, unsigned t, const struct virtq_chain *c)
{
	struct virtio_net_hdr_v1 h;
	uint64_t frame_len = c->out_len > NET_HDR_LEN ? c->out_len - NET_HDR_LEN : 0;
	if (c->nr_in || frame_len < ETH_HLEN || frame_len > NET_MAX_FRAME)
		goto malformed;
	/* Copied, so the guest cannot change it between check and use. */
	virtq_copy_from_out(c, 0, &h, sizeof(h));
	if (tx_check_hdr(n, &h, frame_len))
		goto malformed;
	n->tx_iov[0] = (struct iovec){ &h, sizeof(h) };
	unsigned niov = 1 + chain_out_iov(c, NET_HDR_LEN, n->tx_iov + 1);
	if (niov > VNET_IOV_MAX)
		goto malformed;
	int ret = n->be->ops->send(n->be, t, n->tx_iov, (int)niov);
	if (ret < 0) {
		stat_add(&n->stats.tx_dropped, 1);
		return;
	}
	stat_add(&n->stats.tx_packets, 1);
	stat_add(&n->stats.tx_bytes, frame_len);
	if (n->limited)
		net_limiter_charge(&n->tx_lim, frame_len);
	return;
malformed:
	n->vdev.bad_requests++;
	stat_add(&n->stats.tx_dropped, 1);
	log_debug("%s: malformed transmit chain (head %u, %llu bytes) dropped", n->name, c->head,
		  (unsigned long long)c->out_len);
}

static void tx_run(struct vnet *n, unsigned t)
{
	unsigned qi = 2 * t + 1;
	struct virtio_queue *q = &n->vdev.queues[qi];
	if (!q->enabled)
		return;
	struct virtq *vq = &q->vq;
	bool pushed = false;
	unsigned frames = 0;
	for (;;) {
		virtq_enable_notify(vq, false);
		for (;;) {
			if (frames == VNET_BUDGET) {
				n->pending |= 1u << qi;
				vnet_wake(n);
				goto out;
			}
			if (n->limited && !net_limiter_ready(&n->tx_lim, net_now_ns())) {
				throttle(n, qi, &n->tx_lim);
				goto out;
			}
			enum virtq_pop_result res = virtq_pop(vq, &n->chain);
			if (res == VIRTQ_EMPTY)
				break;
			if (res == VIRTQ_BAD_RING) {
				virtio_dev_needs_reset(&n->vdev, "transmit ring is corrupt");
				goto out;
			}
			if (res == VIRTQ_OK) {
				tx_one(n, t, &n->chain);
			} else {
				n->vdev.bad_requests++;
				stat_add(&n->stats.tx_dropped, 1);
			}
			virtq_push(vq, n->chain.head, 0);
			pushed = true;
			frames++;
		}
		if (!virtq_enable_notify(vq, true))
			break;
	}
out:
	if (pushed)
		vnet_notify_guest(n, qi);
}

/* ---- control queue -------------------------------------------------- */

static uint8_t ctrl_mac_table(const struct virtq_chain *c)
{
	/* Two tables: le32 entries, then entries * 6 bytes. */
	uint32_t n1, n2;
	uint64_t off = 2;
	if (c->out_len < off + 4)
		return VIRTIO_NET_ERR;
	virtq_copy_from_out(c, off, &n1, 4);
	off += 4 + 6ull * le32toh(n1);
	if (c->out_len < off + 4)
		return VIRTIO_NET_ERR;
	virtq_copy_from_out(c, off, &n2, 4);
	off += 4 + 6ull * le32toh(n2);
	return off == c->out_len ? VIRTIO_NET_OK : VIRTIO_NET_ERR;
}

static uint8_t ctrl_handle(struct vnet *n, const struct virtq_chain *c)
{
	uint8_t cls, cmd;
	if (c->out_len < 2)
		return VIRTIO_NET_ERR;
	virtq_copy_from_out(c, 0, &cls, 1);
	virtq_copy_from_out(c, 1, &cmd, 1);
	uint64_t dlen = c->out_len - 2;

	switch (cls) {
	case VIRTIO_NET_CTRL_RX: {
		uint8_t on;
		if (!has(n, VIRTIO_NET_F_CTRL_RX) || dlen != 1 ||
		    (cmd != VIRTIO_NET_CTRL_RX_PROMISC && cmd != VIRTIO_NET_CTRL_RX_ALLMULTI))
			return VIRTIO_NET_ERR;
		virtq_copy_from_out(c, 2, &on, 1);
		if (cmd == VIRTIO_NET_CTRL_RX_PROMISC)
			n->promisc = on;
		else
			n->allmulti = on;
		return VIRTIO_NET_OK;
	}
	case VIRTIO_NET_CTRL_MAC:
		if (cmd == VIRTIO_NET_CTRL_MAC_TABLE_SET && has(n, VIRTIO_NET_F_CTRL_RX))
			return ctrl_mac_table(c);   /* accepted: we filter nothing */
		if (cmd == VIRTIO_NET_CTRL_MAC_ADDR_SET && has(n, VIRTIO_NET_F_CTRL_MAC_ADDR) && dlen == 6) {
			virtq_copy_from_out(c, 2, n->mac, 6);
			n->vdev.config_generation++;
			return VIRTIO_NET_OK;
		}
		return VIRTIO_NET_ERR;
	case VIRTIO_NET_CTRL_MQ: {
		uint16_t pairs;
		if (!has(n, VIRTIO_NET_F_MQ) || cmd != VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET || dlen != 2)
			return VIRTIO_NET_ERR;
		virtq_copy_from_out(c, 2, &pairs, 2);
		pairs = le16toh(pairs);
		if (pairs < 1 || pairs > n->pairs)
			return VIRTIO_NET_ERR;
		if (pairs != n->active_pairs) {
			/* Backend queues map to receive queues anew: run them all. */
			n->active_pairs = pairs;
			for (unsigned g = 0; g < pairs; g++)
				n->pending |= 1u << (2 * g);
			vnet_wake(n);
		}
		return VIRTIO_NET_OK;
	}
	case VIRTIO_NET_CTRL_GUEST_OFFLOADS: {
		uint64_t v;
		if (!has(n, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) || cmd != VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET ||
		    dlen != 8)
			return VIRTIO_NET_ERR;
		virtq_copy_from_out(c, 2, &v, 8);
		v = le64toh(v);
		if (v & ~(n->vdev.guest_features & GUEST_OFFLOAD_FEATURES))
			return VIRTIO_NET_ERR;
		n->rx_offload_features = v;
		apply_offloads(n);
		return VIRTIO_NET_OK;
	}
	default:
		return VIRTIO_NET_ERR;
	}
}

static void ctrl_run(struct vnet *n)
{
	struct virtq *vq = &n->vdev.queues[n->ctrl_q].vq;
	bool pushed = false;
	for (;;) {
		enum virtq_pop_result res = virtq_pop(vq, &n->chain);
		if (res == VIRTQ_EMPTY) {
			if (!virtq_enable_notify(vq, true))
				break;
			continue;
		}
		if (res == VIRTQ_BAD_RING) {
			virtio_dev_needs_reset(&n->vdev, "control ring is corrupt");
			return;
		}
		const struct virtq_chain *c = &n->chain;
		uint32_t written = 0;
		if (res == VIRTQ_OK && c->in_len >= 1) {
			uint8_t ack = ctrl_handle(n, c);
			written = (uint32_t)virtq_copy_to_in(c, 0, &ack, 1);
		} else {
			n->vdev.bad_requests++;   /* no room for the ack: nothing to say */
		}
		virtq_push(vq, c->head, written);
		pushed = true;
	}
	if (pushed)
		vnet_notify_guest(n, n->ctrl_q);
}

/* ---- vhost-net -------------------------------------------------------- */

static void vhost_stop(struct vnet *n)
{
	if (!n->vhost_on)
		return;
	vhost_net_stop(&n->vhost, n->vrings);
	n->vhost_on = false;
	/* Take over where the kernel stopped. */
	for (unsigned i = 0; i < 2 * n->pairs; i++) {
		struct virtq *vq = &n->vdev.queues[i].vq;
		uint16_t used;
		vq->last_avail = n->vrings[i].base;
		if (guest_mem_read(vq->mem, vq->used_gpa + 2, &used, 2) == 0)
			vq->used_idx = le16toh(used);
		vq->signalled_valid = false;
	}
	log_info("%s: vhost-net stopped", n->name);
}

/* Why vhost-net is not used: a warning when it was asked for (vhost=on),
 * else for -v only; once per device. */
static void vhost_notice(struct vnet *n, const char *fmt, const char *why)
{
	if (n->vhost_noticed)
		return;
	n->vhost_noticed = true;
	if (n->vhost_mode == NET_VHOST_ON)
		log_warn(fmt, n->name, why);
	else
		log_info(fmt, n->name, why);
}

static void vhost_give_up(struct vnet *n, const char *fmt, const char *why)
{
	n->vhost_given_up = true;
	vhost_notice(n, fmt, why);
}

/* At DRIVER_OK, on the I/O thread: hands the data queues to vhost if it
 * was asked for (or allowed) and can work. */
static void vhost_try_start(struct vnet *n)
{
	const struct net_backend_ops *ops = n->be->ops;
	if (n->vhost_on || n->vhost_given_up || n->vhost_mode == NET_VHOST_OFF || !ops->tap_fd)
		return;
	int taps[NET_MAX_QUEUES];
	for (unsigned p = 0; p < n->pairs; p++) {
		taps[p] = ops->tap_fd(n->be, p);
		if (taps[p] < 0)
			return;   /* not a tap */
	}
	if (n->limited) {
		vhost_give_up(n, "%s: vhost-net not used (%s); using the userspace backend",
			      "bw/pps limits are applied in userspace");
		return;
	}
	for (unsigned i = 0; i < 2 * n->pairs; i++) {
		const struct virtio_queue *q = &n->vdev.queues[i];
		if (!q->enabled) {
			/* Its tap queue would go unread. Maybe the next driver. */
			vhost_notice(n, "%s: vhost-net not used (%s); using the userspace backend",
				     "the driver did not enable every queue");
			return;
		}
		n->vrings[i] = (struct vhost_net_ring){
			.num = q->vq.size, .base = q->vq.last_avail,
			.desc_gpa = q->vq.desc_gpa, .avail_gpa = q->vq.avail_gpa, .used_gpa = q->vq.used_gpa,
			.kick_fd = q->kick_fd, .call_fd = n->call_fds[i],
		};
	}
	/* Nothing of ours may read the rings or the taps meanwhile. */
	for (unsigned b = 0; b < n->be->nr_queues; b++)
		rx_set(n, b, false);
	for (unsigned i = 0; i < 2 * n->pairs; i++)
		virtio_queue_detach_kick(&n->vdev, i);
	int ret = vhost_net_start(&n->vhost, n->vio, &n->vm->mem, n->vdev.guest_features, n->pairs,
				  n->vrings, taps);
	if (ret) {
		for (unsigned i = 0; i < 2 * n->pairs; i++)
			virtio_queue_attach_kick(&n->vdev, i);
		if (n->vhost.open_failed)
			vhost_give_up(n, "%s: " VHOST_NET_DEV " not available (%s); using the userspace backend",
				      strerror(-ret));
		else
			vhost_give_up(n, "%s: vhost-net failed (%s); using the userspace backend", n->vhost.err);
		return;
	}
	n->vhost_on = true;
	/* Buffers made available before vhost started: let it look. */
	for (unsigned i = 0; i < 2 * n->pairs; i++) {
		uint64_t one = 1;
		ssize_t w = write(n->vdev.queues[i].kick_fd, &one, sizeof(one));
		(void)w;
	}
	log_info("%s: vhost-net on %u queue pair(s)", n->name, n->pairs);
}

/* vhost wants an interrupt for queue q. */
static void vnet_on_call(void *opaque, uint32_t events)
{
	struct vnet_call *call = opaque;
	struct vnet *n = call->n;
	uint64_t v;
	(void)events;
	if (read(n->call_fds[call->q], &v, sizeof(v)) < 0)
		return;
	pthread_mutex_lock(&n->vdev.lock);
	if (n->vhost_on && vnet_running(n)) {
		stat_add(&n->stats.irqs, 1);
		n->vdev.transport->notify_queue(&n->vdev, call->q);
	}
	pthread_mutex_unlock(&n->vdev.lock);
}

/* ---- the I/O thread's entry points -------------------------------------- */

static void run_queue(struct vnet *n, unsigned qi)
{
	if (qi == n->ctrl_q)
		ctrl_run(n);
	else if (n->vhost_on)
		return;
	else if (qi & 1)
		tx_run(n, qi / 2);
	else
		rx_run(n, qi / 2);
}

/* Brings the backend, vhost and the doorbells in line with what the vCPU
 * threads did (activate, reset). I/O thread, lock held. */
static void vnet_sync(struct vnet *n)
{
	if (n->synced_gen == n->gen)
		return;
	n->synced_gen = n->gen;
	if (!vnet_running(n)) {
		/* Reset (vhost was stopped then): back to our own doorbells, and
		 * nothing more from the backend until the next DRIVER_OK. */
		for (unsigned i = 0; i < 2 * n->pairs; i++)
			virtio_queue_attach_kick(&n->vdev, i);
		for (unsigned b = 0; b < n->be->nr_queues; b++)
			rx_set(n, b, false);
		n->pending = n->throttled = 0;
		return;
	}
	apply_offloads(n);
	vhost_try_start(n);
	if (n->vhost_on)
		return;
	for (unsigned i = 0; i < 2 * n->pairs; i++)
		virtio_queue_attach_kick(&n->vdev, i);
	for (unsigned g = 0; g < n->active_pairs; g++)
		rx_run(n, g);
}

static void vnet_enter(struct vnet *n)
{
	n->in_io = true;
	vnet_sync(n);
}

static void vnet_leave(struct vnet *n)
{
	n->in_io = false;
}

/* A doorbell (virtio_kick: lock held, DRIVER_OK set). */
static void vnet_queue_notify(struct virtio_dev *vdev, unsigned q)
{
	struct vnet *n = vdev->priv;
	uint64_t k = atomic_load_explicit(&vdev->queues[q].kicks, memory_order_relaxed);
	stat_add(&n->stats.doorbells, k - n->kicks_seen[q]);
	n->kicks_seen[q] = k;
	vnet_enter(n);
	if (vnet_running(n))
		run_queue(n, q);
	vnet_leave(n);
}

/* The backend has frames for queue b (I/O thread, lock not held, except
 * when the backend calls back from inside recv/rx_notify). */
static void vnet_rx_ready(void *opaque, unsigned b)
{
	struct vnet *n = opaque;
	if (n->in_io) {
		/* Called back from inside the device: the lock is ours. */
		n->pending |= 1u << (2 * (b % n->active_pairs));
		vnet_wake(n);
		return;
	}
	pthread_mutex_lock(&n->vdev.lock);
	vnet_enter(n);
	if (b < n->be->nr_queues) {
		if (vnet_running(n) && !n->vhost_on)
			rx_run(n, b % n->active_pairs);
		else
			rx_set(n, b, false);   /* e.g. NEEDS_RESET: a level-triggered backend would spin */
	}
	vnet_leave(n);
	pthread_mutex_unlock(&n->vdev.lock);
}

static void run_mask(struct vnet *n, uint32_t mask)
{
	for (unsigned qi = 0; mask && vnet_running(n); qi++, mask >>= 1)
		if (mask & 1)
			run_queue(n, qi);
}

static void vnet_on_wake(void *opaque, uint32_t events)
{
	struct vnet *n = opaque;
	uint64_t v;
	(void)events;
	if (read(n->wake_fd, &v, sizeof(v)) < 0)
		return;
	pthread_mutex_lock(&n->vdev.lock);
	vnet_enter(n);
	uint32_t mask = n->pending;
	n->pending = 0;
	if (vnet_running(n))
		run_mask(n, mask);
	vnet_leave(n);
	pthread_mutex_unlock(&n->vdev.lock);
}

static void vnet_on_timer(void *opaque, uint32_t events)
{
	struct vnet *n = opaque;
	uint64_t v;
	(void)events;
	if (read(n->timer_fd, &v, sizeof(v)) < 0)
		return;
	pthread_mutex_lock(&n->vdev.lock);
	n->timer_armed = false;
	vnet_enter(n);
	uint32_t mask = n->throttled;
	n->throttled = 0;
	if (vnet_running(n))
		run_mask(n, mask);
	vnet_leave(n);
	pthread_mutex_unlock(&n->vdev.lock);
}

/* ---- virtio_device_ops -------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
	v = htole16(v);
	memcpy(p, &v, 2);
}

static void vnet_config_read(struct virtio_dev *vdev, unsigned off, void *data, unsigned len)
{
	struct vnet *n = vdev->priv;
	uint8_t c[VNET_CONFIG_SIZE];
	memcpy(c, n->mac, 6);
	put16(c + 6, VIRTIO_NET_S_LINK_UP);
	put16(c + 8, (uint16_t)n->pairs);
	put16(c + 10, VNET_MTU);
	memcpy(data, c + off, len);
}

/* DRIVER_OK (vCPU thread, lock held). */
static void vnet_activate(struct virtio_dev *vdev)
{
	struct vnet *n = vdev->priv;
	n->rx_offload_features = vdev->guest_features & GUEST_OFFLOAD_FEATURES;
	n->active_pairs = 1;
	n->gen++;
	vnet_wake(n);
}

/* Reset (lock held; a vCPU thread, or the builder): after this nothing
 * touches guest memory. The userspace path only runs under the lock and
 * checks DRIVER_OK first; vhost is stopped here, synchronously. */
static void vnet_reset(struct virtio_dev *vdev)
{
	struct vnet *n = vdev->priv;
	vhost_stop(n);
	n->active_pairs = 1;
	n->promisc = true;   /* as QEMU: the driver turns it off if it wants */
	n->allmulti = false;
	memcpy(n->mac, n->cfg_mac, 6);
	n->rx_offload_features = 0;
	n->gen++;
	vnet_wake(n);
}

static const struct virtio_device_ops vnet_ops = {
	.name = "virtio-net",
	.device_id = VIRTIO_ID_NET,
	.pci_class = 0x020000,
	.queue_notify = vnet_queue_notify,
	.config_read = vnet_config_read,
	.activate = vnet_activate,
	.reset = vnet_reset,
};

/* ---- building it ------------------------------------------------------ */

static uint64_t vnet_features(const struct vnet *n)
{
	uint64_t f = VIRTIO_BIT(VIRTIO_NET_F_MAC) | VIRTIO_BIT(VIRTIO_NET_F_STATUS) |
		     VIRTIO_BIT(VIRTIO_NET_F_MTU) | VIRTIO_BIT(VIRTIO_NET_F_MRG_RXBUF) |
		     VIRTIO_BIT(VIRTIO_NET_F_CTRL_VQ) | VIRTIO_BIT(VIRTIO_NET_F_CTRL_RX) |
		     VIRTIO_BIT(VIRTIO_NET_F_CTRL_MAC_ADDR);
	if (n->pairs > 1)
		f |= VIRTIO_BIT(VIRTIO_NET_F_MQ);
	unsigned o = n->be->offloads;
	if (!(o & NET_OFFLOAD_CSUM))
		return f;   /* no checksum offload, no segmentation offload */
	f |= VIRTIO_BIT(VIRTIO_NET_F_CSUM) | VIRTIO_BIT(VIRTIO_NET_F_GUEST_CSUM) |
	     VIRTIO_BIT(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);
	if (o & NET_OFFLOAD_TSO4)
		f |= VIRTIO_BIT(VIRTIO_NET_F_HOST_TSO4) | VIRTIO_BIT(VIRTIO_NET_F_GUEST_TSO4);
	if (o & NET_OFFLOAD_TSO6)
		f |= VIRTIO_BIT(VIRTIO_NET_F_HOST_TSO6) | VIRTIO_BIT(VIRTIO_NET_F_GUEST_TSO6);
	if ((o & NET_OFFLOAD_ECN) && (o & (NET_OFFLOAD_TSO4 | NET_OFFLOAD_TSO6)))
		f |= VIRTIO_BIT(VIRTIO_NET_F_HOST_ECN) | VIRTIO_BIT(VIRTIO_NET_F_GUEST_ECN);
	if (o & NET_OFFLOAD_UFO)
		f |= VIRTIO_BIT(VIRTIO_NET_F_HOST_UFO) | VIRTIO_BIT(VIRTIO_NET_F_GUEST_UFO);
	return f;
}

static unsigned want_queues(const struct vm *vm, const struct net_config *nc)
{
	unsigned want = nc->queues ? nc->queues : vm->cfg ? vm->cfg->cpus : 1;
	if (want < 1)
		want = 1;
	return want > NET_MAX_QUEUES ? NET_MAX_QUEUES : want;
}

void virtio_net_free(void *state)
{
	struct vnet *n = state;
	if (!n)
		return;
	pthread_mutex_lock(&n->vdev.lock);
	vhost_stop(n);
	pthread_mutex_unlock(&n->vdev.lock);
	for (unsigned q = 0; q < n->vdev.nr_queues; q++) {
		uint64_t k = atomic_load_explicit(&n->vdev.queues[q].kicks, memory_order_relaxed);
		stat_add(&n->stats.doorbells, k - n->kicks_seen[q]);
		n->kicks_seen[q] = k;
	}
	char line[256];
	net_stats_format(&n->stats, line, sizeof(line));
	log_info("%s: %s", n->name, line);
	for (unsigned b = 0; b < n->be->nr_queues; b++)
		rx_set(n, b, false);
	net_backend_destroy(n->be);
	for (unsigned i = 0; i < 2 * n->pairs; i++) {
		loop_remove(n->loop, n->call_fds[i]);
		close(n->call_fds[i]);
	}
	loop_remove(n->loop, n->timer_fd);
	loop_remove(n->loop, n->wake_fd);
	virtio_dev_destroy(&n->vdev);
	close(n->timer_fd);
	close(n->wake_fd);
	free(n);
}

void *virtio_net_new(struct vm *vm, const struct net_config *nc, struct net_backend *be,
		     struct loop *loop, const struct vhost_io *vio)
{
	bool added_wake = false, added_timer = false;
	unsigned calls = 0;
	struct vnet *n = calloc(1, sizeof(*n));
	if (!n) {
		log_err("virtio-net%u: out of memory", nc->index);
		net_backend_destroy(be);
		return NULL;
	}
	n->vm = vm;
	n->be = be;
	n->loop = loop;
	n->vio = vio ? vio : &vhost_io_system;
	n->vhost_mode = nc->vhost;
	snprintf(n->name, sizeof(n->name), "virtio-net%u", nc->index);
	memcpy(n->cfg_mac, nc->mac, 6);
	memcpy(n->mac, nc->mac, 6);
	n->pairs = want_queues(vm, nc);
	if (be->nr_queues < n->pairs)
		n->pairs = be->nr_queues ? be->nr_queues : 1;
	n->active_pairs = 1;
	n->ctrl_q = 2 * n->pairs;
	n->limited = nc->bw || nc->pps;
	uint64_t now = net_now_ns();
	net_limiter_init(&n->tx_lim, nc->bw, nc->pps, now);
	net_limiter_init(&n->rx_lim, nc->bw, nc->pps, now);
	n->timer_fd = n->wake_fd = -1;
	for (unsigned i = 0; i < 2 * NET_MAX_QUEUES; i++)
		n->call_fds[i] = -1;

	/* Everything the device needs before its first reset (in init). */
	n->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	n->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	bool ok = n->wake_fd >= 0 && n->timer_fd >= 0;
	for (unsigned i = 0; ok && i < 2 * n->pairs; i++) {
		n->call_fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		n->calls[i] = (struct vnet_call){ n, i };
		ok = n->call_fds[i] >= 0;
	}
	if (!ok) {
		log_err("%s: cannot create its eventfds: %s", n->name, strerror(errno));
		goto fail;
	}
	if (virtio_dev_init(&n->vdev, vm, &vnet_ops, n, n->name, vnet_features(n), 2 * n->pairs + 1,
			    VNET_QUEUE_SIZE, VNET_CONFIG_SIZE, loop))
		goto fail;
	if (loop_add(loop, n->wake_fd, EPOLLIN, vnet_on_wake, n))
		goto fail_loop;
	added_wake = true;
	if (loop_add(loop, n->timer_fd, EPOLLIN, vnet_on_timer, n))
		goto fail_loop;
	added_timer = true;
	for (; calls < 2 * n->pairs; calls++)
		if (loop_add(loop, n->call_fds[calls], EPOLLIN, vnet_on_call, &n->calls[calls]))
			goto fail_loop;
	be->rx_ready = vnet_rx_ready;
	be->opaque = n;
	return n;

fail_loop:
	log_err("%s: cannot watch its eventfds", n->name);
	for (unsigned i = 0; i < calls; i++)
		loop_remove(loop, n->call_fds[i]);
	if (added_timer)
		loop_remove(loop, n->timer_fd);
	if (added_wake)
		loop_remove(loop, n->wake_fd);
	virtio_dev_destroy(&n->vdev);
fail:
	for (unsigned i = 0; i < 2 * NET_MAX_QUEUES; i++)
		if (n->call_fds[i] >= 0)
			close(n->call_fds[i]);
	if (n->timer_fd >= 0)
		close(n->timer_fd);
	if (n->wake_fd >= 0)
		close(n->wake_fd);
	net_backend_destroy(be);
	free(n);
	return NULL;
}

struct virtio_dev *virtio_net_vdev(void *state)
{
	return &((struct vnet *)state)->vdev;
}

const struct net_stats *virtio_net_stats(const void *state)
{
	return &((const struct vnet *)state)->stats;
}

static int vnet_create(struct vm *vm, const void *arg, void **state)
{
	const struct net_config *nc = arg;
	struct net_backend *be = net_backend_create(nc, vm->cfg->name, vm->loop, want_queues(vm, nc));
	if (!be)
		return -EIO;
	struct vnet *n = virtio_net_new(vm, nc, be, vm->loop, NULL);
	if (!n)
		return -EIO;
	n->transport_kind = nc->transport;
	n->transport = virtio_transport_add(vm, &n->vdev, nc->transport);
	if (!n->transport) {
		virtio_net_free(n);
		return -EIO;
	}
	log_info("%s: %s backend%s%s, %u queue pair(s), MAC %02x:%02x:%02x:%02x:%02x:%02x%s", n->name,
		 be->ops->name, be->ifname[0] ? " " : "", be->ifname, n->pairs, n->mac[0], n->mac[1],
		 n->mac[2], n->mac[3], n->mac[4], n->mac[5], be->offloads ? ", offloads" : "");
	*state = n;
	return 0;
}

static void vnet_destroy(struct vm *vm, void *state)
{
	struct vnet *n = state;
	virtio_transport_remove(vm, n->transport_kind, n->transport);
	virtio_net_free(n);
}

const struct device_ops virtio_net_device_ops = {
	.name = "virtio-net",
	.create = vnet_create,
	.destroy = vnet_destroy,
};
