/* Just enough ACPI to count CPUs, route ISA IRQs and power off. */
#include "rt.h"

struct rsdp {
	char sig[8];
	uint8_t checksum;
	char oem_id[6];
	uint8_t revision;
	uint32_t rsdt;
	uint32_t length;
	uint64_t xsdt;
	uint8_t ext_checksum, rsvd[3];
} __attribute__((packed));

/* Unaligned little-endian reads: ACPI packs fields at odd offsets. */
static uint32_t rd32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static uint8_t sum(const void *p, size_t n)
{
	uint8_t s = 0;

	for (const uint8_t *b = p; n--; b++)
		s += *b;
	return s;
}

static const struct rsdp *find_rsdp(void)
{
	uint64_t pa = rt_rsdp_from_boot();

	if (pa && !memcmp((const void *)pa, "RSD PTR ", 8))
		return (const struct rsdp *)pa;
	for (uint64_t a = 0xe0000; a < 0x100000; a += 16) {
		const struct rsdp *r = (const void *)a;

		if (!memcmp(r->sig, "RSD PTR ", 8) && sum(r, 20) == 0)
			return r;
	}
	return NULL;
}

static const struct acpi_header *fadt(void);

const struct acpi_header *acpi_find_table(const char sig[4])
{
	const struct rsdp *r = find_rsdp();

	if (!r)
		return NULL;
	if (!memcmp(sig, "DSDT", 4)) {
		/* The DSDT hangs off the FADT, not the RSDT/XSDT. */
		const uint8_t *f = (const uint8_t *)fadt();
		uint64_t pa = 0;

		if (!f)
			return NULL;
		if (((const struct acpi_header *)f)->length >= 148)
			pa = rd64(f + 140);     /* X_DSDT */
		if (!pa)
			pa = rd32(f + 40);
		return (const struct acpi_header *)pa;
	}

	bool x = r->revision >= 2 && r->xsdt;
	const struct acpi_header *root = (const void *)(x ? r->xsdt : (uint64_t)r->rsdt);
	size_t width = x ? 8 : 4;
	const uint8_t *ent = (const uint8_t *)root + sizeof(*root);
	size_t n = (root->length - sizeof(*root)) / width;

	for (size_t i = 0; i < n; i++) {
		uint64_t pa = x ? rd64(ent + i * 8) : rd32(ent + i * 4);
		const struct acpi_header *t = (const void *)pa;

		if (pa && !memcmp(t->sig, sig, 4))
			return t;
	}
	return NULL;
}

static const struct acpi_header *fadt(void)
{
	return acpi_find_table("FACP");
}

int madt_foreach(bool (*fn)(const struct madt_entry *e, void *ctx), void *ctx)
{
	const struct acpi_header *m = acpi_find_table("APIC");

	if (!m)
		return -1;
	const uint8_t *p = (const uint8_t *)m + sizeof(*m) + 8;  /* skip LAPIC addr, flags */
	const uint8_t *end = (const uint8_t *)m + m->length;
	int n = 0;

	while (p + 2 <= end) {
		const struct madt_entry *e = (const void *)p;

		if (e->length < 2 || p + e->length > end)
			break;
		n++;
		if (!fn(e, ctx))
			break;
		p += e->length;
	}
	return n;
}

struct cpus_ctx {
	uint32_t *ids;
	int max, n;
};

static bool cpus_cb(const struct madt_entry *e, void *ctx)
{
	struct cpus_ctx *c = ctx;
	const uint8_t *b = (const uint8_t *)e;
	uint32_t id;

	if (e->type == MADT_LAPIC && (rd32(b + 4) & 1))
		id = b[3];
	else if (e->type == MADT_X2APIC && (rd32(b + 8) & 1))
		id = rd32(b + 4);
	else
		return true;
	if (c->n < c->max && c->ids)
		c->ids[c->n] = id;
	c->n++;
	return true;
}

int madt_cpus(uint32_t *apic_ids, int max)
{
	struct cpus_ctx c = { apic_ids, max, 0 };

	return madt_foreach(cpus_cb, &c) < 0 ? -1 : c.n;
}

uint64_t madt_lapic_addr(void)
{
	const struct acpi_header *m = acpi_find_table("APIC");

	return m ? rd32(m + 1) : LAPIC_BASE;
}

struct ioapic_ctx {
	uint32_t addr, gsi_base;
	bool found;
};

static bool ioapic_cb(const struct madt_entry *e, void *ctx)
{
	struct ioapic_ctx *c = ctx;
	const uint8_t *b = (const uint8_t *)e;

	if (e->type != MADT_IOAPIC)
		return true;
	c->addr = rd32(b + 4);
	c->gsi_base = rd32(b + 8);
	c->found = true;
	return false;
}

bool madt_ioapic(uint32_t *addr, uint32_t *gsi_base)
{
	struct ioapic_ctx c = { 0, 0, false };

	madt_foreach(ioapic_cb, &c);
	*addr = c.addr;
	*gsi_base = c.gsi_base;
	return c.found;
}

struct iso_ctx {
	uint8_t irq;
	uint32_t gsi;
	uint16_t flags;
};

static bool iso_cb(const struct madt_entry *e, void *ctx)
{
	struct iso_ctx *c = ctx;
	const uint8_t *b = (const uint8_t *)e;

	if (e->type != MADT_ISO || b[2] != 0 || b[3] != c->irq)
		return true;
	c->gsi = rd32(b + 4);
	c->flags = b[8] | b[9] << 8;
	return false;
}

uint32_t madt_isa_gsi(uint8_t irq, uint16_t *flags)
{
	struct iso_ctx c = { irq, irq, 0 };   /* identity unless overridden */

	madt_foreach(iso_cb, &c);
	if (flags)
		*flags = c.flags;
	return c.gsi;
}

/* Decodes one AML integer (ZeroOp, OneOp, BytePrefix, WordPrefix). */
static int aml_int(const uint8_t **pp, const uint8_t *end)
{
	const uint8_t *p = *pp;

	if (p >= end)
		return -1;
	switch (*p) {
	case 0x00: *pp = p + 1; return 0;
	case 0x01: *pp = p + 1; return 1;
	case 0x0a: if (p + 2 > end) return -1; *pp = p + 2; return p[1];
	case 0x0b: if (p + 3 > end) return -1; *pp = p + 3; return p[1] | p[2] << 8;
	default: return -1;
	}
}

/* SLP_TYPa from Name(_S5_, Package(){a, b, ...}) in the DSDT. */
static int s5_slp_typa(void)
{
	const struct acpi_header *d = acpi_find_table("DSDT");

	if (!d || memcmp(d->sig, "DSDT", 4))
		return -1;
	const uint8_t *aml = (const uint8_t *)d + sizeof(*d);
	const uint8_t *end = (const uint8_t *)d + d->length;

	for (const uint8_t *p = aml; p + 8 < end; p++) {
		if (memcmp(p, "_S5_", 4))
			continue;
		/* Must be a NameOp target (optionally root-prefixed), not a use. */
		if (!(p[-1] == 0x08 || (p[-1] == '\\' && p[-2] == 0x08)))
			continue;
		const uint8_t *q = p + 4;
		if (*q++ != 0x12)               /* PackageOp */
			continue;
		q += 1 + (*q >> 6);             /* PkgLength: lead byte + 0-3 more */
		q++;                            /* NumElements */
		return aml_int(&q, end);
	}
	return -1;
}

int acpi_poweroff(void)
{
	const uint8_t *f = (const uint8_t *)fadt();
	int typ = s5_slp_typa();

	if (!f || typ < 0) {
		kprintf("acpi: %s not found\n", f ? "_S5_" : "FADT");
		return -1;
	}

	uint32_t len = ((const struct acpi_header *)f)->length;
	uint16_t val = (typ & 7) << 10 | 1 << 13;   /* SLP_TYPa | SLP_EN */
	uint8_t space = 1;
	uint64_t addr = 0;

	if (len >= 184 && rd64(f + 176)) {             /* X_PM1a_CNT_BLK */
		space = f[172];
		addr = rd64(f + 176);
	} else {
		addr = rd32(f + 64);
	}
	if (!addr) {
		kprintf("acpi: no PM1a_CNT_BLK\n");
		return -1;
	}
	kprintf("acpi: S5 via PM1a_CNT %s 0x%lx <- 0x%x\n",
		space == 0 ? "mmio" : "port", addr, val);
	if (space == 0)
		mmio_write16(addr, val);
	else
		outw(addr, val);
	/* The VMM may take a moment to stop the vCPU. */
	udelay(2000000);
	kprintf("acpi: still running after S5 request\n");
	return -1;
}
