/* What the user asked for: the machine's configuration, independent of how
 * it was given (command line today, the control socket later). */
#ifndef KESTREL_CONFIG_H
#define KESTREL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"
#include "chardev/chardev.h"
#include "virtio/transport.h"

#define CONFIG_MEM_MIN     (16ULL << 20)
#define CONFIG_MEM_DEFAULT (256ULL << 20)
#define CONFIG_MEM_MAX     (1ULL << 40)   /* 1 TiB: also bounded by host memory */
#define CONFIG_CPUS_MAX    255            /* xAPIC IDs; KVM's own limit is checked at start */

#define CONFIG_MAX_DISKS 8
#define CONFIG_DISK_SERIAL_MAX 20   /* virtio-blk GET_ID returns 20 bytes */

struct disk_config {
	char path[PATH_MAX];
	char format[8];       /* "raw" (default) or "qcow2"; never probed */
	char serial[CONFIG_DISK_SERIAL_MAX + 1];
	bool readonly;
	bool snapshot;
	bool iothread;
	enum blk_cache cache;
	enum blk_aio aio;
	unsigned num_queues;
	enum virtio_transport_kind transport;
};

struct console_config {
	bool enabled;
	struct chardev_spec backend;
	enum virtio_transport_kind transport;
};

struct rng_config {
	bool enabled;
	uint64_t max_bytes;   /* per period; 0 = unlimited */
	uint64_t period_ms;
	enum virtio_transport_kind transport;
};

struct vm_config {
	const char *kernel;   /* required */
	const char *initrd;   /* or NULL */
	const char *cmdline;  /* never NULL ("" by default) */
	const char *name;     /* never NULL */
	uint64_t mem_size;
	unsigned cpus;
	struct chardev_spec serial;
	bool no_reboot;
	struct disk_config disks[CONFIG_MAX_DISKS];
	unsigned nr_disks;
	struct console_config console;
	struct rng_config rng;
	int verbose;          /* count of -v */
	uint64_t start_ns;    /* CLOCK_MONOTONIC at process start, for -v timings */
};

#endif
