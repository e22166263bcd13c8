/* `kestrel run`: check the inputs, build the VM, run it until it stops,
 * reboot on reset. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "block/image.h"
#include "chardev/chardev.h"
#include "cli/cli.h"
#include "cli/opts.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/vcpu.h"
#include "core/vm.h"

#define EXIT_SETUP 2
#define EXIT_CRASH 4

struct run_ctx {
	struct loop *loop;
	struct vm *vm;
	int sigfd;
};

static void run_on_stop(void *opaque, uint32_t events)
{
	struct run_ctx *ctx = opaque;
	(void)events;
	uint64_t v;
	ssize_t r = read(ctx->vm->stop_efd, &v, sizeof(v));
	(void)r;
	loop_quit(ctx->loop);
}

static void run_on_signal(void *opaque, uint32_t events)
{
	struct run_ctx *ctx = opaque;
	(void)events;
	struct signalfd_siginfo si;
	if (read(ctx->sigfd, &si, sizeof(si)) != sizeof(si))
		return;
	log_msg(LOG_ERROR, "terminating on signal %u", si.ssi_signo);
	if (ctx->vm)
		vm_request_stop(ctx->vm, VM_STOP_SIGNAL, (int)si.ssi_signo);
}

static void run_print_stats(const struct vm *vm)
{
	if (!log_enabled(LOG_INFO))
		return;
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		const struct vcpu *v = &vm->vcpus[i];
		log_info("vcpu%u: %llu exits (%llu PIO, %llu MMIO), %.1f ms in exit handlers (%.0f ns each)", i,
			 (unsigned long long)v->nr_exits, (unsigned long long)v->nr_io_exits,
			 (unsigned long long)v->nr_mmio_exits, (double)v->ns_in_exits / 1e6,
			 v->nr_exits ? (double)v->ns_in_exits / (double)v->nr_exits : 0.0);
	}
	log_info("unclaimed: PIO %lu reads, %lu writes; MMIO %lu reads, %lu writes",
		 atomic_load(&vm->pio.unclaimed_reads), atomic_load(&vm->pio.unclaimed_writes),
		 atomic_load(&vm->mmio.unclaimed_reads), atomic_load(&vm->mmio.unclaimed_writes));
}

static int run_exit_status(const struct vm *vm, bool rebooting)
{
	switch (vm->stop_reason) {
	case VM_STOP_POWEROFF:
		log_info("guest powered off");
		return 0;
	case VM_STOP_RESET:
		if (!rebooting)
			log_info("guest reset; exiting (--no-reboot)");
		return 0;
	case VM_STOP_DEBUG_EXIT:
		return ((vm->stop_status << 1) | 1) & 0xff;
	case VM_STOP_SIGNAL:
		return 0;
	case VM_STOP_CRASH:
		return EXIT_CRASH;
	case VM_STOP_ERROR:
	case VM_STOP_NONE:
	default:
		return EXIT_SETUP;
	}
}

/* A --disk image, checked as far as that takes nothing and writes nothing:
 * it is a regular file or a block device (what the block layer accepts),
 * writable unless readonly=on or snapshot=on, and it opens with the block
 * layer's own read-only image_open() in the given format, which parses a
 * qcow2 header and tables and follows the backing chain without locking or
 * writing anything. What only the VM's read-write open can find (a lock
 * held by another VM, a dirty qcow2 whose repair fails) is still reported
 * when the VM is built. The messages are the block layer's own wording,
 * so a problem reads the same whichever check finds it. */
static int run_check_disk(const struct disk_config *d)
{
	struct stat st;
	if (stat(d->path, &st) < 0) {
		log_err("--disk: cannot open image '%s': %s", d->path, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		log_err("--disk: cannot open image '%s': %s", d->path,
			S_ISDIR(st.st_mode) ? strerror(EISDIR) : "not a regular file or block device");
		return -1;
	}
	if (!d->readonly && !d->snapshot && faccessat(AT_FDCWD, d->path, W_OK, AT_EACCESS) < 0) {
		log_err("--disk: cannot open image '%s' read-write: %s (use readonly=on?)", d->path,
			strerror(errno));
		return -1;
	}
	struct image_open_opts o = {
		.path = d->path,
		.format = d->format,
		.readonly = true,
		.direct = d->cache == BLK_CACHE_NONE || d->cache == BLK_CACHE_DIRECTSYNC,
	};
	char err[PATH_MAX + 256];
	struct image *img = image_open(&o, err, sizeof(err));
	if (!img) {
		log_err("--disk: %s", err);
		return -1;
	}
	image_close(img);
	return 0;
}

/* Checks everything the user gave that run_opts_parse() could not (files,
 * the host's RAM) before /dev/kvm or any other resource is taken, so that
 * a bad kernel, initrd, disk or --memory is reported as such even on a
 * host without KVM, and nothing is set up for a run that cannot start.
 * Returns 0 with `image` prepared for the builder (the caller frees it),
 * or -1 with one error line printed and nothing to free. */
static int run_check_inputs(const struct vm_config *cfg, struct boot_image *image)
{
	if (vm_check_host(cfg) || boot_prepare(cfg, image))
		return -1;
	for (unsigned i = 0; i < cfg->nr_disks; i++) {
		if (run_check_disk(&cfg->disks[i])) {
			boot_image_free(image);
			return -1;
		}
	}
	return 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int cmd_run(int argc, char **argv)
{
	struct vm_config cfg;
	char err[PATH_MAX + 256];
	uint64_t start = now_ns();
	switch (run_opts_parse(argc, argv, &cfg, err, sizeof(err))) {
	case RUN_OPTS_HELP:
		run_opts_usage(stdout);
		return 0;
	case RUN_OPTS_VERSION:
		printf("kestrel %s\n", KESTREL_VERSION);
		return 0;
	case RUN_OPTS_ERROR:
		log_err("%s", err);
		return EXIT_SETUP;
	case RUN_OPTS_OK:
		break;
	}
	cfg.start_ns = start;
	log_set_level(cfg.verbose >= 2 ? LOG_DEBUG : cfg.verbose == 1 ? LOG_INFO : LOG_WARN);
	struct boot_image image;
	if (run_check_inputs(&cfg, &image))
		return EXIT_SETUP;

	/* Signals: the loop thread takes SIGINT/SIGTERM/SIGHUP through a
	 * signalfd; every thread created from here inherits the mask. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	vcpu_init_signals();

	struct run_ctx ctx = { .sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK) };
	ctx.loop = loop_create();
	if (ctx.sigfd < 0 || !ctx.loop) {
		log_err("cannot set up the main loop: %s", strerror(errno));
		boot_image_free(&image);
		return EXIT_SETUP;
	}
	loop_add(ctx.loop, ctx.sigfd, EPOLLIN, run_on_signal, &ctx);

	struct chardev *serial = chardev_open(&cfg.serial);
	struct chardev *console = NULL;
	if (serial && cfg.console.enabled && !(console = chardev_open(&cfg.console.backend))) {
		chardev_close(serial);
		serial = NULL;
	}
	if (!serial) {
		loop_destroy(ctx.loop);
		boot_image_free(&image);
		return EXIT_SETUP;
	}

	int status;
	for (unsigned boot = 0;; boot++) {
		struct vm *vm = vm_create(&cfg, &image, ctx.loop, serial, console);
		if (!vm) {
			status = EXIT_SETUP;
			break;
		}
		ctx.vm = vm;
		loop_add(ctx.loop, vm->stop_efd, EPOLLIN, run_on_stop, &ctx);
		if (boot == 0)
			log_info("VM '%s' built in %.3f ms: %u vCPU(s), %llu MiB", cfg.name,
				 (double)(now_ns() - start) / 1e6, cfg.cpus,
				 (unsigned long long)(cfg.mem_size >> 20));
		if (vm_start(vm) == 0)
			loop_run(ctx.loop);
		loop_remove(ctx.loop, vm->stop_efd);
		vm_stop(vm);
		run_print_stats(vm);
		bool reboot = vm->stop_reason == VM_STOP_RESET && !cfg.no_reboot;
		status = run_exit_status(vm, reboot);
		ctx.vm = NULL;
		vm_destroy(vm);
		if (!reboot)
			break;
		log_info("guest reset: rebooting");
	}
	chardev_close(console);
	chardev_close(serial);
	loop_destroy(ctx.loop);
	close(ctx.sigfd);
	boot_image_free(&image);
	return status;
}
