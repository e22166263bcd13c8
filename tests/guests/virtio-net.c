/*
 * virtio-net micro-guest: a ring-3, polling virtio-net driver (queue pair
 * 0: receiveq 0, transmitq 1) on top of virtio_drv.c, and the echo test /
 * TX and RX benchmarks of netlib.c. Every frame carries the 12-byte
 * struct virtio_net_hdr_v1 (VERSION_1 always has num_buffers).
 *
 * cmdline (besides netlib.h's mode=, count=, size=, peer=, ...):
 *   transport=mmio     virtio-mmio instead of virtio-pci
 *   mrg                negotiate VIRTIO_NET_F_MRG_RXBUF (fails if not offered);
 *                      RX buffers are then 512 bytes, so large frames span
 *                      several buffers
 *   rxbuf=N            RX buffer size (default 2048, 512 with mrg; without
 *                      mrg at least 1526)
 *   rxq=N txq=N        queue sizes (default: the device maximum)
 *   no_event_idx       do not negotiate VIRTIO_F_EVENT_IDX
 *   irq                after the echo test: an RX interrupt must arrive
 *                      (MSI-X on PCI, IOAPIC pin on MMIO: mmio_irq=GSI,
 *                      default 20 + slot), and none once suppressed
 * Echo frames go out as one buffer (header + frame), two (header | frame)
 * or three (header | Ethernet header | rest), in turn.
 * Traps counted: doorbells (only those the device asks for) and, in the
 * irq test, ISR reads.
 */
#include "virtio_drv.h"
#include "netlib.h"

#define NAME     "virtio-net"
#define HDR      ((uint32_t)sizeof(struct virtio_net_hdr_v1))
#define TXBUF    2048u
#define SCRATCH  65536u

struct vnet {
	struct vdev d;
	struct vq rx, tx;
	bool mrg, event_idx;
	uint32_t rxlen;
	uint8_t *rxbufs, *txbufs, *scratch;
	uint16_t tx_head;            /* slot handed out by the last tx_slot */
	unsigned rx_held;            /* buffers the current frame holds */
	uint64_t extra_traps;
	uint64_t merged, max_bufs;   /* frames that used more than one buffer */
	bool rx_irq_wanted;          /* irq test: leave the RX used_event alone */
};

static struct vnet vn;

static bool rx_add(struct vnet *v)
{
	if (!v->rx.num_free)
		return false;
	uint16_t h = v->rx.free_head;
	struct vbuf b = VB(v->rxbufs + (uint64_t)h * v->rxlen, v->rxlen, true);
	return vq_add(&v->rx, &b, 1) >= 0;
}

static void suppress_irqs(struct vq *q)
{
	/* Polling driver: no interrupts. With EVENT_IDX the flag does not
	 * count: the device interrupts when used_event lies in the range of
	 * used entries it just published. Keep it half the index space away
	 * from what we consumed: not last_used - 1, which a device still
	 * deciding about the entry we just took would see as crossed. */
	if (vn.event_idx)
		vq_set_used_event(q, (uint16_t)(q->last_used + 0x8000));
}

static uint8_t *vn_tx_slot(void *p, unsigned layout)
{
	struct vnet *v = p;
	if (v->tx.num_free < layout + 1)
		return NULL;
	v->tx_head = v->tx.free_head;
	return v->txbufs + (uint64_t)v->tx_head * TXBUF + HDR;
}

static void vn_tx_queue(void *p, uint32_t len, unsigned layout)
{
	struct vnet *v = p;
	uint8_t *base = v->txbufs + (uint64_t)v->tx_head * TXBUF;
	memset(base, 0, HDR);   /* no offloads: flags 0, GSO_NONE */
	struct vbuf b[3];
	int n = 0;
	switch (layout) {
	case 1:
		b[n++] = VB(base, HDR, false);
		b[n++] = VB(base + HDR, len, false);
		break;
	case 2:
		b[n++] = VB(base, HDR, false);
		b[n++] = VB(base + HDR, 14, false);
		b[n++] = VB(base + HDR + 14, len - 14, false);
		break;
	default:
		b[n++] = VB(base, HDR + len, false);
		break;
	}
	int h = vq_add(&v->tx, b, n);
	if (h != v->tx_head) {
		kprintf(NAME ": FAIL: internal: tx head %d, slot %u\n", h, v->tx_head);
		debug_exit(FAIL);
	}
}

static void vn_tx_kick(void *p)
{
	struct vnet *v = p;
	vq_publish(&v->tx);
	suppress_irqs(&v->tx);
	vq_kick(&v->tx);
}

static int vn_tx_reap(void *p)
{
	struct vnet *v = p;
	int k = 0;
	while (vq_get(&v->tx, NULL, NULL))
		k++;
	return k;
}

static int rx_bad(const char *what, uint32_t a, uint32_t b)
{
	kprintf(NAME ": FAIL: rx: %s (%u, %u)\n", what, a, b);
	return -1;
}

static int vn_rx_get(void *p, const uint8_t **frame)
{
	struct vnet *v = p;
	uint16_t h;
	uint32_t len;
	if (!vq_get(&v->rx, &h, &len))
		return 0;
	v->rx_held = 1;
	if (h >= v->rx.size)
		return rx_bad("used id out of range (id, queue size)", h, v->rx.size);
	if (len < HDR || len > v->rxlen)
		return rx_bad("used length out of range (len, buffer size)", len, v->rxlen);
	uint8_t *buf = v->rxbufs + (uint64_t)h * v->rxlen;
	const struct virtio_net_hdr_v1 *hdr = (const void *)buf;
	if (hdr->gso_type != VIRTIO_NET_HDR_GSO_NONE)
		return rx_bad("GSO frame without GSO features (gso_type, len)", hdr->gso_type, len);
	uint32_t nb = v->mrg ? hdr->num_buffers : 1;
	if (nb == 0 || nb > 64)
		return rx_bad("num_buffers out of range (num_buffers, len)", nb, len);
	if (nb == 1) {
		*frame = buf + HDR;
		return (int)(len - HDR);
	}
	/* Merged: the rest of the frame is in the next nb-1 used buffers. */
	uint32_t total = len - HDR;
	memcpy(v->scratch, buf + HDR, total);
	for (uint32_t i = 1; i < nb; i++) {
		uint64_t end = tsc_deadline_us(1000000);
		while (!vq_get(&v->rx, &h, &len))
			if ((int64_t)(rdtsc() - end) > 0)
				return rx_bad("merged frame: buffer missing (got, num_buffers)", i, nb);
		v->rx_held++;
		if (h >= v->rx.size || len > v->rxlen || total + len > SCRATCH)
			return rx_bad("merged frame: bad buffer (id, len)", h, len);
		memcpy(v->scratch + total, v->rxbufs + (uint64_t)h * v->rxlen, len);
		total += len;
	}
	v->merged++;
	if (nb > v->max_bufs)
		v->max_bufs = nb;
	*frame = v->scratch;
	return (int)total;
}

static void vn_rx_put(void *p)
{
	struct vnet *v = p;
	for (; v->rx_held; v->rx_held--)
		rx_add(v);
}

static void vn_rx_kick(void *p)
{
	struct vnet *v = p;
	vq_publish(&v->rx);
	if (!v->rx_irq_wanted)
		suppress_irqs(&v->rx);
	vq_kick(&v->rx);
}

static uint64_t vn_traps(void *p)
{
	struct vnet *v = p;
	return v->rx.kicks + v->tx.kicks + v->extra_traps;
}

static void vn_diag(void *p)
{
	struct vnet *v = p;
	kprintf(NAME ": state: status 0x%x; rx avail %u used %u (consumed %u, %u free); tx avail %u used %u "
		"(consumed %u, %u free); kicks rx %lu tx %lu\n", vdev_status(&v->d), v->rx.avail_idx, v->rx.used->idx,
		v->rx.last_used, v->rx.num_free, v->tx.avail_idx, v->tx.used->idx, v->tx.last_used, v->tx.num_free,
		v->rx.kicks, v->tx.kicks);
}

static const struct nic_ops vn_ops = {
	.name = NAME,
	.tx_slot = vn_tx_slot,
	.tx_queue = vn_tx_queue,
	.tx_kick = vn_tx_kick,
	.tx_reap = vn_tx_reap,
	.rx_get = vn_rx_get,
	.rx_put = vn_rx_put,
	.rx_kick = vn_rx_kick,
	.traps = vn_traps,
	.diag = vn_diag,
};

/* ---- interrupts (cmdline irq) ---- */

#define IRQ_VEC 0x42
static volatile uint64_t irq_count;

static void on_irq(unsigned vec)
{
	(void)vec;
	irq_count++;
}

static uint64_t irq_wait(uint64_t before, uint64_t us)
{
	uint64_t end = tsc_deadline_us(us);
	while (irq_count <= before && (int64_t)(rdtsc() - end) < 0)
		cpu_relax();
	uint8_t isr = vdev_isr(&vn.d);
	vdev_isr_ack(&vn.d, isr);
	vn.extra_traps += vn.d.t == VT_MMIO ? 2 : 1;
	return irq_count - before;
}

static int test_irq(struct nic *n)
{
	struct vdev *d = &vn.d;
	uint32_t pin = 0;
	rt_irq_register(IRQ_VEC, on_irq);
	lapic_enable();
	if (d->t == VT_PCI) {
		if (!d->msix_cap || !d->msix_table) {
			kprintf(NAME ": FAIL: irq: no MSI-X capability\n");
			return 1;
		}
		vdev_msix_entry(d, 0, IRQ_VEC, lapic_id());
		vdev_msix_enable(d, true);
		uint16_t got = vq_set_msix(d, VNET_RXQ, 0);
		if (got != 0) {
			kprintf(NAME ": FAIL: irq: queue_msix_vector reads 0x%x after writing 0\n", got);
			return 1;
		}
	} else {
		uint64_t g = 20 + (d->base - 0xd0000000ull) / 0x1000;
		cmdline_u64("mmio_irq", &g);
		pin = (uint32_t)g;
		ioapic_route(IOAPIC_BASE, pin, IRQ_VEC, lapic_id(), 0);
	}
	/* Interrupts wanted on RX: one probe, echoed. used_event stays at
	 * the next entry until the interrupt came (moving it on when the
	 * frame is taken could race with the device's decision). */
	struct vq *q = &vn.rx;
	q->avail->flags = 0;
	vn.rx_irq_wanted = true;
	if (vn.event_idx)
		vq_set_used_event(q, q->last_used);
	uint64_t before = irq_count;
	bool echoed = netlib_probe(n, 0x7fff0000u, 2000000);
	uint64_t got = irq_wait(before, 1000000);
	/* Suppressed again: none may come. */
	vn.rx_irq_wanted = false;
	q->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	suppress_irqs(q);
	irq_wait(irq_count, 50000);
	before = irq_count;
	bool echoed2 = netlib_probe(n, 0x7fff0001u, 2000000);
	uint64_t unwanted = irq_wait(before, 100000);

	if (d->t == VT_PCI) {
		vq_set_msix(d, VNET_RXQ, 0xffff);
		vdev_msix_enable(d, false);
	} else {
		ioapic_write(IOAPIC_BASE, 0x10 + 2 * pin, 1u << 16);
	}
	kprintf(NAME ": irq: %s: %lu interrupt(s) for an RX frame, %lu while suppressed\n",
		d->t == VT_PCI ? "MSI-X" : "IOAPIC", got, unwanted);
	if (!echoed || !echoed2 || !got || unwanted) {
		kprintf(NAME ": FAIL: irq: probe echoed %d/%d, interrupts %lu (want >= 1), suppressed %lu (want 0)\n",
			echoed, echoed2, got, unwanted);
		return 1;
	}
	return 0;
}

int main(void)
{
	enum vtransport t = vt_from_cmdline();
	bool want_mrg = cmdline_has("mrg");
	uint64_t wanted = VBIT(VIRTIO_NET_F_MAC) | VBIT(VIRTIO_NET_F_STATUS);
	if (want_mrg)
		wanted |= VBIT(VIRTIO_NET_F_MRG_RXBUF);
	if (!cmdline_has("no_event_idx"))
		wanted |= VBIT(VIRTIO_F_EVENT_IDX);
	struct vdev *d = &vn.d;
	if (!vdev_find(d, t, VIRTIO_ID_NET, 0)) {
		kprintf(NAME ": FAIL: no virtio-net device on %s\n", vt_name(t));
		return 1;
	}
	if (!vdev_negotiate(d, wanted)) {
		kprintf(NAME ": FAIL: feature negotiation failed\n");
		return 1;
	}
	vn.mrg = d->features & VBIT(VIRTIO_NET_F_MRG_RXBUF);
	vn.event_idx = d->features & VBIT(VIRTIO_F_EVENT_IDX);
	if (want_mrg && !vn.mrg) {
		kprintf(NAME ": FAIL: MRG_RXBUF not offered (features 0x%lx)\n", d->offered);
		return 1;
	}
	struct nic nic = { .ops = &vn_ops, .drv = &vn };
	if (d->features & VBIT(VIRTIO_NET_F_MAC)) {
		for (int i = 0; i < 6; i++)
			nic.mac[i] = vdev_cfg8(d, VNET_CFG_MAC + i);
	} else {
		static const uint8_t def[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
		memcpy(nic.mac, def, 6);
		kprintf(NAME ": VIRTIO_NET_F_MAC not offered: using 52:54:00:12:34:56\n");
	}
	const char *link = "unknown (no F_STATUS)";
	if (d->features & VBIT(VIRTIO_NET_F_STATUS))
		link = vdev_cfg16(d, VNET_CFG_STATUS) & VIRTIO_NET_S_LINK_UP ? "up" : "DOWN";

	uint64_t rxq = 0, txq = 0, rxlen = vn.mrg ? 512 : 2048;
	cmdline_u64("rxq", &rxq);
	cmdline_u64("txq", &txq);
	cmdline_u64("rxbuf", &rxlen);
	if ((!vn.mrg && rxlen < HDR + NETP_MAX) || rxlen < 64 || rxlen > 65536) {
		kprintf(NAME ": FAIL: rxbuf=%lu: want %u..65536 (64.. with mrg)\n", rxlen, HDR + NETP_MAX);
		return 1;
	}
	vn.rxlen = (uint32_t)rxlen;
	if (!vq_setup(d, &vn.rx, VNET_RXQ, (uint16_t)rxq) || !vq_setup(d, &vn.tx, VNET_TXQ, (uint16_t)txq)) {
		kprintf(NAME ": FAIL: queue set-up failed\n");
		return 1;
	}
	vn.rxbufs = vmem_alloc((uint64_t)vn.rx.size * vn.rxlen, 4096);
	vn.txbufs = vmem_alloc((uint64_t)vn.tx.size * TXBUF, 4096);
	vn.scratch = vmem_alloc(SCRATCH, 4096);
	vn.rx.avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	vn.tx.avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	suppress_irqs(&vn.rx);
	suppress_irqs(&vn.tx);
	vdev_driver_ok(d);
	uint8_t st = vdev_status(d);
	if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
		kprintf(NAME ": FAIL: device status 0x%x after DRIVER_OK\n", st);
		return 1;
	}
	while (rx_add(&vn))
		;
	vq_publish(&vn.rx);
	vq_notify(&vn.rx);
	kprintf(NAME ": %s, mac %02x:%02x:%02x:%02x:%02x:%02x, link %s, rx queue %u x %u bytes, tx queue %u, "
		"features 0x%lx%s%s\n",
		vt_name(t), nic.mac[0], nic.mac[1], nic.mac[2], nic.mac[3], nic.mac[4], nic.mac[5], link, vn.rx.size,
		vn.rxlen, vn.tx.size, d->features, vn.mrg ? " (MRG_RXBUF)" : "", vn.event_idx ? " (EVENT_IDX)" : "");
	vn.rx.kicks = 0;

	int r = netlib_run(&nic);
	char mode[16] = "echo";
	cmdline_str("mode", mode, sizeof(mode));
	bool echo = !strncmp(mode, "echo", 5);
	if (vn.mrg)
		kprintf(NAME ": mrg: %lu frame(s) spanned several buffers (at most %lu)\n", vn.merged, vn.max_bufs);
	if (echo && r == 0 && vn.mrg && vn.rxlen < HDR + NETP_MAX && !vn.merged) {
		kprintf(NAME ": FAIL: mrg: no frame was merged, though %u-byte buffers cannot hold 1514 bytes\n",
			vn.rxlen);
		r = 1;
	}
	if (echo && r == 0 && cmdline_has("irq"))
		r = test_irq(&nic);
	st = vdev_status(d);
	if (st & VIRTIO_STATUS_NEEDS_RESET) {
		kprintf(NAME ": FAIL: the device set NEEDS_RESET (status 0x%x)\n", st);
		r = 1;
	}
	vdev_reset(d);
	kprintf(NAME ": %s\n", r ? "FAIL" : "PASS");
	return r;
}
