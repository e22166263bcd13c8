/* vhost-net: the kernel moves a virtio-net device's frames between its
 * rings and a tap, with no exit to userspace (Documentation/virtual/vhost).
 *
 * One /dev/vhost-net handle serves one queue pair (vhost index 0 = RX,
 * 1 = TX). For each pair, vhost_net_start() issues, in this order:
 *   VHOST_SET_OWNER, VHOST_GET_FEATURES, VHOST_SET_FEATURES,
 *   VHOST_SET_MEM_TABLE (every guest RAM region: gpa, size, host address),
 *   then for RX and TX: VHOST_SET_VRING_NUM, VHOST_SET_VRING_BASE,
 *   VHOST_SET_VRING_ADDR (host addresses of the rings, each checked with
 *   guest_mem_ptr for its full length), VHOST_SET_VRING_KICK,
 *   VHOST_SET_VRING_CALL,
 *   and last VHOST_NET_SET_BACKEND (the pair's tap) for RX and TX.
 * vhost_net_stop() detaches the taps (VHOST_NET_SET_BACKEND -1, which also
 * waits for vhost's worker to leave the rings), reads back where each ring
 * stopped (VHOST_GET_VRING_BASE) and closes the handles. After it returns
 * the kernel no longer touches guest memory.
 *
 * The tap keeps its 12-byte virtio_net_hdr_v1 (IFF_VNET_HDR, see net.h),
 * so vhost passes the guest's header through untouched
 * (VHOST_NET_F_VIRTIO_NET_HDR is not used).
 *
 * System calls go through a struct vhost_io so a unit test can stand in
 * for the kernel. Any thread may call these; the caller serialises them. */
#ifndef KESTREL_VHOST_NET_H
#define KESTREL_VHOST_NET_H

#include <stdbool.h>
#include <stdint.h>

#include "core/mem.h"
#include "net/net.h"

struct vhost_io {
	int (*open)(const char *path, int flags);
	int (*ioctl)(int fd, unsigned long req, void *arg);   /* returns -1 with errno set */
	int (*close)(int fd);
};

/* open(2), ioctl(2), close(2). */
extern const struct vhost_io vhost_io_system;

#define VHOST_NET_DEV "/dev/vhost-net"

/* One virtqueue as vhost sees it. */
struct vhost_net_ring {
	uint16_t num;                /* queue size */
	uint16_t base;               /* start: next avail index; after stop: where vhost stopped */
	uint64_t desc_gpa, avail_gpa, used_gpa;
	int kick_fd;                 /* the queue's doorbell eventfd */
	int call_fd;                 /* eventfd vhost signals for an interrupt */
};

struct vhost_net {
	const struct vhost_io *io;
	unsigned nr_pairs;           /* running pairs; 0 when stopped */
	int fds[NET_MAX_QUEUES];
	char err[128];               /* why the last start failed */
	bool open_failed;            /* ... at opening VHOST_NET_DEV */
};

/* The virtio features vhost implements in the data path; the rest (MAC,
 * offloads, control queue...) stay with the device model and the tap. */
uint64_t vhost_net_ring_features(uint64_t guest_features);

/* Starts `nr_pairs` pairs: rings[2*i] is pair i's RX ring, rings[2*i+1]
 * its TX ring, tap_fds[i] its tap. `features` are the negotiated virtio
 * features. Returns 0, or -errno with everything undone (handles closed)
 * and vn->err saying which step failed; -ENOENT/-EACCES... from the
 * open itself mean vhost-net is not usable on this host. */
int vhost_net_start(struct vhost_net *vn, const struct vhost_io *io, const struct guest_mem *mem,
		    uint64_t features, unsigned nr_pairs, const struct vhost_net_ring *rings,
		    const int *tap_fds);

/* Stops every pair and fills rings[].base. Idempotent. */
void vhost_net_stop(struct vhost_net *vn, struct vhost_net_ring *rings);

#endif
