#include "x86/irq.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "core/log.h"
#include "core/vm.h"

static void route_chip(struct irq_router *r, unsigned gsi, unsigned chip, unsigned pin)
{
	r->routes[r->nr++] = (struct irq_route){ .gsi = gsi, .in_use = true, .chip = chip, .pin = pin };
}

/* Callers hold r->lock. */
static int irq_commit(struct vm *vm, struct irq_router *r)
{
	struct kvm_irq_routing *t = calloc(1, sizeof(*t) + r->nr * sizeof(t->entries[0]));
	if (!t)
		return -ENOMEM;
	for (unsigned i = 0; i < r->nr; i++) {
		const struct irq_route *e = &r->routes[i];
		if (!e->in_use)
			continue;
		struct kvm_irq_routing_entry *k = &t->entries[t->nr++];
		k->gsi = e->gsi;
		if (e->msi) {
			k->type = KVM_IRQ_ROUTING_MSI;
			k->u.msi.address_lo = (uint32_t)e->msi_addr;
			k->u.msi.address_hi = (uint32_t)(e->msi_addr >> 32);
			k->u.msi.data = e->msi_data;
		} else {
			k->type = KVM_IRQ_ROUTING_IRQCHIP;
			k->u.irqchip.irqchip = e->chip;
			k->u.irqchip.pin = e->pin;
		}
	}
	int ret = ioctl(vm->vm_fd, KVM_SET_GSI_ROUTING, t) < 0 ? -errno : 0;
	free(t);
	return ret;
}

int x86_irq_routing_init(struct vm *vm)
{
	struct irq_router *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	pthread_mutex_init(&r->lock, NULL);
	/* KVM's default table maps GSI 0 to IOAPIC pin 0, but on a PC the PIT
	 * drives pin 2: without this, IRQ0 never reaches the IOAPIC. */
	for (unsigned i = 0; i < 16; i++) {
		if (i == 2)
			continue; /* the cascade */
		route_chip(r, i, i < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, i % 8);
	}
	for (unsigned i = 0; i < X86_IOAPIC_PINS; i++) {
		if (i == 2)
			continue; /* pin 2 belongs to GSI 0 */
		route_chip(r, i, KVM_IRQCHIP_IOAPIC, i == 0 ? 2 : i);
	}
	r->next_msi_gsi = IRQ_MSI_GSI_BASE;
	int ret = irq_commit(vm, r);
	if (ret) {
		pthread_mutex_destroy(&r->lock);
		free(r);
		return ret;
	}
	vm->irq = r;
	return 0;
}

void x86_irq_routing_destroy(struct vm *vm)
{
	if (!vm->irq)
		return;
	pthread_mutex_destroy(&vm->irq->lock);
	free(vm->irq);
	vm->irq = NULL;
}

int irq_msi_alloc(struct vm *vm)
{
	struct irq_router *r = vm->irq;
	pthread_mutex_lock(&r->lock);
	int gsi = -ENOSPC;
	if (r->nr < IRQ_MAX_ROUTES) {
		gsi = (int)r->next_msi_gsi++;
		/* An MSI to address 0 is dropped by KVM: harmless until programmed. */
		r->routes[r->nr++] = (struct irq_route){ .gsi = (uint32_t)gsi, .msi = true, .in_use = true };
	}
	pthread_mutex_unlock(&r->lock);
	return gsi;
}

int irq_msi_set(struct vm *vm, uint32_t gsi, uint64_t addr, uint32_t data)
{
	struct irq_router *r = vm->irq;
	int ret = -ENOENT;
	pthread_mutex_lock(&r->lock);
	for (unsigned i = 0; i < r->nr; i++) {
		struct irq_route *e = &r->routes[i];
		if (e->in_use && e->msi && e->gsi == gsi) {
			if (e->msi_addr == addr && e->msi_data == data) {
				ret = 0;
				break;
			}
			e->msi_addr = addr;
			e->msi_data = data;
			ret = irq_commit(vm, r);
			break;
		}
	}
	pthread_mutex_unlock(&r->lock);
	if (ret)
		log_warn("cannot route MSI GSI %u: %s", gsi, strerror(-ret));
	return ret;
}

int irq_irqfd_assign(struct vm *vm, int fd, uint32_t gsi)
{
	struct kvm_irqfd k = { .fd = (uint32_t)fd, .gsi = gsi };
	return ioctl(vm->vm_fd, KVM_IRQFD, &k) < 0 ? -errno : 0;
}

void irq_irqfd_deassign(struct vm *vm, int fd, uint32_t gsi)
{
	struct kvm_irqfd k = { .fd = (uint32_t)fd, .gsi = gsi, .flags = KVM_IRQFD_FLAG_DEASSIGN };
	ioctl(vm->vm_fd, KVM_IRQFD, &k);
}
