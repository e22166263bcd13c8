/* Interrupt delivery: PIT via IOAPIC and the LAPIC timer, taken in ring 3. */
#include "rt.h"

#define VEC_PIT         0x30
#define VEC_LAPIC       0x31
#define PIT_DIVISOR     1193            /* ~1000 Hz */
#define LAPIC_COUNT     100000          /* divide 16: ~625 Hz at a 1 GHz bus */

static volatile uint64_t pit_ticks, lapic_ticks;

static void on_pit(unsigned v)
{
	(void)v;
	pit_ticks++;
}

static void on_lapic(unsigned v)
{
	(void)v;
	lapic_ticks++;
}

int main(void)
{
	uint32_t ioapic, gsi_base;
	uint16_t flags;
	uint32_t gsi = madt_isa_gsi(0, &flags);

	if (!madt_ioapic(&ioapic, &gsi_base) || gsi < gsi_base) {
		kprintf("timer: FAIL: no IOAPIC for GSI %u in the MADT\n", gsi);
		return 1;
	}
	kprintf("timer: ISA IRQ0 -> GSI %u (flags 0x%x), IOAPIC at 0x%x pin %u\n",
		gsi, flags, ioapic, gsi - gsi_base);

	outb(0x21, 0xff);       /* the 8259s must not deliver IRQ0 too */
	outb(0xa1, 0xff);
	rt_irq_register(VEC_PIT, on_pit);
	rt_irq_register(VEC_LAPIC, on_lapic);
	lapic_enable();
	ioapic_route(ioapic, gsi - gsi_base, VEC_PIT, lapic_id(), flags);

	outb(0x43, 0x34);       /* ch0, lo/hi byte, mode 2 (rate generator) */
	outb(0x40, PIT_DIVISOR & 0xff);
	outb(0x40, PIT_DIVISOR >> 8);
	lapic_write(LAPIC_TIMER_DCR, 0x3);              /* divide by 16 */
	lapic_write(LAPIC_LVT_TIMER, VEC_LAPIC | 1u << 17);     /* periodic */
	lapic_write(LAPIC_TIMER_ICR, LAPIC_COUNT);
	irq_enable();

	uint64_t t0 = rdtsc(), end = tsc_deadline_us(10000000);
	while ((pit_ticks < 100 || lapic_ticks < 10) && (int64_t)(rdtsc() - end) < 0)
		cpu_relax();
	uint64_t ms = (rdtsc() - t0) / tsc_khz();

	lapic_write(LAPIC_LVT_TIMER, 1u << 16);         /* mask */
	ioapic_write(ioapic, 0x10 + 2 * (gsi - gsi_base), 1u << 16);

	uint64_t pit = pit_ticks, lapic = lapic_ticks;
	bool ok = pit >= 100 && lapic >= 10;
	kprintf("timer: PIT %lu ticks, LAPIC timer %lu ticks in %lu ms\n", pit, lapic, ms);
	kprintf("timer: %s\n", ok ? "PASS" : "FAIL");
	return ok ? 0 : 1;
}
