/* What the user asked for: the machine's configuration, independent of how
 * it was given (command line today, the control socket later). */
#ifndef KESTREL_CONFIG_H
#define KESTREL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "chardev/chardev.h"

#define CONFIG_MEM_MIN     (16ULL << 20)
#define CONFIG_MEM_DEFAULT (256ULL << 20)
#define CONFIG_MEM_MAX     (1ULL << 40)   /* 1 TiB: also bounded by host memory */
#define CONFIG_CPUS_MAX    255            /* xAPIC IDs; KVM's own limit is checked at start */

struct vm_config {
	const char *kernel;   /* required */
	const char *initrd;   /* or NULL */
	const char *cmdline;  /* never NULL ("" by default) */
	const char *name;     /* never NULL */
	uint64_t mem_size;
	unsigned cpus;
	struct chardev_spec serial;
	bool no_reboot;
	int verbose;          /* count of -v */
	uint64_t start_ns;    /* CLOCK_MONOTONIC at process start, for -v timings */
};

#endif
