#include "bus/pci.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/vm.h"
#include "x86/layout.h"

void pci_device_init(struct pci_device *d, const char *name, uint16_t vendor, uint16_t device,
		     uint32_t class_rev, uint16_t subsys_vendor, uint16_t subsys)
{
	memset(d, 0, sizeof(*d));
	d->name = name;
	memcpy(&d->cfg[PCI_VENDOR_ID], &vendor, 2);
	memcpy(&d->cfg[PCI_DEVICE_ID], &device, 2);
	memcpy(&d->cfg[PCI_REVISION_ID], &class_rev, 4);
	memcpy(&d->cfg[PCI_SUBSYSTEM_VENDOR_ID], &subsys_vendor, 2);
	memcpy(&d->cfg[PCI_SUBSYSTEM_ID], &subsys, 2);
	/* I/O, memory, bus master, INTx disable */
	d->wmask[PCI_COMMAND] = 0x07;
	d->wmask[PCI_COMMAND + 1] = 0x04;
	/* Status error bits are write-1-to-clear. */
	d->w1cmask[PCI_STATUS + 1] = 0xf9;
	d->wmask[PCI_INTERRUPT_LINE] = 0xff;
}

int pci_bus_plug(struct pci_bus *bus, struct pci_device *d, unsigned devfn)
{
	if (devfn >= PCI_MAX_DEVFN)
		return -1;
	pthread_mutex_lock(&bus->lock);
	int ret = -1;
	if (!bus->devs[devfn]) {
		d->devfn = devfn;
		bus->devs[devfn] = d;
		ret = 0;
	}
	pthread_mutex_unlock(&bus->lock);
	return ret;
}

void pci_bus_unplug(struct pci_bus *bus, unsigned devfn)
{
	if (devfn >= PCI_MAX_DEVFN)
		return;
	pthread_mutex_lock(&bus->lock);
	bus->devs[devfn] = NULL;
	pthread_mutex_unlock(&bus->lock);
}

/* Callers hold bus->lock. */
static uint32_t pci_config_read_locked(struct pci_bus *bus, unsigned devfn, unsigned off, unsigned len)
{
	const struct pci_device *d = devfn < PCI_MAX_DEVFN ? bus->devs[devfn] : NULL;
	if (!d || off >= PCI_CFG_SIZE || len > PCI_CFG_SIZE - off)
		return len == 4 ? 0xffffffffu : (1u << (8 * len)) - 1;
	uint32_t v = 0;
	memcpy(&v, &d->cfg[off], len);
	return v;
}

static void pci_config_write_locked(struct pci_bus *bus, unsigned devfn, unsigned off, unsigned len,
				    uint32_t val)
{
	struct pci_device *d = devfn < PCI_MAX_DEVFN ? bus->devs[devfn] : NULL;
	if (!d || off >= PCI_CFG_SIZE || len > PCI_CFG_SIZE - off)
		return;
	for (unsigned i = 0; i < len; i++) {
		uint8_t b = (uint8_t)(val >> (8 * i));
		unsigned o = off + i;
		d->cfg[o] = (uint8_t)((d->cfg[o] & ~d->wmask[o]) | (b & d->wmask[o]));
		d->cfg[o] &= (uint8_t)~(b & d->w1cmask[o]);
	}
}

uint32_t pci_config_read(struct pci_bus *bus, unsigned devfn, unsigned off, unsigned len)
{
	pthread_mutex_lock(&bus->lock);
	uint32_t v = pci_config_read_locked(bus, devfn, off, len);
	pthread_mutex_unlock(&bus->lock);
	return v;
}

void pci_config_write(struct pci_bus *bus, unsigned devfn, unsigned off, unsigned len, uint32_t val)
{
	pthread_mutex_lock(&bus->lock);
	pci_config_write_locked(bus, devfn, off, len, val);
	pthread_mutex_unlock(&bus->lock);
}

/* Host bridge and the CF8/CFC ports. */

struct pci_host {
	struct vm *vm;
	struct pci_bus bus;
	struct pci_device bridge;
};

/* The config address selects bus 0 only: other buses have no devices. */
static int pci_host_target(const struct pci_bus *bus, unsigned *devfn, unsigned *reg)
{
	uint32_t a = bus->config_addr;
	if (!(a & 0x80000000u) || ((a >> 16) & 0xff) != 0)
		return -1;
	*devfn = (a >> 8) & 0xff;
	*reg = a & 0xfc;
	return 0;
}

static void pci_host_read(void *dev, uint64_t off, void *data, unsigned len)
{
	struct pci_host *h = dev;
	uint32_t v = 0xffffffffu;
	pthread_mutex_lock(&h->bus.lock);
	if (off == 0 && len == 4) {
		v = h->bus.config_addr;
	} else if (off >= 4) {
		unsigned devfn, reg, byte = (unsigned)off - 4;
		if (byte + len <= 4 && pci_host_target(&h->bus, &devfn, &reg) == 0)
			v = pci_config_read_locked(&h->bus, devfn, reg + byte, len);
	} else if (off == 1 && len == 1) {
		v = 0; /* reset control register */
	}
	pthread_mutex_unlock(&h->bus.lock);
	memcpy(data, &v, len > 4 ? 4 : len);
}

static void pci_host_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	struct pci_host *h = dev;
	uint32_t v = 0;
	memcpy(&v, data, len > 4 ? 4 : len);
	if (off == 1 && len == 1) {
		/* 0xCF9, the chipset's reset control: RST_CPU asks for a reset. */
		if (v & 0x04)
			vm_request_stop(h->vm, VM_STOP_RESET, 0);
		return;
	}
	pthread_mutex_lock(&h->bus.lock);
	if (off == 0 && len == 4) {
		h->bus.config_addr = v;
	} else if (off >= 4) {
		unsigned devfn, reg, byte = (unsigned)off - 4;
		if (byte + len <= 4 && pci_host_target(&h->bus, &devfn, &reg) == 0)
			pci_config_write_locked(&h->bus, devfn, reg + byte, len, v);
	}
	pthread_mutex_unlock(&h->bus.lock);
}

static const struct io_ops pci_host_io = { pci_host_read, pci_host_write };

static int pci_host_create(struct vm *vm, const void *arg, void **state)
{
	(void)arg;
	struct pci_host *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->vm = vm;
	pthread_mutex_init(&h->bus.lock, NULL);
	/* Red Hat's generic PCIe host bridge ID: drivers need no quirks. */
	pci_device_init(&h->bridge, "host-bridge", 0x1b36, 0x0008, 0x06000000, 0x1af4, 0x1100);
	pci_bus_plug(&h->bus, &h->bridge, 0);
	if (io_bus_register(&vm->pio, PORT_PCI_CONFIG_ADDR, 8, &pci_host_io, h, "pci-host")) {
		log_err("pci: ports 0xcf8-0xcff are taken");
		pthread_mutex_destroy(&h->bus.lock);
		free(h);
		return -EBUSY;
	}
	vm->pci = &h->bus;
	*state = h;
	return 0;
}

static void pci_host_destroy(struct vm *vm, void *state)
{
	struct pci_host *h = state;
	io_bus_unregister(&vm->pio, PORT_PCI_CONFIG_ADDR);
	vm->pci = NULL;
	pthread_mutex_destroy(&h->bus.lock);
	free(h);
}

const struct device_ops pci_host_device_ops = {
	.name = "pci-host",
	.create = pci_host_create,
	.destroy = pci_host_destroy,
};
