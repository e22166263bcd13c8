/* x86 vCPU initial state: CPUID, MSRs, FPU, LAPIC LINT pins, boot registers. */
#ifndef KESTREL_X86_CPU_H
#define KESTREL_X86_CPU_H

#include <stdint.h>

struct vm;
struct vcpu;
struct kvm_cpuid2;

/* Copies the supported CPUID into a per-vCPU table with the topology leaves
 * (1, 4, 0xB, 0x1F, 0x8000001E) describing `nr_cpus` single-threaded cores
 * in one package, this vCPU's APIC ID, and hypervisor leaves. Returns a
 * malloc'd table or NULL. */
struct kvm_cpuid2 *x86_cpuid_for_vcpu(const struct kvm_cpuid2 *supported, unsigned id, unsigned nr_cpus);

/* Sets CPUID, MSRs, FPU and LAPIC LINT0=ExtINT/LINT1=NMI for vCPU `id`, and
 * for the BSP the register state `vm->boot` asks for. Returns 0 or -errno. */
int x86_vcpu_init(struct vm *vm, struct vcpu *vcpu);

/* Writes the boot GDT (flat code/data, 32- and 64-bit) into guest memory. */
void x86_write_boot_gdt(struct vm *vm);

#endif
