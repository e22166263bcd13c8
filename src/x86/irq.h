/* Interrupt routing from GSIs to the in-kernel PIC and IOAPIC. */
#ifndef KESTREL_X86_IRQ_H
#define KESTREL_X86_IRQ_H

struct vm;

#define X86_IOAPIC_PINS 24

/* Installs the PC routing: ISA IRQs 0-15 on the 8259 pair, and GSI n on
 * IOAPIC pin n except the PIT's IRQ 0, which is wired to pin 2 (the MADT's
 * interrupt source override says the same). Returns 0 or -errno. */
int x86_irq_routing_init(struct vm *vm);

#endif
