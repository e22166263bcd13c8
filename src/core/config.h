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

#define CONFIG_MAX_NICS 4
#define CONFIG_MAX_HOSTFWD 8

enum net_kind { NET_KIND_TAP, NET_KIND_BRIDGE, NET_KIND_USER };
enum net_model { NET_MODEL_VIRTIO, NET_MODEL_E1000 };
enum net_vhost { NET_VHOST_AUTO, NET_VHOST_ON, NET_VHOST_OFF };

/* hostfwd=tcp|udp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT (user mode).
 * Addresses in network byte order; 0 = any host address / the guest's
 * DHCP address. */
struct net_hostfwd {
	bool udp;
	uint32_t host_addr;
	uint16_t host_port;
	uint32_t guest_addr;
	uint16_t guest_port;
};

struct net_config {
	enum net_kind kind;
	enum net_model model;
	enum virtio_transport_kind transport;
	char ifname[16];       /* tap: the interface (created if missing); bridge: optional */
	char bridge[16];       /* bridge: the bridge to enslave the tap to */
	uint8_t mac[6];        /* always set: given or derived from the VM name */
	bool mac_given;
	unsigned queues;       /* queue pairs; 0 = one per vCPU if the backend can */
	enum net_vhost vhost;
	/* user mode: the guest network (network byte order) and forwards */
	uint32_t net_addr, net_mask;
	struct net_hostfwd hostfwd[CONFIG_MAX_HOSTFWD];
	unsigned nr_hostfwd;
	/* token-bucket limits per direction; 0 = unlimited */
	uint64_t bw;           /* bytes per second */
	uint64_t pps;          /* packets per second */
	unsigned index;        /* NIC number, for names ("virtio-net0", "e1000-1") */
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
	struct net_config nics[CONFIG_MAX_NICS];
	unsigned nr_nics;
	int verbose;          /* count of -v */
	uint64_t start_ns;    /* CLOCK_MONOTONIC at process start, for -v timings */
};

#endif
