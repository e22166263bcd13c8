/* KVM exit dispatch: one handler per exit reason, looked up in a table. */
#include <linux/kvm.h>
#include <stdint.h>

#include "core/log.h"
#include "core/vcpu.h"
#include "core/vm.h"

typedef enum vcpu_action (*exit_handler)(struct vcpu *vcpu);

static enum vcpu_action exit_io(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	bool out = run->io.direction == KVM_EXIT_IO_OUT;
	vcpu->nr_io_exits++;
	/* String I/O (rep ins/outs) arrives as `count` items in one exit. */
	for (uint32_t i = 0; i < run->io.count; i++)
		io_bus_access(&vcpu->vm->pio, run->io.port, data + (size_t)i * run->io.size, run->io.size, out);
	return VCPU_CONTINUE;
}

static enum vcpu_action exit_mmio(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	vcpu->nr_mmio_exits++;
	unsigned len = run->mmio.len;
	if (len == 0 || len > sizeof(run->mmio.data))
		return VCPU_CONTINUE;
	io_bus_access(&vcpu->vm->mmio, run->mmio.phys_addr, run->mmio.data, len, run->mmio.is_write);
	return VCPU_CONTINUE;
}

static enum vcpu_action exit_continue(struct vcpu *vcpu)
{
	(void)vcpu;
	return VCPU_CONTINUE;
}

static enum vcpu_action exit_crash(struct vcpu *vcpu, const char *why)
{
	vcpu_dump(vcpu, why);
	vm_request_stop(vcpu->vm, VM_STOP_CRASH, 0);
	return VCPU_EXIT_LOOP;
}

static enum vcpu_action exit_shutdown(struct vcpu *vcpu)
{
	return exit_crash(vcpu, "triple fault (KVM_EXIT_SHUTDOWN)");
}

static enum vcpu_action exit_internal_error(struct vcpu *vcpu)
{
	return exit_crash(vcpu, "KVM internal error");
}

static enum vcpu_action exit_fail_entry(struct vcpu *vcpu)
{
	return exit_crash(vcpu, "VM entry failed");
}

static enum vcpu_action exit_system_event(struct vcpu *vcpu)
{
	switch (vcpu->run->system_event.type) {
	case KVM_SYSTEM_EVENT_SHUTDOWN:
		vm_request_stop(vcpu->vm, VM_STOP_POWEROFF, 0);
		return VCPU_EXIT_LOOP;
	case KVM_SYSTEM_EVENT_RESET:
		vm_request_stop(vcpu->vm, VM_STOP_RESET, 0);
		return VCPU_EXIT_LOOP;
	default:
		return exit_crash(vcpu, "guest crash event (KVM_EXIT_SYSTEM_EVENT)");
	}
}

static enum vcpu_action exit_unknown(struct vcpu *vcpu)
{
	return exit_crash(vcpu, "unexpected KVM exit");
}

static const exit_handler exit_handlers[] = {
	[KVM_EXIT_IO] = exit_io,
	[KVM_EXIT_MMIO] = exit_mmio,
	/* HLT only exits without an in-kernel LAPIC; resume and let KVM wait. */
	[KVM_EXIT_HLT] = exit_continue,
	[KVM_EXIT_INTR] = exit_continue,
	[KVM_EXIT_IRQ_WINDOW_OPEN] = exit_continue,
	[KVM_EXIT_SHUTDOWN] = exit_shutdown,
	[KVM_EXIT_SYSTEM_EVENT] = exit_system_event,
	[KVM_EXIT_INTERNAL_ERROR] = exit_internal_error,
	[KVM_EXIT_FAIL_ENTRY] = exit_fail_entry,
};

enum vcpu_action vcpu_handle_exit(struct vcpu *vcpu)
{
	uint32_t reason = vcpu->run->exit_reason;
	exit_handler h = NULL;
	if (reason < sizeof(exit_handlers) / sizeof(exit_handlers[0]))
		h = exit_handlers[reason];
	return (h ? h : exit_unknown)(vcpu);
}
