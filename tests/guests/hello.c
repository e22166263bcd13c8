/* Boot smoke test: console, boot info, MADT, then ACPI S5 power-off. */
#include "rt.h"

int main(void)
{
	const struct rt_mem_region *m;
	size_t n = rt_memmap(&m);

	kprintf("Hello from a Kestrel micro-guest\n");
	kprintf("hello: memmap %lu MiB RAM in %zu entries, %d CPUs in MADT, cmdline \"%s\"\n",
		rt_memmap_ram_total() >> 20, n, madt_cpus(NULL, 0), cmdline());
	for (size_t i = 0; i < n; i++)
		if (m[i].size)  /* some firmware pads the table with empty entries */
			kprintf("  %016lx-%016lx type %u\n", m[i].addr, m[i].addr + m[i].size - 1, m[i].type);
	acpi_poweroff();
	kprintf("hello: FAIL: ACPI power-off returned\n");
	return 1;
}
