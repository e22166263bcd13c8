/* TSC-based delays, calibrated once against PIT channel 2. */
#include "rt.h"

#define PIT_HZ          1193182u
#define CAL_MS          50u
#define FALLBACK_KHZ    3000000u        /* used when no PIT answers */

static uint64_t khz;

uint64_t tsc_khz(void)
{
	if (khz)
		return khz;

	uint16_t count = PIT_HZ * CAL_MS / 1000;
	uint8_t p61 = inb(0x61);

	/* Gate ch2 on, speaker off; mode 0 raises OUT2 (port 0x61 bit 5)
	 * when the count expires. */
	outb(0x61, (p61 & ~0x02) | 0x01);
	outb(0x43, 0xb0);
	outb(0x42, count & 0xff);
	outb(0x42, count >> 8);
	uint64_t t0 = rdtsc(), t1;
	do
		t1 = rdtsc();
	while (!(inb(0x61) & 0x20) && t1 - t0 < (1ull << 32));
	outb(0x61, p61);

	khz = (t1 - t0) / CAL_MS;
	if (khz < 100000 || khz > 10000000) {
		kprintf("rt: TSC calibration implausible (%lu kHz), assuming %u kHz\n",
			khz, FALLBACK_KHZ);
		khz = FALLBACK_KHZ;
	}
	return khz;
}

uint64_t tsc_deadline_us(uint64_t us)
{
	return rdtsc() + us * tsc_khz() / 1000;
}

void udelay(uint64_t us)
{
	uint64_t end = tsc_deadline_us(us);

	while ((int64_t)(rdtsc() - end) < 0)
		cpu_relax();
}
