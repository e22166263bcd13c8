/* PCI bus 0 behind a host bridge: configuration mechanism #1 (0xCF8/0xCFC).
 * Devices plug in with a config-space image and write masks; absent
 * functions read as all-ones. */
#ifndef KESTREL_PCI_H
#define KESTREL_PCI_H

#include <pthread.h>
#include <stdint.h>

#include "core/device.h"

#define PCI_CFG_SIZE   256
#define PCI_MAX_DEVFN  256

/* Standard header offsets */
#define PCI_VENDOR_ID      0x00
#define PCI_DEVICE_ID      0x02
#define PCI_COMMAND        0x04
#define PCI_STATUS         0x06
#define PCI_REVISION_ID    0x08
#define PCI_CLASS_PROG     0x09
#define PCI_CLASS_DEVICE   0x0a
#define PCI_HEADER_TYPE    0x0e
#define PCI_SUBSYSTEM_VENDOR_ID 0x2c
#define PCI_SUBSYSTEM_ID   0x2e
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN  0x3d

struct pci_device {
	uint8_t cfg[PCI_CFG_SIZE];
	uint8_t wmask[PCI_CFG_SIZE];   /* bits the guest may write */
	uint8_t w1cmask[PCI_CFG_SIZE]; /* bits the guest clears by writing 1 */
	unsigned devfn;
	const char *name;
};

struct pci_bus {
	pthread_mutex_t lock;          /* config cycles from any vCPU */
	uint32_t config_addr;          /* last value written to 0xCF8 */
	struct pci_device *devs[PCI_MAX_DEVFN];
};

/* Fills a type-0 header: IDs, class, and writable COMMAND/INTERRUPT_LINE. */
void pci_device_init(struct pci_device *d, const char *name, uint16_t vendor, uint16_t device,
		     uint32_t class_rev, uint16_t subsys_vendor, uint16_t subsys);

/* Puts `d` at `devfn` on `bus`. Returns 0 or -1 if the slot is taken. */
int pci_bus_plug(struct pci_bus *bus, struct pci_device *d, unsigned devfn);
void pci_bus_unplug(struct pci_bus *bus, unsigned devfn);

/* Config access for bus 0 (`devfn`, byte `off`, len 1/2/4, naturally
 * aligned inside the dword). Absent functions read all-ones. */
uint32_t pci_config_read(struct pci_bus *bus, unsigned devfn, unsigned off, unsigned len);
void pci_config_write(struct pci_bus *bus, unsigned devfn, unsigned off, unsigned len, uint32_t val);

/* The host bridge device: creates vm->pci, claims 0xCF8-0xCFF (including
 * the 0xCF9 reset control register) and plugs itself in at 00.0. */
extern const struct device_ops pci_host_device_ops;

#endif
