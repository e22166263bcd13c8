/* Network backends and what the NIC models (virtio-net, e1000) share.
 *
 * A frame crosses the NIC/backend boundary always with a 12-byte
 * struct virtio_net_hdr_v1 in front (the virtio 1.x header, which a tap
 * opened with IFF_VNET_HDR also speaks). Backends that cannot do offloads
 * (user-mode networking) advertise no NET_OFFLOAD_* bits: the NICs then
 * never offer checksum/GSO to the guest, so on TX the header carries no
 * offload requests, and on RX such backends pass an all-zero header.
 *
 * Threads: a backend is created for one `struct loop` (the NIC's I/O
 * thread). recv/rx_notify/set_offloads are called from that thread only,
 * and the backend calls be->rx_ready on that thread too. send() may be
 * called from any thread (e1000 transmits on the vCPU thread that wrote
 * TDT) but never concurrently for the same queue. Backends that have their
 * own thread (slirp) do their locking inside.
 *
 * RX is pull-based so that a guest without buffers applies backpressure:
 * the NIC calls rx_notify(q, true) when it can take frames, the backend
 * calls rx_ready(opaque, q) when frames are waiting, and the NIC then
 * calls recv() until it returns 0 or it runs out of guest buffers (then
 * rx_notify(q, false) until the guest adds buffers). */
#ifndef KESTREL_NET_H
#define KESTREL_NET_H

#include <net/if.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct loop;
struct net_config;

/* virtio 1.2 section 5.1.6: in front of every frame. */
struct virtio_net_hdr_v1 {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len;
	uint16_t gso_size;
	uint16_t csum_start;
	uint16_t csum_offset;
	uint16_t num_buffers;
};
#define NET_HDR_LEN 12
_Static_assert(sizeof(struct virtio_net_hdr_v1) == NET_HDR_LEN, "virtio_net_hdr_v1 is 12 bytes");

#define VIRTIO_NET_HDR_F_NEEDS_CSUM 1
#define VIRTIO_NET_HDR_F_DATA_VALID 2
#define VIRTIO_NET_HDR_GSO_NONE  0
#define VIRTIO_NET_HDR_GSO_TCPV4 1
#define VIRTIO_NET_HDR_GSO_UDP   3
#define VIRTIO_NET_HDR_GSO_TCPV6 4
#define VIRTIO_NET_HDR_GSO_ECN   0x80

/* Largest frame a backend delivers or accepts, header excluded: a 64 KiB
 * GSO super-frame plus Ethernet and VLAN headers. */
#define NET_MAX_FRAME (65536 + 14 + 4)

/* What a backend can carry in the header (and, for RX, what the guest
 * accepts: see set_offloads). */
#define NET_OFFLOAD_CSUM (1u << 0)   /* NEEDS_CSUM on TX; partial csum on RX */
#define NET_OFFLOAD_TSO4 (1u << 1)
#define NET_OFFLOAD_TSO6 (1u << 2)
#define NET_OFFLOAD_ECN  (1u << 3)
#define NET_OFFLOAD_UFO  (1u << 4)

#define NET_MAX_QUEUES 8             /* queue pairs per NIC */

struct net_backend;

struct net_backend_ops {
	const char *name;            /* "tap", "user" */
	/* Transmits one frame (header + frame in iov). Returns 0, or -errno
	 * (the frame is dropped; the caller counts it). Never blocks. */
	int (*send)(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt);
	/* Receives one frame (header + frame) into iov. Returns its length
	 * (bytes written, header included), 0 if nothing is waiting, or
	 * -EMSGSIZE if the frame did not fit (it is consumed and dropped),
	 * or another -errno. */
	ssize_t (*recv)(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt);
	/* Starts (on) or stops (off) rx_ready callbacks for queue q. */
	void (*rx_notify)(struct net_backend *be, unsigned q, bool on);
	/* The guest accepts these NET_OFFLOAD_* on RX (from its negotiated
	 * features); a tap passes them to TUNSETOFFLOAD. Optional. */
	int (*set_offloads)(struct net_backend *be, unsigned offloads);
	/* The tap fd of queue q, for vhost-net; -1 if the backend has none.
	 * Optional. */
	int (*tap_fd)(struct net_backend *be, unsigned q);
	void (*destroy)(struct net_backend *be);
};

struct net_backend {
	const struct net_backend_ops *ops;
	unsigned nr_queues;          /* queue pairs the backend provides */
	unsigned offloads;           /* NET_OFFLOAD_* it can carry */
	struct loop *loop;
	/* Set by the NIC before the first rx_notify. */
	void (*rx_ready)(void *opaque, unsigned q);
	void *opaque;
	char ifname[IFNAMSIZ];       /* tap name, or "" */
};

/* Creates the backend `nc` asks for (tap, bridge or user) with up to
 * `want_queues` queue pairs (a backend may provide fewer: check
 * be->nr_queues). Returns NULL after printing one error line. */
struct net_backend *net_backend_create(const struct net_config *nc, const char *vm_name,
				       struct loop *loop, unsigned want_queues);
void net_backend_destroy(struct net_backend *be);

/* Backend constructors (net_backend_create picks one). */
struct net_backend *net_tap_create(const struct net_config *nc, struct loop *loop, unsigned want_queues);
struct net_backend *net_user_create(const struct net_config *nc, struct loop *loop);

/* ---- counters and rate limiting, shared by the NIC models ---- */

/* Per-NIC counters. Written by the NIC's I/O thread (reg_exits also by
 * vCPU threads), read by anyone: relaxed atomics. */
struct net_stats {
	atomic_uint_fast64_t tx_packets, tx_bytes, tx_dropped;
	atomic_uint_fast64_t rx_packets, rx_bytes, rx_dropped;
	atomic_uint_fast64_t doorbells;   /* guest->device notifications (kicks, TDT writes) */
	atomic_uint_fast64_t reg_exits;   /* register accesses handled in userspace */
	atomic_uint_fast64_t irqs;        /* interrupts raised */
	atomic_uint_fast64_t throttled;   /* times the rate limit made a queue wait */
};

/* One line for logs and later tooling: "tx P pkts B bytes D dropped, ...". */
void net_stats_format(const struct net_stats *s, char *buf, size_t len);

/* A token bucket that may go into debt: a frame is sent whole when the
 * bucket is not empty, then charged; the next waits until it refills. */
struct token_bucket {
	uint64_t rate;       /* tokens per second; 0 = unlimited */
	uint64_t burst;      /* capacity */
	int64_t tokens;
	uint64_t last_ns;
};

void token_bucket_init(struct token_bucket *tb, uint64_t rate, uint64_t burst, uint64_t now_ns);
/* True if an operation may start now (always, when unlimited). */
bool token_bucket_ready(struct token_bucket *tb, uint64_t now_ns);
void token_bucket_charge(struct token_bucket *tb, uint64_t n);
/* Nanoseconds until token_bucket_ready() turns true (0 if it is). */
uint64_t token_bucket_wait_ns(struct token_bucket *tb, uint64_t now_ns);

/* Bandwidth (bytes/s) and packet-rate limits for one direction. */
struct net_limiter {
	struct token_bucket bytes, packets;
};

/* bw: bytes per second, pps: packets per second; 0 = unlimited. */
void net_limiter_init(struct net_limiter *l, uint64_t bw, uint64_t pps, uint64_t now_ns);
bool net_limiter_ready(struct net_limiter *l, uint64_t now_ns);
void net_limiter_charge(struct net_limiter *l, uint64_t bytes);
uint64_t net_limiter_wait_ns(struct net_limiter *l, uint64_t now_ns);

uint64_t net_now_ns(void);   /* CLOCK_MONOTONIC */

/* The default MAC for NIC `index` of VM `vm_name`: 52:54:00 (QEMU's
 * locally administered prefix) and three bytes hashed from name and
 * index, so a VM keeps its MAC across restarts. */
void net_default_mac(const char *vm_name, unsigned index, uint8_t mac[6]);

/* Parses "aa:bb:cc:dd:ee:ff"; rejects multicast addresses. Returns 0/-1. */
int net_parse_mac(const char *s, uint8_t mac[6]);

#endif
