/* Guest physical memory: a few RAM regions, each backed by host memory.
 *
 * Every guest-supplied address and length goes through guest_mem_ptr(),
 * the one length-checked, overflow-safe translation in Kestrel. */
#ifndef KESTREL_MEM_H
#define KESTREL_MEM_H

#include <stddef.h>
#include <stdint.h>

#define GUEST_MEM_MAX_REGIONS 4

struct guest_mem_region {
	uint64_t gpa;
	uint64_t size;
	uint8_t *host;
};

struct guest_mem {
	struct guest_mem_region regions[GUEST_MEM_MAX_REGIONS];
	unsigned nr_regions;
	uint64_t ram_size;     /* sum of region sizes */
	void *mapping;         /* the one host mapping behind all regions, or NULL */
	size_t mapping_size;
};

/* Adds a RAM region backed by `host` (owned by the caller). Regions must not
 * overlap. Returns 0, or -1 when the table is full, size is 0, the range
 * wraps, or it overlaps an existing region. */
int guest_mem_add_region(struct guest_mem *m, uint64_t gpa, uint64_t size, void *host);

/* Returns the host address of guest range [gpa, gpa+len), or NULL unless
 * the whole range (len >= 1) lies inside one RAM region. Never overflows. */
void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len);

/* Copy helpers over guest_mem_ptr(): return 0, or -1 (nothing copied) when
 * the range is not entirely RAM. */
int guest_mem_read(const struct guest_mem *m, uint64_t gpa, void *dst, size_t len);
int guest_mem_write(const struct guest_mem *m, uint64_t gpa, const void *src, size_t len);

/* Allocates `ram_size` bytes of anonymous host memory and lays it out as
 * guest RAM below `hole_start`, the rest from 4 GiB up (the PCI hole stays
 * unbacked). Returns 0 or -errno. */
int guest_mem_alloc(struct guest_mem *m, uint64_t ram_size, uint64_t hole_start);
void guest_mem_free(struct guest_mem *m);

#endif
