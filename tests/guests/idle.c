/* Stays alive doing nothing for seconds=N (default 2; 0 = forever), then
 * powers off: for memory measurements and signal handling tests. */
#include "rt.h"

int main(void)
{
	uint64_t seconds = 2;
	cmdline_u64("seconds", &seconds);
	kprintf("idle: %lu s\n", seconds);
	if (seconds == 0)
		for (;;)
			cpu_relax();
	uint64_t until = tsc_deadline_us(seconds * 1000000);
	while ((int64_t)(rdtsc() - until) < 0)
		cpu_relax();
	acpi_poweroff();
	return 1;
}
