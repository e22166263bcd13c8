#include "x86/platform.h"

#include <string.h>

#include "bus/pci.h"
#include "core/log.h"
#include "core/vm.h"
#include "devices/devices.h"
#include "virtio/devices.h"
#include "x86/acpi.h"
#include "x86/cpu.h"
#include "x86/layout.h"

static const struct device_ops *const platform_devices[] = {
	&debug_exit_device_ops,
	&post_device_ops,
	&serial_device_ops,
	&i8042_device_ops,
	&rtc_device_ops,
	&acpi_pm_device_ops,
	&pci_host_device_ops,
};

int x86_platform_create_devices(struct vm *vm)
{
	const struct vm_config *cfg = vm->cfg;
	for (size_t i = 0; i < sizeof(platform_devices) / sizeof(platform_devices[0]); i++) {
		log_debug("device: %s", platform_devices[i]->name);
		if (vm_add_device(vm, platform_devices[i], NULL))
			return -1;
	}
	/* The configured devices, in command-line order within each kind. */
	for (unsigned i = 0; i < cfg->nr_disks; i++)
		if (vm_add_device(vm, &virtio_blk_device_ops, &cfg->disks[i]))
			return -1;
	if (cfg->console.enabled && vm_add_device(vm, &virtio_console_device_ops, &cfg->console))
		return -1;
	if (cfg->rng.enabled && vm_add_device(vm, &virtio_rng_device_ops, &cfg->rng))
		return -1;
	for (unsigned i = 0; i < cfg->nr_nics; i++) {
		if (cfg->nics[i].model == NET_MODEL_VIRTIO && vm_add_device(vm, &virtio_net_device_ops, &cfg->nics[i]))
			return -1;
		if (cfg->nics[i].model == NET_MODEL_E1000 && vm_add_device(vm, &e1000_device_ops, &cfg->nics[i]))
			return -1;
	}
	return 0;
}

void x86_platform_describe(const struct vm *vm, struct acpi_platform *p)
{
	memset(p, 0, sizeof(*p));
	p->nr_cpus = vm->nr_vcpus ? vm->nr_vcpus : vm->cfg->cpus;
	p->ioapic_addr = LAYOUT_IOAPIC;
	/* KVM's IOAPIC powers up with ID 0; the MADT must say the same. */
	p->ioapic_id = 0;
	p->pm1a_evt_port = PORT_ACPI_PM1_EVT;
	p->pm1a_cnt_port = PORT_ACPI_PM1_CNT;
	p->pm_tmr_port = PORT_ACPI_PM_TMR;
	p->gpe0_port = PORT_ACPI_GPE0;
	p->sci_irq = IRQ_ACPI_SCI;
	p->reset_port = PORT_RESET;
	p->reset_value = RESET_VALUE;
	p->s5_slp_typ = ACPI_S5_SLP_TYP;
	p->pci_mmio_start = LAYOUT_PCI_MMIO_START;
	p->pci_mmio_end = LAYOUT_PCI_MMIO_END;
	p->pci_intx_gsi_base = pci_slot_gsi(0);
	p->ecam_base = LAYOUT_ECAM_BASE;
	p->ecam_end_bus = (uint8_t)((LAYOUT_ECAM_SIZE >> 20) - 1);
	p->nr_virtio_mmio = vm->nr_virtio_mmio;
	p->virtio_mmio_base = LAYOUT_VIRTIO_MMIO;
	p->virtio_mmio_slot_size = LAYOUT_VIRTIO_MMIO_SLOT;
	p->virtio_mmio_gsi = LAYOUT_VIRTIO_MMIO_GSI;
	p->com1_port = PORT_COM1;
	p->com1_irq = IRQ_COM1;
	p->rtc_port = PORT_RTC;
	p->rtc_irq = IRQ_RTC;
}

int x86_platform_write_tables(struct vm *vm)
{
	x86_write_boot_gdt(vm);
	struct acpi_platform p;
	x86_platform_describe(vm, &p);
	void *buf = guest_mem_ptr(&vm->mem, LAYOUT_ACPI_BASE, LAYOUT_ACPI_SIZE);
	if (!buf || acpi_build(&p, buf, LAYOUT_ACPI_SIZE, LAYOUT_ACPI_BASE) < 0) {
		log_err("cannot build the ACPI tables for %u CPUs", p.nr_cpus);
		return -1;
	}
	return 0;
}
