/* `kestrel run` options and their error messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>

#include "cli/opts.h"
#include "net/net.h"

static enum run_opts_result parse(struct vm_config *cfg, char *err, const char *a0, ...)
{
	char *argv[32];
	int argc = 0;
	argv[argc++] = "run";
	va_list ap;
	va_start(ap, a0);
	for (const char *a = a0; a; a = va_arg(ap, const char *))
		argv[argc++] = (char *)a;
	va_end(ap);
	argv[argc] = NULL;
	err[0] = 0;
	return run_opts_parse(argc, argv, cfg, err, 512);
}

static void test_defaults(void **state)
{
	(void)state;
	struct vm_config cfg;
	char err[512];
	assert_int_equal(parse(&cfg, err, "--kernel", "k.elf", NULL), RUN_OPTS_OK);
	assert_string_equal(cfg.kernel, "k.elf");
	assert_int_equal(cfg.mem_size, 256ULL << 20);
	assert_int_equal(cfg.cpus, 1);
	assert_int_equal(cfg.serial.kind, CHARDEV_STDIO);
	assert_string_equal(cfg.cmdline, "");
	assert_false(cfg.no_reboot);
	assert_null(cfg.initrd);
}

static void test_all_options(void **state)
{
	(void)state;
	struct vm_config cfg;
	char err[512];
	assert_int_equal(parse(&cfg, err, "--kernel=vmlinux", "--initrd", "i.cpio", "--cmdline",
			       "console=ttyS0 panic=-1", "--memory", "4G", "--cpus", "2", "--serial",
			       "file=/tmp/x.log", "--name", "web1", "--no-reboot", "-v", "-v", NULL),
			 RUN_OPTS_OK);
	assert_string_equal(cfg.kernel, "vmlinux");
	assert_string_equal(cfg.initrd, "i.cpio");
	assert_string_equal(cfg.cmdline, "console=ttyS0 panic=-1");
	assert_int_equal(cfg.mem_size, 4ULL << 30);
	assert_int_equal(cfg.cpus, 2);
	assert_int_equal(cfg.serial.kind, CHARDEV_FILE);
	assert_string_equal(cfg.serial.path, "/tmp/x.log");
	assert_string_equal(cfg.name, "web1");
	assert_true(cfg.no_reboot);
	assert_int_equal(cfg.verbose, 2);
}

static void test_sizes(void **state)
{
	(void)state;
	uint64_t v;
	assert_int_equal(parse_size("512M", &v), 0);
	assert_int_equal(v, 512ULL << 20);
	assert_int_equal(parse_size("512", &v), 0); /* MiB, like QEMU's -m */
	assert_int_equal(v, 512ULL << 20);
	assert_int_equal(parse_size("4g", &v), 0);
	assert_int_equal(v, 4ULL << 30);
	assert_int_equal(parse_size("1T", &v), 0);
	assert_int_equal(v, 1ULL << 40);
	assert_int_equal(parse_size("64KiB", &v), 0);
	assert_int_equal(v, 64ULL << 10);
	assert_int_equal(parse_size("2GB", &v), 0);
	assert_int_equal(v, 2ULL << 30);
	assert_int_equal(parse_size("4096B", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(parse_size("", &v), -1);
	assert_int_equal(parse_size("M", &v), -1);
	assert_int_equal(parse_size("-1G", &v), -1);
	assert_int_equal(parse_size("12Q", &v), -1);
	assert_int_equal(parse_size("1.5G", &v), -1);
	assert_int_equal(parse_size("99999999999999999999", &v), -1);
	assert_int_equal(parse_size("17179869184T", &v), -1); /* overflows 64 bits */
	assert_int_equal(parse_size(NULL, &v), -1);
}

static void test_errors_name_the_value(void **state)
{
	(void)state;
	struct vm_config cfg;
	char err[512];
	static const struct {
		const char *opt, *val, *expect;
	} cases[] = {
		{ "--memory", "12Q", "--memory '12Q' is not a size" },
		{ "--memory", "8M", "--memory '8M' is out of range (accepted: 16M to 1T)" },
		{ "--memory", "2T", "--memory '2T' is out of range" },
		{ "--memory", "16385K", "not a multiple of 4 KiB" },
		{ "--cpus", "0", "--cpus '0' is not a CPU count (accepted: 1 to 255)" },
		{ "--cpus", "256", "--cpus '256'" },
		{ "--cpus", "two", "--cpus 'two'" },
		{ "--cpus", "2x", "--cpus '2x'" },
		{ "--serial", "tcp:1234", "'tcp:1234' is not a console backend (expected stdio, pty, file=PATH, socket=PATH or off)" },
		{ "--serial", "file=", "needs a path" },
		{ "--name", "", "--name must not be empty" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(parse(&cfg, err, "--kernel", "k", cases[i].opt, cases[i].val, NULL), RUN_OPTS_ERROR);
		if (!strstr(err, cases[i].expect))
			fail_msg("for %s %s got '%s'", cases[i].opt, cases[i].val, err);
		assert_null(strchr(err, '\n'));
	}
}

static void test_structural_errors(void **state)
{
	(void)state;
	struct vm_config cfg;
	char err[512];
	assert_int_equal(parse(&cfg, err, NULL), RUN_OPTS_ERROR);
	assert_string_equal(err, "--kernel PATH is required");
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--frobnicate", NULL), RUN_OPTS_ERROR);
	assert_string_equal(err, "unknown option '--frobnicate' (see kestrel run --help)");
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "-x", NULL), RUN_OPTS_ERROR);
	assert_string_equal(err, "unknown option '-x' (see kestrel run --help)");
	assert_int_equal(parse(&cfg, err, "--kernel", NULL), RUN_OPTS_ERROR);
	assert_string_equal(err, "option '--kernel' needs a value");
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "stray", NULL), RUN_OPTS_ERROR);
	assert_string_equal(err, "unexpected argument 'stray' (options start with --)");
	long long_path_len = 200;
	char sock[256] = "socket=";
	memset(sock + 7, 'a', (size_t)long_path_len);
	sock[7 + long_path_len] = 0;
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--serial", sock, NULL), RUN_OPTS_ERROR);
	assert_non_null(strstr(err, "too long"));
}

static void test_help_version(void **state)
{
	(void)state;
	struct vm_config cfg;
	char err[512];
	assert_int_equal(parse(&cfg, err, "--help", NULL), RUN_OPTS_HELP);
	assert_int_equal(parse(&cfg, err, "--version", NULL), RUN_OPTS_VERSION);
}

static void test_serial_backends(void **state)
{
	(void)state;
	struct chardev_spec s;
	char err[256];
	assert_int_equal(chardev_parse("stdio", &s, err, sizeof(err)), 0);
	assert_int_equal(s.kind, CHARDEV_STDIO);
	assert_int_equal(chardev_parse("pty", &s, err, sizeof(err)), 0);
	assert_int_equal(s.kind, CHARDEV_PTY);
	assert_int_equal(chardev_parse("off", &s, err, sizeof(err)), 0);
	assert_int_equal(s.kind, CHARDEV_OFF);
	assert_int_equal(chardev_parse("socket=/run/k.sock", &s, err, sizeof(err)), 0);
	assert_int_equal(s.kind, CHARDEV_SOCKET);
	assert_string_equal(s.path, "/run/k.sock");
	assert_int_equal(chardev_parse("STDIO", &s, err, sizeof(err)), -1);
}

/* Both on stdio would fight over the terminal: refused while parsing, so
 * before anything is opened. */
static void test_console_serial_share_stdio(void **state)
{
	(void)state;
	struct vm_config cfg;
	char err[512];
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--console", "stdio", NULL), RUN_OPTS_ERROR);
	assert_string_equal(err, "--console stdio and --serial stdio cannot share the terminal; "
				 "add --serial off (or another backend)");
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--console", "stdio,transport=mmio", "--serial", "stdio",
			       NULL),
			 RUN_OPTS_ERROR);
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--console", "stdio", "--serial", "off", NULL), RUN_OPTS_OK);
	assert_int_equal(cfg.console.backend.kind, CHARDEV_STDIO);
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--console", "pty", NULL), RUN_OPTS_OK);
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--console", "off", NULL), RUN_OPTS_OK);
	assert_false(cfg.console.enabled);
}

static void test_net(void **state)
{
	(void)state;
	struct vm_config cfg;
	char err[512];
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--net", "tap,ifname=ktap0,queues=2,vhost=off,bw=10M,pps=20K",
			       "--net", "user,net=192.168.5.0/24,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.9:53,model=e1000",
			       "--net", "bridge,br=br0,mac=52:54:00:aa:bb:cc,transport=mmio", "--net", "none", "--name", "vm7", NULL),
			 RUN_OPTS_OK);
	assert_int_equal(cfg.nr_nics, 3);
	struct net_config *t = &cfg.nics[0], *u = &cfg.nics[1], *b = &cfg.nics[2];
	assert_int_equal(t->kind, NET_KIND_TAP);
	assert_string_equal(t->ifname, "ktap0");
	assert_int_equal(t->queues, 2);
	assert_int_equal(t->vhost, NET_VHOST_OFF);
	assert_int_equal(t->bw, 10000000);
	assert_int_equal(t->pps, 20000);
	assert_int_equal(t->model, NET_MODEL_VIRTIO);
	assert_int_equal(u->kind, NET_KIND_USER);
	assert_int_equal(u->model, NET_MODEL_E1000);
	assert_int_equal(u->queues, 1);
	assert_int_equal(u->net_addr, inet_addr("192.168.5.0"));
	assert_int_equal(u->net_mask, inet_addr("255.255.255.0"));
	assert_int_equal(u->nr_hostfwd, 2);
	assert_false(u->hostfwd[0].udp);
	assert_int_equal(u->hostfwd[0].host_addr, 0);
	assert_int_equal(u->hostfwd[0].host_port, 2222);
	assert_int_equal(u->hostfwd[0].guest_addr, 0);
	assert_int_equal(u->hostfwd[0].guest_port, 22);
	assert_true(u->hostfwd[1].udp);
	assert_int_equal(u->hostfwd[1].host_addr, inet_addr("127.0.0.1"));
	assert_int_equal(u->hostfwd[1].guest_addr, inet_addr("10.0.2.9"));
	assert_int_equal(u->hostfwd[1].guest_port, 53);
	assert_int_equal(b->kind, NET_KIND_BRIDGE);
	assert_string_equal(b->bridge, "br0");
	assert_int_equal(b->transport, VIRTIO_TRANSPORT_MMIO);
	const uint8_t want[6] = { 0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc };
	assert_memory_equal(b->mac, want, 6);
	/* Default MACs: 52:54:00 prefix, distinct, derived from the final --name. */
	assert_int_equal(t->mac[0], 0x52);
	assert_int_equal(t->mac[2], 0x00);
	assert_memory_not_equal(t->mac, u->mac, 6);
	uint8_t m[6];
	net_default_mac("vm7", 0, m);
	assert_memory_equal(t->mac, m, 6);
	assert_int_equal(t->index, 0);
	assert_int_equal(b->index, 2);

	static const char *const bad[][2] = {
		{ "tap", "--net tap needs ifname=NAME" },
		{ "bridge", "--net bridge needs br=BRIDGE" },
		{ "slirp", "--net: backend 'slirp' (accepted: tap, bridge, user, none)" },
		{ "tap,ifname=a,model=rtl8139", "--net tap: model='rtl8139' (accepted: virtio, e1000)" },
		{ "tap,ifname=a,mac=01:00:5e:00:00:01", "--net tap: mac='01:00:5e:00:00:01' (accepted: a unicast address like 52:54:00:12:34:56)" },
		{ "tap,ifname=a,mac=52:54:00:1:2:3", "--net tap: mac='52:54:00:1:2:3' (accepted: a unicast address like 52:54:00:12:34:56)" },
		{ "tap,ifname=a,queues=9", "--net tap: queues='9' (accepted: 1 to 8)" },
		{ "tap,ifname=a,vhost=maybe", "--net tap: vhost='maybe' (accepted: on, off)" },
		{ "tap,ifname=a,bw=fast", "--net tap: bw='fast' (accepted: bytes per second, e.g. 1250000 or 10M)" },
		{ "tap,ifname=a,pps=0", "--net tap: pps='0' (accepted: packets per second, e.g. 1000 or 20K)" },
		{ "tap,ifname=a,model=e1000,transport=mmio", "--net tap: model=e1000 is a PCI device (transport=mmio is for virtio)" },
		{ "tap,ifname=a,model=e1000,queues=2", "--net tap: model=e1000 has one queue (queues=2)" },
		{ "tap,ifname=abcdefghijklmnop", "--net tap: ifname='abcdefghijklmnop' (accepted: 1 to 15 characters, no '/' or spaces)" },
		{ "user,queues=2", "--net user: unknown key 'queues' (accepted: net, hostfwd, model, mac, transport, bw, pps)" },
		{ "user,net=10.0.2.0", "--net user: net='10.0.2.0' (accepted: ADDR/PREFIX, prefix 8 to 27, e.g. 10.0.2.0/24)" },
		{ "user,net=10.0.300.0/24", "--net user: net='10.0.300.0/24': '10.0.300.0' is not an IPv4 address" },
		{ "user,hostfwd=tcp::99999-:22", "--net user: hostfwd='tcp::99999-:22' (accepted: [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT, e.g. tcp::2222-:22)" },
		{ "user,hostfwd=sctp::1-:2", "--net user: hostfwd='sctp::1-:2' (accepted: [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT, e.g. tcp::2222-:22)" },
		{ "user,restrict", "--net user: 'restrict' needs a value (key=value)" },
		{ "none,x=1", "--net none takes no options" },
		{ "ifname=a", "--net 'ifname=a': start with a backend (accepted: tap, bridge, user, none)" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(parse(&cfg, err, "--kernel", "k", "--net", bad[i][0], NULL), RUN_OPTS_ERROR);
		assert_string_equal(err, bad[i][1]);
	}
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--net", "user,mac=52:54:00:00:00:01", "--net",
			       "user,mac=52:54:00:00:00:01", NULL),
			 RUN_OPTS_ERROR);
	assert_string_equal(err, "--net: NICs 0 and 1 have the same MAC; give one a different mac=");
	assert_int_equal(parse(&cfg, err, "--kernel", "k", "--net", "user", "--net", "user", "--net", "user", "--net",
			       "user", "--net", "user", NULL),
			 RUN_OPTS_ERROR);
	assert_string_equal(err, "too many --net options (at most 4)");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_all_options),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_errors_name_the_value),
		cmocka_unit_test(test_structural_errors),
		cmocka_unit_test(test_help_version),
		cmocka_unit_test(test_serial_backends),
		cmocka_unit_test(test_console_serial_share_stdio),
		cmocka_unit_test(test_net),
	};
	return cmocka_run_group_tests_name("opts", tests, NULL, NULL);
}
