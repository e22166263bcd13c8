/*
 * e1000 micro-guest: a ring-3, polling driver for the Intel 82540EM
 * (PCI 8086:100E) with legacy descriptors, and the echo test / TX and RX
 * benchmarks of netlib.c.
 *
 * Set-up: PCI (0xCF8/0xCFC, helpers from virtio_drv.c), BAR0 MMIO,
 * CTRL.RST, the MAC from RAL0/RAH0 and from the EEPROM through EERD (they
 * must agree, and words 0x00..0x3F must sum to 0xBABA), link up (CTRL.SLU,
 * STATUS.LU), MTA cleared, TX ring (TCTL.EN|PSP) and RX ring (RCTL.EN|BAM|
 * SECRC, 2048-byte buffers), IMS = TXDW|RXT0.
 * Send: legacy descriptors (IFCS, RS|EOP on the last), TDT once per batch,
 * completion by polling DD in memory. Receive: polling DD in memory, RDT
 * once per batch followed by a STATUS read that flushes it (QEMU coalesces
 * RDT writes until the next exit).
 *
 * cmdline (besides netlib.h's mode=, count=, size=, peer=, ...):
 *   txd=N rxd=N   ring sizes (multiples of 8, 8..1024; default 256)
 *   irq           after the echo test: the INTx interrupt through the
 *                 IOAPIC (GSI from PCI INTERRUPT_LINE: below 16 an ISA IRQ,
 *                 mapped through the MADT overrides; 16 and up a GSI)
 * Echo frames go out in one descriptor, two (Ethernet header | rest) or
 * three (Ethernet header | 8 bytes | rest), in turn. After the echo test
 * ICR must show TXDW and RXT0 for one echoed frame, and read as 0 after.
 * Traps counted: every register read or write the driver makes.
 */
#include "virtio_drv.h"
#include "netlib.h"

#define NAME "e1000"

/* registers */
#define E_CTRL     0x0000
#define E_STATUS   0x0008
#define E_EERD     0x0014
#define E_ICR      0x00c0
#define E_ITR      0x00c4
#define E_IMS      0x00d0
#define E_IMC      0x00d8
#define E_RCTL     0x0100
#define E_TCTL     0x0400
#define E_TIPG     0x0410
#define E_RDBAL    0x2800
#define E_RDBAH    0x2804
#define E_RDLEN    0x2808
#define E_RDH      0x2810
#define E_RDT      0x2818
#define E_RDTR     0x2820
#define E_TDBAL    0x3800
#define E_TDBAH    0x3804
#define E_TDLEN    0x3808
#define E_TDH      0x3810
#define E_TDT      0x3818
#define E_TIDV     0x3820
#define E_MTA      0x5200
#define E_RAL0     0x5400
#define E_RAH0     0x5404

#define CTRL_FD      (1u << 0)
#define CTRL_LRST    (1u << 3)
#define CTRL_ASDE    (1u << 5)
#define CTRL_SLU     (1u << 6)
#define CTRL_ILOS    (1u << 7)
#define CTRL_RST     (1u << 26)
#define CTRL_VME     (1u << 30)
#define CTRL_PHY_RST (1u << 31)
#define STATUS_LU    (1u << 1)
#define EERD_START   (1u << 0)
#define EERD_DONE    (1u << 4)
#define ICR_TXDW     (1u << 0)
#define ICR_TXQE     (1u << 1)
#define ICR_LSC      (1u << 2)
#define ICR_RXT0     (1u << 7)
#define RCTL_EN      (1u << 1)
#define RCTL_BAM     (1u << 15)
#define RCTL_SECRC   (1u << 26)
#define TCTL_EN      (1u << 1)
#define TCTL_PSP     (1u << 3)
#define TCTL_CT      (0x0fu << 4)
#define TCTL_COLD    (0x40u << 12)
#define RAH_AV       (1u << 31)

#define TXD_EOP      (1u << 0)
#define TXD_IFCS     (1u << 1)
#define TXD_RS       (1u << 3)
#define TXD_DD       (1u << 0)
#define RXD_DD       (1u << 0)
#define RXD_EOP      (1u << 1)

struct e1k_txd {
	uint64_t addr;
	uint16_t len;
	uint8_t cso, cmd, status, css;
	uint16_t special;
};
struct e1k_rxd {
	uint64_t addr;
	uint16_t len, csum;
	uint8_t status, errors;
	uint16_t special;
};

#define RING_MAX 1024u
#define BUF      2048u

struct e1k {
	uint8_t dev, fn;
	char where[24];
	uint64_t bar;
	volatile struct e1k_txd *txd;
	uint8_t *txbufs;
	uint32_t ntx, tx_tail, tx_clean, tx_used;
	uint8_t tx_nd[RING_MAX];     /* descriptors of the packet starting here */
	volatile struct e1k_rxd *rxd;
	uint8_t *rxbufs;
	uint32_t nrx, rx_next;
	bool rx_dirty;
	volatile uint64_t traps;
};

static struct e1k e;

static uint32_t rd(uint32_t reg)
{
	e.traps++;
	return mmio_read32(e.bar + reg);
}

static void wr(uint32_t reg, uint32_t v)
{
	e.traps++;
	mmio_write32(e.bar + reg, v);
}

/* ---- nic_ops ---- */

static uint8_t *e_tx_slot(void *p, unsigned layout)
{
	(void)p;
	if (e.tx_used + layout + 1 > e.ntx - 1)
		return NULL;
	return e.txbufs + (uint64_t)e.tx_tail * BUF;
}

static void e_tx_queue(void *p, uint32_t len, unsigned layout)
{
	(void)p;
	uint32_t first = e.tx_tail;
	uint64_t buf = (uint64_t)e.txbufs + (uint64_t)first * BUF;
	uint32_t off[3], plen[3], n = 0;
	switch (layout) {
	case 1:
		off[0] = 0, plen[0] = 14;
		off[1] = 14, plen[1] = len - 14;
		n = 2;
		break;
	case 2:
		off[0] = 0, plen[0] = 14;
		off[1] = 14, plen[1] = 8;
		off[2] = 22, plen[2] = len - 22;
		n = 3;
		break;
	default:
		off[0] = 0, plen[0] = len;
		n = 1;
		break;
	}
	for (uint32_t i = 0; i < n; i++) {
		volatile struct e1k_txd *d = &e.txd[e.tx_tail];
		d->addr = buf + off[i];
		d->len = (uint16_t)plen[i];
		d->cso = 0;
		d->cmd = (uint8_t)(TXD_IFCS | (i + 1 == n ? TXD_EOP | TXD_RS : 0));
		d->status = 0;
		d->css = 0;
		d->special = 0;
		e.tx_tail = (e.tx_tail + 1) % e.ntx;
	}
	e.tx_nd[first] = (uint8_t)n;
	e.tx_used += n;
}

static void e_tx_kick(void *p)
{
	(void)p;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	wr(E_TDT, e.tx_tail);
}

static int e_tx_reap(void *p)
{
	(void)p;
	int k = 0;
	while (e.tx_used) {
		uint32_t first = e.tx_clean, n = e.tx_nd[first];
		uint32_t last = (first + n - 1) % e.ntx;
		if (!(e.txd[last].status & TXD_DD))
			break;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		e.tx_clean = (first + n) % e.ntx;
		e.tx_used -= n;
		k++;
	}
	return k;
}

static int e_rx_get(void *p, const uint8_t **frame)
{
	(void)p;
	volatile struct e1k_rxd *d = &e.rxd[e.rx_next];
	uint8_t st = d->status;
	if (!(st & RXD_DD))
		return 0;
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	uint32_t len = d->len;
	if (!(st & RXD_EOP) || d->errors || len == 0 || len > BUF) {
		kprintf(NAME ": FAIL: rx: descriptor %u: status 0x%x errors 0x%x length %u\n", e.rx_next, st, d->errors,
			len);
		return -1;
	}
	*frame = e.rxbufs + (uint64_t)e.rx_next * BUF;
	return (int)len;
}

static void e_rx_put(void *p)
{
	(void)p;
	volatile struct e1k_rxd *d = &e.rxd[e.rx_next];
	d->addr = (uint64_t)e.rxbufs + (uint64_t)e.rx_next * BUF;
	d->status = 0;
	e.rx_next = (e.rx_next + 1) % e.nrx;
	e.rx_dirty = true;
}

static void e_rx_kick(void *p)
{
	(void)p;
	if (!e.rx_dirty)
		return;
	e.rx_dirty = false;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	/* The device owns RDH..RDT-1: everything but the last one we used. */
	wr(E_RDT, (e.rx_next + e.nrx - 1) % e.nrx);
	/* Flush the posted write, as real drivers do with a read: QEMU's
	 * e1000 takes RDT as coalesced MMIO, which it only sees at the
	 * vCPU's next exit, and a polling guest may not exit at all. */
	rd(E_STATUS);
}

static uint64_t e_traps(void *p)
{
	(void)p;
	return e.traps;
}

static void e_diag(void *p)
{
	(void)p;
	kprintf(NAME ": state: STATUS 0x%x ICR 0x%x RCTL 0x%x RDH %u RDT %u (next %u) TCTL 0x%x TDH %u TDT %u "
		"(clean %u, %u in flight)\n", rd(E_STATUS), rd(E_ICR), rd(E_RCTL), rd(E_RDH), rd(E_RDT), e.rx_next,
		rd(E_TCTL), rd(E_TDH), rd(E_TDT), e.tx_clean, e.tx_used);
}

static const struct nic_ops e_ops = {
	.name = NAME,
	.tx_slot = e_tx_slot,
	.tx_queue = e_tx_queue,
	.tx_kick = e_tx_kick,
	.tx_reap = e_tx_reap,
	.rx_get = e_rx_get,
	.rx_put = e_rx_put,
	.rx_kick = e_rx_kick,
	.traps = e_traps,
	.diag = e_diag,
};

/* ---- set-up ---- */

static int eeprom_read(uint32_t word)
{
	wr(E_EERD, EERD_START | word << 8);
	for (int i = 0; i < 10000; i++) {
		uint32_t v = rd(E_EERD);
		if (v & EERD_DONE)
			return (int)(v >> 16);
	}
	return -1;
}

static bool ring_size(const char *key, uint32_t *out)
{
	uint64_t v = 256;
	cmdline_u64(key, &v);
	if (v < 8 || v > RING_MAX || v % 8) {
		kprintf(NAME ": FAIL: %s=%lu: want a multiple of 8 in 8..%u\n", key, v, RING_MAX);
		return false;
	}
	*out = (uint32_t)v;
	return true;
}

static int setup(struct nic *n)
{
	if (!pci_find_id(0x8086, 0x100e, 0, &e.dev, &e.fn)) {
		kprintf(NAME ": FAIL: no 82540EM (8086:100e) on PCI bus 0\n");
		return 1;
	}
	/* "pci 00:DD.F" */
	const char *hex = "0123456789abcdef";
	memcpy(e.where, "pci 00:00.0", 12);
	e.where[7] = hex[e.dev >> 4];
	e.where[8] = hex[e.dev & 15];
	e.where[10] = (char)('0' + e.fn);
	uint16_t cmd = pci_cfg_read16(0, e.dev, e.fn, 0x04);
	pci_cfg_write16(0, e.dev, e.fn, 0x04, (uint16_t)((cmd | 0x06) & ~0x400));   /* MEM, MASTER, INTx on */
	e.bar = pci_mem_bar(0, e.dev, e.fn, 0, e.where);
	if (!e.bar) {
		kprintf(NAME ": FAIL: %s: BAR0 is not a usable memory BAR\n", e.where);
		return 1;
	}

	/* Reset; RST clears itself. */
	wr(E_IMC, ~0u);
	wr(E_CTRL, rd(E_CTRL) | CTRL_RST);
	uint64_t end = tsc_deadline_us(100000);
	while (rd(E_CTRL) & CTRL_RST)
		if ((int64_t)(rdtsc() - end) > 0) {
			kprintf(NAME ": FAIL: CTRL.RST still set 100 ms after reset\n");
			return 1;
		}
	wr(E_IMC, ~0u);
	rd(E_ICR);
	uint32_t ctrl = rd(E_CTRL);
	ctrl = (ctrl | CTRL_SLU | CTRL_ASDE) & ~(CTRL_LRST | CTRL_PHY_RST | CTRL_ILOS | CTRL_VME);
	wr(E_CTRL, ctrl);

	/* MAC: receive address 0 and the EEPROM. */
	uint32_t ral = rd(E_RAL0), rah = rd(E_RAH0);
	for (int i = 0; i < 4; i++)
		n->mac[i] = (uint8_t)(ral >> (8 * i));
	n->mac[4] = (uint8_t)rah;
	n->mac[5] = (uint8_t)(rah >> 8);
	if (!(rah & RAH_AV)) {
		kprintf(NAME ": FAIL: RAH0 0x%x: address-valid bit clear after reset\n", rah);
		return 1;
	}
	uint16_t words[64];
	uint16_t sum = 0;
	for (uint32_t w = 0; w < 64; w++) {
		int v = eeprom_read(w);
		if (v < 0) {
			kprintf(NAME ": FAIL: EERD: word 0x%x never DONE\n", w);
			return 1;
		}
		words[w] = (uint16_t)v;
		sum = (uint16_t)(sum + v);
	}
	uint8_t emac[6];
	for (int i = 0; i < 3; i++) {
		emac[2 * i] = (uint8_t)words[i];
		emac[2 * i + 1] = (uint8_t)(words[i] >> 8);
	}
	if (memcmp(emac, n->mac, 6)) {
		kprintf(NAME ": FAIL: EEPROM MAC %02x:%02x:%02x:%02x:%02x:%02x differs from RAL0/RAH0 "
			"%02x:%02x:%02x:%02x:%02x:%02x\n", emac[0], emac[1], emac[2], emac[3], emac[4], emac[5],
			n->mac[0], n->mac[1], n->mac[2], n->mac[3], n->mac[4], n->mac[5]);
		return 1;
	}
	if (sum != 0xbaba) {
		kprintf(NAME ": FAIL: EEPROM words 0x00..0x3f sum to 0x%x, want 0xbaba\n", sum);
		return 1;
	}

	/* Link. */
	end = tsc_deadline_us(2000000);
	uint32_t status;
	while (!((status = rd(E_STATUS)) & STATUS_LU) && (int64_t)(rdtsc() - end) < 0)
		udelay(1000);
	if (!(status & STATUS_LU)) {
		kprintf(NAME ": FAIL: link down 2 s after CTRL.SLU (STATUS 0x%x)\n", status);
		return 1;
	}

	for (uint32_t i = 0; i < 128; i++)
		wr(E_MTA + 4 * i, 0);

	/* Rings. */
	if (!ring_size("txd", &e.ntx) || !ring_size("rxd", &e.nrx))
		return 1;
	e.txd = vmem_alloc(16ull * e.ntx, 4096);
	e.rxd = vmem_alloc(16ull * e.nrx, 4096);
	e.txbufs = vmem_alloc((uint64_t)e.ntx * BUF, 4096);
	e.rxbufs = vmem_alloc((uint64_t)e.nrx * BUF, 4096);
	for (uint32_t i = 0; i < e.nrx; i++)
		e.rxd[i].addr = (uint64_t)e.rxbufs + (uint64_t)i * BUF;

	wr(E_TDBAL, (uint32_t)(uint64_t)e.txd);
	wr(E_TDBAH, (uint32_t)((uint64_t)e.txd >> 32));
	wr(E_TDLEN, 16 * e.ntx);
	wr(E_TDH, 0);
	wr(E_TDT, 0);
	wr(E_TIDV, 0);
	wr(E_TIPG, 10 | 8 << 10 | 6 << 20);
	wr(E_TCTL, TCTL_EN | TCTL_PSP | TCTL_CT | TCTL_COLD);

	wr(E_RDBAL, (uint32_t)(uint64_t)e.rxd);
	wr(E_RDBAH, (uint32_t)((uint64_t)e.rxd >> 32));
	wr(E_RDLEN, 16 * e.nrx);
	wr(E_RDH, 0);
	wr(E_RDT, e.nrx - 1);
	wr(E_RDTR, 0);
	wr(E_ITR, 0);
	wr(E_RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);   /* BSIZE 00: 2048 bytes */
	wr(E_IMS, ICR_TXDW | ICR_RXT0);

	kprintf(NAME ": %s [8086:100e], BAR0 0x%lx, mac %02x:%02x:%02x:%02x:%02x:%02x (RAL0 = EEPROM, checksum "
		"0x%x), link up (STATUS 0x%x), tx ring %u, rx ring %u x %u bytes\n",
		e.where, e.bar, n->mac[0], n->mac[1], n->mac[2], n->mac[3], n->mac[4], n->mac[5], sum, status, e.ntx,
		e.nrx, BUF);
	return 0;
}

/* ---- interrupt causes and INTx ---- */

static int test_icr(struct nic *n)
{
	rd(E_ICR);
	bool ok = netlib_probe(n, 0x7ffe0000u, 2000000);
	uint32_t icr = rd(E_ICR), icr2 = rd(E_ICR);
	kprintf(NAME ": ICR after one echoed frame: 0x%x (TXDW %s, RXT0 %s), then 0x%x\n", icr,
		icr & ICR_TXDW ? "set" : "CLEAR", icr & ICR_RXT0 ? "set" : "CLEAR", icr2);
	if (!ok || !(icr & ICR_TXDW) || !(icr & ICR_RXT0) || icr2) {
		kprintf(NAME ": FAIL: ICR: probe %s, want TXDW and RXT0 set, then 0 after the read\n",
			ok ? "echoed" : "NOT echoed");
		return 1;
	}
	return 0;
}

#define IRQ_VEC 0x43
static volatile uint64_t irq_count;
static volatile uint32_t irq_icr;

/* Ring 0: reading ICR acknowledges and deasserts the level interrupt. */
static void on_intx(unsigned vec)
{
	(void)vec;
	irq_icr |= rd(E_ICR);
	irq_count++;
}

static uint64_t irq_wait(uint64_t before, uint64_t us)
{
	uint64_t end = tsc_deadline_us(us);
	while (irq_count <= before && (int64_t)(rdtsc() - end) < 0)
		cpu_relax();
	return irq_count - before;
}

static int test_intx(struct nic *n)
{
	uint8_t line = pci_cfg_read8(0, e.dev, e.fn, 0x3c), pin = pci_cfg_read8(0, e.dev, e.fn, 0x3d);
	if (line == 0 || line == 0xff || pin < 1 || pin > 4) {
		kprintf(NAME ": FAIL: irq: INTERRUPT_LINE %u, INTERRUPT_PIN %u\n", line, pin);
		return 1;
	}
	/* QEMU's pc machine routes INTx through the PIIX3's PIRQ routers
	 * (slot S pin P -> PIRQ (S - 1 + P - 1) mod 4); qboot's
	 * INTERRUPT_LINE does not follow that swizzle, so ask the router. */
	if (pci_cfg_read32(0, 1, 0, 0) == 0x70008086) {
		uint8_t pirq = (uint8_t)((e.dev - 1 + pin - 1) & 3);
		uint8_t route = pci_cfg_read8(0, 1, 0, (uint8_t)(0x60 + pirq));
		if (route < 16 && route != line) {
			kprintf(NAME ": irq: PIIX3 PIRQ%c routes to IRQ %u, not INTERRUPT_LINE %u: using IRQ %u\n",
				'A' + pirq, route, line, route);
			line = route;
		}
	}
	uint16_t flags = 0;
	uint32_t gsi = line;
	if (line < 16)
		gsi = madt_isa_gsi(line, &flags);
	if (!flags)
		flags = 0xf;   /* PCI: level, active low */
	uint32_t ioapic = 0, gsi_base = 0;
	if (!madt_ioapic(&ioapic, &gsi_base) || gsi < gsi_base) {
		kprintf(NAME ": FAIL: irq: no IOAPIC for GSI %u\n", gsi);
		return 1;
	}
	rt_irq_register(IRQ_VEC, on_intx);
	lapic_enable();
	wr(E_IMS, ICR_TXDW | ICR_RXT0);
	rd(E_ICR);
	uint32_t ipin = gsi - gsi_base;
	ioapic_route(ioapic, ipin, IRQ_VEC, lapic_id(), flags);

	uint64_t before = irq_count;
	irq_icr = 0;
	bool ok = netlib_probe(n, 0x7ffe0001u, 2000000);
	uint64_t got = irq_wait(before, 1000000);
	uint32_t seen = irq_icr;
	/* Causes masked: they latch in ICR, but no interrupt. */
	wr(E_IMC, ~0u);
	before = irq_count;
	bool ok2 = netlib_probe(n, 0x7ffe0002u, 2000000);
	uint64_t unwanted = irq_wait(before, 100000);
	uint32_t latched = rd(E_ICR);
	ioapic_write(ioapic, 0x10 + 2 * ipin, 1u << 16);

	kprintf(NAME ": irq: INTx pin %u, IRQ %u -> GSI %u: %lu interrupt(s) with ICR 0x%x; %lu with IMS "
		"clear (ICR 0x%x)\n", pin, line, gsi, got, seen, unwanted, latched);
	if (!ok || !ok2 || !got || !(seen & ICR_RXT0) || unwanted || !(latched & ICR_RXT0)) {
		kprintf(NAME ": FAIL: irq: probes echoed %d/%d; want >= 1 interrupt showing RXT0, none with IMS clear, "
			"RXT0 latched\n", ok, ok2);
		return 1;
	}
	return 0;
}

int main(void)
{
	struct nic nic = { .ops = &e_ops, .drv = &e };
	if (setup(&nic))
		return 1;
	e.traps = 0;
	int r = netlib_run(&nic);
	char mode[16] = "echo";
	cmdline_str("mode", mode, sizeof(mode));
	if (!strncmp(mode, "echo", 5) && r == 0) {
		r = test_icr(&nic);
		if (r == 0 && cmdline_has("irq"))
			r = test_intx(&nic);
	}
	wr(E_IMC, ~0u);
	wr(E_RCTL, 0);
	wr(E_TCTL, 0);
	wr(E_CTRL, rd(E_CTRL) | CTRL_RST);
	kprintf(NAME ": %s\n", r ? "FAIL" : "PASS");
	return r;
}
