#include "x86/e820.h"

#include "x86/layout.h"

int e820_build(uint64_t ram_size, struct e820_entry *out)
{
	uint64_t low = ram_size < LAYOUT_HOLE_START ? ram_size : LAYOUT_HOLE_START;
	int n = 0;
	out[n++] = (struct e820_entry){ 0, LAYOUT_EBDA, E820_RAM };
	out[n++] = (struct e820_entry){ LAYOUT_EBDA, 0xA0000 - LAYOUT_EBDA, E820_RESERVED };
	/* ACPI tables and the legacy BIOS area; reserved, not ACPI-reclaimable,
	 * as on PCs: the guest finds the RSDP by scanning it. */
	out[n++] = (struct e820_entry){ LAYOUT_BIOS_START, LAYOUT_HIGH_MEM - LAYOUT_BIOS_START, E820_RESERVED };
	if (low > LAYOUT_HIGH_MEM)
		out[n++] = (struct e820_entry){ LAYOUT_HIGH_MEM, low - LAYOUT_HIGH_MEM, E820_RAM };
	/* ECAM must be reserved or Linux will not trust the MCFG. */
	out[n++] = (struct e820_entry){ LAYOUT_ECAM_BASE, LAYOUT_ECAM_SIZE, E820_RESERVED };
	out[n++] = (struct e820_entry){ LAYOUT_KVM_IDENT_MAP, LAYOUT_KVM_PRIV_END - LAYOUT_KVM_IDENT_MAP,
					E820_RESERVED };
	if (ram_size > low)
		out[n++] = (struct e820_entry){ LAYOUT_4G, ram_size - low, E820_RAM };
	return n;
}
