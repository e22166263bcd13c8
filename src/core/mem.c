#include "core/mem.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

int guest_mem_add_region(struct guest_mem *m, uint64_t gpa, uint64_t size, void *host)
{
	if (m->nr_regions >= GUEST_MEM_MAX_REGIONS || size == 0 || gpa + size < gpa)
		return -1;
	for (unsigned i = 0; i < m->nr_regions; i++) {
		const struct guest_mem_region *r = &m->regions[i];
		if (gpa < r->gpa + r->size && r->gpa < gpa + size)
			return -1;
	}
	m->regions[m->nr_regions++] = (struct guest_mem_region){ gpa, size, host };
	m->ram_size += size;
	return 0;
}

void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	if (len == 0)
		return NULL;
	for (unsigned i = 0; i < m->nr_regions; i++) {
		const struct guest_mem_region *r = &m->regions[i];
		if (gpa < r->gpa)
			continue;
		uint64_t off = gpa - r->gpa;
		/* off < size and len <= size - off: no addition, no overflow */
		if (off < r->size && len <= r->size - off)
			return r->host + off;
	}
	return NULL;
}

int guest_mem_read(const struct guest_mem *m, uint64_t gpa, void *dst, size_t len)
{
	const void *p = guest_mem_ptr(m, gpa, len);
	if (!p)
		return -1;
	memcpy(dst, p, len);
	return 0;
}

int guest_mem_write(const struct guest_mem *m, uint64_t gpa, const void *src, size_t len)
{
	void *p = guest_mem_ptr(m, gpa, len);
	if (!p)
		return -1;
	memcpy(p, src, len);
	return 0;
}

/* Transparent huge pages back only 2 MiB-aligned stretches of a mapping. */
#define GUEST_MEM_ALIGN (2ULL << 20)

int guest_mem_alloc(struct guest_mem *m, uint64_t ram_size, uint64_t hole_start)
{
	memset(m, 0, sizeof(*m));
	/* Map 2 MiB more, then trim to a 2 MiB-aligned start: mmap returns
	 * page-aligned addresses, and with guest RAM off by a few pages no huge
	 * page can back it, so KVM maps every guest page as 4 KiB (QEMU
	 * aligns its RAM the same way). Seen with nested KVM: the guest
	 * kernel's memmap set-up took 1.9 s where QEMU's took 0.04 s. */
	size_t span = ram_size + GUEST_MEM_ALIGN;
	uint8_t *raw = mmap(NULL, span, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == MAP_FAILED)
		return -errno;
	uint8_t *p = (uint8_t *)(((uintptr_t)raw + GUEST_MEM_ALIGN - 1) & ~(uintptr_t)(GUEST_MEM_ALIGN - 1));
	size_t head = (size_t)(p - raw), tail = span - head - ram_size;
	if (head)
		munmap(raw, head);
	if (tail)
		munmap(p + ram_size, tail);
	/* Huge pages cut the host's page-table work (and KVM's: one NPT/EPT
	 * entry per 2 MiB); a hint only, so failure is fine. */
	madvise(p, ram_size, MADV_HUGEPAGE);
	m->mapping = p;
	m->mapping_size = ram_size;
	uint64_t low = ram_size < hole_start ? ram_size : hole_start;
	guest_mem_add_region(m, 0, low, p);
	if (ram_size > low)
		guest_mem_add_region(m, 1ULL << 32, ram_size - low, (uint8_t *)p + low);
	return 0;
}

void guest_mem_free(struct guest_mem *m)
{
	if (m->mapping)
		munmap(m->mapping, m->mapping_size);
	memset(m, 0, sizeof(*m));
}
