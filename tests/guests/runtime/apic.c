/* xAPIC and IOAPIC access; all MMIO, so usable from ring 3. */
#include "rt.h"

void lapic_enable(void)
{
	lapic_write(LAPIC_SVR, 0x100 | 0xff);
}

bool lapic_send_ipi(uint32_t apic_id, uint32_t icr_lo)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr_lo);
	/* Delivery status (bit 12) clears once the IPI is accepted. */
	uint64_t end = tsc_deadline_us(100000);
	while (lapic_read(LAPIC_ICR_LO) & (1u << 12))
		if ((int64_t)(rdtsc() - end) > 0)
			return false;
	return true;
}

uint32_t ioapic_read(uint64_t base, uint32_t reg)
{
	mmio_write32(base, reg);
	return mmio_read32(base + 0x10);
}

void ioapic_write(uint64_t base, uint32_t reg, uint32_t v)
{
	mmio_write32(base, reg);
	mmio_write32(base + 0x10, v);
}

void ioapic_route(uint64_t base, uint32_t pin, uint8_t vector, uint32_t dest_apic, uint16_t flags)
{
	uint32_t lo = vector;   /* fixed delivery, physical destination */

	/* MPS INTI flags: polarity 3 = active low, trigger 3 = level;
	 * 0 means "bus default", which is high/edge for ISA. */
	if ((flags & 3) == 3)
		lo |= 1u << 13;
	if (((flags >> 2) & 3) == 3)
		lo |= 1u << 15;
	ioapic_write(base, 0x10 + 2 * pin + 1, dest_apic << 24);
	ioapic_write(base, 0x10 + 2 * pin, lo);
}
