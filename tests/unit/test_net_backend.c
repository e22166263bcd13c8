/* Network backends and their helpers: token buckets and limiters (with a
 * simulated clock), MAC parsing and defaults, the tap backend (in a fresh
 * network namespace: frames both ways through an AF_PACKET socket,
 * truncation, multi-queue, bridges, error lines) and user-mode networking
 * (ARP, DHCP, a full receive queue, host forwards). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/config.h"
#include "core/loop.h"
#include "net/net.h"
#include "net/slirp.h"

#define NS 1000000000ULL
#define MS 1000000ULL

/* ---- token buckets and limiters: a simulated clock ---- */

/* Operations of `cost` done over [0, horizon) when each starts as soon as
 * the bucket allows (the clock jumps to the next moment it does). */
static uint64_t bucket_ops(struct token_bucket *tb, uint64_t cost, uint64_t horizon)
{
	uint64_t now = 0, ops = 0;
	while (now < horizon) {
		if (token_bucket_ready(tb, now)) {
			token_bucket_charge(tb, cost);
			ops++;
		} else {
			uint64_t w = token_bucket_wait_ns(tb, now);
			assert_true(w > 0);
			now += w;
		}
	}
	return ops;
}

static void test_bucket_unlimited(void **state)
{
	(void)state;
	struct token_bucket tb;
	token_bucket_init(&tb, 0, 0, 0);
	for (int i = 0; i < 1000; i++) {
		assert_true(token_bucket_ready(&tb, 0));
		token_bucket_charge(&tb, 1u << 20);
	}
	assert_int_equal(token_bucket_wait_ns(&tb, 0), 0);
}

static void test_bucket_rate_over_a_second(void **state)
{
	(void)state;
	struct token_bucket tb;
	token_bucket_init(&tb, 1000, 10, 0);
	/* 10 at once (the burst), then 1000 per second. */
	uint64_t ops = bucket_ops(&tb, 1, NS);
	assert_in_range(ops, 1000 + 10 - 1, 1000 + 10 + 1);
	/* The same rate keeps up over the next ten seconds. */
	token_bucket_init(&tb, 1000, 10, 0);
	ops = bucket_ops(&tb, 1, 10 * NS);
	assert_in_range(ops, 10000 + 10 - 1, 10000 + 10 + 1);
}

static void test_bucket_burst(void **state)
{
	(void)state;
	struct token_bucket tb;
	token_bucket_init(&tb, 1000, 100, 5 * NS);
	for (int i = 0; i < 100; i++) {
		assert_true(token_bucket_ready(&tb, 5 * NS));
		token_bucket_charge(&tb, 1);
	}
	assert_false(token_bucket_ready(&tb, 5 * NS));
	uint64_t w = token_bucket_wait_ns(&tb, 5 * NS);
	assert_in_range(w, 1 * MS - 1000, 1 * MS + 1000);   /* one token: 1 ms */
	assert_true(token_bucket_ready(&tb, 5 * NS + w));
	/* An idle bucket refills to the burst, not beyond. */
	token_bucket_charge(&tb, 1);
	uint64_t later = 100 * NS;
	uint64_t n = 0;
	while (token_bucket_ready(&tb, later)) {
		token_bucket_charge(&tb, 1);
		n++;
	}
	assert_int_equal(n, 100);
}

static void test_bucket_debt(void **state)
{
	(void)state;
	struct token_bucket tb;
	token_bucket_init(&tb, 1000, 10, 0);
	/* Not empty: a large operation goes through whole... */
	assert_true(token_bucket_ready(&tb, 0));
	token_bucket_charge(&tb, 100);
	/* ...and the next waits until the debt (90) is paid and one token
	 * is back: 91 ms. */
	assert_false(token_bucket_ready(&tb, 0));
	uint64_t w = token_bucket_wait_ns(&tb, 0);
	assert_in_range(w, 91 * MS - 10, 91 * MS + 10);
	assert_false(token_bucket_ready(&tb, 90 * MS));
	assert_true(token_bucket_ready(&tb, 91 * MS + 10));
	/* Waiting part of the way shortens the wait accordingly. */
	token_bucket_init(&tb, 1000, 10, 0);
	token_bucket_charge(&tb, 100);
	assert_in_range(token_bucket_wait_ns(&tb, 50 * MS), 41 * MS - 10, 41 * MS + 10);
}

static void test_bucket_debt_is_bounded(void **state)
{
	(void)state;
	struct token_bucket tb;
	token_bucket_init(&tb, 1000, 10, 0);
	token_bucket_charge(&tb, UINT64_MAX);
	uint64_t w = token_bucket_wait_ns(&tb, 0);
	/* Capped at ten seconds' worth plus the burst. */
	assert_true(w > 1 * NS);
	assert_true(w <= 10 * NS + 11 * MS + 10);
}

static void test_limiter_bandwidth(void **state)
{
	(void)state;
	struct net_limiter l;
	net_limiter_init(&l, 1000000, 0, 0);   /* 1 MB/s, burst max(10 ms, one frame) */
	uint64_t now = 0, bytes = 0;
	while (now < NS) {
		if (net_limiter_ready(&l, now)) {
			net_limiter_charge(&l, 1500);
			bytes += 1500;
		} else {
			now += net_limiter_wait_ns(&l, now);
		}
	}
	/* A second's worth, plus the initial burst (one max frame), plus at
	 * most one frame of debt. */
	assert_true(bytes >= 1000000);
	assert_true(bytes <= 1000000 + NET_MAX_FRAME + 1500);
}

static void test_limiter_packets(void **state)
{
	(void)state;
	struct net_limiter l;
	net_limiter_init(&l, 0, 100, 0);
	uint64_t now = 0, pkts = 0;
	while (now < NS) {
		if (net_limiter_ready(&l, now)) {
			net_limiter_charge(&l, 9000);   /* size does not matter */
			pkts++;
		} else {
			now += net_limiter_wait_ns(&l, now);
		}
	}
	assert_in_range(pkts, 100, 101);
}

static void test_limiter_waits_for_both(void **state)
{
	(void)state;
	struct net_limiter l;
	net_limiter_init(&l, 100000, 10, 0);   /* bytes burst: one max frame; packets burst 1 */
	assert_true(net_limiter_ready(&l, 0));
	net_limiter_charge(&l, NET_MAX_FRAME + 50000);   /* 0.5 s of byte debt */
	uint64_t w = net_limiter_wait_ns(&l, 0);
	assert_in_range(w, 500 * MS, 501 * MS);   /* bytes dominate (packets: 100 ms) */
	assert_false(net_limiter_ready(&l, 400 * MS));
	assert_true(net_limiter_ready(&l, w));

	net_limiter_init(&l, 100000, 10, 0);
	net_limiter_charge(&l, 100);
	w = net_limiter_wait_ns(&l, 0);
	assert_in_range(w, 100 * MS, 101 * MS);   /* packets dominate */
}

/* ---- MACs ---- */

static void test_parse_mac(void **state)
{
	(void)state;
	uint8_t m[6];
	assert_int_equal(net_parse_mac("52:54:00:12:34:56", m), 0);
	assert_memory_equal(m, ((uint8_t[]){ 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 }), 6);
	assert_int_equal(net_parse_mac("02:AB:cd:EF:00:ff", m), 0);
	assert_memory_equal(m, ((uint8_t[]){ 0x02, 0xab, 0xcd, 0xef, 0x00, 0xff }), 6);

	static const char *bad[] = {
		"", "52:54:00:12:34", "52:54:00:12:34:56:78", "52:54:00:12:34:5", "52:54:00:12:34:567",
		"52-54-00-12-34-56", "52:54:00:12:34:5g", "5254.0012.3456", " 52:54:00:12:34:5",
		"52:54:00:12:34:5 ", "+2:54:00:12:34:56", "52:54:00:12:34:-6", "52:54:00:12:34:56\n",
		"\t2:54:00:12:34:56", "0x:54:00:12:34:56", "52:0X:00:12:34:56", "52:54:00:12:34:\n6",
		"52:54:00:12:34:5\n", "52:54:00:12:34:56:", "52;54:00:12:34:56",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(m, 0x77, 6);
		if (net_parse_mac(bad[i], m) != -1)
			fail_msg("accepted \"%s\"", bad[i]);
	}
	assert_int_equal(net_parse_mac(NULL, m), -1);
	/* Multicast (and broadcast) addresses belong to no NIC. */
	assert_int_equal(net_parse_mac("01:00:5e:00:00:01", m), -1);
	assert_int_equal(net_parse_mac("33:33:00:00:00:01", m), -1);
	assert_int_equal(net_parse_mac("ff:ff:ff:ff:ff:ff", m), -1);
}

static void test_default_mac(void **state)
{
	(void)state;
	uint8_t a[6], b[6], c[6], d[6];
	net_default_mac("web", 0, a);
	net_default_mac("web", 0, b);
	assert_memory_equal(a, b, 6);   /* stable */
	assert_memory_equal(a, ((uint8_t[]){ 0x52, 0x54, 0x00 }), 3);
	net_default_mac("web", 1, c);
	net_default_mac("db", 0, d);
	assert_memory_not_equal(a, c, 6);
	assert_memory_not_equal(a, d, 6);
	assert_memory_equal(c, ((uint8_t[]){ 0x52, 0x54, 0x00 }), 3);
	/* Unicast and valid for net_parse_mac's rules, for many names. */
	for (unsigned i = 0; i < 256; i++) {
		char name[16], text[18];
		snprintf(name, sizeof(name), "vm%u", i);
		net_default_mac(name, i % 4, a);
		assert_int_equal(a[0] & 1, 0);
		snprintf(text, sizeof(text), "%02x:%02x:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3], a[4], a[5]);
		assert_int_equal(net_parse_mac(text, b), 0);
		assert_memory_equal(a, b, 6);
	}
	/* No collisions among the indices of one VM. */
	for (unsigned i = 0; i < CONFIG_MAX_NICS; i++)
		for (unsigned j = i + 1; j < CONFIG_MAX_NICS; j++) {
			net_default_mac("kestrel", i, a);
			net_default_mac("kestrel", j, b);
			assert_memory_not_equal(a, b, 6);
		}
}

/* ---- helpers for the backend tests ---- */

/* Error lines go to fd 2: catch them. */
struct capture {
	int saved;
	FILE *tmp;
	char text[2048];
};

static void capture_begin(struct capture *c)
{
	fflush(stderr);
	c->tmp = tmpfile();
	assert_non_null(c->tmp);
	c->saved = dup(STDERR_FILENO);
	dup2(fileno(c->tmp), STDERR_FILENO);
}

static const char *capture_end(struct capture *c)
{
	fflush(stderr);
	dup2(c->saved, STDERR_FILENO);
	close(c->saved);
	rewind(c->tmp);
	size_t n = fread(c->text, 1, sizeof(c->text) - 1, c->tmp);
	c->text[n] = '\0';
	fclose(c->tmp);
	return c->text;
}

static unsigned count_lines(const char *s)
{
	unsigned n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static void assert_contains(const char *hay, const char *needle)
{
	if (!strstr(hay, needle))
		fail_msg("\"%s\" not in \"%s\"", needle, hay);
}

/* Waits in the loop for frames through rx_ready/recv. */
struct waiter {
	struct loop *loop;
	struct net_backend *be;
	bool (*match)(const uint8_t *f, size_t len, void *arg);   /* NULL: only count calls */
	void *arg;
	bool found;
	unsigned calls;
	ssize_t last;
	uint8_t hdr[NET_HDR_LEN];
	uint8_t frame[NET_MAX_FRAME];
	size_t len;
};

static void w_rx_ready(void *opaque, unsigned q)
{
	struct waiter *w = opaque;
	w->calls++;
	if (!w->match) {
		loop_quit(w->loop);
		return;
	}
	for (;;) {
		memset(w->hdr, 0xee, sizeof(w->hdr));
		struct iovec iov[2] = { { w->hdr, NET_HDR_LEN }, { w->frame, sizeof(w->frame) } };
		ssize_t n = w->be->ops->recv(w->be, q, iov, 2);
		w->last = n;
		if (n <= 0)
			return;
		assert_true(n >= NET_HDR_LEN);
		if (w->match(w->frame, (size_t)n - NET_HDR_LEN, w->arg)) {
			w->found = true;
			w->len = (size_t)n - NET_HDR_LEN;
			loop_quit(w->loop);
			return;
		}
	}
}

static void w_timeout(void *opaque, uint32_t events)
{
	(void)events;
	loop_quit(((struct waiter *)opaque)->loop);
}

static struct waiter *waiter_new(struct loop *loop, struct net_backend *be)
{
	struct waiter *w = calloc(1, sizeof(*w));
	w->loop = loop;
	w->be = be;
	be->rx_ready = w_rx_ready;
	be->opaque = w;
	return w;
}

/* Runs the loop until a frame matches (true) or `ms` pass. */
static bool wait_frame(struct waiter *w, bool (*match)(const uint8_t *, size_t, void *), void *arg, unsigned ms)
{
	w->match = match;
	w->arg = arg;
	w->found = false;
	w->calls = 0;
	int tfd = loop_timer_add(w->loop, ms * MS, 0, w_timeout, w);
	assert_true(tfd >= 0);
	assert_int_equal(loop_run(w->loop), 0);
	loop_timer_remove(w->loop, tfd);
	return w->found;
}

/* rx_ready calls within `ms` (each ends the wait). */
static unsigned wait_calls(struct waiter *w, unsigned ms)
{
	wait_frame(w, NULL, NULL, ms);
	return w->calls;
}

/* A fresh network namespace for this process (each test binary is its
 * own process), with lo up and no IPv6 chatter. False if not permitted. */
static bool fresh_netns(void)
{
	if (unshare(CLONE_NEWNET) < 0)
		return false;
	static const char *const off6[] = { "/proc/sys/net/ipv6/conf/all/disable_ipv6",
					    "/proc/sys/net/ipv6/conf/default/disable_ipv6" };
	for (size_t i = 0; i < 2; i++) {
		int fd = open(off6[i], O_WRONLY | O_CLOEXEC);
		if (fd >= 0) {
			ssize_t w = write(fd, "1", 1);
			(void)w;
			close(fd);
		}
	}
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
	if (s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP;
		ioctl(s, SIOCSIFFLAGS, &ifr);
	}
	if (s >= 0)
		close(s);
	return true;
}

struct fx {
	struct loop *loop;
	struct net_backend *be;
	struct waiter *w;
	bool netns;
	int netns_errno;   /* why not */
};

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->loop = loop_create();
	f->netns = fresh_netns();
	f->netns_errno = errno;
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	net_backend_destroy(f->be);
	free(f->w);
	loop_destroy(f->loop);
	free(f);
	return 0;
}

static void need_netns(struct fx *f)
{
	if (!f->netns) {
		print_message("skipped: cannot create a network namespace (unshare(CLONE_NEWNET): %s)\n",
			      strerror(f->netns_errno));
		skip();
	}
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		print_message("skipped: cannot open /dev/net/tun: %s\n", strerror(errno));
		skip();
	}
	close(fd);
}

static bool if_up(const char *name)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	bool up = ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP);
	close(s);
	return up;
}

/* The kernel deletes a non-persistent tap when its last fd closes. */
static bool if_gone(const char *name)
{
	for (int i = 0; i < 100; i++) {
		if (!if_nametoindex(name))
			return true;
		usleep(10000);
	}
	return false;
}

static int bridge_ioctl(unsigned long req, const char *bridge, const char *port)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int ret;
	if (port) {
		struct ifreq ifr = { 0 };
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", bridge);
		ifr.ifr_ifindex = (int)if_nametoindex(port);
		ret = ioctl(s, req, &ifr);
	} else {
		char name[IFNAMSIZ];
		snprintf(name, sizeof(name), "%s", bridge);
		ret = ioctl(s, req, name);
	}
	close(s);
	return ret;
}

/* A tap set up by hand, as an admin would (ip tuntap add ...). */
static void persistent_tap(const char *name, bool mq, bool persist)
{
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	struct ifreq ifr = { 0 };
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (mq ? IFF_MULTI_QUEUE : 0);
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	assert_int_equal(ioctl(fd, TUNSETIFF, &ifr), 0);
	assert_int_equal(ioctl(fd, TUNSETPERSIST, persist ? 1 : 0), 0);
	close(fd);
}

static int set_cap_net_admin(bool on)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) < 0)
		return -1;
	if (on)
		d[0].effective |= 1u << CAP_NET_ADMIN;
	else
		d[0].effective &= ~(1u << CAP_NET_ADMIN);
	return (int)syscall(SYS_capset, &h, d);
}

/* ---- frames ---- */

static const uint8_t guest_mac[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
#define TEST_ETHERTYPE 0x88b5   /* IEEE local experimental */

/* A frame of our own ethertype carrying `tag`, `len` bytes long. */
static size_t test_frame(uint8_t *f, size_t len, uint32_t tag)
{
	memset(f, 0xff, 6);
	memcpy(f + 6, guest_mac, 6);
	f[12] = TEST_ETHERTYPE >> 8;
	f[13] = TEST_ETHERTYPE & 0xff;
	memcpy(f + 14, &tag, 4);
	for (size_t i = 18; i < len; i++)
		f[i] = (uint8_t)(i * 7 + tag);
	return len;
}

struct want_frame {
	const uint8_t *frame;
	size_t len;
};

static bool match_exact(const uint8_t *f, size_t len, void *arg)
{
	struct want_frame *w = arg;
	return len == w->len && memcmp(f, w->frame, len) == 0;
}

static int packet_socket(const char *ifname)
{
	int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
	assert_true(s >= 0);
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
				   .sll_ifindex = (int)if_nametoindex(ifname) };
	assert_int_equal(bind(s, (struct sockaddr *)&sll, sizeof(sll)), 0);
	return s;
}

static void packet_send(int s, const char *ifname, const uint8_t *f, size_t len)
{
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(ifname),
				   .sll_halen = 6 };
	memcpy(sll.sll_addr, f, 6);
	assert_int_equal(sendto(s, f, len, 0, (struct sockaddr *)&sll, sizeof(sll)), (ssize_t)len);
}

/* Reads the packet socket until `want` arrives (true) or 2 s pass. */
static bool packet_wait(int s, const uint8_t *want, size_t len)
{
	static uint8_t buf[NET_MAX_FRAME];
	for (int i = 0; i < 200; i++) {
		struct pollfd p = { .fd = s, .events = POLLIN };
		if (poll(&p, 1, 2000) <= 0)
			return false;
		ssize_t n = recv(s, buf, sizeof(buf), 0);
		if (n == (ssize_t)len && memcmp(buf, want, len) == 0)
			return true;
	}
	return false;
}

/* ---- tap ---- */

static struct net_backend *tap_create(struct fx *f, const char *ifname, unsigned queues)
{
	struct net_config nc = { .kind = NET_KIND_TAP };
	snprintf(nc.ifname, sizeof(nc.ifname), "%s", ifname);
	return net_backend_create(&nc, "test", f->loop, queues);
}

static void test_tap_create(void **state)
{
	struct fx *f = *state;
	need_netns(f);
	struct net_config nc = { .kind = NET_KIND_TAP };
	snprintf(nc.ifname, sizeof(nc.ifname), "kt0");
	f->be = net_backend_create(&nc, "test", f->loop, 1);
	assert_non_null(f->be);
	assert_string_equal(f->be->ops->name, "tap");
	assert_string_equal(f->be->ifname, "kt0");
	assert_int_equal(f->be->nr_queues, 1);
	assert_true(f->be->ops->tap_fd(f->be, 0) >= 0);
	assert_int_equal(f->be->ops->tap_fd(f->be, 1), -1);
	assert_true(if_up("kt0"));
	/* Any kernel since 2.6.27 does checksum offload and TSO on a tap. */
	unsigned all = NET_OFFLOAD_CSUM | NET_OFFLOAD_TSO4 | NET_OFFLOAD_TSO6 | NET_OFFLOAD_ECN;
	assert_int_equal(f->be->offloads & all, all);
	assert_int_equal(f->be->ops->set_offloads(f->be, f->be->offloads), 0);
	assert_int_equal(f->be->ops->set_offloads(f->be, NET_OFFLOAD_TSO4), 0);   /* no CSUM: nothing */
	assert_int_equal(f->be->ops->set_offloads(f->be, 0), 0);
	/* Nothing waiting: recv says 0. */
	uint8_t buf[128];
	struct iovec iov = { buf, sizeof(buf) };
	assert_int_equal(f->be->ops->recv(f->be, 0, &iov, 1), 0);
	assert_int_equal(f->be->ops->send(f->be, 1, &iov, 1), -EINVAL);
	net_backend_destroy(f->be);
	f->be = NULL;
	assert_true(if_gone("kt0"));

	/* No name: the kernel picks one. */
	nc.ifname[0] = '\0';
	f->be = net_backend_create(&nc, "test", f->loop, 1);
	assert_non_null(f->be);
	assert_string_equal(f->be->ifname, "ktap0");
	char name[IFNAMSIZ];
	memcpy(name, f->be->ifname, sizeof(name));
	net_backend_destroy(f->be);
	f->be = NULL;
	assert_true(if_gone(name));
}

static void test_tap_send_reaches_the_host(void **state)
{
	struct fx *f = *state;
	need_netns(f);
	f->be = tap_create(f, "kt1", 1);
	assert_non_null(f->be);
	int ps = packet_socket("kt1");
	for (uint32_t tag = 1; tag <= 3; tag++) {
		uint8_t frame[1514];
		size_t len = test_frame(frame, tag == 3 ? 1514 : 60, tag);
		struct virtio_net_hdr_v1 hdr = { 0 };
		/* Header and frame in three pieces. */
		struct iovec iov[3] = { { &hdr, sizeof(hdr) }, { frame, 20 }, { frame + 20, len - 20 } };
		assert_int_equal(f->be->ops->send(f->be, 0, iov, 3), 0);
		assert_true(packet_wait(ps, frame, len));
	}
	close(ps);
}

static void test_tap_recv_from_the_host(void **state)
{
	struct fx *f = *state;
	need_netns(f);
	f->be = tap_create(f, "kt2", 1);
	assert_non_null(f->be);
	f->w = waiter_new(f->loop, f->be);
	int ps = packet_socket("kt2");
	uint8_t frame[1514];
	size_t len = test_frame(frame, 1000, 42);
	packet_send(ps, "kt2", frame, len);

	/* No rx_notify yet: no callback. */
	assert_int_equal(wait_calls(f->w, 100), 0);
	f->be->ops->rx_notify(f->be, 0, true);
	struct want_frame want = { frame, len };
	assert_true(wait_frame(f->w, match_exact, &want, 2000));
	/* The tap's virtio-net header: no offloads asked for, nothing to do;
	 * num_buffers (which the tap skips) zeroed too. */
	static const uint8_t zero[NET_HDR_LEN];
	assert_memory_equal(f->w->hdr, zero, NET_HDR_LEN);

	/* Off: a waiting frame does not call back; on again: it does. */
	f->be->ops->rx_notify(f->be, 0, false);
	len = test_frame(frame, 200, 43);
	packet_send(ps, "kt2", frame, len);
	assert_int_equal(wait_calls(f->w, 100), 0);
	f->be->ops->rx_notify(f->be, 0, true);
	want.len = len;
	assert_true(wait_frame(f->w, match_exact, &want, 2000));
	close(ps);
}

static bool match_tag(const uint8_t *f, size_t len, void *arg)
{
	return len >= 18 && f[12] == (TEST_ETHERTYPE >> 8) && memcmp(f + 14, arg, 4) == 0;
}

static void test_tap_recv_too_big(void **state)
{
	struct fx *f = *state;
	need_netns(f);
	f->be = tap_create(f, "kt3", 1);
	assert_non_null(f->be);
	int ps = packet_socket("kt3");
	int fd = f->be->ops->tap_fd(f->be, 0);
	uint8_t frame[1514], buf[200];
	/* 300 bytes into 12 + 100: dropped, and said so. */
	packet_send(ps, "kt3", frame, test_frame(frame, 300, 7));
	/* 100 bytes into exactly 12 + 100: fits, not mistaken for truncation. */
	packet_send(ps, "kt3", frame, test_frame(frame, 100, 8));
	int seen_big = 0, seen_exact = 0;
	for (int i = 0; i < 50 && !(seen_big && seen_exact); i++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		assert_int_equal(poll(&p, 1, 2000), 1);
		struct iovec iov[2] = { { buf, NET_HDR_LEN }, { buf + NET_HDR_LEN, 100 } };
		ssize_t n = f->be->ops->recv(f->be, 0, iov, 2);
		if (n == -EMSGSIZE)
			seen_big++;
		else if (n == NET_HDR_LEN + 100 && match_tag(buf + NET_HDR_LEN, 100, &(uint32_t){ 8 }))
			seen_exact++;
	}
	assert_int_equal(seen_big, 1);
	assert_int_equal(seen_exact, 1);
	close(ps);
}

static void test_tap_multiqueue(void **state)
{
	struct fx *f = *state;
	need_netns(f);
	f->be = tap_create(f, "kt4", 4);
	assert_non_null(f->be);
	assert_int_equal(f->be->nr_queues, 4);
	for (unsigned i = 0; i < 4; i++)
		for (unsigned j = 0; j < i; j++)
			assert_int_not_equal(f->be->ops->tap_fd(f->be, i), f->be->ops->tap_fd(f->be, j));
	/* Every queue transmits. */
	int ps = packet_socket("kt4");
	for (unsigned q = 0; q < 4; q++) {
		uint8_t frame[64];
		size_t len = test_frame(frame, 64, 100 + q);
		struct virtio_net_hdr_v1 hdr = { 0 };
		struct iovec iov[2] = { { &hdr, sizeof(hdr) }, { frame, len } };
		assert_int_equal(f->be->ops->send(f->be, q, iov, 2), 0);
		assert_true(packet_wait(ps, frame, len));
	}
	close(ps);
	net_backend_destroy(f->be);
	f->be = NULL;
	assert_true(if_gone("kt4"));

	/* An admin's single-queue tap: one queue, and it stays afterwards. */
	persistent_tap("kt5", false, true);
	f->be = tap_create(f, "kt5", 4);
	assert_non_null(f->be);
	assert_int_equal(f->be->nr_queues, 1);
	net_backend_destroy(f->be);
	f->be = NULL;
	assert_true(if_nametoindex("kt5") != 0);
	/* An admin's multi-queue tap, asked for one queue: fine too. */
	persistent_tap("kt6", true, true);
	f->be = tap_create(f, "kt6", 1);
	assert_non_null(f->be);
	assert_int_equal(f->be->nr_queues, 1);
	net_backend_destroy(f->be);
	f->be = NULL;
	persistent_tap("kt5", false, false);
	persistent_tap("kt6", true, false);
	assert_true(if_gone("kt5"));
	assert_true(if_gone("kt6"));
}

static void test_tap_errors(void **state)
{
	struct fx *f = *state;
	need_netns(f);
	struct capture c;
	/* Not a tap. */
	capture_begin(&c);
	struct net_backend *be = tap_create(f, "lo", 1);
	const char *out = capture_end(&c);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	assert_contains(out, "kestrel: tap \"lo\": cannot attach to it: Invalid argument");
	assert_contains(out, "not a tap");

	/* A single-queue tap someone else holds. */
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "kt7");
	assert_int_equal(ioctl(fd, TUNSETIFF, &ifr), 0);
	capture_begin(&c);
	be = tap_create(f, "kt7", 1);
	out = capture_end(&c);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	assert_contains(out, "tap \"kt7\": cannot attach to it: Device or resource busy");
	close(fd);

	/* No CAP_NET_ADMIN: a new tap cannot be made. */
	assert_int_equal(set_cap_net_admin(false), 0);
	capture_begin(&c);
	be = tap_create(f, "kt8", 1);
	out = capture_end(&c);
	assert_int_equal(set_cap_net_admin(true), 0);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	assert_contains(out, "tap \"kt8\": cannot attach to it: Operation not permitted");
	assert_contains(out, "CAP_NET_ADMIN");
	assert_int_equal(if_nametoindex("kt8"), 0);
}

static void test_bridge(void **state)
{
	struct fx *f = *state;
	need_netns(f);
	assert_int_equal(bridge_ioctl(SIOCBRADDBR, "ktbr0", NULL), 0);
	struct net_config nc = { .kind = NET_KIND_BRIDGE };
	snprintf(nc.bridge, sizeof(nc.bridge), "ktbr0");
	f->be = net_backend_create(&nc, "test", f->loop, 2);
	assert_non_null(f->be);
	char name[IFNAMSIZ];
	memcpy(name, f->be->ifname, sizeof(name));
	assert_string_equal(name, "ktap0");
	assert_int_equal(f->be->nr_queues, 2);
	assert_true(if_up(name));
	/* It is a port of the bridge: taking it out works (then put it back). */
	assert_int_equal(bridge_ioctl(SIOCBRDELIF, "ktbr0", name), 0);
	assert_int_equal(bridge_ioctl(SIOCBRADDIF, "ktbr0", name), 0);
	/* Destroyed: the tap is gone with its fds, the bridge stays. */
	net_backend_destroy(f->be);
	f->be = NULL;
	assert_true(if_gone(name));
	assert_true(if_nametoindex("ktbr0") != 0);

	/* A named persistent tap is enslaved, then released as it was found. */
	persistent_tap("kt9", false, true);
	snprintf(nc.ifname, sizeof(nc.ifname), "kt9");
	f->be = net_backend_create(&nc, "test", f->loop, 1);
	assert_non_null(f->be);
	assert_int_equal(bridge_ioctl(SIOCBRDELIF, "ktbr0", "kt9"), 0);
	assert_int_equal(bridge_ioctl(SIOCBRADDIF, "ktbr0", "kt9"), 0);
	net_backend_destroy(f->be);
	f->be = NULL;
	assert_true(if_nametoindex("kt9") != 0);
	assert_int_equal(bridge_ioctl(SIOCBRDELIF, "ktbr0", "kt9"), -1);   /* not a port any more */
	persistent_tap("kt9", false, false);
	assert_int_equal(bridge_ioctl(SIOCBRDELBR, "ktbr0", NULL), 0);
}

static void test_bridge_errors(void **state)
{
	struct fx *f = *state;
	need_netns(f);
	struct net_config nc = { .kind = NET_KIND_BRIDGE };
	struct capture c;

	snprintf(nc.bridge, sizeof(nc.bridge), "nosuchbr");
	capture_begin(&c);
	struct net_backend *be = net_backend_create(&nc, "test", f->loop, 1);
	const char *out = capture_end(&c);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	assert_string_equal(out, "kestrel: bridge \"nosuchbr\" does not exist\n");
	assert_int_equal(if_nametoindex("ktap0"), 0);

	/* Not a bridge: the tap made for it goes away. */
	snprintf(nc.bridge, sizeof(nc.bridge), "lo");
	capture_begin(&c);
	be = net_backend_create(&nc, "test", f->loop, 1);
	out = capture_end(&c);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	assert_contains(out, "bridge \"lo\": cannot add tap \"ktap0\" to it");
	assert_contains(out, "not a bridge");
	assert_true(if_gone("ktap0"));

	/* No CAP_NET_ADMIN: the line names the bridge, nothing is left. */
	assert_int_equal(bridge_ioctl(SIOCBRADDBR, "ktbr1", NULL), 0);
	snprintf(nc.bridge, sizeof(nc.bridge), "ktbr1");
	assert_int_equal(set_cap_net_admin(false), 0);
	capture_begin(&c);
	be = net_backend_create(&nc, "test", f->loop, 1);
	out = capture_end(&c);
	assert_int_equal(set_cap_net_admin(true), 0);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	assert_contains(out, "kestrel: bridge \"ktbr1\": new tap: cannot attach to it: Operation not permitted");
	assert_contains(out, "CAP_NET_ADMIN");
	assert_int_equal(if_nametoindex("ktap0"), 0);
}

/* ---- user-mode networking ---- */

static uint16_t ip_csum(const uint8_t *p, size_t len)
{
	uint32_t sum = 0;
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void put_ip(uint8_t *p, const char *s)
{
	struct in_addr a;
	assert_int_equal(inet_pton(AF_INET, s, &a), 1);
	memcpy(p, &a, 4);
}

static bool is_ip(const uint8_t *p, const char *s)
{
	struct in_addr a;
	inet_pton(AF_INET, s, &a);
	return memcmp(p, &a, 4) == 0;
}

static size_t arp_frame(uint8_t *f, uint16_t op, const uint8_t *eth_dst, const uint8_t *sha, const char *spa,
			const uint8_t *tha, const char *tpa)
{
	memset(f, 0, 60);
	memcpy(f, eth_dst, 6);
	memcpy(f + 6, sha, 6);
	put16(f + 12, 0x0806);
	uint8_t *a = f + 14;
	put16(a, 1);
	put16(a + 2, 0x0800);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, op);
	memcpy(a + 8, sha, 6);
	put_ip(a + 14, spa);
	memcpy(a + 18, tha, 6);
	put_ip(a + 24, tpa);
	return 60;
}

static size_t arp_request(uint8_t *f, const char *target)
{
	static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff }, zero[6];
	return arp_frame(f, 1, bcast, guest_mac, "10.0.2.15", zero, target);
}

struct arp_want {
	uint16_t op;
	const char *spa, *tpa;
	uint8_t sha[6];   /* out */
};

static bool match_arp(const uint8_t *f, size_t len, void *arg)
{
	struct arp_want *w = arg;
	if (len < 42 || get16(f + 12) != 0x0806 || get16(f + 20) != w->op)
		return false;
	if (!is_ip(f + 28, w->spa) || !is_ip(f + 38, w->tpa))
		return false;
	memcpy(w->sha, f + 22, 6);
	return true;
}

/* A DHCPDISCOVER from guest_mac, broadcast, full BOOTP size. */
static size_t dhcp_discover(uint8_t *f, uint32_t xid)
{
	const size_t bootp = 548, udp = 8 + bootp, ip = 20 + udp;
	memset(f, 0, 14 + ip);
	memset(f, 0xff, 6);
	memcpy(f + 6, guest_mac, 6);
	put16(f + 12, 0x0800);
	uint8_t *h = f + 14;
	h[0] = 0x45;
	put16(h + 2, (uint16_t)ip);
	h[8] = 64;
	h[9] = 17;
	put_ip(h + 12, "0.0.0.0");
	put_ip(h + 16, "255.255.255.255");
	put16(h + 10, ip_csum(h, 20));
	uint8_t *u = h + 20;
	put16(u, 68);
	put16(u + 2, 67);
	put16(u + 4, (uint16_t)udp);   /* checksum 0: none */
	uint8_t *b = u + 8;
	b[0] = 1;   /* BOOTREQUEST */
	b[1] = 1;
	b[2] = 6;
	memcpy(b + 4, &xid, 4);
	memcpy(b + 28, guest_mac, 6);
	uint8_t *o = b + 236;
	static const uint8_t opts[] = { 99, 130, 83, 99, 53, 1, 1, 255 };   /* cookie, DISCOVER */
	memcpy(o, opts, sizeof(opts));
	return 14 + ip;
}

struct dhcp_want {
	uint32_t xid;
	int type;                       /* out: option 53 */
	uint8_t yiaddr[4], server[4], router[4], dns[4];
};

static bool match_dhcp(const uint8_t *f, size_t len, void *arg)
{
	struct dhcp_want *w = arg;
	if (len < 14 + 20 + 8 + 240 || get16(f + 12) != 0x0800)
		return false;
	const uint8_t *h = f + 14;
	size_t ihl = (size_t)(h[0] & 15) * 4;
	if (h[9] != 17 || len < 14 + ihl + 8 + 240)
		return false;
	const uint8_t *u = h + ihl;
	if (get16(u) != 67 || get16(u + 2) != 68)
		return false;
	const uint8_t *b = u + 8;
	if (b[0] != 2 || memcmp(b + 4, &w->xid, 4) != 0 || memcmp(b + 28, guest_mac, 6) != 0)
		return false;
	memcpy(w->yiaddr, b + 16, 4);
	const uint8_t *end = f + len, *o = b + 240;
	while (o + 2 <= end && o[0] != 255) {
		if (o[0] == 0) {
			o++;
			continue;
		}
		if (o + 2 + o[1] > end)
			break;
		if (o[0] == 53 && o[1] == 1)
			w->type = o[2];
		if (o[0] == 54 && o[1] == 4)
			memcpy(w->server, o + 2, 4);
		if (o[0] == 3 && o[1] >= 4)
			memcpy(w->router, o + 2, 4);
		if (o[0] == 6 && o[1] >= 4)
			memcpy(w->dns, o + 2, 4);
		o += 2 + o[1];
	}
	return true;
}

static struct net_backend *user_create(struct fx *f, const struct net_config *nc)
{
	struct net_config dflt = { .kind = NET_KIND_USER };
	struct net_backend *be = net_backend_create(nc ? nc : &dflt, "test", f->loop, 4);
	if (be) {
		assert_string_equal(be->ops->name, "user");
		assert_int_equal(be->nr_queues, 1);
		assert_int_equal(be->offloads, 0);
		f->w = waiter_new(f->loop, be);
	}
	return be;
}

static int user_send_frame(struct net_backend *be, const uint8_t *frame, size_t len)
{
	struct virtio_net_hdr_v1 hdr = { 0 };
	struct iovec iov[2] = { { &hdr, sizeof(hdr) }, { (void *)frame, len } };
	return be->ops->send(be, 0, iov, 2);
}

static void test_user_arp(void **state)
{
	struct fx *f = *state;
	f->be = user_create(f, NULL);
	assert_non_null(f->be);
	f->be->ops->rx_notify(f->be, 0, true);
	uint8_t frame[60];
	size_t len = arp_request(frame, "10.0.2.2");
	/* The frame scattered over several pieces, header split too. */
	struct virtio_net_hdr_v1 hdr = { 0 };
	struct iovec iov[4] = { { &hdr, 5 }, { (uint8_t *)&hdr + 5, 7 }, { frame, 17 }, { frame + 17, len - 17 } };
	assert_int_equal(f->be->ops->send(f->be, 0, iov, 4), 0);
	struct arp_want want = { .op = 2, .spa = "10.0.2.2", .tpa = "10.0.2.15" };
	assert_true(wait_frame(f->w, match_arp, &want, 2000));
	assert_memory_equal(f->w->frame, guest_mac, 6);        /* to the guest */
	assert_memory_equal(f->w->frame + 32, guest_mac, 6);   /* tha */
	static const uint8_t zero[NET_HDR_LEN];
	assert_memory_equal(f->w->hdr, zero, NET_HDR_LEN);      /* a zero header in front */
	/* The DNS address answers too; others in the network do not. */
	len = arp_request(frame, "10.0.2.3");
	assert_int_equal(user_send_frame(f->be, frame, len), 0);
	want = (struct arp_want){ .op = 2, .spa = "10.0.2.3", .tpa = "10.0.2.15" };
	assert_true(wait_frame(f->w, match_arp, &want, 2000));
	len = arp_request(frame, "10.0.2.99");
	assert_int_equal(user_send_frame(f->be, frame, len), 0);
	assert_int_equal(wait_calls(f->w, 100), 0);
	/* Drained: no more callbacks (the eventfd is level-triggered on the queue). */
	uint8_t buf[NET_HDR_LEN + 100];
	struct iovec riov = { buf, sizeof(buf) };
	assert_int_equal(f->be->ops->recv(f->be, 0, &riov, 1), 0);
	/* Frames asking for offloads were never offered: refused. */
	hdr.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
	assert_int_equal(f->be->ops->send(f->be, 0, iov, 4), -EINVAL);
	hdr = (struct virtio_net_hdr_v1){ .gso_type = VIRTIO_NET_HDR_GSO_TCPV4 };
	assert_int_equal(f->be->ops->send(f->be, 0, iov, 4), -EINVAL);
	struct iovec tiny = { frame, 10 };
	assert_int_equal(f->be->ops->send(f->be, 0, &tiny, 1), -EINVAL);
}

static void test_user_dhcp(void **state)
{
	struct fx *f = *state;
	f->be = user_create(f, NULL);
	assert_non_null(f->be);
	f->be->ops->rx_notify(f->be, 0, true);
	uint8_t frame[1514];
	size_t len = dhcp_discover(frame, 0x12345678);
	assert_int_equal(user_send_frame(f->be, frame, len), 0);
	struct dhcp_want want = { .xid = 0x12345678 };
	assert_true(wait_frame(f->w, match_dhcp, &want, 2000));
	assert_int_equal(want.type, 2);   /* DHCPOFFER */
	assert_true(is_ip(want.yiaddr, "10.0.2.15"));
	assert_true(is_ip(want.server, "10.0.2.2"));
	assert_true(is_ip(want.router, "10.0.2.2"));
	assert_true(is_ip(want.dns, "10.0.2.3"));
}

static void test_user_custom_network(void **state)
{
	struct fx *f = *state;
	struct net_config nc = { .kind = NET_KIND_USER };
	inet_pton(AF_INET, "192.168.76.0", &nc.net_addr);
	f->be = user_create(f, &nc);   /* mask 0: /24 */
	assert_non_null(f->be);
	f->be->ops->rx_notify(f->be, 0, true);
	uint8_t frame[1514];
	size_t len = dhcp_discover(frame, 77);
	assert_int_equal(user_send_frame(f->be, frame, len), 0);
	struct dhcp_want want = { .xid = 77 };
	assert_true(wait_frame(f->w, match_dhcp, &want, 2000));
	assert_true(is_ip(want.yiaddr, "192.168.76.15"));
	assert_true(is_ip(want.router, "192.168.76.2"));
	assert_true(is_ip(want.dns, "192.168.76.3"));

	struct capture c;
	inet_pton(AF_INET, "255.255.255.252", &nc.net_mask);
	capture_begin(&c);
	struct net_backend *be = net_backend_create(&nc, "test", f->loop, 1);
	const char *out = capture_end(&c);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	assert_contains(out, "netmask 255.255.255.252");
	inet_pton(AF_INET, "255.255.0.0", &nc.net_mask);
	capture_begin(&c);
	be = net_backend_create(&nc, "test", f->loop, 1);
	out = capture_end(&c);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	assert_contains(out, "192.168.76.0 has bits set outside netmask 255.255.0.0");
}

static void test_user_rx_queue_full(void **state)
{
	struct fx *f = *state;
	f->be = user_create(f, NULL);
	assert_non_null(f->be);
	/* 600 requests, each answered at once, nobody receiving. */
	uint8_t frame[60];
	size_t len = arp_request(frame, "10.0.2.2");
	for (int i = 0; i < 600; i++)
		assert_int_equal(user_send_frame(f->be, frame, len), 0);
	assert_int_equal(net_user_rxq_dropped(f->be), 600 - NET_USER_RXQ_LEN);
	/* Too small a buffer: that frame is dropped, the next is fine. */
	uint8_t buf[NET_HDR_LEN + 1514];
	struct iovec small = { buf, NET_HDR_LEN + 20 };
	assert_int_equal(f->be->ops->recv(f->be, 0, &small, 1), -EMSGSIZE);
	unsigned n = 1;
	struct iovec big = { buf, sizeof(buf) };
	ssize_t r;
	while ((r = f->be->ops->recv(f->be, 0, &big, 1)) > 0) {
		struct arp_want want = { .op = 2, .spa = "10.0.2.2", .tpa = "10.0.2.15" };
		assert_true(match_arp(buf + NET_HDR_LEN, (size_t)r - NET_HDR_LEN, &want));
		n++;
	}
	assert_int_equal(r, 0);
	assert_int_equal(n, NET_USER_RXQ_LEN);
	/* Room again. */
	assert_int_equal(user_send_frame(f->be, frame, len), 0);
	assert_true(f->be->ops->recv(f->be, 0, &big, 1) > 0);
	assert_int_equal(net_user_rxq_dropped(f->be), 600 - NET_USER_RXQ_LEN);
}

static uint16_t free_port(int type)
{
	int s = socket(AF_INET, type | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
	close(s);
	return ntohs(a.sin_port);
}

static void test_user_hostfwd_errors(void **state)
{
	struct fx *f = *state;
	/* A port already taken. */
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s, 1), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
	uint16_t port = ntohs(a.sin_port);

	struct net_config nc = { .kind = NET_KIND_USER, .nr_hostfwd = 2 };
	nc.hostfwd[0] = (struct net_hostfwd){ .udp = true, .host_port = free_port(SOCK_DGRAM), .guest_port = 53 };
	nc.hostfwd[1] = (struct net_hostfwd){ .host_port = port, .guest_port = 22 };
	struct capture c;
	capture_begin(&c);
	struct net_backend *be = net_backend_create(&nc, "test", f->loop, 1);
	const char *out = capture_end(&c);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	char line[160];
	snprintf(line, sizeof(line), "kestrel: net user: hostfwd tcp::%u-:22: cannot listen on host port %u: "
		 "Address already in use\n", port, port);
	assert_string_equal(out, line);
	close(s);

	/* A guest address outside the network. */
	nc.nr_hostfwd = 1;
	nc.hostfwd[0] = (struct net_hostfwd){ .host_port = free_port(SOCK_STREAM), .guest_port = 22 };
	inet_pton(AF_INET, "192.168.1.5", &nc.hostfwd[0].guest_addr);
	capture_begin(&c);
	be = net_backend_create(&nc, "test", f->loop, 1);
	out = capture_end(&c);
	assert_null(be);
	assert_int_equal(count_lines(out), 1);
	assert_contains(out, "hostfwd tcp::");
	assert_contains(out, "-192.168.1.5:22: the guest address is not a host of 10.0.2.0/24");
}

struct tcp_want {
	uint16_t dport;
	uint8_t flags;
};

static bool match_tcp(const uint8_t *f, size_t len, void *arg)
{
	struct tcp_want *w = arg;
	if (len < 14 + 20 + 20 || get16(f + 12) != 0x0800 || f[14 + 9] != 6)
		return false;
	if (!is_ip(f + 14 + 12, "10.0.2.2") || !is_ip(f + 14 + 16, "10.0.2.15"))
		return false;
	const uint8_t *t = f + 14 + (size_t)(f[14] & 15) * 4;
	w->flags = t[13];
	return get16(t + 2) == w->dport;
}

/* A host connection to a forwarded port goes through the slirp thread's
 * poll loop and reaches the guest: first an ARP for the guest's address,
 * then (once the guest answers) the SYN. */
static void test_user_hostfwd_connect(void **state)
{
	struct fx *f = *state;
	uint16_t port = free_port(SOCK_STREAM);
	struct net_config nc = { .kind = NET_KIND_USER, .nr_hostfwd = 1 };
	nc.hostfwd[0] = (struct net_hostfwd){ .host_port = port, .guest_port = 2222 };
	f->be = user_create(f, &nc);
	assert_non_null(f->be);
	f->be->ops->rx_notify(f->be, 0, true);

	int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	int r = connect(s, (struct sockaddr *)&a, sizeof(a));
	assert_true(r == 0 || errno == EINPROGRESS);

	struct arp_want who = { .op = 1, .spa = "10.0.2.2", .tpa = "10.0.2.15" };
	assert_true(wait_frame(f->w, match_arp, &who, 3000));
	uint8_t frame[60];
	size_t len = arp_frame(frame, 2, who.sha, guest_mac, "10.0.2.15", who.sha, "10.0.2.2");
	uint64_t t0 = net_now_ns();
	assert_int_equal(user_send_frame(f->be, frame, len), 0);
	struct tcp_want syn = { .dport = 2222 };
	assert_true(wait_frame(f->w, match_tcp, &syn, 5000));
	assert_int_equal(syn.flags & 0x02, 0x02);   /* SYN */
	/* send() woke the slirp thread: it did not sleep out slirp's poll
	 * timeout (500 ms with a connection pending) before sending the SYN
	 * it had queued. Tens of microseconds when it works. */
	uint64_t dt = net_now_ns() - t0;
	if (dt >= 250 * MS)
		fail_msg("the SYN took %llu ms", (unsigned long long)(dt / MS));
	close(s);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bucket_unlimited),
		cmocka_unit_test(test_bucket_rate_over_a_second),
		cmocka_unit_test(test_bucket_burst),
		cmocka_unit_test(test_bucket_debt),
		cmocka_unit_test(test_bucket_debt_is_bounded),
		cmocka_unit_test(test_limiter_bandwidth),
		cmocka_unit_test(test_limiter_packets),
		cmocka_unit_test(test_limiter_waits_for_both),
		cmocka_unit_test(test_parse_mac),
		cmocka_unit_test(test_default_mac),
		cmocka_unit_test_setup_teardown(test_tap_create, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_tap_send_reaches_the_host, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_tap_recv_from_the_host, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_tap_recv_too_big, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_tap_multiqueue, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_tap_errors, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_bridge, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_bridge_errors, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_user_arp, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_user_dhcp, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_user_custom_network, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_user_rx_queue_full, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_user_hostfwd_errors, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_user_hostfwd_connect, fx_setup, fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
