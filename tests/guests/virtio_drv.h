/*
 * A small ring-3 virtio driver for the micro-guests: virtio-pci (modern
 * capabilities, found through 0xCF8/0xCFC) and virtio-mmio v2 (slot scan),
 * feature negotiation, split virtqueues in guest RAM, and completion by
 * polling the used ring (no interrupts needed). Only the virtio guests link
 * it (see the Makefile's <guest>_OBJS).
 *
 * Everything is synchronous and single-threaded. Raw ring access (struct
 * vq's desc/avail/used) is public so that hostile tests can build any
 * descriptor chain they like.
 */
#ifndef VIRTIO_DRV_H
#define VIRTIO_DRV_H

#include "rt.h"

/* ---- spec constants (virtio 1.2) ---- */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED      128

#define VIRTIO_F_INDIRECT_DESC    28
#define VIRTIO_F_EVENT_IDX        29
#define VIRTIO_F_VERSION_1        32
#define VBIT(b)                   (1ull << (b))

#define VIRTIO_ID_NET             1
#define VIRTIO_ID_BLOCK           2

#define VRING_DESC_F_NEXT         1
#define VRING_DESC_F_WRITE        2
#define VRING_DESC_F_INDIRECT     4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY    1

/* virtio-blk */
#define VIRTIO_BLK_F_SIZE_MAX     1
#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_TOPOLOGY     10
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK           0
#define VIRTIO_BLK_S_IOERR        1
#define VIRTIO_BLK_S_UNSUPP       2

/* Device config offsets (struct virtio_blk_config) */
#define VBLK_CFG_CAPACITY         0x00
#define VBLK_CFG_SIZE_MAX         0x08
#define VBLK_CFG_SEG_MAX          0x0c
#define VBLK_CFG_BLK_SIZE         0x14
#define VBLK_CFG_NUM_QUEUES       0x22
#define VBLK_CFG_MAX_DISCARD_SECT 0x24
#define VBLK_CFG_MAX_DISCARD_SEG  0x28
#define VBLK_CFG_DISCARD_ALIGN    0x2c
#define VBLK_CFG_MAX_WZ_SECT      0x30
#define VBLK_CFG_MAX_WZ_SEG       0x34

/* virtio-net */
#define VIRTIO_NET_F_CSUM         0
#define VIRTIO_NET_F_GUEST_CSUM   1
#define VIRTIO_NET_F_MTU          3
#define VIRTIO_NET_F_MAC          5
#define VIRTIO_NET_F_GUEST_TSO4   7
#define VIRTIO_NET_F_HOST_TSO4    11
#define VIRTIO_NET_F_MRG_RXBUF    15
#define VIRTIO_NET_F_STATUS       16
#define VIRTIO_NET_F_CTRL_VQ      17
#define VIRTIO_NET_F_MQ           22
#define VIRTIO_NET_S_LINK_UP      1

/* Device config offsets (struct virtio_net_config) */
#define VNET_CFG_MAC              0x00   /* 6 bytes */
#define VNET_CFG_STATUS           0x06   /* u16, with VIRTIO_NET_F_STATUS */
#define VNET_CFG_MAX_VQ_PAIRS     0x08   /* u16, with VIRTIO_NET_F_MQ */
#define VNET_CFG_MTU              0x0a   /* u16, with VIRTIO_NET_F_MTU */

/* Queue pair 0: receiveq1 is queue 0, transmitq1 queue 1. */
#define VNET_RXQ                  0
#define VNET_TXQ                  1

/* ---- split ring layout ---- */
struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};
struct vring_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[];
};
struct vring_used_elem {
	uint32_t id;
	uint32_t len;
};
struct vring_used {
	uint16_t flags;
	uint16_t idx;
	struct vring_used_elem ring[];
};

/* With VERSION_1 the header always has num_buffers: 12 bytes. */
struct virtio_net_hdr_v1 {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len;
	uint16_t gso_size;
	uint16_t csum_start;
	uint16_t csum_offset;
	uint16_t num_buffers;
};
#define VIRTIO_NET_HDR_F_NEEDS_CSUM 1
#define VIRTIO_NET_HDR_F_DATA_VALID 2
#define VIRTIO_NET_HDR_GSO_NONE     0

struct virtio_blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};
struct virtio_blk_discard_wz {
	uint64_t sector;
	uint32_t num_sectors;
	uint32_t flags;
};

/* ---- guest memory (bump allocator above the image) ---- */
void *vmem_alloc(uint64_t size, uint64_t align);   /* zeroed; FAILs the guest when out */
uint64_t vmem_ram_top(void);                       /* end of the highest RAM region */
bool vmem_is_ram(uint64_t addr, uint64_t len);

/* ---- device discovery and control ---- */
enum vtransport { VT_PCI, VT_MMIO };

#define VQ_MAX_SIZE 1024

struct vdev {
	enum vtransport t;
	uint16_t device_id;          /* virtio device type (2 = block) */
	char where[64];              /* for messages */
	/* PCI */
	uint8_t bus, dev, fn;
	uint16_t pci_device;
	uint64_t common, isr, devcfg, notify;
	uint32_t notify_mult;
	int8_t cap_bar[5];           /* BAR of cfg_type 1..4 (index 0 unused) */
	uint64_t bar_addr[6];        /* memory BARs as found (or assigned) */
	uint8_t msix_cap;            /* config offset, 0 if none */
	uint16_t msix_size;
	uint64_t msix_table;         /* address of the MSI-X table, 0 if unknown */
	/* MMIO */
	uint64_t base;
	/* features */
	uint64_t offered;
	uint64_t features;           /* accepted by the device (FEATURES_OK) */
};

/* Finds the `nth` (0-based) device of `device_id` on the given transport.
 * Returns true and fills *d. Prints what it found. */
bool vdev_find(struct vdev *d, enum vtransport t, uint16_t device_id, int nth);

uint8_t vdev_status(struct vdev *d);
void vdev_set_status(struct vdev *d, uint8_t s);
/* Writes 0 and waits until the device reads back 0. */
bool vdev_reset(struct vdev *d);
/* Reset, ACKNOWLEDGE, DRIVER, features (offered & wanted; VERSION_1 is
 * always wanted), FEATURES_OK and the re-read. False if refused. */
bool vdev_negotiate(struct vdev *d, uint64_t wanted);
void vdev_driver_ok(struct vdev *d);
void vdev_write_features(struct vdev *d, uint64_t f);   /* driver features, raw */
uint16_t vdev_num_queues(struct vdev *d);
uint8_t vdev_isr(struct vdev *d);                  /* reads (and on PCI acks) ISR */
void vdev_isr_ack(struct vdev *d, uint32_t bits);  /* MMIO InterruptACK */

/* Device-specific configuration (32-bit accesses; 64-bit via generation). */
uint32_t vdev_cfg32(struct vdev *d, unsigned off);
uint16_t vdev_cfg16(struct vdev *d, unsigned off);
uint8_t vdev_cfg8(struct vdev *d, unsigned off);
uint64_t vdev_cfg64(struct vdev *d, unsigned off);

/* Moves memory BAR `bar` of a PCI virtio device to new_addr (memory
 * decoding off meanwhile) and updates the register addresses that live in
 * it. Queues keep their doorbell offsets: call vq_rebase() for each. */
void vdev_pci_move_bar(struct vdev *d, int bar, uint64_t new_addr);
/* Memory decoding on or off (PCI COMMAND bit 1). */
void vdev_pci_mem_enable(struct vdev *d, bool on);
/* A free, naturally aligned spot of `size` bytes in the 32-bit PCI window. */
uint64_t pci_free_window(uint64_t size);
uint64_t pci_bar_size(uint8_t bus, uint8_t dev, uint8_t fn, int bar);

/* MSI-X (PCI): table entry `entry` sends `vector` to `apic` (unmasked);
 * enable/disable the function (MSI-X enable on, function mask off). */
void vdev_msix_entry(struct vdev *d, uint16_t entry, uint8_t vector, uint32_t apic);
void vdev_msix_enable(struct vdev *d, bool on);
/* Queue `index` signals MSI-X table entry `entry` (0xffff = none);
 * returns what the device reads back. */
uint16_t vq_set_msix(struct vdev *d, uint16_t index, uint16_t entry);

/* ---- PCI config space (0xCF8/0xCFC) ---- */
uint32_t pci_cfg_read32(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off);
void pci_cfg_write32(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off, uint32_t v);
uint16_t pci_cfg_read16(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off);
void pci_cfg_write16(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off, uint16_t v);
uint8_t pci_cfg_read8(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off);
/* Any PCI function: the `nth` (0-based) function on bus 0 with this
 * vendor:device ID. */
bool pci_find_id(uint16_t vendor, uint16_t device, int nth, uint8_t *dev, uint8_t *fn);
/* Makes sure memory BAR `bar` is assigned below 4 GiB (moving it into the
 * 32-bit window if the firmware left it unassigned or put it above), and
 * returns its address, 0 for an I/O or absent BAR. `where` names the
 * device in messages. */
uint64_t pci_mem_bar(uint8_t bus, uint8_t dev, uint8_t fn, int bar, const char *where);

/* ---- virtqueues ---- */
struct vq {
	struct vdev *d;
	uint16_t index;
	uint16_t size;
	uint16_t alloc_size;         /* the rings' memory fits this many entries */
	volatile struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
	uint64_t notify_addr;
	uint16_t avail_idx;          /* the driver's next avail->idx */
	uint16_t last_used;          /* used entries consumed so far */
	uint16_t free_head;
	uint16_t num_free;
	uint16_t free_next[VQ_MAX_SIZE];
	uint16_t chain_n[VQ_MAX_SIZE];   /* descriptors in the chain at this head */
	uint64_t kicks;              /* doorbell writes */
	uint16_t kicked_idx;         /* avail idx at the last kick decision (EVENT_IDX) */
};

/* Sets up queue `index` with at most `size` entries (the device maximum
 * if 0) and enables it. Call between FEATURES_OK and DRIVER_OK. */
bool vq_setup(struct vdev *d, struct vq *q, uint16_t index, uint16_t size);
/* Writes a queue's size and ring addresses (and enables it if asked);
 * returns its doorbell address. No checks: hostile tests use it. */
uint64_t vq_program(struct vdev *d, uint16_t index, uint16_t size, uint64_t desc, uint64_t avail, uint64_t used,
		    bool enable);
uint16_t vq_read_size(struct vdev *d, uint16_t index);   /* PCI queue_size / MMIO QueueNumMax */
bool vq_enabled(struct vdev *d, uint16_t index);
/* Forgets all driver-side state (after a device reset). */
void vq_forget(struct vq *q);

struct vbuf {
	uint64_t addr;
	uint32_t len;
	bool write;                  /* device-writable */
	bool indirect;               /* addr/len is an indirect table */
};
#define VB(a, l, w) ((struct vbuf){ .addr = (uint64_t)(a), .len = (l), .write = (w) })
#define VB_INDIRECT(a, l) ((struct vbuf){ .addr = (uint64_t)(a), .len = (l), .indirect = true })

/* Puts a chain on the descriptor table and the available ring (not yet
 * visible: vq_publish). Returns the head, or -1 without room. */
int vq_add(struct vq *q, const struct vbuf *b, int n);
/* Publishes everything added since the last publish (avail->idx). */
void vq_publish(struct vq *q);
/* Doorbell, unless the device asked for none: used->flags NO_NOTIFY, or
 * with EVENT_IDX negotiated, avail_event not crossed since the last kick. */
void vq_kick(struct vq *q);
void vq_notify(struct vq *q);                      /* doorbell, unconditionally */
/* After a BAR move: recompute the doorbell address by `delta`. */
static inline void vq_rebase(struct vq *q, int64_t delta) { q->notify_addr += (uint64_t)delta; }
/* EVENT_IDX: ask for an interrupt only once used->idx passes v. */
static inline void vq_set_used_event(struct vq *q, uint16_t v)
{
	__atomic_store_n(&q->avail->ring[q->size], v, __ATOMIC_RELEASE);
}
/* Takes one used entry if there is one: frees its chain. */
bool vq_get(struct vq *q, uint16_t *head, uint32_t *len);

/* Waits for one used entry. Returns 0 (got one), -1 timeout, -2 the device
 * set NEEDS_RESET. */
int vq_wait(struct vq *q, uint16_t *head, uint32_t *len, uint64_t timeout_us);
/* Set while the device's registers are unreachable (decoding off): then
 * vq_wait() does not look at the status register. */
extern bool vq_no_status_poll;

/* ---- virtio-blk on top ---- */
struct vblk {
	struct vdev d;
	struct vq q;
	uint64_t capacity;           /* sectors */
	uint64_t wanted;             /* features asked for */
	/* per-request header/status slots, one per descriptor-table head */
	struct virtio_blk_req_hdr *hdrs;
	uint8_t *status;
	struct virtio_blk_discard_wz *segs;
};

/* Finds the nth block device on transport t, negotiates `wanted` (the blk
 * features the test wants; VERSION_1 implied), sets up queue 0 with at
 * most qsize entries (0 = device maximum) and sets DRIVER_OK. */
bool vblk_open(struct vblk *b, enum vtransport t, int nth, uint64_t wanted, uint16_t qsize);
/* Reset + full re-initialisation of an already found device. */
bool vblk_reinit(struct vblk *b, uint16_t qsize);

/* One request, synchronously. `buf`/`len` is the data part (none for len
 * 0), device-writable for IN and GET_ID. Returns the status byte (0..255),
 * -1 on timeout, -2 if the device needs a reset, -3 when the used entry's
 * id is not our head. *used_len (if given) gets the used length. */
int vblk_rw(struct vblk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len,
	    uint32_t *used_len);
int vblk_discard_wz(struct vblk *b, uint32_t type, uint64_t sector, uint32_t nsect, uint32_t flags);

/* Asynchronous form: queues a request (no doorbell) and returns its head,
 * or -1 if the ring is full. Completion through vq_get(); the status byte
 * is b->status[head]. */
int vblk_submit(struct vblk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len);

const char *vblk_status_name(int s);

/* ---- misc helpers ---- */
/* Copies the value of "key=VALUE" from the cmdline; false if absent. */
bool cmdline_str(const char *key, char *out, size_t outlen);
enum vtransport vt_from_cmdline(void);             /* "transport=mmio" -> VT_MMIO */
const char *vt_name(enum vtransport t);
static inline uint64_t tsc_us(uint64_t cycles) { return cycles * 1000 / tsc_khz(); }

#endif
