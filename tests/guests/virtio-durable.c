/*
 * Durability writer: writes numbered 4 KiB blocks (block k at byte k*4096)
 * in batches, FLUSHes after each batch, and after every acknowledged FLUSH
 * prints "durable: N" (blocks 0..N are on stable storage). Runs until the
 * disk is full, or for count=N blocks; then reads everything back, checks
 * it and exits PASS.
 *
 * Block layout (little-endian 64-bit words, 512 per block):
 *   word 0: 0x4b44555241424c45 ("KDURABLE" as a number)
 *   word 1: the run id (run=N on the cmdline, default 1)
 *   word 2: the block number
 *   word i >= 3: run * 0x9e3779b97f4a7c15 ^ block << 20 ^ i
 * tests/virtio/check-durable.py checks an image against it.
 *
 * cmdline: run=N, batch=N (default 8), count=N, transport=mmio
 */
#include "virtio_drv.h"

#define MAGIC 0x4b44555241424c45ull

static struct vblk blk;

static void fill(uint64_t *w, uint64_t run, uint64_t block)
{
	w[0] = MAGIC;
	w[1] = run;
	w[2] = block;
	for (unsigned i = 3; i < 512; i++)
		w[i] = (run * 0x9e3779b97f4a7c15ull) ^ (block << 20) ^ i;
}

int main(void)
{
	enum vtransport t = vt_from_cmdline();
	uint64_t run = 1, batch = 8, count = 0;
	cmdline_u64("run", &run);
	cmdline_u64("batch", &batch);
	cmdline_u64("count", &count);
	uint64_t wanted = VBIT(VIRTIO_BLK_F_FLUSH) | VBIT(VIRTIO_BLK_F_BLK_SIZE);
	if (!vblk_open(&blk, t, 0, wanted, 0)) {
		kprintf("durable: FAIL: no usable block device on %s\n", vt_name(t));
		return 1;
	}
	if (batch < 1)
		batch = 1;
	if (batch > blk.q.size / 3u)
		batch = blk.q.size / 3u;
	uint64_t blocks = blk.capacity / 8;
	if (!count || count > blocks)
		count = blocks;
	bool flush = blk.d.features & VBIT(VIRTIO_BLK_F_FLUSH);
	kprintf("durable: run %lu, %lu blocks of 4 KiB in batches of %lu, %s\n", run, count, batch,
		flush ? "FLUSH after each batch" : "no FLUSH feature (write-through device)");

	uint8_t *bufs = vmem_alloc(4096 * batch, 4096);
	int *heads = vmem_alloc(sizeof(int) * batch, 8);
	for (uint64_t next = 0; next < count;) {
		uint64_t n = count - next < batch ? count - next : batch;
		for (uint64_t i = 0; i < n; i++) {
			fill((uint64_t *)(bufs + 4096 * i), run, next + i);
			heads[i] = vblk_submit(&blk, VIRTIO_BLK_T_OUT, (next + i) * 8, bufs + 4096 * i, 4096);
		}
		vq_publish(&blk.q);
		vq_kick(&blk.q);
		for (uint64_t done = 0; done < n; done++) {
			uint16_t h;
			int r = vq_wait(&blk.q, &h, NULL, 30000000);
			if (r < 0 || blk.status[h] != VIRTIO_BLK_S_OK) {
				kprintf("durable: FAIL: write near block %lu: %s\n", next,
					vblk_status_name(r < 0 ? r : blk.status[h]));
				return 1;
			}
		}
		if (flush) {
			int s = vblk_rw(&blk, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, NULL);
			if (s != VIRTIO_BLK_S_OK) {
				kprintf("durable: FAIL: FLUSH after block %lu: %s\n", next + n - 1, vblk_status_name(s));
				return 1;
			}
		}
		next += n;
		kprintf("durable: %lu\n", next - 1);
	}

	/* Read everything back. */
	uint64_t *want = vmem_alloc(4096, 4096);
	for (uint64_t k = 0; k < count; k++) {
		int s = vblk_rw(&blk, VIRTIO_BLK_T_IN, k * 8, bufs, 4096, NULL);
		fill(want, run, k);
		if (s != VIRTIO_BLK_S_OK || memcmp(bufs, want, 4096)) {
			kprintf("durable: FAIL: block %lu reads back %s\n", k,
				s ? vblk_status_name(s) : "different data");
			return 1;
		}
	}
	kprintf("durable: all %lu blocks read back\n", count);
	kprintf("durable: PASS\n");
	return 0;
}
