/* The e1000 (82540EM) model without KVM: a struct vm with fake RAM and a
 * PCI bus, a fake backend that records sent frames and serves queued RX
 * frames, and register accesses through the BARs as a guest makes them.
 * Covers the EEPROM (bit-banged and EERD), PHY, reset, TX rings (legacy,
 * wrap-around, hostile), checksum offload and TSO against a reference
 * computation, RX (multi-descriptor, backpressure, filtering, VLAN),
 * interrupts, moderation and the rate limit. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include <cmocka.h>

#include "bus/pci.h"
#include "core/config.h"
#include "core/loop.h"
#include "core/vm.h"
#include "devices/e1000_regs.h"
#include "net/net.h"

#define RAM_SIZE   (4u << 20)
#define TX_RING    0x10000
#define TX_BUFS    0x20000      /* 64 KiB of frame data */
#define RX_RING    0x40000
#define RX_BUFS    0x50000      /* 2048 * 16 */
#define BIG_BUF    0x100000     /* 1 MiB for big frames */
#define MAX_FRAMES 64

static const uint8_t our_mac[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
static const uint8_t peer_mac[6] = { 0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc };

/* ---- fake backend ---- */

struct fake_be {
	struct net_backend be;
	uint8_t *sent[MAX_FRAMES];
	size_t sent_len[MAX_FRAMES];
	unsigned nsent;
	bool bad_header;           /* a sent frame's header was not all zero */
	uint8_t *rx[MAX_FRAMES];   /* queued frames (no header) */
	size_t rx_len[MAX_FRAMES];
	unsigned rx_head, rx_tail;
	bool notify;
	unsigned notify_calls;
	int offloads_set;
};

static int fb_send(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt)
{
	struct fake_be *f = (struct fake_be *)be;
	assert_int_equal(q, 0);
	size_t total = 0;
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	uint8_t *buf = malloc(total), *p = buf;
	for (int i = 0; i < iovcnt; i++) {
		memcpy(p, iov[i].iov_base, iov[i].iov_len);
		p += iov[i].iov_len;
	}
	assert_true(total >= NET_HDR_LEN);
	for (unsigned i = 0; i < NET_HDR_LEN; i++)
		if (buf[i])
			f->bad_header = true;
	if (f->nsent == MAX_FRAMES) {
		free(buf);
		return -ENOBUFS;
	}
	memmove(buf, buf + NET_HDR_LEN, total - NET_HDR_LEN);
	f->sent[f->nsent] = buf;
	f->sent_len[f->nsent++] = total - NET_HDR_LEN;
	return 0;
}

static ssize_t fb_recv(struct net_backend *be, unsigned q, const struct iovec *iov, int iovcnt)
{
	struct fake_be *f = (struct fake_be *)be;
	assert_int_equal(q, 0);
	assert_int_equal(iovcnt, 1);
	if (f->rx_head == f->rx_tail)
		return 0;
	unsigned i = f->rx_head++ % MAX_FRAMES;
	size_t len = f->rx_len[i];
	ssize_t ret;
	if (len + NET_HDR_LEN > iov[0].iov_len) {
		ret = -EMSGSIZE;
	} else {
		memset(iov[0].iov_base, 0, NET_HDR_LEN);
		memcpy((uint8_t *)iov[0].iov_base + NET_HDR_LEN, f->rx[i], len);
		ret = (ssize_t)(len + NET_HDR_LEN);
	}
	free(f->rx[i]);
	return ret;
}

static void fb_rx_notify(struct net_backend *be, unsigned q, bool on)
{
	struct fake_be *f = (struct fake_be *)be;
	assert_int_equal(q, 0);
	f->notify = on;
	f->notify_calls++;
}

static int fb_set_offloads(struct net_backend *be, unsigned offloads)
{
	((struct fake_be *)be)->offloads_set = (int)offloads;
	return 0;
}

static void fb_destroy(struct net_backend *be)
{
	(void)be;   /* the fixture owns it */
}

static const struct net_backend_ops fake_ops = {
	.name = "fake", .send = fb_send, .recv = fb_recv, .rx_notify = fb_rx_notify,
	.set_offloads = fb_set_offloads, .destroy = fb_destroy,
};

static void fb_queue(struct fake_be *f, const uint8_t *frame, size_t len)
{
	unsigned i = f->rx_tail++ % MAX_FRAMES;
	f->rx[i] = malloc(len);
	memcpy(f->rx[i], frame, len);
	f->rx_len[i] = len;
}

static unsigned fb_queued(const struct fake_be *f)
{
	return f->rx_tail - f->rx_head;
}

/* ---- fixture ---- */

struct fixture {
	struct vm vm;
	void *host;
	uint8_t *ram;
	struct fake_be fb;
	struct net_config nc;
	struct e1000 *e;
	uint64_t bar0, bar1;
};

static int setup_with(void **state, uint64_t bw, uint64_t pps)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->vm.vm_fd = -1;
	io_bus_init(&f->vm.pio, "PIO");
	io_bus_init(&f->vm.mmio, "MMIO");
	f->ram = calloc(1, RAM_SIZE);
	assert_int_equal(guest_mem_add_region(&f->vm.mem, 0, RAM_SIZE, f->ram), 0);
	f->vm.loop = loop_create();
	assert_non_null(f->vm.loop);
	assert_int_equal(pci_host_device_ops.create(&f->vm, NULL, &f->host), 0);
	f->fb.be.ops = &fake_ops;
	f->fb.be.nr_queues = 1;
	f->fb.be.loop = f->vm.loop;
	f->fb.offloads_set = -1;
	f->nc.model = NET_MODEL_E1000;
	memcpy(f->nc.mac, our_mac, 6);
	f->nc.bw = bw;
	f->nc.pps = pps;
	assert_int_equal(e1000_create_with_backend(&f->vm, &f->nc, &f->fb.be, &f->e), 0);
	struct pci_device *d = e1000_pci(f->e);
	f->bar0 = d->bars[0].addr;
	f->bar1 = d->bars[1].addr;
	assert_true(f->bar0 != 0);
	assert_true(f->bar1 != 0);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_with(state, 0, 0);
}

static int setup_limited(void **state)
{
	return setup_with(state, 0, 100);   /* 100 packets/s, bursts of 1 */
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	e1000_destroy_device(&f->vm, f->e);
	for (unsigned i = 0; i < f->fb.nsent; i++)
		free(f->fb.sent[i]);
	while (f->fb.rx_head != f->fb.rx_tail)
		free(f->fb.rx[f->fb.rx_head++ % MAX_FRAMES]);
	pci_host_device_ops.destroy(&f->vm, f->host);
	loop_destroy(f->vm.loop);
	io_bus_destroy(&f->vm.pio);
	io_bus_destroy(&f->vm.mmio);
	free(f->ram);
	free(f);
	return 0;
}

static uint32_t rd(struct fixture *f, uint32_t reg)
{
	uint32_t v = 0xdeadbeef;
	assert_true(io_bus_access(&f->vm.mmio, f->bar0 + reg, &v, 4, false));
	return v;
}

static void wr(struct fixture *f, uint32_t reg, uint32_t v)
{
	assert_true(io_bus_access(&f->vm.mmio, f->bar0 + reg, &v, 4, true));
}

static void io_wr(struct fixture *f, uint32_t reg, uint32_t v)
{
	assert_true(io_bus_access(&f->vm.pio, f->bar1, &reg, 4, true));
	assert_true(io_bus_access(&f->vm.pio, f->bar1 + 4, &v, 4, true));
}

static uint32_t io_rd(struct fixture *f, uint32_t reg)
{
	uint32_t v = 0;
	assert_true(io_bus_access(&f->vm.pio, f->bar1, &reg, 4, true));
	assert_true(io_bus_access(&f->vm.pio, f->bar1 + 4, &v, 4, false));
	return v;
}

static bool intx(struct fixture *f)
{
	return e1000_pci(f->e)->intx_level;
}

static uint64_t stat(struct fixture *f, size_t off)
{
	const atomic_uint_fast64_t *p = (const atomic_uint_fast64_t *)((const char *)e1000_stats(f->e) + off);
	return atomic_load(p);
}
#define STAT(f, field) stat(f, offsetof(struct net_stats, field))

static void put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_le32(uint8_t *p, uint32_t v) { put_le16(p, (uint16_t)v); put_le16(p + 2, (uint16_t)(v >> 16)); }
static void put_le64(uint8_t *p, uint64_t v) { put_le32(p, (uint32_t)v); put_le32(p + 4, (uint32_t)(v >> 32)); }
static uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint16_t get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get_be32(const uint8_t *p) { return (uint32_t)get_be16(p) << 16 | get_be16(p + 2); }
static void put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put_be32(uint8_t *p, uint32_t v) { put_be16(p, (uint16_t)(v >> 16)); put_be16(p + 2, (uint16_t)v); }

/* ---- reference checksums (written independently of the device) ---- */

static uint16_t ref_sum(const uint8_t *p, size_t len, uint32_t sum)
{
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)sum;
}

/* True if an IPv4 frame's header checksum verifies. */
static bool ipv4_csum_ok(const uint8_t *fr)
{
	return ref_sum(fr + 14, (size_t)(fr[14] & 0xf) * 4, 0) == 0xffff;
}

/* True if the TCP/UDP checksum of an IPv4 frame verifies (pseudo-header
 * included). */
static bool l4_csum_ok(const uint8_t *fr, size_t len)
{
	const uint8_t *ip = fr + 14;
	size_t ihl = (size_t)(ip[0] & 0xf) * 4, l4len = get_be16(ip + 2) - ihl;
	assert_true(14 + ihl + l4len <= len);
	uint32_t ph = get_be16(ip + 12) + get_be16(ip + 14) + get_be16(ip + 16) + get_be16(ip + 18) + ip[9] +
		      (uint32_t)l4len;
	return ref_sum(ip + ihl, l4len, ph) == 0xffff;
}

/* ---- frame builders ---- */

static size_t make_eth(uint8_t *p, const uint8_t *dst, uint16_t type)
{
	memcpy(p, dst, 6);
	memcpy(p + 6, peer_mac, 6);
	put_be16(p + 12, type);
	return 14;
}

/* Ethernet + IPv4 + TCP (20-byte headers), payload bytes i*7. The TCP
 * checksum field holds the pseudo-header sum, with or without the TCP
 * length (as Linux leaves it for checksum offload and TSO). */
static size_t make_tcp(uint8_t *p, size_t payload, bool pseudo_with_len)
{
	size_t off = make_eth(p, peer_mac, 0x0800);
	uint8_t *ip = p + off, *tcp = ip + 20;
	memset(ip, 0, 40);
	ip[0] = 0x45;
	put_be16(ip + 2, (uint16_t)(40 + payload));
	put_be16(ip + 4, 0x1234);
	ip[8] = 64;
	ip[9] = 6;
	put_be32(ip + 12, 0x0a000002);
	put_be32(ip + 16, 0x0a000001);
	put_be16(tcp, 40000);
	put_be16(tcp + 2, 5001);
	put_be32(tcp + 4, 0xfffff000);   /* the sequence number wraps during TSO */
	put_be32(tcp + 8, 77);
	tcp[12] = 5 << 4;
	tcp[13] = 0x18 | 0x01;           /* PSH ACK FIN */
	put_be16(tcp + 14, 65535);
	for (size_t i = 0; i < payload; i++)
		tcp[20 + i] = (uint8_t)(i * 7);
	uint32_t ph = 0x0a00 + 0x0002 + 0x0a00 + 0x0001 + 6 + (pseudo_with_len ? (uint32_t)(20 + payload) : 0);
	while (ph >> 16)
		ph = (ph & 0xffff) + (ph >> 16);
	put_be16(tcp + 16, (uint16_t)ph);
	return off + 40 + payload;
}

/* ---- descriptor helpers ---- */

static uint8_t *desc(struct fixture *f, uint64_t ring, unsigned i)
{
	return f->ram + ring + (uint64_t)i * 16;
}

static void tx_legacy(struct fixture *f, unsigned i, uint64_t addr, uint16_t len, uint8_t cmd)
{
	uint8_t *d = desc(f, TX_RING, i);
	memset(d, 0, 16);
	put_le64(d, addr);
	put_le16(d + 8, len);
	d[11] = cmd;
}

static void tx_data(struct fixture *f, unsigned i, uint64_t addr, uint32_t len, uint8_t dcmd, uint8_t popts)
{
	uint8_t *d = desc(f, TX_RING, i);
	memset(d, 0, 16);
	put_le64(d, addr);
	put_le32(d + 8, (len & 0xfffff) | (uint32_t)E1000_TXD_DTYP_DATA << 20);
	d[11] = dcmd | E1000_TXD_CMD_DEXT;
	d[13] = popts;
}

static void tx_ctx(struct fixture *f, unsigned i, uint8_t ipcss, uint8_t ipcso, uint16_t ipcse, uint8_t tucss,
		   uint8_t tucso, uint16_t tucse, uint8_t tucmd, uint32_t paylen, uint8_t hdr_len, uint16_t mss)
{
	uint8_t *d = desc(f, TX_RING, i);
	memset(d, 0, 16);
	d[0] = ipcss;
	d[1] = ipcso;
	put_le16(d + 2, ipcse);
	d[4] = tucss;
	d[5] = tucso;
	put_le16(d + 6, tucse);
	put_le32(d + 8, paylen & 0xfffff);
	d[11] = tucmd | E1000_TXD_CMD_DEXT;
	d[13] = hdr_len;
	put_le16(d + 14, mss);
}

static void tx_setup(struct fixture *f, unsigned ndesc)
{
	wr(f, E1000_TDBAL, TX_RING);
	wr(f, E1000_TDBAH, 0);
	wr(f, E1000_TDLEN, ndesc * 16);
	wr(f, E1000_TDH, 0);
	wr(f, E1000_TDT, 0);
	wr(f, E1000_TCTL, E1000_TCTL_EN);
}

static void rx_setup(struct fixture *f, unsigned ndesc, uint32_t rctl)
{
	for (unsigned i = 0; i < ndesc; i++) {
		memset(desc(f, RX_RING, i), 0, 16);
		put_le64(desc(f, RX_RING, i), RX_BUFS + 2048ULL * i);
	}
	wr(f, E1000_RDBAL, RX_RING);
	wr(f, E1000_RDBAH, 0);
	wr(f, E1000_RDLEN, ndesc * 16);
	wr(f, E1000_RDH, 0);
	wr(f, E1000_RDT, 0);
	wr(f, E1000_RCTL, rctl | E1000_RCTL_EN);
}

/* ---- identity, EEPROM, PHY ---- */

static void test_pci_identity(void **state)
{
	struct fixture *f = *state;
	unsigned df = e1000_pci(f->e)->devfn;
	assert_int_equal(pci_config_read(f->vm.pci, df, PCI_VENDOR_ID, 4), 0x100e8086);
	assert_int_equal(pci_config_read(f->vm.pci, df, PCI_REVISION_ID, 4), 0x02000002);
	assert_int_equal(pci_config_read(f->vm.pci, df, PCI_SUBSYSTEM_VENDOR_ID, 4), 0x001e8086);
	assert_int_equal(pci_config_read(f->vm.pci, df, PCI_INTERRUPT_PIN, 1), 1);
	assert_int_equal(e1000_pci(f->e)->bars[0].size, 128 * 1024);
	assert_int_equal(e1000_pci(f->e)->bars[1].type, PCI_BAR_IO);
	assert_int_equal(f->fb.offloads_set, 0);
	/* link up, full duplex, 1000 Mb/s */
	uint32_t st = rd(f, E1000_STATUS);
	assert_true(st & E1000_STATUS_LU);
	assert_true(st & E1000_STATUS_FD);
	assert_true(st & E1000_STATUS_SPEED_1000);
	/* unknown registers read 0 and ignore writes */
	wr(f, 0x8000, 0x12345678);
	assert_int_equal(rd(f, 0x8000), 0);
	assert_int_equal(rd(f, 0x1fffc), 0);
}

static void ee_write(struct fixture *f, uint32_t *eecd, uint32_t set, uint32_t clear)
{
	*eecd = (*eecd | set) & ~clear;
	wr(f, E1000_EECD, *eecd);
}

/* Linux's e1000_do_read_eeprom for a Microwire part, step by step. */
static uint16_t ee_bitbang(struct fixture *f, unsigned addr)
{
	uint32_t eecd = rd(f, E1000_EECD);
	assert_true(eecd & E1000_EECD_PRES);
	assert_false(eecd & E1000_EECD_SIZE);   /* 64 words */
	ee_write(f, &eecd, E1000_EECD_REQ, 0);
	assert_true(rd(f, E1000_EECD) & E1000_EECD_GNT);
	ee_write(f, &eecd, 0, E1000_EECD_DI | E1000_EECD_SK);
	ee_write(f, &eecd, E1000_EECD_CS, 0);
	uint32_t cmd = E1000_EE_READ_OPCODE << 6 | addr;
	for (int b = 8; b >= 0; b--) {
		ee_write(f, &eecd, (cmd >> b) & 1 ? E1000_EECD_DI : 0, (cmd >> b) & 1 ? 0 : E1000_EECD_DI);
		ee_write(f, &eecd, E1000_EECD_SK, 0);
		ee_write(f, &eecd, 0, E1000_EECD_SK);
	}
	ee_write(f, &eecd, 0, E1000_EECD_DI);
	uint16_t data = 0;
	for (int i = 0; i < 16; i++) {
		ee_write(f, &eecd, E1000_EECD_SK, 0);
		data = (uint16_t)(data << 1 | !!(rd(f, E1000_EECD) & E1000_EECD_DO));
		ee_write(f, &eecd, 0, E1000_EECD_SK);
	}
	/* release */
	ee_write(f, &eecd, 0, E1000_EECD_CS | E1000_EECD_DI);
	ee_write(f, &eecd, E1000_EECD_SK, 0);
	ee_write(f, &eecd, 0, E1000_EECD_SK);
	ee_write(f, &eecd, 0, E1000_EECD_REQ);
	return data;
}

static uint16_t ee_eerd(struct fixture *f, unsigned addr)
{
	wr(f, E1000_EERD, addr << E1000_EERD_ADDR_SHIFT | E1000_EERD_START);
	uint32_t v = rd(f, E1000_EERD);
	assert_true(v & E1000_EERD_DONE);
	return (uint16_t)(v >> E1000_EERD_DATA_SHIFT);
}

static void test_eeprom(void **state)
{
	struct fixture *f = *state;
	uint16_t sum = 0, sum2 = 0;
	for (unsigned i = 0; i < 64; i++) {
		uint16_t a = ee_bitbang(f, i), b = ee_eerd(f, i);
		assert_int_equal(a, b);
		sum = (uint16_t)(sum + a);
		sum2 = (uint16_t)(sum2 + b);
	}
	assert_int_equal(sum, 0xbaba);
	assert_int_equal(sum2, 0xbaba);
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(ee_eerd(f, i), our_mac[2 * i] | our_mac[2 * i + 1] << 8);
	assert_int_equal(ee_eerd(f, 0x0d), 0x100e);
	assert_int_equal(ee_eerd(f, 0x0e), 0x8086);
	/* a read started with zeros before the start bit still works */
	assert_int_equal(ee_bitbang(f, 1), our_mac[2] | our_mac[3] << 8);
}

static uint32_t mdic(struct fixture *f, uint32_t v)
{
	wr(f, E1000_MDIC, v);
	uint32_t r = rd(f, E1000_MDIC);
	assert_true(r & E1000_MDIC_READY);
	return r;
}

static uint16_t phy_rd(struct fixture *f, unsigned reg)
{
	uint32_t r = mdic(f, reg << E1000_MDIC_REG_SHIFT | 1u << E1000_MDIC_PHY_SHIFT | E1000_MDIC_OP_READ);
	assert_false(r & E1000_MDIC_ERROR);
	return (uint16_t)r;
}

static void test_phy(void **state)
{
	struct fixture *f = *state;
	/* what e1000_detect_gig_phy matches for an 82540: 0x01410c2x */
	uint32_t id = (uint32_t)phy_rd(f, PHY_ID1) << 16 | phy_rd(f, PHY_ID2);
	assert_int_equal(id & 0xfffffff0, 0x01410c20);
	uint16_t st = phy_rd(f, PHY_STATUS);
	assert_true(st & MII_SR_LINK_STATUS);
	assert_true(st & MII_SR_AUTONEG_COMPLETE);
	/* a write; reset and restart-autoneg clear themselves */
	mdic(f, PHY_AUTONEG_ADV << E1000_MDIC_REG_SHIFT | 1u << E1000_MDIC_PHY_SHIFT | E1000_MDIC_OP_WRITE | 0x0de1);
	assert_int_equal(phy_rd(f, PHY_AUTONEG_ADV), 0x0de1);
	mdic(f, PHY_CTRL << E1000_MDIC_REG_SHIFT | 1u << E1000_MDIC_PHY_SHIFT | E1000_MDIC_OP_WRITE | 0x9340);
	assert_int_equal(phy_rd(f, PHY_CTRL), 0x1140);
	/* read-only status */
	mdic(f, PHY_STATUS << E1000_MDIC_REG_SHIFT | 1u << E1000_MDIC_PHY_SHIFT | E1000_MDIC_OP_WRITE | 0);
	assert_true(phy_rd(f, PHY_STATUS) & MII_SR_LINK_STATUS);
	/* another PHY address errors */
	assert_true(mdic(f, PHY_ID1 << E1000_MDIC_REG_SHIFT | 2u << E1000_MDIC_PHY_SHIFT | E1000_MDIC_OP_READ) &
		    E1000_MDIC_ERROR);
	/* completion interrupt */
	wr(f, E1000_IMS, E1000_ICR_MDAC);
	mdic(f, PHY_ID1 << E1000_MDIC_REG_SHIFT | 1u << E1000_MDIC_PHY_SHIFT | E1000_MDIC_OP_READ | E1000_MDIC_INT_EN);
	assert_true(intx(f));
	assert_int_equal(rd(f, E1000_ICR), E1000_ICR_MDAC);
	assert_false(intx(f));
}

/* ---- reset and interrupts ---- */

static void test_reset(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(rd(f, E1000_RA), 0x12005452);
	assert_int_equal(rd(f, E1000_RA + 4), 0x80005634);
	wr(f, E1000_RA, 0x11111111);
	wr(f, E1000_RA + 8, 0x22222222);
	wr(f, E1000_RA + 12, 0xffffffff);
	assert_int_equal(rd(f, E1000_RA + 12), 0x8003ffff);   /* reserved bits stay 0 */
	wr(f, E1000_MTA + 4, 0x5);
	wr(f, E1000_RCTL, E1000_RCTL_BAM);
	wr(f, E1000_IMS, E1000_ICR_LSC);
	wr(f, E1000_ICS, E1000_ICR_LSC);
	assert_true(intx(f));
	/* as Linux's e1000_reset_hw does it: through IOADDR/IODATA */
	uint32_t ctrl = io_rd(f, E1000_CTRL);
	assert_true(ctrl & E1000_CTRL_SLU);
	io_wr(f, E1000_CTRL, ctrl | E1000_CTRL_RST);
	assert_false(intx(f));
	assert_false(rd(f, E1000_CTRL) & E1000_CTRL_RST);
	assert_int_equal(rd(f, E1000_IMS), 0);
	assert_int_equal(rd(f, E1000_ICR), 0);
	assert_int_equal(rd(f, E1000_RCTL), 0);
	assert_int_equal(rd(f, E1000_MTA + 4), 0);
	assert_int_equal(rd(f, E1000_RA), 0x12005452);
	assert_int_equal(rd(f, E1000_RA + 4), 0x80005634);
	assert_int_equal(rd(f, E1000_RA + 12), 0);
	assert_true(rd(f, E1000_STATUS) & E1000_STATUS_LU);
	assert_int_equal(ee_eerd(f, 0), our_mac[0] | our_mac[1] << 8);
}

static void test_interrupt_mask(void **state)
{
	struct fixture *f = *state;
	wr(f, E1000_ICS, E1000_ICR_RXT0);
	assert_false(intx(f));                 /* masked */
	wr(f, E1000_IMS, E1000_ICR_RXT0 | E1000_ICR_TXDW);
	assert_true(intx(f));
	assert_int_equal(rd(f, E1000_IMS), E1000_ICR_RXT0 | E1000_ICR_TXDW);
	wr(f, E1000_IMC, E1000_ICR_RXT0);
	assert_false(intx(f));                 /* IMC masks it again */
	wr(f, E1000_IMS, E1000_ICR_RXT0);
	assert_true(intx(f));
	wr(f, E1000_ICR, E1000_ICR_RXT0);      /* write 1 to clear */
	assert_false(intx(f));
	wr(f, E1000_ICS, E1000_ICR_TXDW);
	assert_true(intx(f));
	assert_int_equal(rd(f, E1000_ICR), E1000_ICR_TXDW);   /* read clears */
	assert_false(intx(f));
	assert_int_equal(rd(f, E1000_ICR), 0);
	assert_int_equal(STAT(f, irqs), 3);
	/* byte access to IMS merges with nothing (it is an action register) */
	uint8_t b = E1000_ICR_TXQE;
	assert_true(io_bus_access(&f->vm.mmio, f->bar0 + E1000_IMS, &b, 1, true));
	assert_int_equal(rd(f, E1000_IMS), E1000_ICR_RXT0 | E1000_ICR_TXDW | E1000_ICR_TXQE);
}

static void test_itr_moderation(void **state)
{
	struct fixture *f = *state;
	wr(f, E1000_ITR, 39063);   /* 10 ms */
	wr(f, E1000_IMS, E1000_ICR_RXT0);
	wr(f, E1000_ICS, E1000_ICR_RXT0);
	assert_true(intx(f));
	rd(f, E1000_ICR);
	assert_false(intx(f));
	wr(f, E1000_ICS, E1000_ICR_RXT0);
	assert_false(intx(f));               /* too soon: deferred */
	struct timespec ts = { 0, 12 * 1000 * 1000 };
	nanosleep(&ts, NULL);
	e1000_loop_work(f->e);                 /* what the timer does */
	assert_true(intx(f));
}

/* ---- TX ---- */

static void test_tx_legacy(void **state)
{
	struct fixture *f = *state;
	tx_setup(f, 8);
	wr(f, E1000_IMS, E1000_ICR_TXDW);
	uint8_t *buf = f->ram + TX_BUFS;
	size_t len = make_eth(buf, peer_mac, 0x88b5);
	for (size_t i = len; i < 100; i++)
		buf[i] = (uint8_t)i;
	tx_legacy(f, 0, TX_BUFS, 30, E1000_TXD_CMD_IFCS);
	tx_legacy(f, 1, TX_BUFS + 30, 70, E1000_TXD_CMD_EOP | E1000_TXD_CMD_IFCS | E1000_TXD_CMD_RS);
	wr(f, E1000_TDT, 2);
	assert_int_equal(f->fb.nsent, 1);
	assert_false(f->fb.bad_header);
	assert_int_equal(f->fb.sent_len[0], 100);
	assert_memory_equal(f->fb.sent[0], buf, 100);
	assert_int_equal(rd(f, E1000_TDH), 2);
	assert_false(desc(f, TX_RING, 0)[12] & E1000_TXD_STAT_DD);   /* no RS */
	assert_true(desc(f, TX_RING, 1)[12] & E1000_TXD_STAT_DD);
	assert_true(intx(f));
	assert_int_equal(rd(f, E1000_ICR), E1000_ICR_TXDW | E1000_ICR_TXQE);
	assert_false(intx(f));
	assert_int_equal(STAT(f, tx_packets), 1);
	assert_int_equal(STAT(f, tx_bytes), 100);
	assert_int_equal(STAT(f, doorbells), 2);   /* the TDT writes */
	assert_int_equal(rd(f, E1000_GPTC), 1);
	assert_int_equal(rd(f, E1000_GPTC), 0);    /* read to clear */
	assert_int_equal(rd(f, E1000_GOTCL), 104);
	assert_int_equal(rd(f, E1000_GOTCH), 0);
	assert_int_equal(rd(f, E1000_GOTCL), 0);
	/* with TCTL.EN clear nothing goes out; enabling resumes */
	wr(f, E1000_TCTL, 0);
	tx_legacy(f, 2, TX_BUFS, 60, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS);
	wr(f, E1000_TDT, 3);
	assert_int_equal(f->fb.nsent, 1);
	wr(f, E1000_TCTL, E1000_TCTL_EN);
	assert_int_equal(f->fb.nsent, 2);
	assert_int_equal(STAT(f, reg_exits), 18);
}

static void test_tx_wraparound(void **state)
{
	struct fixture *f = *state;
	tx_setup(f, 8);
	wr(f, E1000_TDH, 6);
	wr(f, E1000_TDT, 6);
	uint8_t *buf = f->ram + TX_BUFS;
	for (unsigned k = 0; k < 4; k++) {
		make_eth(buf + 256 * k, peer_mac, 0x88b5);
		buf[256 * k + 14] = (uint8_t)k;
		tx_legacy(f, (6 + k) % 8, TX_BUFS + 256 * k, 64, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS);
	}
	wr(f, E1000_TDT, 2);
	assert_int_equal(f->fb.nsent, 4);
	for (unsigned k = 0; k < 4; k++) {
		assert_int_equal(f->fb.sent[k][14], k);
		assert_true(desc(f, TX_RING, (6 + k) % 8)[12] & E1000_TXD_STAT_DD);
	}
	assert_int_equal(rd(f, E1000_TDH), 2);
}

static void test_tx_hostile(void **state)
{
	struct fixture *f = *state;
	tx_setup(f, 8);
	uint8_t *buf = f->ram + TX_BUFS;
	make_eth(buf, peer_mac, 0x88b5);
	uint64_t dropped = 0;

	/* TDT beyond the ring */
	wr(f, E1000_TDT, 8);
	assert_int_equal(STAT(f, tx_dropped), ++dropped);
	assert_int_equal(rd(f, E1000_TDH), 0);
	wr(f, E1000_TDT, 0xffff);
	assert_int_equal(STAT(f, tx_dropped), ++dropped);

	/* TDLEN not a multiple of 128 rounds down: 100 is no ring at all */
	wr(f, E1000_TDLEN, 100);
	assert_int_equal(rd(f, E1000_TDLEN), 0);
	wr(f, E1000_TDT, 1);
	assert_int_equal(STAT(f, tx_dropped), ++dropped);
	wr(f, E1000_TDLEN, 8 * 16);
	wr(f, E1000_TDT, 0);

	/* the ring outside RAM, and straddling its end */
	wr(f, E1000_TDBAL, 0xf0000000);
	wr(f, E1000_TDT, 1);
	assert_int_equal(STAT(f, tx_dropped), ++dropped);
	wr(f, E1000_TDBAL, RAM_SIZE - 64);
	assert_int_equal(STAT(f, tx_dropped), dropped);
	wr(f, E1000_TDT, 2);
	assert_int_equal(STAT(f, tx_dropped), ++dropped);
	wr(f, E1000_TDBAL, TX_RING);
	wr(f, E1000_TDT, 0);
	assert_int_equal(f->fb.nsent, 0);

	/* a packet of only a zero-length buffer */
	tx_legacy(f, 0, TX_BUFS, 0, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS);
	/* a buffer outside RAM */
	tx_legacy(f, 1, 0xfffffffffff0ULL, 64, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS);
	/* a buffer running past the end of RAM */
	tx_legacy(f, 2, RAM_SIZE - 32, 64, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS);
	/* a good one after them */
	tx_legacy(f, 3, TX_BUFS, 64, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS);
	wr(f, E1000_TDT, 4);
	dropped += 3;
	assert_int_equal(STAT(f, tx_dropped), dropped);
	assert_int_equal(f->fb.nsent, 1);
	for (unsigned i = 0; i < 4; i++)
		assert_true(desc(f, TX_RING, i)[12] & E1000_TXD_STAT_DD);   /* all completed */
	assert_int_equal(rd(f, E1000_TDH), 4);

	/* more than 64 KiB + headers gathered: dropped, and the next packet is fine */
	tx_data(f, 4, BIG_BUF, 40000, 0, 0);
	tx_data(f, 5, BIG_BUF, 40000, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS, 0);
	tx_legacy(f, 6, TX_BUFS, 64, E1000_TXD_CMD_EOP);
	wr(f, E1000_TDT, 7);
	assert_int_equal(STAT(f, tx_dropped), ++dropped);
	assert_int_equal(f->fb.nsent, 2);
	/* a single data descriptor of 1 MiB - 1 */
	tx_data(f, 7, BIG_BUF, 0xfffff, E1000_TXD_CMD_EOP, 0);
	wr(f, E1000_TDT, 0);
	assert_int_equal(STAT(f, tx_dropped), ++dropped);
	/* a frame over NET_MAX_FRAME without TSO */
	tx_data(f, 0, BIG_BUF, NET_MAX_FRAME + 1, E1000_TXD_CMD_EOP, 0);
	wr(f, E1000_TDT, 1);
	assert_int_equal(STAT(f, tx_dropped), ++dropped);
	assert_int_equal(f->fb.nsent, 2);

	/* a ring of garbage: one pass, then it returns */
	for (unsigned i = 0; i < 8 * 16; i++)
		f->ram[TX_RING + i] = (uint8_t)(i * 37 + 11);
	wr(f, E1000_TDT, 0);
	assert_int_equal(rd(f, E1000_TDH), 0);
	/* and no EOP ever: the packet being gathered stays bounded */
	for (unsigned i = 0; i < 8; i++)
		tx_data(f, i, BIG_BUF, 30000, 0, 0);
	for (unsigned round = 0; round < 4; round++) {
		wr(f, E1000_TDT, 7);
		wr(f, E1000_TDT, 0);
	}
	assert_int_equal(rd(f, E1000_TDH), 0);
	tx_legacy(f, 0, TX_BUFS, 64, E1000_TXD_CMD_EOP);   /* ends the overlong packet */
	uint64_t before = STAT(f, tx_dropped);
	wr(f, E1000_TDT, 1);
	assert_int_equal(STAT(f, tx_dropped), before + 1);
}

static void test_tx_checksum_offload(void **state)
{
	struct fixture *f = *state;
	tx_setup(f, 16);
	uint8_t *buf = f->ram + TX_BUFS;
	/* TCP: context with TUCSS/TUCSO (TUCSE 0 = to the end) and IPCSS/IPCSO/IPCSE */
	size_t len = make_tcp(buf, 301, true);   /* odd length */
	buf[14 + 10] = buf[14 + 11] = 0;          /* IP checksum field zero */
	tx_ctx(f, 0, 14, 14 + 10, 14 + 19, 34, 34 + 16, 0, E1000_TXD_CMD_TCP | E1000_TXD_CMD_IP, 0, 0, 0);
	tx_data(f, 1, TX_BUFS, 20, 0, E1000_TXD_POPTS_TXSM | E1000_TXD_POPTS_IXSM);
	tx_data(f, 2, TX_BUFS + 20, (uint32_t)len - 20, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS, 0);
	wr(f, E1000_TDT, 3);
	assert_int_equal(f->fb.nsent, 1);
	assert_int_equal(f->fb.sent_len[0], len);
	assert_true(ipv4_csum_ok(f->fb.sent[0]));
	assert_true(l4_csum_ok(f->fb.sent[0], len));
	/* only the two checksum fields changed */
	uint8_t *s = f->fb.sent[0];
	assert_memory_equal(s, buf, 24);
	assert_memory_equal(s + 26, buf + 26, 24);
	assert_memory_equal(s + 52, buf + 52, len - 52);

	/* UDP with only TXSM: the IP checksum is left alone */
	uint8_t *u = buf + 2048;
	size_t off = make_eth(u, peer_mac, 0x0800);
	uint8_t *ip = u + off;
	memset(ip, 0, 28);
	ip[0] = 0x45;
	put_be16(ip + 2, 28 + 100);
	ip[8] = 64;
	ip[9] = 17;
	put_be32(ip + 12, 0xc0a80001);
	put_be32(ip + 16, 0xc0a80002);
	put_be16(ip + 10, 0xbeef);
	put_be16(ip + 20, 68);
	put_be16(ip + 22, 67);
	put_be16(ip + 24, 8 + 100);
	for (unsigned i = 0; i < 100; i++)
		ip[28 + i] = (uint8_t)(0xa0 + i);
	uint32_t ph = 0xc0a8 + 0x0001 + 0xc0a8 + 0x0002 + 17 + 108;
	ph = (ph & 0xffff) + (ph >> 16);
	put_be16(ip + 26, (uint16_t)ph);
	size_t ulen = off + 128;
	tx_ctx(f, 3, 0, 0, 0, 34, 34 + 6, 0, E1000_TXD_CMD_IP, 0, 0, 0);
	tx_data(f, 4, TX_BUFS + 2048, (uint32_t)ulen, E1000_TXD_CMD_EOP, E1000_TXD_POPTS_TXSM);
	wr(f, E1000_TDT, 5);
	assert_int_equal(f->fb.nsent, 2);
	assert_true(l4_csum_ok(f->fb.sent[1], ulen));
	assert_int_equal(get_be16(f->fb.sent[1] + 24), 0xbeef);

	/* a legacy descriptor with IC: CSS/CSO */
	len = make_tcp(buf + 4096, 64, true);
	tx_legacy(f, 5, TX_BUFS + 4096, (uint16_t)len, E1000_TXD_CMD_EOP | E1000_TXD_CMD_IC);
	desc(f, TX_RING, 5)[10] = 34 + 16;   /* CSO */
	desc(f, TX_RING, 5)[13] = 34;        /* CSS */
	wr(f, E1000_TDT, 6);
	assert_int_equal(f->fb.nsent, 3);
	assert_true(l4_csum_ok(f->fb.sent[2], len));

	/* offsets past the frame insert nothing and crash nothing */
	tx_ctx(f, 6, 200, 250, 0, 255, 254, 0, E1000_TXD_CMD_TCP, 0, 0, 0);
	tx_data(f, 7, TX_BUFS, 60, E1000_TXD_CMD_EOP, E1000_TXD_POPTS_TXSM | E1000_TXD_POPTS_IXSM);
	wr(f, E1000_TDT, 8);
	assert_int_equal(f->fb.nsent, 4);
	assert_memory_equal(f->fb.sent[3], buf, 60);
}

static void test_tso(void **state)
{
	struct fixture *f = *state;
	tx_setup(f, 16);
	wr(f, E1000_IMS, E1000_ICR_TXDW);
	uint8_t *buf = f->ram + BIG_BUF;
	const size_t payload = 10240, mss = 1448, hl = 54;
	size_t len = make_tcp(buf, payload, false);   /* as Linux's e1000_tso leaves it */
	put_be16(buf + 14 + 2, 0);
	put_be16(buf + 14 + 10, 0);
	tx_ctx(f, 0, 14, 14 + 10, 14 + 19, 34, 34 + 16, 0,
	       E1000_TXD_CMD_TCP | E1000_TXD_CMD_IP | E1000_TXD_CMD_TSE | E1000_TXD_CMD_RS, (uint32_t)payload,
	       (uint8_t)hl, (uint16_t)mss);
	uint8_t popts = E1000_TXD_POPTS_TXSM | E1000_TXD_POPTS_IXSM;
	tx_data(f, 1, BIG_BUF, (uint32_t)hl, E1000_TXD_CMD_TSE, popts);
	tx_data(f, 2, BIG_BUF + hl, 4000, E1000_TXD_CMD_TSE, popts);
	tx_data(f, 3, BIG_BUF + hl + 4000, (uint32_t)(len - hl - 4000),
		E1000_TXD_CMD_TSE | E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS, popts);
	wr(f, E1000_TDT, 4);
	size_t nseg = (payload + mss - 1) / mss;
	assert_int_equal(nseg, 8);
	assert_int_equal(f->fb.nsent, nseg);
	assert_false(f->fb.bad_header);
	size_t got = 0;
	for (size_t i = 0; i < nseg; i++) {
		const uint8_t *s = f->fb.sent[i];
		size_t plen = i + 1 < nseg ? mss : payload - mss * (nseg - 1);
		assert_int_equal(f->fb.sent_len[i], hl + plen);
		assert_memory_equal(s, buf, 14);                            /* Ethernet */
		assert_int_equal(get_be16(s + 14 + 2), 40 + plen);           /* IP total length */
		assert_int_equal(get_be16(s + 14 + 4), 0x1234 + i);          /* IP ID */
		assert_int_equal(get_be32(s + 34 + 4), (uint32_t)(0xfffff000u + i * mss)); /* sequence */
		uint8_t flags = s[34 + 13];
		if (i + 1 < nseg)
			assert_int_equal(flags, 0x10);   /* ACK only */
		else
			assert_int_equal(flags, 0x19);   /* PSH ACK FIN on the last */
		assert_true(ipv4_csum_ok(s));
		assert_true(l4_csum_ok(s, f->fb.sent_len[i]));
		assert_memory_equal(s + hl, buf + hl + got, plen);
		got += plen;
	}
	assert_int_equal(got, payload);
	assert_true(desc(f, TX_RING, 0)[12] & E1000_TXD_STAT_DD);
	assert_true(desc(f, TX_RING, 3)[12] & E1000_TXD_STAT_DD);
	assert_true(intx(f));
	assert_int_equal(rd(f, E1000_TSCTC), 1);
	assert_int_equal(STAT(f, tx_packets), nseg);

	/* a context the packet cannot satisfy: header longer than the packet,
	 * MSS 0, headers beyond HDRLEN */
	tx_ctx(f, 4, 14, 24, 33, 34, 50, 0, E1000_TXD_CMD_TCP | E1000_TXD_CMD_IP | E1000_TXD_CMD_TSE, 10, 200, 100);
	tx_data(f, 5, BIG_BUF, 100, E1000_TXD_CMD_TSE | E1000_TXD_CMD_EOP, popts);
	tx_ctx(f, 6, 14, 24, 33, 34, 50, 0, E1000_TXD_CMD_TCP | E1000_TXD_CMD_IP | E1000_TXD_CMD_TSE, 10, 54, 0);
	tx_data(f, 7, BIG_BUF, 100, E1000_TXD_CMD_TSE | E1000_TXD_CMD_EOP, popts);
	tx_ctx(f, 8, 14, 24, 33, 60, 76, 0, E1000_TXD_CMD_TCP | E1000_TXD_CMD_IP | E1000_TXD_CMD_TSE, 10, 54, 10);
	tx_data(f, 9, BIG_BUF, 100, E1000_TXD_CMD_TSE | E1000_TXD_CMD_EOP, popts);
	uint64_t before = STAT(f, tx_dropped);
	wr(f, E1000_TDT, 10);
	assert_int_equal(STAT(f, tx_dropped), before + 3);
	assert_int_equal(f->fb.nsent, nseg);
}

static void test_tx_rate_limit(void **state)
{
	struct fixture *f = *state;
	tx_setup(f, 8);
	make_eth(f->ram + TX_BUFS, peer_mac, 0x88b5);
	tx_legacy(f, 0, TX_BUFS, 64, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS);
	tx_legacy(f, 1, TX_BUFS, 64, E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS);
	wr(f, E1000_TDT, 2);
	assert_int_equal(f->fb.nsent, 1);            /* the second waits */
	assert_int_equal(rd(f, E1000_TDH), 1);
	assert_int_equal(STAT(f, throttled), 1);
	wr(f, E1000_TDT, 2);                         /* doorbells while waiting do nothing */
	assert_int_equal(f->fb.nsent, 1);
	struct timespec ts = { 0, 25 * 1000 * 1000 };
	nanosleep(&ts, NULL);
	e1000_loop_work(f->e);                         /* the timer fired */
	assert_int_equal(f->fb.nsent, 2);
	assert_int_equal(rd(f, E1000_TDH), 2);
}

/* ---- RX ---- */

static void test_rx_basic(void **state)
{
	struct fixture *f = *state;
	rx_setup(f, 8, E1000_RCTL_BAM);
	wr(f, E1000_IMS, E1000_ICR_RXT0);
	assert_int_equal(fb_queued(&f->fb), 0);
	e1000_loop_work(f->e);                 /* RDT = RDH: nothing to give the guest */
	assert_false(f->fb.notify);
	wr(f, E1000_RDT, 7);
	e1000_loop_work(f->e);                 /* the kick the RDT write sent */
	assert_true(f->fb.notify);

	uint8_t fr[100];
	make_eth(fr, our_mac, 0x88b5);
	for (unsigned i = 14; i < sizeof(fr); i++)
		fr[i] = (uint8_t)(i * 3);
	fb_queue(&f->fb, fr, sizeof(fr));
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	assert_int_equal(fb_queued(&f->fb), 0);
	uint8_t *d = desc(f, RX_RING, 0);
	assert_int_equal(get_le16(d + 8), 104);   /* FCS included */
	assert_int_equal(d[12], E1000_RXD_STAT_DD | E1000_RXD_STAT_EOP | E1000_RXD_STAT_IXSM);
	assert_int_equal(d[13], 0);
	assert_memory_equal(f->ram + RX_BUFS, fr, sizeof(fr));
	uint32_t fcs = (uint32_t)crc32(0L, fr, sizeof(fr));
	assert_int_equal(get_le16(f->ram + RX_BUFS + 100) | (uint32_t)get_le16(f->ram + RX_BUFS + 102) << 16, fcs);
	assert_int_equal(rd(f, E1000_RDH), 1);
	assert_true(intx(f));
	assert_int_equal(rd(f, E1000_ICR) & E1000_ICR_RXT0, E1000_ICR_RXT0);
	assert_int_equal(STAT(f, rx_packets), 1);
	assert_int_equal(STAT(f, rx_bytes), 100);
	assert_int_equal(rd(f, E1000_GPRC), 1);
	assert_int_equal(rd(f, E1000_TORL), 104);

	/* SECRC: no FCS; a runt is padded to 60 */
	wr(f, E1000_RCTL, E1000_RCTL_EN | E1000_RCTL_BAM | E1000_RCTL_SECRC);
	fb_queue(&f->fb, fr, 42);
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	d = desc(f, RX_RING, 1);
	assert_int_equal(get_le16(d + 8), 60);
	assert_memory_equal(f->ram + RX_BUFS + 2048, fr, 42);
	for (unsigned i = 42; i < 60; i++)
		assert_int_equal(f->ram[RX_BUFS + 2048 + i], 0);
}

static void test_rx_multi_descriptor(void **state)
{
	struct fixture *f = *state;
	rx_setup(f, 8, E1000_RCTL_LPE);   /* 2048-byte buffers, long packets */
	wr(f, E1000_RDT, 7);
	uint8_t *fr = malloc(3000);
	make_eth(fr, our_mac, 0x88b5);
	for (unsigned i = 14; i < 3000; i++)
		fr[i] = (uint8_t)(i ^ (i >> 8));
	fb_queue(&f->fb, fr, 3000);
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	uint8_t *d0 = desc(f, RX_RING, 0), *d1 = desc(f, RX_RING, 1);
	assert_int_equal(get_le16(d0 + 8), 2048);
	assert_int_equal(d0[12], E1000_RXD_STAT_DD | E1000_RXD_STAT_IXSM);   /* no EOP */
	assert_int_equal(get_le16(d1 + 8), 3004 - 2048);
	assert_int_equal(d1[12], E1000_RXD_STAT_DD | E1000_RXD_STAT_EOP | E1000_RXD_STAT_IXSM);
	assert_memory_equal(f->ram + RX_BUFS, fr, 2048);
	assert_memory_equal(f->ram + RX_BUFS + 2048, fr + 2048, 3000 - 2048);
	assert_int_equal(rd(f, E1000_RDH), 2);

	/* without LPE such a frame is too long: dropped, counted */
	wr(f, E1000_RCTL, E1000_RCTL_EN);
	fb_queue(&f->fb, fr, 3000);
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	assert_int_equal(rd(f, E1000_RDH), 2);
	assert_int_equal(STAT(f, rx_dropped), 1);
	assert_int_equal(rd(f, E1000_ROC), 1);
	/* 1024-byte buffers (BSIZE 01): a 1514-byte frame takes two */
	wr(f, E1000_RCTL, E1000_RCTL_EN | 1u << E1000_RCTL_BSIZE_SHIFT);
	fb_queue(&f->fb, fr, 1514);
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	assert_int_equal(get_le16(desc(f, RX_RING, 2) + 8), 1024);
	assert_int_equal(get_le16(desc(f, RX_RING, 3) + 8), 1518 - 1024);
	assert_int_equal(rd(f, E1000_RDH), 4);
	free(fr);
}

static void test_rx_backpressure(void **state)
{
	struct fixture *f = *state;
	rx_setup(f, 8, 0);
	wr(f, E1000_RDT, 2);                  /* two buffers */
	e1000_loop_work(f->e);
	assert_true(f->fb.notify);
	wr(f, E1000_IMS, E1000_ICR_RXT0 | E1000_ICR_RXDMT0);
	uint8_t fr[64];
	make_eth(fr, our_mac, 0x88b5);
	for (unsigned k = 0; k < 4; k++) {
		fr[20] = (uint8_t)k;
		fb_queue(&f->fb, fr, sizeof(fr));
	}
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	/* two delivered; the rest wait in the backend, and RX notifications stop */
	assert_int_equal(rd(f, E1000_RDH), 2);
	assert_int_equal(fb_queued(&f->fb), 2);
	assert_false(f->fb.notify);
	assert_int_equal(STAT(f, rx_dropped), 0);
	assert_int_equal(rd(f, E1000_ICR), E1000_ICR_RXT0 | E1000_ICR_RXDMT0);
	assert_int_equal(f->ram[RX_BUFS + 2048 + 20], 1);
	/* the guest returns buffers: the RDT write kicks the loop, which pulls */
	wr(f, E1000_RDT, 6);
	e1000_loop_work(f->e);
	assert_int_equal(fb_queued(&f->fb), 0);
	assert_int_equal(rd(f, E1000_RDH), 4);
	assert_int_equal(f->ram[RX_BUFS + 3 * 2048 + 20], 3);
	assert_true(f->fb.notify);
	/* disabling RX stops notifications too */
	wr(f, E1000_RCTL, 0);
	e1000_loop_work(f->e);
	assert_false(f->fb.notify);
	/* and a ring outside RAM takes nothing */
	wr(f, E1000_RDBAL, 0xf0000000);
	wr(f, E1000_RCTL, E1000_RCTL_EN);
	fb_queue(&f->fb, fr, sizeof(fr));
	e1000_loop_work(f->e);
	assert_int_equal(fb_queued(&f->fb), 1);
	assert_false(f->fb.notify);
}

static void test_rx_bad_buffer(void **state)
{
	struct fixture *f = *state;
	rx_setup(f, 8, 0);
	put_le64(desc(f, RX_RING, 0), 0xfffffffff000ULL);
	wr(f, E1000_RDT, 7);
	uint8_t fr[64];
	make_eth(fr, our_mac, 0x88b5);
	fb_queue(&f->fb, fr, sizeof(fr));
	fb_queue(&f->fb, fr, sizeof(fr));
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	uint8_t *d = desc(f, RX_RING, 0);
	assert_true(d[12] & E1000_RXD_STAT_DD);
	assert_int_equal(d[13], E1000_RXD_ERR_RXE);   /* the driver drops it */
	assert_int_equal(desc(f, RX_RING, 1)[13], 0);
	assert_int_equal(STAT(f, rx_dropped), 1);
	assert_int_equal(STAT(f, rx_packets), 1);
}

static void test_rx_filter(void **state)
{
	struct fixture *f = *state;
	rx_setup(f, 16, 0);
	wr(f, E1000_RDT, 15);
	uint8_t fr[64] = { 0 };
	static const uint8_t other[6] = { 0x52, 0x54, 0x00, 0x99, 0x99, 0x99 };
	static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const uint8_t mcast[6] = { 0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb };
	struct { const uint8_t *dst; bool ok; } cases[] = {
		{ other, false }, { bcast, false }, { mcast, false }, { our_mac, true },
	};
	for (unsigned i = 0; i < 4; i++) {
		make_eth(fr, cases[i].dst, 0x88b5);
		fb_queue(&f->fb, fr, sizeof(fr));
	}
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	assert_int_equal(rd(f, E1000_RDH), 1);
	assert_int_equal(STAT(f, rx_dropped), 3);
	/* BAM accepts broadcast; the MTA hash (MO=0: bits 47:36) a multicast group */
	unsigned hash = ((unsigned)(mcast[4] | mcast[5] << 8) >> 4) & 0xfff;
	wr(f, E1000_MTA + 4 * (hash >> 5), 1u << (hash & 31));
	wr(f, E1000_RCTL, E1000_RCTL_EN | E1000_RCTL_BAM);
	make_eth(fr, bcast, 0x88b5);
	fb_queue(&f->fb, fr, sizeof(fr));
	make_eth(fr, mcast, 0x88b5);
	fb_queue(&f->fb, fr, sizeof(fr));
	make_eth(fr, other, 0x88b5);
	fb_queue(&f->fb, fr, sizeof(fr));
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	assert_int_equal(rd(f, E1000_RDH), 3);
	assert_int_equal(STAT(f, rx_dropped), 4);
	assert_int_equal(rd(f, E1000_BPRC), 1);
	assert_int_equal(rd(f, E1000_MPRC), 1);
	/* a second unicast address in RAR1 */
	wr(f, E1000_RA + 8, (uint32_t)other[0] | other[1] << 8 | other[2] << 16 | (uint32_t)other[3] << 24);
	wr(f, E1000_RA + 12, (uint32_t)other[4] | other[5] << 8 | E1000_RAH_AV);
	fb_queue(&f->fb, fr, sizeof(fr));
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	assert_int_equal(rd(f, E1000_RDH), 4);
	/* promiscuous: UPE and MPE */
	wr(f, E1000_RA + 12, 0);
	wr(f, E1000_RCTL, E1000_RCTL_EN | E1000_RCTL_UPE | E1000_RCTL_MPE);
	fb_queue(&f->fb, fr, sizeof(fr));
	make_eth(fr, (const uint8_t[6]){ 0x33, 0x33, 0, 0, 0, 1 }, 0x86dd);
	fb_queue(&f->fb, fr, sizeof(fr));
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	assert_int_equal(rd(f, E1000_RDH), 6);
	assert_int_equal(STAT(f, rx_dropped), 4);
}

static void test_rx_vlan(void **state)
{
	struct fixture *f = *state;
	rx_setup(f, 8, E1000_RCTL_VFE);
	wr(f, E1000_RDT, 7);
	wr(f, E1000_CTRL, rd(f, E1000_CTRL) | E1000_CTRL_VME);
	wr(f, E1000_VFTA + 4 * (100 >> 5), 1u << (100 & 31));
	uint8_t fr[80];
	make_eth(fr, our_mac, 0x8100);
	put_be16(fr + 14, 0x2000 | 100);   /* priority 1, VLAN 100 */
	put_be16(fr + 16, 0x0800);
	for (unsigned i = 18; i < sizeof(fr); i++)
		fr[i] = (uint8_t)i;
	fb_queue(&f->fb, fr, sizeof(fr));
	put_be16(fr + 14, 101);            /* not in the VLAN filter */
	fb_queue(&f->fb, fr, sizeof(fr));
	f->fb.be.rx_ready(f->fb.be.opaque, 0);
	assert_int_equal(rd(f, E1000_RDH), 1);
	uint8_t *d = desc(f, RX_RING, 0);
	assert_true(d[12] & E1000_RXD_STAT_VP);
	assert_int_equal(get_le16(d + 14), 0x2000 | 100);
	assert_int_equal(get_le16(d + 8), 76 + 4);
	assert_memory_equal(f->ram + RX_BUFS, fr, 12);
	assert_memory_equal(f->ram + RX_BUFS + 12, fr + 16, 64);
	assert_int_equal(STAT(f, rx_dropped), 1);

	/* TX: VLE inserts the tag from the EOP descriptor's special field */
	tx_setup(f, 8);
	make_eth(f->ram + TX_BUFS, peer_mac, 0x0800);
	tx_legacy(f, 0, TX_BUFS, 60, E1000_TXD_CMD_EOP | E1000_TXD_CMD_VLE);
	put_le16(desc(f, TX_RING, 0) + 14, 0x0064);
	wr(f, E1000_TDT, 1);
	assert_int_equal(f->fb.nsent, 1);
	assert_int_equal(f->fb.sent_len[0], 64);
	assert_int_equal(get_be16(f->fb.sent[0] + 12), 0x8100);
	assert_int_equal(get_be16(f->fb.sent[0] + 14), 0x0064);
	assert_int_equal(get_be16(f->fb.sent[0] + 16), 0x0800);
}

static void test_partial_access(void **state)
{
	struct fixture *f = *state;
	/* 16-bit writes to RDT's halves, an 8-byte read of RDBAL/RDBAH */
	wr(f, E1000_RDBAL, 0x12345670);
	wr(f, E1000_RDBAH, 0x9);
	uint64_t q = 0;
	assert_true(io_bus_access(&f->vm.mmio, f->bar0 + E1000_RDBAL, &q, 8, false));
	assert_int_equal(q, 0x912345670ULL);
	uint16_t h = 0x0102;
	assert_true(io_bus_access(&f->vm.mmio, f->bar0 + E1000_FCTTV + 1, &h, 2, true));
	assert_int_equal(rd(f, E1000_FCTTV), 0x010200);
	/* IODATA with an IOADDR outside the register file reads 0 */
	assert_int_equal(io_rd(f, 0x1fff0), 0);
	uint32_t a = 0;
	assert_true(io_bus_access(&f->vm.pio, f->bar1, &a, 4, false));
	assert_int_equal(a, 0x1fff0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_pci_identity, setup, teardown),
		cmocka_unit_test_setup_teardown(test_eeprom, setup, teardown),
		cmocka_unit_test_setup_teardown(test_phy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
		cmocka_unit_test_setup_teardown(test_interrupt_mask, setup, teardown),
		cmocka_unit_test_setup_teardown(test_itr_moderation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tx_legacy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tx_wraparound, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tx_hostile, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tx_checksum_offload, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tso, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tx_rate_limit, setup_limited, teardown),
		cmocka_unit_test_setup_teardown(test_rx_basic, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rx_multi_descriptor, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rx_backpressure, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rx_bad_buffer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rx_filter, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rx_vlan, setup, teardown),
		cmocka_unit_test_setup_teardown(test_partial_access, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
