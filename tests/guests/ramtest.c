/* Every RAM word the memmap reports (outside the image and low 1 MiB). */
#include "rt.h"

#define FOUR_GB (4ull << 30)

static uint64_t pattern(uint64_t a)
{
	a *= 0x9e3779b97f4a7c15ull;     /* distinct per address: catches aliasing */
	return a ^ a >> 29;
}

struct range {
	uint64_t lo, hi;
};

/* Splits RAM into testable ranges: low 1 MiB holds firmware tables, and
 * the image holds our code, page tables and stacks. */
static size_t ranges(struct range *out, size_t max)
{
	const struct rt_mem_region *m;
	size_t n = rt_memmap(&m), k = 0;
	uint64_t img_lo = (uint64_t)__image_start, img_hi = (uint64_t)__image_end;
	uint64_t limit = rt_mapped_gb << 30;

	for (size_t i = 0; i < n; i++) {
		if (m[i].type != E820_RAM || !m[i].size)
			continue;
		uint64_t lo = m[i].addr < 0x100000 ? 0x100000 : m[i].addr;
		uint64_t hi = m[i].addr + m[i].size;

		if (hi > limit)
			hi = limit;
		lo = (lo + 63) & ~63ull;
		hi &= ~63ull;
		if (lo >= hi)
			continue;
		if (lo < img_hi && img_lo < hi) {
			if (lo < img_lo && k < max)
				out[k++] = (struct range){ lo, img_lo };
			lo = img_hi;
			if (lo >= hi)
				continue;
		}
		if (k < max)
			out[k++] = (struct range){ lo, hi };
	}
	return k;
}

int main(void)
{
	struct range r[64];
	size_t n = ranges(r, ARRAY_SIZE(r));
	uint64_t stride = 8, total = 0, high = 0, bad = 0;

	cmdline_u64("stride", &stride);
	if (stride < 8 || (stride & (stride - 1))) {
		kprintf("ramtest: bad stride %lu\n", stride);
		return 1;
	}
	if (rt_memmap_ram_total() > (rt_mapped_gb << 30))
		kprintf("ramtest: note: RAM above %lu GiB is not mapped and not tested\n", rt_mapped_gb);

	uint64_t t0 = rdtsc();
	for (size_t i = 0; i < n; i++) {
		kprintf("ramtest: write 0x%lx-0x%lx\n", r[i].lo, r[i].hi - 1);
		for (uint64_t a = r[i].lo; a < r[i].hi; a += stride)
			*(volatile uint64_t *)a = pattern(a);
	}
	uint64_t t1 = rdtsc();
	for (size_t i = 0; i < n; i++) {
		for (uint64_t a = r[i].lo; a < r[i].hi; a += stride) {
			uint64_t v = *(volatile uint64_t *)a;

			if (v != pattern(a) && bad++ < 8)
				kprintf("ramtest: mismatch at 0x%lx: 0x%lx != 0x%lx\n", a, v, pattern(a));
		}
		total += r[i].hi - r[i].lo;
		if (r[i].hi > FOUR_GB)
			high += r[i].hi - (r[i].lo > FOUR_GB ? r[i].lo : FOUR_GB);
	}
	uint64_t t2 = rdtsc();

	kprintf("ramtest: stride %lu: write %lu ms, verify %lu ms\n", stride,
		(t1 - t0) / tsc_khz(), (t2 - t1) / tsc_khz());
	if (bad) {
		kprintf("ramtest: FAIL: %lu mismatches\n", bad);
		return 1;
	}
	kprintf("ramtest: %lu MiB verified (%lu MiB above 4 GiB)\n", total >> 20, high >> 20);
	kprintf("ramtest: PASS\n");
	return 0;
}
