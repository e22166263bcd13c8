#include "x86/acpi.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "x86/aml.h"
#include "x86/layout.h"

#define OEM_ID           "KESTRL"
#define OEM_TABLE_ID     "KESTREL "
#define OEM_REVISION     1
#define CREATOR_ID       "KSTL"
#define CREATOR_REVISION 1

#define HDR_LEN    36
#define RSDP_LEN   36
#define FACS_LEN   64
#define FADT_LEN   276 /* ACPI 6.3+ layout, with the hypervisor vendor id */
#define GAS_LEN    12

/* Generic Address Structure address spaces and access sizes. */
#define GAS_SYSTEM_IO    1
#define GAS_ACCESS_BYTE  1
#define GAS_ACCESS_WORD  2
#define GAS_ACCESS_DWORD 3

/* FADT fixed-hardware block lengths, which the platform's PM device decodes. */
#define PM1_EVT_LEN  4
#define PM1_CNT_LEN  2
#define PM_TMR_LEN   4
#define GPE0_BLK_LEN 4

/* FADT IAPC_BOOT_ARCH. */
#define BOOT_LEGACY_DEVICES 0x0001
#define BOOT_8042           0x0002
#define BOOT_VGA_NOT_PRESENT 0x0004

/* FADT flags. */
#define FADT_WBINVD        (1u << 0)
#define FADT_PROC_C1       (1u << 2)
#define FADT_PWR_BUTTON    (1u << 4)  /* set: no fixed-feature power button */
#define FADT_SLP_BUTTON    (1u << 5)  /* set: no fixed-feature sleep button */
#define FADT_FIX_RTC       (1u << 6)  /* set: no RTC wake status in PM1 */
#define FADT_RESET_REG_SUP (1u << 10)

/* MADT entry types and flags. */
#define MADT_PCAT_COMPAT   1
#define MADT_LAPIC         0
#define MADT_IOAPIC        1
#define MADT_ISO           2
#define MADT_LAPIC_NMI     4
#define MADT_LAPIC_LEN     8
#define MADT_IOAPIC_LEN    12
#define MADT_ISO_LEN       10
#define MADT_LAPIC_NMI_LEN 6
#define LAPIC_ENABLED      1
/* MPS INTI flags: polarity in bits 1:0, trigger mode in bits 3:2. */
#define INTI_CONFORMS      0x0000
#define INTI_HIGH_EDGE     0x0005
#define INTI_HIGH_LEVEL    0x000D
#define ACPI_ALL_PROCESSORS 0xFF

#define MCFG_ALLOC_LEN 16
#define ECAM_BUS_SHIFT 20 /* 1 MiB of config space per bus */

/* At most FADT, MADT and MCFG hang off the XSDT. */
#define MAX_SDT_ENTRIES 3

#define FOUR_GIB 0x100000000ULL

/* The output cursor. Offsets are into buf; the guest sees buf at gpa. */
struct out {
	uint8_t *buf;
	size_t size;
	size_t off;
	uint64_t gpa;
};

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* A 32-bit pointer field, or 0 where the target is out of its reach (the
 * 64-bit twin of the field carries the address then). */
static uint32_t addr32(uint64_t gpa)
{
	return gpa < FOUR_GIB ? (uint32_t)gpa : 0;
}

static uint8_t checksum(const uint8_t *p, size_t len)
{
	uint8_t sum = 0;

	for (size_t i = 0; i < len; i++)
		sum = (uint8_t)(sum + p[i]);
	return (uint8_t)-sum;
}

/* Places `len` zeroed bytes at the next offset whose guest address is a
 * multiple of `align` (a power of two). Returns a pointer to them, or NULL
 * if they do not fit. The padding is zeroed too: the whole result is guest
 * visible and must not carry whatever the buffer held before. */
static uint8_t *reserve(struct out *o, size_t len, uint64_t align, uint64_t *gpa_out)
{
	uint64_t misalign = (o->gpa + o->off) & (align - 1);
	size_t pad = misalign ? (size_t)(align - misalign) : 0;

	if (pad > o->size - o->off || len > o->size - o->off - pad)
		return NULL;
	memset(o->buf + o->off, 0, pad + len);
	o->off += pad;
	uint8_t *p = o->buf + o->off;
	if (gpa_out)
		*gpa_out = o->gpa + o->off;
	o->off += len;
	return p;
}

static void header(uint8_t *t, const char sig[4], uint32_t len, uint8_t rev)
{
	memcpy(t, sig, 4);
	put32(t + 4, len);
	t[8] = rev;
	t[9] = 0; /* checksum, set by finish() */
	memcpy(t + 10, OEM_ID, 6);
	memcpy(t + 16, OEM_TABLE_ID, 8);
	put32(t + 24, OEM_REVISION);
	memcpy(t + 28, CREATOR_ID, 4);
	put32(t + 32, CREATOR_REVISION);
}

static void finish(uint8_t *t, uint32_t len)
{
	t[9] = checksum(t, len);
}

static void gas(uint8_t *g, uint8_t space, uint8_t bit_width, uint8_t access, uint64_t addr)
{
	g[0] = space;
	g[1] = bit_width;
	g[2] = 0; /* bit offset */
	g[3] = access;
	put64(g + 4, addr);
}

/* A port block of `len` bytes must not run past the 64 KiB port space. */
static bool port_block_ok(uint16_t port, unsigned len)
{
	return port != 0 && (unsigned)port + len - 1 <= 0xFFFF;
}

static bool platform_ok(const struct acpi_platform *p)
{
	if (p->nr_cpus < 1 || p->nr_cpus > 255)
		return false;
	if (p->ioapic_addr == 0 || p->ioapic_addr >= FOUR_GIB)
		return false;
	if (!port_block_ok(p->pm1a_evt_port, PM1_EVT_LEN) ||
	    !port_block_ok(p->pm1a_cnt_port, PM1_CNT_LEN) ||
	    !port_block_ok(p->pm_tmr_port, PM_TMR_LEN))
		return false;
	if (p->gpe0_port != 0 && !port_block_ok(p->gpe0_port, GPE0_BLK_LEN))
		return false;
	/* The SCI is an ISA IRQ we override to level/high; IRQ0 and GSI2 are
	 * the timer's. */
	if (p->sci_irq == 0 || p->sci_irq == 2 || p->sci_irq >= 16)
		return false;
	if (p->pci_mmio_start >= p->pci_mmio_end)
		return false;
	if (p->ecam_base != 0) {
		uint64_t ecam_size = ((uint64_t)p->ecam_end_bus + 1) << ECAM_BUS_SHIFT;
		if (p->ecam_base & ((1u << ECAM_BUS_SHIFT) - 1) ||
		    p->ecam_base + ecam_size < p->ecam_base)
			return false;
	}
	if (p->com1_port != 0 && (!port_block_ok(p->com1_port, 8) || p->com1_irq >= 16))
		return false;
	if (p->rtc_port != 0 && (!port_block_ok(p->rtc_port, 2) || p->rtc_irq >= 16))
		return false;
	return true;
}

static void build_facs(struct out *o, uint64_t *gpa_out, bool *ok)
{
	/* The FACS needs 64-byte alignment; it has no checksum. */
	uint8_t *t = reserve(o, FACS_LEN, 64, gpa_out);

	if (!t) {
		*ok = false;
		return;
	}
	memcpy(t, "FACS", 4);
	put32(t + 4, FACS_LEN);
	t[32] = 2; /* version */
}

/* INTx routing: slot S pin P (0 = INTA#) is wired to GSI base + (S + P) % 4,
 * the classic swizzle over four IOAPIC pins (bus/pci.c uses the same rule).
 * Entries name a GSI directly (source 0), so the interrupt is level
 * triggered and active low, as ACPI defines for PCI. */
static void dsdt_prt(struct aml *a, uint32_t gsi_base)
{
	aml_name(a, "_PRT");
	size_t prt = aml_package_begin(a);
	unsigned n = 0;
	for (unsigned slot = 1; slot < 32; slot++) {
		for (unsigned pin = 0; pin < 4; pin++) {
			size_t e = aml_package_begin(a);
			aml_integer(a, ((uint64_t)slot << 16) | 0xFFFF);
			aml_integer(a, pin);
			aml_integer(a, 0);
			aml_integer(a, gsi_base + (slot + pin) % 4);
			aml_package_end(a, e, 4);
			n++;
		}
	}
	aml_package_end(a, prt, n);
}

/* The PCI host bridge, its resources and its INTx routing. */
static void dsdt_pci0(struct aml *a, const struct acpi_platform *p)
{
	uint8_t end_bus = p->ecam_base ? p->ecam_end_bus : 0xFF;
	uint64_t mmio_max = p->pci_mmio_end - 1;
	size_t dev, crs;

	dev = aml_device_begin(a, "PCI0");
	if (p->ecam_base) {
		aml_name_eisaid(a, "_HID", "PNP0A08"); /* PCI Express root */
		aml_name_eisaid(a, "_CID", "PNP0A03");
	} else {
		aml_name_eisaid(a, "_HID", "PNP0A03");
	}
	/* No _ADR: a device with _HID should not also have one. */
	aml_name_integer(a, "_UID", 0);
	aml_name_integer(a, "_SEG", 0);
	aml_name_integer(a, "_BBN", 0);

	aml_name(a, "_CRS");
	crs = aml_restemplate_begin(a);
	aml_res_word_bus(a, 0, end_bus);
	/* The config mechanism's own ports are the bridge's, not forwarded. */
	aml_res_io(a, PORT_PCI_CONFIG_ADDR, PORT_PCI_CONFIG_ADDR, 1, 8);
	aml_res_word_io(a, 0x0000, PORT_PCI_CONFIG_ADDR - 1);
	aml_res_word_io(a, PORT_PCI_CONFIG_ADDR + 8, 0xFFFF);
	if (mmio_max < FOUR_GIB)
		aml_res_dword_mem(a, (uint32_t)p->pci_mmio_start, (uint32_t)mmio_max, false);
	else
		aml_res_qword_mem(a, p->pci_mmio_start, mmio_max, false);
	aml_restemplate_end(a, crs);
	if (p->pci_intx_gsi_base)
		dsdt_prt(a, p->pci_intx_gsi_base);
	aml_device_end(a, dev);
}

/* virtio-mmio devices: "LNRO0005" is the ID Linux's virtio_mmio driver
 * matches in ACPI, so no kernel command line is needed. */
static void dsdt_virtio_mmio(struct aml *a, const struct acpi_platform *p)
{
	for (unsigned i = 0; i < p->nr_virtio_mmio && i < 256; i++) {
		char name[5];
		snprintf(name, sizeof(name), "VR%02X", i & 0xffu);
		size_t dev = aml_device_begin(a, name);
		aml_name_string(a, "_HID", "LNRO0005");
		aml_name_integer(a, "_UID", i);
		aml_name(a, "_CRS");
		size_t crs = aml_restemplate_begin(a);
		aml_res_mem32_fixed(a, (uint32_t)(p->virtio_mmio_base + (uint64_t)i * p->virtio_mmio_slot_size),
				    p->virtio_mmio_slot_size);
		aml_res_ext_irq(a, p->virtio_mmio_gsi + i, false, false, false);
		aml_restemplate_end(a, crs);
		aml_device_end(a, dev);
	}
}

static void dsdt_legacy(struct aml *a, const struct acpi_platform *p)
{
	size_t dev, crs;

	if (p->com1_port) {
		dev = aml_device_begin(a, "COM1");
		aml_name_eisaid(a, "_HID", "PNP0501");
		aml_name_integer(a, "_UID", 1);
		aml_name(a, "_CRS");
		crs = aml_restemplate_begin(a);
		aml_res_io(a, p->com1_port, p->com1_port, 1, 8);
		aml_res_irq_noflags(a, p->com1_irq);
		aml_restemplate_end(a, crs);
		aml_device_end(a, dev);
	}
	if (p->rtc_port) {
		dev = aml_device_begin(a, "RTC");
		aml_name_eisaid(a, "_HID", "PNP0B00");
		aml_name(a, "_CRS");
		crs = aml_restemplate_begin(a);
		aml_res_io(a, p->rtc_port, p->rtc_port, 1, 2);
		aml_res_irq_noflags(a, p->rtc_irq);
		aml_restemplate_end(a, crs);
		aml_device_end(a, dev);
	}
	/* Linux only trusts the MCFG window if a motherboard resource device
	 * claims it (or the E820 map reserves it); claiming it here keeps
	 * MMCONFIG usable whichever way the kernel checks. */
	if (p->ecam_base) {
		uint64_t ecam_size = ((uint64_t)p->ecam_end_bus + 1) << ECAM_BUS_SHIFT;
		if (p->ecam_base + ecam_size <= FOUR_GIB) {
			dev = aml_device_begin(a, "MRES");
			aml_name_eisaid(a, "_HID", "PNP0C02");
			aml_name(a, "_CRS");
			crs = aml_restemplate_begin(a);
			aml_res_mem32_fixed(a, (uint32_t)p->ecam_base, (uint32_t)ecam_size);
			aml_restemplate_end(a, crs);
			aml_device_end(a, dev);
		}
	}
}

static void build_dsdt(struct out *o, const struct acpi_platform *p, uint64_t *gpa_out, bool *ok)
{
	uint8_t *t = reserve(o, HDR_LEN, 8, gpa_out);
	struct aml a;
	size_t scope, pkg;

	if (!t) {
		*ok = false;
		return;
	}
	aml_init(&a, t + HDR_LEN, o->size - o->off);

	/* \_S5: the SLP_TYP values for PM1a and PM1b, then two reserved. */
	aml_name(&a, "\\_S5");
	pkg = aml_package_begin(&a);
	aml_integer(&a, p->s5_slp_typ);
	aml_integer(&a, p->s5_slp_typ);
	aml_integer(&a, 0);
	aml_integer(&a, 0);
	aml_package_end(&a, pkg, 4);

	scope = aml_scope_begin(&a, "\\_SB");
	dsdt_pci0(&a, p);
	dsdt_virtio_mmio(&a, p);
	dsdt_legacy(&a, p);
	aml_scope_end(&a, scope);

	if (a.err || a.len > UINT32_MAX - HDR_LEN) {
		*ok = false;
		return;
	}
	o->off += a.len;
	/* Revision 2: integers are 64-bit (the PCI window may need QWords). */
	header(t, "DSDT", (uint32_t)(HDR_LEN + a.len), 2);
	finish(t, (uint32_t)(HDR_LEN + a.len));
}

static void build_fadt(struct out *o, const struct acpi_platform *p, uint64_t facs, uint64_t dsdt,
		       uint64_t *gpa_out, bool *ok)
{
	uint8_t *t = reserve(o, FADT_LEN, 8, gpa_out);

	if (!t) {
		*ok = false;
		return;
	}
	header(t, "FACP", FADT_LEN, 6);
	/* The spec wants only one of FIRMWARE_CTRL/X_FIRMWARE_CTRL set. */
	put32(t + 36, addr32(facs));
	put32(t + 40, addr32(dsdt));
	put16(t + 46, p->sci_irq);
	/* SMI_CMD, ACPI_ENABLE, ACPI_DISABLE stay 0: the machine is always in
	 * ACPI mode (the PM device reports SCI_EN set). */
	put32(t + 56, p->pm1a_evt_port);
	put32(t + 64, p->pm1a_cnt_port);
	put32(t + 76, p->pm_tmr_port);
	put32(t + 80, p->gpe0_port);
	t[88] = PM1_EVT_LEN;
	t[89] = PM1_CNT_LEN;
	t[91] = PM_TMR_LEN;
	t[92] = p->gpe0_port ? GPE0_BLK_LEN : 0;
	/* Latencies beyond the limits (100 us, 1000 us) say: no C2, no C3. */
	put16(t + 96, 0x0FFF);
	put16(t + 98, 0x0FFF);
	put16(t + 109, BOOT_LEGACY_DEVICES | BOOT_8042 | BOOT_VGA_NOT_PRESENT);
	/* No TMR_VAL_EXT: the PM timer is 24 bits wide. */
	uint32_t flags = FADT_WBINVD | FADT_PROC_C1 | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_FIX_RTC;
	if (p->reset_port) {
		flags |= FADT_RESET_REG_SUP;
		gas(t + 116, GAS_SYSTEM_IO, 8, GAS_ACCESS_BYTE, p->reset_port);
		t[128] = p->reset_value;
	}
	put32(t + 112, flags);
	t[131] = 5; /* minor version: ACPI 6.5 */
	put64(t + 132, facs < FOUR_GIB ? 0 : facs);
	put64(t + 140, dsdt);
	gas(t + 148, GAS_SYSTEM_IO, PM1_EVT_LEN * 8, GAS_ACCESS_WORD, p->pm1a_evt_port);
	gas(t + 172, GAS_SYSTEM_IO, PM1_CNT_LEN * 8, GAS_ACCESS_WORD, p->pm1a_cnt_port);
	gas(t + 208, GAS_SYSTEM_IO, PM_TMR_LEN * 8, GAS_ACCESS_DWORD, p->pm_tmr_port);
	if (p->gpe0_port)
		gas(t + 220, GAS_SYSTEM_IO, GPE0_BLK_LEN * 8, GAS_ACCESS_BYTE, p->gpe0_port);
	memcpy(t + 268, OEM_TABLE_ID, 8); /* hypervisor vendor identity */
	finish(t, FADT_LEN);
}

static void build_madt(struct out *o, const struct acpi_platform *p, uint64_t *gpa_out, bool *ok)
{
	size_t len = 44 + p->nr_cpus * MADT_LAPIC_LEN + MADT_IOAPIC_LEN + 2 * MADT_ISO_LEN +
		     MADT_LAPIC_NMI_LEN;
	uint8_t *t = reserve(o, len, 8, gpa_out);
	uint8_t *e;

	if (!t) {
		*ok = false;
		return;
	}
	header(t, "APIC", (uint32_t)len, 5);
	put32(t + 36, (uint32_t)LAYOUT_LAPIC);
	put32(t + 40, MADT_PCAT_COMPAT);
	e = t + 44;
	for (unsigned i = 0; i < p->nr_cpus; i++, e += MADT_LAPIC_LEN) {
		e[0] = MADT_LAPIC;
		e[1] = MADT_LAPIC_LEN;
		e[2] = (uint8_t)i; /* ACPI processor UID */
		e[3] = (uint8_t)i; /* APIC ID */
		put32(e + 4, LAPIC_ENABLED);
	}
	e[0] = MADT_IOAPIC;
	e[1] = MADT_IOAPIC_LEN;
	e[2] = p->ioapic_id;
	put32(e + 4, (uint32_t)p->ioapic_addr);
	put32(e + 8, 0); /* GSI base */
	e += MADT_IOAPIC_LEN;

	/* The PIT's IRQ0 is wired to IOAPIC pin 2, as on every PC. */
	e[0] = MADT_ISO;
	e[1] = MADT_ISO_LEN;
	e[2] = 0; /* ISA */
	e[3] = 0;
	put32(e + 4, 2);
	put16(e + 8, INTI_CONFORMS);
	e += MADT_ISO_LEN;

	/* The SCI is level-triggered; ACPI wants it active-high here. */
	e[0] = MADT_ISO;
	e[1] = MADT_ISO_LEN;
	e[2] = 0;
	e[3] = p->sci_irq;
	put32(e + 4, p->sci_irq);
	put16(e + 8, INTI_HIGH_LEVEL);
	e += MADT_ISO_LEN;

	e[0] = MADT_LAPIC_NMI;
	e[1] = MADT_LAPIC_NMI_LEN;
	e[2] = ACPI_ALL_PROCESSORS;
	put16(e + 3, INTI_HIGH_EDGE);
	e[5] = 1; /* LINT1 */
	finish(t, (uint32_t)len);
}

static void build_mcfg(struct out *o, const struct acpi_platform *p, uint64_t *gpa_out, bool *ok)
{
	size_t len = 44 + MCFG_ALLOC_LEN;
	uint8_t *t = reserve(o, len, 8, gpa_out);

	if (!t) {
		*ok = false;
		return;
	}
	header(t, "MCFG", (uint32_t)len, 1);
	put64(t + 44, p->ecam_base);
	put16(t + 52, 0);   /* segment */
	t[54] = 0;          /* start bus */
	t[55] = p->ecam_end_bus;
	finish(t, (uint32_t)len);
}

static void build_xsdt(struct out *o, const uint64_t *tables, unsigned n, uint64_t *gpa_out,
		       bool *ok)
{
	size_t len = HDR_LEN + 8 * (size_t)n;
	uint8_t *t = reserve(o, len, 8, gpa_out);

	if (!t) {
		*ok = false;
		return;
	}
	header(t, "XSDT", (uint32_t)len, 1);
	for (unsigned i = 0; i < n; i++)
		put64(t + HDR_LEN + 8 * i, tables[i]);
	finish(t, (uint32_t)len);
}

static void build_rsdt(struct out *o, const uint64_t *tables, unsigned n, uint64_t *gpa_out,
		       bool *ok)
{
	size_t len = HDR_LEN + 4 * (size_t)n;
	uint8_t *t = reserve(o, len, 8, gpa_out);

	if (!t) {
		*ok = false;
		return;
	}
	header(t, "RSDT", (uint32_t)len, 1);
	for (unsigned i = 0; i < n; i++)
		put32(t + HDR_LEN + 4 * i, (uint32_t)tables[i]);
	finish(t, (uint32_t)len);
}

long acpi_build(const struct acpi_platform *p, void *buf, size_t size, uint64_t gpa)
{
	struct out o = { .buf = buf, .size = buf ? size : 0, .off = 0, .gpa = gpa };
	uint64_t facs = 0, dsdt = 0, xsdt = 0, rsdt = 0;
	uint64_t tables[MAX_SDT_ENTRIES];
	unsigned n = 0;
	bool ok = true, rsdt_fits = true;
	uint8_t *rsdp;

	if (!p || !platform_ok(p) || (gpa & 15) || gpa + o.size < gpa || o.size > LONG_MAX)
		return -1;

	/* The RSDP first, filled in last: it points at everything else. Each
	 * builder reports overflow through `ok` and is skipped after one. */
	rsdp = reserve(&o, RSDP_LEN, 16, NULL);
	if (!rsdp)
		return -1;
	build_facs(&o, &facs, &ok);
	if (ok)
		build_dsdt(&o, p, &dsdt, &ok);
	if (ok)
		build_fadt(&o, p, facs, dsdt, &tables[n++], &ok);
	if (ok)
		build_madt(&o, p, &tables[n++], &ok);
	if (ok && p->ecam_base)
		build_mcfg(&o, p, &tables[n++], &ok);
	if (ok)
		build_xsdt(&o, tables, n, &xsdt, &ok);
	/* Old parsers only know the RSDT; it can exist only below 4 GiB. */
	for (unsigned i = 0; ok && i < n; i++)
		rsdt_fits = rsdt_fits && tables[i] < FOUR_GIB;
	if (ok && rsdt_fits && o.gpa + o.off < FOUR_GIB)
		build_rsdt(&o, tables, n, &rsdt, &ok);
	if (!ok)
		return -1;
	if (rsdt >= FOUR_GIB)
		rsdt = 0;

	memcpy(rsdp, "RSD PTR ", 8);
	memcpy(rsdp + 9, OEM_ID, 6);
	rsdp[15] = 2; /* revision: ACPI 2.0+, has the XSDT */
	put32(rsdp + 16, (uint32_t)rsdt);
	put32(rsdp + 20, RSDP_LEN);
	put64(rsdp + 24, xsdt);
	rsdp[8] = checksum(rsdp, 20);
	rsdp[32] = checksum(rsdp, RSDP_LEN);
	return (long)o.off;
}
