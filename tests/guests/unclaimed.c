/*
 * Accesses nobody claims. Kestrel's contract: reads return all-ones,
 * writes are dropped. QEMU reads unassigned MMIO as zero, which is
 * accepted only with "allow_mmio_zero" on the command line.
 */
#include "rt.h"

#define PORT    0x260           /* free on QEMU pc and on Kestrel */
#define MMIO    0xdf000000ul    /* in the 3-4 GiB hole, past the virtio-mmio slots: no device */

static bool check(const char *what, uint64_t got, uint64_t ones, bool zero_ok)
{
	bool ok = got == ones || (zero_ok && got == 0);

	kprintf("unclaimed: %-14s = 0x%lx %s\n", what, got,
		got == ones ? "(all-ones)" : ok ? "(zero, allowed)" : "(WRONG)");
	return ok;
}

static bool read_port(const char *when)
{
	bool ok = true;

	kprintf("unclaimed: port 0x%x %s writes:\n", PORT, when);
	ok &= check("inb", inb(PORT), 0xff, false);
	ok &= check("inw", inw(PORT), 0xffff, false);
	ok &= check("inl", inl(PORT), 0xffffffff, false);
	return ok;
}

static bool read_mmio(const char *when, bool zero_ok)
{
	bool ok = true;

	kprintf("unclaimed: mmio 0x%lx %s writes:\n", MMIO, when);
	ok &= check("read8", mmio_read8(MMIO), 0xff, zero_ok);
	ok &= check("read16", mmio_read16(MMIO), 0xffff, zero_ok);
	ok &= check("read32", mmio_read32(MMIO), 0xffffffff, zero_ok);
	ok &= check("read64", mmio_read64(MMIO), ~0ull, zero_ok);
	return ok;
}

int main(void)
{
	bool zero_ok = cmdline_has("allow_mmio_zero");
	bool pio, mmio;

	pio = read_port("before");
	outb(PORT, 0x5a);
	outw(PORT, 0x1234);
	outl(PORT, 0xdeadbeef);
	pio &= read_port("after");

	mmio = read_mmio("before", zero_ok);
	mmio_write8(MMIO, 0x5a);
	mmio_write16(MMIO, 0x1234);
	mmio_write32(MMIO, 0xdeadbeef);
	mmio_write64(MMIO, 0x0123456789abcdefull);
	mmio &= read_mmio("after", zero_ok);

	kprintf("unclaimed: PIO %s, MMIO %s%s\n", pio ? "ok" : "WRONG", mmio ? "ok" : "WRONG",
		zero_ok ? " (allow_mmio_zero)" : "");
	kprintf("unclaimed: %s\n", pio && mmio ? "PASS" : "FAIL");
	return pio && mmio ? 0 : 1;
}
