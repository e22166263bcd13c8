/* Ring-3 virtio driver for the micro-guests; see virtio_drv.h. */
#include "virtio_drv.h"

/* ---- guest memory ---------------------------------------------------- */

static uint64_t heap_next, heap_end;

static void heap_init(void)
{
	const struct rt_mem_region *r;
	size_t n = rt_memmap(&r);
	uint64_t start = ((uint64_t)__image_end + 0xfffff) & ~0xfffffull;

	for (size_t i = 0; i < n; i++) {
		if (r[i].type != E820_RAM)
			continue;
		if (start >= r[i].addr && start < r[i].addr + r[i].size) {
			heap_next = start;
			heap_end = r[i].addr + r[i].size;
			/* The identity map ends at 4 GiB or the top of RAM. */
			return;
		}
	}
	kprintf("virtio: FAIL: no RAM region above the image (0x%lx)\n", start);
	debug_exit(FAIL);
}

void *vmem_alloc(uint64_t size, uint64_t align)
{
	if (!heap_next)
		heap_init();
	if (align < 16)
		align = 16;
	uint64_t a = (heap_next + align - 1) & ~(align - 1);
	if (a + size > heap_end || a + size < a) {
		kprintf("virtio: FAIL: out of guest memory (want %lu bytes at 0x%lx, end 0x%lx)\n",
			size, a, heap_end);
		debug_exit(FAIL);
	}
	heap_next = a + size;
	memset((void *)a, 0, size);
	return (void *)a;
}

uint64_t vmem_ram_top(void)
{
	const struct rt_mem_region *r;
	size_t n = rt_memmap(&r);
	uint64_t top = 0;

	for (size_t i = 0; i < n; i++)
		if (r[i].type == E820_RAM && r[i].addr + r[i].size > top)
			top = r[i].addr + r[i].size;
	return top;
}

bool vmem_is_ram(uint64_t addr, uint64_t len)
{
	const struct rt_mem_region *r;
	size_t n = rt_memmap(&r);

	for (size_t i = 0; i < n; i++)
		if (r[i].type == E820_RAM && addr >= r[i].addr && addr + len <= r[i].addr + r[i].size &&
		    addr + len >= addr)
			return true;
	return false;
}

/* Tiny formatter for the device names (the runtime has no snprintf):
 * a prefix, a hex number (`digits` wide, 0 = as needed), a middle, a
 * second hex number (skipped when its width is -1) and a suffix. */
static void str_build(char *out, size_t n, const char *a, uint64_t x, int xd, const char *b, uint64_t y,
		      int yd, const char *c)
{
	size_t k = 0;
	const char *parts[3] = { a, b, c };
	uint64_t nums[2] = { x, y };
	int widths[2] = { xd, yd };
	for (int i = 0; i < 3; i++) {
		for (const char *p = parts[i]; *p && k + 1 < n; p++)
			out[k++] = *p;
		if (i == 2 || widths[i] < 0)
			continue;
		char dig[16];
		int m = 0;
		uint64_t v = nums[i];
		do {
			dig[m++] = "0123456789abcdef"[v & 15];
			v >>= 4;
		} while (v && m < 16);
		while (m < widths[i] && m < 16)
			dig[m++] = '0';
		while (m && k + 1 < n)
			out[k++] = dig[--m];
	}
	out[k] = 0;
}

/* ---- cmdline helpers --------------------------------------------------- */

bool cmdline_str(const char *key, char *out, size_t outlen)
{
	size_t kl = strlen(key);
	const char *p = cmdline();

	while (*p) {
		while (*p == ' ')
			p++;
		const char *end = p;
		while (*end && *end != ' ')
			end++;
		if ((size_t)(end - p) > kl && !strncmp(p, key, kl) && p[kl] == '=') {
			size_t n = (size_t)(end - p) - kl - 1;
			if (n >= outlen)
				n = outlen - 1;
			memcpy(out, p + kl + 1, n);
			out[n] = 0;
			return true;
		}
		p = end;
	}
	return false;
}

enum vtransport vt_from_cmdline(void)
{
	char t[16];
	if (cmdline_str("transport", t, sizeof(t)) && !strncmp(t, "mmio", 5))
		return VT_MMIO;
	return VT_PCI;
}

const char *vt_name(enum vtransport t)
{
	return t == VT_MMIO ? "mmio" : "pci";
}

/* ---- PCI config space -------------------------------------------------- */

static uint32_t cfg_addr(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off)
{
	return 0x80000000u | (uint32_t)bus << 16 | (uint32_t)dev << 11 | (uint32_t)fn << 8 | (off & 0xfc);
}

uint32_t pci_cfg_read32(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off)
{
	outl(0xcf8, cfg_addr(bus, dev, fn, off));
	return inl(0xcfc);
}

void pci_cfg_write32(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off, uint32_t v)
{
	outl(0xcf8, cfg_addr(bus, dev, fn, off));
	outl(0xcfc, v);
}

uint16_t pci_cfg_read16(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off)
{
	outl(0xcf8, cfg_addr(bus, dev, fn, off));
	return inw(0xcfc + (off & 2));
}

void pci_cfg_write16(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off, uint16_t v)
{
	outl(0xcf8, cfg_addr(bus, dev, fn, off));
	outw(0xcfc + (off & 2), v);
}

uint8_t pci_cfg_read8(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off)
{
	outl(0xcf8, cfg_addr(bus, dev, fn, off));
	return inb(0xcfc + (off & 3));
}

#define PCI_COMMAND        0x04
#define PCI_CMD_MEM        0x02
#define PCI_CMD_MASTER     0x04
#define PCI_CMD_INTX_OFF   0x400
#define PCI_CAP_PTR        0x34
#define PCI_CAP_VNDR       0x09
#define PCI_CAP_MSIX       0x11

/* Top of the 32-bit window we may put unassigned BARs in (below the IOAPIC). */
#define BAR_WINDOW_LO      0xc0000000ull
#define BAR_WINDOW_HI      0xfec00000ull

struct pci_bar {
	uint64_t addr, size;
	bool io, is64;
};

static struct pci_bar pci_bar_probe(uint8_t bus, uint8_t dev, uint8_t fn, int bar)
{
	struct pci_bar b = { 0 };
	uint8_t off = (uint8_t)(0x10 + 4 * bar);
	uint32_t lo = pci_cfg_read32(bus, dev, fn, off);

	if (lo & 1) {
		b.io = true;
		b.addr = lo & ~3u;
		return b;
	}
	b.is64 = ((lo >> 1) & 3) == 2;
	uint32_t hi = b.is64 ? pci_cfg_read32(bus, dev, fn, off + 4) : 0;
	b.addr = ((uint64_t)hi << 32) | (lo & ~0xfu);
	/* Size: all-ones, read back, restore (decoding is off meanwhile). */
	uint16_t cmd = pci_cfg_read16(bus, dev, fn, PCI_COMMAND);
	pci_cfg_write16(bus, dev, fn, PCI_COMMAND, cmd & ~(PCI_CMD_MEM | 1));
	pci_cfg_write32(bus, dev, fn, off, 0xffffffffu);
	uint32_t slo = pci_cfg_read32(bus, dev, fn, off) & ~0xfu;
	uint32_t shi = 0xffffffffu;
	if (b.is64) {
		pci_cfg_write32(bus, dev, fn, off + 4, 0xffffffffu);
		shi = pci_cfg_read32(bus, dev, fn, off + 4);
		pci_cfg_write32(bus, dev, fn, off + 4, hi);
	}
	pci_cfg_write32(bus, dev, fn, off, lo);
	pci_cfg_write16(bus, dev, fn, PCI_COMMAND, cmd);
	uint64_t mask = ((uint64_t)shi << 32) | slo;
	b.size = mask ? (~mask + 1) : 0;
	if (!b.is64)
		b.size &= 0xffffffffull;
	return b;
}

/* Where an unassigned BAR can go: past every 32-bit memory BAR on bus 0
 * inside the window (firmware usually leaves room above). */
static uint64_t bar_window_next;

static uint64_t pci_find_free(uint64_t size)
{
	if (!bar_window_next) {
		uint64_t top = BAR_WINDOW_LO;
		for (uint8_t dev = 0; dev < 32; dev++) {
			if ((pci_cfg_read32(0, dev, 0, 0) & 0xffff) == 0xffff)
				continue;
			for (int bar = 0; bar < 6; bar++) {
				uint32_t lo = pci_cfg_read32(0, dev, 0, (uint8_t)(0x10 + 4 * bar));
				if (lo & 1)
					continue;
				bool is64 = ((lo >> 1) & 3) == 2;
				uint64_t a = lo & ~0xfu;
				if (is64) {
					if (pci_cfg_read32(0, dev, 0, (uint8_t)(0x14 + 4 * bar)))
						a = 0;
					bar++;
				}
				if (a >= top && a < BAR_WINDOW_HI) {
					struct pci_bar b = pci_bar_probe(0, dev, 0, is64 ? bar - 1 : bar);
					if (a + b.size > top)
						top = a + b.size;
				}
			}
		}
		bar_window_next = top;
	}
	uint64_t a = (bar_window_next + size - 1) & ~(size - 1);
	if (a + size > BAR_WINDOW_HI)
		return 0;
	bar_window_next = a + size;
	return a;
}

static uint64_t mem_bar(uint8_t bus, uint8_t dev, uint8_t fn, int bar, const char *who, const char *where)
{
	struct pci_bar b = pci_bar_probe(bus, dev, fn, bar);
	if (b.io || !b.size)
		return 0;
	if (b.addr && b.addr + b.size <= BAR_WINDOW_HI)
		return b.addr;
	uint64_t a = pci_find_free(b.size < 4096 ? 4096 : b.size);
	if (!a) {
		kprintf("%s: %s BAR%d: no room below 0x%lx\n", who, where, bar, (uint64_t)BAR_WINDOW_HI);
		return 0;
	}
	kprintf("%s: %s BAR%d (%lu KiB) at 0x%lx is unusable here: moving it to 0x%lx\n",
		who, where, bar, b.size >> 10, b.addr, a);
	uint8_t off = (uint8_t)(0x10 + 4 * bar);
	uint16_t cmd = pci_cfg_read16(bus, dev, fn, PCI_COMMAND);
	pci_cfg_write16(bus, dev, fn, PCI_COMMAND, cmd & ~PCI_CMD_MEM);
	uint32_t lo = pci_cfg_read32(bus, dev, fn, off);
	pci_cfg_write32(bus, dev, fn, off, (uint32_t)a | (lo & 0xf));
	if (b.is64)
		pci_cfg_write32(bus, dev, fn, off + 4, 0);
	pci_cfg_write16(bus, dev, fn, PCI_COMMAND, cmd);
	return a;
}

/* Makes sure `bar` is a memory BAR mapped below 4 GiB; assigns it in the
 * 32-bit window if the firmware left it unassigned or put it above.
 * Returns its address or 0. */
static uint64_t pci_bar_ensure(struct vdev *d, int bar)
{
	return mem_bar(d->bus, d->dev, d->fn, bar, "virtio", d->where);
}

uint64_t pci_mem_bar(uint8_t bus, uint8_t dev, uint8_t fn, int bar, const char *where)
{
	return mem_bar(bus, dev, fn, bar, "pci", where);
}

bool pci_find_id(uint16_t vendor, uint16_t device, int nth, uint8_t *dev, uint8_t *fn)
{
	for (uint8_t dv = 0; dv < 32; dv++) {
		uint32_t id0 = pci_cfg_read32(0, dv, 0, 0);
		if ((id0 & 0xffff) == 0xffff)
			continue;
		/* Header type bit 7: a multi-function device. */
		uint8_t nfn = (pci_cfg_read32(0, dv, 0, 0x0c) >> 16) & 0x80 ? 8 : 1;
		for (uint8_t f = 0; f < nfn; f++) {
			uint32_t id = f ? pci_cfg_read32(0, dv, f, 0) : id0;
			if ((id & 0xffff) != vendor || (id >> 16) != device || nth-- > 0)
				continue;
			*dev = dv;
			*fn = f;
			return true;
		}
	}
	return false;
}

static bool pci_setup(struct vdev *d)
{
	uint8_t bus = d->bus, dev = d->dev, fn = d->fn;
	uint64_t bar_addr[6] = { 0 };
	bool have[6] = { false };
	bool got_common = false, got_notify = false, got_isr = false, got_dev = false;

	uint16_t status = pci_cfg_read16(bus, dev, fn, 0x06);
	if (!(status & 0x10)) {
		kprintf("virtio: %s has no capability list\n", d->where);
		return false;
	}
	uint8_t cap = pci_cfg_read32(bus, dev, fn, PCI_CAP_PTR) & 0xfc;
	for (int guard = 0; cap && guard < 48; guard++) {
		uint32_t w0 = pci_cfg_read32(bus, dev, fn, cap);
		uint8_t id = w0 & 0xff, next = (w0 >> 8) & 0xfc;
		if (id == PCI_CAP_MSIX) {
			d->msix_cap = cap;
			d->msix_size = (uint16_t)(((w0 >> 16) & 0x7ff) + 1);
			uint32_t tbl = pci_cfg_read32(bus, dev, fn, cap + 4);
			int bir = tbl & 7;
			if (bir < 6) {
				if (!have[bir]) {
					bar_addr[bir] = pci_bar_ensure(d, bir);
					have[bir] = true;
				}
				d->msix_table = bar_addr[bir] ? bar_addr[bir] + (tbl & ~7u) : 0;
			}
		} else if (id == PCI_CAP_VNDR) {
			uint8_t type = (w0 >> 24) & 0xff;
			uint32_t w1 = pci_cfg_read32(bus, dev, fn, cap + 4);
			int bar = w1 & 0xff;
			uint32_t off = pci_cfg_read32(bus, dev, fn, cap + 8);
			if (type >= 1 && type <= 4 && bar < 6) {
				if (!have[bar]) {
					bar_addr[bar] = pci_bar_ensure(d, bar);
					have[bar] = true;
				}
				uint64_t a = bar_addr[bar];
				/* The first usable capability of each type wins. */
				if (a) {
					a += off;
					if (type == 1 && !got_common) {
						d->common = a;
						got_common = true;
						d->cap_bar[1] = (int8_t)bar;
					} else if (type == 2 && !got_notify) {
						d->notify = a;
						d->notify_mult = pci_cfg_read32(bus, dev, fn, cap + 16);
						got_notify = true;
						d->cap_bar[2] = (int8_t)bar;
					} else if (type == 3 && !got_isr) {
						d->isr = a;
						got_isr = true;
						d->cap_bar[3] = (int8_t)bar;
					} else if (type == 4 && !got_dev) {
						d->devcfg = a;
						got_dev = true;
						d->cap_bar[4] = (int8_t)bar;
					}
				}
			}
		}
		cap = next;
	}
	if (!got_common || !got_notify || !got_isr) {
		kprintf("virtio: %s lacks modern capabilities (common %d notify %d isr %d)\n", d->where,
			got_common, got_notify, got_isr);
		return false;
	}
	for (int i = 0; i < 6; i++)
		d->bar_addr[i] = bar_addr[i];
	uint16_t cmd = pci_cfg_read16(bus, dev, fn, PCI_COMMAND);
	pci_cfg_write16(bus, dev, fn, PCI_COMMAND, cmd | PCI_CMD_MEM | PCI_CMD_MASTER);
	return true;
}

uint64_t pci_free_window(uint64_t size)
{
	return pci_find_free(size);
}

uint64_t pci_bar_size(uint8_t bus, uint8_t dev, uint8_t fn, int bar)
{
	return pci_bar_probe(bus, dev, fn, bar).size;
}

void vdev_pci_mem_enable(struct vdev *d, bool on)
{
	uint16_t cmd = pci_cfg_read16(d->bus, d->dev, d->fn, PCI_COMMAND);
	cmd = on ? (cmd | PCI_CMD_MEM) : (cmd & ~PCI_CMD_MEM);
	pci_cfg_write16(d->bus, d->dev, d->fn, PCI_COMMAND, cmd);
}

void vdev_pci_move_bar(struct vdev *d, int bar, uint64_t new_addr)
{
	uint8_t off = (uint8_t)(0x10 + 4 * bar);
	uint64_t old = d->bar_addr[bar];
	int64_t delta = (int64_t)(new_addr - old);
	vdev_pci_mem_enable(d, false);
	uint32_t lo = pci_cfg_read32(d->bus, d->dev, d->fn, off);
	pci_cfg_write32(d->bus, d->dev, d->fn, off, (uint32_t)new_addr | (lo & 0xf));
	if (((lo >> 1) & 3) == 2)
		pci_cfg_write32(d->bus, d->dev, d->fn, off + 4, (uint32_t)(new_addr >> 32));
	vdev_pci_mem_enable(d, true);
	d->bar_addr[bar] = new_addr;
	if (d->cap_bar[1] == bar)
		d->common += (uint64_t)delta;
	if (d->cap_bar[2] == bar)
		d->notify += (uint64_t)delta;
	if (d->cap_bar[3] == bar)
		d->isr += (uint64_t)delta;
	if (d->cap_bar[4] == bar)
		d->devcfg += (uint64_t)delta;
	if (d->msix_table >= old && d->msix_table < old + 0x100000 &&
	    (pci_cfg_read32(d->bus, d->dev, d->fn, (uint8_t)(d->msix_cap + 4)) & 7) == (uint32_t)bar)
		d->msix_table += (uint64_t)delta;
}

static bool pci_find(struct vdev *d, uint16_t device_id, int nth)
{
	for (uint8_t dev = 0; dev < 32; dev++) {
		uint32_t id = pci_cfg_read32(0, dev, 0, 0);
		if ((id & 0xffff) != 0x1af4)
			continue;
		uint16_t did = id >> 16;
		bool match = did == 0x1040 + device_id;
		/* Transitional devices: 0x1000..0x103f, type in the subsystem id. */
		if (!match && did >= 0x1000 && did <= 0x103f)
			match = (pci_cfg_read32(0, dev, 0, 0x2c) >> 16) == device_id;
		if (!match || nth-- > 0)
			continue;
		d->t = VT_PCI;
		d->bus = 0;
		d->dev = dev;
		d->fn = 0;
		d->pci_device = did;
		d->device_id = device_id;
		str_build(d->where, sizeof(d->where), "pci 00:", dev, 2, ".0 [1af4:", did, 4, "]");
		if (!pci_setup(d))
			return false;
		kprintf("virtio: %s: common 0x%lx notify 0x%lx (x%u) isr 0x%lx device 0x%lx\n", d->where,
			d->common, d->notify, d->notify_mult, d->isr, d->devcfg);
		return true;
	}
	return false;
}

/* ---- MMIO --------------------------------------------------------------- */

#define VMMIO_MAGIC   0x74726976
static const struct { uint64_t base, stride; int n; } mmio_layouts[] = {
	{ 0xd0000000ull, 0x1000, 4 },     /* Kestrel */
	{ 0xfeb00000ull, 0x200, 24 },     /* QEMU microvm */
};

static bool mmio_find(struct vdev *d, uint16_t device_id, int nth)
{
	uint64_t only = 0;
	cmdline_u64("mmio_base", &only);
	for (size_t l = 0; l < ARRAY_SIZE(mmio_layouts); l++) {
		for (int i = 0; i < mmio_layouts[l].n; i++) {
			uint64_t base = mmio_layouts[l].base + (uint64_t)i * mmio_layouts[l].stride;
			if (only && base != only)
				continue;
			if (mmio_read32(base) != VMMIO_MAGIC)
				continue;
			uint32_t ver = mmio_read32(base + 4), id = mmio_read32(base + 8);
			if (id != device_id)
				continue;
			if (ver != 2) {
				kprintf("virtio: mmio 0x%lx: version %u (legacy?), skipped\n", base, ver);
				continue;
			}
			if (nth-- > 0)
				continue;
			d->t = VT_MMIO;
			d->base = base;
			d->device_id = device_id;
			str_build(d->where, sizeof(d->where), "mmio 0x", base, 0, "", 0, -1, "");
			return true;
		}
	}
	return false;
}

bool vdev_find(struct vdev *d, enum vtransport t, uint16_t device_id, int nth)
{
	memset(d, 0, sizeof(*d));
	bool ok = t == VT_MMIO ? mmio_find(d, device_id, nth) : pci_find(d, device_id, nth);
	if (ok)
		kprintf("virtio: device type %u at %s\n", device_id, d->where);
	else
		kprintf("virtio: no device type %u (#%d) on %s\n", device_id, nth, vt_name(t));
	return ok;
}

/* ---- register access ---------------------------------------------------- */

#define CC_DFSEL   0x00
#define CC_DF      0x04
#define CC_GFSEL   0x08
#define CC_GF      0x0c
#define CC_MSIX    0x10
#define CC_NUMQ    0x12
#define CC_STATUS  0x14
#define CC_GEN     0x15
#define CC_QSEL    0x16
#define CC_QSIZE   0x18
#define CC_QMSIX   0x1a
#define CC_QENABLE 0x1c
#define CC_QNOFF   0x1e
#define CC_QDESC   0x20
#define CC_QDRIVER 0x28
#define CC_QDEVICE 0x30

#define MM_DF      0x010
#define MM_DFSEL   0x014
#define MM_GF      0x020
#define MM_GFSEL   0x024
#define MM_QSEL    0x030
#define MM_QNUMMAX 0x034
#define MM_QNUM    0x038
#define MM_QREADY  0x044
#define MM_QNOTIFY 0x050
#define MM_ISR     0x060
#define MM_ISRACK  0x064
#define MM_STATUS  0x070
#define MM_QDESC   0x080
#define MM_QDRIVER 0x090
#define MM_QDEVICE 0x0a0
#define MM_GEN     0x0fc
#define MM_CONFIG  0x100

uint8_t vdev_status(struct vdev *d)
{
	return d->t == VT_PCI ? mmio_read8(d->common + CC_STATUS) : (uint8_t)mmio_read32(d->base + MM_STATUS);
}

void vdev_set_status(struct vdev *d, uint8_t s)
{
	if (d->t == VT_PCI)
		mmio_write8(d->common + CC_STATUS, s);
	else
		mmio_write32(d->base + MM_STATUS, s);
}

bool vdev_reset(struct vdev *d)
{
	vdev_set_status(d, 0);
	for (int i = 0; i < 100000; i++)
		if (vdev_status(d) == 0)
			return true;
	kprintf("virtio: %s: status stays 0x%x after reset\n", d->where, vdev_status(d));
	return false;
}

static uint32_t features_read(struct vdev *d, uint32_t sel)
{
	if (d->t == VT_PCI) {
		mmio_write32(d->common + CC_DFSEL, sel);
		return mmio_read32(d->common + CC_DF);
	}
	mmio_write32(d->base + MM_DFSEL, sel);
	return mmio_read32(d->base + MM_DF);
}

static void features_write(struct vdev *d, uint32_t sel, uint32_t v)
{
	if (d->t == VT_PCI) {
		mmio_write32(d->common + CC_GFSEL, sel);
		mmio_write32(d->common + CC_GF, v);
	} else {
		mmio_write32(d->base + MM_GFSEL, sel);
		mmio_write32(d->base + MM_GF, v);
	}
}

void vdev_write_features(struct vdev *d, uint64_t f)
{
	features_write(d, 0, (uint32_t)f);
	features_write(d, 1, (uint32_t)(f >> 32));
}

bool vdev_negotiate(struct vdev *d, uint64_t wanted)
{
	if (!vdev_reset(d))
		return false;
	vdev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
	vdev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	d->offered = features_read(d, 0) | (uint64_t)features_read(d, 1) << 32;
	if (!(d->offered & VBIT(VIRTIO_F_VERSION_1))) {
		kprintf("virtio: %s does not offer VERSION_1 (features 0x%lx)\n", d->where, d->offered);
		vdev_set_status(d, VIRTIO_STATUS_FAILED);
		return false;
	}
	d->features = d->offered & (wanted | VBIT(VIRTIO_F_VERSION_1));
	features_write(d, 0, (uint32_t)d->features);
	features_write(d, 1, (uint32_t)(d->features >> 32));
	uint8_t s = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	vdev_set_status(d, s);
	uint8_t got = vdev_status(d);
	if (!(got & VIRTIO_STATUS_FEATURES_OK)) {
		kprintf("virtio: %s refused features 0x%lx (status 0x%x)\n", d->where, d->features, got);
		vdev_set_status(d, s | VIRTIO_STATUS_FAILED);
		return false;
	}
	return true;
}

void vdev_driver_ok(struct vdev *d)
{
	vdev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
				   VIRTIO_STATUS_DRIVER_OK);
}

uint16_t vdev_num_queues(struct vdev *d)
{
	return d->t == VT_PCI ? mmio_read16(d->common + CC_NUMQ) : 0;
}

uint8_t vdev_isr(struct vdev *d)
{
	return d->t == VT_PCI ? mmio_read8(d->isr) : (uint8_t)mmio_read32(d->base + MM_ISR);
}

void vdev_isr_ack(struct vdev *d, uint32_t bits)
{
	if (d->t == VT_MMIO)
		mmio_write32(d->base + MM_ISRACK, bits);
}

static uint8_t cfg_generation(struct vdev *d)
{
	return d->t == VT_PCI ? mmio_read8(d->common + CC_GEN) : (uint8_t)mmio_read32(d->base + MM_GEN);
}

static uint64_t cfg_base(struct vdev *d)
{
	return d->t == VT_PCI ? d->devcfg : d->base + MM_CONFIG;
}

uint32_t vdev_cfg32(struct vdev *d, unsigned off)
{
	return mmio_read32(cfg_base(d) + off);
}

uint16_t vdev_cfg16(struct vdev *d, unsigned off)
{
	return mmio_read16(cfg_base(d) + off);
}

uint8_t vdev_cfg8(struct vdev *d, unsigned off)
{
	return mmio_read8(cfg_base(d) + off);
}

uint64_t vdev_cfg64(struct vdev *d, unsigned off)
{
	for (;;) {
		uint8_t g = cfg_generation(d);
		uint64_t v = vdev_cfg32(d, off) | (uint64_t)vdev_cfg32(d, off + 4) << 32;
		if (cfg_generation(d) == g)
			return v;
	}
}

/* ---- virtqueues ----------------------------------------------------------- */

void vq_forget(struct vq *q)
{
	q->avail_idx = 0;
	q->last_used = 0;
	q->free_head = 0;
	q->num_free = q->size;
	q->kicked_idx = 0;
	for (uint16_t i = 0; i < q->size; i++) {
		q->free_next[i] = (uint16_t)(i + 1);
		q->chain_n[i] = 0;
	}
	if (q->desc) {
		memset((void *)q->desc, 0, 16ull * q->size);
		memset((void *)q->avail, 0, 6 + 2ull * q->size);
		memset((void *)q->used, 0, 6 + 8ull * q->size);
	}
}

bool vq_setup(struct vdev *d, struct vq *q, uint16_t index, uint16_t size)
{
	uint16_t max;
	if (d->t == VT_PCI) {
		mmio_write16(d->common + CC_QSEL, index);
		max = mmio_read16(d->common + CC_QSIZE);
	} else {
		mmio_write32(d->base + MM_QSEL, index);
		if (mmio_read32(d->base + MM_QREADY)) {
			kprintf("virtio: %s: queue %u already ready\n", d->where, index);
			return false;
		}
		max = (uint16_t)mmio_read32(d->base + MM_QNUMMAX);
	}
	if (!max) {
		kprintf("virtio: %s: queue %u does not exist\n", d->where, index);
		return false;
	}
	if (max > VQ_MAX_SIZE)
		max = VQ_MAX_SIZE;
	if (!size || size > max)
		size = max;
	/* Split rings: a power of two. */
	while (size & (size - 1))
		size &= (uint16_t)(size - 1);

	/* Keep previously allocated rings across re-initialisation. */
	if (!q->desc || q->alloc_size < size) {
		uint64_t used_off = (16ull * size + 6 + 2ull * size + 4095) & ~4095ull;
		uint8_t *mem = vmem_alloc(used_off + 6 + 8ull * size, 4096);
		q->desc = (volatile void *)mem;
		q->avail = (volatile void *)(mem + 16ull * size);
		q->used = (volatile void *)(mem + used_off);
		q->alloc_size = size;
	}
	q->d = d;
	q->index = index;
	q->size = size;
	q->kicks = 0;
	vq_forget(q);

	q->notify_addr = vq_program(d, index, size, (uint64_t)q->desc, (uint64_t)q->avail, (uint64_t)q->used, true);
	return true;
}

uint64_t vq_program(struct vdev *d, uint16_t index, uint16_t size, uint64_t da, uint64_t aa, uint64_t ua,
		    bool enable)
{
	uint64_t notify;
	if (d->t == VT_PCI) {
		uint64_t c = d->common;
		mmio_write16(c + CC_QSEL, index);
		mmio_write16(c + CC_QSIZE, size);
		mmio_write32(c + CC_QDESC, (uint32_t)da);
		mmio_write32(c + CC_QDESC + 4, (uint32_t)(da >> 32));
		mmio_write32(c + CC_QDRIVER, (uint32_t)aa);
		mmio_write32(c + CC_QDRIVER + 4, (uint32_t)(aa >> 32));
		mmio_write32(c + CC_QDEVICE, (uint32_t)ua);
		mmio_write32(c + CC_QDEVICE + 4, (uint32_t)(ua >> 32));
		uint16_t noff = mmio_read16(c + CC_QNOFF);
		notify = d->notify + (uint64_t)noff * d->notify_mult;
		if (enable)
			mmio_write16(c + CC_QENABLE, 1);
	} else {
		uint64_t b = d->base;
		mmio_write32(b + MM_QSEL, index);
		mmio_write32(b + MM_QNUM, size);
		mmio_write32(b + MM_QDESC, (uint32_t)da);
		mmio_write32(b + MM_QDESC + 4, (uint32_t)(da >> 32));
		mmio_write32(b + MM_QDRIVER, (uint32_t)aa);
		mmio_write32(b + MM_QDRIVER + 4, (uint32_t)(aa >> 32));
		mmio_write32(b + MM_QDEVICE, (uint32_t)ua);
		mmio_write32(b + MM_QDEVICE + 4, (uint32_t)(ua >> 32));
		notify = b + MM_QNOTIFY;
		if (enable)
			mmio_write32(b + MM_QREADY, 1);
	}
	return notify;
}

uint16_t vq_read_size(struct vdev *d, uint16_t index)
{
	if (d->t == VT_PCI) {
		mmio_write16(d->common + CC_QSEL, index);
		return mmio_read16(d->common + CC_QSIZE);
	}
	mmio_write32(d->base + MM_QSEL, index);
	return (uint16_t)mmio_read32(d->base + MM_QNUMMAX);
}

bool vq_enabled(struct vdev *d, uint16_t index)
{
	if (d->t == VT_PCI) {
		mmio_write16(d->common + CC_QSEL, index);
		return mmio_read16(d->common + CC_QENABLE) != 0;
	}
	mmio_write32(d->base + MM_QSEL, index);
	return mmio_read32(d->base + MM_QREADY) != 0;
}

int vq_add(struct vq *q, const struct vbuf *b, int n)
{
	if (n <= 0 || n > q->num_free)
		return -1;
	uint16_t head = q->free_head, i = head, last = head;
	for (int k = 0; k < n; k++) {
		volatile struct vring_desc *dd = &q->desc[i];
		dd->addr = b[k].addr;
		dd->len = b[k].len;
		uint16_t nx = q->free_next[i];
		dd->flags = (uint16_t)((b[k].write ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0) |
				       (b[k].indirect ? VRING_DESC_F_INDIRECT : 0));
		dd->next = k + 1 < n ? nx : 0;
		last = i;
		i = nx;
	}
	(void)last;
	q->free_head = i;
	q->num_free = (uint16_t)(q->num_free - n);
	q->chain_n[head] = (uint16_t)n;
	q->avail->ring[q->avail_idx & (q->size - 1)] = head;
	q->avail_idx++;
	return head;
}

void vq_publish(struct vq *q)
{
	__atomic_store_n(&q->avail->idx, q->avail_idx, __ATOMIC_RELEASE);
}

void vq_notify(struct vq *q)
{
	q->kicks++;
	if (q->d->t == VT_PCI)
		mmio_write16(q->notify_addr, q->index);
	else
		mmio_write32(q->notify_addr, q->index);
}

void vq_kick(struct vq *q)
{
	/* Pairs with the device's fence between setting NO_NOTIFY (or
	 * avail_event) and re-checking avail->idx. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (q->d->features & VBIT(VIRTIO_F_EVENT_IDX)) {
		/* avail_event: the u16 after the used ring's last element. */
		volatile uint8_t *u = (volatile uint8_t *)q->used;
		uint16_t ev = (uint16_t)(u[4 + 8u * q->size] | u[5 + 8u * q->size] << 8);
		uint16_t nw = q->avail_idx, old = q->kicked_idx;
		q->kicked_idx = nw;
		/* vring_need_event(): kick if avail_event lies in [old, new). */
		if ((uint16_t)(nw - ev - 1) < (uint16_t)(nw - old))
			vq_notify(q);
		return;
	}
	if (!(q->used->flags & VRING_USED_F_NO_NOTIFY))
		vq_notify(q);
}

bool vq_get(struct vq *q, uint16_t *head, uint32_t *len)
{
	uint16_t idx = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
	if (idx == q->last_used)
		return false;
	volatile struct vring_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
	uint32_t id = e->id, l = e->len;
	q->last_used++;
	if (id < q->size && q->chain_n[id]) {
		/* Free the chain: our own links, not the device-visible ones. */
		uint16_t n = q->chain_n[id], i = (uint16_t)id, tail = i;
		for (uint16_t k = 1; k < n; k++)
			tail = q->free_next[tail];
		q->free_next[tail] = q->free_head;
		q->free_head = i;
		q->num_free = (uint16_t)(q->num_free + n);
		q->chain_n[id] = 0;
	}
	if (head)
		*head = (uint16_t)id;
	if (len)
		*len = l;
	return true;
}

void vdev_msix_entry(struct vdev *d, uint16_t entry, uint8_t vector, uint32_t apic)
{
	uint64_t e = d->msix_table + 16ull * entry;
	mmio_write32(e + 0, 0xfee00000u | apic << 12);
	mmio_write32(e + 4, 0);
	mmio_write32(e + 8, vector);
	mmio_write32(e + 12, 0);
}

void vdev_msix_enable(struct vdev *d, bool on)
{
	uint8_t off = (uint8_t)(d->msix_cap + 2);
	uint16_t ctl = pci_cfg_read16(d->bus, d->dev, d->fn, off);
	ctl = on ? (uint16_t)((ctl | 0x8000) & ~0x4000) : (uint16_t)(ctl & ~0x8000);
	pci_cfg_write16(d->bus, d->dev, d->fn, off, ctl);
}

uint16_t vq_set_msix(struct vdev *d, uint16_t index, uint16_t entry)
{
	mmio_write16(d->common + CC_QSEL, index);
	mmio_write16(d->common + CC_QMSIX, entry);
	return mmio_read16(d->common + CC_QMSIX);
}

bool vq_no_status_poll;

int vq_wait(struct vq *q, uint16_t *head, uint32_t *len, uint64_t timeout_us)
{
	uint64_t khz = tsc_khz();
	uint64_t t0 = rdtsc(), end = t0 + timeout_us * khz / 1000, next_status = t0 + 2 * khz;
	for (;;) {
		if (vq_get(q, head, len))
			return 0;
		uint64_t now = rdtsc();
		if (!vq_no_status_poll && (int64_t)(now - next_status) > 0) {
			/* Only occasionally: a status read is an exit. */
			if (vdev_status(q->d) & VIRTIO_STATUS_NEEDS_RESET)
				return vq_get(q, head, len) ? 0 : -2;
			next_status = now + 2 * khz;
		}
		if ((int64_t)(now - end) > 0)
			return vq_get(q, head, len) ? 0 : -1;
		cpu_relax();
	}
}

/* ---- virtio-blk ------------------------------------------------------------ */

const char *vblk_status_name(int s)
{
	switch (s) {
	case VIRTIO_BLK_S_OK: return "OK";
	case VIRTIO_BLK_S_IOERR: return "IOERR";
	case VIRTIO_BLK_S_UNSUPP: return "UNSUPP";
	case -1: return "TIMEOUT";
	case -2: return "NEEDS_RESET";
	case -3: return "WRONG_HEAD";
	case 0xff: return "UNTOUCHED";
	default: return "?";
	}
}

bool vblk_reinit(struct vblk *b, uint16_t qsize)
{
	if (!vdev_negotiate(&b->d, b->wanted))
		return false;
	b->capacity = vdev_cfg64(&b->d, VBLK_CFG_CAPACITY);
	if (!vq_setup(&b->d, &b->q, 0, qsize))
		return false;
	if (!b->hdrs) {
		/* One slot per possible head, sized for the largest queue. */
		b->hdrs = vmem_alloc(sizeof(*b->hdrs) * VQ_MAX_SIZE, 64);
		b->status = vmem_alloc(VQ_MAX_SIZE, 64);
		b->segs = vmem_alloc(sizeof(*b->segs) * VQ_MAX_SIZE, 64);
	}
	/* Polling driver: no interrupts wanted. */
	b->q.avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	vdev_driver_ok(&b->d);
	return true;
}

bool vblk_open(struct vblk *b, enum vtransport t, int nth, uint64_t wanted, uint16_t qsize)
{
	memset(b, 0, sizeof(*b));
	if (!vdev_find(&b->d, t, VIRTIO_ID_BLOCK, nth))
		return false;
	b->wanted = wanted;
	return vblk_reinit(b, qsize);
}

int vblk_submit(struct vblk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len)
{
	struct vq *q = &b->q;
	bool seg = type == VIRTIO_BLK_T_DISCARD || type == VIRTIO_BLK_T_WRITE_ZEROES;
	int n = (len || seg) ? 3 : 2;
	if (q->num_free < n)
		return -1;
	uint16_t head = q->free_head;
	b->hdrs[head] = (struct virtio_blk_req_hdr){ type, 0, sector };
	b->status[head] = 0xff;
	struct vbuf v[3];
	int k = 0;
	v[k++] = VB((uint64_t)&b->hdrs[head], sizeof(b->hdrs[head]), false);
	if (seg)
		v[k++] = VB((uint64_t)&b->segs[head], sizeof(b->segs[head]), false);
	else if (len)
		v[k++] = VB((uint64_t)buf, len,
					type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID);
	v[k++] = VB((uint64_t)&b->status[head], 1, true);
	return vq_add(q, v, k);
}

static int vblk_finish(struct vblk *b, int head, uint32_t *used_len)
{
	uint16_t got;
	uint32_t len;
	vq_publish(&b->q);
	vq_kick(&b->q);
	int r = vq_wait(&b->q, &got, &len, 10000000);
	if (r < 0)
		return r;
	if (used_len)
		*used_len = len;
	if (got != head) {
		kprintf("virtio-blk: used id %u, expected %d\n", got, head);
		return -3;
	}
	return b->status[head];
}

int vblk_rw(struct vblk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len, uint32_t *used_len)
{
	int head = vblk_submit(b, type, sector, buf, len);
	if (head < 0)
		return -1;
	return vblk_finish(b, head, used_len);
}

int vblk_discard_wz(struct vblk *b, uint32_t type, uint64_t sector, uint32_t nsect, uint32_t flags)
{
	uint16_t head = b->q.free_head;
	b->segs[head] = (struct virtio_blk_discard_wz){ sector, nsect, flags };
	int h = vblk_submit(b, type, 0, NULL, 0);
	if (h < 0)
		return -1;
	return vblk_finish(b, h, NULL);
}
