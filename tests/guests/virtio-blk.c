/*
 * virtio-blk functional test (polling, ring 3).
 *
 * cmdline:
 *   transport=mmio     use virtio-mmio instead of virtio-pci
 *   ro                 the disk is read-only: expect VIRTIO_BLK_F_RO and
 *                      IOERR for writes
 *   serial=ID          expected GET_ID string
 *   size_mb=N          expected capacity
 *   count=N            pattern positions (default 32)
 *   discard_zeroes     a DISCARDed range must read back as zeroes
 *   irq                also check interrupt delivery (MSI-X on PCI,
 *                      IOAPIC pin on MMIO: mmio_irq=GSI, default 20 + slot),
 *                      NO_INTERRUPT and EVENT_IDX's used_event
 *   no_bar_move        skip moving the PCI BAR
 * Also: EVENT_IDX kicks (avail_event), every queue of a multi-queue device,
 * reset and re-initialisation.
 * Prints "virtio-blk: PASS" and exits PASS, or says what failed.
 */
#include "virtio_drv.h"

static struct vblk blk;
static uint64_t salt;
static int failures;
static uint8_t *bufa, *bufb;     /* 512 KiB each */

#define CHECK(cond, ...)                                        \
	do {                                                    \
		if (!(cond)) {                                  \
			kprintf("virtio-blk: FAIL: " __VA_ARGS__); \
			failures++;                             \
		}                                               \
	} while (0)

static void fill(void *buf, uint64_t sector, uint32_t len)
{
	uint64_t *w = buf;
	for (uint32_t i = 0; i < len / 8; i++) {
		uint64_t s = sector + i / 64;
		w[i] = (s << 20 | (i % 64)) ^ salt;
	}
}

static bool all_zero(const void *buf, uint32_t len)
{
	const uint64_t *w = buf;
	for (uint32_t i = 0; i < len / 8; i++)
		if (w[i])
			return false;
	return true;
}

/* A request with arbitrary descriptors; status is the byte to look at. */
static int raw_req(const struct vbuf *v, int n, volatile uint8_t *status, uint32_t *used_len)
{
	struct vq *q = &blk.q;
	*status = 0xff;
	int head = vq_add(q, v, n);
	if (head < 0)
		return -1;
	vq_publish(q);
	vq_kick(q);
	uint16_t got;
	uint32_t len;
	int r = vq_wait(q, &got, &len, 10000000);
	if (r < 0)
		return r;
	if (got != head)
		return -3;
	if (used_len)
		*used_len = len;
	return *status;
}

static struct virtio_blk_req_hdr *hdr;
static uint8_t *st;
static struct vring_desc *itable;
static uint8_t *combo;             /* header + data, or data + status, contiguous */

/* Writes or reads `len` bytes at `sector` using framing variant `how`:
 * 0 plain (hdr, data, status), 1 data split in three, 2 header+data (or
 * data+status) in one descriptor, 3 through an indirect table. */
static int rw_framed(bool write, uint64_t sector, uint8_t *data, uint32_t len, int how, uint32_t *used_len)
{
	bool indirect = blk.d.features & VBIT(VIRTIO_F_INDIRECT_DESC);
	if (how == 3 && !indirect)
		how = 0;
	*hdr = (struct virtio_blk_req_hdr){ write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, 0, sector };
	struct vbuf v[5];
	int n = 0;
	switch (how) {
	case 1: {
		uint32_t a = len / 4, b = len / 2;
		a -= a % 8; /* any split works; keep them odd-sized on purpose */
		a += 3;
		b += 5;
		v[n++] = VB((uint64_t)hdr, 16, false);
		v[n++] = VB((uint64_t)data, a, !write);
		v[n++] = VB((uint64_t)data + a, b, !write);
		v[n++] = VB((uint64_t)data + a + b, len - a - b, !write);
		v[n++] = VB((uint64_t)st, 1, true);
		break;
	}
	case 2:
		if (write) {
			memcpy(combo, hdr, 16);
			memcpy(combo + 16, data, len);
			v[n++] = VB((uint64_t)combo, 16 + len, false);
			v[n++] = VB((uint64_t)st, 1, true);
		} else {
			v[n++] = VB((uint64_t)hdr, 16, false);
			v[n++] = VB((uint64_t)combo, len + 1, true);
		}
		break;
	case 3:
		itable[0] = (struct vring_desc){ (uint64_t)hdr, 16, VRING_DESC_F_NEXT, 1 };
		itable[1] = (struct vring_desc){ (uint64_t)data, len,
						 (uint16_t)(VRING_DESC_F_NEXT | (write ? 0 : VRING_DESC_F_WRITE)), 2 };
		itable[2] = (struct vring_desc){ (uint64_t)st, 1, VRING_DESC_F_WRITE, 0 };
		v[n++] = VB_INDIRECT(itable, 48);
		break;
	default:
		v[n++] = VB((uint64_t)hdr, 16, false);
		v[n++] = VB((uint64_t)data, len, !write);
		v[n++] = VB((uint64_t)st, 1, true);
		break;
	}
	volatile uint8_t *status = (how == 2 && !write) ? combo + len : st;
	int r = raw_req(v, n, status, used_len);
	if (how == 2 && !write && r == VIRTIO_BLK_S_OK)
		memcpy(data, combo, len);
	return r;
}

static void test_get_id(void)
{
	char want[32] = "";
	uint8_t *id = bufa;
	memset(id, 0xaa, 32);
	uint32_t ulen = 0;
	int s = vblk_rw(&blk, VIRTIO_BLK_T_GET_ID, 0, id, 20, &ulen);
	CHECK(s == VIRTIO_BLK_S_OK, "GET_ID status %s\n", vblk_status_name(s));
	if (s != VIRTIO_BLK_S_OK)
		return;
	char got[21];
	memcpy(got, id, 20);
	got[20] = 0;
	kprintf("virtio-blk: GET_ID \"%s\" (used len %u)\n", got, ulen);
	CHECK(id[20] == 0xaa, "GET_ID wrote past its 20-byte buffer\n");
	if (cmdline_str("serial", want, sizeof(want))) {
		size_t wl = strlen(want);
		CHECK(!memcmp(got, want, wl) && (wl >= 20 || got[wl] == 0), "GET_ID \"%s\", want \"%s\"\n", got,
		      want);
	}
}

static void test_past_end(void)
{
	uint64_t cap = blk.capacity;
	int s;
	s = vblk_rw(&blk, VIRTIO_BLK_T_IN, cap, bufa, 512, NULL);
	CHECK(s == VIRTIO_BLK_S_IOERR, "read at sector %lu (capacity): %s, want IOERR\n", cap, vblk_status_name(s));
	s = vblk_rw(&blk, VIRTIO_BLK_T_IN, cap - 1, bufa, 1024, NULL);
	CHECK(s == VIRTIO_BLK_S_IOERR, "read of 2 sectors at the last one: %s, want IOERR\n", vblk_status_name(s));
	s = vblk_rw(&blk, VIRTIO_BLK_T_IN, 1ull << 62, bufa, 512, NULL);
	CHECK(s == VIRTIO_BLK_S_IOERR, "read at sector 2^62: %s, want IOERR\n", vblk_status_name(s));
	s = vblk_rw(&blk, VIRTIO_BLK_T_IN, ~0ull, bufa, 512, NULL);
	CHECK(s == VIRTIO_BLK_S_IOERR, "read at sector 2^64-1: %s, want IOERR\n", vblk_status_name(s));
	if (!(blk.d.features & VBIT(VIRTIO_BLK_F_RO))) {
		s = vblk_rw(&blk, VIRTIO_BLK_T_OUT, cap, bufa, 512, NULL);
		CHECK(s == VIRTIO_BLK_S_IOERR, "write at sector %lu (capacity): %s, want IOERR\n", cap,
		      vblk_status_name(s));
	}
	kprintf("virtio-blk: past-end requests fail with IOERR\n");
}

static void test_rw(void)
{
	uint64_t cap = blk.capacity, count = 32;
	cmdline_u64("count", &count);
	if (count < 2)
		count = 2;
	if (count > 1024)
		count = 1024;
	uint64_t *pos = vmem_alloc(8 * count, 8);
	uint32_t *lens = vmem_alloc(4 * count, 8);
	/* Spread 4 KiB writes over the disk; the last one is the last sector. */
	for (uint64_t i = 0; i < count; i++) {
		pos[i] = (i * (cap - 8) / (count - 1)) & ~7ull;
		lens[i] = 4096;
	}
	pos[count - 1] = cap - 1;
	lens[count - 1] = 512;

	int bad = 0;
	for (uint64_t i = 0; i < count; i++) {
		fill(bufa, pos[i], lens[i]);
		int s = rw_framed(true, pos[i], bufa, lens[i], (int)(i % 4), NULL);
		if (s != VIRTIO_BLK_S_OK && bad++ < 5)
			CHECK(false, "write %lu (sector %lu, framing %lu): %s\n", i, pos[i], i % 4, vblk_status_name(s));
	}
	if (blk.d.features & VBIT(VIRTIO_BLK_F_FLUSH)) {
		int s = vblk_rw(&blk, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, NULL);
		CHECK(s == VIRTIO_BLK_S_OK, "FLUSH: %s\n", vblk_status_name(s));
	}
	for (uint64_t i = 0; i < count; i++) {
		uint32_t ulen = 0;
		memset(bufb, 0x5a, lens[i]);
		int how = (int)((i + 1) % 4);
		int s = rw_framed(false, pos[i], bufb, lens[i], how, &ulen);
		fill(bufa, pos[i], lens[i]);
		if (s != VIRTIO_BLK_S_OK) {
			if (bad++ < 5)
				CHECK(false, "read %lu (sector %lu, framing %d): %s\n", i, pos[i], how, vblk_status_name(s));
			continue;
		}
		if (memcmp(bufa, bufb, lens[i]) && bad++ < 5)
			CHECK(false, "read %lu (sector %lu, framing %d): data differs\n", i, pos[i], how);
		if (ulen != lens[i] + 1 && bad++ < 5)
			CHECK(false, "read %lu: used len %u, want %u (data + status)\n", i, ulen, lens[i] + 1);
	}
	kprintf("virtio-blk: %lu writes (4 framings, last sector %lu) flushed and read back: %s\n", count, cap - 1,
		bad ? "BAD" : "ok");
}

/* Many requests in flight at once, completed in any order. */
static void test_concurrent(void)
{
	struct vq *q = &blk.q;
	int n = q->size / 3;
	if (n > 64)
		n = 64;
	uint64_t base = blk.capacity / 2 & ~7ull;
	int heads[64], bad = 0;
	for (int pass = 0; pass < 2; pass++) {
		bool write = pass == 0;
		uint8_t *buf = write ? bufa : bufb;
		if (write)
			for (int i = 0; i < n; i++)
				fill(buf + 4096 * i, base + 8 * i, 4096);
		else
			memset(buf, 0, 4096ull * n);
		for (int i = 0; i < n; i++)
			heads[i] = vblk_submit(&blk, write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, base + 8 * i,
					       buf + 4096 * i, 4096);
		vq_publish(q);
		vq_kick(q);
		int done = 0;
		while (done < n) {
			uint16_t h;
			int r = vq_wait(q, &h, NULL, 10000000);
			if (r < 0) {
				CHECK(false, "%d of %d concurrent %s done, then %s\n", done, n, write ? "writes" : "reads",
				      vblk_status_name(r));
				return;
			}
			int i;
			for (i = 0; i < n && heads[i] != h; i++)
				;
			if (i == n) {
				CHECK(false, "used id %u was not submitted\n", h);
				return;
			}
			if (blk.status[h] != VIRTIO_BLK_S_OK && bad++ < 3)
				CHECK(false, "concurrent request %d: %s\n", i, vblk_status_name(blk.status[h]));
			heads[i] = -1;
			done++;
		}
	}
	for (int i = 0; i < n; i++)
		if (memcmp(bufa + 4096 * i, bufb + 4096 * i, 4096) && bad++ < 3)
			CHECK(false, "concurrent block %d differs\n", i);
	/* One large request: 256 KiB in one descriptor. */
	fill(bufa, 4096, 262144);
	int s = vblk_rw(&blk, VIRTIO_BLK_T_OUT, 4096, bufa, 262144, NULL);
	CHECK(s == VIRTIO_BLK_S_OK, "256 KiB write: %s\n", vblk_status_name(s));
	memset(bufb, 0, 262144);
	s = vblk_rw(&blk, VIRTIO_BLK_T_IN, 4096, bufb, 262144, NULL);
	CHECK(s == VIRTIO_BLK_S_OK && !memcmp(bufa, bufb, 262144), "256 KiB read back: %s%s\n",
	      vblk_status_name(s), s == 0 ? ", data differs" : "");
	kprintf("virtio-blk: %d concurrent 4 KiB writes + reads, one 256 KiB request: %s\n", n,
		bad ? "BAD" : "ok");
}

static void test_zeroes(void)
{
	uint64_t f = blk.d.features;
	uint64_t sec = 8192; /* 4 MiB in */
	if (f & VBIT(VIRTIO_BLK_F_WRITE_ZEROES)) {
		for (uint32_t flags = 0; flags < 2; flags++) {
			fill(bufa, sec, 16 * 512);
			int s = vblk_rw(&blk, VIRTIO_BLK_T_OUT, sec, bufa, 16 * 512, NULL);
			CHECK(s == 0, "write before WRITE_ZEROES: %s\n", vblk_status_name(s));
			s = vblk_discard_wz(&blk, VIRTIO_BLK_T_WRITE_ZEROES, sec + 4, 8, flags);
			CHECK(s == 0, "WRITE_ZEROES (flags %u): %s\n", flags, vblk_status_name(s));
			memset(bufb, 0x77, 16 * 512);
			s = vblk_rw(&blk, VIRTIO_BLK_T_IN, sec, bufb, 16 * 512, NULL);
			CHECK(s == 0 && all_zero(bufb + 4 * 512, 8 * 512), "WRITE_ZEROES range (flags %u) not zero\n",
			      flags);
			CHECK(s == 0 && !memcmp(bufa, bufb, 4 * 512) && !memcmp(bufa + 12 * 512, bufb + 12 * 512, 4 * 512),
			      "WRITE_ZEROES (flags %u) touched sectors outside its range\n", flags);
		}
		int s = vblk_discard_wz(&blk, VIRTIO_BLK_T_WRITE_ZEROES, blk.capacity - 4, 8, 0);
		CHECK(s != 0, "WRITE_ZEROES past the end: OK, want an error\n");
		kprintf("virtio-blk: WRITE_ZEROES ok (flags 0 and unmap), past end %s\n", vblk_status_name(s));
	} else {
		kprintf("virtio-blk: WRITE_ZEROES not offered\n");
	}
	if (f & VBIT(VIRTIO_BLK_F_DISCARD)) {
		uint32_t align = vdev_cfg32(&blk.d, VBLK_CFG_DISCARD_ALIGN);
		if (!align || align > 2048)
			align = 8;
		uint64_t dsec = (sec + 64 + align - 1) / align * align;
		uint32_t n = align * 2;
		fill(bufa, dsec, n * 512);
		int s = vblk_rw(&blk, VIRTIO_BLK_T_OUT, dsec, bufa, n * 512, NULL);
		CHECK(s == 0, "write before DISCARD: %s\n", vblk_status_name(s));
		s = vblk_discard_wz(&blk, VIRTIO_BLK_T_DISCARD, dsec, n, 0);
		CHECK(s == 0, "DISCARD: %s\n", vblk_status_name(s));
		memset(bufb, 0x77, n * 512);
		int r = vblk_rw(&blk, VIRTIO_BLK_T_IN, dsec, bufb, n * 512, NULL);
		bool z = r == 0 && all_zero(bufb, n * 512);
		bool old = r == 0 && !memcmp(bufa, bufb, n * 512);
		CHECK(r == 0 && (z || old), "after DISCARD the range holds neither zeroes nor the old data\n");
		if (cmdline_has("discard_zeroes"))
			CHECK(z, "DISCARDed range does not read as zeroes\n");
		kprintf("virtio-blk: DISCARD of %u sectors: %s, reads back %s\n", n, vblk_status_name(s),
			z ? "zeroes" : old ? "the old data" : "garbage");
	} else {
		kprintf("virtio-blk: DISCARD not offered\n");
	}
}

static void test_bad_requests(void)
{
	int s = vblk_rw(&blk, 0x42, 0, bufa, 512, NULL);
	CHECK(s == VIRTIO_BLK_S_UNSUPP, "request type 0x42: %s, want UNSUPP\n", vblk_status_name(s));
	s = vblk_rw(&blk, VIRTIO_BLK_T_IN, 0, bufa, 100, NULL);
	CHECK(s == VIRTIO_BLK_S_IOERR || s == VIRTIO_BLK_S_UNSUPP, "read of 100 bytes: %s, want IOERR\n",
	      vblk_status_name(s));
	kprintf("virtio-blk: unknown type -> %s, partial sector -> %s\n", vblk_status_name(vblk_rw(&blk, 0x42, 0, bufa, 512, NULL)),
		vblk_status_name(s));
}

static void test_readonly(void)
{
	uint64_t f = blk.d.features;
	CHECK(f & VBIT(VIRTIO_BLK_F_RO), "ro: VIRTIO_BLK_F_RO not offered\n");
	int s = vblk_rw(&blk, VIRTIO_BLK_T_IN, 0, bufa, 4096, NULL);
	CHECK(s == 0, "ro: read: %s\n", vblk_status_name(s));
	s = vblk_rw(&blk, VIRTIO_BLK_T_IN, blk.capacity - 1, bufa + 4096, 512, NULL);
	CHECK(s == 0, "ro: read of the last sector: %s\n", vblk_status_name(s));
	for (int i = 0; i < 4096; i++)
		bufb[i] = (uint8_t)~bufa[i];
	s = vblk_rw(&blk, VIRTIO_BLK_T_OUT, 0, bufb, 4096, NULL);
	CHECK(s == VIRTIO_BLK_S_IOERR, "ro: write: %s, want IOERR\n", vblk_status_name(s));
	if (f & VBIT(VIRTIO_BLK_F_WRITE_ZEROES)) {
		int z = vblk_discard_wz(&blk, VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0);
		CHECK(z == VIRTIO_BLK_S_IOERR || z == VIRTIO_BLK_S_UNSUPP, "ro: WRITE_ZEROES: %s, want IOERR\n",
		      vblk_status_name(z));
	}
	if (f & VBIT(VIRTIO_BLK_F_DISCARD)) {
		/* Discard is advisory: OK is fine as long as nothing changes
		 * (QEMU with discard=ignore does that); checked below. */
		int z = vblk_discard_wz(&blk, VIRTIO_BLK_T_DISCARD, 0, 8, 0);
		CHECK(z == VIRTIO_BLK_S_IOERR || z == VIRTIO_BLK_S_UNSUPP || z == VIRTIO_BLK_S_OK,
		      "ro: DISCARD: %s, want IOERR\n", vblk_status_name(z));
		kprintf("virtio-blk: ro: DISCARD -> %s\n", vblk_status_name(z));
	}
	if (f & VBIT(VIRTIO_BLK_F_FLUSH)) {
		int z = vblk_rw(&blk, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, NULL);
		CHECK(z == VIRTIO_BLK_S_OK, "ro: FLUSH: %s\n", vblk_status_name(z));
	}
	memset(bufb, 0, 4096);
	int r = vblk_rw(&blk, VIRTIO_BLK_T_IN, 0, bufb, 4096, NULL);
	CHECK(r == 0 && !memcmp(bufa, bufb, 4096), "ro: data changed after a refused write\n");
	kprintf("virtio-blk: read-only: F_RO offered, write -> %s, data unchanged\n", vblk_status_name(s));
}

/* ---- interrupts ---- */

#define IRQ_VEC 0x41
static volatile uint64_t irq_count;

static void on_irq(unsigned v)
{
	(void)v;
	irq_count++;
}

static uint32_t irq_pin;

static bool irq_setup(void)
{
	struct vdev *d = &blk.d;
	rt_irq_register(IRQ_VEC, on_irq);
	lapic_enable();
	uint32_t apic = lapic_id();
	if (d->t == VT_PCI) {
		if (!d->msix_cap || !d->msix_table) {
			CHECK(false, "irq: no MSI-X capability\n");
			return false;
		}
		uint64_t e = d->msix_table;   /* entry 0 */
		mmio_write32(e + 0, 0xfee00000u | apic << 12);
		mmio_write32(e + 4, 0);
		mmio_write32(e + 8, IRQ_VEC);
		mmio_write32(e + 12, 0);
		uint16_t ctl = pci_cfg_read16(d->bus, d->dev, d->fn, (uint8_t)(d->msix_cap + 2));
		pci_cfg_write16(d->bus, d->dev, d->fn, (uint8_t)(d->msix_cap + 2), (uint16_t)((ctl | 0x8000) & ~0x4000));
		/* queue 0 -> vector 0 */
		mmio_write16(d->common + 0x16, 0);
		mmio_write16(d->common + 0x1a, 0);
		uint16_t got = mmio_read16(d->common + 0x1a);
		CHECK(got == 0, "irq: queue_msix_vector reads 0x%x after writing 0\n", got);
	} else {
		uint64_t g = 20 + (d->base - 0xd0000000ull) / 0x1000;
		cmdline_u64("mmio_irq", &g);
		irq_pin = (uint32_t)g;
		ioapic_route(IOAPIC_BASE, irq_pin, IRQ_VEC, apic, 0);
	}
	return true;
}

static void irq_teardown(void)
{
	struct vdev *d = &blk.d;
	if (d->t == VT_PCI) {
		uint16_t ctl = pci_cfg_read16(d->bus, d->dev, d->fn, (uint8_t)(d->msix_cap + 2));
		pci_cfg_write16(d->bus, d->dev, d->fn, (uint8_t)(d->msix_cap + 2), ctl & ~0x8000);
	} else {
		ioapic_write(IOAPIC_BASE, 0x10 + 2 * irq_pin, 1u << 16);
	}
}

/* Waits up to `us` for the interrupt count to pass `n`; acks ISR. */
static void irq_settle(uint64_t n, uint64_t us)
{
	uint64_t end = tsc_deadline_us(us);
	while (irq_count <= n && (int64_t)(rdtsc() - end) < 0)
		cpu_relax();
	uint8_t isr = vdev_isr(&blk.d);
	vdev_isr_ack(&blk.d, isr);
}

static void test_irq(void)
{
	struct vdev *d = &blk.d;
	if (!irq_setup())
		return;
	blk.q.avail->flags = 0; /* interrupts wanted */
	int ok = 0;
	for (int i = 0; i < 3; i++) {
		uint64_t before = irq_count;
		int s = vblk_rw(&blk, VIRTIO_BLK_T_IN, (uint64_t)i * 8, bufa, 4096, NULL);
		irq_settle(before, 2000000);
		if (s == 0 && irq_count > before)
			ok++;
	}
	if (d->t == VT_PCI) {
		/* A masked vector holds its message in the PBA until unmasked,
		 * for the entry's mask bit and for the function mask. */
		uint32_t pba_reg = pci_cfg_read32(d->bus, d->dev, d->fn, (uint8_t)(d->msix_cap + 8));
		uint64_t pba = d->bar_addr[pba_reg & 7] + (pba_reg & ~7u);
		uint8_t ctl_off = (uint8_t)(d->msix_cap + 2);
		for (int fmask = 0; fmask < 2; fmask++) {
			uint16_t ctl = pci_cfg_read16(d->bus, d->dev, d->fn, ctl_off);
			if (fmask)
				pci_cfg_write16(d->bus, d->dev, d->fn, ctl_off, ctl | 0x4000);
			else
				mmio_write32(d->msix_table + 12, 1);
			uint64_t before = irq_count;
			int s = vblk_rw(&blk, VIRTIO_BLK_T_IN, 0, bufa, 4096, NULL);
			irq_settle(before, 50000);
			uint64_t while_masked = irq_count - before;
			uint32_t pending = mmio_read32(pba) & 1;
			if (fmask)
				pci_cfg_write16(d->bus, d->dev, d->fn, ctl_off, ctl & ~0x4000);
			else
				mmio_write32(d->msix_table + 12, 0);
			irq_settle(before, 2000000);
			uint64_t after = irq_count - before;
			uint32_t pending_after = mmio_read32(pba) & 1;
			const char *what = fmask ? "function mask" : "vector mask";
			CHECK(s == 0 && while_masked == 0, "irq: %lu interrupts through the %s\n", while_masked, what);
			CHECK(pending == 1, "irq: PBA bit not set under the %s\n", what);
			CHECK(after == 1 && pending_after == 0, "irq: after clearing the %s: %lu interrupts, PBA %u\n",
			      what, after, pending_after);
		}
		kprintf("virtio-blk: MSI-X masking: held in the PBA under vector and function masks, delivered on unmask\n");
	}
	/* Asked for none: NO_INTERRUPT must hold them back. */
	blk.q.avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	uint64_t before = irq_count;
	for (int i = 0; i < 4; i++)
		vblk_rw(&blk, VIRTIO_BLK_T_IN, (uint64_t)i * 8, bufa, 4096, NULL);
	irq_settle(before, 50000);
	uint64_t unwanted = irq_count - before;
	irq_teardown();
	CHECK(ok == 3, "irq: %d of 3 requests raised an interrupt\n", ok);
	CHECK(unwanted == 0, "irq: %lu interrupts despite VRING_AVAIL_F_NO_INTERRUPT\n", unwanted);
	kprintf("virtio-blk: %s interrupts: %d/3 requests signalled, %lu with NO_INTERRUPT\n",
		d->t == VT_PCI ? "MSI-X" : "IOAPIC", ok, unwanted);
}

/* VIRTIO_F_EVENT_IDX: kicks follow avail_event, interrupts used_event. */
static void test_event_idx(void)
{
	if (!(blk.d.offered & VBIT(VIRTIO_F_EVENT_IDX))) {
		kprintf("virtio-blk: EVENT_IDX not offered\n");
		return;
	}
	blk.wanted |= VBIT(VIRTIO_F_EVENT_IDX);
	if (!vblk_reinit(&blk, 0) || !(blk.d.features & VBIT(VIRTIO_F_EVENT_IDX))) {
		CHECK(false, "EVENT_IDX: re-initialisation failed\n");
		blk.wanted &= ~VBIT(VIRTIO_F_EVENT_IDX);
		vblk_reinit(&blk, 0);
		return;
	}
	struct vq *q = &blk.q;
	/* Many small batches: a device that does not keep avail_event up to
	 * date gets no kick for some of them, and they hang. */
	uint64_t base = 2048, n = 0, bad = 0;
	for (int round = 0; round < 40; round++) {
		int k = 1 + round % 7;
		for (int i = 0; i < k; i++) {
			uint64_t sec = base + 8 * (uint64_t)((round * 7 + i) % 64);
			fill(bufa + 4096 * i, sec, 4096);
			vblk_submit(&blk, VIRTIO_BLK_T_OUT, sec, bufa + 4096 * i, 4096);
			/* Publish and kick per request, like a busy driver. */
			vq_publish(q);
			vq_kick(q);
		}
		for (int i = 0; i < k; i++) {
			uint16_t h;
			int r = vq_wait(q, &h, NULL, 5000000);
			if (r < 0) {
				CHECK(false, "EVENT_IDX: round %d: request %d of %d: %s (kicks %lu)\n", round, i, k,
				      vblk_status_name(r), q->kicks);
				blk.wanted &= ~VBIT(VIRTIO_F_EVENT_IDX);
				vblk_reinit(&blk, 0);
				return;
			}
			if (blk.status[h] && bad++ < 3)
				CHECK(false, "EVENT_IDX: write failed: %s\n", vblk_status_name(blk.status[h]));
			n++;
		}
	}
	kprintf("virtio-blk: EVENT_IDX: %lu requests in 40 batches, %lu doorbells\n", n, q->kicks);

	if (cmdline_has("irq") && irq_setup()) {
		/* Warm-up: the first decision after a reset may notify anyway. */
		vq_set_used_event(q, q->last_used);
		uint64_t before = irq_count;
		vblk_rw(&blk, VIRTIO_BLK_T_IN, 0, bufb, 4096, NULL);
		irq_settle(before, 2000000);
		/* Four requests; interrupt wanted only when the 4th is used. */
		for (int rep = 0; rep < 3; rep++) {
			before = irq_count;
			vq_set_used_event(q, (uint16_t)(q->last_used + 3));
			for (int i = 0; i < 4; i++)
				vblk_submit(&blk, VIRTIO_BLK_T_IN, 8 * (uint64_t)i, bufb + 4096 * i, 4096);
			vq_publish(q);
			vq_kick(q);
			for (int i = 0; i < 4; i++)
				vq_wait(q, NULL, NULL, 5000000);
			irq_settle(before, 2000000);
			uint64_t got = irq_count - before;
			CHECK(got >= 1, "EVENT_IDX: no interrupt when used_event was crossed\n");
			CHECK(got <= 2, "EVENT_IDX: %lu interrupts for 4 requests with used_event at the 4th\n", got);
			if (rep == 2)
				kprintf("virtio-blk: EVENT_IDX: %lu interrupt(s) for 4 requests with used_event = +3\n", got);
		}
		irq_teardown();
	}
	blk.wanted &= ~VBIT(VIRTIO_F_EVENT_IDX);
	if (!vblk_reinit(&blk, 0))
		CHECK(false, "re-initialisation after the EVENT_IDX test failed\n");
}

/* Every queue of a multi-queue device works. */
static void test_mq(void)
{
	if (!(blk.d.offered & VBIT(VIRTIO_BLK_F_MQ)))
		return;
	struct vdev *d = &blk.d;
	if (!vdev_negotiate(d, blk.wanted | VBIT(VIRTIO_BLK_F_MQ))) {
		CHECK(false, "MQ: negotiation failed\n");
		vblk_reinit(&blk, 0);
		return;
	}
	uint16_t nq = vdev_cfg16(d, VBLK_CFG_NUM_QUEUES);
	if (nq > 8)
		nq = 8;
	static struct vq mq[8];
	struct virtio_blk_req_hdr *h = vmem_alloc(64 * 8, 64);
	uint8_t *st = vmem_alloc(64 * 8, 64);
	bool ok = nq >= 1;
	for (uint16_t i = 0; i < nq && ok; i++) {
		ok = vq_setup(d, &mq[i], i, 16);
		mq[i].avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	}
	if (!ok) {
		CHECK(false, "MQ: setting up %u queues failed\n", nq);
		vblk_reinit(&blk, 0);
		return;
	}
	vdev_driver_ok(d);
	int bad = 0;
	for (int pass = 0; pass < 2; pass++) {
		bool write = pass == 0;
		for (uint16_t i = 0; i < nq; i++) {
			uint64_t sec = 3000 + 8ull * i;
			h[i * 4] = (struct virtio_blk_req_hdr){ write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, 0, sec };
			st[i * 64] = 0xff;
			if (write)
				fill(bufa + 4096 * i, sec, 4096);
			else
				memset(bufb + 4096 * i, 0, 4096);
			struct vbuf v[3] = {
				VB(&h[i * 4], 16, false),
				VB((write ? bufa : bufb) + 4096 * i, 4096, !write),
				VB(&st[i * 64], 1, true),
			};
			vq_add(&mq[i], v, 3);
			vq_publish(&mq[i]);
		}
		for (uint16_t i = 0; i < nq; i++)
			vq_kick(&mq[i]);
		for (uint16_t i = 0; i < nq; i++) {
			int r = vq_wait(&mq[i], NULL, NULL, 5000000);
			if ((r < 0 || st[i * 64] != 0) && bad++ < 3)
				CHECK(false, "MQ: queue %u %s: %s\n", i, write ? "write" : "read",
				      vblk_status_name(r < 0 ? r : st[i * 64]));
		}
	}
	for (uint16_t i = 0; i < nq; i++)
		if (memcmp(bufa + 4096 * i, bufb + 4096 * i, 4096) && bad++ < 3)
			CHECK(false, "MQ: queue %u read back different data\n", i);
	kprintf("virtio-blk: %u queue(s), a write and a read on each: %s\n", nq, bad ? "BAD" : "ok");
	if (!vblk_reinit(&blk, 0))
		CHECK(false, "re-initialisation after the MQ test failed\n");
}

/* PCI: move the BAR the registers live in; the device (doorbells
 * included) must follow, the old address must be dead, and nothing may
 * reach the device while memory decoding is off. */
static void test_bar_move(void)
{
	struct vdev *d = &blk.d;
	struct vq *q = &blk.q;
	int bar = d->cap_bar[1];
	uint64_t size = pci_bar_size(d->bus, d->dev, d->fn, bar);
	uint64_t na = size ? pci_free_window(size) : 0, old = d->bar_addr[bar];
	if (!na) {
		kprintf("virtio-blk: BAR move skipped (no room)\n");
		return;
	}
	uint64_t old_common = d->common, old_notify = q->notify_addr;
	int64_t delta = (int64_t)(na - old);
	vdev_pci_move_bar(d, bar, na);
	vq_rebase(q, delta);
	uint16_t nq_old = mmio_read16(old_common + 0x12), nq_new = mmio_read16(d->common + 0x12);
	CHECK(nq_old != nq_new, "BAR%d moved to 0x%lx, but the old address still answers\n", bar, na);
	int s = vblk_rw(&blk, VIRTIO_BLK_T_IN, blk.capacity - 1, bufb, 512, NULL);
	CHECK(s == 0, "read after moving BAR%d: %s\n", bar, vblk_status_name(s));

	/* A doorbell at the old address must not reach the device. */
	int head = vblk_submit(&blk, VIRTIO_BLK_T_IN, 0, bufb, 512);
	vq_publish(q);
	mmio_write16(old_notify, q->index);
	uint16_t got;
	int r = vq_wait(q, &got, NULL, 200000);
	CHECK(r == -1, "a doorbell at the old BAR address was heard (%s)\n", vblk_status_name(r));
	if (r == -1) {
		vq_notify(q);
		r = vq_wait(q, &got, NULL, 5000000);
		CHECK(r == 0 && got == head && blk.status[head] == 0, "request after a moved doorbell: %s\n",
		      vblk_status_name(r ? r : blk.status[head]));
	}

	/* Memory decoding off: the doorbell goes nowhere. */
	head = vblk_submit(&blk, VIRTIO_BLK_T_IN, 0, bufb, 512);
	vq_publish(q);
	vdev_pci_mem_enable(d, false);
	mmio_write16(q->notify_addr, q->index);
	vq_no_status_poll = true;
	r = vq_wait(q, &got, NULL, 200000);
	vq_no_status_poll = false;
	vdev_pci_mem_enable(d, true);
	CHECK(r == -1, "a doorbell with memory decoding off was heard (%s)\n", vblk_status_name(r));
	if (r == -1) {
		vq_notify(q);
		r = vq_wait(q, &got, NULL, 5000000);
		CHECK(r == 0 && got == head && blk.status[head] == 0, "request after decoding came back: %s\n",
		      vblk_status_name(r ? r : blk.status[head]));
	}

	vdev_pci_move_bar(d, bar, old);
	vq_rebase(q, -delta);
	s = vblk_rw(&blk, VIRTIO_BLK_T_IN, 0, bufb, 512, NULL);
	CHECK(s == 0, "read after moving BAR%d back: %s\n", bar, vblk_status_name(s));
	kprintf("virtio-blk: BAR%d moved 0x%lx -> 0x%lx and back; old doorbell and decoding-off doorbell ignored\n",
		bar, old, na);
}

int main(void)
{
	enum vtransport t = vt_from_cmdline();
	bool ro = cmdline_has("ro");
	salt = rdtsc() * 0x9e3779b97f4a7c15ull;
	uint64_t wanted = VBIT(VIRTIO_BLK_F_RO) | VBIT(VIRTIO_BLK_F_BLK_SIZE) | VBIT(VIRTIO_BLK_F_FLUSH) |
			  VBIT(VIRTIO_BLK_F_DISCARD) | VBIT(VIRTIO_BLK_F_WRITE_ZEROES) | VBIT(VIRTIO_BLK_F_SEG_MAX) |
			  VBIT(VIRTIO_BLK_F_TOPOLOGY) | VBIT(VIRTIO_F_INDIRECT_DESC);
	if (!vblk_open(&blk, t, 0, wanted, 0)) {
		kprintf("virtio-blk: FAIL: no usable block device on %s\n", vt_name(t));
		return 1;
	}
	bufa = vmem_alloc(524288, 4096);
	bufb = vmem_alloc(524288, 4096);
	hdr = vmem_alloc(64, 64);
	st = vmem_alloc(64, 64);
	itable = vmem_alloc(256, 16);
	combo = vmem_alloc(524288 + 4096, 4096);
	kprintf("virtio-blk: %s, capacity %lu sectors (%lu MiB), queue size %u, offered 0x%lx, accepted 0x%lx\n",
		vt_name(t), blk.capacity, blk.capacity >> 11, blk.q.size, blk.d.offered, blk.d.features);
	uint64_t mb;
	if (cmdline_u64("size_mb", &mb))
		CHECK(blk.capacity == mb * 2048, "capacity %lu sectors, want %lu\n", blk.capacity, mb * 2048);
	if (blk.d.features & VBIT(VIRTIO_BLK_F_BLK_SIZE))
		kprintf("virtio-blk: blk_size %u, seg_max %u\n", vdev_cfg32(&blk.d, VBLK_CFG_BLK_SIZE),
			vdev_cfg32(&blk.d, VBLK_CFG_SEG_MAX));
	if (blk.capacity < 16384) {
		kprintf("virtio-blk: FAIL: the test needs at least 8 MiB\n");
		return 1;
	}

	test_get_id();
	if (ro) {
		test_readonly();
	} else {
		CHECK(!(blk.d.offered & VBIT(VIRTIO_BLK_F_RO)), "VIRTIO_BLK_F_RO offered on a writable disk\n");
		test_rw();
		test_concurrent();
		test_zeroes();
	}
	test_past_end();
	test_bad_requests();
	if (cmdline_has("irq"))
		test_irq();
	if (!ro)
		test_event_idx();
	if (!ro)
		test_mq();
	if (t == VT_PCI && !cmdline_has("no_bar_move"))
		test_bar_move();

	/* Reset and initialise again: the device must come back clean. */
	uint64_t cap = blk.capacity;
	if (!vblk_reinit(&blk, 0)) {
		CHECK(false, "re-initialisation after reset failed\n");
	} else {
		CHECK(blk.capacity == cap, "capacity changed across reset\n");
		int s = vblk_rw(&blk, VIRTIO_BLK_T_IN, ro ? 0 : cap - 1, bufb, 512, NULL);
		CHECK(s == 0, "read after re-initialisation: %s\n", vblk_status_name(s));
		if (!ro && s == 0) {
			fill(bufa, cap - 1, 512);
			CHECK(!memcmp(bufa, bufb, 512), "last sector differs after re-initialisation\n");
		}
		kprintf("virtio-blk: reset and re-initialised, %lu doorbells on the final queue\n", blk.q.kicks);
	}
	vdev_reset(&blk.d);
	kprintf("virtio-blk: %s\n", failures ? "FAIL" : "PASS");
	return failures ? 1 : 0;
}
