/* PIO exit cost: count=N byte writes (default 100000) to an unclaimed port
 * from ring 3, then PASS. Each write is one exit to the VMM's userspace
 * (on hosts that withhold IOPL from ring 3, preceded by a #GP trip). */
#include "rt.h"

#define PIO_PORT 0x2f0 /* no device on Kestrel or QEMU's pc machine */

int main(void)
{
	uint64_t count = 100000;
	cmdline_u64("count", &count);
	uint64_t t0 = rdtsc();
	for (uint64_t i = 0; i < count; i++)
		outb(PIO_PORT, (uint8_t)i);
	uint64_t cycles = rdtsc() - t0;
	uint64_t khz = tsc_khz();
	kprintf("pio: %lu writes to port 0x%x in %lu us (%lu ns each)\n", count, PIO_PORT,
		khz ? cycles * 1000 / khz : 0, khz && count ? cycles * 1000000 / khz / count : 0);
	return 0;
}
