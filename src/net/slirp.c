/* User-mode networking (--net user) on libslirp: a TCP/IP stack in the
 * process, with QEMU's defaults: network 10.0.2.0/24, gateway and host
 * 10.0.2.2, DNS 10.0.2.3 (forwarded to the host's resolver), DHCP from
 * 10.0.2.15, IPv4 only. No privileges needed.
 *
 * Threads. libslirp is not thread-safe, so every call into it is made with
 * `slirp_lock` held:
 *  - the slirp thread (one per backend) polls slirp's host sockets and a
 *    wake eventfd, and runs slirp's timers;
 *  - send() (guest -> network) runs slirp_input on the caller's thread (a
 *    vCPU or the NIC's loop), then wakes the slirp thread so that it polls
 *    any socket that input created;
 *  - slirp hands frames for the guest to send_packet (on either thread);
 *    they wait in a bounded queue until the NIC's loop thread pulls them
 *    with recv(). An eventfd, registered in the NIC's loop, is readable
 *    exactly while that queue is not empty, so rx_ready behaves like a
 *    tap's (level-triggered).
 * The lock is process-wide, not per backend: libslirp itself keeps a few
 * statics (its cache of the host's DNS servers), so two instances must not
 * run at once either. */
#include "net/slirp.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <slirp/libslirp.h>

#include "core/config.h"
#include "core/iov.h"
#include "core/log.h"
#include "core/loop.h"

#define ETH_HDR_LEN 14

static pthread_mutex_t slirp_lock = PTHREAD_MUTEX_INITIALIZER;

struct user_frame {
	size_t len;
	uint8_t data[];
};

struct user_timer {
	struct user_timer *next;
	SlirpTimerId id;
	void *cb_opaque;
	int64_t expire_ms;   /* on net_now_ns()'s clock; -1 = not armed */
};

struct user_net {
	struct net_backend be;

	/* Under slirp_lock. */
	Slirp *slirp;
	struct user_timer *timers;
	bool stop;
	uint8_t *linear;            /* send(): a scattered frame made contiguous */

	/* The slirp thread's own. */
	pthread_t thread;
	bool thread_started;
	struct pollfd *pfds;
	unsigned npfds, pfds_cap;

	int wake_fd;                /* eventfd: the slirp thread polls again */
	atomic_bool wake_pending;   /* a wake is in flight: no need for another */

	/* Frames for the guest: pushed by send_packet, popped by recv(). */
	pthread_mutex_t rxq_lock;
	struct user_frame *rxq[NET_USER_RXQ_LEN];
	unsigned rxq_head, rxq_count;
	int rx_fd;                  /* eventfd: readable while rxq is not empty */
	bool rx_watched;            /* rx_fd is in be->loop (loop thread only) */
	atomic_uint_fast64_t rxq_dropped;
};

static struct user_net *to_user(const struct net_backend *be)
{
	return (struct user_net *)be;   /* be is the first member */
}

uint64_t net_user_rxq_dropped(const struct net_backend *be)
{
	return atomic_load_explicit(&to_user(be)->rxq_dropped, memory_order_relaxed);
}

static void user_wake(struct user_net *u)
{
	if (atomic_exchange(&u->wake_pending, true))
		return;
	uint64_t one = 1;
	ssize_t w = write(u->wake_fd, &one, sizeof(one));
	(void)w;   /* only fails when the counter is already huge: still awake */
}

/* ---- iov helpers ---- */

static const uint8_t *iov_contiguous(const struct iovec *iov, int iovcnt, size_t off, size_t len)
{
	for (int i = 0; i < iovcnt; i++) {
		if (off < iov[i].iov_len)
			return iov[i].iov_len - off >= len ? (const uint8_t *)iov[i].iov_base + off : NULL;
		off -= iov[i].iov_len;
	}
	return NULL;
}

/* ---- slirp's callbacks (all called with slirp_lock held) ---- */

static ssize_t user_send_packet(const void *buf, size_t len, void *opaque)
{
	struct user_net *u = opaque;
	/* One producer at a time (slirp_lock), so "not full" stays true
	 * until the push below: no allocation for a frame that is dropped. */
	pthread_mutex_lock(&u->rxq_lock);
	bool full = u->rxq_count == NET_USER_RXQ_LEN;
	pthread_mutex_unlock(&u->rxq_lock);
	struct user_frame *f = full ? NULL : malloc(sizeof(*f) + len);
	if (!f) {
		/* As a NIC whose ring is full: TCP will retransmit. */
		atomic_fetch_add_explicit(&u->rxq_dropped, 1, memory_order_relaxed);
		return (ssize_t)len;
	}
	f->len = len;
	memcpy(f->data, buf, len);
	pthread_mutex_lock(&u->rxq_lock);
	u->rxq[(u->rxq_head + u->rxq_count) % NET_USER_RXQ_LEN] = f;
	if (u->rxq_count++ == 0) {
		uint64_t one = 1;
		ssize_t w = write(u->rx_fd, &one, sizeof(one));
		(void)w;
	}
	pthread_mutex_unlock(&u->rxq_lock);
	return (ssize_t)len;
}

static void user_guest_error(const char *msg, void *opaque)
{
	struct user_net *u = opaque;
	(void)u;
	/* Guest-triggered: never louder than debug. */
	log_debug("net user: guest error: %s", msg);
}

static int64_t user_clock_ns(void *opaque)
{
	(void)opaque;
	return (int64_t)net_now_ns();
}

static void *user_timer_new_opaque(SlirpTimerId id, void *cb_opaque, void *opaque)
{
	struct user_net *u = opaque;
	struct user_timer *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	*t = (struct user_timer){ .next = u->timers, .id = id, .cb_opaque = cb_opaque, .expire_ms = -1 };
	u->timers = t;
	return t;
}

static void user_timer_free(void *timer, void *opaque)
{
	struct user_net *u = opaque;
	for (struct user_timer **pp = &u->timers; *pp; pp = &(*pp)->next) {
		if (*pp == timer) {
			*pp = ((struct user_timer *)timer)->next;
			free(timer);
			return;
		}
	}
}

static void user_timer_mod(void *timer, int64_t expire_ms, void *opaque)
{
	struct user_net *u = opaque;
	struct user_timer *t = timer;
	if (!t)
		return;
	t->expire_ms = expire_ms < 0 ? 0 : expire_ms;
	user_wake(u);   /* the slirp thread may be sleeping past it */
}

static void user_register_poll_fd(int fd, void *opaque)
{
	(void)fd;
	(void)opaque;   /* every fd is polled through slirp_pollfds_fill */
}

static void user_notify(void *opaque)
{
	user_wake(opaque);
}

static const SlirpCb user_callbacks = {
	.send_packet = user_send_packet,
	.guest_error = user_guest_error,
	.clock_get_ns = user_clock_ns,
	.timer_free = user_timer_free,
	.timer_mod = user_timer_mod,
	.register_poll_fd = user_register_poll_fd,
	.unregister_poll_fd = user_register_poll_fd,
	.notify = user_notify,
	.timer_new_opaque = user_timer_new_opaque,
};

/* ---- the slirp thread ---- */

static int user_add_poll(int fd, int events, void *opaque)
{
	struct user_net *u = opaque;
	if (u->npfds == u->pfds_cap) {
		unsigned cap = u->pfds_cap ? u->pfds_cap * 2 : 16;
		struct pollfd *p = realloc(u->pfds, cap * sizeof(*p));
		if (!p)
			return -1;   /* slirp skips that socket this round */
		u->pfds = p;
		u->pfds_cap = cap;
	}
	short ev = 0;
	if (events & SLIRP_POLL_IN)
		ev |= POLLIN;
	if (events & SLIRP_POLL_OUT)
		ev |= POLLOUT;
	if (events & SLIRP_POLL_PRI)
		ev |= POLLPRI;
	u->pfds[u->npfds] = (struct pollfd){ .fd = fd, .events = ev };
	return (int)u->npfds++;
}

static int user_get_revents(int idx, void *opaque)
{
	struct user_net *u = opaque;
	if (idx < 0 || (unsigned)idx >= u->npfds)
		return 0;
	short rev = u->pfds[idx].revents;
	int r = 0;
	if (rev & POLLIN)
		r |= SLIRP_POLL_IN;
	if (rev & POLLOUT)
		r |= SLIRP_POLL_OUT;
	if (rev & POLLPRI)
		r |= SLIRP_POLL_PRI;
	if (rev & POLLERR)
		r |= SLIRP_POLL_ERR;
	if (rev & POLLHUP)
		r |= SLIRP_POLL_HUP;
	return r;
}

/* Milliseconds until the next timer (UINT32_MAX: none). */
static uint32_t user_timers_timeout(struct user_net *u, int64_t now_ms)
{
	uint32_t timeout = UINT32_MAX;
	for (struct user_timer *t = u->timers; t; t = t->next) {
		if (t->expire_ms < 0)
			continue;
		int64_t d = t->expire_ms - now_ms;
		if (d < 0)
			d = 0;
		if (d < (int64_t)timeout)
			timeout = (uint32_t)d;
	}
	return timeout;
}

static void user_run_timers(struct user_net *u)
{
	int64_t now_ms = (int64_t)(net_now_ns() / 1000000);
	/* A handler may free or re-arm timers: rescan after each. The bound
	 * keeps a timer re-armed in the past from spinning here. */
	for (int round = 0; round < 64; round++) {
		struct user_timer *t = u->timers;
		while (t && !(t->expire_ms >= 0 && t->expire_ms <= now_ms))
			t = t->next;
		if (!t)
			return;
		t->expire_ms = -1;
		slirp_handle_timer(u->slirp, t->id, t->cb_opaque);
	}
}

static void *user_thread(void *arg)
{
	struct user_net *u = arg;
	pthread_setname_np(pthread_self(), "slirp");
	pthread_mutex_lock(&slirp_lock);
	while (!u->stop) {
		u->npfds = 0;
		user_add_poll(u->wake_fd, SLIRP_POLL_IN, u);   /* index 0 */
		uint32_t timeout = UINT32_MAX;
		slirp_pollfds_fill(u->slirp, &timeout, user_add_poll, u);
		uint32_t tt = user_timers_timeout(u, (int64_t)(net_now_ns() / 1000000));
		if (tt < timeout)
			timeout = tt;
		pthread_mutex_unlock(&slirp_lock);

		int n = poll(u->pfds, u->npfds, timeout == UINT32_MAX ? -1 : timeout > INT_MAX ? INT_MAX : (int)timeout);

		pthread_mutex_lock(&slirp_lock);
		if (n > 0 && (u->pfds[0].revents & POLLIN)) {
			/* Cleared before the read: a wake after it is not lost. */
			atomic_store(&u->wake_pending, false);
			uint64_t v;
			ssize_t r = read(u->wake_fd, &v, sizeof(v));
			(void)r;
		}
		if (u->stop)
			break;
		slirp_pollfds_poll(u->slirp, n < 0, user_get_revents, u);
		user_run_timers(u);
	}
	pthread_mutex_unlock(&slirp_lock);
	return NULL;
}

/* ---- the backend ---- */

static int user_send(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt)
{
	struct user_net *u = to_user(be);
	if (q != 0 || iovcnt < 0)
		return -EINVAL;
	size_t total = iov_size(iov, iovcnt);
	if (total < NET_HDR_LEN + ETH_HDR_LEN)
		return -EINVAL;
	size_t len = total - NET_HDR_LEN;
	if (len > NET_MAX_FRAME)
		return -EMSGSIZE;
	struct virtio_net_hdr_v1 hdr;
	iov_to_buf(iov, iovcnt, 0, &hdr, sizeof(hdr));
	/* We offered no offloads: a frame asking for one is a NIC bug, and
	 * slirp would see a bad checksum or a super-frame. */
	if ((hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) || hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE)
		return -EINVAL;

	const uint8_t *frame = iov_contiguous(iov, iovcnt, NET_HDR_LEN, len);
	pthread_mutex_lock(&slirp_lock);
	if (!frame) {
		iov_to_buf(iov, iovcnt, NET_HDR_LEN, u->linear, len);
		frame = u->linear;
	}
	slirp_input(u->slirp, frame, (int)len);
	pthread_mutex_unlock(&slirp_lock);
	/* The input may have opened a host socket (or made one writable):
	 * the slirp thread must poll it. */
	user_wake(u);
	return 0;
}

static ssize_t user_recv(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt)
{
	struct user_net *u = to_user(be);
	if (q != 0 || iovcnt < 0)
		return -EINVAL;
	pthread_mutex_lock(&u->rxq_lock);
	if (u->rxq_count == 0) {
		pthread_mutex_unlock(&u->rxq_lock);
		return 0;
	}
	struct user_frame *f = u->rxq[u->rxq_head];
	u->rxq_head = (u->rxq_head + 1) % NET_USER_RXQ_LEN;
	if (--u->rxq_count == 0) {
		uint64_t v;
		ssize_t r = read(u->rx_fd, &v, sizeof(v));   /* not readable any more */
		(void)r;
	}
	pthread_mutex_unlock(&u->rxq_lock);

	ssize_t ret;
	if (iov_size(iov, iovcnt) < NET_HDR_LEN + f->len) {
		ret = -EMSGSIZE;
	} else {
		static const struct virtio_net_hdr_v1 zero_hdr;
		iov_from_buf(iov, iovcnt, 0, &zero_hdr, NET_HDR_LEN);
		iov_from_buf(iov, iovcnt, NET_HDR_LEN, f->data, f->len);
		ret = (ssize_t)(NET_HDR_LEN + f->len);
	}
	free(f);
	return ret;
}

static void user_on_rx(void *opaque, uint32_t events)
{
	struct user_net *u = opaque;
	(void)events;
	if (u->be.rx_ready)
		u->be.rx_ready(u->be.opaque, 0);
}

static void user_rx_notify(struct net_backend *be, unsigned q, bool on)
{
	struct user_net *u = to_user(be);
	if (q != 0)
		return;
	if (!u->rx_watched) {
		if (!on)
			return;
		int ret = loop_add(be->loop, u->rx_fd, EPOLLIN, user_on_rx, u);
		if (ret < 0) {
			log_err("net user: cannot watch its receive queue: %s", strerror(-ret));
			return;
		}
		u->rx_watched = true;
		return;
	}
	loop_modify(be->loop, u->rx_fd, on ? EPOLLIN : 0);
}

static void user_destroy(struct net_backend *be)
{
	struct user_net *u = to_user(be);
	if (u->thread_started) {
		pthread_mutex_lock(&slirp_lock);
		u->stop = true;
		pthread_mutex_unlock(&slirp_lock);
		uint64_t one = 1;
		ssize_t w = write(u->wake_fd, &one, sizeof(one));
		(void)w;
		pthread_join(u->thread, NULL);
	}
	if (u->rx_watched)
		loop_remove(be->loop, u->rx_fd);
	if (u->slirp) {
		pthread_mutex_lock(&slirp_lock);
		slirp_cleanup(u->slirp);   /* closes its sockets, frees its timers */
		pthread_mutex_unlock(&slirp_lock);
	}
	while (u->timers)
		user_timer_free(u->timers, u);
	for (unsigned i = 0; i < u->rxq_count; i++)
		free(u->rxq[(u->rxq_head + i) % NET_USER_RXQ_LEN]);
	uint64_t dropped = atomic_load(&u->rxq_dropped);
	if (dropped)
		log_info("net user: %llu frame(s) for the guest dropped: it did not take them fast enough",
			 (unsigned long long)dropped);
	if (u->wake_fd >= 0)
		close(u->wake_fd);
	if (u->rx_fd >= 0)
		close(u->rx_fd);
	pthread_mutex_destroy(&u->rxq_lock);
	free(u->pfds);
	free(u->linear);
	free(u);
}

static const struct net_backend_ops user_ops = {
	.name = "user",
	.send = user_send,
	.recv = user_recv,
	.rx_notify = user_rx_notify,
	.destroy = user_destroy,
};

/* ---- creation ---- */

static const char *ip_str(uint32_t addr_be, char buf[INET_ADDRSTRLEN])
{
	struct in_addr a = { .s_addr = addr_be };
	return inet_ntop(AF_INET, &a, buf, INET_ADDRSTRLEN);
}

/* "tcp::2222-:22", as written on the command line (0 addresses left out). */
static void hostfwd_str(const struct net_hostfwd *hf, char *buf, size_t len)
{
	char h[INET_ADDRSTRLEN] = "", g[INET_ADDRSTRLEN] = "";
	if (hf->host_addr)
		ip_str(hf->host_addr, h);
	if (hf->guest_addr)
		ip_str(hf->guest_addr, g);
	snprintf(buf, len, "%s:%s:%u-%s:%u", hf->udp ? "udp" : "tcp", h, hf->host_port, g, hf->guest_port);
}

static int user_add_hostfwds(struct user_net *u, const struct net_config *nc, uint32_t net, uint32_t mask)
{
	for (unsigned i = 0; i < nc->nr_hostfwd && i < CONFIG_MAX_HOSTFWD; i++) {
		const struct net_hostfwd *hf = &nc->hostfwd[i];
		char desc[64];
		hostfwd_str(hf, desc, sizeof(desc));
		uint32_t g = ntohl(hf->guest_addr);
		if (hf->guest_addr && ((g & mask) != net || (g & ~mask) == 0 || (g & ~mask) == ~mask)) {
			char n[INET_ADDRSTRLEN];
			log_err("net user: hostfwd %s: the guest address is not a host of %s/%d", desc,
				ip_str(htonl(net), n), __builtin_popcount(mask));
			return -1;
		}
		struct in_addr ha = { .s_addr = hf->host_addr }, ga = { .s_addr = hf->guest_addr };
		errno = 0;
		if (slirp_add_hostfwd(u->slirp, hf->udp, ha, hf->host_port, ga, hf->guest_port) < 0) {
			log_err("net user: hostfwd %s: cannot listen on host port %u: %s", desc, hf->host_port,
				errno ? strerror(errno) : "refused by libslirp");
			return -1;
		}
	}
	return 0;
}

struct net_backend *net_user_create(const struct net_config *nc, struct loop *loop)
{
	/* Host byte order from here on. */
	uint32_t net = nc->net_addr ? ntohl(nc->net_addr) : 0x0a000200;    /* 10.0.2.0 */
	uint32_t mask = nc->net_mask ? ntohl(nc->net_mask) : 0xffffff00;   /* /24 */
	char n[INET_ADDRSTRLEN], m[INET_ADDRSTRLEN];
	ip_str(htonl(net), n);
	ip_str(htonl(mask), m);
	/* .2 host, .3 DNS and 16 DHCP leases from .15: at least a /27. */
	if ((~mask & (~mask + 1)) != 0 || ~mask < 31) {
		log_err("net user: netmask %s must be contiguous and leave room for 32 addresses (at most /27)", m);
		return NULL;
	}
	if (net & ~mask) {
		log_err("net user: network %s has bits set outside netmask %s", n, m);
		return NULL;
	}

	struct user_net *u = calloc(1, sizeof(*u));
	if (!u) {
		log_err("net user: out of memory");
		return NULL;
	}
	u->be.ops = &user_ops;
	u->be.nr_queues = 1;
	u->be.offloads = 0;   /* slirp wants whole frames with real checksums */
	u->be.loop = loop;
	u->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	u->rx_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	u->linear = malloc(NET_MAX_FRAME);
	pthread_mutex_init(&u->rxq_lock, NULL);
	if (u->wake_fd < 0 || u->rx_fd < 0 || !u->linear) {
		log_err("net user: cannot set up: %s", strerror(errno ? errno : ENOMEM));
		user_destroy(&u->be);
		return NULL;
	}

	SlirpConfig cfg = {
		.version = 4,
		.restricted = 0,
		.in_enabled = true,
		.vnetwork = { htonl(net) },
		.vnetmask = { htonl(mask) },
		.vhost = { htonl(net | 2) },
		.in6_enabled = false,
		.vdhcp_start = { htonl(net | 15) },
		.vnameserver = { htonl(net | 3) },
	};
	pthread_mutex_lock(&slirp_lock);
	u->slirp = slirp_new(&cfg, &user_callbacks, u);
	int ret = u->slirp ? user_add_hostfwds(u, nc, net, mask) : -1;
	pthread_mutex_unlock(&slirp_lock);
	if (!u->slirp)
		log_err("net user: libslirp refused to start");
	if (ret < 0) {
		user_destroy(&u->be);
		return NULL;
	}

	/* Signals stay with the VMM's threads (as the block workers do). */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int err = pthread_create(&u->thread, NULL, user_thread, u);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		log_err("net user: cannot start its thread: %s", strerror(err));
		user_destroy(&u->be);
		return NULL;
	}
	u->thread_started = true;
	char h[INET_ADDRSTRLEN], d[INET_ADDRSTRLEN], s[INET_ADDRSTRLEN];
	log_info("net user: %s/%d, host %s, DNS %s, guest %s, %u forward(s), libslirp %s", n,
		 __builtin_popcount(mask), ip_str(htonl(net | 2), h), ip_str(htonl(net | 3), d),
		 ip_str(htonl(net | 15), s), nc->nr_hostfwd, slirp_version_string());
	return &u->be;
}
