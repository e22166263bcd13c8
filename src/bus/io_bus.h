/* An address space of device ranges: one for port I/O, one for MMIO.
 *
 * Lookups run on vCPU threads concurrently; registration takes the write
 * side of a rwlock so BARs can move while the guest runs. Handlers are
 * called after the lock is dropped (so a handler may itself register or
 * unregister ranges); devices must therefore stay alive until the vCPUs are
 * stopped, which the VM builder guarantees. Accesses no device
 * claims read as all-ones and drop writes; they are counted and the first
 * one is logged. */
#ifndef KESTREL_IO_BUS_H
#define KESTREL_IO_BUS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* A device's handlers. `offset` is relative to the registered base; `len` is
 * 1, 2, 4 or 8. Handlers must accept any offset/len inside their range: the
 * guest chooses them. */
struct io_ops {
	void (*read)(void *dev, uint64_t offset, void *data, unsigned len);
	void (*write)(void *dev, uint64_t offset, const void *data, unsigned len);
};

struct io_range {
	uint64_t base;
	uint64_t len;
	const struct io_ops *ops;
	void *dev;
	const char *name;
};

struct io_bus {
	const char *name; /* "pio" or "mmio", for messages */
	pthread_rwlock_t lock;
	struct io_range *ranges; /* sorted by base, non-overlapping */
	unsigned nr, cap;
	atomic_ulong unclaimed_reads, unclaimed_writes;
	atomic_bool unclaimed_logged;
};

void io_bus_init(struct io_bus *bus, const char *name);
void io_bus_destroy(struct io_bus *bus);

/* Claims [base, base+len) for a device. Returns 0, or -1 if the range is
 * empty, wraps, or overlaps a claimed range (a host-side bug or a bad BAR). */
int io_bus_register(struct io_bus *bus, uint64_t base, uint64_t len,
		    const struct io_ops *ops, void *dev, const char *name);
/* Releases the range registered at exactly `base`. Returns 0 or -1. */
int io_bus_unregister(struct io_bus *bus, uint64_t base);

/* Dispatches one access. An access that starts in a range but runs past its
 * end is treated as unclaimed. Returns true if a device handled it. */
bool io_bus_access(struct io_bus *bus, uint64_t addr, void *data, unsigned len, bool is_write);

#endif
