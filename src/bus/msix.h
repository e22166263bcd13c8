/* MSI-X for a PCI device: the capability, the vector table and PBA (in a
 * BAR of their own), and delivery. Each vector owns an eventfd bound by
 * KVM_IRQFD to a GSI whose MSI route follows the table entry, so an
 * unmasked interrupt reaches the guest without an exit. Masking (per
 * vector or the whole function) is honoured in userspace: a masked vector
 * sets its PBA bit and fires when unmasked. */
#ifndef KESTREL_MSIX_H
#define KESTREL_MSIX_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "bus/io_bus.h"

struct vm;
struct pci_device;

#define MSIX_MAX_VECTORS 128
#define MSIX_TABLE_OFFSET 0x0
#define MSIX_PBA_OFFSET   0x800
#define MSIX_BAR_SIZE     0x1000

struct msix_entry {
	uint32_t addr_lo, addr_hi, data, ctrl;
};

struct msix {
	struct vm *vm;                 /* NULL in unit tests: no KVM routes */
	struct pci_device *pci;
	unsigned cap;                  /* config offset of the capability */
	unsigned nr;
	pthread_mutex_t lock;
	struct msix_entry table[MSIX_MAX_VECTORS];
	uint64_t pba[MSIX_MAX_VECTORS / 64];
	int gsi[MSIX_MAX_VECTORS];
	int efd[MSIX_MAX_VECTORS];
	uint64_t fired, pended;        /* statistics */
};

/* Adds the capability to `d` (table and PBA in BAR `bar`, which the caller
 * declares with msix_io_ops, size MSIX_BAR_SIZE) and sets up `nr` vectors:
 * eventfds, and with a vm, GSIs and irqfds. Returns 0 or -errno. */
int msix_init(struct msix *m, struct vm *vm, struct pci_device *d, unsigned nr, int bar);
void msix_destroy(struct msix *m);

/* The BAR's handlers (dev = the struct msix). */
extern const struct io_ops msix_io_ops;

/* Call from the device's config_written hook: reacts to Enable and
 * Function Mask changes (firing pending vectors that became unmasked). */
void msix_config_written(struct msix *m, unsigned off, unsigned len);

/* True when the guest has enabled MSI-X (then INTx must stay quiet). */
bool msix_enabled(struct msix *m);

/* Raises `vector`, from any thread. Returns false if the vector is out of
 * range or MSI-X is disabled (the caller may then use INTx). */
bool msix_notify(struct msix *m, unsigned vector);

#endif
