/* Kestrel's x86 machine: which devices it has and the tables describing it. */
#ifndef KESTREL_X86_PLATFORM_H
#define KESTREL_X86_PLATFORM_H

struct vm;
struct acpi_platform;

/* Creates the platform devices in order (added to vm->devices, so they are
 * destroyed in reverse by the builder). Returns 0 or -1. */
int x86_platform_create_devices(struct vm *vm);

/* Describes this VM's machine for the ACPI builder. */
void x86_platform_describe(const struct vm *vm, struct acpi_platform *p);

/* Writes the boot GDT and the ACPI tables into guest memory. Returns 0 or -1. */
int x86_platform_write_tables(struct vm *vm);

#endif
