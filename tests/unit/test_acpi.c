/* Unit tests for the ACPI table builder and the AML encoder. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "x86/acpi.h"
#include "x86/aml.h"
#include "x86/layout.h"

#define BUF_SIZE LAYOUT_ACPI_SIZE
#define FADT_LEN 276

static struct acpi_platform platform(unsigned nr_cpus, bool ecam)
{
	return (struct acpi_platform){
		.nr_cpus = nr_cpus,
		.ioapic_addr = LAYOUT_IOAPIC,
		.ioapic_id = 0,
		.pm1a_evt_port = PORT_ACPI_PM1_EVT,
		.pm1a_cnt_port = PORT_ACPI_PM1_CNT,
		.pm_tmr_port = PORT_ACPI_PM_TMR,
		.gpe0_port = PORT_ACPI_GPE0,
		.sci_irq = IRQ_ACPI_SCI,
		.reset_port = PORT_RESET,
		.reset_value = RESET_VALUE,
		.s5_slp_typ = ACPI_S5_SLP_TYP,
		.pci_mmio_start = LAYOUT_PCI_MMIO_START,
		.pci_mmio_end = 0xE0000000ULL, /* fixed: PCI0_CRS below encodes it */
		.ecam_base = ecam ? LAYOUT_ECAM_BASE : 0,
		.ecam_end_bus = 255,
		.com1_port = PORT_COM1,
		.com1_irq = IRQ_COM1,
		.rtc_port = PORT_RTC,
		.rtc_irq = IRQ_RTC,
	};
}

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
	return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static uint8_t sum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	for (size_t i = 0; i < n; i++)
		s = (uint8_t)(s + p[i]);
	return s;
}

/* The built tables and where the guest sees them. */
struct tables {
	uint8_t *buf;
	long len;
	uint64_t gpa;
};

static struct tables build(const struct acpi_platform *p, uint64_t gpa)
{
	struct tables t = { .buf = calloc(1, BUF_SIZE), .gpa = gpa };

	assert_non_null(t.buf);
	t.len = acpi_build(p, t.buf, BUF_SIZE, gpa);
	assert_true(t.len > 0);
	assert_true((size_t)t.len <= BUF_SIZE);
	return t;
}

/* Translates a table address to the buffer, checking the whole table (by
 * its header length, or `fixed_len` when non-zero) lies inside. */
static const uint8_t *at(const struct tables *t, uint64_t addr, size_t fixed_len)
{
	assert_true(addr >= t->gpa);
	assert_true(addr - t->gpa + 8 <= (uint64_t)t->len);
	const uint8_t *p = t->buf + (addr - t->gpa);
	size_t len = fixed_len ? fixed_len : rd32(p + 4);
	assert_true(addr - t->gpa + len <= (uint64_t)t->len);
	return p;
}

static const uint8_t *xsdt_of(const struct tables *t)
{
	return at(t, rd64(t->buf + 24), 0);
}

/* The table with signature `sig` listed in the XSDT, or NULL. */
static const uint8_t *find(const struct tables *t, const char *sig)
{
	const uint8_t *x = xsdt_of(t);
	unsigned n = (rd32(x + 4) - 36) / 8;

	for (unsigned i = 0; i < n; i++) {
		const uint8_t *tbl = at(t, rd64(x + 36 + 8 * i), 0);
		if (memcmp(tbl, sig, 4) == 0)
			return tbl;
	}
	return NULL;
}

static const uint8_t *dsdt_of(const struct tables *t)
{
	const uint8_t *f = find(t, "FACP");

	assert_non_null(f);
	return at(t, rd64(f + 140), 0);
}

static void assert_table_ok(const uint8_t *tbl, const char *sig)
{
	assert_memory_equal(tbl, sig, 4);
	assert_int_equal(sum(tbl, rd32(tbl + 4)), 0);
	assert_memory_equal(tbl + 10, "KESTRL", 6);
	assert_memory_equal(tbl + 16, "KESTREL ", 8);
	assert_memory_equal(tbl + 28, "KSTL", 4);
}

static bool contains(const uint8_t *hay, size_t n, const void *needle, size_t m)
{
	return memmem(hay, n, needle, m) != NULL;
}

static void test_rsdp(void **state)
{
	(void)state;
	struct acpi_platform p = platform(4, true);
	struct tables t = build(&p, LAYOUT_ACPI_BASE);
	const uint8_t *r = t.buf;

	assert_memory_equal(r, "RSD PTR ", 8);
	assert_int_equal(sum(r, 20), 0);
	assert_int_equal(sum(r, 36), 0);
	assert_memory_equal(r + 9, "KESTRL", 6);
	assert_int_equal(r[15], 2);
	assert_int_equal(rd32(r + 20), 36);
	assert_table_ok(at(&t, rd32(r + 16), 0), "RSDT");
	assert_table_ok(at(&t, rd64(r + 24), 0), "XSDT");
	free(t.buf);
}

static void test_root_tables(void **state)
{
	(void)state;
	struct acpi_platform p = platform(2, true);
	struct tables t = build(&p, LAYOUT_ACPI_BASE);
	const uint8_t *x = xsdt_of(&t);
	const uint8_t *r = at(&t, rd32(t.buf + 16), 0);
	static const char *const sigs[] = { "FACP", "APIC", "MCFG" };

	assert_int_equal(rd32(x + 4), 36 + 3 * 8);
	assert_int_equal(rd32(r + 4), 36 + 3 * 4);
	for (unsigned i = 0; i < 3; i++) {
		uint64_t a = rd64(x + 36 + 8 * i);
		assert_table_ok(at(&t, a, 0), sigs[i]);
		assert_int_equal(rd32(r + 36 + 4 * i), a);
		assert_int_equal(a % 8, 0);
	}
	assert_table_ok(dsdt_of(&t), "DSDT");
	free(t.buf);
}

static void test_fadt(void **state)
{
	(void)state;
	struct acpi_platform p = platform(1, true);
	struct tables t = build(&p, LAYOUT_ACPI_BASE);
	const uint8_t *f = find(&t, "FACP");

	assert_non_null(f);
	assert_table_ok(f, "FACP");
	assert_int_equal(rd32(f + 4), FADT_LEN);
	assert_int_equal(f[8], 6);
	assert_int_equal(rd16(f + 46), IRQ_ACPI_SCI);
	assert_int_equal(rd32(f + 48), 0); /* SMI_CMD: always in ACPI mode */
	assert_int_equal(rd32(f + 56), PORT_ACPI_PM1_EVT);
	assert_int_equal(rd32(f + 64), PORT_ACPI_PM1_CNT);
	assert_int_equal(rd32(f + 76), PORT_ACPI_PM_TMR);
	assert_int_equal(rd32(f + 80), PORT_ACPI_GPE0);
	assert_int_equal(f[88], 4);
	assert_int_equal(f[89], 2);
	assert_int_equal(f[91], 4);
	assert_int_equal(f[92], 4);
	assert_int_equal(rd16(f + 109), 0x0007); /* legacy devices, 8042, no VGA */

	uint32_t flags = rd32(f + 112);
	assert_true(flags & (1u << 0));   /* WBINVD */
	assert_true(flags & (1u << 10));  /* RESET_REG_SUP */
	assert_false(flags & (1u << 8));  /* TMR_VAL_EXT: the timer is 24-bit */
	assert_false(flags & (1u << 20)); /* not hardware-reduced */

	static const uint8_t reset_gas[12] = { 1, 8, 0, 1, 0xF9, 0x0C };
	assert_memory_equal(f + 116, reset_gas, 12);
	assert_int_equal(f[128], RESET_VALUE);

	/* Both pointer pairs: the 32-bit field set, the 64-bit FACS pointer 0
	 * as the spec asks when FIRMWARE_CTRL is used; DSDT in both. */
	uint32_t facs = rd32(f + 36);
	assert_int_not_equal(facs, 0);
	assert_int_equal(rd64(f + 132), 0);
	assert_int_equal(facs % 64, 0);
	const uint8_t *fc = at(&t, facs, 64);
	assert_memory_equal(fc, "FACS", 4);
	assert_int_equal(rd32(fc + 4), 64);
	assert_int_equal(rd32(f + 40), rd64(f + 140));

	static const uint8_t pm1_evt[12] = { 1, 32, 0, 2, 0x00, 0x06 };
	static const uint8_t pm1_cnt[12] = { 1, 16, 0, 2, 0x04, 0x06 };
	static const uint8_t pm_tmr[12] = { 1, 32, 0, 3, 0x08, 0x06 };
	static const uint8_t gpe0[12] = { 1, 32, 0, 1, 0x20, 0x06 };
	static const uint8_t none[12] = { 0 };
	assert_memory_equal(f + 148, pm1_evt, 12);
	assert_memory_equal(f + 160, none, 12); /* PM1b */
	assert_memory_equal(f + 172, pm1_cnt, 12);
	assert_memory_equal(f + 184, none, 12); /* PM1b */
	assert_memory_equal(f + 196, none, 12); /* PM2 */
	assert_memory_equal(f + 208, pm_tmr, 12);
	assert_memory_equal(f + 220, gpe0, 12);
	assert_memory_equal(f + 232, none, 12); /* GPE1 */
	free(t.buf);
}

static void check_madt(unsigned n)
{
	struct acpi_platform p = platform(n, true);
	struct tables t = build(&p, LAYOUT_ACPI_BASE);
	const uint8_t *m = find(&t, "APIC");
	unsigned lapics = 0, ioapics = 0, isos = 0, nmis = 0;

	assert_non_null(m);
	assert_table_ok(m, "APIC");
	assert_int_equal(rd32(m + 36), LAYOUT_LAPIC);
	assert_int_equal(rd32(m + 40), 1); /* PCAT_COMPAT */

	uint32_t len = rd32(m + 4);
	for (uint32_t off = 44; off < len;) {
		const uint8_t *e = m + off;
		assert_true(e[1] >= 2 && off + e[1] <= len);
		switch (e[0]) {
		case 0:
			assert_int_equal(e[1], 8);
			assert_int_equal(e[2], lapics); /* UID */
			assert_int_equal(e[3], lapics); /* APIC ID */
			assert_int_equal(rd32(e + 4), 1);
			lapics++;
			break;
		case 1:
			assert_int_equal(e[1], 12);
			assert_int_equal(e[2], p.ioapic_id);
			assert_int_equal(rd32(e + 4), LAYOUT_IOAPIC);
			assert_int_equal(rd32(e + 8), 0);
			ioapics++;
			break;
		case 2:
			assert_int_equal(e[1], 10);
			assert_int_equal(e[2], 0);
			if (e[3] == 0) {
				assert_int_equal(rd32(e + 4), 2);
				assert_int_equal(rd16(e + 8), 0);
			} else {
				assert_int_equal(e[3], IRQ_ACPI_SCI);
				assert_int_equal(rd32(e + 4), IRQ_ACPI_SCI);
				assert_int_equal(rd16(e + 8), 0x000D);
			}
			isos++;
			break;
		case 4:
			assert_int_equal(e[1], 6);
			assert_int_equal(e[2], 0xFF);
			assert_int_equal(e[5], 1); /* LINT1 */
			nmis++;
			break;
		default:
			fail_msg("unexpected MADT entry type %u", e[0]);
		}
		off += e[1];
	}
	assert_int_equal(lapics, n);
	assert_int_equal(ioapics, 1);
	assert_int_equal(isos, 2);
	assert_int_equal(nmis, 1);
	free(t.buf);
}

static void test_madt(void **state)
{
	(void)state;
	static const unsigned counts[] = { 1, 2, 64, 255 };

	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++)
		check_madt(counts[i]);
}

/* EISAID values as AML DWord constants, for searching the DSDT. */
static const uint8_t HID_PNP0A08[] = { 0x08, '_', 'H', 'I', 'D', 0x0C, 0x41, 0xD0, 0x0A, 0x08 };
static const uint8_t HID_PNP0A03[] = { 0x08, '_', 'H', 'I', 'D', 0x0C, 0x41, 0xD0, 0x0A, 0x03 };
static const uint8_t CID_PNP0A03[] = { 0x08, '_', 'C', 'I', 'D', 0x0C, 0x41, 0xD0, 0x0A, 0x03 };

static void test_mcfg_with_ecam(void **state)
{
	(void)state;
	struct acpi_platform p = platform(1, true);
	struct tables t = build(&p, LAYOUT_ACPI_BASE);
	const uint8_t *m = find(&t, "MCFG");
	const uint8_t *d = dsdt_of(&t);

	assert_non_null(m);
	assert_table_ok(m, "MCFG");
	assert_int_equal(rd32(m + 4), 60);
	assert_int_equal(rd64(m + 44), LAYOUT_ECAM_BASE);
	assert_int_equal(rd16(m + 52), 0);
	assert_int_equal(m[54], 0);
	assert_int_equal(m[55], 255);
	assert_true(contains(d, rd32(d + 4), HID_PNP0A08, sizeof(HID_PNP0A08)));
	assert_true(contains(d, rd32(d + 4), CID_PNP0A03, sizeof(CID_PNP0A03)));
	free(t.buf);
}

static void test_no_mcfg_without_ecam(void **state)
{
	(void)state;
	struct acpi_platform p = platform(1, false);
	struct tables t = build(&p, LAYOUT_ACPI_BASE);
	const uint8_t *d = dsdt_of(&t);

	assert_null(find(&t, "MCFG"));
	assert_int_equal(rd32(xsdt_of(&t) + 4), 36 + 2 * 8);
	assert_true(contains(d, rd32(d + 4), HID_PNP0A03, sizeof(HID_PNP0A03)));
	assert_false(contains(d, rd32(d + 4), CID_PNP0A03, sizeof(CID_PNP0A03)));
	free(t.buf);
}

/* The PCI0 _CRS as iasl compiles the equivalent ASL (checked with iasl -oa
 * on the disassembly): buses 0-255, ports 0xCF8/8, IO 0-0xCF7 and
 * 0xD00-0xFFFF, memory 0xC0000000-0xDFFFFFFF. */
static const uint8_t PCI0_CRS[] = {
	0x08, '_', 'C', 'R', 'S', 0x11, 0x48, 0x05, 0x0A, 0x54,
	0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x01,
	0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08,
	0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03, 0x00, 0x00, 0x00, 0x00, 0xF7, 0x0C, 0x00, 0x00, 0xF8, 0x0C,
	0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03, 0x00, 0x00, 0x00, 0x0D, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xF3,
	0x87, 0x17, 0x00, 0x00, 0x0C, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xC0,
	0xFF, 0xFF, 0xFF, 0xDF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20,
	0x79, 0x00,
};

static const uint8_t COM1_DEVICE[] = {
	0x5B, 0x82, 0x2B, 'C', 'O', 'M', '1',
	0x08, '_', 'H', 'I', 'D', 0x0C, 0x41, 0xD0, 0x05, 0x01,
	0x08, '_', 'U', 'I', 'D', 0x01,
	0x08, '_', 'C', 'R', 'S', 0x11, 0x10, 0x0A, 0x0D,
	0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00,
};

static const uint8_t RTC_CRS[] = {
	0x08, '_', 'C', 'R', 'S', 0x11, 0x10, 0x0A, 0x0D,
	0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x22, 0x00, 0x01, 0x79, 0x00,
};

static void test_dsdt_devices(void **state)
{
	(void)state;
	struct acpi_platform p = platform(1, true);
	struct tables t = build(&p, LAYOUT_ACPI_BASE);
	const uint8_t *d = dsdt_of(&t);
	uint32_t n = rd32(d + 4);

	assert_int_equal(d[8], 2); /* 64-bit integers */
	assert_true(contains(d, n, PCI0_CRS, sizeof(PCI0_CRS)));
	assert_true(contains(d, n, COM1_DEVICE, sizeof(COM1_DEVICE)));
	assert_true(contains(d, n, RTC_CRS, sizeof(RTC_CRS)));
	free(t.buf);
}

static void test_s5_package(void **state)
{
	(void)state;
	struct acpi_platform p = platform(1, true);
	static const uint8_t s5_zero[] = { 0x08, 0x5C, '_', 'S', '5', '_', 0x12, 0x06, 0x04,
					   0x00, 0x00, 0x00, 0x00 };
	static const uint8_t s5_five[] = { 0x08, 0x5C, '_', 'S', '5', '_', 0x12, 0x08, 0x04,
					   0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00 };
	struct tables t = build(&p, LAYOUT_ACPI_BASE);
	const uint8_t *d = dsdt_of(&t);

	/* \_S5 comes first in the DSDT. */
	assert_memory_equal(d + 36, s5_zero, sizeof(s5_zero));
	free(t.buf);

	p.s5_slp_typ = 5;
	t = build(&p, LAYOUT_ACPI_BASE);
	d = dsdt_of(&t);
	assert_memory_equal(d + 36, s5_five, sizeof(s5_five));
	free(t.buf);
}

static void check_all_checksums(const struct tables *t)
{
	const uint8_t *x = xsdt_of(t);
	unsigned n = (rd32(x + 4) - 36) / 8;

	assert_int_equal(sum(t->buf, 20), 0);
	assert_int_equal(sum(t->buf, 36), 0);
	assert_int_equal(sum(x, rd32(x + 4)), 0);
	for (unsigned i = 0; i < n; i++) {
		const uint8_t *tbl = at(t, rd64(x + 36 + 8 * i), 0);
		assert_int_equal(sum(tbl, rd32(tbl + 4)), 0);
		assert_int_equal((uint64_t)(tbl - t->buf) % 8, 0);
	}
	const uint8_t *d = dsdt_of(t);
	assert_int_equal(sum(d, rd32(d + 4)), 0);
	assert_int_equal((uint64_t)(d - t->buf) % 8, 0);
	if (rd32(t->buf + 16)) {
		const uint8_t *r = at(t, rd32(t->buf + 16), 0);
		assert_int_equal(sum(r, rd32(r + 4)), 0);
	}
}

static void test_checksums(void **state)
{
	(void)state;
	static const unsigned counts[] = { 1, 2, 64, 255 };

	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		for (int ecam = 0; ecam < 2; ecam++) {
			struct acpi_platform p = platform(counts[i], ecam);
			struct tables t = build(&p, LAYOUT_ACPI_BASE);
			check_all_checksums(&t);
			free(t.buf);
		}
	}
}

/* A gpa that is 16- but not 64-aligned still gets a 64-byte aligned FACS. */
static void test_facs_alignment_odd_gpa(void **state)
{
	(void)state;
	struct acpi_platform p = platform(3, true);
	struct tables t = build(&p, LAYOUT_ACPI_BASE + 0x10);
	const uint8_t *f = find(&t, "FACP");

	check_all_checksums(&t);
	assert_int_equal(rd32(f + 36) % 64, 0);
	assert_memory_equal(at(&t, rd32(f + 36), 64), "FACS", 4);
	free(t.buf);
}

/* Above 4 GiB there is no RSDT and the 32-bit pointers give way to the
 * 64-bit ones. */
static void test_high_gpa(void **state)
{
	(void)state;
	struct acpi_platform p = platform(2, true);
	struct tables t = build(&p, 0x100000000ULL + 0x1000);
	const uint8_t *f = find(&t, "FACP");

	check_all_checksums(&t);
	assert_int_equal(rd32(t.buf + 16), 0);
	assert_int_equal(rd32(f + 36), 0);
	assert_int_equal(rd32(f + 40), 0);
	assert_int_equal(rd64(f + 132) % 64, 0);
	assert_memory_equal(at(&t, rd64(f + 132), 64), "FACS", 4);
	assert_table_ok(at(&t, rd64(f + 140), 0), "DSDT");
	free(t.buf);
}

/* Every size short of the need fails cleanly; ASan catches any overrun
 * because each buffer is allocated at exactly the size passed. */
static void check_too_small(unsigned nr_cpus, bool ecam)
{
	struct acpi_platform p = platform(nr_cpus, ecam);
	struct tables t = build(&p, LAYOUT_ACPI_BASE);

	for (size_t size = 0; size < (size_t)t.len; size++) {
		uint8_t *b = malloc(size ? size : 1);
		assert_non_null(b);
		assert_int_equal(acpi_build(&p, b, size, LAYOUT_ACPI_BASE), -1);
		free(b);
	}
	uint8_t *exact = malloc((size_t)t.len);
	assert_non_null(exact);
	memset(exact, 0xA5, (size_t)t.len); /* stale contents must not leak through */
	assert_int_equal(acpi_build(&p, exact, (size_t)t.len, LAYOUT_ACPI_BASE), t.len);
	assert_memory_equal(exact, t.buf, (size_t)t.len);
	free(exact);
	free(t.buf);
}

static void test_too_small(void **state)
{
	(void)state;
	check_too_small(1, false);
	check_too_small(1, true);
	check_too_small(255, true);
	assert_int_equal(acpi_build(NULL, NULL, 0, 0), -1);
}

static void test_invalid_platform(void **state)
{
	(void)state;
	static uint8_t buf[BUF_SIZE];
	struct acpi_platform good = platform(1, true), p;

	assert_true(acpi_build(&good, buf, sizeof(buf), LAYOUT_ACPI_BASE) > 0);
	assert_int_equal(acpi_build(NULL, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	assert_int_equal(acpi_build(&good, NULL, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	assert_int_equal(acpi_build(&good, buf, sizeof(buf), LAYOUT_ACPI_BASE + 8), -1);

	p = good, p.nr_cpus = 0;
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.nr_cpus = 256;
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.pci_mmio_end = p.pci_mmio_start;
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.ecam_base = LAYOUT_ECAM_BASE + 0x1000;
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.sci_irq = 0;
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.sci_irq = 16;
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.com1_irq = 16;
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.pm1a_evt_port = 0;
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.pm_tmr_port = 0xFFFE; /* 4-byte block would wrap */
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.ioapic_addr = 0x100000000ULL;
	assert_int_equal(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE), -1);
	p = good, p.nr_cpus = 255;
	assert_true(acpi_build(&p, buf, sizeof(buf), LAYOUT_ACPI_BASE) > 0);
}

/* A PCI window reaching above 4 GiB is described with a QWordMemory. */
static void test_qword_window(void **state)
{
	(void)state;
	struct acpi_platform p = platform(1, true);
	static const uint8_t qword_head[] = { 0x8A, 0x2B, 0x00, 0x00, 0x0C, 0x01 };

	p.pci_mmio_start = 0x800000000ULL;
	p.pci_mmio_end = 0x1000000000ULL;
	struct tables t = build(&p, LAYOUT_ACPI_BASE);
	const uint8_t *d = dsdt_of(&t);
	check_all_checksums(&t);
	const uint8_t *q = memmem(d, rd32(d + 4), qword_head, sizeof(qword_head));
	assert_non_null(q);
	assert_int_equal(rd64(q + 14), 0x800000000ULL);
	assert_int_equal(rd64(q + 22), 0xFFFFFFFFFULL);
	assert_int_equal(rd64(q + 38), 0x800000000ULL);
	free(t.buf);
}

static void test_pkglen_encode(void **state)
{
	(void)state;
	uint8_t b[4];

	assert_int_equal(aml_pkglen_encode(b, 0), 1);
	assert_int_equal(b[0], 0x00);
	assert_int_equal(aml_pkglen_encode(b, 63), 1);
	assert_int_equal(b[0], 0x3F);
	assert_int_equal(aml_pkglen_encode(b, 64), 2);
	assert_int_equal(b[0], 0x40);
	assert_int_equal(b[1], 0x04);
	assert_int_equal(aml_pkglen_encode(b, 4095), 2);
	assert_int_equal(b[0], 0x4F);
	assert_int_equal(b[1], 0xFF);
	assert_int_equal(aml_pkglen_encode(b, 4096), 3);
	assert_memory_equal(b, ((uint8_t[]){ 0x80, 0x00, 0x01 }), 3);
	assert_int_equal(aml_pkglen_encode(b, 0xFFFFF), 3);
	assert_memory_equal(b, ((uint8_t[]){ 0x8F, 0xFF, 0xFF }), 3);
	assert_int_equal(aml_pkglen_encode(b, 0x100000), 4);
	assert_memory_equal(b, ((uint8_t[]){ 0xC0, 0x00, 0x00, 0x01 }), 4);
	assert_int_equal(aml_pkglen_encode(b, AML_PKGLEN_MAX), 4);
	assert_memory_equal(b, ((uint8_t[]){ 0xCF, 0xFF, 0xFF, 0xFF }), 4);
	assert_int_equal(aml_pkglen_encode(b, AML_PKGLEN_MAX + 1), 0);
}

/* The value counts its own bytes, so the switch to a longer form happens
 * one or two bytes of body earlier than the raw limits. */
static void test_pkglen_for_body(void **state)
{
	(void)state;
	uint8_t b[4];

	assert_int_equal(aml_pkglen_for_body(b, 62), 1);
	assert_int_equal(b[0], 63);
	assert_int_equal(aml_pkglen_for_body(b, 63), 2);
	assert_memory_equal(b, ((uint8_t[]){ 0x41, 0x04 }), 2); /* 65 */
	assert_int_equal(aml_pkglen_for_body(b, 4093), 2);
	assert_memory_equal(b, ((uint8_t[]){ 0x4F, 0xFF }), 2); /* 4095 */
	assert_int_equal(aml_pkglen_for_body(b, 4094), 3);
	assert_memory_equal(b, ((uint8_t[]){ 0x81, 0x00, 0x01 }), 3); /* 4097 */
	assert_int_equal(aml_pkglen_for_body(b, 0xFFFFC), 3);
	assert_memory_equal(b, ((uint8_t[]){ 0x8F, 0xFF, 0xFF }), 3);
	assert_int_equal(aml_pkglen_for_body(b, 0xFFFFD), 4);
	assert_memory_equal(b, ((uint8_t[]){ 0xC1, 0x00, 0x00, 0x01 }), 4); /* 0x100001 */
	assert_int_equal(aml_pkglen_for_body(b, AML_PKGLEN_MAX - 4), 4);
	assert_int_equal(aml_pkglen_for_body(b, AML_PKGLEN_MAX - 3), 0);
}

/* Bodies that straddle the form boundaries come out with the right
 * PkgLength in front and the body intact behind it. */
static void test_pkg_nesting_boundaries(void **state)
{
	(void)state;
	static const size_t bodies[] = { 0, 58, 59, 60, 4088, 4089, 4090, 0xFFFF8, 0xFFFF9 };
	size_t cap = 0x100100;
	uint8_t *buf = malloc(cap), *filler = malloc(cap);

	assert_non_null(buf);
	assert_non_null(filler);
	for (size_t i = 0; i < cap; i++)
		filler[i] = (uint8_t)(i * 7 + 3);
	for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
		struct aml a;
		uint8_t pl[4];
		size_t n, mark;

		/* Scope(PCI0) { <raw bytes> }: body = 4-byte name + raw bytes. */
		aml_init(&a, buf, cap);
		mark = aml_scope_begin(&a, "PCI0");
		aml_bytes(&a, filler, bodies[i]);
		aml_scope_end(&a, mark);
		assert_false(a.err);
		n = aml_pkglen_for_body(pl, 4 + bodies[i]);
		assert_int_equal(a.len, 1 + n + 4 + bodies[i]);
		assert_int_equal(buf[0], 0x10);
		assert_memory_equal(buf + 1, pl, n);
		assert_memory_equal(buf + 1 + n, "PCI0", 4);
		assert_memory_equal(buf + 1 + n + 4, filler, bodies[i]);
	}
	free(buf);
	free(filler);
}

static void test_eisaid(void **state)
{
	(void)state;
	uint32_t v = 0;

	assert_true(aml_eisaid_value("PNP0A03", &v));
	assert_int_equal(v, 0x030AD041);
	assert_true(aml_eisaid_value("PNP0A08", &v));
	assert_int_equal(v, 0x080AD041);
	assert_true(aml_eisaid_value("PNP0501", &v));
	assert_int_equal(v, 0x0105D041);
	assert_true(aml_eisaid_value("PNP0b00", &v));
	assert_int_equal(v, 0x000BD041);
	v = 0x1234;
	assert_false(aml_eisaid_value("PNP0A0", &v));
	assert_false(aml_eisaid_value("PNP0A033", &v));
	assert_false(aml_eisaid_value("pnp0A03", &v));
	assert_false(aml_eisaid_value("PNP0G03", &v));
	assert_int_equal(v, 0x1234);
}

static void test_integers(void **state)
{
	(void)state;
	static const struct {
		uint64_t v;
		uint8_t enc[9];
		size_t len;
	} cases[] = {
		{ 0, { 0x00 }, 1 },
		{ 1, { 0x01 }, 1 },
		{ 2, { 0x0A, 0x02 }, 2 },
		{ 0xFF, { 0x0A, 0xFF }, 2 },
		{ 0x100, { 0x0B, 0x00, 0x01 }, 3 },
		{ 0xFFFF, { 0x0B, 0xFF, 0xFF }, 3 },
		{ 0x10000, { 0x0C, 0x00, 0x00, 0x01, 0x00 }, 5 },
		{ 0xFFFFFFFF, { 0x0C, 0xFF, 0xFF, 0xFF, 0xFF }, 5 },
		{ 0x100000000ULL, { 0x0E, 0, 0, 0, 0, 1, 0, 0, 0 }, 9 },
		{ UINT64_MAX, { 0x0E, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF }, 9 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint8_t buf[16];
		struct aml a;

		aml_init(&a, buf, sizeof(buf));
		aml_integer(&a, cases[i].v);
		assert_false(a.err);
		assert_int_equal(a.len, cases[i].len);
		assert_memory_equal(buf, cases[i].enc, cases[i].len);
	}
}

static void check_name(const char *name, const void *enc, size_t len)
{
	uint8_t buf[64];
	struct aml a;

	aml_init(&a, buf, sizeof(buf));
	aml_namestring(&a, name);
	assert_false(a.err);
	assert_int_equal(a.len, len);
	assert_memory_equal(buf, enc, len);
}

static void check_bad_name(const char *name)
{
	uint8_t buf[64];
	struct aml a;

	aml_init(&a, buf, sizeof(buf));
	aml_namestring(&a, name);
	assert_true(a.err);
}

static void test_names(void **state)
{
	(void)state;
	check_name("_S5", "_S5_", 4);
	check_name("\\_S5", "\\_S5_", 5);
	check_name("PCI0", "PCI0", 4);
	check_name("\\_SB.PCI0", "\\\x2E_SB_PCI0", 10);
	check_name("\\_SB.PCI0.ISA", "\\\x2F\x03_SB_PCI0ISA_", 15);
	check_name("^^RTC", "^^RTC_", 6);
	check_name("", "\0", 1);
	check_name("\\", "\\\0", 2);
	check_bad_name("pci0");
	check_bad_name("0PCI");
	check_bad_name("PCI00");
	check_bad_name("_SB..PCI0");
	check_bad_name("_SB.");
	check_bad_name("\\^_SB");
}

static void test_strings_and_packages(void **state)
{
	(void)state;
	uint8_t buf[64];
	struct aml a;
	size_t outer, inner;
	static const uint8_t want[] = {
		0x08, 'N', 'A', 'M', '_', 0x12, 0x0C, 0x02, /* Name(NAM, Package(2) { */
		0x0D, 'h', 'i', 0x00,                       /*   "hi",                */
		0x12, 0x05, 0x02, 0x01, 0x0A, 0x07,         /*   Package(2){1, 7} }) */
	};

	aml_init(&a, buf, sizeof(buf));
	aml_name(&a, "NAM");
	outer = aml_package_begin(&a);
	aml_string(&a, "hi");
	inner = aml_package_begin(&a);
	aml_integer(&a, 1);
	aml_integer(&a, 7);
	aml_package_end(&a, inner, 2);
	aml_package_end(&a, outer, 2);
	assert_false(a.err);
	assert_int_equal(a.len, sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));

	aml_init(&a, buf, sizeof(buf));
	aml_string(&a, "bad\n");
	assert_true(a.err);
	aml_init(&a, buf, sizeof(buf));
	outer = aml_package_begin(&a);
	aml_package_end(&a, outer, 256);
	assert_true(a.err);
}

static void test_resources(void **state)
{
	(void)state;
	uint8_t buf[128];
	struct aml a;
	size_t mark;
	static const uint8_t want[] = {
		0x11, 0x21, 0x0A, 0x1E, /* Buffer, PkgLength 33, size 30 */
		0x23, 0x00, 0x02, 0x18, /* IRQ(Level, ActiveLow, Shared) {9} */
		0x89, 0x06, 0x00, 0x09, 0x01, 0x10, 0x00, 0x00, 0x00, /* Interrupt(..., Level, ActiveHigh, Shared) {16} */
		0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xE0, 0x00, 0x00, 0x00, 0x10,
		0x22, 0x01, 0x00, /* IRQNoFlags {0} */
		0x79, 0x00,
	};

	aml_init(&a, buf, sizeof(buf));
	mark = aml_restemplate_begin(&a);
	aml_res_irq(&a, 9, true, true, true);
	aml_res_ext_irq(&a, 16, true, false, true);
	aml_res_mem32_fixed(&a, 0xE0000000, 0x10000000);
	aml_res_irq_noflags(&a, 0);
	aml_restemplate_end(&a, mark);
	assert_false(a.err);
	assert_int_equal(a.len, sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));

	aml_init(&a, buf, sizeof(buf));
	aml_res_irq_noflags(&a, 16);
	assert_true(a.err);
	aml_init(&a, buf, sizeof(buf));
	aml_res_word_io(&a, 0, 0xFFFF); /* length 0x10000 does not fit a word */
	assert_true(a.err);
	aml_init(&a, buf, sizeof(buf));
	aml_res_dword_mem(&a, 2, 1, false);
	assert_true(a.err);
}

/* Running out of room anywhere latches the error and writes nothing past
 * the buffer, including when a PkgLength is inserted at the end. */
static void test_builder_overflow(void **state)
{
	(void)state;
	for (size_t cap = 0; cap < 24; cap++) {
		uint8_t *buf = malloc(cap ? cap : 1);
		struct aml a;
		size_t mark;

		assert_non_null(buf);
		aml_init(&a, buf, cap);
		mark = aml_device_begin(&a, "\\_SB.DEV0");
		aml_name_integer(&a, "_UID", 0x12345678);
		aml_device_end(&a, mark);
		/* The whole device is 23 bytes. */
		assert_int_equal(a.err, cap < 23);
		if (!a.err)
			assert_int_equal(a.len, 23);
		assert_true(a.len <= cap);
		free(buf);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rsdp),
		cmocka_unit_test(test_root_tables),
		cmocka_unit_test(test_fadt),
		cmocka_unit_test(test_madt),
		cmocka_unit_test(test_mcfg_with_ecam),
		cmocka_unit_test(test_no_mcfg_without_ecam),
		cmocka_unit_test(test_dsdt_devices),
		cmocka_unit_test(test_s5_package),
		cmocka_unit_test(test_checksums),
		cmocka_unit_test(test_facs_alignment_odd_gpa),
		cmocka_unit_test(test_high_gpa),
		cmocka_unit_test(test_too_small),
		cmocka_unit_test(test_invalid_platform),
		cmocka_unit_test(test_qword_window),
		cmocka_unit_test(test_pkglen_encode),
		cmocka_unit_test(test_pkglen_for_body),
		cmocka_unit_test(test_pkg_nesting_boundaries),
		cmocka_unit_test(test_eisaid),
		cmocka_unit_test(test_integers),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_strings_and_packages),
		cmocka_unit_test(test_resources),
		cmocka_unit_test(test_builder_overflow),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
