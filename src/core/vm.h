/* struct vm: everything one virtual machine owns. No Kestrel state lives
 * outside it, so two VMs can share a process and unit tests can build one. */
#ifndef KESTREL_VM_H
#define KESTREL_VM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "boot/boot.h"
#include "bus/io_bus.h"
#include "core/config.h"
#include "core/mem.h"

struct loop;
struct vcpu;
struct chardev;
struct kvm_cpuid2;
struct device_ops;
struct pci_bus;
struct irq_router;

/* Why the VM stopped; the first reason reported wins. */
enum vm_stop_reason {
	VM_STOP_NONE,
	VM_STOP_POWEROFF,    /* ACPI S5 */
	VM_STOP_RESET,       /* guest asked for a reset (0xCF9, i8042, triple fault is CRASH) */
	VM_STOP_DEBUG_EXIT,  /* write to the isa-debug-exit port */
	VM_STOP_CRASH,       /* triple fault, KVM internal error, failed entry */
	VM_STOP_SIGNAL,      /* SIGINT/SIGTERM or console quit */
	VM_STOP_ERROR,       /* host-side failure while running */
};

/* A created device: its ops (const, from the device's file) and its state. */
struct vm_device {
	const struct device_ops *ops;
	void *state;
};

#define VM_MAX_DEVICES 32

struct vm {
	const struct vm_config *cfg;
	struct loop *loop;             /* not owned */
	struct chardev *serial_chr;    /* not owned; outlives reboots */
	struct chardev *console_chr;   /* virtio-console backend, or NULL; not owned */

	int kvm_fd;
	int vm_fd;
	int vcpu_mmap_size;
	int max_vcpus;
	struct kvm_cpuid2 *cpuid;      /* KVM_GET_SUPPORTED_CPUID, per-vCPU fixups applied on copy */

	struct guest_mem mem;
	struct io_bus pio;
	struct io_bus mmio;
	struct pci_bus *pci;           /* set by the PCI host bridge device */
	struct irq_router *irq;        /* GSI routes (x86/irq.c) */
	unsigned nr_blk;               /* for device names */
	unsigned nr_virtio_mmio;       /* slots used, for the DSDT */

	struct vm_device devices[VM_MAX_DEVICES];
	unsigned nr_devices;

	const struct boot_image *image; /* the prepared kernel; not owned, outlives reboots */
	struct boot_info boot;

	struct vcpu *vcpus;
	unsigned nr_vcpus;

	/* Stop handshake between vCPU threads and the loop thread. */
	pthread_mutex_t stop_lock;
	enum vm_stop_reason stop_reason;
	int stop_status;               /* debug-exit value, signal number */
	int stop_efd;                  /* eventfd the loop watches */
	atomic_bool stopping;          /* vCPUs leave their run loop once set */

	unsigned builder_steps_done;   /* for reverse unwind */
};

/* Checks what in `cfg` depends on this host but not on KVM, so that it is
 * reported before /dev/kvm is opened: today, that --memory is at most the
 * host's RAM. Takes nothing. Returns 0, or -1 with one error line printed. */
int vm_check_host(const struct vm_config *cfg);

/* Builds a VM from `cfg` in one linear sequence: KVM, memory, irqchip,
 * buses, platform devices, firmware tables, kernel, vCPUs. `cfg` must have
 * passed vm_check_host(), and `image` is boot_prepare()'s result for it,
 * which the kernel step copies into guest RAM: so what is left to fail here
 * is the host's side (KVM and its limits, memory, device backends). On
 * failure, everything already built is torn down in reverse, an error line
 * has been printed, and NULL is returned. `image`, `loop`, `serial` and
 * `console` (may be NULL) are borrowed. */
struct vm *vm_create(const struct vm_config *cfg, const struct boot_image *image, struct loop *loop,
		     struct chardev *serial, struct chardev *console);

/* Starts the vCPU threads. Returns 0 or -errno. */
int vm_start(struct vm *vm);

/* Records why the VM must stop (first caller wins) and wakes the loop.
 * Safe from any thread. */
void vm_request_stop(struct vm *vm, enum vm_stop_reason reason, int status);

/* Loop thread: stops and joins every vCPU thread. Idempotent. */
void vm_stop(struct vm *vm);

/* Tears everything down in reverse order of vm_create. */
void vm_destroy(struct vm *vm);

/* Sets the level of an in-kernel irqchip input (ISA IRQ / IOAPIC pin).
 * Returns 0 or -errno. */
int vm_irq_line(struct vm *vm, unsigned gsi, bool level);

/* Adds a device to the VM: calls ops->create and records it for teardown.
 * Returns 0 or -errno (with an error printed). */
int vm_add_device(struct vm *vm, const struct device_ops *ops, const void *arg);

#endif
