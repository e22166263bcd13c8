/* AP bring-up: INIT-SIPI-SIPI from ring 3 through the LAPIC ICR. */
#include "rt.h"

extern char rt_tramp_start[], rt_tramp_end[];
void rt_tss_install(int cpu, uint64_t rsp0);

static uint8_t ap_kstack[RT_MAX_CPUS][RT_AP_KSTACK_SIZE] __attribute__((aligned(16)));
static uint8_t ap_ustack[RT_MAX_CPUS][RT_AP_USTACK_SIZE] __attribute__((aligned(16)));
static bool tramp_ready;

bool rt_start_ap(uint32_t apic_id, int cpu, void (*fn)(void *), void *arg)
{
	volatile uint64_t *p = (volatile uint64_t *)RT_TRAMP_PARAMS;

	if (cpu <= 0 || cpu >= RT_MAX_CPUS)
		return false;
	if (!tramp_ready) {
		/* Low memory is identity-mapped and user-accessible. */
		memcpy((void *)RT_TRAMP_BASE, rt_tramp_start, rt_tramp_end - rt_tramp_start);
		tramp_ready = true;
	}
	rt_tss_install(cpu, (uint64_t)ap_kstack[cpu] + RT_AP_KSTACK_SIZE);
	p[AP_P_KSTACK / 8] = (uint64_t)ap_kstack[cpu] + RT_AP_KSTACK_SIZE;
	p[AP_P_USTACK / 8] = (uint64_t)ap_ustack[cpu] + RT_AP_USTACK_SIZE;
	p[AP_P_FN / 8] = (uint64_t)fn;
	p[AP_P_ARG / 8] = (uint64_t)arg;
	p[AP_P_TSS_SEL / 8] = SEL_TSS0 + 16 * cpu;
	atomic_store64(&p[AP_P_ACK / 8], 0);

	/* INIT (assert), 10 ms, then SIPI twice 200 us apart (MP spec). */
	if (!lapic_send_ipi(apic_id, 0x4500))
		return false;
	udelay(10000);
	for (int i = 0; i < 2; i++) {
		if (!lapic_send_ipi(apic_id, 0x4600 | (RT_TRAMP_BASE >> 12)))
			return false;
		udelay(200);
		if (atomic_load64(&p[AP_P_ACK / 8]))
			return true;
	}
	/* Its ring-0 path is emulated on this project's host: be generous. */
	uint64_t end = tsc_deadline_us(2000000);
	while (!atomic_load64(&p[AP_P_ACK / 8]))
		if ((int64_t)(rdtsc() - end) > 0)
			return false;
	return true;
}
