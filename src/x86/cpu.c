#include "x86/cpu.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "core/log.h"
#include "core/vcpu.h"
#include "core/vm.h"
#include "x86/layout.h"

/* Boot GDT: 0 null, 0x08 unused, 0x10 code (64-bit), 0x18 data, 0x20 code32.
 * 0x10/0x18 are Linux's __BOOT_CS/__BOOT_DS. */
#define GDT_CODE64 0x10
#define GDT_DATA   0x18
#define GDT_CODE32 0x20
#define GDT_TSS    0x28

static const uint64_t boot_gdt[] = {
	0,
	0,
	0x00af9b000000ffffULL, /* 64-bit code */
	0x00cf93000000ffffULL, /* data */
	0x00cf9b000000ffffULL, /* 32-bit code */
	0x00808b000000ffffULL, /* 32-bit TSS (busy), only for VMX's entry checks */
};

void x86_write_boot_gdt(struct vm *vm)
{
	guest_mem_write(&vm->mem, LAYOUT_GDT, boot_gdt, sizeof(boot_gdt));
}

static void cpuid_set(struct kvm_cpuid_entry2 *e, uint32_t eax, uint32_t ebx, uint32_t ecx, uint32_t edx)
{
	e->eax = eax;
	e->ebx = ebx;
	e->ecx = ecx;
	e->edx = edx;
}

static unsigned bits_for(unsigned n)
{
	unsigned b = 0;
	while ((1u << b) < n)
		b++;
	return b;
}

struct kvm_cpuid2 *x86_cpuid_for_vcpu(const struct kvm_cpuid2 *supported, unsigned id, unsigned nr_cpus)
{
	size_t sz = sizeof(*supported) + supported->nent * sizeof(supported->entries[0]);
	struct kvm_cpuid2 *c = malloc(sz);
	if (!c)
		return NULL;
	memcpy(c, supported, sz);
	unsigned core_bits = bits_for(nr_cpus);
	for (unsigned i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		switch (e->function) {
		case 1:
			/* APIC ID, logical processor count, HTT when > 1. */
			e->ebx = (e->ebx & 0x0000ffffu) | (id << 24) | ((nr_cpus > 255 ? 255 : nr_cpus) << 16);
			if (nr_cpus > 1)
				e->edx |= 1u << 28;
			else
				e->edx &= ~(1u << 28);
			e->ecx |= 1u << 31; /* hypervisor present */
			break;
		case 4: {
			/* Cores per package - 1 in EAX[31:26]; caches shared per core. */
			uint32_t cores = (1u << core_bits) - 1;
			e->eax = (e->eax & 0x3ffu) | (cores << 26);
			if (e->eax & 0x1f) {
				/* leaf-type non-zero: sharing = 1 thread for L1/L2, all for L3 */
				uint32_t level = (e->eax >> 5) & 7;
				uint32_t share = level >= 3 ? cores : 0;
				e->eax = (e->eax & ~(0xfffu << 14)) | (share << 14);
			}
			break;
		}
		case 0xb:
		case 0x1f:
			/* x2APIC topology: SMT level with 1 thread, core level with
			 * nr_cpus cores, then invalid. */
			if (e->index == 0)
				cpuid_set(e, 0, 1, 0x100 | e->index, id);
			else if (e->index == 1)
				cpuid_set(e, core_bits, nr_cpus, 0x200 | e->index, id);
			else
				cpuid_set(e, 0, 0, e->index, id);
			break;
		case 0x80000008:
			/* AMD: NC = cores - 1, ApicIdCoreIdSize */
			e->ecx = (e->ecx & ~0xf0ffu) | (nr_cpus - 1) | (core_bits << 12);
			break;
		case 0x8000001e:
			/* AMD: extended APIC ID; compute unit = core, 1 thread each. */
			cpuid_set(e, id, id & 0xff, 0, 0);
			break;
		case 0x40000000:
			/* Do not claim to be KVM-with-PV-features beyond what KVM
			 * itself reports; leave the KVM signature as supplied. */
			break;
		}
	}
	return c;
}

/* MSRs a fresh CPU has; KVM leaves some undefined. */
static int x86_set_msrs(struct vcpu *vcpu)
{
	static const struct { uint32_t index; uint64_t data; } init[] = {
		{ 0x174, 0 },            /* SYSENTER_CS */
		{ 0x175, 0 },            /* SYSENTER_ESP */
		{ 0x176, 0 },            /* SYSENTER_EIP */
		{ 0xc0000081, 0 },       /* STAR */
		{ 0xc0000082, 0 },       /* LSTAR */
		{ 0xc0000083, 0 },       /* CSTAR */
		{ 0xc0000084, 0 },       /* SFMASK */
		{ 0xc0000102, 0 },       /* KERNEL_GS_BASE */
		{ 0x1a0, 1 },            /* MISC_ENABLE: fast strings */
		{ 0x277, 0x0007040600070406ULL }, /* PAT power-on value */
	};
	size_t n = sizeof(init) / sizeof(init[0]);
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[sizeof(init) / sizeof(init[0])];
	} msrs;
	memset(&msrs, 0, sizeof(msrs));
	/* Set them one at a time: an MSR this KVM rejects must not hide the rest. */
	for (size_t i = 0; i < n; i++) {
		msrs.hdr.nmsrs = 1;
		msrs.e[0].index = init[i].index;
		msrs.e[0].data = init[i].data;
		if (ioctl(vcpu->fd, KVM_SET_MSRS, &msrs) != 1)
			log_debug("vcpu%u: KVM rejected MSR 0x%x", vcpu->id, init[i].index);
	}
	return 0;
}

static int x86_set_fpu(struct vcpu *vcpu)
{
	struct kvm_fpu fpu;
	memset(&fpu, 0, sizeof(fpu));
	fpu.fcw = 0x37f;
	fpu.mxcsr = 0x1f80;
	return ioctl(vcpu->fd, KVM_SET_FPU, &fpu) < 0 ? -errno : 0;
}

/* LINT0 delivers the PIC's ExtINT, LINT1 NMI: what a PC's BIOS programs. */
static int x86_set_lints(struct vcpu *vcpu)
{
	struct kvm_lapic_state lapic;
	if (ioctl(vcpu->fd, KVM_GET_LAPIC, &lapic) < 0)
		return -errno;
	uint32_t *lvt_lint0 = (uint32_t *)&lapic.regs[0x350];
	uint32_t *lvt_lint1 = (uint32_t *)&lapic.regs[0x360];
	*lvt_lint0 = (*lvt_lint0 & ~0x1c7ffu) | (7u << 8);  /* ExtINT, unmasked */
	*lvt_lint1 = (*lvt_lint1 & ~0x1c7ffu) | (4u << 8);  /* NMI, unmasked */
	return ioctl(vcpu->fd, KVM_SET_LAPIC, &lapic) < 0 ? -errno : 0;
}

static struct kvm_segment seg(uint16_t sel, uint8_t type, int l, int db)
{
	return (struct kvm_segment){
		.base = 0, .limit = 0xffffffff, .selector = sel, .type = type,
		.present = 1, .dpl = 0, .db = (uint8_t)db, .s = 1, .l = (uint8_t)l, .g = 1,
	};
}

static int x86_set_boot_regs(struct vm *vm, struct vcpu *vcpu)
{
	struct kvm_sregs sregs;
	if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	struct kvm_regs regs;
	memset(&regs, 0, sizeof(regs));
	regs.rflags = 2;
	regs.rip = vm->boot.entry;

	sregs.gdt.base = LAYOUT_GDT;
	sregs.gdt.limit = sizeof(boot_gdt) - 1;
	sregs.idt.base = 0;
	sregs.idt.limit = 0;
	struct kvm_segment data = seg(GDT_DATA, 3, 0, 1);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.tr = (struct kvm_segment){ .base = 0, .limit = 0x67, .selector = GDT_TSS, .type = 11, .present = 1 };
	sregs.ldt = (struct kvm_segment){ .selector = 0, .type = 2, .present = 1, .limit = 0xffff };

	if (vm->boot.mode == BOOT_PVH) {
		sregs.cs = seg(GDT_CODE32, 11, 0, 1);
		sregs.cr0 = 0x11;      /* PE | ET */
		sregs.cr3 = 0;
		sregs.cr4 = 0;
		sregs.efer = 0;
		regs.rbx = vm->boot.arg;
	} else {
		sregs.cs = seg(GDT_CODE64, 11, 1, 0);
		sregs.cr0 = 0x80050033; /* PG | AM | WP | NE | ET | MP | PE */
		sregs.cr3 = LAYOUT_PML4;
		sregs.cr4 = 0x20;      /* PAE */
		sregs.efer = 0x500;    /* LME | LMA */
		regs.rsi = vm->boot.arg;
	}
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0)
		return -errno;
	if (ioctl(vcpu->fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	return 0;
}

int x86_vcpu_init(struct vm *vm, struct vcpu *vcpu)
{
	struct kvm_cpuid2 *cpuid = x86_cpuid_for_vcpu(vm->cpuid, vcpu->id, vm->nr_vcpus);
	if (!cpuid)
		return -ENOMEM;
	int ret = ioctl(vcpu->fd, KVM_SET_CPUID2, cpuid) < 0 ? -errno : 0;
	free(cpuid);
	if (ret) {
		log_err("vcpu%u: KVM_SET_CPUID2: %s", vcpu->id, strerror(-ret));
		return ret;
	}
	if ((ret = x86_set_msrs(vcpu)) || (ret = x86_set_fpu(vcpu)) || (ret = x86_set_lints(vcpu))) {
		log_err("vcpu%u: initial CPU state rejected by KVM: %s", vcpu->id, strerror(-ret));
		return ret;
	}
	/* APs stay in KVM's wait-for-SIPI state (the in-kernel LAPIC's default
	 * for non-BSP vCPUs), so only the BSP gets registers. */
	if (vcpu->id == 0 && (ret = x86_set_boot_regs(vm, vcpu))) {
		log_err("vcpu0: boot register state rejected by KVM: %s", strerror(-ret));
		return ret;
	}
	return 0;
}
