#include "cli/opts.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

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
		"  --name NAME        VM name (for messages)\n"
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
       OPT_NO_REBOOT, OPT_HELP, OPT_VERSION };

static const struct option run_long_opts[] = {
	{ "kernel", required_argument, NULL, OPT_KERNEL },
	{ "initrd", required_argument, NULL, OPT_INITRD },
	{ "cmdline", required_argument, NULL, OPT_CMDLINE },
	{ "memory", required_argument, NULL, OPT_MEMORY },
	{ "cpus", required_argument, NULL, OPT_CPUS },
	{ "serial", required_argument, NULL, OPT_SERIAL },
	{ "name", required_argument, NULL, OPT_NAME },
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
	return RUN_OPTS_OK;
}
