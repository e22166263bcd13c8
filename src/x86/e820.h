/* The guest's E820 memory map, shared by the bzImage zero page, the PVH
 * memmap and the tests. */
#ifndef KESTREL_E820_H
#define KESTREL_E820_H

#include <stdint.h>

#include "boot/bootparam.h"

#define E820_MAX_ENTRIES 16

/* Fills `out` (E820_MAX_ENTRIES slots) for `ram_size` bytes of RAM laid out
 * as guest_mem_alloc() does (below the hole, then from 4 GiB). Returns the
 * number of entries, sorted and non-overlapping. */
int e820_build(uint64_t ram_size, struct e820_entry *out);

#endif
