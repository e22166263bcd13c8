/* Interrupt routing from GSIs to the in-kernel PIC/IOAPIC and to MSIs, and
 * irqfds bound to GSIs. The table is one per VM (KVM replaces it whole on
 * every KVM_SET_GSI_ROUTING), kept in struct irq_router. */
#ifndef KESTREL_X86_IRQ_H
#define KESTREL_X86_IRQ_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct vm;

#define X86_IOAPIC_PINS   24
#define IRQ_MSI_GSI_BASE  X86_IOAPIC_PINS
#define IRQ_MAX_ROUTES    1024

struct irq_route {
	uint32_t gsi;
	bool msi;
	bool in_use;
	/* irqchip route */
	uint32_t chip, pin;
	/* MSI route */
	uint64_t msi_addr;
	uint32_t msi_data;
};

struct irq_router {
	pthread_mutex_t lock;
	struct irq_route routes[IRQ_MAX_ROUTES];
	unsigned nr;
	uint32_t next_msi_gsi;
};

/* Creates the router on `vm` and installs the PC routing: ISA IRQs 0-15 on
 * the 8259 pair, GSI n on IOAPIC pin n, except the PIT's IRQ 0 which is
 * wired to pin 2 (the MADT's override says the same). Returns 0 or -errno. */
int x86_irq_routing_init(struct vm *vm);
void x86_irq_routing_destroy(struct vm *vm);

/* Allocates a GSI for an MSI (initially address 0/data 0: a route that the
 * guest programs later). Returns the GSI, or -ENOSPC. */
int irq_msi_alloc(struct vm *vm);
/* Points an allocated MSI GSI at (addr, data) and commits the table.
 * Returns 0 or -errno. Thread-safe. */
int irq_msi_set(struct vm *vm, uint32_t gsi, uint64_t addr, uint32_t data);

/* Binds eventfd `fd` to `gsi` (KVM_IRQFD): a write to fd injects the
 * interrupt without a VM exit. Returns 0 or -errno. */
int irq_irqfd_assign(struct vm *vm, int fd, uint32_t gsi);
void irq_irqfd_deassign(struct vm *vm, int fd, uint32_t gsi);

#endif
