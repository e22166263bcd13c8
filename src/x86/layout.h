/* The guest-physical and port map of Kestrel's x86 machine, in one place. */
#ifndef KESTREL_X86_LAYOUT_H
#define KESTREL_X86_LAYOUT_H

/* Low memory: boot structures the loaders write (all inside RAM). */
#define LAYOUT_GDT            0x500ULL
#define LAYOUT_START_INFO     0x6000ULL   /* PVH hvm_start_info + memmap + modlist */
#define LAYOUT_ZERO_PAGE      0x7000ULL   /* bzImage boot_params */
#define LAYOUT_PML4           0x9000ULL   /* identity map for the 64-bit bzImage entry */
#define LAYOUT_PDPT           0xA000ULL
#define LAYOUT_PD             0xB000ULL   /* 4 pages: 4 GiB with 2 MiB pages */
#define LAYOUT_CMDLINE        0x20000ULL
#define LAYOUT_CMDLINE_MAX    0x10000ULL  /* incl. the NUL */
#define LAYOUT_EBDA           0x9FC00ULL  /* low RAM ends here */
#define LAYOUT_BIOS_START     0xE0000ULL  /* reserved: ACPI tables live here */
#define LAYOUT_ACPI_BASE      0xE0000ULL
#define LAYOUT_ACPI_SIZE      0x20000ULL
#define LAYOUT_HIGH_MEM       0x100000ULL /* kernels load at 1 MiB */

/* The 32-bit hole: RAM beyond this goes above 4 GiB. */
#define LAYOUT_HOLE_START     0xC0000000ULL
#define LAYOUT_PCI_MMIO_START 0xC0000000ULL /* 32-bit PCI BAR window */
#define LAYOUT_PCI_MMIO_END   0xD0000000ULL
#define LAYOUT_VIRTIO_MMIO    0xD0000000ULL /* virtio-mmio slots, 4 KiB each */
#define LAYOUT_VIRTIO_MMIO_SLOT 0x1000ULL
#define LAYOUT_VIRTIO_MMIO_MAX  4           /* one IOAPIC pin each: 20-23 */
#define LAYOUT_VIRTIO_MMIO_GSI  20
#define LAYOUT_ECAM_BASE      0xE0000000ULL /* PCI MMCONFIG, 256 buses */
#define LAYOUT_ECAM_SIZE      0x10000000ULL
#define LAYOUT_IOAPIC         0xFEC00000ULL
#define LAYOUT_LAPIC          0xFEE00000ULL
#define LAYOUT_KVM_IDENT_MAP  0xFFFBC000ULL /* KVM's private pages (VMX real mode) */
#define LAYOUT_KVM_TSS        0xFFFBD000ULL /* 3 pages */
#define LAYOUT_KVM_PRIV_END   0xFFFC0000ULL
#define LAYOUT_4G             0x100000000ULL

/* Ports. */
#define PORT_COM1         0x3F8
#define IRQ_COM1          4
#define PORT_I8042_DATA   0x60
#define PORT_I8042_CMD    0x64
#define PORT_RTC          0x70
#define IRQ_RTC           8
#define PORT_POST         0x80
#define PORT_DEBUG_EXIT   0xF4
#define PORT_ACPI_PM_BASE 0x600 /* PM1a_EVT 0x600 (4), PM1a_CNT 0x604 (2), PM_TMR 0x608 (4) */
#define PORT_ACPI_PM1_EVT 0x600
#define PORT_ACPI_PM1_CNT 0x604
#define PORT_ACPI_PM_TMR  0x608
#define PORT_ACPI_GPE0    0x620 /* 4 bytes: status, enable */
#define IRQ_ACPI_SCI      9
#define PORT_RESET        0xCF9 /* FADT reset register */
#define RESET_VALUE       0x06
#define ACPI_S5_SLP_TYP   0     /* \_S5 package value, also decoded by PM1_CNT */
#define PORT_PCI_CONFIG_ADDR 0xCF8
#define PORT_PCI_CONFIG_DATA 0xCFC

#endif
