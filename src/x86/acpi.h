/* ACPI tables for Kestrel's machine: RSDP, XSDT, FADT (+FACS), DSDT, MADT,
 * and MCFG when ECAM is enabled. Pure: builds into a caller buffer. */
#ifndef KESTREL_ACPI_H
#define KESTREL_ACPI_H

#include <stddef.h>
#include <stdint.h>

struct acpi_platform {
	unsigned nr_cpus;          /* 1..255; LAPIC IDs are 0..nr_cpus-1 */
	uint64_t ioapic_addr;
	uint8_t ioapic_id;
	uint16_t pm1a_evt_port;    /* 4 bytes: status, enable */
	uint16_t pm1a_cnt_port;    /* 2 bytes */
	uint16_t pm_tmr_port;      /* 4 bytes, 24-bit 3.579545 MHz timer */
	uint16_t gpe0_port;        /* 4 bytes: 2 status, 2 enable */
	uint8_t sci_irq;
	uint16_t reset_port;
	uint8_t reset_value;
	uint8_t s5_slp_typ;
	/* PCI root bridge resources announced in the DSDT _CRS */
	uint64_t pci_mmio_start, pci_mmio_end; /* [start, end) */
	/* _PRT: slot S pin P -> GSI base + (S + P) % 4; 0 = no _PRT */
	uint32_t pci_intx_gsi_base;
	/* ECAM: 0 = no MCFG table */
	uint64_t ecam_base;
	uint8_t ecam_end_bus;
	/* virtio-mmio slots: base + n * slot_size, GSI gsi + n (edge, high) */
	unsigned nr_virtio_mmio;
	uint64_t virtio_mmio_base;
	uint32_t virtio_mmio_slot_size;
	uint32_t virtio_mmio_gsi;
	/* Legacy devices to describe in the DSDT. */
	uint16_t com1_port;
	uint8_t com1_irq;
	uint16_t rtc_port;
	uint8_t rtc_irq;
};

/* Writes the tables into `buf`, which the guest sees at physical address
 * `gpa`, with the RSDP first (at `gpa`, 16-byte aligned as required for the
 * legacy scan). Returns the number of bytes used, or -1 if `size` is too
 * small or `p` is invalid (nothing meaningful is left in buf then). */
long acpi_build(const struct acpi_platform *p, void *buf, size_t size, uint64_t gpa);

#endif
