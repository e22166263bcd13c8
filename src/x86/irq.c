#include "x86/irq.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "core/vm.h"

static void route(struct kvm_irq_routing *r, unsigned gsi, unsigned chip, unsigned pin)
{
	struct kvm_irq_routing_entry *e = &r->entries[r->nr++];
	memset(e, 0, sizeof(*e));
	e->gsi = gsi;
	e->type = KVM_IRQ_ROUTING_IRQCHIP;
	e->u.irqchip.irqchip = chip;
	e->u.irqchip.pin = pin;
}

int x86_irq_routing_init(struct vm *vm)
{
	/* KVM's default table maps GSI 0 to IOAPIC pin 0, but on a PC the PIT
	 * drives pin 2: without this, IRQ0 never reaches the IOAPIC. */
	size_t max = 16 + X86_IOAPIC_PINS;
	struct kvm_irq_routing *r = calloc(1, sizeof(*r) + max * sizeof(r->entries[0]));
	if (!r)
		return -ENOMEM;
	for (unsigned i = 0; i < 16; i++) {
		if (i == 2)
			continue; /* the cascade */
		route(r, i, i < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, i % 8);
	}
	for (unsigned i = 0; i < X86_IOAPIC_PINS; i++) {
		if (i == 2)
			continue; /* pin 2 belongs to GSI 0 */
		route(r, i, KVM_IRQCHIP_IOAPIC, i == 0 ? 2 : i);
	}
	int ret = ioctl(vm->vm_fd, KVM_SET_GSI_ROUTING, r) < 0 ? -errno : 0;
	free(r);
	return ret;
}
