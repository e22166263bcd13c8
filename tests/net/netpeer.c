/*
 * netpeer: the host end of the networking micro-guests' tests and
 * benchmarks. An AF_PACKET socket bound to one interface (a tap, usually,
 * inside a test's own network namespace) and to EtherType 0x88B5 (the
 * frames of tests/net/netproto.h), so it never sees anything else, nor
 * its own transmissions.
 *
 *   netpeer echo IFNAME [--count N]
 *       sends every frame back with the MACs swapped (a group destination
 *       becomes the interface's own MAC as the new source); stops after N
 *       frames (default: never) or on SIGINT/SIGTERM.
 *   netpeer sink IFNAME [--count N] [--seconds T] [--go [--dst MAC]]
 *       counts frames and bytes; prints the totals after N frames, T
 *       seconds, or on SIGINT/SIGTERM (after draining what is queued).
 *       --go: sends a 'G' frame (to MAC, default broadcast) every 200 ms
 *       until the first frame comes in, so that a guest waiting for it
 *       (netlib's mode=tx go) starts only once the sink listens.
 *   netpeer blast IFNAME [--count N] [--size S] [--dst MAC] [--pps R]
 *                        [--batch B] [--seconds T]
 *       sends N frames (default 100000; 0 = until stopped) of S bytes
 *       (60..1514, default 60; no FCS) with sequence numbers, as fast as
 *       possible (sendmmsg batches of B, default 64; PACKET_QDISC_BYPASS)
 *       or paced to R frames/s.
 *
 * Each prints a "netpeer: MODE: ready ..." line when its socket is bound,
 * and one result line with key=value fields:
 *   netpeer: echo: frames=N
 *   netpeer: sink: frames=N bytes=B us=U pps=P MBps=X drops=D
 *   netpeer: blast: frames=N size=S us=U pps=P MBps=X retries=R errors=E
 * (retries: sends refused because the tap's queue was full; the same frame
 * is sent again, so the receiver sees no gap in the sequence numbers).
 * Exit status 0, 1 on a runtime error, 2 for bad arguments.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "netproto.h"

#define BATCH_MAX 256

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(void)
{
	fprintf(stderr, "usage: netpeer echo IFNAME [--count N]\n"
			"       netpeer sink IFNAME [--count N] [--seconds T] [--go [--dst MAC]]\n"
			"       netpeer blast IFNAME [--count N] [--size S] [--dst MAC] [--pps R] [--batch B] "
			"[--seconds T]\n");
}

static void die_args(const char *fmt, const char *arg)
{
	fprintf(stderr, "netpeer: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (netpeer --help)\n");
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t max)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-' || v > max) {
		char msg[128];
		snprintf(msg, sizeof(msg), "%s: bad number '%%s' (0..%llu)", opt, (unsigned long long)max);
		die_args(msg, s);
	}
	return v;
}

static bool parse_mac(const char *s, uint8_t *mac)
{
	unsigned v[6];
	char tail;
	if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6)
		return false;
	for (int i = 0; i < 6; i++) {
		if (v[i] > 255)
			return false;
		mac[i] = (uint8_t)v[i];
	}
	return true;
}

struct peer {
	int fd;
	int ifindex;
	uint8_t mac[6];
	const char *ifname;
};

static int open_socket(struct peer *p, const char *ifname)
{
	p->ifname = ifname;
	if (strlen(ifname) >= IFNAMSIZ)
		die_args("interface name '%s' is too long", ifname);
	p->ifindex = (int)if_nametoindex(ifname);
	if (!p->ifindex) {
		fprintf(stderr, "netpeer: no interface '%s': %s\n", ifname, strerror(errno));
		return -1;
	}
	p->fd = socket(AF_PACKET, SOCK_RAW, htons(NETP_ETHERTYPE));
	if (p->fd < 0) {
		fprintf(stderr, "netpeer: AF_PACKET socket: %s%s\n", strerror(errno),
			errno == EPERM ? " (needs CAP_NET_RAW)" : "");
		return -1;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (ioctl(p->fd, SIOCGIFHWADDR, &ifr) < 0) {
		fprintf(stderr, "netpeer: %s: SIOCGIFHWADDR: %s\n", ifname, strerror(errno));
		return -1;
	}
	memcpy(p->mac, ifr.ifr_hwaddr.sa_data, 6);
	struct sockaddr_ll sll = {
		.sll_family = AF_PACKET,
		.sll_protocol = htons(NETP_ETHERTYPE),
		.sll_ifindex = p->ifindex,
	};
	if (bind(p->fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		fprintf(stderr, "netpeer: bind to %s: %s\n", ifname, strerror(errno));
		return -1;
	}
	int sz = 16 << 20;
	/* FORCE needs CAP_NET_ADMIN; the plain one is capped by rmem_max. */
	if (setsockopt(p->fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) < 0)
		setsockopt(p->fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	if (setsockopt(p->fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0)
		setsockopt(p->fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	return 0;
}

static void print_ready(const char *mode, struct peer *p)
{
	printf("netpeer: %s: ready on %s (ifindex %d, mac %02x:%02x:%02x:%02x:%02x:%02x)\n", mode, p->ifname,
	       p->ifindex, p->mac[0], p->mac[1], p->mac[2], p->mac[3], p->mac[4], p->mac[5]);
	fflush(stdout);
}

static void rate_line(char *out, size_t n, uint64_t frames, uint64_t bytes, uint64_t ns)
{
	double s = (double)ns / 1e9;
	snprintf(out, n, "us=%llu pps=%.0f MBps=%.2f", (unsigned long long)(ns / 1000), s > 0 ? frames / s : 0.0,
		 s > 0 ? bytes / s / 1e6 : 0.0);
}

static uint8_t bufs[BATCH_MAX][2048];

static int do_echo(struct peer *p, uint64_t count)
{
	struct mmsghdr msgs[BATCH_MAX];
	struct iovec iov[BATCH_MAX];
	uint64_t frames = 0;
	print_ready("echo", p);
	while (!stop && (!count || frames < count)) {
		unsigned want = BATCH_MAX;
		if (count && count - frames < want)
			want = (unsigned)(count - frames);
		for (unsigned i = 0; i < want; i++) {
			iov[i] = (struct iovec){ bufs[i], sizeof(bufs[i]) };
			msgs[i] = (struct mmsghdr){ .msg_hdr = { .msg_iov = &iov[i], .msg_iovlen = 1 } };
		}
		int n = recvmmsg(p->fd, msgs, want, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENETDOWN || errno == ENXIO || errno == ENODEV) {
				/* The VMM exited and its tap went away: the normal end. */
				printf("netpeer: echo: %s went away (%s)\n", p->ifname, strerror(errno));
				break;
			}
			fprintf(stderr, "netpeer: echo: recvmmsg: %s\n", strerror(errno));
			return 1;
		}
		for (int i = 0; i < n; i++) {
			uint8_t *f = bufs[i], tmp[6];
			unsigned len = msgs[i].msg_len;
			if (len < 14)
				len = 14;
			memcpy(tmp, f, 6);
			memcpy(f, f + 6, 6);
			if (tmp[0] & 1)
				memcpy(f + 6, p->mac, 6);
			else
				memcpy(f + 6, tmp, 6);
			iov[i].iov_len = len;
			msgs[i].msg_hdr.msg_flags = 0;
		}
		int sent = 0;
		while (sent < n) {
			int r = sendmmsg(p->fd, msgs + sent, (unsigned)(n - sent), 0);
			if (r < 0) {
				if (errno == EINTR || errno == ENOBUFS || errno == EAGAIN)
					continue;
				if (errno == ENETDOWN || errno == ENXIO || errno == ENODEV)
					break;
				fprintf(stderr, "netpeer: echo: sendmmsg: %s\n", strerror(errno));
				return 1;
			}
			sent += r;
		}
		frames += (uint64_t)n;
	}
	printf("netpeer: echo: frames=%llu\n", (unsigned long long)frames);
	return 0;
}

static void send_go(struct peer *p, const uint8_t *dst, uint32_t seq)
{
	uint8_t f[NETP_MIN];
	netp_build(f, dst, p->mac, NETP_GO, seq, NETP_MIN);
	if (send(p->fd, f, sizeof(f), 0) < 0 && errno != ENOBUFS && errno != EAGAIN)
		fprintf(stderr, "netpeer: sink: sending the go frame: %s\n", strerror(errno));
}

static int do_sink(struct peer *p, uint64_t count, uint64_t seconds, bool go, const uint8_t *dst)
{
	struct mmsghdr msgs[BATCH_MAX];
	struct iovec iov[BATCH_MAX];
	uint64_t frames = 0, bytes = 0, t0 = 0, t1 = 0, end = seconds ? now_ns() + seconds * 1000000000ull : 0;
	uint32_t gos = 0;
	print_ready("sink", p);
	/* Wake up now and then: for --seconds and for the go frames. */
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };
	setsockopt(p->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	for (;;) {
		bool draining = stop || (end && now_ns() >= end);
		if (go && !frames && !draining)
			send_go(p, dst, gos++);
		for (unsigned i = 0; i < BATCH_MAX; i++) {
			iov[i] = (struct iovec){ bufs[i], sizeof(bufs[i]) };
			msgs[i] = (struct mmsghdr){ .msg_hdr = { .msg_iov = &iov[i], .msg_iovlen = 1 } };
		}
		int n = recvmmsg(p->fd, msgs, BATCH_MAX, MSG_TRUNC | (draining ? MSG_DONTWAIT : MSG_WAITFORONE), NULL);
		if (n < 0) {
			if (errno == EINTR || ((errno == EAGAIN || errno == EWOULDBLOCK) && !draining))
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENETDOWN || errno == ENXIO ||
			    errno == ENODEV)
				break;   /* drained, or the tap went away with its VMM */
			fprintf(stderr, "netpeer: sink: recvmmsg: %s\n", strerror(errno));
			return 1;
		}
		uint64_t t = now_ns();
		if (!frames && n > 0)
			t0 = t;
		t1 = t;
		for (int i = 0; i < n; i++)
			bytes += msgs[i].msg_len;
		frames += (uint64_t)n;
		if (count && frames >= count)
			break;
		if (draining && n == 0)
			break;
	}
	struct tpacket_stats st = { 0 };
	socklen_t sl = sizeof(st);
	getsockopt(p->fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
	char rate[128];
	rate_line(rate, sizeof(rate), frames, bytes, t1 - t0);
	printf("netpeer: sink: frames=%llu bytes=%llu %s drops=%u\n", (unsigned long long)frames,
	       (unsigned long long)bytes, rate, st.tp_drops);
	return 0;
}

static int do_blast(struct peer *p, uint64_t count, uint64_t size, const uint8_t *dst, uint64_t pps, unsigned batch,
		    uint64_t seconds)
{
	struct mmsghdr msgs[BATCH_MAX];
	struct iovec iov[BATCH_MAX];
	int one = 1;
	setsockopt(p->fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
	for (unsigned i = 0; i < batch; i++) {
		netp_build(bufs[i], dst, p->mac, NETP_BLAST, 0, (uint32_t)size);
		iov[i] = (struct iovec){ bufs[i], size };
		msgs[i] = (struct mmsghdr){ .msg_hdr = { .msg_iov = &iov[i], .msg_iovlen = 1 } };
	}
	print_ready("blast", p);
	uint64_t sent = 0, errors = 0, retries = 0, t0 = now_ns(), end = seconds ? t0 + seconds * 1000000000ull : 0;
	int last_err = 0;
	while (!stop && (!count || sent < count)) {
		unsigned n = batch;
		if (count && count - sent < n)
			n = (unsigned)(count - sent);
		if (pps) {
			/* Pace: batch k may start at t0 + k*batch/pps. */
			uint64_t due = t0 + sent * 1000000000ull / pps, t = now_ns();
			if (t < due) {
				struct timespec ts = { 0, (long)(due - t) };
				nanosleep(&ts, NULL);
				continue;
			}
		}
		if (end && now_ns() >= end)
			break;
		for (unsigned i = 0; i < n; i++)
			netp_put32(bufs[i] + NETP_OFF_SEQ, (uint32_t)(sent + i));
		int r = sendmmsg(p->fd, msgs, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS || errno == EAGAIN) {
				/* The tap's queue is full (the VMM is behind): the
				 * frame was not sent; retry it in a moment. */
				retries++;
				struct timespec ts = { 0, 20000 };
				nanosleep(&ts, NULL);
				continue;
			}
			if (errno == ENETDOWN || errno == ENXIO || errno == ENODEV) {
				printf("netpeer: blast: %s went away (%s)\n", p->ifname, strerror(errno));
				break;
			}
			if (errno != last_err)
				fprintf(stderr, "netpeer: blast: sendmmsg: %s\n", strerror(errno));
			last_err = errno;
			errors++;
			continue;
		}
		sent += (uint64_t)r;
	}
	char rate[128];
	rate_line(rate, sizeof(rate), sent, sent * size, now_ns() - t0);
	printf("netpeer: blast: frames=%llu size=%llu %s retries=%llu errors=%llu\n", (unsigned long long)sent,
	       (unsigned long long)size, rate, (unsigned long long)retries, (unsigned long long)errors);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
			usage();
			return 0;
		}
		die_args("%s", argc < 2 ? "missing mode (echo, sink, blast)" : "missing interface name");
	}
	const char *mode = argv[1], *ifname = argv[2];
	if (strcmp(mode, "echo") && strcmp(mode, "sink") && strcmp(mode, "blast"))
		die_args("unknown mode '%s' (echo, sink, blast)", mode);
	uint64_t count = !strcmp(mode, "blast") ? 100000 : 0, size = NETP_MIN, pps = 0, batch = 64, seconds = 0;
	uint8_t dst[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	bool go = false;
	for (int i = 3; i < argc; i++) {
		const char *o = argv[i];
		bool blast_only = !strcmp(o, "--size") || !strcmp(o, "--pps") || !strcmp(o, "--batch");
		if (!strcmp(o, "--go")) {
			if (strcmp(mode, "sink"))
				die_args("option '%s' is for sink only", o);
			go = true;
			continue;
		}
		if (!strcmp(o, "--dst") && !strcmp(mode, "echo"))
			die_args("option '%s' is for sink and blast only", o);
		bool known = blast_only || !strcmp(o, "--count") || !strcmp(o, "--seconds") || !strcmp(o, "--dst");
		if (!known)
			die_args("unknown option '%s'", o);
		if (blast_only && strcmp(mode, "blast"))
			die_args("option '%s' is for blast only", o);
		if (!strcmp(o, "--seconds") && !strcmp(mode, "echo"))
			die_args("option '%s' is for sink and blast only", o);
		if (i + 1 >= argc)
			die_args("option '%s' needs a value", o);
		const char *v = argv[++i];
		if (!strcmp(o, "--count"))
			count = parse_u64(o, v, UINT64_MAX / 2);
		else if (!strcmp(o, "--seconds"))
			seconds = parse_u64(o, v, 1000000);
		else if (!strcmp(o, "--size")) {
			size = parse_u64(o, v, 100000);
			if (size < NETP_MIN || size > NETP_MAX)
				die_args("--size %s: want 60..1514 (a frame without FCS)", v);
		} else if (!strcmp(o, "--pps"))
			pps = parse_u64(o, v, 100000000);
		else if (!strcmp(o, "--batch")) {
			batch = parse_u64(o, v, BATCH_MAX);
			if (!batch)
				die_args("--batch %s: want 1..256", v);
		} else if (!parse_mac(v, dst))
			die_args("--dst '%s': want a MAC like 52:54:00:12:34:56", v);
	}

	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);

	struct peer p;
	if (open_socket(&p, ifname) < 0)
		return 1;
	if (!strcmp(mode, "echo"))
		return do_echo(&p, count);
	if (!strcmp(mode, "sink"))
		return do_sink(&p, count, seconds, go, dst);
	return do_blast(&p, count, size, dst, pps, (unsigned)batch, seconds);
}
