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
	/* I/O, memory, bus master; INTx disable */
	d->wmask[PCI_COMMAND] = 0x07;
	d->wmask[PCI_COMMAND + 1] = 0x04;
	/* Status error bits are write-1-to-clear. */
	d->w1cmask[PCI_STATUS + 1] = 0xf9;
	d->wmask[PCI_INTERRUPT_LINE] = 0xff;
	d->next_cap = 0x40;
}

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

int pci_device_add_bar(struct pci_device *d, int bar, enum pci_bar_type type, uint64_t size,
		       const struct io_ops *ops, void *dev)
{
	if (bar < 0 || bar >= PCI_NR_BARS || (size & (size - 1)) || type == PCI_BAR_NONE ||
	    (type == PCI_BAR_MEM64 && bar == PCI_NR_BARS - 1) ||
	    (type == PCI_BAR_IO && (size < 16 || size > 256)) || (type != PCI_BAR_IO && size < 4096))
		return -1;
	d->bars[bar] = (struct pci_bar){ .type = type, .size = size, .ops = ops, .dev = dev };
	unsigned off = PCI_BAR0 + 4 * (unsigned)bar;
	uint32_t flags = type == PCI_BAR_IO ? 0x1 : type == PCI_BAR_MEM64 ? 0x4 : 0x0;
	uint32_t mask = type == PCI_BAR_IO ? ~(uint32_t)(size - 1) & ~0x3u : ~(uint32_t)(size - 1) & ~0xfu;
	put32(&d->cfg[off], flags);
	put32(&d->wmask[off], mask);
	if (type == PCI_BAR_MEM64) {
		put32(&d->cfg[off + 4], 0);
		put32(&d->wmask[off + 4], 0xffffffffu);
	}
	return 0;
}

unsigned pci_device_add_cap(struct pci_device *d, uint8_t id, unsigned len)
{
	unsigned off = (d->next_cap + 3u) & ~3u;
	if (len < 2 || off + len > PCI_CFG_SIZE)
		return 0;
	d->cfg[off] = id;
	d->cfg[off + 1] = d->cfg[PCI_CAPABILITY_LIST];
	d->cfg[PCI_CAPABILITY_LIST] = (uint8_t)off;
	d->cfg[PCI_STATUS] |= PCI_STATUS_CAP_LIST;
	d->next_cap = (uint8_t)(off + len);
	return off;
}

unsigned pci_slot_gsi(unsigned slot)
{
	return 16 + (slot % 4);
}

static uint64_t bar_cfg_addr(const struct pci_device *d, int i)
{
	uint32_t lo, hi = 0;
	memcpy(&lo, &d->cfg[PCI_BAR0 + 4 * i], 4);
	if (d->bars[i].type == PCI_BAR_MEM64)
		memcpy(&hi, &d->cfg[PCI_BAR0 + 4 * i + 4], 4);
	uint64_t a = ((uint64_t)hi << 32) | lo;
	return d->bars[i].type == PCI_BAR_IO ? a & ~0x3ULL : a & ~0xfULL;
}

/* Re-derives where each BAR decodes from COMMAND and the BAR registers and
 * moves the bus registrations to match. Caller holds the bus lock. */
static void pci_update_mappings(struct pci_device *d)
{
	struct vm *vm = d->bus->vm;
	uint16_t cmd;
	memcpy(&cmd, &d->cfg[PCI_COMMAND], 2);
	for (int i = 0; i < PCI_NR_BARS; i++) {
		struct pci_bar *b = &d->bars[i];
		if (b->type == PCI_BAR_NONE)
			continue;
		bool io = b->type == PCI_BAR_IO;
		uint64_t addr = bar_cfg_addr(d, i);
		bool on = cmd & (io ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY);
		/* While a guest sizes a BAR the register holds the size mask:
		 * an address whose range would wrap or leave the address space
		 * is not decoded. */
		uint64_t limit = io ? 0x10000 : (b->type == PCI_BAR_MEM32 ? LAYOUT_4G : (1ULL << 52));
		if (!on || addr == 0 || addr + b->size < addr || addr + b->size > limit)
			addr = 0;
		if (addr == b->addr)
			continue;
		struct io_bus *iob = io ? &vm->pio : &vm->mmio;
		uint64_t old = b->addr;
		if (old)
			io_bus_unregister(iob, old);
		if (addr && io_bus_register(iob, addr, b->size, b->ops, b->dev, d->name)) {
			log_info("pci %02x.%x: BAR%d at 0x%llx overlaps another range; not decoded",
				 d->devfn >> 3, d->devfn & 7, i, (unsigned long long)addr);
			addr = 0;
		}
		b->addr = addr;
		if (d->ops && d->ops->bar_moved)
			d->ops->bar_moved(d, i, old, addr);
	}
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

/* Caller holds bus->intx_lock. */
static void pci_update_intx(struct pci_bus *bus, unsigned gsi)
{
	bool level = false;
	for (unsigned i = 0; i < PCI_MAX_DEVFN; i++) {
		const struct pci_device *d = bus->devs[i];
		uint16_t cmd;
		if (!d || d->intx_gsi != gsi)
			continue;
		memcpy(&cmd, &d->cfg[PCI_COMMAND], 2);
		if (d->intx_level && !(cmd & PCI_COMMAND_INTX_DISABLE))
			level = true;
	}
	/* Slots share IOAPIC pins: the line is the OR of its devices. */
	vm_irq_line(bus->vm, gsi, level);
}

void pci_set_intx(struct pci_device *d, bool level)
{
	struct pci_bus *bus = d->bus;
	pthread_mutex_lock(&bus->intx_lock);
	if (d->intx_level != level) {
		d->intx_level = level;
		/* A byte store: config readers see old or new, never garbage. */
		if (level)
			d->cfg[PCI_STATUS] |= PCI_STATUS_INTERRUPT;
		else
			d->cfg[PCI_STATUS] &= (uint8_t)~PCI_STATUS_INTERRUPT;
		pci_update_intx(bus, d->intx_gsi);
	}
	pthread_mutex_unlock(&bus->intx_lock);
}

static int pci_place_bars(struct pci_bus *bus, struct pci_device *d)
{
	for (int i = 0; i < PCI_NR_BARS; i++) {
		struct pci_bar *b = &d->bars[i];
		if (b->type == PCI_BAR_NONE)
			continue;
		uint64_t at;
		if (b->type == PCI_BAR_IO) {
			at = align_up(bus->io_next, b->size);
			if (at + b->size > bus->io_end)
				return -1;
			bus->io_next = (uint32_t)(at + b->size);
		} else {
			at = align_up(bus->mmio_next, b->size);
			if (at + b->size > bus->mmio_end)
				return -1;
			bus->mmio_next = at + b->size;
		}
		unsigned off = PCI_BAR0 + 4 * (unsigned)i;
		uint32_t lo;
		memcpy(&lo, &d->cfg[off], 4);
		put32(&d->cfg[off], (uint32_t)at | (lo & (b->type == PCI_BAR_IO ? 0x3u : 0xfu)));
		if (b->type == PCI_BAR_MEM64)
			put32(&d->cfg[off + 4], (uint32_t)(at >> 32));
	}
	return 0;
}

int pci_bus_plug(struct pci_bus *bus, struct pci_device *d)
{
	pthread_mutex_lock(&bus->lock);
	unsigned devfn = 0;
	for (unsigned slot = 1; slot < 32 && !devfn; slot++)
		if (!bus->devs[slot << 3])
			devfn = slot << 3;
	if (!devfn) {
		pthread_mutex_unlock(&bus->lock);
		log_err("pci: no free slot for %s (32 slots on bus 0)", d->name);
		return -1;
	}
	if (pci_place_bars(bus, d)) {
		pthread_mutex_unlock(&bus->lock);
		log_err("pci: no room in the PCI windows for %s's BARs", d->name);
		return -1;
	}
	d->bus = bus;
	d->devfn = devfn;
	d->intx_gsi = pci_slot_gsi(devfn >> 3);
	d->cfg[PCI_INTERRUPT_PIN] = 1; /* INTA# */
	d->cfg[PCI_INTERRUPT_LINE] = (uint8_t)d->intx_gsi;
	/* What firmware would leave behind: decoding on. */
	d->cfg[PCI_COMMAND] |= PCI_COMMAND_IO | PCI_COMMAND_MEMORY;
	bus->devs[devfn] = d;
	pci_update_mappings(d);
	pthread_mutex_unlock(&bus->lock);
	return 0;
}

void pci_bus_unplug(struct pci_bus *bus, struct pci_device *d)
{
	pthread_mutex_lock(&bus->lock);
	if (d->devfn < PCI_MAX_DEVFN && bus->devs[d->devfn] == d) {
		d->cfg[PCI_COMMAND] &= (uint8_t)~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY);
		pci_update_mappings(d);
		bus->devs[d->devfn] = NULL;
	}
	pthread_mutex_unlock(&bus->lock);
}

/* Callers hold bus->lock. */
static uint32_t pci_config_read_locked(struct pci_bus *bus, unsigned devfn, unsigned off, unsigned len)
{
	const struct pci_device *d = devfn < PCI_MAX_DEVFN ? bus->devs[devfn] : NULL;
	if (!d)
		return len == 4 ? 0xffffffffu : (1u << (8 * len)) - 1;
	if (off >= PCI_CFG_SIZE || len > PCI_CFG_SIZE - off)
		return 0; /* conventional PCI: no extended capabilities */
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
	uint16_t old_cmd;
	memcpy(&old_cmd, &d->cfg[PCI_COMMAND], 2);
	for (unsigned i = 0; i < len; i++) {
		uint8_t b = (uint8_t)(val >> (8 * i));
		unsigned o = off + i;
		d->cfg[o] = (uint8_t)((d->cfg[o] & ~d->wmask[o]) | (b & d->wmask[o]));
		d->cfg[o] &= (uint8_t)~(b & d->w1cmask[o]);
	}
	bool touches_cmd = off < PCI_COMMAND + 2 && off + len > PCI_COMMAND;
	bool touches_bars = off < PCI_BAR0 + 24 && off + len > PCI_BAR0;
	if (touches_cmd || touches_bars)
		pci_update_mappings(d);
	uint16_t cmd;
	memcpy(&cmd, &d->cfg[PCI_COMMAND], 2);
	if ((cmd ^ old_cmd) & PCI_COMMAND_INTX_DISABLE) {
		pthread_mutex_lock(&bus->intx_lock);
		pci_update_intx(bus, d->intx_gsi);
		pthread_mutex_unlock(&bus->intx_lock);
	}
	if (d->ops && d->ops->config_written)
		d->ops->config_written(d, off, len);
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

/* Host bridge, the CF8/CFC ports and ECAM. */

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

/* ECAM: bus << 20 | devfn << 12 | register. Only bus 0 is populated. */
static void pci_ecam_read(void *dev, uint64_t off, void *data, unsigned len)
{
	struct pci_host *h = dev;
	unsigned reg = off & 0xfff, devfn = (off >> 12) & 0xff;
	uint32_t v = 0xffffffffu;
	if ((off >> 20) == 0 && len <= 4 && (reg & (len - 1)) == 0)
		v = pci_config_read(&h->bus, devfn, reg, len);
	memset(data, 0xff, len);
	memcpy(data, &v, len > 4 ? 4 : len);
}

static void pci_ecam_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	struct pci_host *h = dev;
	unsigned reg = off & 0xfff, devfn = (off >> 12) & 0xff;
	if ((off >> 20) != 0 || len > 4 || (reg & (len - 1)))
		return;
	uint32_t v = 0;
	memcpy(&v, data, len);
	pci_config_write(&h->bus, devfn, reg, len, v);
}

static const struct io_ops pci_ecam_io = { pci_ecam_read, pci_ecam_write };

static int pci_host_create(struct vm *vm, const void *arg, void **state)
{
	(void)arg;
	struct pci_host *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->vm = vm;
	struct pci_bus *bus = &h->bus;
	bus->vm = vm;
	pthread_mutex_init(&bus->lock, NULL);
	pthread_mutex_init(&bus->intx_lock, NULL);
	bus->mmio_next = LAYOUT_PCI_MMIO_START;
	bus->mmio_end = LAYOUT_PCI_MMIO_END;
	bus->io_next = 0xc000;
	bus->io_end = 0x10000;
	bus->ecam_base = LAYOUT_ECAM_BASE;
	/* Red Hat's generic PCIe host bridge ID: drivers need no quirks. */
	pci_device_init(&h->bridge, "host-bridge", 0x1b36, 0x0008, 0x06000000, 0x1af4, 0x1100);
	h->bridge.bus = bus;
	bus->devs[0] = &h->bridge;
	if (io_bus_register(&vm->pio, PORT_PCI_CONFIG_ADDR, 8, &pci_host_io, h, "pci-host") ||
	    io_bus_register(&vm->mmio, LAYOUT_ECAM_BASE, LAYOUT_ECAM_SIZE, &pci_ecam_io, h, "pci-ecam")) {
		log_err("pci: ports 0xcf8-0xcff or the ECAM window are taken");
		io_bus_unregister(&vm->pio, PORT_PCI_CONFIG_ADDR);
		pthread_mutex_destroy(&bus->intx_lock);
		pthread_mutex_destroy(&bus->lock);
		free(h);
		return -EBUSY;
	}
	vm->pci = bus;
	*state = h;
	return 0;
}

static void pci_host_destroy(struct vm *vm, void *state)
{
	struct pci_host *h = state;
	io_bus_unregister(&vm->mmio, LAYOUT_ECAM_BASE);
	io_bus_unregister(&vm->pio, PORT_PCI_CONFIG_ADDR);
	vm->pci = NULL;
	pthread_mutex_destroy(&h->bus.intx_lock);
	pthread_mutex_destroy(&h->bus.lock);
	free(h);
}

const struct device_ops pci_host_device_ops = {
	.name = "pci-host",
	.create = pci_host_create,
	.destroy = pci_host_destroy,
};
