#include "cli/opts.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "net/net.h"

void run_opts_usage(FILE *f)
{
	fprintf(f,
		"Usage: kestrel run --kernel PATH [options]\n"
		"\n"
		"Boots a virtual machine on KVM.\n"
		"\n"
		"  --kernel PATH      bzImage (64-bit boot protocol) or ELF with a PVH note\n"
		"                     (vmlinux, Kestrel's test guests); detected from content\n"
		"  --initrd PATH      initial ramdisk\n"
		"  --cmdline STR      kernel command line\n"
		"  --memory SIZE      guest RAM, e.g. 512M, 4G (default 256M; a bare number is\n"
		"                     MiB; 16M..1T). RAM past 3 GiB is placed above 4 GiB\n"
		"  --cpus N           vCPUs (default 1, up to 255 and KVM's limit)\n"
		"  --serial BACKEND   COM1: stdio (default), pty, file=PATH, socket=PATH, off\n"
		"  --disk path=FILE[,readonly=on][,serial=ID][,cache=MODE][,snapshot=on]\n"
		"         [,aio=io_uring|threads][,iothread=on][,num_queues=N][,transport=pci|mmio]\n"
		"         [,format=raw|qcow2]\n"
		"                     a virtio-blk disk (repeatable, up to 8; format is never\n"
		"                     guessed: raw unless format=qcow2);\n"
		"                     cache=none|writeback|writethrough|directsync|unsafe\n"
		"                     (default writeback), snapshot=on discards writes at exit\n"
		"  --console BACKEND[,transport=pci|mmio]\n"
		"                     a virtio-console (hvc0) on stdio, pty, file=PATH,\n"
		"                     socket=PATH or off\n"
		"  --rng on|max-bytes=N[,period=MS][,transport=pci|mmio]\n"
		"                     a virtio-rng fed by the host's getrandom(), optionally\n"
		"                     limited to N bytes per period (default 1000 ms)\n"
		"  --net tap,ifname=NAME[,queues=N][,vhost=on|off][,NIC options]\n"
		"  --net bridge,br=BRIDGE[,ifname=NAME][,NIC options]\n"
		"  --net user[,net=10.0.2.0/24][,hostfwd=tcp|udp:[HOSTADDR]:PORT-[GUESTADDR]:PORT]\n"
		"         [,NIC options]\n"
		"  --net none\n"
		"                     a NIC (repeatable, up to 4): on a tap (created if missing,\n"
		"                     brought up), on a new tap enslaved to BRIDGE (needs\n"
		"                     CAP_NET_ADMIN), or on user-mode networking (libslirp: NAT,\n"
		"                     DHCP from 10.0.2.15, DNS 10.0.2.3, host forwards). NIC\n"
		"                     options: model=virtio|e1000 (default virtio),\n"
		"                     mac=52:54:00:xx:xx:xx (default: derived from --name),\n"
		"                     transport=pci|mmio (virtio), bw=RATE bytes/s (K, M, G:\n"
		"                     powers of 1000) and pps=N: token-bucket limits per\n"
		"                     direction. queues= defaults to one pair per vCPU on a tap;\n"
		"                     vhost-net is used when /dev/vhost-net exists (vhost=off:\n"
		"                     never)\n"
		"  --name NAME        VM name (for messages, default MACs)\n"
		"  --no-reboot        exit instead of rebooting when the guest resets\n"
		"  -v, --verbose      more messages (repeat for debug)\n"
		"  --help             this text\n"
		"  --version          print the version\n"
		"\n"
		"On a stdio terminal, Ctrl-A x quits and Ctrl-A Ctrl-A sends Ctrl-A.\n"
		"\n"
		"Exit status: 0 guest powered off (or reset with --no-reboot, or SIGINT/\n"
		"SIGTERM); (V<<1)|1 guest wrote V to the debug-exit port 0xf4; 2 bad\n"
		"options or host setup failure; 4 guest crashed (triple fault, KVM internal\n"
		"error, failed entry).\n");
}

int parse_size(const char *text, uint64_t *out)
{
	if (!text || !isdigit((unsigned char)text[0]))
		return -1;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno)
		return -1;
	unsigned shift;
	switch (toupper((unsigned char)*end)) {
	case 0: shift = 20; break;
	case 'K': shift = 10; end++; break;
	case 'M': shift = 20; end++; break;
	case 'G': shift = 30; end++; break;
	case 'T': shift = 40; end++; break;
	case 'B': shift = 0; break;
	default: return -1;
	}
	/* Accept "512M", "512MB", "512MiB", "4096B". */
	if (!strcasecmp(end, "iB") && shift)
		end += 2;
	else if (!strcasecmp(end, "B"))
		end += 1;
	if (*end)
		return -1;
	if (v > (UINT64_MAX >> shift))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

enum { OPT_KERNEL = 256, OPT_INITRD, OPT_CMDLINE, OPT_MEMORY, OPT_CPUS, OPT_SERIAL, OPT_NAME,
       OPT_NO_REBOOT, OPT_HELP, OPT_VERSION, OPT_DISK, OPT_CONSOLE, OPT_RNG, OPT_NET };

static const struct option run_long_opts[] = {
	{ "kernel", required_argument, NULL, OPT_KERNEL },
	{ "initrd", required_argument, NULL, OPT_INITRD },
	{ "cmdline", required_argument, NULL, OPT_CMDLINE },
	{ "memory", required_argument, NULL, OPT_MEMORY },
	{ "cpus", required_argument, NULL, OPT_CPUS },
	{ "serial", required_argument, NULL, OPT_SERIAL },
	{ "name", required_argument, NULL, OPT_NAME },
	{ "disk", required_argument, NULL, OPT_DISK },
	{ "console", required_argument, NULL, OPT_CONSOLE },
	{ "rng", required_argument, NULL, OPT_RNG },
	{ "net", required_argument, NULL, OPT_NET },
	{ "nic", required_argument, NULL, OPT_NET },
	{ "no-reboot", no_argument, NULL, OPT_NO_REBOOT },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, OPT_HELP },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

static enum run_opts_result __attribute__((format(printf, 3, 4)))
fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return RUN_OPTS_ERROR;
}

/* Splits the next "key=value" off a comma-separated list (in place).
 * Returns false at the end. A bare word yields value NULL. */
static bool kv_next(char **cursor, char **key, char **value)
{
	char *p = *cursor;
	if (!p || !*p)
		return false;
	char *comma = strchr(p, ',');
	if (comma) {
		*comma = 0;
		*cursor = comma + 1;
	} else {
		*cursor = p + strlen(p);
	}
	*key = p;
	char *eq = strchr(p, '=');
	if (eq) {
		*eq = 0;
		*value = eq + 1;
	} else {
		*value = NULL;
	}
	return true;
}

static int parse_onoff(const char *v, bool *out)
{
	if (!v || !strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) {
		*out = true;
		return 0;
	}
	if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no")) {
		*out = false;
		return 0;
	}
	return -1;
}

static enum run_opts_result __attribute__((format(printf, 3, 4)))
fail(char *err, size_t errlen, const char *fmt, ...);

static enum run_opts_result parse_disk(const char *arg, struct vm_config *cfg, char *err, size_t errlen)
{
	if (cfg->nr_disks == CONFIG_MAX_DISKS)
		return fail(err, errlen, "too many --disk options (at most %d)", CONFIG_MAX_DISKS);
	struct disk_config *d = &cfg->disks[cfg->nr_disks];
	memset(d, 0, sizeof(*d));
	strcpy(d->format, "raw");
	d->cache = BLK_CACHE_WRITEBACK;
	d->aio = BLK_AIO_IO_URING;
	d->num_queues = 1;
	d->transport = VIRTIO_TRANSPORT_PCI;
	char buf[PATH_MAX + 256];
	if (strlen(arg) >= sizeof(buf))
		return fail(err, errlen, "--disk value is too long");
	strcpy(buf, arg);
	char *cur = buf, *k, *v;
	while (kv_next(&cur, &k, &v)) {
		bool b;
		if (!strcmp(k, "path") || !strcmp(k, "file")) {
			if (!v || !*v || strlen(v) >= sizeof(d->path))
				return fail(err, errlen, "--disk: '%s=' needs a file name", k);
			strcpy(d->path, v);
		} else if (!strcmp(k, "readonly")) {
			if (parse_onoff(v, &b))
				return fail(err, errlen, "--disk: readonly='%s' (accepted: on, off)", v);
			d->readonly = b;
		} else if (!strcmp(k, "snapshot")) {
			if (parse_onoff(v, &b))
				return fail(err, errlen, "--disk: snapshot='%s' (accepted: on, off)", v);
			d->snapshot = b;
		} else if (!strcmp(k, "iothread")) {
			if (parse_onoff(v, &b))
				return fail(err, errlen, "--disk: iothread='%s' (accepted: on, off)", v);
			d->iothread = b;
		} else if (!strcmp(k, "serial")) {
			if (!v || strlen(v) > CONFIG_DISK_SERIAL_MAX)
				return fail(err, errlen, "--disk: serial='%s' (at most %d characters)", v ? v : "",
					    CONFIG_DISK_SERIAL_MAX);
			strcpy(d->serial, v);
		} else if (!strcmp(k, "cache")) {
			if (!v || blk_parse_cache(v, &d->cache))
				return fail(err, errlen, "--disk: cache='%s' (accepted: none, writeback, writethrough, "
						      "directsync, unsafe)", v ? v : "");
		} else if (!strcmp(k, "aio")) {
			if (!v || blk_parse_aio(v, &d->aio))
				return fail(err, errlen, "--disk: aio='%s' (accepted: io_uring, threads)", v ? v : "");
		} else if (!strcmp(k, "num_queues") || !strcmp(k, "num-queues")) {
			char *end;
			long n = v ? strtol(v, &end, 10) : 0;
			if (!v || *end || n < 1 || n > 16)
				return fail(err, errlen, "--disk: num_queues='%s' (accepted: 1 to 16)", v ? v : "");
			d->num_queues = (unsigned)n;
		} else if (!strcmp(k, "transport")) {
			if (!v || virtio_parse_transport(v, &d->transport))
				return fail(err, errlen, "--disk: transport='%s' (accepted: pci, mmio)", v ? v : "");
		} else if (!strcmp(k, "format")) {
			if (!v || (strcmp(v, "raw") && strcmp(v, "qcow2")))
				return fail(err, errlen, "--disk: format='%s' (accepted: raw, qcow2)", v ? v : "");
			strcpy(d->format, v);
		} else if (!v && !strchr(arg, '=') && !strchr(arg, ',')) {
			/* "--disk FILE": the whole value is the path */
			if (strlen(k) >= sizeof(d->path))
				return fail(err, errlen, "--disk: file name too long");
			strcpy(d->path, k);
		} else {
			return fail(err, errlen, "--disk: unknown key '%s' (accepted: path, readonly, serial, cache, "
					      "snapshot, aio, iothread, num_queues, transport, format)", k);
		}
	}
	if (!d->path[0])
		return fail(err, errlen, "--disk '%s' has no path=FILE", arg);
	if (d->readonly && d->snapshot)
		d->snapshot = false; /* nothing to throw away */
	cfg->nr_disks++;
	return RUN_OPTS_OK;
}

/* Splits a trailing ",transport=X" off a console/rng value. */
static enum run_opts_result take_transport(char *buf, enum virtio_transport_kind *t, const char *opt,
					   char *err, size_t errlen)
{
	*t = VIRTIO_TRANSPORT_PCI;
	char *p = strstr(buf, ",transport=");
	if (!p)
		return RUN_OPTS_OK;
	*p = 0;
	const char *v = p + strlen(",transport=");
	if (virtio_parse_transport(v, t))
		return fail(err, errlen, "%s: transport='%s' (accepted: pci, mmio)", opt, v);
	return RUN_OPTS_OK;
}

static enum run_opts_result parse_console(const char *arg, struct vm_config *cfg, char *err, size_t errlen)
{
	char buf[PATH_MAX + 64], why[PATH_MAX + 128];
	if (strlen(arg) >= sizeof(buf))
		return fail(err, errlen, "--console value is too long");
	strcpy(buf, arg);
	if (take_transport(buf, &cfg->console.transport, "--console", err, errlen) != RUN_OPTS_OK)
		return RUN_OPTS_ERROR;
	if (chardev_parse(buf, &cfg->console.backend, why, sizeof(why)))
		return fail(err, errlen, "--console: %s", why);
	cfg->console.enabled = cfg->console.backend.kind != CHARDEV_OFF;
	return RUN_OPTS_OK;
}

static enum run_opts_result parse_rng(const char *arg, struct vm_config *cfg, char *err, size_t errlen)
{
	char buf[256];
	if (strlen(arg) >= sizeof(buf))
		return fail(err, errlen, "--rng value is too long");
	strcpy(buf, arg);
	struct rng_config *r = &cfg->rng;
	if (take_transport(buf, &r->transport, "--rng", err, errlen) != RUN_OPTS_OK)
		return RUN_OPTS_ERROR;
	r->enabled = true;
	r->max_bytes = 0;
	r->period_ms = 1000;
	char *cur = buf, *k, *v;
	while (kv_next(&cur, &k, &v)) {
		if (!v && (!strcmp(k, "on") || !strcmp(k, "off"))) {
			r->enabled = !strcmp(k, "on");
		} else if (!strcmp(k, "max-bytes") || !strcmp(k, "max_bytes") || !strcmp(k, "period")) {
			char *end;
			errno = 0;
			unsigned long long n = v ? strtoull(v, &end, 10) : 0;
			if (!v || !*v || *end || errno || n == 0)
				return fail(err, errlen, "--rng: %s='%s' (accepted: a positive number)", k, v ? v : "");
			if (!strcmp(k, "period"))
				r->period_ms = n;
			else
				r->max_bytes = n;
		} else {
			return fail(err, errlen, "--rng: '%s' (accepted: on, off, max-bytes=N, period=MS, "
					      "transport=pci|mmio)", k);
		}
	}
	return RUN_OPTS_OK;
}

/* A rate: digits with an optional K/M/G suffix (powers of 1000). */
static int parse_rate(const char *text, uint64_t *out)
{
	if (!text || !isdigit((unsigned char)text[0]))
		return -1;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno)
		return -1;
	uint64_t mul = 1;
	switch (toupper((unsigned char)*end)) {
	case 0: break;
	case 'K': mul = 1000; end++; break;
	case 'M': mul = 1000000; end++; break;
	case 'G': mul = 1000000000; end++; break;
	default: return -1;
	}
	/* At most 10^12 per second: far beyond any NIC, and token arithmetic
	 * stays well inside 64 bits. */
	if (*end || v == 0 || v > 1000000000000ULL / mul)
		return -1;
	*out = v * mul;
	return 0;
}

static int parse_ipv4(const char *s, uint32_t *out)
{
	struct in_addr a;
	if (inet_pton(AF_INET, s, &a) != 1)
		return -1;
	*out = a.s_addr;
	return 0;
}

static int parse_port(const char *s, uint16_t *out)
{
	char *end;
	errno = 0;
	long n = strtol(s, &end, 10);
	if (errno || end == s || *end || n < 1 || n > 65535)
		return -1;
	*out = (uint16_t)n;
	return 0;
}

/* "[ADDR]:PORT" (modified in place); an empty ADDR leaves *addr 0. */
static int parse_addr_port(char *s, uint32_t *addr, uint16_t *port)
{
	char *colon = strrchr(s, ':');
	if (!colon)
		return -1;
	*colon = 0;
	if (*s && parse_ipv4(s, addr))
		return -1;
	return parse_port(colon + 1, port);
}

/* [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT, as QEMU's hostfwd. */
static int parse_hostfwd(const char *text, struct net_hostfwd *fw)
{
	char buf[128];
	if (strlen(text) >= sizeof(buf))
		return -1;
	strcpy(buf, text);
	memset(fw, 0, sizeof(*fw));
	char *p = buf;
	char *colon = strchr(p, ':');
	if (!colon)
		return -1;
	*colon = 0;
	if (!strcmp(p, "udp"))
		fw->udp = true;
	else if (*p && strcmp(p, "tcp"))
		return -1;
	p = colon + 1;
	char *dash = strchr(p, '-');
	if (!dash)
		return -1;
	*dash = 0;
	if (parse_addr_port(p, &fw->host_addr, &fw->host_port) ||
	    parse_addr_port(dash + 1, &fw->guest_addr, &fw->guest_port))
		return -1;
	return 0;
}

static enum run_opts_result parse_net(const char *arg, struct vm_config *cfg, char *err, size_t errlen)
{
	char buf[1024];
	if (strlen(arg) >= sizeof(buf))
		return fail(err, errlen, "--net value is too long");
	strcpy(buf, arg);
	char *cur = buf, *k, *v;
	if (!kv_next(&cur, &k, &v) || v)
		return fail(err, errlen, "--net '%s': start with a backend (accepted: tap, bridge, user, none)", arg);
	if (!strcmp(k, "none")) {
		if (*cur)
			return fail(err, errlen, "--net none takes no options");
		return RUN_OPTS_OK;
	}
	if (cfg->nr_nics == CONFIG_MAX_NICS)
		return fail(err, errlen, "too many --net options (at most %d)", CONFIG_MAX_NICS);
	struct net_config *n = &cfg->nics[cfg->nr_nics];
	memset(n, 0, sizeof(*n));
	n->index = cfg->nr_nics;
	if (!strcmp(k, "tap"))
		n->kind = NET_KIND_TAP;
	else if (!strcmp(k, "bridge"))
		n->kind = NET_KIND_BRIDGE;
	else if (!strcmp(k, "user"))
		n->kind = NET_KIND_USER;
	else
		return fail(err, errlen, "--net: backend '%s' (accepted: tap, bridge, user, none)", k);
	const char *kind = k;
	bool transport_given = false;
	while (kv_next(&cur, &k, &v)) {
		bool b;
		if (!v)
			return fail(err, errlen, "--net %s: '%s' needs a value (key=value)", kind, k);
		if (!strcmp(k, "ifname") && n->kind != NET_KIND_USER) {
			if (!*v || strlen(v) >= sizeof(n->ifname) || strchr(v, '/') || strchr(v, ' '))
				return fail(err, errlen, "--net %s: ifname='%s' (accepted: 1 to 15 characters, no '/' or spaces)",
					    kind, v);
			strcpy(n->ifname, v);
		} else if (!strcmp(k, "br") && n->kind == NET_KIND_BRIDGE) {
			if (!*v || strlen(v) >= sizeof(n->bridge) || strchr(v, '/') || strchr(v, ' '))
				return fail(err, errlen, "--net bridge: br='%s' (accepted: 1 to 15 characters, no '/' or spaces)", v);
			strcpy(n->bridge, v);
		} else if (!strcmp(k, "model")) {
			if (!strcmp(v, "virtio") || !strcmp(v, "virtio-net") || !strcmp(v, "virtio-net-pci"))
				n->model = NET_MODEL_VIRTIO;
			else if (!strcmp(v, "e1000") || !strcmp(v, "82540em"))
				n->model = NET_MODEL_E1000;
			else
				return fail(err, errlen, "--net %s: model='%s' (accepted: virtio, e1000)", kind, v);
		} else if (!strcmp(k, "mac")) {
			if (net_parse_mac(v, n->mac))
				return fail(err, errlen, "--net %s: mac='%s' (accepted: a unicast address like 52:54:00:12:34:56)",
					    kind, v);
			n->mac_given = true;
		} else if (!strcmp(k, "transport")) {
			if (virtio_parse_transport(v, &n->transport))
				return fail(err, errlen, "--net %s: transport='%s' (accepted: pci, mmio)", kind, v);
			transport_given = true;
		} else if (!strcmp(k, "queues") && n->kind != NET_KIND_USER) {
			char *end;
			long q = strtol(v, &end, 10);
			if (!*v || *end || q < 1 || q > NET_MAX_QUEUES)
				return fail(err, errlen, "--net %s: queues='%s' (accepted: 1 to %d)", kind, v, NET_MAX_QUEUES);
			n->queues = (unsigned)q;
		} else if (!strcmp(k, "vhost") && n->kind != NET_KIND_USER) {
			if (parse_onoff(v, &b))
				return fail(err, errlen, "--net %s: vhost='%s' (accepted: on, off)", kind, v);
			n->vhost = b ? NET_VHOST_ON : NET_VHOST_OFF;
		} else if (!strcmp(k, "net") && n->kind == NET_KIND_USER) {
			char a[32];
			char *slash = strchr(v, '/');
			char *end = NULL;
			long prefix = slash ? strtol(slash + 1, &end, 10) : -1;
			if (!slash || (size_t)(slash - v) >= sizeof(a) || !slash[1] || *end || prefix < 8 || prefix > 27)
				return fail(err, errlen, "--net user: net='%s' (accepted: ADDR/PREFIX, prefix 8 to 27, "
						      "e.g. 10.0.2.0/24)", v);
			memcpy(a, v, (size_t)(slash - v));
			a[slash - v] = 0;
			if (parse_ipv4(a, &n->net_addr))
				return fail(err, errlen, "--net user: net='%s': '%s' is not an IPv4 address", v, a);
			n->net_mask = htonl(~0u << (32 - prefix));
			n->net_addr &= n->net_mask;
		} else if (!strcmp(k, "hostfwd") && n->kind == NET_KIND_USER) {
			if (n->nr_hostfwd == CONFIG_MAX_HOSTFWD)
				return fail(err, errlen, "--net user: too many hostfwd (at most %d)", CONFIG_MAX_HOSTFWD);
			if (parse_hostfwd(v, &n->hostfwd[n->nr_hostfwd]))
				return fail(err, errlen, "--net user: hostfwd='%s' (accepted: [tcp|udp]:[HOSTADDR]:HOSTPORT-"
						      "[GUESTADDR]:GUESTPORT, e.g. tcp::2222-:22)", v);
			n->nr_hostfwd++;
		} else if (!strcmp(k, "bw")) {
			if (parse_rate(v, &n->bw))
				return fail(err, errlen, "--net %s: bw='%s' (accepted: bytes per second, e.g. 1250000 or 10M)",
					    kind, v);
		} else if (!strcmp(k, "pps")) {
			if (parse_rate(v, &n->pps))
				return fail(err, errlen, "--net %s: pps='%s' (accepted: packets per second, e.g. 1000 or 20K)",
					    kind, v);
		} else {
			const char *accepted = n->kind == NET_KIND_TAP ? "ifname, queues, vhost"
					     : n->kind == NET_KIND_BRIDGE ? "br, ifname, queues, vhost"
					     : "net, hostfwd";
			return fail(err, errlen, "--net %s: unknown key '%s' (accepted: %s, model, mac, transport, bw, pps)",
				    kind, k, accepted);
		}
	}
	if (n->kind == NET_KIND_TAP && !n->ifname[0])
		return fail(err, errlen, "--net tap needs ifname=NAME");
	if (n->kind == NET_KIND_BRIDGE && !n->bridge[0])
		return fail(err, errlen, "--net bridge needs br=BRIDGE");
	if (n->model == NET_MODEL_E1000) {
		if (transport_given && n->transport != VIRTIO_TRANSPORT_PCI)
			return fail(err, errlen, "--net %s: model=e1000 is a PCI device (transport=mmio is for virtio)", kind);
		if (n->queues > 1)
			return fail(err, errlen, "--net %s: model=e1000 has one queue (queues=%u)", kind, n->queues);
		n->queues = 1;
	}
	if (n->kind == NET_KIND_USER)
		n->queues = 1;   /* slirp is one stream of frames */
	cfg->nr_nics++;
	return RUN_OPTS_OK;
}

enum run_opts_result run_opts_parse(int argc, char **argv, struct vm_config *cfg, char *err, size_t errlen)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->cmdline = "";
	cfg->name = "kestrel";
	cfg->mem_size = CONFIG_MEM_DEFAULT;
	cfg->cpus = 1;
	cfg->serial.kind = CHARDEV_STDIO;

	optind = 0; /* reset getopt: the parser may run more than once per process */
	opterr = 0;
	for (;;) {
		int idx = 0;
		int c = getopt_long(argc, argv, "+v", run_long_opts, &idx);
		if (c == -1)
			break;
		const char *arg = optarg;
		switch (c) {
		case OPT_KERNEL: cfg->kernel = arg; break;
		case OPT_INITRD: cfg->initrd = arg; break;
		case OPT_CMDLINE: cfg->cmdline = arg; break;
		case OPT_NAME:
			if (!*arg)
				return fail(err, errlen, "--name must not be empty");
			cfg->name = arg;
			break;
		case OPT_MEMORY: {
			uint64_t sz;
			if (parse_size(arg, &sz))
				return fail(err, errlen, "--memory '%s' is not a size (expected e.g. 512M or 4G)", arg);
			if (sz < CONFIG_MEM_MIN || sz > CONFIG_MEM_MAX)
				return fail(err, errlen, "--memory '%s' is out of range (accepted: 16M to 1T)", arg);
			if (sz & 0xfff)
				return fail(err, errlen, "--memory '%s' is not a multiple of 4 KiB", arg);
			cfg->mem_size = sz;
			break;
		}
		case OPT_CPUS: {
			char *end;
			errno = 0;
			long n = strtol(arg, &end, 10);
			if (errno || *end || end == arg || n < 1 || n > CONFIG_CPUS_MAX)
				return fail(err, errlen, "--cpus '%s' is not a CPU count (accepted: 1 to 255)", arg);
			cfg->cpus = (unsigned)n;
			break;
		}
		case OPT_SERIAL: {
			char why[PATH_MAX + 128];
			if (chardev_parse(arg, &cfg->serial, why, sizeof(why)))
				return fail(err, errlen, "--serial: %s", why);
			break;
		}
		case OPT_NO_REBOOT: cfg->no_reboot = true; break;
		case OPT_DISK:
			if (parse_disk(arg, cfg, err, errlen) != RUN_OPTS_OK)
				return RUN_OPTS_ERROR;
			break;
		case OPT_CONSOLE:
			if (parse_console(arg, cfg, err, errlen) != RUN_OPTS_OK)
				return RUN_OPTS_ERROR;
			break;
		case OPT_RNG:
			if (parse_rng(arg, cfg, err, errlen) != RUN_OPTS_OK)
				return RUN_OPTS_ERROR;
			break;
		case OPT_NET:
			if (parse_net(arg, cfg, err, errlen) != RUN_OPTS_OK)
				return RUN_OPTS_ERROR;
			break;
		case 'v': cfg->verbose++; break;
		case OPT_HELP: return RUN_OPTS_HELP;
		case OPT_VERSION: return RUN_OPTS_VERSION;
		case ':':
			return fail(err, errlen, "option '%s' needs a value", argv[optind - 1]);
		default: {
			const char *bad = argv[optind - 1];
			if (optopt && optopt < 256 && bad[0] == '-' && bad[1] != '-') {
				char s[3] = { '-', (char)optopt, 0 };
				return fail(err, errlen, "unknown option '%s' (see kestrel run --help)", s);
			}
			/* getopt reports a missing argument of a long option as '?' too. */
			for (const struct option *o = run_long_opts; o->name; o++) {
				size_t n = strlen(o->name);
				if (o->has_arg && !strncmp(bad + 2, o->name, n) && bad[2 + n] == 0)
					return fail(err, errlen, "option '%s' needs a value", bad);
			}
			return fail(err, errlen, "unknown option '%s' (see kestrel run --help)", bad);
		}
		}
	}
	if (optind < argc)
		return fail(err, errlen, "unexpected argument '%s' (options start with --)", argv[optind]);
	if (!cfg->kernel)
		return fail(err, errlen, "--kernel PATH is required");
	if (cfg->console.enabled && cfg->console.backend.kind == CHARDEV_STDIO && cfg->serial.kind == CHARDEV_STDIO)
		return fail(err, errlen, "--console stdio and --serial stdio cannot share the terminal; "
				      "add --serial off (or another backend)");
	/* Default MACs hang off the final --name, wherever it was given. */
	for (unsigned i = 0; i < cfg->nr_nics; i++)
		if (!cfg->nics[i].mac_given)
			net_default_mac(cfg->name, i, cfg->nics[i].mac);
	for (unsigned i = 0; i < cfg->nr_nics; i++)
		for (unsigned j = 0; j < i; j++)
			if (!memcmp(cfg->nics[i].mac, cfg->nics[j].mac, 6))
				return fail(err, errlen, "--net: NICs %u and %u have the same MAC; give one a different mac=", j,
					    i);
	return RUN_OPTS_OK;
}
