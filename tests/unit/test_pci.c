/* PCI config space, BAR sizing and moves, capabilities, ECAM, MSI-X. A
 * struct vm without KVM: buses only (vm_fd = -1 makes IRQ ioctls fail
 * harmlessly). */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "bus/msix.h"
#include "bus/pci.h"
#include "core/vm.h"
#include "x86/layout.h"

struct fixture {
	struct vm vm;
	void *host;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->vm.vm_fd = -1;
	io_bus_init(&f->vm.pio, "PIO");
	io_bus_init(&f->vm.mmio, "MMIO");
	assert_int_equal(pci_host_device_ops.create(&f->vm, NULL, &f->host), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	pci_host_device_ops.destroy(&f->vm, f->host);
	io_bus_destroy(&f->vm.pio);
	io_bus_destroy(&f->vm.mmio);
	free(f);
	return 0;
}

/* Config mechanism #1, as a guest does it. */
static uint32_t cf8_read(struct fixture *f, unsigned devfn, unsigned reg, unsigned len)
{
	uint32_t addr = 0x80000000u | (devfn << 8) | (reg & 0xfc), v = 0;
	io_bus_access(&f->vm.pio, 0xcf8, &addr, 4, true);
	io_bus_access(&f->vm.pio, 0xcfc + (reg & 3), &v, len, false);
	return v;
}

static void cf8_write(struct fixture *f, unsigned devfn, unsigned reg, unsigned len, uint32_t v)
{
	uint32_t addr = 0x80000000u | (devfn << 8) | (reg & 0xfc);
	io_bus_access(&f->vm.pio, 0xcf8, &addr, 4, true);
	io_bus_access(&f->vm.pio, 0xcfc + (reg & 3), &v, len, true);
}

static uint32_t ecam_read(struct fixture *f, unsigned bus, unsigned devfn, unsigned reg)
{
	uint32_t v = 0;
	io_bus_access(&f->vm.mmio, LAYOUT_ECAM_BASE + ((uint64_t)bus << 20) + (devfn << 12) + reg, &v, 4, false);
	return v;
}

static void test_host_bridge_and_absent(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(cf8_read(f, 0, 0, 4), 0x00081b36);
	assert_int_equal(cf8_read(f, 0, 0x0a, 2), 0x0600); /* host bridge class */
	assert_int_equal(ecam_read(f, 0, 0, 0), 0x00081b36);
	assert_int_equal(cf8_read(f, 1 << 3, 0, 4), 0xffffffff);
	assert_int_equal(cf8_read(f, 31 << 3, 0, 2), 0xffff);
	assert_int_equal(ecam_read(f, 1, 0, 0), 0xffffffff); /* other buses are empty */
	/* Config address register reads back; disabled cycles read all-ones. */
	uint32_t a = 0x12345678, r = 0;
	io_bus_access(&f->vm.pio, 0xcf8, &a, 4, true);
	io_bus_access(&f->vm.pio, 0xcf8, &r, 4, false);
	assert_int_equal(r, 0x12345678);
	io_bus_access(&f->vm.pio, 0xcfc, &r, 4, false);
	assert_int_equal(r, 0xffffffff);
	/* Read-only header fields ignore writes. */
	cf8_write(f, 0, 0, 4, 0);
	assert_int_equal(cf8_read(f, 0, 0, 4), 0x00081b36);
}

struct counter {
	unsigned reads, writes;
	uint64_t last_off;
};

static void c_read(void *d, uint64_t off, void *data, unsigned len)
{
	struct counter *c = d;
	c->reads++;
	c->last_off = off;
	memset(data, 0x5a, len);
}

static void c_write(void *d, uint64_t off, const void *data, unsigned len)
{
	struct counter *c = d;
	(void)data;
	(void)len;
	c->writes++;
	c->last_off = off;
}

static const struct io_ops counter_ops = { c_read, c_write };

struct moved {
	int calls;
	uint64_t last_old, last_new;
};

static void on_bar_moved(struct pci_device *d, int bar, uint64_t old, uint64_t new)
{
	struct moved *m = d->opaque;
	(void)bar;
	m->calls++;
	m->last_old = old;
	m->last_new = new;
}

static const struct pci_device_ops moved_ops = { .bar_moved = on_bar_moved };

static void test_bars(void **state)
{
	struct fixture *f = *state;
	struct pci_device d;
	struct counter mem = { 0 }, io = { 0 }, mem64 = { 0 };
	struct moved mv = { 0 };
	pci_device_init(&d, "test", 0x1234, 0x5678, 0xff000001, 0, 0);
	d.ops = &moved_ops;
	d.opaque = &mv;
	assert_int_equal(pci_device_add_bar(&d, 0, PCI_BAR_MEM32, 0x4000, &counter_ops, &mem), 0);
	assert_int_equal(pci_device_add_bar(&d, 2, PCI_BAR_IO, 0x20, &counter_ops, &io), 0);
	assert_int_equal(pci_device_add_bar(&d, 4, PCI_BAR_MEM64, 0x10000, &counter_ops, &mem64), 0);
	/* invalid BARs */
	assert_int_equal(pci_device_add_bar(&d, 5, PCI_BAR_MEM64, 0x1000, &counter_ops, &mem), -1);
	assert_int_equal(pci_device_add_bar(&d, 1, PCI_BAR_MEM32, 0x3000, &counter_ops, &mem), -1);
	assert_int_equal(pci_device_add_bar(&d, 1, PCI_BAR_IO, 8, &counter_ops, &mem), -1);
	assert_int_equal(pci_bus_plug(f->vm.pci, &d), 0);
	unsigned df = d.devfn;
	assert_int_equal(df, 1 << 3);

	uint32_t bar0 = cf8_read(f, df, 0x10, 4), bar2 = cf8_read(f, df, 0x18, 4);
	uint32_t bar4 = cf8_read(f, df, 0x20, 4), bar5 = cf8_read(f, df, 0x24, 4);
	assert_true(bar0 >= LAYOUT_PCI_MMIO_START && bar0 < LAYOUT_PCI_MMIO_END);
	assert_int_equal(bar0 & 0x3fff, 0);           /* naturally aligned, MEM32 flags 0 */
	assert_int_equal(bar2 & 0x1f, 0x1);           /* I/O, aligned */
	assert_int_equal(bar4 & 0xf, 0x4);            /* 64-bit */
	assert_int_equal(bar4 & 0xfff0 & 0xffff, 0);
	assert_int_equal(bar5, 0);
	assert_int_equal(cf8_read(f, df, 0x3d, 1), 1); /* INTA# */
	assert_int_equal(cf8_read(f, df, 0x3c, 1), pci_slot_gsi(1));

	/* Decoding is on: the BAR reaches the device at its offset. */
	uint32_t v;
	assert_true(io_bus_access(&f->vm.mmio, bar0 + 0x10, &v, 4, false));
	assert_int_equal(mem.last_off, 0x10);
	assert_true(io_bus_access(&f->vm.pio, (bar2 & ~3u) + 4, &v, 1, true));
	assert_int_equal(io.writes, 1);

	/* Sizing: all-ones reads back the size mask with the flag bits. */
	cf8_write(f, df, 0x10, 4, 0xffffffff);
	assert_int_equal(cf8_read(f, df, 0x10, 4), 0xffffc000);
	cf8_write(f, df, 0x18, 4, 0xffffffff);
	assert_int_equal(cf8_read(f, df, 0x18, 4), 0xffffffe1);
	cf8_write(f, df, 0x20, 4, 0xffffffff);
	cf8_write(f, df, 0x24, 4, 0xffffffff);
	assert_int_equal(cf8_read(f, df, 0x20, 4), 0xffff0004);
	assert_int_equal(cf8_read(f, df, 0x24, 4), 0xffffffff);
	/* While it holds the mask, BAR0 decodes nowhere. */
	assert_false(io_bus_access(&f->vm.mmio, bar0, &v, 4, false));

	/* Move BAR0: old address unclaimed, new one reaches the device. */
	uint32_t newaddr = LAYOUT_PCI_MMIO_START + 0x100000;
	mv.calls = 0;
	cf8_write(f, df, 0x10, 4, newaddr);
	assert_true(mv.calls >= 1);
	assert_int_equal(mv.last_new, newaddr);
	assert_false(io_bus_access(&f->vm.mmio, bar0, &v, 4, false));
	assert_true(io_bus_access(&f->vm.mmio, newaddr + 8, &v, 4, false));
	assert_int_equal(mem.last_off, 8);

	/* Memory decoding off: unmapped; on again: back. */
	uint16_t cmd = (uint16_t)cf8_read(f, df, 0x04, 2);
	cf8_write(f, df, 0x04, 2, cmd & ~2u);
	assert_false(io_bus_access(&f->vm.mmio, newaddr, &v, 4, false));
	assert_int_equal(mv.last_new, 0);
	cf8_write(f, df, 0x04, 2, cmd);
	assert_true(io_bus_access(&f->vm.mmio, newaddr, &v, 4, false));

	/* A BAR moved onto another device's range is not decoded. */
	cf8_write(f, df, 0x10, 4, (uint32_t)LAYOUT_ECAM_BASE);
	assert_int_equal(mv.last_new, 0);
	assert_int_equal(ecam_read(f, 0, 0, 0), 0x00081b36); /* ECAM still intact */
	pci_bus_unplug(f->vm.pci, &d);
	assert_int_equal(cf8_read(f, df, 0, 4), 0xffffffff);
}

static void test_capabilities(void **state)
{
	struct fixture *f = *state;
	struct pci_device d;
	pci_device_init(&d, "caps", 0x1234, 0x1, 0, 0, 0);
	unsigned a = pci_device_add_cap(&d, 0x09, 16);
	unsigned b = pci_device_add_cap(&d, 0x11, 12);
	assert_true(a >= 0x40 && b > a);
	assert_int_equal(pci_device_add_cap(&d, 0x09, 300), 0); /* does not fit */
	assert_int_equal(pci_bus_plug(f->vm.pci, &d), 0);
	assert_true(cf8_read(f, d.devfn, 0x06, 2) & 0x10); /* CAP_LIST */
	/* Walk the list the way a driver does; it must end. */
	unsigned seen = 0, ptr = cf8_read(f, d.devfn, 0x34, 1);
	for (int hops = 0; ptr && hops < 48; hops++) {
		unsigned id = cf8_read(f, d.devfn, ptr, 1);
		seen |= id == 0x09 ? 1 : id == 0x11 ? 2 : 4;
		ptr = cf8_read(f, d.devfn, ptr + 1, 1);
	}
	assert_int_equal(ptr, 0);
	assert_int_equal(seen, 3);
	/* Extended config space of a conventional device reads as zero. */
	assert_int_equal(ecam_read(f, 0, d.devfn, 0x100), 0);
	pci_bus_unplug(f->vm.pci, &d);
}

static void test_slots_fill_up(void **state)
{
	struct fixture *f = *state;
	static struct pci_device devs[32];
	int plugged = 0;
	for (int i = 0; i < 32; i++) {
		pci_device_init(&devs[i], "d", 0x1234, (uint16_t)i, 0, 0, 0);
		if (pci_bus_plug(f->vm.pci, &devs[i]) == 0)
			plugged++;
	}
	assert_int_equal(plugged, 31); /* slot 0 is the host bridge */
	for (int i = 0; i < plugged; i++)
		pci_bus_unplug(f->vm.pci, &devs[i]);
}

static bool efd_fired(int fd)
{
	uint64_t n = 0;
	return read(fd, &n, sizeof(n)) == sizeof(n) && n > 0;
}

static void test_msix(void **state)
{
	struct fixture *f = *state;
	struct pci_device d;
	struct msix m;
	pci_device_init(&d, "msix", 0x1234, 0x2, 0, 0, 0);
	assert_int_equal(msix_init(&m, NULL, &d, 4, 1), 0);
	assert_int_equal(pci_device_add_bar(&d, 1, PCI_BAR_MEM32, MSIX_BAR_SIZE, &msix_io_ops, &m), 0);
	static const struct pci_device_ops ops = { 0 };
	d.ops = &ops;
	assert_int_equal(pci_bus_plug(f->vm.pci, &d), 0);
	uint32_t bar = cf8_read(f, d.devfn, 0x14, 4) & ~0xfu;
	unsigned cap = m.cap;
	assert_int_equal(cf8_read(f, d.devfn, cap, 1), 0x11);
	assert_int_equal(cf8_read(f, d.devfn, cap + 2, 2) & 0x7ff, 3); /* table size - 1 */
	assert_int_equal(cf8_read(f, d.devfn, cap + 4, 4), 0x1);     /* table in BAR1 at 0 */
	assert_int_equal(cf8_read(f, d.devfn, cap + 8, 4), 0x801);   /* PBA at 0x800 */

	/* Disabled: notify is refused (the device would use INTx). */
	assert_false(msix_notify(&m, 0));
	/* Enable (the bus calls config_written in a real device; here by hand). */
	cf8_write(f, d.devfn, cap + 2, 2, 0x8000);
	msix_config_written(&m, cap + 2, 2);
	assert_true(msix_enabled(&m));

	/* Program vector 1; it starts masked: notify pends in the PBA. */
	uint32_t addr = 0xfee00000, data = 0x4041, ctrl;
	io_bus_access(&f->vm.mmio, bar + 16 + 0, &addr, 4, true);
	io_bus_access(&f->vm.mmio, bar + 16 + 8, &data, 4, true);
	uint32_t rd = 0;
	io_bus_access(&f->vm.mmio, bar + 16 + 8, &rd, 4, false);
	assert_int_equal(rd, 0x4041);
	assert_true(msix_notify(&m, 1));
	assert_false(efd_fired(m.efd[1]));
	uint64_t pba = 0;
	io_bus_access(&f->vm.mmio, bar + 0x800, &pba, 8, false);
	assert_int_equal(pba, 0x2);
	/* Unmask: the pending interrupt fires and the PBA bit clears. */
	ctrl = 0;
	io_bus_access(&f->vm.mmio, bar + 16 + 12, &ctrl, 4, true);
	assert_true(efd_fired(m.efd[1]));
	io_bus_access(&f->vm.mmio, bar + 0x800, &pba, 8, false);
	assert_int_equal(pba, 0);
	/* Unmasked: fires at once. */
	assert_true(msix_notify(&m, 1));
	assert_true(efd_fired(m.efd[1]));
	/* Function mask: pends, then fires on function unmask. */
	cf8_write(f, d.devfn, cap + 2, 2, 0xc000);
	msix_config_written(&m, cap + 2, 2);
	assert_true(msix_notify(&m, 1));
	assert_false(efd_fired(m.efd[1]));
	cf8_write(f, d.devfn, cap + 2, 2, 0x8000);
	msix_config_written(&m, cap + 2, 2);
	assert_true(efd_fired(m.efd[1]));
	/* Out-of-range vectors and table accesses are harmless. */
	assert_false(msix_notify(&m, 4));
	assert_false(msix_notify(&m, 1000));
	uint32_t junk = 0xffffffff;
	io_bus_access(&f->vm.mmio, bar + 16 * 4, &junk, 4, true);   /* entry 4 does not exist */
	io_bus_access(&f->vm.mmio, bar + 0x800, &junk, 4, true);    /* PBA is read-only */
	io_bus_access(&f->vm.mmio, bar + 16 + 2, &junk, 2, true);   /* misaligned */
	io_bus_access(&f->vm.mmio, bar + 0x800, &pba, 8, false);
	assert_int_equal(pba, 0);
	pci_bus_unplug(f->vm.pci, &d);
	msix_destroy(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_host_bridge_and_absent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bars, setup, teardown),
		cmocka_unit_test_setup_teardown(test_capabilities, setup, teardown),
		cmocka_unit_test_setup_teardown(test_slots_fill_up, setup, teardown),
		cmocka_unit_test_setup_teardown(test_msix, setup, teardown),
	};
	return cmocka_run_group_tests_name("pci", tests, NULL, NULL);
}
