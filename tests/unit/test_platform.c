/* E820 layout, the guest-memory helper and the I/O bus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "bus/io_bus.h"
#include "core/mem.h"
#include "x86/e820.h"
#include "x86/layout.h"

static void check_e820_sane(const struct e820_entry *e, int n)
{
	for (int i = 0; i < n; i++) {
		assert_true(e[i].size > 0);
		if (i > 0)
			assert_true(e[i - 1].addr + e[i - 1].size <= e[i].addr);
	}
}

static uint64_t e820_ram(const struct e820_entry *e, int n)
{
	uint64_t sum = 0;
	for (int i = 0; i < n; i++)
		if (e[i].type == E820_RAM)
			sum += e[i].size;
	return sum;
}

static void test_e820_small(void **state)
{
	(void)state;
	struct e820_entry e[E820_MAX_ENTRIES];
	int n = e820_build(256ULL << 20, e);
	check_e820_sane(e, n);
	assert_int_equal(e[0].addr, 0);
	assert_int_equal(e[0].size, 0x9fc00);
	assert_int_equal(e[0].type, E820_RAM);
	/* ACPI area is reserved; no RAM in the hole or above 4 GiB */
	int found_bios = 0;
	for (int i = 0; i < n; i++) {
		if (e[i].addr == 0xe0000) {
			assert_int_equal(e[i].type, E820_RESERVED);
			found_bios = 1;
		}
		if (e[i].type == E820_RAM)
			assert_true(e[i].addr + e[i].size <= (256ULL << 20));
	}
	assert_true(found_bios);
	/* all RAM but the 0x9fc00..0x100000 gap is usable */
	assert_int_equal(e820_ram(e, n), (256ULL << 20) - (0x100000 - 0x9fc00));
}

static void test_e820_above_4g(void **state)
{
	(void)state;
	struct e820_entry e[E820_MAX_ENTRIES];
	uint64_t ram = 5ULL << 30;
	int n = e820_build(ram, e);
	check_e820_sane(e, n);
	const struct e820_entry *last = &e[n - 1];
	assert_int_equal(last->addr, 1ULL << 32);
	assert_int_equal(last->size, ram - LAYOUT_HOLE_START);
	assert_int_equal(last->type, E820_RAM);
	/* nothing RAM between the hole start and 4 GiB */
	for (int i = 0; i < n; i++)
		if (e[i].type == E820_RAM && e[i].addr < (1ULL << 32))
			assert_true(e[i].addr + e[i].size <= LAYOUT_HOLE_START);
	assert_int_equal(e820_ram(e, n), ram - (0x100000 - 0x9fc00));
}

static void test_e820_exactly_at_hole(void **state)
{
	(void)state;
	struct e820_entry e[E820_MAX_ENTRIES];
	int n = e820_build(LAYOUT_HOLE_START, e);
	check_e820_sane(e, n);
	for (int i = 0; i < n; i++)
		assert_true(e[i].addr < (1ULL << 32)); /* no zero-size high entry */
}

static void test_guest_mem_bounds(void **state)
{
	(void)state;
	struct guest_mem m;
	memset(&m, 0, sizeof(m));
	uint8_t *low = calloc(1, 0x10000), *high = calloc(1, 0x1000);
	assert_int_equal(guest_mem_add_region(&m, 0, 0x10000, low), 0);
	assert_int_equal(guest_mem_add_region(&m, 1ULL << 32, 0x1000, high), 0);
	assert_int_equal(guest_mem_add_region(&m, 0x8000, 0x10000, low), -1); /* overlap */
	assert_int_equal(guest_mem_add_region(&m, UINT64_MAX - 10, 100, low), -1); /* wraps */
	assert_int_equal(guest_mem_add_region(&m, 0x20000, 0, low), -1);
	assert_int_equal(m.ram_size, 0x11000);

	assert_ptr_equal(guest_mem_ptr(&m, 0, 1), low);
	assert_ptr_equal(guest_mem_ptr(&m, 0xffff, 1), low + 0xffff);
	assert_ptr_equal(guest_mem_ptr(&m, 0, 0x10000), low);
	assert_null(guest_mem_ptr(&m, 0, 0x10001));       /* one past the end */
	assert_null(guest_mem_ptr(&m, 0xffff, 2));         /* straddles the end */
	assert_null(guest_mem_ptr(&m, 0x10000, 1));        /* hole */
	assert_null(guest_mem_ptr(&m, 0, 0));              /* empty is not a range */
	assert_null(guest_mem_ptr(&m, 0x8000, UINT64_MAX)); /* length overflow */
	assert_null(guest_mem_ptr(&m, UINT64_MAX, 1));
	assert_null(guest_mem_ptr(&m, UINT64_MAX, UINT64_MAX));
	assert_ptr_equal(guest_mem_ptr(&m, (1ULL << 32) + 0xfff, 1), high + 0xfff);
	assert_null(guest_mem_ptr(&m, (1ULL << 32) - 1, 2)); /* across regions */
	assert_null(guest_mem_ptr(&m, (1ULL << 32) + 0x800, 0x801));

	uint32_t v = 0x12345678;
	assert_int_equal(guest_mem_write(&m, 0x100, &v, 4), 0);
	uint32_t r = 0;
	assert_int_equal(guest_mem_read(&m, 0x100, &r, 4), 0);
	assert_int_equal(r, v);
	assert_int_equal(guest_mem_write(&m, 0xfffe, &v, 4), -1);
	assert_int_equal(low[0xfffe], 0); /* nothing partially written */
	free(low);
	free(high);
}

/* Guest RAM starts 2 MiB-aligned (huge pages can back it only so), and
 * both regions, below the hole and above 4 GiB, map into it. */
static void test_guest_mem_alloc_aligned(void **state)
{
	(void)state;
	for (int i = 0; i < 4; i++) {
		struct guest_mem m;
		uint64_t size = (64ULL << 20) + (uint64_t)i * 4096 * 256, hole = 48ULL << 20;
		assert_int_equal(guest_mem_alloc(&m, size, hole), 0);
		assert_int_equal((uintptr_t)m.mapping & ((2u << 20) - 1), 0);
		assert_int_equal(m.mapping_size, size);
		uint8_t *lo = guest_mem_ptr(&m, 0, hole), *hi = guest_mem_ptr(&m, 1ULL << 32, size - hole);
		assert_ptr_equal(lo, m.mapping);
		assert_ptr_equal(hi, (uint8_t *)m.mapping + hole);
		lo[0] = 1;
		hi[size - hole - 1] = 2; /* the last byte is mapped */
		assert_null(guest_mem_ptr(&m, (1ULL << 32) + size - hole, 1));
		guest_mem_free(&m);
	}
}

struct fake_dev {
	uint64_t last_off;
	unsigned reads, writes;
};

static void fd_read(void *dev, uint64_t off, void *data, unsigned len)
{
	struct fake_dev *d = dev;
	d->last_off = off;
	d->reads++;
	memset(data, 0x42, len);
}

static void fd_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	struct fake_dev *d = dev;
	(void)data;
	(void)len;
	d->last_off = off;
	d->writes++;
}

static const struct io_ops fd_ops = { fd_read, fd_write };

static void test_io_bus(void **state)
{
	(void)state;
	struct io_bus b;
	io_bus_init(&b, "test");
	struct fake_dev a = { 0 }, c = { 0 };
	assert_int_equal(io_bus_register(&b, 0x100, 8, &fd_ops, &a, "a"), 0);
	assert_int_equal(io_bus_register(&b, 0x200, 0x10, &fd_ops, &c, "c"), 0);
	assert_int_equal(io_bus_register(&b, 0x104, 8, &fd_ops, &c, "x"), -1);  /* overlaps a */
	assert_int_equal(io_bus_register(&b, 0xf8, 9, &fd_ops, &c, "x"), -1);   /* overlaps a's start */
	assert_int_equal(io_bus_register(&b, 0x1f0, 0x20, &fd_ops, &c, "x"), -1);
	assert_int_equal(io_bus_register(&b, 0x300, 0, &fd_ops, &c, "x"), -1);
	assert_int_equal(io_bus_register(&b, UINT64_MAX, 2, &fd_ops, &c, "x"), -1);

	uint32_t v = 0;
	assert_true(io_bus_access(&b, 0x104, &v, 4, false));
	assert_int_equal(a.last_off, 4);
	assert_int_equal(v, 0x42424242);
	assert_true(io_bus_access(&b, 0x20f, &v, 1, true));
	assert_int_equal(c.last_off, 0xf);

	/* unclaimed: all-ones, counted */
	v = 0;
	assert_false(io_bus_access(&b, 0x180, &v, 4, false));
	assert_int_equal(v, 0xffffffff);
	assert_false(io_bus_access(&b, 0x180, &v, 4, true));
	/* an access running past the end of a range is unclaimed too */
	uint64_t q = 0;
	assert_false(io_bus_access(&b, 0x106, &q, 8, false));
	assert_int_equal(q, UINT64_MAX);
	assert_int_equal(atomic_load(&b.unclaimed_reads), 2);
	assert_int_equal(atomic_load(&b.unclaimed_writes), 1);

	assert_int_equal(io_bus_unregister(&b, 0x100), 0);
	assert_int_equal(io_bus_unregister(&b, 0x100), -1);
	assert_false(io_bus_access(&b, 0x100, &v, 1, false));
	io_bus_destroy(&b);
}

static void test_io_bus_many(void **state)
{
	(void)state;
	struct io_bus b;
	io_bus_init(&b, "test");
	struct fake_dev d[100];
	memset(d, 0, sizeof(d));
	/* registered in reverse order: the bus keeps them sorted */
	for (int i = 99; i >= 0; i--)
		assert_int_equal(io_bus_register(&b, (uint64_t)i * 0x10, 8, &fd_ops, &d[i], "d"), 0);
	for (int i = 0; i < 100; i++) {
		uint8_t v;
		assert_true(io_bus_access(&b, (uint64_t)i * 0x10 + 7, &v, 1, false));
		assert_int_equal(d[i].reads, 1);
		assert_false(io_bus_access(&b, (uint64_t)i * 0x10 + 8, &v, 1, false));
	}
	io_bus_destroy(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_e820_small),
		cmocka_unit_test(test_e820_above_4g),
		cmocka_unit_test(test_e820_exactly_at_hole),
		cmocka_unit_test(test_guest_mem_bounds),
		cmocka_unit_test(test_guest_mem_alloc_aligned),
		cmocka_unit_test(test_io_bus),
		cmocka_unit_test(test_io_bus_many),
	};
	return cmocka_run_group_tests_name("platform", tests, NULL, NULL);
}
