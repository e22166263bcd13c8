/* SMP bring-up: every MADT CPU must reach ring 3 and check in. */
#include "rt.h"

static volatile uint64_t checked_in;
static volatile uint32_t seen_id[RT_MAX_CPUS];

static void ap_main(void *arg)
{
	int cpu = (int)(uint64_t)arg;

	seen_id[cpu] = lapic_id();
	atomic_fetch_add64(&checked_in, 1);
}

int main(void)
{
	uint32_t ids[RT_MAX_CPUS], expect[RT_MAX_CPUS];
	int n = madt_cpus(ids, RT_MAX_CPUS), cpu = 1;
	uint32_t bsp = lapic_id();
	bool ok = true;

	kprintf("smp: MADT lists %d CPUs, BSP APIC ID %u, TSC %lu kHz\n", n, bsp, tsc_khz());
	if (n < 1 || n > RT_MAX_CPUS) {
		kprintf("smp: FAIL: unusable CPU count\n");
		return 1;
	}
	lapic_enable();
	for (int i = 0; i < n; i++) {
		if (ids[i] == bsp)
			continue;
		expect[cpu] = ids[i];
		bool up = rt_start_ap(ids[i], cpu, ap_main, (void *)(uint64_t)cpu);
		kprintf("smp: AP APIC ID %u as cpu %d: %s\n", ids[i], cpu, up ? "started" : "no response");
		ok &= up;
		cpu++;
	}

	uint64_t end = tsc_deadline_us(5000000);
	while (atomic_load64(&checked_in) < (uint64_t)(cpu - 1) && (int64_t)(rdtsc() - end) < 0)
		cpu_relax();
	for (int i = 1; i < cpu; i++) {
		if (seen_id[i] != expect[i]) {
			kprintf("smp: cpu %d reported APIC ID %u, expected %u\n", i, seen_id[i], expect[i]);
			ok = false;
		}
	}

	uint64_t got = 1 + atomic_load64(&checked_in);
	kprintf("smp: %lu/%d CPUs checked in\n", got, n);
	ok &= got == (uint64_t)n;
	kprintf("smp: %s\n", ok ? "PASS" : "FAIL");
	return ok ? 0 : 1;
}
