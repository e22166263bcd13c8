/*
 * Hostile virtio-blk driver: sends malformed descriptor chains, rings and
 * register writes one at a time. For each, the device must either return
 * the chain (used length 0, or an IOERR/UNSUPP status) or set
 * DEVICE_NEEDS_RESET, after which we reset, re-initialise and check that a
 * normal read works. The VMM must keep running: reaching PASS proves it.
 *
 * cmdline: transport=mmio, qsize=N (default 16), verbose,
 *          lenient_early (accept a device that uses buffers before
 *          DRIVER_OK; QEMU does),
 *          lenient_features (accept a device that sets FEATURES_OK for
 *          unoffered features or without VERSION_1),
 *          lenient_indirect (accept a device that follows an indirect
 *          descriptor although INDIRECT_DESC was not negotiated),
 *          lenient_dma (accept a device that completes requests whose
 *          buffers lie outside RAM, e.g. in the MMIO hole, as if the
 *          accesses went to unassigned memory; QEMU does. Kestrel's
 *          contract is to refuse them, so its cases run without this)
 */
#include "virtio_drv.h"

#define QSIZE_DEFAULT 16
#define WAIT_US       3000000
#define SENTINEL      64          /* sector the sanity reads use */

static struct vblk blk;
static uint16_t qsize;
static int failures, returned, resets, ignored, ncases;
static uint64_t ram_top;
static bool no_sanity;           /* judge(): skip the sanity read */

/* Buffers the cases point at. */
static struct virtio_blk_req_hdr *H;
static uint8_t *D;               /* 4 KiB data */
static volatile uint8_t *S;      /* status byte */
static struct vring_desc *T, *T2; /* indirect tables (64 entries each) */
static struct vring_desc *BIG;   /* indirect table with 1024+ entries */
static uint8_t *ALIAS;           /* 8 MiB, aliased by many descriptors */
static uint8_t *good, *check;    /* sentinel data */

#define FAILF(...)                                    \
	do {                                          \
		kprintf("hostile: FAIL: " __VA_ARGS__); \
		failures++;                           \
	} while (0)

enum expect {
	BAD,          /* returned with len 0 or an error status, or NEEDS_RESET */
	ANY,          /* returned (any status) or NEEDS_RESET: just no hang */
	RING,         /* NEEDS_RESET, or ignored (no used entry is possible) */
};

static void d(unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	blk.q.desc[i] = (struct vring_desc){ addr, len, flags, next };
}

static void hdr(uint32_t type, uint64_t sector)
{
	*H = (struct virtio_blk_req_hdr){ type, 0, sector };
	*S = 0xff;
}

/* Puts `head` on the available ring and rings the doorbell. */
static void post(uint16_t head)
{
	struct vq *q = &blk.q;
	q->avail->ring[q->avail_idx & (q->size - 1)] = head;
	q->avail_idx++;
	vq_publish(q);
	vq_notify(q);
}

static bool reinit(void)
{
	if (!vblk_reinit(&blk, qsize)) {
		FAILF("re-initialisation failed\n");
		return false;
	}
	return true;
}

/* A normal read of the sentinel must work and return what we wrote. */
static bool sane(const char *after)
{
	memset(check, 0, 4096);
	int s = vblk_rw(&blk, VIRTIO_BLK_T_IN, SENTINEL, check, 4096, NULL);
	if (s != VIRTIO_BLK_S_OK || memcmp(check, good, 4096)) {
		FAILF("after %s: sanity read %s%s\n", after, vblk_status_name(s),
		      s == 0 ? " but the data differs" : "");
		return false;
	}
	return true;
}

static void recover(const char *name)
{
	resets++;
	if (!reinit() || !sane(name)) {
		kprintf("hostile: the device did not recover after %s; giving up\n", name);
		kprintf("hostile: FAIL\n");
		debug_exit(FAIL);
	}
}

/* Runs one case whose chain the caller already wrote; `status` is where
 * a well-formed device would put the status byte (NULL: nowhere). */
static void judge(const char *name, int head, enum expect e, volatile uint8_t *status)
{
	struct vq *q = &blk.q;
	uint16_t got = 0;
	uint32_t len = 0;
	ncases++;
	int r = vq_wait(q, &got, &len, WAIT_US);
	if (r == -1 && (vdev_status(&blk.d) & VIRTIO_STATUS_NEEDS_RESET))
		r = -2;
	if (r == -2) {
		kprintf("hostile: %-34s -> device needs reset\n", name);
		recover(name);
		return;
	}
	if (r == -1) {
		if (e == RING) {
			kprintf("hostile: %-34s -> ignored (no used entry, no NEEDS_RESET)\n", name);
			ignored++;
		} else {
			FAILF("%s: no used entry and no NEEDS_RESET within %u ms (status 0x%x)\n", name,
			      WAIT_US / 1000, vdev_status(&blk.d));
		}
		recover(name);
		return;
	}
	returned++;
	uint8_t sb = status ? *status : 0xff;
	if (head >= 0 && got != head) {
		FAILF("%s: used id %u, the chain's head is %d\n", name, got, head);
		recover(name);
		return;
	}
	bool ok = len == 0 || (status && (sb == VIRTIO_BLK_S_IOERR || sb == VIRTIO_BLK_S_UNSUPP));
	if (e == BAD && !ok)
		FAILF("%s: returned with len %u and status %s\n", name, len, vblk_status_name(sb));
	else
		kprintf("hostile: %-34s -> returned, len %u, status %s\n", name, len,
			len ? vblk_status_name(sb) : "-");
	if (!no_sanity && !sane(name))
		recover(name);
}

static uint64_t unmapped(void)
{
	/* Beyond RAM and below the 3 GiB hole if possible, else above 4 GiB. */
	uint64_t a = (ram_top + 0x10000000ull) & ~0xfffffull;
	if (a >= 0xc0000000ull && a < 0x100000000ull)
		a = 0x100000000ull + ram_top;
	return a;
}

/* ---- the cases ---- */

static void c_next_oob(void)
{
	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, qsize);
	post(0);
	judge("next index == queue size", 0, BAD, NULL);

	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 0xffff);
	post(0);
	judge("next index 0xffff", 0, BAD, NULL);
}

static void c_loops(void)
{
	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 0);
	post(0);
	judge("descriptor chained to itself", 0, BAD, NULL);

	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, (uint64_t)S, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
	post(0);
	judge("loop 1 -> 2 -> 1 (writable)", 0, BAD, S);

	/* Every descriptor in the table, then back to the head. */
	hdr(VIRTIO_BLK_T_OUT, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	for (unsigned i = 1; i < qsize; i++)
		d(i, (uint64_t)D, 512, VRING_DESC_F_NEXT, (uint16_t)((i + 1) % qsize));
	post(0);
	judge("loop through the whole table", 0, BAD, NULL);
}

static void c_indirect(void)
{
	hdr(VIRTIO_BLK_T_IN, 0);
	T[0] = (struct vring_desc){ (uint64_t)H, 16, VRING_DESC_F_NEXT, 1 };
	T[1] = (struct vring_desc){ (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2 };
	T[2] = (struct vring_desc){ (uint64_t)S, 1, VRING_DESC_F_WRITE, 0 };
	static const struct { uint32_t len; const char *name; } lens[] = {
		{ 0, "indirect table of length 0" },
		{ 8, "indirect table of length 8" },
		{ 24, "indirect table of length 24" },
		{ 47, "indirect table of length 47" },
	};
	for (size_t k = 0; k < ARRAY_SIZE(lens); k++) {
		*S = 0xff;
		d(0, (uint64_t)T, lens[k].len, VRING_DESC_F_INDIRECT, 0);
		post(0);
		judge(lens[k].name, 0, BAD, S);
	}

	/* Nested: the table points at another table. */
	*S = 0xff;
	T2[0] = (struct vring_desc){ (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1 };
	T2[1] = (struct vring_desc){ (uint64_t)S, 1, VRING_DESC_F_WRITE, 0 };
	T[1] = (struct vring_desc){ (uint64_t)T2, 32, VRING_DESC_F_INDIRECT, 0 };
	T[0].flags = VRING_DESC_F_NEXT;
	d(0, (uint64_t)T, 32, VRING_DESC_F_INDIRECT, 0);
	post(0);
	judge("nested indirect table", 0, BAD, S);

	/* INDIRECT together with NEXT. */
	*S = 0xff;
	T[1] = (struct vring_desc){ (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2 };
	d(0, (uint64_t)T, 48, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
	post(0);
	/* The driver MUST NOT do this; the device's answer is unspecified
	 * (QEMU ignores NEXT and runs the request). */
	judge("INDIRECT with NEXT set", 0, ANY, S);

	/* Table outside RAM, in the MMIO hole, and wrapping. */
	d(0, unmapped(), 48, VRING_DESC_F_INDIRECT, 0);
	post(0);
	judge("indirect table past RAM", 0, BAD, NULL);
	d(0, 0xfee00000ull, 48, VRING_DESC_F_INDIRECT, 0);
	post(0);
	judge("indirect table on the LAPIC", 0, BAD, NULL);
	d(0, 0xfffffffffffffff0ull, 48, VRING_DESC_F_INDIRECT, 0);
	post(0);
	judge("indirect table wrapping 2^64", 0, BAD, NULL);

	/* Bad next inside the table, and a loop inside it. */
	*S = 0xff;
	T[0] = (struct vring_desc){ (uint64_t)H, 16, VRING_DESC_F_NEXT, 7 };
	d(0, (uint64_t)T, 48, VRING_DESC_F_INDIRECT, 0);
	post(0);
	judge("indirect next past the table", 0, BAD, S);
	*S = 0xff;
	T[0] = (struct vring_desc){ (uint64_t)H, 16, VRING_DESC_F_NEXT, 1 };
	T[1] = (struct vring_desc){ (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2 };
	T[2] = (struct vring_desc){ (uint64_t)S, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1 };
	d(0, (uint64_t)T, 48, VRING_DESC_F_INDIRECT, 0);
	post(0);
	judge("loop inside an indirect table", 0, BAD, S);

	/* A chain longer than any queue: 2048 entries. */
	hdr(VIRTIO_BLK_T_IN, 0);
	BIG[0] = (struct vring_desc){ (uint64_t)H, 16, VRING_DESC_F_NEXT, 1 };
	for (unsigned i = 1; i < 2047; i++)
		BIG[i] = (struct vring_desc){ (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
					      (uint16_t)(i + 1) };
	BIG[2047] = (struct vring_desc){ (uint64_t)S, 1, VRING_DESC_F_WRITE, 0 };
	d(0, (uint64_t)BIG, 2048 * 16, VRING_DESC_F_INDIRECT, 0);
	post(0);
	judge("indirect chain of 2048 descriptors", 0, ANY, S);
}

static void c_order_and_status(void)
{
	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)S, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, (uint64_t)D, 512, 0, 0);
	post(0);
	judge("readable after writable", 0, BAD, S);

	/* OUT with nothing writable: no status byte at all. */
	hdr(VIRTIO_BLK_T_OUT, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 512, 0, 0);
	post(0);
	judge("no status byte (nothing writable)", 0, BAD, NULL);

	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 16, 0, 0);
	post(0);
	judge("header only", 0, BAD, NULL);

	/* The status descriptor has length 0: the last writable byte is then
	 * the data's last byte, so a 511-byte read. */
	hdr(VIRTIO_BLK_T_IN, 0);
	D[511] = 0xff;
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, (uint64_t)S, 0, VRING_DESC_F_WRITE, 0);
	post(0);
	judge("zero-length status descriptor", 0, BAD, &D[511]);

	/* A writable header. */
	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
	d(1, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
	post(0);
	judge("header in a writable descriptor", 0, BAD, S);

	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 8, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
	post(0);
	judge("8-byte header", 0, BAD, S);

	hdr(0x7fffffff, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
	post(0);
	judge("request type 0x7fffffff", 0, BAD, S);

	/* (The sanity read after each case reuses descriptors 0..2, so every
	 * case writes its whole chain.) */
	hdr(VIRTIO_BLK_T_IN, 0xfffffffffffffff0ull);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
	post(0);
	judge("read at sector 2^64-16", 0, BAD, S);

	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 513, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
	post(0);
	judge("read of 513 bytes", 0, BAD, S);
}

static void c_addresses(void)
{
	enum expect e = cmdline_has("lenient_dma") ? ANY : BAD;
	static const struct { uint64_t addr; uint32_t len; const char *name; } bufs[] = {
		{ 0, 4096, "data past RAM" },                       /* filled in below */
		{ 0xfee00000ull, 4096, "data on the LAPIC" },
		{ 0xfec00000ull, 4096, "data on the IOAPIC" },
		{ 0xe0000000ull, 4096, "data in the PCI hole (ECAM)" },
		{ 0xfffffffffffff000ull, 8192, "data wrapping 2^64" },
		{ 0, 0xffffffffu, "data of length 2^32-1" },         /* at D */
		{ 0, 8192, "data straddling the end of RAM" },       /* ram_top - 4096 */
	};
	for (size_t k = 0; k < ARRAY_SIZE(bufs); k++) {
		uint64_t a = bufs[k].addr;
		if (k == 0)
			a = unmapped();
		else if (k == 5)
			a = (uint64_t)D;
		else if (k == 6)
			a = ram_top - 4096;
		for (int write = 0; write < 2; write++) {
			hdr(write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, 0);
			d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
			d(1, a, bufs[k].len, (uint16_t)(VRING_DESC_F_NEXT | (write ? 0 : VRING_DESC_F_WRITE)), 2);
			d(2, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
			post(0);
			char name[64];
			size_t n = strlen(bufs[k].name);
			memcpy(name, write ? "OUT: " : "IN: ", write ? 5 : 4);
			memcpy(name + (write ? 5 : 4), bufs[k].name, n + 1);
			judge(name, 0, e, S);
		}
	}

	/* Status byte outside RAM. */
	hdr(VIRTIO_BLK_T_IN, 0);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, unmapped(), 1, VRING_DESC_F_WRITE, 0);
	post(0);
	judge("status byte past RAM", 0, e, NULL);

	/* Header outside RAM. */
	d(0, unmapped(), 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
	*S = 0xff;
	post(0);
	judge("header past RAM", 0, e, S);

	/* 2^32 + 512 bytes of reads, through 512 aliases of one 8 MiB buffer:
	 * a device adding lengths in 32 bits would see 512. */
	hdr(VIRTIO_BLK_T_IN, 0);
	BIG[0] = (struct vring_desc){ (uint64_t)H, 16, VRING_DESC_F_NEXT, 1 };
	for (unsigned i = 1; i <= 512; i++)
		BIG[i] = (struct vring_desc){ (uint64_t)ALIAS, 8u << 20, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
					      (uint16_t)(i + 1) };
	BIG[513] = (struct vring_desc){ (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 514 };
	BIG[514] = (struct vring_desc){ (uint64_t)S, 1, VRING_DESC_F_WRITE, 0 };
	d(0, (uint64_t)BIG, 515 * 16, VRING_DESC_F_INDIRECT, 0);
	post(0);
	judge("IN of 2^32 + 512 bytes (aliased)", 0, BAD, S);
}

static void c_discard(void)
{
	uint64_t f = blk.d.features;
	struct virtio_blk_discard_wz *seg = (void *)(D + 1024);
	for (int wz = 0; wz < 2; wz++) {
		if (!(f & VBIT(wz ? VIRTIO_BLK_F_WRITE_ZEROES : VIRTIO_BLK_F_DISCARD)))
			continue;
		uint32_t type = wz ? VIRTIO_BLK_T_WRITE_ZEROES : VIRTIO_BLK_T_DISCARD;
		static const char *names[2][4] = {
			{ "DISCARD past the end", "DISCARD with flags 0xfffe", "DISCARD of 2^32-1 sectors",
			  "DISCARD with two segments" },
			{ "WRITE_ZEROES past the end", "WRITE_ZEROES with flags 0xfffe",
			  "WRITE_ZEROES of 2^32-1 sectors", "WRITE_ZEROES with two segments" },
		};
		for (int k = 0; k < 4; k++) {
			seg[0] = (struct virtio_blk_discard_wz){ 0, 8, 0 };
			seg[1] = seg[0];
			if (k == 0)
				seg[0].sector = blk.capacity - 4;
			else if (k == 1)
				seg[0].flags = 0xfffe;
			else if (k == 2)
				seg[0].num_sectors = 0xffffffffu;
			hdr(type, 0);
			d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
			d(1, (uint64_t)seg, k == 3 ? 32 : 16, VRING_DESC_F_NEXT, 2);
			d(2, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
			post(0);
			/* Two segments are legal when max_*_seg allows; then it may succeed. */
			uint32_t maxseg = vdev_cfg32(&blk.d, wz ? VBLK_CFG_MAX_WZ_SEG : VBLK_CFG_MAX_DISCARD_SEG);
			judge(names[wz][k], 0, k == 3 && maxseg > 1 ? ANY : BAD, S);
		}
	}
}

static void c_many_at_once(void)
{
	/* The whole ring full of bad chains, one doorbell. */
	struct vq *q = &blk.q;
	unsigned n = qsize;
	hdr(VIRTIO_BLK_T_IN, 0);
	for (unsigned i = 0; i < n; i++) {
		d(i, (uint64_t)H, 16, VRING_DESC_F_NEXT, (uint16_t)(i % 2 ? i : qsize + i));
		q->avail->ring[q->avail_idx & (q->size - 1)] = (uint16_t)i;
		q->avail_idx++;
	}
	vq_publish(q);
	vq_notify(q);
	unsigned got_n = 0;
	ncases++;
	for (;;) {
		uint16_t h;
		uint32_t len;
		int r = vq_wait(q, &h, &len, WAIT_US);
		if (r == -2 || (r == -1 && (vdev_status(&blk.d) & VIRTIO_STATUS_NEEDS_RESET))) {
			kprintf("hostile: %-34s -> device needs reset after %u\n", "a full ring of bad chains", got_n);
			recover("a full ring of bad chains");
			return;
		}
		if (r == -1) {
			FAILF("a full ring of bad chains: %u of %u returned, then nothing\n", got_n, n);
			recover("a full ring of bad chains");
			return;
		}
		if (len != 0)
			FAILF("a full ring of bad chains: head %u returned with len %u\n", h, len);
		if (++got_n == n)
			break;
	}
	returned++;
	kprintf("hostile: %-34s -> all %u returned\n", "a full ring of bad chains", n);
	sane("a full ring of bad chains");
}

static void c_ring(void)
{
	struct vq *q = &blk.q;
	/* A head index out of range in the available ring. */
	q->avail->ring[q->avail_idx & (q->size - 1)] = (uint16_t)(qsize + 5);
	q->avail_idx++;
	vq_publish(q);
	vq_notify(q);
	judge("available ring head out of range", -1, RING, NULL);

	/* avail->idx more than a ring ahead. */
	hdr(VIRTIO_BLK_T_IN, SENTINEL);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
	for (unsigned i = 0; i < q->size; i++)
		q->avail->ring[i] = 0;
	q->avail_idx = (uint16_t)(q->avail_idx + qsize + 5);
	vq_publish(q);
	vq_notify(q);
	judge("avail->idx jumps past the ring", -1, RING, NULL);

	/* Disk data read straight into the available ring. */
	int returned_before = returned, resets_before = resets;
	hdr(VIRTIO_BLK_T_IN, SENTINEL);
	d(0, (uint64_t)H, 16, VRING_DESC_F_NEXT, 1);
	d(1, (uint64_t)q->avail, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	d(2, (uint64_t)S, 1, VRING_DESC_F_WRITE, 0);
	post(0);
	no_sanity = true;
	judge("IN into the available ring", 0, ANY, S);
	no_sanity = false;
	/* Whatever happened, the available ring now holds disk data. */
	if (resets == resets_before) {
		recover("IN into the available ring");
		if (returned != returned_before)
			resets--;       /* counted as returned */
	}
}

/* Queue set-up with rings outside RAM or a bad size. */
static void c_setup(void)
{
	struct vdev *dv = &blk.d;
	static const struct { const char *name; int kind; } cases[] = {
		{ "descriptor table past RAM", 0 },
		{ "used ring in the MMIO hole", 1 },
		{ "avail ring wrapping 2^64", 2 },
		{ "queue size 3", 3 },
		{ "queue size 0x8000", 4 },
	};
	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		ncases++;
		if (!vdev_negotiate(dv, blk.wanted)) {
			FAILF("%s: negotiation failed\n", cases[k].name);
			recover(cases[k].name);
			continue;
		}
		struct vq *q = &blk.q;
		vq_forget(q);
		uint64_t da = (uint64_t)q->desc, aa = (uint64_t)q->avail, ua = (uint64_t)q->used;
		uint16_t size = q->size;
		if (cases[k].kind == 0)
			da = unmapped();
		else if (cases[k].kind == 1)
			ua = 0xe0000000ull;
		else if (cases[k].kind == 2)
			aa = 0xfffffffffffffffeull;
		else if (cases[k].kind == 3)
			size = 3;
		else
			size = 0x8000;
		q->notify_addr = vq_program(dv, 0, size, da, aa, ua, true);
		q->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
		uint8_t st = vdev_status(dv);
		vdev_driver_ok(dv);
		/* A read, which the device cannot complete into a bad ring. */
		int head = vblk_submit(&blk, VIRTIO_BLK_T_IN, SENTINEL, D, 512);
		vq_publish(q);
		vq_notify(q);
		uint16_t got;
		int r = vq_wait(q, &got, NULL, 500000);
		uint8_t st2 = vdev_status(dv);
		const char *what = (st & VIRTIO_STATUS_NEEDS_RESET) ? "needs reset at queue enable"
				   : (st2 & VIRTIO_STATUS_NEEDS_RESET) ? "needs reset at the first request"
				   : r == 0 && got == head ? "request completed"
							   : "ignored";
		kprintf("hostile: %-34s -> %s\n", cases[k].name, what);
		recover(cases[k].name);
		if (!strncmp(what, "ignored", 7)) {
			ignored++;
			resets--;       /* counted as ignored */
		}
	}
}

/* Register-level garbage. */
static void c_registers(void)
{
	struct vdev *dv = &blk.d;
	ncases++;
	/* Config space is read-only for virtio-blk (no WCE negotiated). */
	uint64_t cap = vdev_cfg64(dv, VBLK_CFG_CAPACITY);
	uint64_t cfg = dv->t == VT_PCI ? dv->devcfg : dv->base + 0x100;
	mmio_write32(cfg + 0, 0x12345678);
	mmio_write32(cfg + 4, 0x9abcdef0);
	mmio_write8(cfg + 0x3b, 0xff);
	if (vdev_cfg64(dv, VBLK_CFG_CAPACITY) != cap)
		FAILF("a write to the read-only capacity changed it\n");
	/* A queue that does not exist. */
	if (vq_read_size(dv, 7))
		FAILF("queue 7 reports a size\n");
	vq_program(dv, 7, 16, (uint64_t)D, (uint64_t)D + 256, (uint64_t)D + 1024, true);
	/* QEMU reads a non-existent queue back as enabled: only report it. */
	if (vq_enabled(dv, 7))
		kprintf("hostile: note: queue 7 (non-existent) reads back as enabled\n");
	if (dv->t == VT_PCI) {
		mmio_write16(dv->common + 0x16, 0xffff);
		mmio_write16(dv->common + 0x1c, 1);
		/* Torn and odd-sized accesses to the common configuration. */
		mmio_write8(dv->common + 0x20, 0x55);
		mmio_write64(dv->common + 0x00, ~0ull);
		(void)mmio_read64(dv->common + 0x20);
		(void)mmio_read8(dv->common + 0x05);
		/* Doorbells for queues that do not exist. */
		mmio_write16(dv->notify + 7ull * dv->notify_mult, 7);
		mmio_write32(dv->notify, 0xffff);
	} else {
		mmio_write32(dv->base + 0x50, 7);
		mmio_write32(dv->base + 0x50, 0xffffffff);
		mmio_write8(dv->base + 0x70, 0xff);
		(void)mmio_read16(dv->base + 0x02);
	}
	/* Changing a live queue's addresses must be ignored or refused. */
	vq_program(dv, 0, 16, unmapped(), unmapped(), unmapped(), false);
	/* The driver cannot clear or set NEEDS_RESET itself; try anyway. */
	uint8_t st = vdev_status(dv);
	vdev_set_status(dv, (uint8_t)(st | VIRTIO_STATUS_NEEDS_RESET));
	uint8_t st2 = vdev_status(dv);
	kprintf("hostile: %-34s -> status 0x%x -> 0x%x after writing NEEDS_RESET\n", "register garbage", st, st2);
	if (st2 & VIRTIO_STATUS_NEEDS_RESET) {
		/* Allowed for a device that flagged itself; just recover. */
		recover("register garbage");
		return;
	}
	if (!sane("register garbage"))
		recover("register garbage");
	returned++;
}

/* Buffers made available before DRIVER_OK must wait for it. */
static void c_early(void)
{
	struct vdev *dv = &blk.d;
	ncases++;
	if (!vdev_negotiate(dv, blk.wanted) || !vq_setup(dv, &blk.q, 0, qsize)) {
		FAILF("early: set-up failed\n");
		recover("early");
		return;
	}
	blk.q.avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	memset(check, 0, 4096);
	int head = vblk_submit(&blk, VIRTIO_BLK_T_IN, SENTINEL, check, 4096);
	vq_publish(&blk.q);
	vq_notify(&blk.q);
	uint16_t got;
	int r = vq_wait(&blk.q, &got, NULL, 200000);
	bool early = r == 0;
	if (early && !cmdline_has("lenient_early"))
		FAILF("a request was completed before DRIVER_OK\n");
	vdev_driver_ok(dv);
	if (!early)
		r = vq_wait(&blk.q, &got, NULL, WAIT_US);
	if (r != 0 || got != head || blk.status[head] != 0 || memcmp(check, good, 4096))
		FAILF("the request made available before DRIVER_OK: %s after DRIVER_OK\n",
		      r ? vblk_status_name(r) : vblk_status_name(blk.status[head]));
	else
		kprintf("hostile: %-34s -> %s\n", "request before DRIVER_OK",
			early ? "completed early (allowed by lenient_early)" : "held until DRIVER_OK, then completed");
	returned++;
}

/* Feature negotiation the device must refuse: FEATURES_OK reads back
 * clear for a bit it did not offer, and (modern-only device) without
 * VERSION_1. */
static void c_features(void)
{
	struct vdev *dv = &blk.d;
	int bit = 33;
	while (bit < 64 && (dv->offered & VBIT(bit)))
		bit++;
	struct { const char *name; uint64_t f; } cases[] = {
		{ "features: an unoffered bit", (dv->offered & blk.wanted) | VBIT(VIRTIO_F_VERSION_1) | VBIT(bit) },
		{ "features: no VERSION_1", dv->offered & blk.wanted & ~VBIT(VIRTIO_F_VERSION_1) },
	};
	bool lenient = cmdline_has("lenient_features");
	for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
		ncases++;
		vdev_reset(dv);
		vdev_set_status(dv, VIRTIO_STATUS_ACKNOWLEDGE);
		vdev_set_status(dv, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
		vdev_write_features(dv, cases[k].f);
		vdev_set_status(dv, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
		uint8_t st = vdev_status(dv);
		bool refused = !(st & VIRTIO_STATUS_FEATURES_OK);
		if (!refused && !lenient)
			FAILF("%s (0x%lx): FEATURES_OK accepted\n", cases[k].name, cases[k].f);
		else
			kprintf("hostile: %-34s -> FEATURES_OK %s\n", cases[k].name,
				refused ? "refused" : "accepted (allowed by lenient_features)");
		returned++;
		recover(cases[k].name);
		resets--;
	}
}

/* Reset with requests in flight: once the status reads back 0, the device
 * must not write guest memory any more (data buffers or the used ring). */
static void c_reset_inflight(void)
{
	struct vq *q = &blk.q;
	const uint64_t MB = 1u << 20;
	unsigned n = qsize / 3 < 5 ? qsize / 3 : 5;
	static const unsigned delays_us[] = { 0, 20, 100, 500, 2000 };
	for (size_t k = 0; k < ARRAY_SIZE(delays_us); k++) {
		ncases++;
		memset(ALIAS, 0xaa, n * MB);
		uint16_t used_start = q->used->idx;
		for (unsigned i = 0; i < n; i++)
			vblk_submit(&blk, VIRTIO_BLK_T_IN, 2048ull * i, ALIAS + i * MB, (uint32_t)MB);
		vq_publish(q);
		vq_notify(q);
		if (delays_us[k])
			udelay(delays_us[k]);
		uint16_t used_before = q->used->idx;
		if (!vdev_reset(&blk.d)) {
			FAILF("reset with requests in flight: status does not read 0\n");
			recover("reset with requests in flight");
			continue;
		}
		/* From here on the memory is ours again. */
		memset(ALIAS, 0x55, n * MB);
		q->used->idx = 0x7777;
		q->used->ring[0].id = 0x7777;
		udelay(200000);
		uint64_t dirty = 0;
		for (uint64_t i = 0; i < n * MB; i += 8)
			if (*(uint64_t *)(ALIAS + i) != 0x5555555555555555ull)
				dirty++;
		bool ring_ok = q->used->idx == 0x7777 && q->used->ring[0].id == 0x7777;
		if (dirty || !ring_ok)
			FAILF("after a reset %u us into %u 1 MiB reads: %lu words of data and %s changed\n",
			      delays_us[k], n, dirty, ring_ok ? "not the used ring" : "the used ring");
		else
			kprintf("hostile: %-34s -> quiet after reset (%u us in, %u of %u used before)\n",
				"reset with reads in flight", delays_us[k], (uint16_t)(used_before - used_start), n);
		recover("reset with requests in flight");
	}
}

/* INDIRECT not negotiated: an indirect descriptor is malformed. */
static void c_indirect_unnegotiated(void)
{
	uint64_t saved = blk.wanted;
	blk.wanted &= ~VBIT(VIRTIO_F_INDIRECT_DESC);
	if (!reinit()) {
		blk.wanted = saved;
		recover("INDIRECT not negotiated");
		return;
	}
	hdr(VIRTIO_BLK_T_IN, SENTINEL);
	T[0] = (struct vring_desc){ (uint64_t)H, 16, VRING_DESC_F_NEXT, 1 };
	T[1] = (struct vring_desc){ (uint64_t)D, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2 };
	T[2] = (struct vring_desc){ (uint64_t)S, 1, VRING_DESC_F_WRITE, 0 };
	d(0, (uint64_t)T, 48, VRING_DESC_F_INDIRECT, 0);
	post(0);
	judge("indirect without INDIRECT_DESC", 0, cmdline_has("lenient_indirect") ? ANY : BAD, S);
	blk.wanted = saved;
	recover("INDIRECT not negotiated");
	resets--;
}

int main(void)
{
	enum vtransport t = vt_from_cmdline();
	uint64_t qs = QSIZE_DEFAULT;
	cmdline_u64("qsize", &qs);
	qsize = (uint16_t)qs;
	uint64_t wanted = VBIT(VIRTIO_BLK_F_RO) | VBIT(VIRTIO_BLK_F_BLK_SIZE) | VBIT(VIRTIO_BLK_F_FLUSH) |
			  VBIT(VIRTIO_BLK_F_DISCARD) | VBIT(VIRTIO_BLK_F_WRITE_ZEROES) | VBIT(VIRTIO_BLK_F_SEG_MAX) |
			  VBIT(VIRTIO_F_INDIRECT_DESC);
	if (!vblk_open(&blk, t, 0, wanted, qsize)) {
		kprintf("hostile: FAIL: no usable block device on %s\n", vt_name(t));
		return 1;
	}
	qsize = blk.q.size;
	ram_top = vmem_ram_top();
	H = vmem_alloc(4096, 4096);
	D = vmem_alloc(8192, 4096);
	S = vmem_alloc(64, 64);
	T = vmem_alloc(64 * 16, 16);
	T2 = vmem_alloc(64 * 16, 16);
	BIG = vmem_alloc(2048 * 16, 4096);
	ALIAS = vmem_alloc(8u << 20, 4096);
	good = vmem_alloc(4096, 4096);
	check = vmem_alloc(4096, 4096);
	kprintf("hostile: %s, queue size %u, features 0x%lx, RAM top 0x%lx, unmapped 0x%lx\n", vt_name(t), qsize,
		blk.d.features, ram_top, unmapped());
	if (!(blk.d.features & VBIT(VIRTIO_F_INDIRECT_DESC)))
		kprintf("hostile: INDIRECT_DESC not offered: indirect cases test the un-negotiated flag\n");

	for (int i = 0; i < 4096; i++)
		good[i] = (uint8_t)(i * 7 + (i >> 8) + 0x5a);
	int s = vblk_rw(&blk, VIRTIO_BLK_T_OUT, SENTINEL, good, 4096, NULL);
	if (s != 0 || !sane("set-up")) {
		kprintf("hostile: FAIL: cannot write the sentinel (%s)\n", vblk_status_name(s));
		return 1;
	}

	c_next_oob();
	c_loops();
	c_indirect();
	c_order_and_status();
	c_addresses();
	c_discard();
	c_many_at_once();
	c_ring();
	c_setup();
	c_registers();
	c_early();
	c_features();
	c_reset_inflight();
	if (blk.d.offered & VBIT(VIRTIO_F_INDIRECT_DESC))
		c_indirect_unnegotiated();

	/* Finally a clean reset and normal I/O. */
	recover("the last case");
	resets--;
	kprintf("hostile: %d cases: %d returned, %d needed a reset, %d ignored; %d failures\n", ncases, returned,
		resets, ignored, failures);
	if (returned + resets + ignored != ncases)
		kprintf("hostile: (outcomes add up to %d: some cases recovered twice)\n", returned + resets + ignored);
	vdev_reset(&blk.d);
	kprintf("hostile: %s\n", failures ? "FAIL" : "PASS");
	return failures ? 1 : 0;
}
