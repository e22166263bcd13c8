/* Unit tests for the split virtqueue: a small fake "driver" builds
 * descriptor tables and rings in fake guest RAM, then the device side is
 * checked against the contract in virtqueue.h, including hostile input
 * and a seeded fuzz loop. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "virtio/virtqueue.h"

/* Fake RAM: three regions over one 4 MiB host buffer.
 *   A: gpa [0, 2M)   host [0, 2M)
 *   B: gpa [2M, 3M)  host [2M, 3M)   adjacent to A in gpa and host memory,
 *                                    so only the region check stops a
 *                                    range that crosses from A into B
 *   C: gpa [4M, 5M)  host [3M, 4M)   after a 1 MiB hole */
#define MiB         (1024ull * 1024)
#define HOST_SIZE   (4 * MiB)
#define RAM_END     (5 * MiB)
#define HOLE_START  (3 * MiB)

/* Guest layout used by the tests; room for VIRTQ_MAX_SIZE everywhere. */
#define DESC        0x1000ull   /* 16 * 1024 = 0x4000 */
#define AVAIL       0x5000ull   /* 6 + 2 * 1024 */
#define USED        0x6000ull   /* 6 + 8 * 1024 */
#define DATA        0x10000ull
#define IND         0x100000ull /* indirect tables */
#define QSZ         256

static struct {
	uint8_t *host;
	struct guest_mem mem;
	struct virtq vq;
	uint16_t avail_idx;     /* the driver's avail->idx */
} fx;

static struct virtq_chain ch;

static int setup(void **state)
{
	(void)state;
	memset(&fx, 0, sizeof(fx));
	fx.host = aligned_alloc(4096, HOST_SIZE);
	if (!fx.host)
		return -1;
	memset(fx.host, 0, HOST_SIZE);
	if (guest_mem_add_region(&fx.mem, 0, 2 * MiB, fx.host) ||
	    guest_mem_add_region(&fx.mem, 2 * MiB, 1 * MiB, fx.host + 2 * MiB) ||
	    guest_mem_add_region(&fx.mem, 4 * MiB, 1 * MiB, fx.host + 3 * MiB))
		return -1;
	fx.vq = (struct virtq){
		.size = QSZ,
		.desc_gpa = DESC,
		.avail_gpa = AVAIL,
		.used_gpa = USED,
		.mem = &fx.mem,
	};
	virtq_reset(&fx.vq);
	memset(&ch, 0, sizeof(ch));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	free(fx.host);
	fx.host = NULL;
	return 0;
}

/* ---- the fake driver ---------------------------------------------------- */

static uint8_t *g2h(uint64_t gpa, uint64_t len)
{
	uint8_t *p = guest_mem_ptr(&fx.mem, gpa, len);
	assert_non_null(p);
	return p;
}

static void w16(uint64_t gpa, uint16_t v) { memcpy(g2h(gpa, 2), &v, 2); }
static void w32(uint64_t gpa, uint32_t v) { memcpy(g2h(gpa, 4), &v, 4); }
static void w64(uint64_t gpa, uint64_t v) { memcpy(g2h(gpa, 8), &v, 8); }

static uint16_t r16(uint64_t gpa)
{
	uint16_t v;
	memcpy(&v, g2h(gpa, 2), 2);
	return v;
}

static uint32_t r32(uint64_t gpa)
{
	uint32_t v;
	memcpy(&v, g2h(gpa, 4), 4);
	return v;
}

static void desc_at(uint64_t table, unsigned i, uint64_t addr, uint32_t len,
		    uint16_t flags, uint16_t next)
{
	uint64_t d = table + 16ull * i;
	w64(d, addr);
	w32(d + 8, len);
	w16(d + 12, flags);
	w16(d + 14, next);
}

static void desc(unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	desc_at(DESC, i, addr, len, flags, next);
}

static void avail_set_idx(uint16_t idx)
{
	fx.avail_idx = idx;
	w16(AVAIL + 2, idx);
}

static void avail_add(uint16_t head)
{
	w16(AVAIL + 4 + 2ull * (fx.avail_idx % fx.vq.size), head);
	avail_set_idx((uint16_t)(fx.avail_idx + 1));
}

static void avail_flags(uint16_t f) { w16(AVAIL, f); }
static void used_event(uint16_t e) { w16(AVAIL + 4 + 2ull * fx.vq.size, e); }
static uint16_t used_flags(void) { return r16(USED); }
static uint16_t used_idx(void) { return r16(USED + 2); }
static uint32_t used_id(unsigned slot) { return r32(USED + 4 + 8ull * slot); }
static uint32_t used_len(unsigned slot) { return r32(USED + 8 + 8ull * slot); }
static uint16_t avail_event(void) { return r16(USED + 4 + 8ull * fx.vq.size); }

/* Starts both sides at the same free-running index. */
static void start_at(uint16_t idx)
{
	fx.vq.last_avail = idx;
	fx.vq.used_idx = idx;
	avail_set_idx(idx);
	w16(USED + 2, idx);
}

static void expect_bad_chain(uint16_t head)
{
	uint16_t before = fx.vq.last_avail;
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_BAD_CHAIN);
	assert_int_equal(ch.head, head);
	assert_int_equal(ch.nr_out + ch.nr_in, 0);
	assert_int_equal(fx.vq.last_avail, (uint16_t)(before + 1));
	/* The device can complete it with length 0. */
	virtq_push(&fx.vq, ch.head, 0);
	assert_int_equal(used_id((uint16_t)(fx.vq.used_idx - 1) % fx.vq.size), head);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_EMPTY);
}

static void expect_bad_ring(void)
{
	uint16_t before = fx.vq.last_avail;
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_BAD_RING);
	assert_int_equal(fx.vq.last_avail, before);
}

/* ---- basic chains ------------------------------------------------------- */

static void test_empty(void **state)
{
	(void)state;
	assert_int_equal(virtq_validate(&fx.vq), 0);
	assert_false(virtq_has_work(&fx.vq));
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_EMPTY);
	assert_int_equal(fx.vq.last_avail, 0);
}

static void test_single(void **state)
{
	(void)state;
	desc(3, DATA, 100, 0, 0);
	avail_add(3);
	assert_true(virtq_has_work(&fx.vq));
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.head, 3);
	assert_int_equal(ch.nr_out, 1);
	assert_int_equal(ch.nr_in, 0);
	assert_int_equal(ch.out_len, 100);
	assert_int_equal(ch.in_len, 0);
	assert_ptr_equal(ch.iov[0].base, fx.host + DATA);
	assert_int_equal(ch.iov[0].len, 100);
	assert_int_equal(fx.vq.last_avail, 1);
	assert_false(virtq_has_work(&fx.vq));
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_EMPTY);
}

/* Unpop gives back the newest chains, across the index wrap too. */
static void test_unpop(void **state)
{
	(void)state;
	start_at(0xfffe);
	for (unsigned i = 0; i < 3; i++) {
		desc(i, DATA + 0x100 * i, 64, VIRTQ_DESC_F_WRITE, 0);
		avail_add((uint16_t)i);
	}
	for (unsigned i = 0; i < 3; i++) {
		assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
		assert_int_equal(ch.head, i);
	}
	assert_int_equal(fx.vq.last_avail, 1);
	virtq_push(&fx.vq, 0, 10);
	virtq_unpop(&fx.vq, 2);
	assert_int_equal(fx.vq.last_avail, 0xffff);
	assert_true(virtq_has_work(&fx.vq));
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.head, 1);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.head, 2);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_EMPTY);
	assert_int_equal(used_idx(), 0xffff);
}

/* virtio-blk shape: header (readable), data (writable), status (writable),
 * in scrambled table order. */
static void test_blk_chain(void **state)
{
	(void)state;
	desc(7, DATA, 16, VIRTQ_DESC_F_NEXT, 2);
	desc(2, DATA + 0x1000, 4096, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 200);
	desc(200, 4 * MiB + 0x10, 1, VIRTQ_DESC_F_WRITE, 0);
	avail_add(7);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.head, 7);
	assert_int_equal(ch.nr_out, 1);
	assert_int_equal(ch.nr_in, 2);
	assert_int_equal(ch.out_len, 16);
	assert_int_equal(ch.in_len, 4097);
	assert_ptr_equal(ch.iov[0].base, fx.host + DATA);
	assert_ptr_equal(ch.iov[1].base, fx.host + DATA + 0x1000);
	assert_int_equal(ch.iov[1].len, 4096);
	/* Region C is backed at host offset 3 MiB. */
	assert_ptr_equal(ch.iov[2].base, fx.host + 3 * MiB + 0x10);
	assert_int_equal(ch.iov[2].len, 1);
}

static void test_only_writable(void **state)
{
	(void)state;
	desc(0, DATA, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	desc(1, DATA + 64, 64, VIRTQ_DESC_F_WRITE, 0);
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.nr_out, 0);
	assert_int_equal(ch.nr_in, 2);
	assert_int_equal(ch.in_len, 128);
	assert_ptr_equal(ch.iov[0].base, fx.host + DATA);
}

static void test_several_in_order(void **state)
{
	(void)state;
	for (unsigned i = 0; i < 5; i++) {
		desc(i, DATA + 0x100 * i, 8 + i, 0, 0);
		avail_add((uint16_t)(4 - i));
	}
	for (unsigned i = 0; i < 5; i++) {
		assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
		assert_int_equal(ch.head, 4 - i);
		assert_int_equal(ch.out_len, 8 + 4 - i);
	}
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_EMPTY);
}

/* Zero-length buffers are legal but carry no memory: skipped, and their
 * address is never translated. */
static void test_zero_length_skipped(void **state)
{
	(void)state;
	desc(0, UINT64_MAX, 0, VIRTQ_DESC_F_NEXT, 1);
	desc(1, DATA, 32, VIRTQ_DESC_F_NEXT, 2);
	desc(2, RAM_END + 12345, 0, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 3);
	desc(3, DATA + 32, 8, VIRTQ_DESC_F_WRITE, 0);
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.head, 0);
	assert_int_equal(ch.nr_out, 1);
	assert_int_equal(ch.nr_in, 1);
	assert_ptr_equal(ch.iov[0].base, fx.host + DATA);
	assert_ptr_equal(ch.iov[1].base, fx.host + DATA + 32);
	assert_int_equal(ch.out_len, 32);
	assert_int_equal(ch.in_len, 8);
}

/* A zero-length writable descriptor still ends the readable part. */
static void test_zero_length_ordering(void **state)
{
	(void)state;
	desc(0, DATA, 0, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
	desc(1, DATA, 32, 0, 0);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_large_lengths(void **state)
{
	(void)state;
	/* Two 1 MiB buffers: the sums are exact in 64 bits. */
	desc(0, 0, 1 * MiB, VIRTQ_DESC_F_NEXT, 1);
	desc(1, 1 * MiB, 1 * MiB, VIRTQ_DESC_F_NEXT, 2);
	desc(2, 2 * MiB, 1 * MiB, VIRTQ_DESC_F_WRITE, 0);
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.out_len, 2 * MiB);
	assert_int_equal(ch.in_len, 1 * MiB);
	/* 0xffffffff is not RAM-sized here, so it must be rejected, not wrapped. */
	desc(0, 0, UINT32_MAX, 0, 0);
	avail_add(0);
	expect_bad_chain(0);
}

/* ---- ring indices ------------------------------------------------------- */

static void test_wraparound(void **state)
{
	(void)state;
	start_at(65530);
	for (unsigned i = 0; i < 10; i++) {
		desc(i, DATA + 0x10 * i, 0x10, VIRTQ_DESC_F_WRITE, 0);
		avail_add((uint16_t)i);
	}
	assert_int_equal(fx.avail_idx, 4);
	for (unsigned i = 0; i < 10; i++) {
		assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
		assert_int_equal(ch.head, i);
		assert_ptr_equal(ch.iov[0].base, fx.host + DATA + 0x10 * i);
		virtq_push(&fx.vq, ch.head, 0x10 - i);
	}
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_EMPTY);
	assert_int_equal(fx.vq.last_avail, 4);
	assert_int_equal(used_idx(), 4);
	for (unsigned i = 0; i < 10; i++) {
		unsigned slot = (65530 + i) % QSZ;
		assert_int_equal(used_id(slot), i);
		assert_int_equal(used_len(slot), 0x10 - i);
	}
}

static void test_full_ring(void **state)
{
	(void)state;
	start_at(65000);
	for (unsigned i = 0; i < QSZ; i++) {
		desc(i, DATA, 1, 0, 0);
		avail_add((uint16_t)i);
	}
	/* Exactly `size` ahead is a full ring, not a corrupt one. */
	for (unsigned i = 0; i < QSZ; i++) {
		assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
		assert_int_equal(ch.head, i);
	}
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_EMPTY);
}

static void test_avail_too_far_ahead(void **state)
{
	(void)state;
	start_at(100);
	desc(0, DATA, 1, 0, 0);
	avail_set_idx(100 + QSZ + 1);
	expect_bad_ring();
	assert_true(virtq_has_work(&fx.vq));
	/* Behind us is just as corrupt: it reads as ~65535 ahead. */
	avail_set_idx(99);
	expect_bad_ring();
	/* Once the driver fixes it the ring works again. */
	avail_set_idx(100);
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
}

static void test_head_out_of_range(void **state)
{
	(void)state;
	avail_add(QSZ);
	expect_bad_ring();
	avail_set_idx(0);
	avail_add(0xffff);
	expect_bad_ring();
	avail_set_idx(0);
	desc(QSZ - 1, DATA, 4, 0, 0);
	avail_add(QSZ - 1);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.head, QSZ - 1);
}

static void test_small_queue(void **state)
{
	(void)state;
	fx.vq.size = 1;
	assert_int_equal(virtq_validate(&fx.vq), 0);
	desc(0, DATA, 4, 0, 0);
	for (unsigned i = 0; i < 3; i++) {
		avail_add(0);
		assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
		virtq_push(&fx.vq, 0, 4);
	}
	assert_int_equal(used_idx(), 3);
	avail_add(1);
	expect_bad_ring();
	/* Two ahead of a size-1 ring. */
	avail_set_idx(5);
	expect_bad_ring();
}

/* ---- chain walking ------------------------------------------------------ */

static void test_next_out_of_range(void **state)
{
	(void)state;
	desc(5, DATA, 8, VIRTQ_DESC_F_NEXT, QSZ);
	avail_add(5);
	expect_bad_chain(5);
	desc(5, DATA, 8, VIRTQ_DESC_F_NEXT, 6);
	desc(6, DATA, 8, VIRTQ_DESC_F_NEXT, 0xffff);
	avail_add(5);
	expect_bad_chain(5);
}

static void test_loops(void **state)
{
	(void)state;
	/* self-loop */
	desc(0, DATA, 8, VIRTQ_DESC_F_NEXT, 0);
	avail_add(0);
	expect_bad_chain(0);
	/* two-cycle */
	desc(1, DATA, 8, VIRTQ_DESC_F_NEXT, 2);
	desc(2, DATA, 8, VIRTQ_DESC_F_NEXT, 1);
	avail_add(1);
	expect_bad_chain(1);
	/* a cycle through the whole table, entered at its middle */
	for (unsigned i = 0; i < QSZ; i++)
		desc(i, DATA, 8, VIRTQ_DESC_F_NEXT, (uint16_t)((i + 1) % QSZ));
	avail_add(QSZ / 2);
	expect_bad_chain(QSZ / 2);
	/* a tail that joins a cycle */
	desc(10, DATA, 8, VIRTQ_DESC_F_NEXT, 11);
	desc(11, DATA, 8, VIRTQ_DESC_F_NEXT, 12);
	desc(12, DATA, 8, VIRTQ_DESC_F_NEXT, 11);
	avail_add(10);
	expect_bad_chain(10);
}

/* The longest legal chain uses every descriptor once. */
static void test_chain_uses_whole_table(void **state)
{
	(void)state;
	for (unsigned i = 0; i < QSZ; i++)
		desc(i, DATA + i, 1, i + 1 < QSZ ? VIRTQ_DESC_F_NEXT : 0, (uint16_t)(i + 1));
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.nr_out, QSZ);
	assert_int_equal(ch.out_len, QSZ);
	assert_ptr_equal(ch.iov[QSZ - 1].base, fx.host + DATA + QSZ - 1);
}

static void test_readable_after_writable(void **state)
{
	(void)state;
	desc(0, DATA, 8, VIRTQ_DESC_F_NEXT, 1);
	desc(1, DATA + 8, 8, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
	desc(2, DATA + 16, 8, 0, 0);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_buffer_addresses(void **state)
{
	(void)state;
	static const struct { uint64_t addr; uint32_t len; } bad[] = {
		{ RAM_END, 1 },                 /* past RAM */
		{ RAM_END - 8, 16 },            /* straddles the end of RAM */
		{ 2 * MiB - 8, 16 },            /* A -> B, contiguous on the host */
		{ 3 * MiB - 8, 16 },            /* B -> hole */
		{ HOLE_START + 0x100, 16 },     /* in the hole */
		{ 4 * MiB - 8, 16 },            /* hole -> C */
		{ UINT64_MAX - 8, 16 },         /* addr + len overflows */
		{ UINT64_MAX, 1 },
		{ 1ull << 63, 4096 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		desc(0, bad[i].addr, bad[i].len, 0, 0);
		avail_add(0);
		expect_bad_chain(0);
		/* Same buffer as the last, writable part of a longer chain. */
		desc(1, DATA, 8, VIRTQ_DESC_F_NEXT, 2);
		desc(2, bad[i].addr, bad[i].len, VIRTQ_DESC_F_WRITE, 0);
		avail_add(1);
		expect_bad_chain(1);
	}
	/* The last bytes of every region are fine. */
	desc(0, 2 * MiB - 16, 16, VIRTQ_DESC_F_NEXT, 1);
	desc(1, 3 * MiB - 16, 16, VIRTQ_DESC_F_NEXT, 2);
	desc(2, RAM_END - 16, 16, 0, 0);
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_ptr_equal(ch.iov[0].base, fx.host + 2 * MiB - 16);
	assert_ptr_equal(ch.iov[1].base, fx.host + 3 * MiB - 16);
	assert_ptr_equal(ch.iov[2].base, fx.host + 4 * MiB - 16);
}

/* ---- indirect descriptors ----------------------------------------------- */

static void build_blk_table(uint64_t table)
{
	desc_at(table, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 2);
	desc_at(table, 2, DATA + 0x1000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
	desc_at(table, 1, DATA + 0x2000, 1, VIRTQ_DESC_F_WRITE, 0);
}

static void check_blk_chain(void)
{
	assert_int_equal(ch.nr_out, 1);
	assert_int_equal(ch.nr_in, 2);
	assert_int_equal(ch.out_len, 16);
	assert_int_equal(ch.in_len, 513);
	assert_ptr_equal(ch.iov[0].base, fx.host + DATA);
	assert_ptr_equal(ch.iov[1].base, fx.host + DATA + 0x1000);
	assert_ptr_equal(ch.iov[2].base, fx.host + DATA + 0x2000);
}

static void test_indirect_ok(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	build_blk_table(IND);
	desc(9, IND, 48, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(9);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.head, 9);
	check_blk_chain();
	/* The spec has the device ignore WRITE on the indirect descriptor. */
	desc(9, IND, 48, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE, 0);
	avail_add(9);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	check_blk_chain();
	/* An unaligned table in another region is fine as well. */
	build_blk_table(4 * MiB + 8);
	desc(9, 4 * MiB + 8, 48, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(9);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	check_blk_chain();
}

/* Direct descriptors followed by one indirect one that ends the chain. */
static void test_indirect_after_direct(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	desc_at(IND, 0, DATA + 0x1000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
	desc_at(IND, 1, DATA + 0x2000, 1, VIRTQ_DESC_F_WRITE, 0);
	desc(0, DATA, 16, VIRTQ_DESC_F_NEXT, 1);
	desc(1, IND, 32, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	check_blk_chain();
	/* A readable indirect entry after a writable direct one is misordered. */
	desc_at(IND, 0, DATA + 0x1000, 512, 0, 0);
	desc(0, DATA, 16, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_indirect_bad_length(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	build_blk_table(IND);
	static const uint32_t lens[] = {
		0, 1, 15, 17, 24, 47, 49,
		(VIRTQ_MAX_INDIRECT + 1) * 16, UINT32_MAX & ~15u, UINT32_MAX,
	};
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		desc(4, IND, lens[i], VIRTQ_DESC_F_INDIRECT, 0);
		avail_add(4);
		expect_bad_chain(4);
	}
}

static void test_indirect_max_size(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	for (unsigned i = 0; i < VIRTQ_MAX_INDIRECT; i++)
		desc_at(IND, i, DATA + i, 1,
			i + 1 < VIRTQ_MAX_INDIRECT ? VIRTQ_DESC_F_NEXT : 0, (uint16_t)(i + 1));
	desc(0, IND, VIRTQ_MAX_INDIRECT * 16, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.nr_out, VIRTQ_MAX_INDIRECT);
	assert_int_equal(ch.out_len, VIRTQ_MAX_INDIRECT);
	/* One direct buffer in front exceeds VIRTQ_MAX_CHAIN buffers. */
	desc(1, DATA, 1, VIRTQ_DESC_F_NEXT, 0);
	avail_add(1);
	expect_bad_chain(1);
}

static void test_indirect_not_negotiated(void **state)
{
	(void)state;
	build_blk_table(IND);
	desc(0, IND, 48, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_indirect_nested(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	build_blk_table(IND);
	desc_at(IND + 0x1000, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 1);
	desc_at(IND + 0x1000, 1, IND, 48, VIRTQ_DESC_F_INDIRECT, 0);
	desc(0, IND + 0x1000, 32, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	expect_bad_chain(0);
	/* A table pointing at itself must not recurse either. */
	desc_at(IND + 0x1000, 0, IND + 0x1000, 32, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_indirect_with_next(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	build_blk_table(IND);
	desc(0, IND, 48, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
	desc(1, DATA, 1, VIRTQ_DESC_F_WRITE, 0);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_indirect_bad_inner_next(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	build_blk_table(IND);
	/* Entry 3 exists in memory but not in the 3-entry table. */
	desc_at(IND, 3, DATA, 1, VIRTQ_DESC_F_WRITE, 0);
	desc_at(IND, 1, DATA + 0x2000, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3);
	desc(0, IND, 48, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	expect_bad_chain(0);
	desc_at(IND, 1, DATA + 0x2000, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0xffff);
	avail_add(0);
	expect_bad_chain(0);
	/* The first hop already leaves the table, onto a well-formed entry
	 * that only the bound on `next` rejects. */
	desc_at(IND, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 3);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_indirect_loop(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	build_blk_table(IND);
	desc_at(IND, 1, DATA + 0x2000, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
	desc(0, IND, 48, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	expect_bad_chain(0);
	/* self-loop in a one-entry table */
	desc_at(IND, 0, DATA, 1, VIRTQ_DESC_F_NEXT, 0);
	desc(0, IND, 16, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_indirect_inner_ordering(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	desc_at(IND, 0, DATA, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
	desc_at(IND, 1, DATA + 8, 8, 0, 0);
	desc(0, IND, 32, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_indirect_bad_inner_buffer(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	build_blk_table(IND);
	desc_at(IND, 1, RAM_END - 1, 2, VIRTQ_DESC_F_WRITE, 0);
	desc(0, IND, 48, VIRTQ_DESC_F_INDIRECT, 0);
	avail_add(0);
	expect_bad_chain(0);
}

static void test_indirect_table_address(void **state)
{
	(void)state;
	fx.vq.indirect = true;
	static const struct { uint64_t addr; uint32_t len; } bad[] = {
		{ RAM_END, 16 },
		{ RAM_END - 16, 32 },
		{ 2 * MiB - 16, 32 },
		{ HOLE_START, 16 },
		{ UINT64_MAX - 8, 16 },
		{ UINT64_MAX - 15, 16 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		desc(0, bad[i].addr, bad[i].len, VIRTQ_DESC_F_INDIRECT, 0);
		avail_add(0);
		expect_bad_chain(0);
	}
}

/* ---- ring placement ----------------------------------------------------- */

static void test_validate(void **state)
{
	(void)state;
	struct virtq good = fx.vq;
	assert_int_equal(virtq_validate(&good), 0);

	static const uint16_t sizes_ok[] = { 1, 2, 64, 512, VIRTQ_MAX_SIZE };
	for (size_t i = 0; i < sizeof(sizes_ok) / sizeof(sizes_ok[0]); i++) {
		struct virtq q = good;
		q.size = sizes_ok[i];
		assert_int_equal(virtq_validate(&q), 0);
	}
	static const uint16_t sizes_bad[] = { 0, 3, 100, 255, 257, VIRTQ_MAX_SIZE * 2, 0xffff };
	for (size_t i = 0; i < sizeof(sizes_bad) / sizeof(sizes_bad[0]); i++) {
		struct virtq q = good;
		q.size = sizes_bad[i];
		assert_int_equal(virtq_validate(&q), -1);
	}

	struct virtq q;
	/* Per ring: outside RAM, straddling the end or two regions, in the
	 * hole, wrapping, misaligned. The "- 4" entries leave only the
	 * trailing used_event/avail_event field outside RAM. */
	static const uint64_t bad_desc[] = {
		RAM_END, RAM_END - 16 * QSZ + 16, 2 * MiB - 16 * 8, HOLE_START, UINT64_MAX - 15,
		DESC + 8, DESC + 1,
	};
	for (size_t i = 0; i < sizeof(bad_desc) / sizeof(bad_desc[0]); i++) {
		q = good;
		q.desc_gpa = bad_desc[i];
		assert_int_equal(virtq_validate(&q), -1);
		/* pop refuses the same rings */
		assert_int_equal(virtq_pop(&q, &ch), VIRTQ_BAD_RING);
	}
	static const uint64_t bad_avail[] = {
		RAM_END, RAM_END - 2 * QSZ, RAM_END - 2 * QSZ - 4, 2 * MiB - 16, HOLE_START, UINT64_MAX - 1,
		AVAIL + 1,
	};
	for (size_t i = 0; i < sizeof(bad_avail) / sizeof(bad_avail[0]); i++) {
		q = good;
		q.avail_gpa = bad_avail[i];
		assert_int_equal(virtq_validate(&q), -1);
		assert_int_equal(virtq_pop(&q, &ch), VIRTQ_BAD_RING);
		assert_false(virtq_has_work(&q));
	}
	static const uint64_t bad_used[] = {
		RAM_END, RAM_END - 8 * QSZ, RAM_END - 8 * QSZ - 4, 2 * MiB - 16, HOLE_START, UINT64_MAX - 3,
		USED + 2, USED + 1,
	};
	for (size_t i = 0; i < sizeof(bad_used) / sizeof(bad_used[0]); i++) {
		q = good;
		q.used_gpa = bad_used[i];
		assert_int_equal(virtq_validate(&q), -1);
		/* nothing to push into: must not touch memory or advance */
		virtq_push(&q, 0, 0);
		assert_int_equal(q.used_idx, 0);
	}

	/* Rings ending exactly at the end of a region still fit (the used
	 * ring's length is 2 mod 4, so it can only come within 2 bytes). */
	q = good;
	q.desc_gpa = RAM_END - 16 * QSZ;
	q.avail_gpa = 2 * MiB - (6 + 2 * QSZ);
	q.used_gpa = 3 * MiB - (6 + 8 * QSZ + 2);
	assert_int_equal(virtq_validate(&q), 0);

	q = good;
	q.mem = NULL;
	assert_int_equal(virtq_validate(&q), -1);
	assert_int_equal(virtq_pop(&q, &ch), VIRTQ_BAD_RING);
}

static void test_reset(void **state)
{
	(void)state;
	fx.vq.last_avail = 7;
	fx.vq.used_idx = 9;
	fx.vq.signalled_used = 3;
	fx.vq.signalled_valid = true;
	virtq_reset(&fx.vq);
	assert_int_equal(fx.vq.last_avail, 0);
	assert_int_equal(fx.vq.used_idx, 0);
	assert_int_equal(fx.vq.signalled_used, 0);
	assert_false(fx.vq.signalled_valid);
	assert_int_equal(fx.vq.size, QSZ);
	assert_int_equal(fx.vq.desc_gpa, DESC);
}

/* ---- used ring and notifications ---------------------------------------- */

static void test_push(void **state)
{
	(void)state;
	virtq_push(&fx.vq, 5, 100);
	assert_int_equal(fx.vq.used_idx, 1);
	assert_int_equal(used_idx(), 1);
	assert_int_equal(used_id(0), 5);
	assert_int_equal(used_len(0), 100);
	virtq_push(&fx.vq, 0, 0);
	virtq_push(&fx.vq, QSZ - 1, UINT32_MAX);
	assert_int_equal(used_idx(), 3);
	assert_int_equal(used_id(1), 0);
	assert_int_equal(used_len(1), 0);
	assert_int_equal(used_id(2), QSZ - 1);
	assert_int_equal(used_len(2), UINT32_MAX);
	/* Wrap of the slot: index QSZ lands in slot 0 again. */
	start_at(QSZ - 1);
	virtq_push(&fx.vq, 11, 1);
	virtq_push(&fx.vq, 12, 2);
	assert_int_equal(used_id(QSZ - 1), 11);
	assert_int_equal(used_id(0), 12);
	assert_int_equal(used_idx(), QSZ + 1);
}

static void test_notify_no_event_idx(void **state)
{
	(void)state;
	virtq_push(&fx.vq, 0, 0);
	assert_true(virtq_should_notify(&fx.vq));
	avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
	virtq_push(&fx.vq, 0, 0);
	assert_false(virtq_should_notify(&fx.vq));
	/* used_event means nothing without EVENT_IDX. */
	used_event(0x1234);
	avail_flags(0);
	virtq_push(&fx.vq, 0, 0);
	assert_true(virtq_should_notify(&fx.vq));
}

static void push_n(unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		virtq_push(&fx.vq, 0, 0);
}

static void test_notify_event_idx(void **state)
{
	(void)state;
	fx.vq.event_idx = true;
	/* NO_INTERRUPT is ignored with EVENT_IDX. */
	avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
	used_event(0x8000);

	/* Nothing known about the last interrupt: always notify once. */
	push_n(1);
	assert_true(virtq_should_notify(&fx.vq));
	assert_true(fx.vq.signalled_valid);
	assert_int_equal(fx.vq.signalled_used, 1);

	/* used_event = 1: wake me once the element at index 1 is used. */
	used_event(1);
	push_n(1);                      /* used 2 */
	assert_true(virtq_should_notify(&fx.vq));

	used_event(5);
	push_n(1);                      /* used 3 */
	assert_false(virtq_should_notify(&fx.vq));
	push_n(1);                      /* 4 */
	assert_false(virtq_should_notify(&fx.vq));
	push_n(1);                      /* 5 */
	assert_false(virtq_should_notify(&fx.vq));
	push_n(1);                      /* 6: crossed used_event */
	assert_true(virtq_should_notify(&fx.vq));
	push_n(1);                      /* 7: already told */
	assert_false(virtq_should_notify(&fx.vq));

	/* A batch that jumps over used_event still notifies. */
	used_event(8);
	push_n(5);                      /* 12 */
	assert_true(virtq_should_notify(&fx.vq));

	/* used_event behind the last interrupt: not again. */
	used_event(10);
	push_n(1);
	assert_false(virtq_should_notify(&fx.vq));

	/* Nothing pushed since: no second interrupt. */
	used_event(fx.vq.used_idx);
	assert_false(virtq_should_notify(&fx.vq));

	/* Across the 16-bit wrap. */
	start_at(65534);
	fx.vq.signalled_used = 65534;
	fx.vq.signalled_valid = true;
	used_event(65535);
	push_n(2);                      /* used 0 */
	assert_true(virtq_should_notify(&fx.vq));
	used_event(3);
	push_n(3);                      /* 3 */
	assert_false(virtq_should_notify(&fx.vq));
	push_n(1);                      /* 4 */
	assert_true(virtq_should_notify(&fx.vq));

	/* After a reset the bookkeeping is gone: notify. */
	virtq_reset(&fx.vq);
	start_at(0);
	used_event(0x4000);
	push_n(1);
	assert_true(virtq_should_notify(&fx.vq));
	push_n(1);
	assert_false(virtq_should_notify(&fx.vq));
}

static void test_enable_notify_flags(void **state)
{
	(void)state;
	assert_false(virtq_enable_notify(&fx.vq, false));
	assert_int_equal(used_flags(), VIRTQ_USED_F_NO_NOTIFY);
	assert_false(virtq_enable_notify(&fx.vq, true));
	assert_int_equal(used_flags(), 0);
	/* A buffer that arrived while kicks were off is reported. */
	virtq_enable_notify(&fx.vq, false);
	desc(0, DATA, 1, 0, 0);
	avail_add(0);
	assert_true(virtq_enable_notify(&fx.vq, true));
	assert_int_equal(used_flags(), 0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_false(virtq_enable_notify(&fx.vq, true));
	/* avail_event is left alone without EVENT_IDX. */
	assert_int_equal(avail_event(), 0);
}

static void test_enable_notify_event_idx(void **state)
{
	(void)state;
	fx.vq.event_idx = true;
	start_at(65533);
	desc(0, DATA, 1, 0, 0);
	assert_false(virtq_enable_notify(&fx.vq, true));
	assert_int_equal(avail_event(), 65533);
	for (unsigned i = 0; i < 4; i++) {
		avail_add(0);
		assert_true(virtq_has_work(&fx.vq));
		assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	}
	/* Disabling leaves the old avail_event behind. */
	assert_false(virtq_enable_notify(&fx.vq, false));
	assert_int_equal(avail_event(), 65533);
	avail_add(0);
	assert_true(virtq_enable_notify(&fx.vq, true));
	assert_int_equal(avail_event(), 1);
	/* The driver ignores used->flags with EVENT_IDX; we never set it. */
	assert_int_equal(used_flags(), 0);
}

/* ---- copy helpers ------------------------------------------------------- */

static void test_copy(void **state)
{
	(void)state;
	uint8_t *out = fx.host + DATA;
	for (unsigned i = 0; i < 16; i++)
		out[i] = (uint8_t)(0xa0 + i);
	/* out: 3 + 5 + 8 bytes (one zero-length in between), in: 4 + 4 bytes */
	desc(0, DATA, 3, VIRTQ_DESC_F_NEXT, 1);
	desc(1, DATA + 3, 5, VIRTQ_DESC_F_NEXT, 2);
	desc(2, DATA + 100, 0, VIRTQ_DESC_F_NEXT, 3);
	desc(3, DATA + 8, 8, VIRTQ_DESC_F_NEXT, 4);
	desc(4, DATA + 0x100, 4, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 5);
	desc(5, 4 * MiB, 4, VIRTQ_DESC_F_WRITE, 0);
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.nr_out, 3);
	assert_int_equal(ch.nr_in, 2);

	uint8_t buf[32];
	memset(buf, 0, sizeof(buf));
	assert_int_equal(virtq_copy_from_out(&ch, 0, buf, sizeof(buf)), 16);
	assert_memory_equal(buf, out, 16);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(virtq_copy_from_out(&ch, 2, buf, 7), 7);
	assert_memory_equal(buf, out + 2, 7);
	assert_int_equal(virtq_copy_from_out(&ch, 8, buf, 8), 8);
	assert_memory_equal(buf, out + 8, 8);
	assert_int_equal(virtq_copy_from_out(&ch, 15, buf, 8), 1);
	assert_int_equal(buf[0], 0xaf);
	assert_int_equal(virtq_copy_from_out(&ch, 16, buf, 8), 0);
	assert_int_equal(virtq_copy_from_out(&ch, SIZE_MAX, buf, 8), 0);
	assert_int_equal(virtq_copy_from_out(&ch, 0, buf, 0), 0);

	const uint8_t src[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
	assert_int_equal(virtq_copy_to_in(&ch, 3, src, 4), 4);
	assert_int_equal(fx.host[DATA + 0x100 + 2], 0);
	assert_int_equal(fx.host[DATA + 0x100 + 3], 1);
	assert_int_equal(fx.host[3 * MiB + 0], 2);
	assert_int_equal(fx.host[3 * MiB + 2], 4);
	assert_int_equal(fx.host[3 * MiB + 3], 0);
	assert_int_equal(virtq_copy_to_in(&ch, 0, src, sizeof(src)), 8);
	assert_memory_equal(fx.host + DATA + 0x100, src, 4);
	assert_memory_equal(fx.host + 3 * MiB, src + 4, 4);
	assert_int_equal(virtq_copy_to_in(&ch, 8, src, 1), 0);
	/* The readable buffers were not written. */
	assert_int_equal(out[0], 0xa0);

	/* A chain without writable buffers takes nothing. */
	desc(0, DATA, 3, 0, 0);
	avail_add(0);
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(virtq_copy_to_in(&ch, 0, src, 4), 0);
	assert_int_equal(virtq_copy_from_out(&ch, 0, buf, 4), 3);
}

/* ---- fuzz --------------------------------------------------------------- */

static uint64_t rng;

static uint64_t rnd(void)
{
	/* xorshift64*: deterministic for a given seed */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1Dull;
}

static uint64_t rnd_below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

/* Addresses near every interesting edge, and junk. */
static uint64_t rnd_addr(void)
{
	static const uint64_t edges[] = {
		0, 2 * MiB, 3 * MiB, 4 * MiB, RAM_END, DESC, AVAIL, USED, IND, UINT64_MAX,
	};
	switch (rnd_below(8)) {
	case 0:
		return edges[rnd_below(sizeof(edges) / sizeof(edges[0]))] + rnd_below(64) - 32;
	case 1:
		return rnd();
	case 2:
		return rnd_below(RAM_END);
	default:
		return DATA + rnd_below(MiB);
	}
}

static uint32_t rnd_len(void)
{
	switch (rnd_below(5)) {
	case 0:
		return 0;
	case 1:
		return (uint32_t)rnd();
	case 2:
		return (uint32_t)rnd_below(2 * MiB);
	default:
		return (uint32_t)rnd_below(4096);
	}
}

static void rnd_desc(uint64_t table, unsigned i, unsigned entries)
{
	if (rnd_below(8) == 0) {
		w64(table + 16ull * i, rnd());
		w64(table + 16ull * i + 8, rnd());
		return;
	}
	uint16_t flags = (uint16_t)rnd_below(4);
	if (rnd_below(4) == 0)
		flags |= VIRTQ_DESC_F_INDIRECT;
	uint64_t addr = rnd_addr();
	uint32_t len = rnd_len();
	if ((flags & VIRTQ_DESC_F_INDIRECT) && rnd_below(4)) {
		addr = IND + 16 * rnd_below(8);
		len = (uint32_t)(16 * rnd_below(80) + (rnd_below(8) ? 0 : rnd_below(16)));
	}
	desc_at(table, i, addr, len, flags, (uint16_t)rnd_below(entries + 2));
}

/* Is [p, p+len) inside one region's host memory? */
static bool in_ram(const void *p, uint64_t len)
{
	for (unsigned i = 0; i < fx.mem.nr_regions; i++) {
		const struct guest_mem_region *r = &fx.mem.regions[i];
		uintptr_t b = (uintptr_t)r->host;
		uintptr_t a = (uintptr_t)p;
		if (a >= b && a - b < r->size && len <= r->size - (a - b))
			return true;
	}
	return false;
}

static void check_chain(void)
{
	assert_true(ch.head < fx.vq.size);
	assert_true(ch.nr_out + ch.nr_in <= VIRTQ_MAX_CHAIN);
	uint64_t out = 0, in = 0;
	for (unsigned i = 0; i < ch.nr_out + ch.nr_in; i++) {
		assert_non_null(ch.iov[i].base);
		assert_true(ch.iov[i].len > 0);
		assert_true(in_ram(ch.iov[i].base, ch.iov[i].len));
		if (i < ch.nr_out)
			out += ch.iov[i].len;
		else
			in += ch.iov[i].len;
	}
	assert_int_equal(out, ch.out_len);
	assert_int_equal(in, ch.in_len);
}

static void test_fuzz(void **state)
{
	(void)state;
	rng = 0x6b657374726531ull; /* fixed seed: failures reproduce */
	static uint8_t scratch[8192];
	unsigned counts[4] = { 0 }, longest = 0;

	for (unsigned iter = 0; iter < 20000; iter++) {
		if (iter % 500 == 0) {
			fx.vq.size = (uint16_t)(1u << rnd_below(11));
			fx.vq.indirect = rnd_below(4) != 0;
			fx.vq.event_idx = rnd_below(2);
			/* Mostly a plausible table, sometimes pure noise. */
			for (unsigned i = 0; i < fx.vq.size; i++)
				rnd_desc(DESC, i, fx.vq.size);
			for (unsigned i = 0; i < 128; i++)
				rnd_desc(IND, i, 80);
		}
		struct virtq *vq = &fx.vq;
		unsigned sz = vq->size;

		for (unsigned k = rnd_below(6); k > 0; k--)
			rnd_desc(DESC, (unsigned)rnd_below(sz), sz);
		for (unsigned k = rnd_below(4); k > 0; k--)
			rnd_desc(IND, (unsigned)rnd_below(128), 80);
		for (unsigned k = rnd_below(6); k > 0; k--)
			w16(AVAIL + 4 + 2 * rnd_below(sz),
			    (uint16_t)(rnd_below(8) ? rnd_below(sz + 1) : rnd()));
		if (rnd_below(16) == 0)
			w16(AVAIL, (uint16_t)rnd());
		if (rnd_below(16) == 0)
			used_event((uint16_t)rnd());
		avail_set_idx((uint16_t)(rnd_below(32) == 0 ? rnd()
				: vq->last_avail + rnd_below(sz + 2)));

		/* Occasionally point a ring somewhere bad for one round. */
		uint64_t saved_desc = vq->desc_gpa, saved_avail = vq->avail_gpa, saved_used = vq->used_gpa;
		if (rnd_below(50) == 0) {
			switch (rnd_below(3)) {
			case 0: vq->desc_gpa = rnd_addr(); break;
			case 1: vq->avail_gpa = rnd_addr(); break;
			default: vq->used_gpa = rnd_addr(); break;
			}
		}

		for (unsigned n = 0; n < 8; n++) {
			uint16_t before = vq->last_avail;
			enum virtq_pop_result r = virtq_pop(vq, &ch);
			switch (r) {
			case VIRTQ_OK:
				check_chain();
				assert_int_equal(vq->last_avail, (uint16_t)(before + 1));
				virtq_copy_from_out(&ch, rnd_below(64), scratch,
						    rnd_below(sizeof(scratch)));
				/* Writing may scribble over the rings: fine, it
				 * is all guest memory and the next pop copes. */
				if (rnd_below(4) == 0)
					virtq_copy_to_in(&ch, rnd_below(64), scratch,
							 rnd_below(sizeof(scratch)));
				virtq_push(vq, ch.head, (uint32_t)ch.in_len);
				counts[0]++;
				if (ch.nr_out + ch.nr_in > longest)
					longest = ch.nr_out + ch.nr_in;
				break;
			case VIRTQ_BAD_CHAIN:
				assert_true(ch.head < vq->size);
				assert_int_equal(ch.nr_out + ch.nr_in, 0);
				assert_int_equal(vq->last_avail, (uint16_t)(before + 1));
				virtq_push(vq, ch.head, 0);
				counts[1]++;
				break;
			case VIRTQ_EMPTY:
				assert_int_equal(vq->last_avail, before);
				assert_false(virtq_has_work(vq) && virtq_validate(vq) == 0);
				counts[2]++;
				break;
			case VIRTQ_BAD_RING:
				assert_int_equal(vq->last_avail, before);
				counts[3]++;
				/* Usually the driver repairs the slot, or the
				 * same corruption would end every later round. */
				if (rnd_below(4))
					w16(AVAIL + 4 + 2ull * (vq->last_avail % sz),
					    (uint16_t)rnd_below(sz));
				break;
			default:
				fail_msg("unexpected pop result %d", r);
			}
			if (r == VIRTQ_EMPTY || r == VIRTQ_BAD_RING)
				break;
		}
		if (rnd_below(2))
			virtq_should_notify(vq);
		if (rnd_below(4) == 0)
			virtq_enable_notify(vq, rnd_below(2));
		(void)virtq_has_work(vq);

		vq->desc_gpa = saved_desc;
		vq->avail_gpa = saved_avail;
		vq->used_gpa = saved_used;
		/* A driver would reset a broken queue; resync so we go on. */
		if (rnd_below(64) == 0)
			virtq_reset(vq);
	}
	print_message("fuzz: %u ok (longest %u buffers), %u bad chain, %u empty, %u bad ring\n",
		      counts[0], longest, counts[1], counts[2], counts[3]);
	/* The generator must reach every outcome, or it tests too little. */
	for (unsigned i = 0; i < 4; i++)
		assert_true(counts[i] > 100);
}

/* Random but valid chains (scattered table order, direct prefixes, indirect
 * tables in random order, zero-length buffers with junk addresses) must
 * come back exactly as built. */
struct ebuf {
	uint64_t addr;
	uint32_t len;
	bool write;
};

struct echain {
	uint16_t head;
	unsigned n;
	struct ebuf b[32];
};

static struct ebuf rnd_ebuf(bool write)
{
	static const struct { uint64_t gpa, size; } regions[] = {
		{ DATA, MiB }, { 2 * MiB, MiB }, { 4 * MiB, MiB },
	};
	struct ebuf b = { .write = write };
	if (rnd_below(6) == 0) {
		b.addr = rnd();
		return b;
	}
	b.len = (uint32_t)(1 + rnd_below(4096));
	unsigned r = (unsigned)rnd_below(3);
	b.addr = regions[r].gpa + rnd_below(regions[r].size - b.len + 1);
	return b;
}

static void shuffle(uint16_t *a, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		a[i] = (uint16_t)i;
	for (unsigned i = n; i > 1; i--) {
		unsigned j = (unsigned)rnd_below(i);
		uint16_t t = a[i - 1];
		a[i - 1] = a[j];
		a[j] = t;
	}
}

static void build_chain(struct echain *e, const uint16_t *idx, uint64_t table)
{
	unsigned nout = (unsigned)rnd_below(e->n + 1);
	for (unsigned i = 0; i < e->n; i++)
		e->b[i] = rnd_ebuf(i >= nout);

	bool ind = rnd_below(3) == 0;
	unsigned direct = e->n;
	if (ind)
		direct = (unsigned)rnd_below((e->n - 1 < 3 ? e->n - 1 : 3) + 1);
	unsigned k = direct + ind;
	for (unsigned j = 0; j < direct; j++) {
		const struct ebuf *b = &e->b[j];
		desc(idx[j], b->addr, b->len,
		     (uint16_t)((b->write ? VIRTQ_DESC_F_WRITE : 0) | (j + 1 < k ? VIRTQ_DESC_F_NEXT : 0)),
		     j + 1 < k ? idx[j + 1] : (uint16_t)rnd());
	}
	if (ind) {
		unsigned m = e->n - direct;
		uint16_t order[32];
		shuffle(order, m);
		/* The walk of a table always starts at entry 0. */
		for (unsigned i = 1; i < m; i++) {
			if (order[i] == 0) {
				order[i] = order[0];
				order[0] = 0;
			}
		}
		for (unsigned i = 0; i < m; i++) {
			const struct ebuf *b = &e->b[direct + i];
			desc_at(table, order[i], b->addr, b->len,
				(uint16_t)((b->write ? VIRTQ_DESC_F_WRITE : 0) |
					   (i + 1 < m ? VIRTQ_DESC_F_NEXT : 0)),
				i + 1 < m ? order[i + 1] : (uint16_t)rnd());
		}
		desc(idx[direct], table, 16 * m,
		     (uint16_t)(VIRTQ_DESC_F_INDIRECT | (rnd_below(2) ? VIRTQ_DESC_F_WRITE : 0)),
		     (uint16_t)rnd());
	}
	e->head = idx[0];
}

static void match_built(const struct echain *e)
{
	assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_OK);
	assert_int_equal(ch.head, e->head);
	unsigned k = 0, nout = 0, nin = 0;
	uint64_t out = 0, in = 0;
	for (unsigned i = 0; i < e->n; i++) {
		const struct ebuf *b = &e->b[i];
		if (b->len == 0)
			continue;
		assert_true(k < ch.nr_out + ch.nr_in);
		assert_ptr_equal(ch.iov[k].base, guest_mem_ptr(&fx.mem, b->addr, b->len));
		assert_int_equal(ch.iov[k].len, b->len);
		k++;
		if (b->write) {
			nin++;
			in += b->len;
		} else {
			nout++;
			out += b->len;
		}
	}
	assert_int_equal(ch.nr_out, nout);
	assert_int_equal(ch.nr_in, nin);
	assert_int_equal(ch.out_len, out);
	assert_int_equal(ch.in_len, in);
}

static void test_fuzz_valid_chains(void **state)
{
	(void)state;
	rng = 0x76616c6964ull;
	fx.vq.indirect = true;
	static uint16_t perm[QSZ];
	static struct echain exp[8];

	for (unsigned iter = 0; iter < 3000; iter++) {
		start_at((uint16_t)rnd());
		shuffle(perm, QSZ);
		unsigned taken = 0;
		unsigned nchains = 1 + (unsigned)rnd_below(8);
		for (unsigned c = 0; c < nchains; c++) {
			/* at most 8 * 31 descriptors: the table always suffices */
			exp[c].n = 1 + (unsigned)rnd_below(30);
			build_chain(&exp[c], perm + taken, IND + 0x1000ull * c);
			taken += exp[c].n + 1;
			avail_add(exp[c].head);
		}
		for (unsigned c = 0; c < nchains; c++) {
			match_built(&exp[c]);
			virtq_push(&fx.vq, ch.head, (uint32_t)ch.in_len);
		}
		assert_int_equal(virtq_pop(&fx.vq, &ch), VIRTQ_EMPTY);
		assert_int_equal(used_idx(), fx.avail_idx);
	}
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_empty),
		T(test_single),
		T(test_blk_chain),
		T(test_unpop),
		T(test_only_writable),
		T(test_several_in_order),
		T(test_zero_length_skipped),
		T(test_zero_length_ordering),
		T(test_large_lengths),
		T(test_wraparound),
		T(test_full_ring),
		T(test_avail_too_far_ahead),
		T(test_head_out_of_range),
		T(test_small_queue),
		T(test_next_out_of_range),
		T(test_loops),
		T(test_chain_uses_whole_table),
		T(test_readable_after_writable),
		T(test_buffer_addresses),
		T(test_indirect_ok),
		T(test_indirect_after_direct),
		T(test_indirect_bad_length),
		T(test_indirect_max_size),
		T(test_indirect_not_negotiated),
		T(test_indirect_nested),
		T(test_indirect_with_next),
		T(test_indirect_bad_inner_next),
		T(test_indirect_loop),
		T(test_indirect_inner_ordering),
		T(test_indirect_bad_inner_buffer),
		T(test_indirect_table_address),
		T(test_validate),
		T(test_reset),
		T(test_push),
		T(test_notify_no_event_idx),
		T(test_notify_event_idx),
		T(test_enable_notify_flags),
		T(test_enable_notify_event_idx),
		T(test_copy),
		T(test_fuzz),
		T(test_fuzz_valid_chains),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
