/* Intel 82540EM gigabit Ethernet ("e1000"), for guests without virtio
 * drivers: PCI 8086:100E, subsystem 8086:001E (the PRO/1000 MT Desktop
 * board), BAR0 128 KiB of registers, BAR1 64 bytes of I/O (IOADDR/IODATA),
 * INTA#. Enough of the 8254x for Linux's e1000 driver: the Microwire
 * EEPROM it bit-bangs through EECD (and EERD), an M88E1011 PHY behind
 * MDIC, legacy and extended TX descriptors with checksum insertion and
 * TCP segmentation done here in software (so any backend works, and every
 * frame leaves with an all-zero virtio_net_hdr), legacy RX descriptors
 * with unicast/multicast/broadcast/VLAN filtering, interrupt moderation
 * (ITR) and the statistics counters the driver's watchdog reads.
 *
 * Threads. One mutex guards all device state. Register accesses come from
 * vCPU threads; TX runs there, on the TDT write. RX runs on the loop
 * thread, because net.h wants recv() and rx_notify() called from there:
 * the backend's rx_ready, the device's eventfd (a vCPU that gave the
 * device RX buffers or changed RCTL writes it) and the device's timerfd
 * (rate-limit waits, ITR). The timerfd is registered once at creation and
 * armed with timerfd_settime(), which any thread may call. Lock order:
 * device lock, then whatever the backend locks inside send/recv/rx_notify
 * (backends call rx_ready without their own locks held); pci_set_intx
 * takes the bus's leaf INTx lock.
 *
 * Guest memory is reached only through guest_mem_ptr(); the work done per
 * TDT write is bounded by the ring size, per RX callback by a burst, and
 * every malformed ring, descriptor or packet is dropped and counted. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <zlib.h>

#include "bus/pci.h"
#include "core/config.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/mem.h"
#include "core/vm.h"
#include "devices/devices.h"
#include "devices/e1000_regs.h"
#include "net/net.h"

#define TX_BUF_MAX     (65536 + 256)   /* one TSO packet: 64 KiB of payload and its headers */
#define TSO_MAX_SEGS   4096
#define RX_BURST       256             /* frames per loop callback */
#define RX_BUF_SIZE    (NET_HDR_LEN + NET_MAX_FRAME + 64)  /* room to pad and append the FCS */
#define ETH_HLEN       14
#define ETH_MIN_FRAME  60              /* without FCS */
#define ETH_FCS_LEN    4
#define MAX_STD_FRAME  1522            /* FCS and one VLAN tag included; more needs RCTL.LPE */
#define MAX_LPE_FRAME  16384

/* Warnings given once per device. */
enum { WARN_TX_RING = 1, WARN_RX_RING = 2, WARN_TX_PACKET = 4 };

struct e1000_tx_ctx {
	uint8_t ipcss, ipcso, tucss, tucso, hdr_len, cmd;
	uint16_t ipcse, tucse, mss;
	bool valid;
};

struct e1000 {
	struct vm *vm;
	struct net_backend *be;
	char name[16];
	uint8_t mac[6];
	struct pci_device pci;
	pthread_mutex_t lock;

	uint32_t regs[E1000_REGS_END / 4];
	uint16_t eeprom[E1000_EE_WORDS];
	uint16_t phy[PHY_NR_REGS];
	struct {
		uint32_t pins;       /* SK, CS, DI, FWE, REQ as last written */
		unsigned nbits;      /* command bits clocked in since CS rose */
		uint32_t in;
		bool reading, dummy; /* a READ is shifting out; the leading 0 comes first */
		unsigned pos;        /* bit being shifted out: word * 16 + (15 - bit) */
	} ee;
	uint32_t ioaddr;
	bool irq_level;
	uint64_t last_irq_ns;
	uint64_t unknown_logged[E1000_MMIO_SIZE / 4 / 64];
	unsigned warned;

	/* TX: the packet being gathered from its descriptors */
	struct e1000_tx_ctx csum_ctx, tso_ctx;
	uint8_t *tx_buf, *tx_seg;
	size_t tx_len;
	bool tx_started, tx_bad, tx_tse, tx_ic, tx_vle;
	uint8_t tx_popts, tx_css, tx_cso;
	uint16_t tx_special;
	bool tx_throttled;
	struct virtio_net_hdr_v1 tx_hdr;   /* always zero: offloads are done here */

	/* RX */
	uint8_t *rx_buf;
	bool rx_notify_on, rx_throttled;

	bool limited;
	struct net_limiter tx_limit, rx_limit;
	int kick_fd, timer_fd;
	bool kick_pending;
	uint64_t timer_at;   /* CLOCK_MONOTONIC deadline the timer is armed for; 0 = idle */

	struct net_stats stats;
};

#define REG(e, r) ((e)->regs[(r) >> 2])
#define STAT(e, f, n) atomic_fetch_add_explicit(&(e)->stats.f, (n), memory_order_relaxed)

static uint16_t get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get_be32(const uint8_t *p) { return (uint32_t)get_be16(p) << 16 | get_be16(p + 2); }
static void put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put_be32(uint8_t *p, uint32_t v) { put_be16(p, (uint16_t)(v >> 16)); put_be16(p + 2, (uint16_t)v); }
static uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get_le32(const uint8_t *p) { return (uint32_t)get_le16(p) | (uint32_t)get_le16(p + 2) << 16; }
static uint64_t get_le64(const uint8_t *p) { return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32; }
static void put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

/* ---- Internet checksums ---- */

static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t len)
{
	for (; len >= 2; p += 2, len -= 2)
		sum += get_be16(p);
	if (len)
		sum += (uint64_t)p[0] << 8;
	return sum;
}

static uint16_t csum_fold(uint64_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)sum;
}

/* Stores the complemented checksum of p[start, end] (end inclusive; 0 =
 * to the end of the frame) at p[at]. Out-of-frame offsets insert nothing,
 * as a guest's garbage must not reach past the frame. nozero: a result of
 * 0 goes out as 0xffff (UDP reserves 0 for "no checksum"). */
static void csum_insert(uint8_t *p, size_t len, size_t start, size_t end, size_t at, bool nozero)
{
	size_t stop = end ? end + 1 : len;
	if (stop > len)
		stop = len;
	if (start >= stop || at + 2 > len)
		return;
	uint16_t c = (uint16_t)~csum_fold(csum_add(0, p + start, stop - start));
	if (nozero && c == 0)
		c = 0xffff;
	put_be16(p + at, c);
}

/* ---- interrupts and the timer ---- */

static void e1000_arm_timer(struct e1000 *e, uint64_t at)
{
	if (e->timer_at && e->timer_at <= at)
		return;
	e->timer_at = at;
	struct itimerspec its = { .it_value = { (time_t)(at / 1000000000ULL), (long)(at % 1000000000ULL) } };
	timerfd_settime(e->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* INTA# = (ICR & IMS) != 0, no more often than ITR allows (ITR counts
 * 256 ns units between interrupts; 0 = no moderation). */
static void e1000_update_irq(struct e1000 *e)
{
	bool level = (REG(e, E1000_ICR) & REG(e, E1000_IMS)) != 0;
	if (level == e->irq_level)
		return;
	if (level) {
		uint32_t itr = REG(e, E1000_ITR) & 0xffff;
		if (itr) {
			uint64_t now = net_now_ns(), next = e->last_irq_ns + (uint64_t)itr * 256;
			if (now < next) {
				e1000_arm_timer(e, next);
				return;
			}
			e->last_irq_ns = now;
		}
		STAT(e, irqs, 1);
	}
	e->irq_level = level;
	pci_set_intx(&e->pci, level);
}

static void e1000_raise(struct e1000 *e, uint32_t causes)
{
	REG(e, E1000_ICR) |= causes;
	e1000_update_irq(e);
}

/* ---- statistics registers ---- */

static void stat_inc(struct e1000 *e, uint32_t reg, uint32_t n)
{
	uint32_t *p = &REG(e, reg);
	*p = *p > UINT32_MAX - n ? UINT32_MAX : *p + n;
}

static void stat_add64(struct e1000 *e, uint32_t lo, uint64_t n)
{
	uint64_t v = ((uint64_t)REG(e, lo + 4) << 32 | REG(e, lo)) + n;
	REG(e, lo) = (uint32_t)v;
	REG(e, lo + 4) = (uint32_t)(v >> 32);
}

/* The size bins count frames with their FCS: 64, 65-127, ..., 1024-1522. */
static void stat_size_bin(struct e1000 *e, uint32_t bin64, size_t len)
{
	static const size_t limits[] = { 64, 127, 255, 511, 1023, 1522 };
	for (unsigned i = 0; i < 6; i++) {
		if (len <= limits[i]) {
			stat_inc(e, bin64 + 4 * i, 1);
			return;
		}
	}
}

/* Counters clear when read; a 64-bit pair clears when its high half is. */
static uint32_t stats_read(struct e1000 *e, uint32_t off)
{
	uint32_t v = REG(e, off);
	switch (off) {
	case E1000_GORCL:
	case E1000_GOTCL:
	case E1000_TORL:
	case E1000_TOTL:
		return v;
	case E1000_GORCH:
	case E1000_GOTCH:
	case E1000_TORH:
	case E1000_TOTH:
		REG(e, off - 4) = 0;
		break;
	}
	REG(e, off) = 0;
	return v;
}

/* ---- EEPROM ---- */

static void e1000_eeprom_init(struct e1000 *e)
{
	uint16_t *w = e->eeprom;
	for (unsigned i = 0; i < E1000_EE_WORDS; i++)
		w[i] = 0xffff;   /* unprogrammed */
	for (unsigned i = 0; i < 3; i++)
		w[i] = (uint16_t)(e->mac[2 * i] | e->mac[2 * i + 1] << 8);
	w[0x03] = 0x0000;   /* compatibility: nothing special */
	w[0x04] = 0xffff;   /* ID LED settings: the driver's defaults */
	w[0x05] = 0x0000;   /* image version */
	w[0x08] = 0x0000;   /* PBA number */
	w[0x09] = 0x0000;
	w[0x0a] = 0x4403;   /* init control 1: signature 01b, full duplex, load the IDs below */
	w[0x0b] = E1000_SUBSYS;
	w[0x0c] = E1000_SUBSYS_VENDOR;
	w[0x0d] = E1000_DEVICE;
	w[0x0e] = E1000_VENDOR;
	w[0x0f] = 0x0000;   /* init control 2: no PAUSE, so flow control stays off */
	w[0x24] = 0x0000;   /* init control 3: no APM wake-up */
	uint16_t sum = 0;
	for (unsigned i = 0; i < E1000_EE_CHECKSUM_WORD; i++)
		sum = (uint16_t)(sum + w[i]);
	w[E1000_EE_CHECKSUM_WORD] = (uint16_t)(E1000_EE_SUM - sum);
}

/* DO: the bit being shifted out of a READ; high (ready) otherwise. */
static bool eeprom_dout(const struct e1000 *e)
{
	if (!e->ee.reading)
		return true;
	if (e->ee.dummy)
		return false;
	unsigned word = (e->ee.pos / 16) % E1000_EE_WORDS, bit = 15 - e->ee.pos % 16;
	return (e->eeprom[word] >> bit) & 1;
}

static uint32_t eecd_read(const struct e1000 *e)
{
	uint32_t v = e->ee.pins | E1000_EECD_PRES;
	if (e->ee.pins & E1000_EECD_REQ)
		v |= E1000_EECD_GNT;
	if (eeprom_dout(e))
		v |= E1000_EECD_DO;
	return v;
}

/* A 64-word Microwire EEPROM: with CS high, each rising SK edge clocks DI
 * in: a start bit, two opcode bits and six address bits. After a READ's
 * address a 0 comes out, then the word MSB first, one bit per rising edge,
 * running on into the following words. Only READ is implemented: the
 * erase/write commands are clocked in and ignored. */
static void eecd_write(struct e1000 *e, uint32_t v)
{
	uint32_t old = e->ee.pins;
	e->ee.pins = v & (E1000_EECD_SK | E1000_EECD_CS | E1000_EECD_DI | E1000_EECD_FWE | E1000_EECD_REQ);
	if (!(v & E1000_EECD_CS) || !(old & E1000_EECD_CS)) {
		/* deselected, or just selected: a new command starts */
		e->ee.nbits = 0;
		e->ee.in = 0;
		e->ee.reading = false;
		return;
	}
	if (!(v & E1000_EECD_SK) || (old & E1000_EECD_SK))
		return;   /* not a rising clock edge */
	if (e->ee.reading) {
		if (e->ee.dummy)
			e->ee.dummy = false;
		else
			e->ee.pos = (e->ee.pos + 1) % (E1000_EE_WORDS * 16);
		return;
	}
	if (e->ee.nbits >= 9 || (e->ee.nbits == 0 && !(v & E1000_EECD_DI)))
		return;   /* a command already taken, or zeros before the start bit */
	e->ee.in = e->ee.in << 1 | !!(v & E1000_EECD_DI);
	if (++e->ee.nbits == 9 && (e->ee.in >> 6) == E1000_EE_READ_OPCODE) {
		e->ee.reading = true;
		e->ee.dummy = true;
		e->ee.pos = (e->ee.in & 0x3f) * 16;
	}
}

static void eerd_write(struct e1000 *e, uint32_t v)
{
	if (!(v & E1000_EERD_START)) {
		REG(e, E1000_EERD) = v & ~E1000_EERD_DONE;
		return;
	}
	uint32_t addr = (v >> E1000_EERD_ADDR_SHIFT) & 0xff;
	uint32_t data = addr < E1000_EE_WORDS ? e->eeprom[addr] : 0;
	REG(e, E1000_EERD) = data << E1000_EERD_DATA_SHIFT | addr << E1000_EERD_ADDR_SHIFT | E1000_EERD_DONE;
}

/* ---- PHY: a Marvell 88E1011 with a 1000 Mb/s full-duplex link partner ---- */

static void phy_reset(struct e1000 *e)
{
	memset(e->phy, 0, sizeof(e->phy));
	e->phy[PHY_CTRL] = 0x1140;          /* autonegotiation, full duplex, 1000 Mb/s */
	e->phy[PHY_STATUS] = 0x796d;        /* 10/100 capable, extended status, autoneg complete, link */
	e->phy[PHY_ID1] = M88E1011_PHY_ID1;
	e->phy[PHY_ID2] = M88E1011_PHY_ID2;
	e->phy[PHY_AUTONEG_ADV] = 0x01e1;   /* 10/100, half and full */
	e->phy[PHY_LP_ABILITY] = 0x45e1;    /* partner: acknowledged, PAUSE, 10/100 */
	e->phy[PHY_AUTONEG_EXP] = 0x0001;   /* partner can autonegotiate */
	e->phy[PHY_1000T_CTRL] = 0x0300;    /* advertise 1000 half and full */
	e->phy[PHY_1000T_STATUS] = 0x3c00;  /* receivers OK, partner 1000 half and full */
	e->phy[PHY_EXT_STATUS] = 0x3000;    /* 1000BASE-T half and full */
	e->phy[M88_PHY_SPEC_CTRL] = 0x0068;
	e->phy[M88_PHY_SPEC_STATUS] = 0xac00; /* 1000 Mb/s, full duplex, resolved, link */
	e->phy[M88_EXT_PHY_SPEC_CTRL] = 0x0c60;
}

static void phy_write(struct e1000 *e, unsigned reg, uint16_t v)
{
	switch (reg) {
	case PHY_CTRL:
		/* Reset and restart-autonegotiation complete at once. */
		e->phy[reg] = v & (uint16_t)~(MII_CR_RESET | MII_CR_RESTART_AUTONEG);
		break;
	case PHY_STATUS:
	case PHY_ID1:
	case PHY_ID2:
	case PHY_LP_ABILITY:
	case PHY_AUTONEG_EXP:
	case PHY_1000T_STATUS:
	case PHY_EXT_STATUS:
	case M88_PHY_SPEC_STATUS:
		break;   /* read-only */
	default:
		e->phy[reg] = v;
	}
}

/* MDIC: PHY accesses complete immediately (READY set); a PHY address other
 * than 1 or a bad opcode sets ERROR. */
static void mdic_write(struct e1000 *e, uint32_t v)
{
	unsigned reg = (v >> E1000_MDIC_REG_SHIFT) & 0x1f, phy = (v >> E1000_MDIC_PHY_SHIFT) & 0x1f;
	uint32_t op = v & (E1000_MDIC_OP_READ | E1000_MDIC_OP_WRITE);
	uint32_t out = v & ~(E1000_MDIC_READY | E1000_MDIC_ERROR);
	if (phy != E1000_PHY_ADDR || (op != E1000_MDIC_OP_READ && op != E1000_MDIC_OP_WRITE))
		out |= E1000_MDIC_ERROR;
	else if (op == E1000_MDIC_OP_READ)
		out = (out & ~E1000_MDIC_DATA_MASK) | e->phy[reg];
	else
		phy_write(e, reg, (uint16_t)(v & E1000_MDIC_DATA_MASK));
	REG(e, E1000_MDIC) = out | E1000_MDIC_READY;
	if (v & E1000_MDIC_INT_EN)
		e1000_raise(e, E1000_ICR_MDAC);
}

/* ---- RX ---- */

static uint32_t rx_bufsize(uint32_t rctl)
{
	unsigned bs = (rctl >> E1000_RCTL_BSIZE_SHIFT) & 3;
	if (rctl & E1000_RCTL_BSEX)
		return bs == 1 ? 16384 : bs == 2 ? 8192 : bs == 3 ? 4096 : 2048; /* 0 is reserved */
	return 2048u >> bs;
}

static uint32_t rx_ring_size(const struct e1000 *e)
{
	return REG(e, E1000_RDLEN) / E1000_DESC_SIZE;
}

/* Descriptors the guest has handed over (RDH up to, not including, RDT);
 * 0 when RX is off or the ring registers make no sense. */
static uint32_t rx_free(const struct e1000 *e)
{
	uint32_t n = rx_ring_size(e), h = REG(e, E1000_RDH), t = REG(e, E1000_RDT);
	if (!(REG(e, E1000_RCTL) & E1000_RCTL_EN) || !n || h >= n || t >= n)
		return 0;
	return (t + n - h) % n;
}

static size_t rx_max_frame(const struct e1000 *e)
{
	return REG(e, E1000_RCTL) & E1000_RCTL_LPE ? MAX_LPE_FRAME : MAX_STD_FRAME;
}

/* The device pulls a frame from the backend only when the largest frame
 * it may accept fits in the free descriptors (but never demands more than
 * the ring can ever offer): so a guest short of buffers leaves frames
 * queued in the backend (backpressure) instead of losing them. */
static bool rx_can_take(const struct e1000 *e)
{
	uint32_t n = rx_ring_size(e), f = rx_free(e);
	if (!f)
		return false;
	uint32_t bs = rx_bufsize(REG(e, E1000_RCTL));
	uint32_t need = (uint32_t)((rx_max_frame(e) + bs - 1) / bs);
	if (need > n - 1)
		need = n - 1;
	return f >= need;
}

static uint8_t *rx_ring(struct e1000 *e)
{
	uint64_t base = (uint64_t)REG(e, E1000_RDBAH) << 32 | REG(e, E1000_RDBAL);
	uint8_t *ring = guest_mem_ptr(&e->vm->mem, base, (uint64_t)rx_ring_size(e) * E1000_DESC_SIZE);
	if (!ring && !(e->warned & WARN_RX_RING)) {
		e->warned |= WARN_RX_RING;
		log_warn("%s: RX ring at 0x%llx is not in guest RAM", e->name, (unsigned long long)base);
	}
	return ring;
}

static bool rx_accept(const struct e1000 *e, const uint8_t *f, size_t len)
{
	uint32_t rctl = REG(e, E1000_RCTL);
	if ((rctl & E1000_RCTL_VFE) && len >= ETH_HLEN + 4 && get_be16(f + 12) == (REG(e, E1000_VET) & 0xffff)) {
		unsigned vid = get_be16(f + 14) & 0xfff;
		if (!(REG(e, E1000_VFTA + 4 * (vid >> 5)) & (1u << (vid & 31))))
			return false;
	}
	bool mcast = f[0] & 1;
	static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	if (mcast && (rctl & E1000_RCTL_BAM) && !memcmp(f, bcast, 6))
		return true;
	if (mcast ? (rctl & E1000_RCTL_MPE) : (rctl & E1000_RCTL_UPE))
		return true;
	for (unsigned i = 0; i < 16; i++) {
		uint32_t ral = REG(e, E1000_RA + 8 * i), rah = REG(e, E1000_RA + 8 * i + 4);
		if (!(rah & E1000_RAH_AV) || (rah & E1000_RAH_AS))
			continue;   /* unused, or a source-address entry */
		uint8_t ra[6] = { (uint8_t)ral, (uint8_t)(ral >> 8), (uint8_t)(ral >> 16), (uint8_t)(ral >> 24),
				  (uint8_t)rah, (uint8_t)(rah >> 8) };
		if (!memcmp(f, ra, 6))
			return true;
	}
	if (mcast) {
		static const unsigned shift[4] = { 4, 3, 2, 0 };
		unsigned hash = ((unsigned)(f[4] | f[5] << 8) >> shift[(rctl >> E1000_RCTL_MO_SHIFT) & 3]) & 0xfff;
		return REG(e, E1000_MTA + 4 * (hash >> 5)) & (1u << (hash & 31));
	}
	return false;
}

/* Completes a checksum a backend left partial (it should not: this NIC
 * offers no offloads, but a frame must never reach the guest half-done). */
static void rx_complete_csum(const struct virtio_net_hdr_v1 *h, uint8_t *f, size_t len)
{
	size_t start = h->csum_start, at = (size_t)h->csum_start + h->csum_offset;
	if (start < len && at + 2 <= len)
		csum_insert(f, len, start, 0, at, false);
}

/* One frame (`f`, `len` bytes, with RX_BUF_SIZE - NET_HDR_LEN bytes of room)
 * into the RX ring. */
static void rx_frame(struct e1000 *e, uint8_t *f, size_t len)
{
	struct virtio_net_hdr_v1 h;
	memcpy(&h, f - NET_HDR_LEN, sizeof(h));
	if (h.gso_type != VIRTIO_NET_HDR_GSO_NONE || len < ETH_HLEN) {
		STAT(e, rx_dropped, 1);
		return;
	}
	if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)
		rx_complete_csum(&h, f, len);
	if (!rx_accept(e, f, len)) {
		STAT(e, rx_dropped, 1);
		return;
	}
	if (len + ETH_FCS_LEN > rx_max_frame(e)) {
		stat_inc(e, E1000_ROC, 1);
		STAT(e, rx_dropped, 1);
		return;
	}
	uint8_t status = E1000_RXD_STAT_DD | E1000_RXD_STAT_IXSM, errors = 0;
	uint16_t special = 0;
	if ((REG(e, E1000_CTRL) & E1000_CTRL_VME) && len >= ETH_HLEN + 4 &&
	    get_be16(f + 12) == (REG(e, E1000_VET) & 0xffff)) {
		special = get_be16(f + 14);
		status |= E1000_RXD_STAT_VP;
		memmove(f + 4, f, 12);
		f += 4;
		len -= 4;
	}
	size_t frame_len = len;
	if (len < ETH_MIN_FRAME) {
		memset(f + len, 0, ETH_MIN_FRAME - len);
		len = ETH_MIN_FRAME;
	}
	if (!(REG(e, E1000_RCTL) & E1000_RCTL_SECRC)) {
		uint32_t fcs = (uint32_t)crc32(0L, f, (uInt)len);
		for (unsigned i = 0; i < ETH_FCS_LEN; i++)
			f[len + i] = (uint8_t)(fcs >> (8 * i));
		len += ETH_FCS_LEN;
	}

	uint32_t n = rx_ring_size(e), bs = rx_bufsize(REG(e, E1000_RCTL));
	uint32_t need = (uint32_t)((len + bs - 1) / bs);
	uint8_t *ring = rx_ring(e);
	if (!ring || need > rx_free(e)) {
		/* Overrun: the frame was pulled but does not fit. */
		stat_inc(e, E1000_MPC, 1);
		STAT(e, rx_dropped, 1);
		e1000_raise(e, E1000_ICR_RXO);
		return;
	}
	/* Check every buffer first: a frame with a buffer outside RAM is
	 * handed over with RXE set, which the driver drops. */
	uint32_t h0 = REG(e, E1000_RDH);
	for (uint32_t i = 0, idx = h0; i < need; i++, idx = (idx + 1) % n) {
		size_t chunk = len - (size_t)i * bs < bs ? len - (size_t)i * bs : bs;
		if (!guest_mem_ptr(&e->vm->mem, get_le64(ring + idx * E1000_DESC_SIZE), chunk))
			errors = E1000_RXD_ERR_RXE;
	}
	uint32_t idx = h0;
	for (size_t done = 0; done < len; idx = (idx + 1) % n) {
		uint8_t *d = ring + idx * E1000_DESC_SIZE;
		size_t chunk = len - done < bs ? len - done : bs;
		uint8_t *dst = errors ? NULL : guest_mem_ptr(&e->vm->mem, get_le64(d), chunk);
		if (dst)
			memcpy(dst, f + done, chunk);
		done += chunk;
		put_le16(d + 8, (uint16_t)chunk);
		put_le16(d + 10, 0);
		d[13] = errors;
		put_le16(d + 14, special);
		/* The guest may poll DD: the data and fields land first. */
		__atomic_store_n(&d[12], (uint8_t)(status | (done == len ? E1000_RXD_STAT_EOP : 0)), __ATOMIC_RELEASE);
	}
	REG(e, E1000_RDH) = idx;

	stat_inc(e, E1000_GPRC, 1);
	stat_inc(e, E1000_TPR, 1);
	stat_add64(e, E1000_GORCL, len);
	stat_add64(e, E1000_TORL, len);
	stat_size_bin(e, E1000_PRC64, len);
	if (f[0] & 1)
		stat_inc(e, memcmp(f, "\xff\xff\xff\xff\xff\xff", 6) ? E1000_MPRC : E1000_BPRC, 1);
	if (errors) {
		STAT(e, rx_dropped, 1);
	} else {
		STAT(e, rx_packets, 1);
		STAT(e, rx_bytes, frame_len);
	}
	if (e->limited)
		net_limiter_charge(&e->rx_limit, frame_len);
	uint32_t causes = E1000_ICR_RXT0;
	unsigned rdmts = (REG(e, E1000_RCTL) >> E1000_RCTL_RDMTS_SHIFT) & 3;
	if (rx_free(e) <= n >> (rdmts == 3 ? 3 : rdmts + 1))
		causes |= E1000_ICR_RXDMT0;
	REG(e, E1000_ICR) |= causes;
}

static void rx_set_notify(struct e1000 *e, bool on)
{
	if (e->rx_notify_on == on)
		return;
	e->rx_notify_on = on;
	e->be->ops->rx_notify(e->be, 0, on);
}

static void e1000_kick(struct e1000 *e)
{
	if (e->kick_pending)
		return;
	e->kick_pending = true;
	uint64_t one = 1;
	if (write(e->kick_fd, &one, sizeof(one)) < 0)
		e->kick_pending = false;
}

/* Loop thread: pulls frames while the guest has room for them, then asks
 * the backend for rx_ready callbacks exactly when it may pull again. */
static void rx_pump(struct e1000 *e)
{
	bool want = false;
	e->rx_throttled = false;
	for (unsigned burst = 0;; burst++) {
		if (!rx_can_take(e) || !rx_ring(e))
			break;
		if (burst == RX_BURST) {
			/* Let the loop breathe; come straight back. */
			want = true;
			e1000_kick(e);
			break;
		}
		if (e->limited) {
			uint64_t now = net_now_ns();
			if (!net_limiter_ready(&e->rx_limit, now)) {
				e->rx_throttled = true;
				STAT(e, throttled, 1);
				e1000_arm_timer(e, now + net_limiter_wait_ns(&e->rx_limit, now));
				break;
			}
		}
		struct iovec iov = { e->rx_buf, NET_HDR_LEN + NET_MAX_FRAME };
		ssize_t got = e->be->ops->recv(e->be, 0, &iov, 1);
		if (got == -EMSGSIZE || (got > 0 && got < NET_HDR_LEN)) {
			STAT(e, rx_dropped, 1);
			continue;
		}
		if (got <= 0) {
			want = true;   /* drained (or an error): wait for rx_ready */
			break;
		}
		rx_frame(e, e->rx_buf + NET_HDR_LEN, (size_t)got - NET_HDR_LEN);
	}
	rx_set_notify(e, want);
	e1000_update_irq(e);
}

/* vCPU thread: RX state changed (buffers, RCTL, ring registers, reset);
 * the loop thread re-evaluates unless nothing can have changed. */
static void rx_changed(struct e1000 *e)
{
	if (e->rx_throttled || e->rx_notify_on == rx_can_take(e))
		return;
	e1000_kick(e);
}

/* ---- TX ---- */

static void tx_warn(struct e1000 *e, const char *what)
{
	if (e->warned & WARN_TX_PACKET)
		return;
	e->warned |= WARN_TX_PACKET;
	log_warn("%s: dropping a TX packet: %s (further drops are only counted)", e->name, what);
}

/* Sends one frame, inserting the VLAN tag if the packet asked for it. */
static void tx_send(struct e1000 *e, uint8_t *p, size_t len)
{
	uint8_t tag[4];
	struct iovec iov[4];
	int n = 0;
	iov[n++] = (struct iovec){ &e->tx_hdr, NET_HDR_LEN };
	size_t wire = len;
	if (e->tx_vle && (REG(e, E1000_CTRL) & E1000_CTRL_VME) && len >= 12) {
		put_be16(tag, (uint16_t)REG(e, E1000_VET));
		put_be16(tag + 2, e->tx_special);
		iov[n++] = (struct iovec){ p, 12 };
		iov[n++] = (struct iovec){ tag, 4 };
		iov[n++] = (struct iovec){ p + 12, len - 12 };
		wire += 4;
	} else {
		iov[n++] = (struct iovec){ p, len };
	}
	if (wire > NET_MAX_FRAME || e->be->ops->send(e->be, 0, iov, n) < 0) {
		STAT(e, tx_dropped, 1);
		return;
	}
	size_t fcs_len = (wire < ETH_MIN_FRAME ? ETH_MIN_FRAME : wire) + ETH_FCS_LEN;
	stat_inc(e, E1000_GPTC, 1);
	stat_inc(e, E1000_TPT, 1);
	stat_add64(e, E1000_GOTCL, fcs_len);
	stat_add64(e, E1000_TOTL, fcs_len);
	stat_size_bin(e, E1000_PTC64, fcs_len);
	if (p[0] & 1)
		stat_inc(e, memcmp(p, "\xff\xff\xff\xff\xff\xff", 6) ? E1000_MPTC : E1000_BPTC, 1);
	STAT(e, tx_packets, 1);
	STAT(e, tx_bytes, wire);
	if (e->limited)
		net_limiter_charge(&e->tx_limit, wire);
}

/* A packet without segmentation: checksums as the context and the
 * descriptors ask, then out. */
static bool tx_plain(struct e1000 *e)
{
	uint8_t *p = e->tx_buf;
	size_t len = e->tx_len;
	const struct e1000_tx_ctx *c = &e->csum_ctx;
	if (len > NET_MAX_FRAME)
		return false;
	if ((e->tx_popts & E1000_TXD_POPTS_TXSM) && c->valid)
		csum_insert(p, len, c->tucss, c->tucse, c->tucso, true);
	if ((e->tx_popts & E1000_TXD_POPTS_IXSM) && c->valid)
		csum_insert(p, len, c->ipcss, c->ipcse, c->ipcso, false);
	if (e->tx_ic)
		csum_insert(p, len, e->tx_css, 0, e->tx_cso, false);
	tx_send(e, p, len);
	return true;
}

/* TCP (or UDP) segmentation: the first hdr_len bytes are the headers,
 * repeated in front of each MSS-sized piece of the payload with the IP
 * length (and IPv4 ID), TCP sequence number (or UDP length) and flags
 * fixed up and the checksums computed per segment. The guest left the
 * pseudo-header sum without the length in the TCP/UDP checksum field. */
static bool tx_tso(struct e1000 *e)
{
	const struct e1000_tx_ctx *c = &e->tso_ctx;
	const uint8_t *h = e->tx_buf;
	size_t hl = c->hdr_len, mss = c->mss, len = e->tx_len;
	bool ipv4 = c->cmd & E1000_TXD_CMD_IP, tcp = c->cmd & E1000_TXD_CMD_TCP;
	bool txsm = e->tx_popts & E1000_TXD_POPTS_TXSM, ixsm = e->tx_popts & E1000_TXD_POPTS_IXSM;
	if (!c->valid || !hl || hl >= len || !mss || hl + mss > NET_MAX_FRAME ||
	    (len - hl + mss - 1) / mss > TSO_MAX_SEGS)
		return false;
	/* Every header field rewritten must lie inside the headers. */
	if ((size_t)c->ipcss + (ipv4 ? 20 : 40) > hl || (size_t)c->tucss + (tcp ? 20 : 8) > hl ||
	    (txsm && (size_t)c->tucso + 2 > hl) || (ixsm && (size_t)c->ipcso + 2 > hl))
		return false;
	uint32_t seq = get_be32(h + c->tucss + 4);
	uint16_t ipid = get_be16(h + c->ipcss + 4);
	stat_inc(e, E1000_TSCTC, 1);
	for (size_t off = hl, i = 0; off < len; off += mss, i++) {
		size_t plen = len - off < mss ? len - off : mss, slen = hl + plen;
		uint8_t *s = e->tx_seg;
		memcpy(s, h, hl);
		memcpy(s + hl, h + off, plen);
		if (ipv4) {
			put_be16(s + c->ipcss + 2, (uint16_t)(slen - c->ipcss));
			put_be16(s + c->ipcss + 4, (uint16_t)(ipid + i));
		} else {
			put_be16(s + c->ipcss + 4, (uint16_t)(slen - c->ipcss - 40));
		}
		if (tcp) {
			put_be32(s + c->tucss + 4, seq + (uint32_t)(off - hl));
			if (off + plen < len)
				s[c->tucss + 13] &= (uint8_t)~0x09;   /* FIN and PSH only on the last */
		} else {
			put_be16(s + c->tucss + 4, (uint16_t)(slen - c->tucss));
		}
		if (txsm) {
			uint64_t ph = get_be16(s + c->tucso) + (uint64_t)(slen - c->tucss);
			put_be16(s + c->tucso, csum_fold(ph));
			csum_insert(s, slen, c->tucss, 0, c->tucso, true);
		}
		if (ixsm)
			csum_insert(s, slen, c->ipcss, c->ipcse, c->ipcso, false);
		tx_send(e, s, slen);
	}
	return true;
}

static void tx_packet_done(struct e1000 *e)
{
	bool ok = !e->tx_bad && e->tx_len > 0;
	if (ok)
		ok = e->tx_tse ? tx_tso(e) : tx_plain(e);
	if (!ok) {
		tx_warn(e, e->tx_bad ? "a buffer outside RAM, or too long" : e->tx_len ? "bad segmentation context" : "no data");
		STAT(e, tx_dropped, 1);
	}
	e->tx_len = 0;
	e->tx_started = e->tx_bad = e->tx_tse = e->tx_ic = e->tx_vle = false;
}

static void tx_context(struct e1000 *e, const uint8_t *d)
{
	struct e1000_tx_ctx c = {
		.ipcss = d[0], .ipcso = d[1], .ipcse = get_le16(d + 2),
		.tucss = d[4], .tucso = d[5], .tucse = get_le16(d + 6),
		.cmd = d[11], .hdr_len = d[13], .mss = get_le16(d + 14), .valid = true,
	};
	/* Segmentation and plain checksum contexts are kept apart, as some
	 * drivers interleave them. */
	if (c.cmd & E1000_TXD_CMD_TSE)
		e->tso_ctx = c;
	else
		e->csum_ctx = c;
}

static void tx_gather(struct e1000 *e, uint64_t addr, size_t len)
{
	if (e->tx_bad || !len)
		return;   /* empty buffers add nothing; a packet of only those is dropped */
	const void *src = len <= TX_BUF_MAX - e->tx_len ? guest_mem_ptr(&e->vm->mem, addr, len) : NULL;
	if (!src) {
		e->tx_bad = true;
		return;
	}
	memcpy(e->tx_buf + e->tx_len, src, len);
	e->tx_len += len;
}

static void tx_descriptor(struct e1000 *e, const uint8_t *d)
{
	uint8_t cmd = d[11];
	size_t len;
	if (cmd & E1000_TXD_CMD_DEXT) {
		unsigned dtyp = (d[10] >> 4) & 0xf;
		if (dtyp == E1000_TXD_DTYP_CONTEXT) {
			tx_context(e, d);
			return;
		}
		if (dtyp != E1000_TXD_DTYP_DATA)
			e->tx_bad = true;
		len = get_le32(d + 8) & 0xfffff;
		if (!e->tx_started) {
			/* Options come from a packet's first descriptor. */
			e->tx_popts = d[13];
			e->tx_tse = cmd & E1000_TXD_CMD_TSE;
		}
	} else {
		len = get_le16(d + 8);
		if (!e->tx_started) {
			e->tx_popts = 0;
			e->tx_tse = false;
		}
		if (cmd & E1000_TXD_CMD_IC) {
			e->tx_ic = true;
			e->tx_cso = d[10];
			e->tx_css = d[13];
		}
	}
	e->tx_started = true;
	tx_gather(e, get_le64(d), len);
	if (cmd & E1000_TXD_CMD_EOP) {
		e->tx_vle = cmd & E1000_TXD_CMD_VLE;
		e->tx_special = get_le16(d + 14);
		tx_packet_done(e);
	}
}

static void tx_ring_error(struct e1000 *e, const char *what)
{
	STAT(e, tx_dropped, 1);
	if (!(e->warned & WARN_TX_RING)) {
		e->warned |= WARN_TX_RING;
		log_warn("%s: TX ring unusable: %s (further errors are only counted)", e->name, what);
	}
}

/* Transmits from TDH up to TDT. At most one pass over the ring per call;
 * a rate limit stops between packets and the timer resumes. */
static void tx_run(struct e1000 *e)
{
	if (!(REG(e, E1000_TCTL) & E1000_TCTL_EN) || e->tx_throttled)
		return;
	uint32_t n = REG(e, E1000_TDLEN) / E1000_DESC_SIZE, h = REG(e, E1000_TDH), t = REG(e, E1000_TDT);
	if (h == t)
		return;
	if (!n || h >= n || t >= n) {
		tx_ring_error(e, "TDH/TDT beyond TDLEN");
		return;
	}
	uint64_t base = (uint64_t)REG(e, E1000_TDBAH) << 32 | REG(e, E1000_TDBAL);
	uint8_t *ring = guest_mem_ptr(&e->vm->mem, base, (uint64_t)n * E1000_DESC_SIZE);
	if (!ring) {
		tx_ring_error(e, "not in guest RAM");
		return;
	}
	uint32_t causes = 0;
	while (h != t) {
		if (!e->tx_started && e->limited) {
			uint64_t now = net_now_ns();
			if (!net_limiter_ready(&e->tx_limit, now)) {
				e->tx_throttled = true;
				STAT(e, throttled, 1);
				e1000_arm_timer(e, now + net_limiter_wait_ns(&e->tx_limit, now));
				break;
			}
		}
		uint8_t *d = ring + h * E1000_DESC_SIZE, desc[E1000_DESC_SIZE];
		memcpy(desc, d, sizeof(desc));   /* the guest may rewrite it meanwhile */
		tx_descriptor(e, desc);
		if (desc[11] & E1000_TXD_CMD_RS) {
			uint8_t st = (uint8_t)((d[12] | E1000_TXD_STAT_DD) &
					       ~(E1000_TXD_STAT_EC | E1000_TXD_STAT_LC | E1000_TXD_STAT_TU));
			__atomic_store_n(&d[12], st, __ATOMIC_RELEASE);
			causes |= E1000_ICR_TXDW;
		}
		h = (h + 1) % n;
	}
	REG(e, E1000_TDH) = h;
	if (h == t)
		causes |= E1000_ICR_TXQE;
	e1000_raise(e, causes);
}

/* ---- reset and registers ---- */

static void e1000_reset(struct e1000 *e)
{
	memset(e->regs, 0, sizeof(e->regs));
	REG(e, E1000_CTRL) = E1000_CTRL_FD | E1000_CTRL_SLU | E1000_CTRL_SPD_1000;
	REG(e, E1000_LEDCTL) = 0x07068302;
	REG(e, E1000_PBA) = 0x00000030;   /* 48 KB RX, 16 KB TX */
	REG(e, E1000_VET) = 0x8100;
	REG(e, E1000_RA) = (uint32_t)e->mac[0] | (uint32_t)e->mac[1] << 8 | (uint32_t)e->mac[2] << 16 |
			   (uint32_t)e->mac[3] << 24;
	REG(e, E1000_RA + 4) = (uint32_t)e->mac[4] | (uint32_t)e->mac[5] << 8 | E1000_RAH_AV;
	memset(&e->ee, 0, sizeof(e->ee));
	phy_reset(e);
	e->csum_ctx.valid = e->tso_ctx.valid = false;
	e->tx_len = 0;
	e->tx_started = e->tx_bad = e->tx_tse = e->tx_ic = e->tx_vle = false;
	e->tx_throttled = false;   /* a pending timer finds nothing to do */
	e1000_update_irq(e);
	rx_changed(e);
}

/* Registers that simply hold what the guest writes. */
static bool reg_is_storage(uint32_t off)
{
	switch (off) {
	case E1000_CTRL: case E1000_EERD: case E1000_CTRL_EXT: case E1000_FLA: case E1000_MDIC:
	case E1000_FCAL: case E1000_FCAH: case E1000_FCT: case E1000_VET: case E1000_ITR:
	case E1000_IMS: case E1000_RCTL: case E1000_FCTTV: case E1000_TXCW: case E1000_RXCW:
	case E1000_TCTL: case E1000_TIPG: case E1000_AIT: case E1000_LEDCTL: case E1000_PBA:
	case E1000_FCRTL: case E1000_FCRTH: case E1000_RDFH: case E1000_RDFT: case E1000_RDFHS:
	case E1000_RDFTS: case E1000_RDFPC: case E1000_RDBAL: case E1000_RDBAH: case E1000_RDLEN:
	case E1000_RDH: case E1000_RDT: case E1000_RDTR: case E1000_RXDCTL: case E1000_RADV:
	case E1000_RSRPD: case E1000_TDFH: case E1000_TDFT: case E1000_TDFHS: case E1000_TDFTS:
	case E1000_TDFPC: case E1000_TDBAL: case E1000_TDBAH: case E1000_TDLEN: case E1000_TDH:
	case E1000_TDT: case E1000_TIDV: case E1000_TXDCTL: case E1000_TADV: case E1000_TSPMT:
	case E1000_RXCSUM: case E1000_WUC: case E1000_WUFC: case E1000_WUS: case E1000_MANC:
	case E1000_IPAV: case E1000_WUPL:
		return true;
	}
	return (off >= E1000_MTA && off < E1000_MTA + 128 * 4) || (off >= E1000_RA && off < E1000_RA + 16 * 8) ||
	       (off >= E1000_VFTA && off < E1000_VFTA + 128 * 4) || (off >= E1000_IP4AT && off < E1000_IP4AT + 32) ||
	       (off >= E1000_IP6AT && off < E1000_IP6AT + 16) || (off >= E1000_WUPM && off < E1000_WUPM + 128) ||
	       (off >= E1000_FFLT && off < E1000_FFLT + 32);
}

static void log_unknown(struct e1000 *e, uint32_t off, const char *what)
{
	uint32_t i = off / 4;
	uint64_t bit = 1ULL << (i % 64);
	if (i / 64 >= sizeof(e->unknown_logged) / sizeof(e->unknown_logged[0]) || (e->unknown_logged[i / 64] & bit))
		return;
	e->unknown_logged[i / 64] |= bit;
	log_debug("%s: %s of unemulated register 0x%05x ignored", e->name, what, off);
}

/* `off` is dword-aligned and inside BAR0. */
static uint32_t reg_read(struct e1000 *e, uint32_t off)
{
	switch (off) {
	case E1000_STATUS:
		return E1000_STATUS_FD | E1000_STATUS_LU | E1000_STATUS_SPEED_1000 | E1000_STATUS_ASDV_1000;
	case E1000_EECD:
		return eecd_read(e);
	case E1000_ICR: {
		uint32_t v = REG(e, E1000_ICR);
		REG(e, E1000_ICR) = 0;
		e1000_update_irq(e);
		return v;
	}
	case E1000_ICS:
	case E1000_IMC:
		return 0;   /* write-only */
	}
	if (off >= E1000_STATS && off < E1000_STATS_END)
		return stats_read(e, off);
	if (reg_is_storage(off))
		return REG(e, off);
	log_unknown(e, off, "read");
	return 0;
}

static void reg_write(struct e1000 *e, uint32_t off, uint32_t v)
{
	switch (off) {
	case E1000_CTRL:
		if (v & E1000_CTRL_RST) {
			e1000_reset(e);
			return;
		}
		if ((v & E1000_CTRL_PHY_RST) && !(REG(e, E1000_CTRL) & E1000_CTRL_PHY_RST))
			phy_reset(e);
		REG(e, off) = v;
		return;
	case E1000_STATUS:
		return;
	case E1000_EECD:
		eecd_write(e, v);
		return;
	case E1000_EERD:
		eerd_write(e, v);
		return;
	case E1000_CTRL_EXT:
		REG(e, off) = v & ~E1000_CTRL_EXT_EE_RST;   /* the reload is instant */
		return;
	case E1000_MDIC:
		mdic_write(e, v);
		return;
	case E1000_ICR:
		REG(e, E1000_ICR) &= ~v;
		e1000_update_irq(e);
		return;
	case E1000_ICS:
		e1000_raise(e, v & E1000_ICR_VALID);
		return;
	case E1000_IMS:
		REG(e, E1000_IMS) |= v & E1000_ICR_VALID;
		e1000_update_irq(e);
		return;
	case E1000_IMC:
		REG(e, E1000_IMS) &= ~v;
		e1000_update_irq(e);
		return;
	case E1000_ITR:
		REG(e, off) = v & 0xffff;
		return;
	case E1000_RCTL:
		REG(e, off) = v;
		rx_changed(e);
		return;
	case E1000_TCTL:
		REG(e, off) = v;
		tx_run(e);
		return;
	case E1000_RDBAL:
	case E1000_TDBAL:
		REG(e, off) = v & ~0xfu;
		if (off == E1000_RDBAL)
			rx_changed(e);
		return;
	case E1000_RDLEN:
	case E1000_TDLEN:
		REG(e, off) = v & 0xfff80;   /* a multiple of 128 bytes */
		if (off == E1000_RDLEN)
			rx_changed(e);
		return;
	case E1000_RDH:
	case E1000_TDH:
		REG(e, off) = v & 0xffff;
		if (off == E1000_RDH)
			rx_changed(e);
		return;
	case E1000_RDT:
		REG(e, off) = v & 0xffff;
		STAT(e, doorbells, 1);
		rx_changed(e);
		return;
	case E1000_TDT:
		REG(e, off) = v & 0xffff;
		STAT(e, doorbells, 1);
		tx_run(e);
		return;
	}
	if (off >= E1000_STATS && off < E1000_STATS_END)
		return;   /* read-only counters */
	if (off >= E1000_RA && off < E1000_RA + 16 * 8 && (off & 4)) {
		REG(e, off) = v & (0xffff | E1000_RAH_AS | E1000_RAH_AV);
		return;
	}
	if (reg_is_storage(off)) {
		REG(e, off) = v;
		return;
	}
	log_unknown(e, off, "write");
}

/* BAR1: IOADDR (0) selects a register, IODATA (4) accesses it. */
static uint32_t io_reg_read(struct e1000 *e, uint32_t off)
{
	if (off == 0)
		return e->ioaddr;
	return off == 4 ? reg_read(e, e->ioaddr & 0x1fffc) : 0;
}

static void io_reg_write(struct e1000 *e, uint32_t off, uint32_t v)
{
	if (off == 0)
		e->ioaddr = v & 0x1ffff;
	else if (off == 4)
		reg_write(e, e->ioaddr & 0x1fffc, v);
}

/* A register's value for merging a partial write: the action registers
 * (write 1 to act) merge with 0 so the untouched bytes do nothing. */
static uint32_t reg_peek(struct e1000 *e, bool io, uint32_t off)
{
	if (io)
		return off == 0 ? e->ioaddr : 0;
	if (off == E1000_EECD)
		return e->ee.pins;
	if (off == E1000_ICR || off == E1000_ICS || off == E1000_IMS || off == E1000_IMC || off >= E1000_REGS_END)
		return 0;
	return REG(e, off);
}

/* Accesses of any size and alignment, as dword register accesses: each
 * dword touched is read once, or written once (partial writes merged). */
static void bar_access(struct e1000 *e, bool io, uint64_t off, uint8_t *data, unsigned len, bool is_write)
{
	STAT(e, reg_exits, 1);
	pthread_mutex_lock(&e->lock);
	for (uint64_t dw = off & ~3ULL; dw < off + len; dw += 4) {
		uint32_t v = is_write ? reg_peek(e, io, (uint32_t)dw) : io ? io_reg_read(e, (uint32_t)dw)
									 : reg_read(e, (uint32_t)dw);
		for (unsigned b = 0; b < 4; b++) {
			if (dw + b < off || dw + b >= off + len)
				continue;
			uint8_t *p = &data[dw + b - off];
			if (is_write)
				v = (v & ~(0xffu << (8 * b))) | (uint32_t)*p << (8 * b);
			else
				*p = (uint8_t)(v >> (8 * b));
		}
		if (is_write && io)
			io_reg_write(e, (uint32_t)dw, v);
		else if (is_write)
			reg_write(e, (uint32_t)dw, v);
	}
	pthread_mutex_unlock(&e->lock);
}

static void mmio_read(void *dev, uint64_t off, void *data, unsigned len)
{
	bar_access(dev, false, off, data, len, false);
}

static void mmio_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	bar_access(dev, false, off, (uint8_t *)data, len, true);
}

static void io_read(void *dev, uint64_t off, void *data, unsigned len)
{
	bar_access(dev, true, off, data, len, false);
}

static void io_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	bar_access(dev, true, off, (uint8_t *)data, len, true);
}

static const struct io_ops e1000_mmio_ops = { .read = mmio_read, .write = mmio_write };
static const struct io_ops e1000_io_ops = { .read = io_read, .write = io_write };

/* ---- loop-thread callbacks ---- */

static void e1000_work_locked(struct e1000 *e)
{
	if (e->tx_throttled) {
		e->tx_throttled = false;
		tx_run(e);
	}
	rx_pump(e);
	e1000_update_irq(e);
}

void e1000_loop_work(struct e1000 *e)
{
	pthread_mutex_lock(&e->lock);
	e->kick_pending = false;
	e1000_work_locked(e);
	pthread_mutex_unlock(&e->lock);
}

static void on_kick(void *opaque, uint32_t events)
{
	struct e1000 *e = opaque;
	uint64_t n;
	(void)events;
	if (read(e->kick_fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return;
	e1000_loop_work(e);
}

static void on_timer(void *opaque, uint32_t events)
{
	struct e1000 *e = opaque;
	uint64_t n;
	(void)events;
	if (read(e->timer_fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&e->lock);
	if (e->timer_at <= net_now_ns())
		e->timer_at = 0;   /* else re-armed for later meanwhile */
	e1000_work_locked(e);
	pthread_mutex_unlock(&e->lock);
}

static void on_rx_ready(void *opaque, unsigned q)
{
	struct e1000 *e = opaque;
	(void)q;
	pthread_mutex_lock(&e->lock);
	rx_pump(e);
	pthread_mutex_unlock(&e->lock);
}

/* ---- creation ---- */

struct pci_device *e1000_pci(struct e1000 *e)
{
	return &e->pci;
}

const struct net_stats *e1000_stats(struct e1000 *e)
{
	return &e->stats;
}

static void e1000_free(struct e1000 *e)
{
	if (e->kick_fd >= 0)
		close(e->kick_fd);
	if (e->timer_fd >= 0)
		close(e->timer_fd);
	free(e->tx_buf);
	free(e->tx_seg);
	free(e->rx_buf);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

int e1000_create_with_backend(struct vm *vm, const struct net_config *nc, struct net_backend *be,
			      struct e1000 **out)
{
	struct e1000 *e = calloc(1, sizeof(*e));
	if (!e) {
		log_err("e1000-%u: out of memory", nc->index);
		return -ENOMEM;
	}
	e->vm = vm;
	e->be = be;
	snprintf(e->name, sizeof(e->name), "e1000-%u", nc->index);
	memcpy(e->mac, nc->mac, sizeof(e->mac));
	pthread_mutex_init(&e->lock, NULL);
	e->tx_buf = malloc(TX_BUF_MAX);
	e->tx_seg = malloc(NET_MAX_FRAME);
	e->rx_buf = malloc(RX_BUF_SIZE);
	e->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	e->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (!e->tx_buf || !e->tx_seg || !e->rx_buf || e->kick_fd < 0 || e->timer_fd < 0) {
		log_err("%s: cannot allocate buffers or event fds", e->name);
		e1000_free(e);
		return -ENOMEM;
	}
	if (!vm->pci) {
		log_err("%s: no PCI bus", e->name);
		e1000_free(e);
		return -ENODEV;
	}
	e->limited = nc->bw || nc->pps;
	uint64_t now = net_now_ns();
	net_limiter_init(&e->tx_limit, nc->bw, nc->pps, now);
	net_limiter_init(&e->rx_limit, nc->bw, nc->pps, now);
	e1000_eeprom_init(e);

	struct pci_device *d = &e->pci;
	pci_device_init(d, e->name, E1000_VENDOR, E1000_DEVICE, (uint32_t)E1000_CLASS << 8 | E1000_REVISION,
			E1000_SUBSYS_VENDOR, E1000_SUBSYS);
	d->opaque = e;
	if (pci_device_add_bar(d, 0, PCI_BAR_MEM32, E1000_MMIO_SIZE, &e1000_mmio_ops, e) ||
	    pci_device_add_bar(d, 1, PCI_BAR_IO, E1000_IO_SIZE, &e1000_io_ops, e)) {
		log_err("%s: cannot declare the BARs", e->name);
		e1000_free(e);
		return -EINVAL;
	}
	e1000_reset(e);

	int r = loop_add(vm->loop, e->kick_fd, EPOLLIN, on_kick, e);
	if (r < 0) {
		log_err("%s: cannot watch the event fd", e->name);
		e1000_free(e);
		return r;
	}
	r = loop_add(vm->loop, e->timer_fd, EPOLLIN, on_timer, e);
	if (r < 0) {
		log_err("%s: cannot watch the timer fd", e->name);
		loop_remove(vm->loop, e->kick_fd);
		e1000_free(e);
		return r;
	}
	be->rx_ready = on_rx_ready;
	be->opaque = e;
	if (be->ops->set_offloads)
		be->ops->set_offloads(be, 0);   /* whole, checksummed frames only */
	if (pci_bus_plug(vm->pci, d)) {
		loop_remove(vm->loop, e->timer_fd);
		loop_remove(vm->loop, e->kick_fd);
		be->rx_ready = NULL;
		be->opaque = NULL;
		e1000_free(e);
		return -EBUSY;
	}
	const uint8_t *m = e->mac;
	log_info("%s: PCI 00:%02x.0, BAR0 0x%llx, MAC %02x:%02x:%02x:%02x:%02x:%02x, %s%s%s", e->name,
		 d->devfn >> 3, (unsigned long long)d->bars[0].addr, m[0], m[1], m[2], m[3], m[4], m[5],
		 be->ops->name, be->ifname[0] ? " " : "", be->ifname);
	*out = e;
	return 0;
}

void e1000_destroy_device(struct vm *vm, struct e1000 *e)
{
	char line[256];
	net_stats_format(&e->stats, line, sizeof(line));
	log_info("%s: %s", e->name, line);
	pci_bus_unplug(vm->pci, &e->pci);
	loop_remove(vm->loop, e->timer_fd);
	loop_remove(vm->loop, e->kick_fd);
	net_backend_destroy(e->be);
	e1000_free(e);
}

static int e1000_dev_create(struct vm *vm, const void *arg, void **state)
{
	const struct net_config *nc = arg;
	struct net_backend *be = net_backend_create(nc, vm->cfg->name, vm->loop, 1);
	if (!be)
		return -EIO;
	struct e1000 *e;
	int r = e1000_create_with_backend(vm, nc, be, &e);
	if (r) {
		net_backend_destroy(be);
		return r;
	}
	*state = e;
	return 0;
}

static void e1000_dev_destroy(struct vm *vm, void *state)
{
	e1000_destroy_device(vm, state);
}

const struct device_ops e1000_device_ops = {
	.name = "e1000",
	.create = e1000_dev_create,
	.destroy = e1000_dev_destroy,
};
