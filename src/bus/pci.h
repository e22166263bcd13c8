/* PCI bus 0 behind a host bridge: configuration mechanism #1 (0xCF8/0xCFC)
 * and ECAM (MMCONFIG, announced in the ACPI MCFG). Devices plug in with a
 * config-space image, write masks and BARs; absent functions read as
 * all-ones. BARs are placed by Kestrel (there is no firmware) inside the
 * root bridge's windows; a guest may size and move them, and the bus
 * re-registers the handlers and tells the device. */
#ifndef KESTREL_PCI_H
#define KESTREL_PCI_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "bus/io_bus.h"
#include "core/device.h"

struct vm;

#define PCI_CFG_SIZE   256
#define PCI_MAX_DEVFN  256
#define PCI_NR_BARS    6

/* Standard header offsets */
#define PCI_VENDOR_ID      0x00
#define PCI_DEVICE_ID      0x02
#define PCI_COMMAND        0x04
#define PCI_STATUS         0x06
#define PCI_REVISION_ID    0x08
#define PCI_CLASS_PROG     0x09
#define PCI_CLASS_DEVICE   0x0a
#define PCI_HEADER_TYPE    0x0e
#define PCI_BAR0           0x10
#define PCI_SUBSYSTEM_VENDOR_ID 0x2c
#define PCI_SUBSYSTEM_ID   0x2e
#define PCI_CAPABILITY_LIST 0x34
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN  0x3d

#define PCI_COMMAND_IO     0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_INTX_DISABLE 0x400
#define PCI_STATUS_CAP_LIST 0x10
#define PCI_STATUS_INTERRUPT 0x08

enum pci_bar_type { PCI_BAR_NONE, PCI_BAR_IO, PCI_BAR_MEM32, PCI_BAR_MEM64 };

struct pci_device;

struct pci_device_ops {
	/* A BAR moved (old or new address may be 0: unmapped). Called with the
	 * bus lock held, on a vCPU thread. Optional. */
	void (*bar_moved)(struct pci_device *d, int bar, uint64_t old_addr, uint64_t new_addr);
	/* After a config write at [off, off+len) was applied (capabilities
	 * with side effects, e.g. MSI-X enable). Bus lock held. Optional. */
	void (*config_written)(struct pci_device *d, unsigned off, unsigned len);
};

struct pci_bar {
	enum pci_bar_type type;
	uint64_t size;              /* power of two */
	uint64_t addr;              /* where it is mapped now; 0 = not mapped */
	const struct io_ops *ops;
	void *dev;
};

struct pci_device {
	uint8_t cfg[PCI_CFG_SIZE];
	uint8_t wmask[PCI_CFG_SIZE];   /* bits the guest may write */
	uint8_t w1cmask[PCI_CFG_SIZE]; /* bits the guest clears by writing 1 */
	unsigned devfn;
	const char *name;
	struct pci_bar bars[PCI_NR_BARS];
	uint8_t next_cap;              /* where the next capability goes */
	const struct pci_device_ops *ops;
	void *opaque;                  /* the device's own state */
	struct pci_bus *bus;
	unsigned intx_gsi;             /* IOAPIC pin of INTA#, set at plug */
	bool intx_level;
};

struct pci_bus {
	struct vm *vm;
	pthread_mutex_t lock;          /* config cycles from any vCPU */
	/* INTx levels; a leaf lock, so devices may raise INTx while holding
	 * their own lock even though config writes (bus lock) call into them. */
	pthread_mutex_t intx_lock;
	uint32_t config_addr;          /* last value written to 0xCF8 */
	struct pci_device *devs[PCI_MAX_DEVFN];
	uint64_t mmio_next, mmio_end;  /* BAR allocator, 32-bit window */
	uint32_t io_next, io_end;
	uint64_t ecam_base;            /* 0 if no ECAM */
};

/* Fills a type-0 header: IDs, class, writable COMMAND/INTERRUPT_LINE. */
void pci_device_init(struct pci_device *d, const char *name, uint16_t vendor, uint16_t device,
		     uint32_t class_rev, uint16_t subsys_vendor, uint16_t subsys);

/* Declares BAR `bar` (MEM64 takes bar and bar+1) of `size` bytes (a power
 * of two, >= 16 for I/O, >= 4096 for memory); accesses go to ops/dev. Call
 * before pci_bus_plug. Returns 0 or -1. */
int pci_device_add_bar(struct pci_device *d, int bar, enum pci_bar_type type, uint64_t size,
		       const struct io_ops *ops, void *dev);

/* Appends a capability of `len` bytes (incl. the 2-byte header) and links
 * it into the list. Returns its config offset, or 0 if space ran out. */
unsigned pci_device_add_cap(struct pci_device *d, uint8_t id, unsigned len);

/* Plugs `d` into the first free slot (devfn = slot << 3), places its BARs
 * inside the bridge windows, enables decoding, and assigns INTA# to an
 * IOAPIC pin (the DSDT's _PRT says the same). Returns 0 or -1 (no slot,
 * window full; an error is printed). */
int pci_bus_plug(struct pci_bus *bus, struct pci_device *d);
void pci_bus_unplug(struct pci_bus *bus, struct pci_device *d);

/* Asserts or deasserts INTA# (level). Thread-safe; honours INTx Disable. */
void pci_set_intx(struct pci_device *d, bool level);

/* The IOAPIC pin INTA# of `slot` is wired to: one pin per slot modulo 4,
 * starting at 16 — the same rule the DSDT's _PRT encodes. */
unsigned pci_slot_gsi(unsigned slot);

/* Config access for bus 0 (`devfn`, byte `off`, len 1/2/4 inside one
 * dword). Absent functions read all-ones. Thread-safe. */
uint32_t pci_config_read(struct pci_bus *bus, unsigned devfn, unsigned off, unsigned len);
void pci_config_write(struct pci_bus *bus, unsigned devfn, unsigned off, unsigned len, uint32_t val);

/* The host bridge device: creates vm->pci, claims 0xCF8-0xCFF (including
 * the 0xCF9 reset control register) and the ECAM window, and plugs itself
 * in at 00.0. */
extern const struct device_ops pci_host_device_ops;

#endif
