/* The tap backend (--net tap and --net bridge): one /dev/net/tun fd per
 * queue pair, IFF_VNET_HDR with the 12-byte virtio 1.x header, so frames
 * and their offload metadata pass through unchanged.
 *
 * Every fd is non-blocking: send() never waits (a full tap queue drops the
 * frame), recv() returns 0 when nothing is waiting. A tap Kestrel creates
 * is not persistent: the kernel deletes it (and takes it out of its
 * bridge) when the last fd closes, so nothing is left behind on any exit
 * path. A tap that existed before (a persistent one set up by the admin)
 * is left as it was found. */
#include "net/net.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/if_tun.h>
#include <linux/sockios.h>

#include "core/config.h"
#include "core/iov.h"
#include "core/log.h"
#include "core/loop.h"

/* The kernel picks the number: "ktap0", "ktap1"... */
#define TAP_NAME_PATTERN "ktap%d"

struct tap;

struct tap_queue {
	struct tap *tap;
	unsigned index;
	int fd;
	bool watched;     /* registered in the loop (maybe with no events) */
	bool broken;      /* the device went away under us: never watched again */
	/* recv(): the caller's iov plus one spill byte, so that a frame longer
	 * than the caller's buffers is told apart from one that fits exactly. */
	struct iovec iov[IOV_MAX];
	uint8_t spill;
};

struct tap {
	struct net_backend be;
	char bridge[IFNAMSIZ];     /* the bridge we enslaved a pre-existing tap to, or "" */
	struct tap_queue q[NET_MAX_QUEUES];
};

static struct tap *to_tap(struct net_backend *be)
{
	return (struct tap *)be;   /* be is the first member */
}

/* ---- the data path ---- */

static int tap_send(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt)
{
	struct tap *t = to_tap(be);
	if (q >= be->nr_queues)
		return -EINVAL;
	/* A tap write is one frame, whole or not at all. */
	ssize_t n = writev(t->q[q].fd, iov, iovcnt);
	if (n < 0)
		return -errno;   /* EAGAIN: the tap's queue is full (nobody reads it) */
	return 0;
}

/* Reads one frame. The kernel copies what fits and drops the rest of the
 * frame, reporting min(frame, buffer) as the length, so a frame that was
 * cut short looks exactly like one that filled the buffer. An extra
 * one-byte element after the caller's iov removes the doubt: if the read
 * reaches it, the frame was longer than the caller's buffers and is
 * reported as -EMSGSIZE (it is consumed). Only when the caller passes
 * IOV_MAX elements is there no room for the spill byte; a frame that fills
 * such a buffer exactly is then returned as is, possibly truncated. */
static ssize_t tap_recv(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt)
{
	struct tap *t = to_tap(be);
	if (q >= be->nr_queues || iovcnt < 0)
		return -EINVAL;
	struct tap_queue *tq = &t->q[q];
	size_t total = 0;
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;

	ssize_t n;
	if (iovcnt < IOV_MAX && total >= NET_HDR_LEN) {
		memcpy(tq->iov, iov, (size_t)iovcnt * sizeof(*iov));
		tq->iov[iovcnt] = (struct iovec){ .iov_base = &tq->spill, .iov_len = 1 };
		n = readv(tq->fd, tq->iov, iovcnt + 1);
	} else {
		/* Less than a header: the kernel refuses (EINVAL) and drops. */
		n = readv(tq->fd, iov, iovcnt);
	}
	if (n < 0)
		return errno == EAGAIN ? 0 : -errno;
	if ((size_t)n > total)
		return -EMSGSIZE;
	/* The tap writes the 10-byte legacy header and skips num_buffers:
	 * zero it, so the header is fully defined, as from every backend. */
	iov_memset(iov, iovcnt, offsetof(struct virtio_net_hdr_v1, num_buffers), 0, 2);
	return n;
}

static void tap_on_readable(void *opaque, uint32_t events)
{
	struct tap_queue *tq = opaque;
	struct tap *t = tq->tap;
	if ((events & (EPOLLERR | EPOLLHUP)) && !(events & EPOLLIN)) {
		/* The interface was deleted (ip link del): the fd stays in
		 * error forever, so stop watching it. */
		log_err("tap \"%s\": queue %u failed (was the interface deleted?)", t->be.ifname, tq->index);
		loop_remove(t->be.loop, tq->fd);
		tq->watched = false;
		tq->broken = true;
		return;
	}
	if (t->be.rx_ready)
		t->be.rx_ready(t->be.opaque, tq->index);
}

static void tap_rx_notify(struct net_backend *be, unsigned q, bool on)
{
	struct tap *t = to_tap(be);
	if (q >= be->nr_queues)
		return;
	struct tap_queue *tq = &t->q[q];
	if (tq->broken)
		return;
	if (!tq->watched) {
		if (!on)
			return;
		int ret = loop_add(be->loop, tq->fd, EPOLLIN, tap_on_readable, tq);
		if (ret < 0) {
			log_err("tap \"%s\": cannot watch queue %u: %s", be->ifname, q, strerror(-ret));
			return;
		}
		tq->watched = true;
		return;
	}
	/* Stay registered: switching the events is cheaper than re-adding. */
	loop_modify(be->loop, tq->fd, on ? EPOLLIN : 0);
}

static int tap_set_offloads(struct net_backend *be, unsigned offloads)
{
	struct tap *t = to_tap(be);
	offloads &= be->offloads;
	/* The kernel ignores every TSO/UFO bit unless CSUM is set too. */
	unsigned long f = 0;
	if (offloads & NET_OFFLOAD_CSUM) {
		f |= TUN_F_CSUM;
		if (offloads & NET_OFFLOAD_TSO4)
			f |= TUN_F_TSO4;
		if (offloads & NET_OFFLOAD_TSO6)
			f |= TUN_F_TSO6;
		if ((offloads & NET_OFFLOAD_ECN) && (f & (TUN_F_TSO4 | TUN_F_TSO6)))
			f |= TUN_F_TSO_ECN;
		if (offloads & NET_OFFLOAD_UFO)
			f |= TUN_F_UFO;
	}
	/* Offloads belong to the device, not the queue: one fd is enough. */
	if (ioctl(t->q[0].fd, TUNSETOFFLOAD, f) < 0) {
		int e = errno;
		log_warn("tap \"%s\": cannot set offloads 0x%lx: %s", be->ifname, f, strerror(e));
		return -e;
	}
	return 0;
}

static int tap_fd(struct net_backend *be, unsigned q)
{
	struct tap *t = to_tap(be);
	return q < be->nr_queues ? t->q[q].fd : -1;
}

static int ctl_socket(void)
{
	return socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
}

static void tap_bridge_del(const char *bridge, const char *ifname)
{
	int s = ctl_socket();
	if (s < 0)
		return;
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", bridge);
	ifr.ifr_ifindex = (int)if_nametoindex(ifname);
	if (ifr.ifr_ifindex && ioctl(s, SIOCBRDELIF, &ifr) < 0)
		log_info("tap \"%s\": cannot take it out of bridge \"%s\": %s", ifname, bridge, strerror(errno));
	close(s);
}

static void tap_destroy(struct net_backend *be)
{
	struct tap *t = to_tap(be);
	for (unsigned i = 0; i < NET_MAX_QUEUES; i++) {
		struct tap_queue *tq = &t->q[i];
		if (tq->watched)
			loop_remove(be->loop, tq->fd);
		if (tq->fd >= 0)
			close(tq->fd);
	}
	if (t->bridge[0])
		tap_bridge_del(t->bridge, be->ifname);
	free(t);
}

static const struct net_backend_ops tap_ops = {
	.name = "tap",
	.send = tap_send,
	.recv = tap_recv,
	.rx_notify = tap_rx_notify,
	.set_offloads = tap_set_offloads,
	.tap_fd = tap_fd,
	.destroy = tap_destroy,
};

/* ---- creation ---- */

/* What went wrong, for the error line. */
struct tap_err {
	char subject[96];   /* `tap "ktap0"` or `bridge "br0": tap "ktap0"` */
};

static void tap_subject(struct tap_err *te, const struct net_config *nc, const char *name)
{
	bool named = name[0] && !strchr(name, '%');
	if (nc->kind == NET_KIND_BRIDGE) {
		if (named)
			snprintf(te->subject, sizeof(te->subject), "bridge \"%s\": tap \"%s\"", nc->bridge, name);
		else
			snprintf(te->subject, sizeof(te->subject), "bridge \"%s\": new tap", nc->bridge);
	} else {
		if (named)
			snprintf(te->subject, sizeof(te->subject), "tap \"%s\"", name);
		else
			snprintf(te->subject, sizeof(te->subject), "new tap");
	}
}

static const char *tap_attach_hint(int err)
{
	switch (err) {
	case EPERM:
		return " (creating a tap needs CAP_NET_ADMIN; without it, only a persistent tap owned by this user)";
	case EBUSY:
		return " (another process has it open)";
	case EINVAL:
		return " (the interface exists and is not a tap)";
	default:
		return "";
	}
}

/* Opens one queue of tap `name` (a name or a %d pattern). Returns the fd and
 * the real name, or -errno with *what saying which step failed. */
static int tap_open_queue(const char *name, bool mq, char actual[IFNAMSIZ], const char **what)
{
	int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		*what = "cannot open /dev/net/tun";
		return -errno;
	}
	struct ifreq ifr = { 0 };
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (mq ? IFF_MULTI_QUEUE : 0);
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		int e = errno;
		close(fd);
		*what = "cannot attach to it";
		return -e;
	}
	int hdr = NET_HDR_LEN;
	if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) {
		int e = errno;
		close(fd);
		*what = "cannot set the virtio-net header size";
		return -e;
	}
	memcpy(actual, ifr.ifr_name, IFNAMSIZ);
	actual[IFNAMSIZ - 1] = '\0';
	return fd;
}

/* Which offloads the tap accepts. Leaves them all off: the guest has not
 * said what it can take yet (set_offloads). */
static unsigned tap_probe_offloads(int fd)
{
	unsigned off = 0;
	if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)TUN_F_CSUM) < 0)
		return 0;
	off |= NET_OFFLOAD_CSUM;
	if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4)) == 0)
		off |= NET_OFFLOAD_TSO4;
	if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO6)) == 0)
		off |= NET_OFFLOAD_TSO6;
	if ((off & NET_OFFLOAD_TSO4) &&
	    ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN)) == 0)
		off |= NET_OFFLOAD_ECN;
	if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_UFO)) == 0)
		off |= NET_OFFLOAD_UFO;
	ioctl(fd, TUNSETOFFLOAD, 0UL);
	return off;
}

/* Best effort: an admin may prefer to bring it up (or keep it down). */
static void tap_bring_up(const char *ifname)
{
	int s = ctl_socket();
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		goto fail;
	if (!(ifr.ifr_flags & IFF_UP)) {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			goto fail;
	}
	close(s);
	return;
fail:
	log_info("tap \"%s\": cannot bring it up (%s); do it yourself: ip link set %s up", ifname,
		 strerror(errno), ifname);
	if (s >= 0)
		close(s);
}

/* Whether `ifname` is already a port of `bridge` (sysfs knows). */
static bool tap_is_port_of(const char *ifname, const char *bridge)
{
	char path[64], target[256];
	snprintf(path, sizeof(path), "/sys/class/net/%s/master", ifname);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n <= 0)
		return false;
	target[n] = '\0';
	const char *base = strrchr(target, '/');
	return strcmp(base ? base + 1 : target, bridge) == 0;
}

/* Enslaves the tap to the bridge. Returns 0 (and whether it was already a
 * port) or -errno with the error line printed. */
static int tap_bridge_add(const struct tap_err *te, const char *bridge, const char *ifname, bool *already)
{
	*already = false;
	int s = ctl_socket();
	if (s < 0) {
		log_err("%s: cannot add it to the bridge: %s", te->subject, strerror(errno));
		return -EIO;
	}
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", bridge);
	ifr.ifr_ifindex = (int)if_nametoindex(ifname);
	int ret = 0;
	if (ioctl(s, SIOCBRADDIF, &ifr) < 0) {
		int e = errno;
		if (e == EBUSY && tap_is_port_of(ifname, bridge)) {
			*already = true;
		} else {
			const char *hint = e == EPERM ? " (needs CAP_NET_ADMIN)"
				: e == EOPNOTSUPP ? " (it is not a bridge)"
				: e == EBUSY ? " (the tap is already a port of another bridge or bond)"
				: "";
			log_err("bridge \"%s\": cannot add tap \"%s\" to it: %s%s", bridge, ifname, strerror(e), hint);
			ret = -e;
		}
	}
	close(s);
	return ret;
}

struct net_backend *net_tap_create(const struct net_config *nc, struct loop *loop, unsigned want_queues)
{
	bool bridge = nc->kind == NET_KIND_BRIDGE;
	const char *name = nc->ifname[0] ? nc->ifname : TAP_NAME_PATTERN;
	struct tap_err te;
	tap_subject(&te, nc, name);

	if (want_queues == 0)
		want_queues = 1;
	if (want_queues > NET_MAX_QUEUES)
		want_queues = NET_MAX_QUEUES;
	if (bridge) {
		/* Checked first so that nothing is created for a typo. */
		if (!nc->bridge[0]) {
			log_err("--net bridge: no bridge given (br=NAME)");
			return NULL;
		}
		if (!if_nametoindex(nc->bridge)) {
			log_err("bridge \"%s\" does not exist", nc->bridge);
			return NULL;
		}
	}
	bool existed = !strchr(name, '%') && if_nametoindex(name) != 0;

	struct tap *t = calloc(1, sizeof(*t));
	if (!t) {
		log_err("%s: out of memory", te.subject);
		return NULL;
	}
	for (unsigned i = 0; i < NET_MAX_QUEUES; i++)
		t->q[i] = (struct tap_queue){ .tap = t, .index = i, .fd = -1 };
	t->be.ops = &tap_ops;
	t->be.loop = loop;

	/* Queue 0 decides the name and whether the tap is multi-queue. An
	 * existing tap was created one way or the other; the kernel refuses
	 * the other (EINVAL), so try both. */
	bool mq = want_queues > 1;
	const char *what = "";
	int fd = tap_open_queue(name, mq, t->be.ifname, &what);
	if (fd == -EINVAL) {
		const char *what2;
		int fd2 = tap_open_queue(name, !mq, t->be.ifname, &what2);
		if (fd2 >= 0) {
			if (mq)
				log_info("tap \"%s\" is single-queue: using 1 queue instead of %u",
					 t->be.ifname, want_queues);
			mq = !mq;
			fd = fd2;
		}
	}
	if (fd < 0) {
		const char *hint = strcmp(what, "cannot attach to it") == 0 ? tap_attach_hint(-fd)
			: fd == -ENOENT ? " (load the tun module: modprobe tun)" : "";
		log_err("%s: %s: %s%s", te.subject, what, strerror(-fd), hint);
		free(t);
		return NULL;
	}
	t->q[0].fd = fd;
	t->be.nr_queues = 1;
	tap_subject(&te, nc, t->be.ifname);

	/* The other queues attach to the same device by its real name. */
	for (unsigned i = 1; mq && i < want_queues; i++) {
		char same[IFNAMSIZ];
		fd = tap_open_queue(t->be.ifname, true, same, &what);
		if (fd < 0) {
			log_info("%s: only %u of %u queues (%s: %s)", te.subject, i, want_queues, what,
				 strerror(-fd));
			break;
		}
		t->q[i].fd = fd;
		t->be.nr_queues = i + 1;
	}

	t->be.offloads = tap_probe_offloads(t->q[0].fd);

	if (bridge) {
		bool already;
		if (tap_bridge_add(&te, nc->bridge, t->be.ifname, &already) < 0) {
			tap_destroy(&t->be);   /* a tap we created vanishes with its fds */
			return NULL;
		}
		if (existed && !already)
			snprintf(t->bridge, sizeof(t->bridge), "%s", nc->bridge);
	}
	tap_bring_up(t->be.ifname);
	log_info("tap \"%s\": %s, %u queue(s), offloads 0x%x%s%s%s", t->be.ifname,
		 existed ? "existing" : "created", t->be.nr_queues, t->be.offloads,
		 bridge ? ", in bridge \"" : "", bridge ? nc->bridge : "", bridge ? "\"" : "");
	return &t->be;
}
