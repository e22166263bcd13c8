/* The one-screen diagnostic printed when a guest dies. */
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "core/log.h"
#include "core/vcpu.h"
#include "core/vm.h"

static const char *exit_reason_name(uint32_t r)
{
	switch (r) {
	case KVM_EXIT_SHUTDOWN: return "SHUTDOWN (triple fault)";
	case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
	case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
	case KVM_EXIT_SYSTEM_EVENT: return "SYSTEM_EVENT";
	case KVM_EXIT_EXCEPTION: return "EXCEPTION";
	case KVM_EXIT_UNKNOWN: return "UNKNOWN";
	default: return "unhandled";
	}
}

static const char *internal_suberror_name(uint32_t s)
{
	switch (s) {
	case KVM_INTERNAL_ERROR_EMULATION: return "instruction emulation failed";
	case KVM_INTERNAL_ERROR_SIMUL_EX: return "exception while delivering an exception";
	case KVM_INTERNAL_ERROR_DELIVERY_EV: return "event delivery failed";
	case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: return "unexpected hardware exit";
	default: return "unknown";
	}
}

/* Reads up to 16 instruction bytes at CS:RIP through the guest's own page
 * tables (KVM_TRANSLATE) and the checked memory helper. */
static int read_insn(struct vcpu *vcpu, uint64_t linear, uint8_t *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		struct kvm_translation tr = { .linear_address = linear + got };
		if (ioctl(vcpu->fd, KVM_TRANSLATE, &tr) < 0 || !tr.valid)
			break;
		size_t chunk = 4096 - ((linear + got) & 4095);
		if (chunk > len - got)
			chunk = len - got;
		if (guest_mem_read(&vcpu->vm->mem, tr.physical_address, buf + got, chunk))
			break;
		got += chunk;
	}
	return (int)got;
}

void vcpu_dump(struct vcpu *vcpu, const char *why)
{
	struct kvm_run *run = vcpu->run;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	log_err("guest crashed on vcpu%u: %s", vcpu->id, why);
	log_err("  exit reason %u %s", run->exit_reason, exit_reason_name(run->exit_reason));
	if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR) {
		log_err("  suberror %u (%s)%s", run->internal.suberror,
			internal_suberror_name(run->internal.suberror),
			run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION
				? ": on this host CPL0 runs in KVM's emulator, which lacks some instructions"
				: "");
		char line[256];
		int n = 0;
		for (uint32_t i = 0; i < run->internal.ndata && i < 8 && n < (int)sizeof(line) - 20; i++)
			n += snprintf(line + n, sizeof(line) - (size_t)n, " %llx",
				      (unsigned long long)run->internal.data[i]);
		if (n)
			log_err("  data:%s", line);
	} else if (run->exit_reason == KVM_EXIT_FAIL_ENTRY) {
		log_err("  hardware entry failure reason 0x%llx",
			(unsigned long long)run->fail_entry.hardware_entry_failure_reason);
	}
	if (ioctl(vcpu->fd, KVM_GET_REGS, &regs) < 0 || ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0) {
		log_err("  (registers unavailable)");
		return;
	}
	log_err("  RIP %016llx  RSP %016llx  RFLAGS %08llx", (unsigned long long)regs.rip,
		(unsigned long long)regs.rsp, (unsigned long long)regs.rflags);
	log_err("  RAX %016llx  RBX %016llx  RCX %016llx  RDX %016llx", (unsigned long long)regs.rax,
		(unsigned long long)regs.rbx, (unsigned long long)regs.rcx, (unsigned long long)regs.rdx);
	log_err("  RSI %016llx  RDI %016llx  RBP %016llx", (unsigned long long)regs.rsi,
		(unsigned long long)regs.rdi, (unsigned long long)regs.rbp);
	log_err("  CS %04x (base %llx, %s, DPL %u)  CR0 %08llx  CR2 %016llx", sregs.cs.selector,
		(unsigned long long)sregs.cs.base, sregs.cs.l ? "64-bit" : sregs.cs.db ? "32-bit" : "16-bit",
		sregs.cs.dpl, (unsigned long long)sregs.cr0, (unsigned long long)sregs.cr2);
	log_err("  CR3 %016llx  CR4 %08llx  EFER %08llx", (unsigned long long)sregs.cr3,
		(unsigned long long)sregs.cr4, (unsigned long long)sregs.efer);
	log_err("  GDT %llx/%x  IDT %llx/%x", (unsigned long long)sregs.gdt.base, sregs.gdt.limit,
		(unsigned long long)sregs.idt.base, sregs.idt.limit);
	uint8_t insn[16];
	int n = read_insn(vcpu, sregs.cs.base + regs.rip, insn, sizeof(insn));
	char line[64] = "";
	for (int i = 0; i < n; i++)
		snprintf(line + 3 * i, sizeof(line) - 3 * (size_t)i, " %02x", insn[i]);
	log_err("  code at RIP:%s", n ? line : " (not mapped)");
}
