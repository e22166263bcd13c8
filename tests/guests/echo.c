/* Serial input end to end: COM1 receive interrupts (IRQ 4 through the
 * IOAPIC) wake the guest, which echoes each byte upper-cased; '~' ends the
 * run with PASS if at least one receive interrupt was taken. */
#include "rt.h"

#define COM1 0x3f8
#define ECHO_VECTOR 0x34

static volatile uint64_t rx_irqs;

static void com1_irq(unsigned vector)
{
	(void)vector;
	rx_irqs++;
}

int main(void)
{
	uint32_t ioapic, gsi_base;
	uint16_t flags = 0;
	if (!madt_ioapic(&ioapic, &gsi_base))
		return 1;
	uint32_t gsi = madt_isa_gsi(4, &flags);
	outb(0x21, 0xff); /* IRQ 4 through the IOAPIC only */
	outb(0xa1, 0xff);
	rt_irq_register(ECHO_VECTOR, com1_irq);
	lapic_enable();
	ioapic_route(ioapic, gsi - gsi_base, ECHO_VECTOR, lapic_id(), flags);
	outb(COM1 + 2, 0x07);  /* FIFO on, cleared */
	outb(COM1 + 4, 0x0b);  /* DTR, RTS, OUT2 (IRQ gate) */
	outb(COM1 + 1, 0x01);  /* receive interrupt */
	irq_enable();
	kprintf("echo: ready\n");
	for (;;) {
		while (!(inb(COM1 + 5) & 0x01))
			cpu_relax();
		char c = (char)inb(COM1);
		if (c == '~')
			break;
		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		serial_putc(c);
	}
	kprintf("\necho: done, %lu receive interrupts\n", rx_irqs);
	return rx_irqs > 0 ? 0 : 1;
}
