/*
 * virtio-blk micro-benchmark: one queue, a fixed queue depth kept full,
 * completions by polling the used ring (no interrupts), doorbells only when
 * the device asks for them. Timed with the calibrated TSC after set-up, so
 * boot time does not count.
 *
 * cmdline:
 *   rw=randread|randwrite|read|write   (default randread)
 *   bs=BYTES (default 4096, multiple of 512)
 *   qd=N (default 1)
 *   seconds=N (default 5; 0 = set up only, print a zero line: a baseline)
 *   span_mb=N (default: the whole disk)
 *   transport=mmio
 * Prints one line:
 *   bench: rw=R bs=B qd=Q ops=N bytes=N us=N iops=N MBps=N lat_ns=N kicks=N errors=N
 * with the numbers after ops= right-aligned in fixed widths.
 * (MBps is 10^6 bytes/s; lat_ns is the mean time a request is in flight.)
 */
#include "virtio_drv.h"

static struct vblk blk;

static uint64_t rng = 0x853c49e6748fea9bull;
static uint64_t xorshift(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

int main(void)
{
	enum vtransport t = vt_from_cmdline();
	char rw[16] = "randread";
	uint64_t bs = 4096, qd = 1, seconds = 5, span_mb = 0;
	cmdline_str("rw", rw, sizeof(rw));
	cmdline_u64("bs", &bs);
	cmdline_u64("qd", &qd);
	cmdline_u64("seconds", &seconds);
	cmdline_u64("span_mb", &span_mb);
	bool rnd = !strncmp(rw, "rand", 4);
	bool write = !strncmp(rw + (rnd ? 4 : 0), "write", 6);
	if (!bs || bs % 512) {
		kprintf("bench: FAIL: bs=%lu is not a multiple of 512\n", bs);
		return 1;
	}

	uint64_t khz = tsc_khz(); /* calibrate before anything is timed */
	if (!vblk_open(&blk, t, 0, VBIT(VIRTIO_BLK_F_FLUSH) | VBIT(VIRTIO_BLK_F_BLK_SIZE), 0)) {
		kprintf("bench: FAIL: no usable block device on %s\n", vt_name(t));
		return 1;
	}
	if (qd < 1)
		qd = 1;
	if (qd > blk.q.size / 3u)
		qd = blk.q.size / 3u;
	uint64_t span = span_mb ? span_mb << 20 : blk.capacity * 512;
	if (span > blk.capacity * 512)
		span = blk.capacity * 512;
	uint64_t nblocks = span / bs;
	if (!nblocks) {
		kprintf("bench: FAIL: the disk is smaller than one block\n");
		return 1;
	}

	uint8_t *bufs = vmem_alloc(bs * qd, 4096);
	for (uint64_t i = 0; i < bs * qd; i += 8)
		*(uint64_t *)(bufs + i) = i * 0x9e3779b97f4a7c15ull;
	int16_t *slot_of = vmem_alloc(sizeof(int16_t) * VQ_MAX_SIZE, 8);
	uint64_t seq = 0, ops = 0, inflight = 0, errors = 0;
	uint32_t type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;

	uint64_t t0 = rdtsc(), end = t0 + seconds * khz * 1000, t1 = t0;
	if (seconds) {
		/* Fill the queue, then replace each completion at once. */
		for (uint64_t i = 0; i < qd; i++) {
			uint64_t blkno = rnd ? xorshift() % nblocks : seq++ % nblocks;
			int h = vblk_submit(&blk, type, blkno * (bs / 512), bufs + bs * i, (uint32_t)bs);
			slot_of[h] = (int16_t)i;
			inflight++;
		}
		vq_publish(&blk.q);
		vq_kick(&blk.q);
		bool stopping = false;
		while (inflight) {
			uint16_t h;
			bool any = false;
			while (vq_get(&blk.q, &h, NULL)) {
				any = true;
				inflight--;
				ops++;
				if (blk.status[h] != VIRTIO_BLK_S_OK)
					errors++;
				if (stopping)
					continue;
				int slot = slot_of[h];
				uint64_t blkno = rnd ? xorshift() % nblocks : seq++ % nblocks;
				int nh = vblk_submit(&blk, type, blkno * (bs / 512), bufs + bs * (uint64_t)slot,
						     (uint32_t)bs);
				slot_of[nh] = (int16_t)slot;
				inflight++;
			}
			if (any) {
				if (!stopping) {
					vq_publish(&blk.q);
					vq_kick(&blk.q);
				}
				t1 = rdtsc();
				if (!stopping && (int64_t)(t1 - end) >= 0)
					stopping = true;
			} else {
				cpu_relax();
				if ((int64_t)(rdtsc() - end) > (int64_t)(khz * 30000)) {
					kprintf("bench: FAIL: %lu requests stuck for 30 s\n", inflight);
					return 1;
				}
			}
		}
	}
	uint64_t us = (t1 - t0) * 1000 / khz;
	uint64_t bytes = ops * bs;
	/* Fixed widths: a run and its no-I/O baseline print the same number of
	 * characters, so serial output adds the same exits to both. */
	kprintf("bench: rw=%s bs=%lu qd=%lu ops=%12lu bytes=%16lu us=%12lu iops=%10lu MBps=%8lu lat_ns=%12lu "
		"kicks=%12lu errors=%6lu\n",
		rw, bs, qd, ops, bytes, us, us ? ops * 1000000 / us : 0, us ? bytes / us : 0,
		ops ? us * 1000 * qd / ops : 0, blk.q.kicks, errors);
	vdev_reset(&blk.d);
	return errors ? 1 : 0;
}
