/* The VM builder: one linear sequence of steps, unwound in reverse. */
#include "core/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "core/device.h"
#include "core/log.h"
#include "core/vcpu.h"
#include "x86/irq.h"
#include "x86/layout.h"
#include "x86/platform.h"

#define KVM_CPUID_MAX_ENTRIES 256

struct vm_step {
	const char *name;
	int (*init)(struct vm *vm);
	void (*fini)(struct vm *vm);
};

static int kvm_check_cap(struct vm *vm, int cap, const char *name)
{
	if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, cap) <= 0) {
		log_err("this KVM lacks %s, which Kestrel needs", name);
		return -1;
	}
	return 0;
}

static int step_kvm_init(struct vm *vm)
{
	vm->vm_fd = -1;
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		int e = errno;
		if (e == ENOENT)
			log_err("/dev/kvm does not exist: enable VT-x/AMD-V and load kvm-intel or kvm-amd");
		else if (e == EACCES || e == EPERM)
			log_err("no permission to open /dev/kvm: run as root or join the 'kvm' group");
		else
			log_err("cannot open /dev/kvm: %s", strerror(e));
		return -1;
	}
	int api = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		log_err("KVM API version %d is not the supported version %d", api, KVM_API_VERSION);
		goto fail;
	}
	if (kvm_check_cap(vm, KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP") ||
	    kvm_check_cap(vm, KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY") ||
	    kvm_check_cap(vm, KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR") ||
	    kvm_check_cap(vm, KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID") ||
	    kvm_check_cap(vm, KVM_CAP_PIT2, "KVM_CAP_PIT2") ||
	    kvm_check_cap(vm, KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT") ||
	    kvm_check_cap(vm, KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD") ||
	    kvm_check_cap(vm, KVM_CAP_IRQFD, "KVM_CAP_IRQFD") ||
	    kvm_check_cap(vm, KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING"))
		goto fail;
	vm->max_vcpus = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
	if (vm->max_vcpus <= 0)
		vm->max_vcpus = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
	if (vm->max_vcpus <= 0)
		vm->max_vcpus = 4;
	if (vm->cfg->cpus > (unsigned)vm->max_vcpus) {
		log_err("--cpus %u is more than this KVM's maximum of %d", vm->cfg->cpus, vm->max_vcpus);
		goto fail;
	}
	vm->vcpu_mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (vm->vcpu_mmap_size <= 0) {
		log_err("KVM_GET_VCPU_MMAP_SIZE failed: %s", strerror(errno));
		goto fail;
	}
	vm->cpuid = calloc(1, sizeof(*vm->cpuid) + KVM_CPUID_MAX_ENTRIES * sizeof(vm->cpuid->entries[0]));
	if (!vm->cpuid)
		goto fail;
	vm->cpuid->nent = KVM_CPUID_MAX_ENTRIES;
	if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, vm->cpuid) < 0) {
		log_err("KVM_GET_SUPPORTED_CPUID failed: %s", strerror(errno));
		goto fail;
	}
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		log_err("KVM_CREATE_VM failed: %s", strerror(errno));
		goto fail;
	}
	return 0;
fail:
	free(vm->cpuid);
	vm->cpuid = NULL;
	close(vm->kvm_fd);
	vm->kvm_fd = -1;
	return -1;
}

static void step_kvm_fini(struct vm *vm)
{
	close(vm->vm_fd);
	close(vm->kvm_fd);
	free(vm->cpuid);
	vm->cpuid = NULL;
}

int vm_check_host(const struct vm_config *cfg)
{
	uint64_t host = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
	if (cfg->mem_size > host) {
		log_err("--memory %llu MiB is more than this host's %llu MiB of RAM",
			(unsigned long long)(cfg->mem_size >> 20), (unsigned long long)(host >> 20));
		return -1;
	}
	return 0;
}

static int step_mem_init(struct vm *vm)
{
	int ret = guest_mem_alloc(&vm->mem, vm->cfg->mem_size, LAYOUT_HOLE_START);
	if (ret) {
		log_err("cannot allocate %llu MiB of guest memory: %s",
			(unsigned long long)(vm->cfg->mem_size >> 20), strerror(-ret));
		return -1;
	}
	for (unsigned i = 0; i < vm->mem.nr_regions; i++) {
		const struct guest_mem_region *r = &vm->mem.regions[i];
		struct kvm_userspace_memory_region slot = {
			.slot = i,
			.guest_phys_addr = r->gpa,
			.memory_size = r->size,
			.userspace_addr = (uint64_t)(uintptr_t)r->host,
		};
		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0) {
			log_err("KVM_SET_USER_MEMORY_REGION for 0x%llx+%llu MiB failed: %s",
				(unsigned long long)r->gpa, (unsigned long long)(r->size >> 20), strerror(errno));
			guest_mem_free(&vm->mem);
			return -1;
		}
	}
	return 0;
}

static void step_mem_fini(struct vm *vm)
{
	/* The slots go with the VM fd; the host memory goes here. */
	guest_mem_free(&vm->mem);
}

static int step_irqchip_init(struct vm *vm)
{
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)LAYOUT_KVM_TSS) < 0) {
		log_err("KVM_SET_TSS_ADDR failed: %s", strerror(errno));
		return -1;
	}
	uint64_t ident = LAYOUT_KVM_IDENT_MAP;
	if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &ident) < 0) {
		log_err("KVM_SET_IDENTITY_MAP_ADDR failed: %s", strerror(errno));
		return -1;
	}
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
		log_err("KVM_CREATE_IRQCHIP failed: %s", strerror(errno));
		return -1;
	}
	/* SPEAKER_DUMMY makes KVM serve port 0x61 (PIT channel 2 gate and
	 * output) in the kernel; Linux calibrates the TSC through it. */
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
		log_err("KVM_CREATE_PIT2 failed: %s", strerror(errno));
		return -1;
	}
	/* Last: the only step here that allocates, so nothing to unwind. */
	int ret = x86_irq_routing_init(vm);
	if (ret) {
		log_err("KVM_SET_GSI_ROUTING failed: %s", strerror(-ret));
		return -1;
	}
	return 0;
}

static void step_irqchip_fini(struct vm *vm)
{
	/* The irqchip itself goes with the VM fd. */
	x86_irq_routing_destroy(vm);
}

static int step_bus_init(struct vm *vm)
{
	io_bus_init(&vm->pio, "PIO");
	io_bus_init(&vm->mmio, "MMIO");
	pthread_mutex_init(&vm->stop_lock, NULL);
	vm->stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (vm->stop_efd < 0) {
		log_err("eventfd: %s", strerror(errno));
		io_bus_destroy(&vm->pio);
		io_bus_destroy(&vm->mmio);
		return -1;
	}
	return 0;
}

static void step_bus_fini(struct vm *vm)
{
	close(vm->stop_efd);
	pthread_mutex_destroy(&vm->stop_lock);
	io_bus_destroy(&vm->mmio);
	io_bus_destroy(&vm->pio);
}

int vm_add_device(struct vm *vm, const struct device_ops *ops, const void *arg)
{
	if (vm->nr_devices == VM_MAX_DEVICES) {
		log_err("too many devices (at most %d)", VM_MAX_DEVICES);
		return -ENOSPC;
	}
	void *state = NULL;
	int ret = ops->create(vm, arg, &state);
	if (ret)
		return ret;
	vm->devices[vm->nr_devices++] = (struct vm_device){ ops, state };
	return 0;
}

static void step_devices_fini(struct vm *vm)
{
	while (vm->nr_devices > 0) {
		struct vm_device *d = &vm->devices[--vm->nr_devices];
		d->ops->destroy(vm, d->state);
	}
}

static int step_devices_init(struct vm *vm)
{
	if (x86_platform_create_devices(vm)) {
		step_devices_fini(vm);
		return -1;
	}
	return 0;
}

static int step_firmware_init(struct vm *vm)
{
	return x86_platform_write_tables(vm);
}

static void step_nothing(struct vm *vm)
{
	(void)vm;
}

static int step_kernel_init(struct vm *vm)
{
	return boot_load(vm);
}

static void step_vcpus_fini(struct vm *vm)
{
	for (unsigned i = vm->nr_vcpus; i-- > 0;)
		vcpu_destroy(&vm->vcpus[i]);
	free(vm->vcpus);
	vm->vcpus = NULL;
	vm->nr_vcpus = 0;
}

static int step_vcpus_init(struct vm *vm)
{
	unsigned n = vm->cfg->cpus;
	vm->vcpus = calloc(n, sizeof(*vm->vcpus));
	if (!vm->vcpus)
		return -1;
	/* x86_vcpu_init reads nr_vcpus for the topology, so set it first and
	 * count the created ones in `made` for the unwind. */
	vm->nr_vcpus = n;
	for (unsigned i = 0; i < n; i++) {
		if (vcpu_create(vm, i, &vm->vcpus[i])) {
			vm->nr_vcpus = i;
			step_vcpus_fini(vm);
			return -1;
		}
	}
	return 0;
}

static const struct vm_step vm_steps[] = {
	{ "kvm", step_kvm_init, step_kvm_fini },
	{ "memory", step_mem_init, step_mem_fini },
	{ "irqchip", step_irqchip_init, step_irqchip_fini },
	{ "buses", step_bus_init, step_bus_fini },
	{ "devices", step_devices_init, step_devices_fini },
	{ "firmware", step_firmware_init, step_nothing },
	{ "kernel", step_kernel_init, step_nothing },
	{ "vcpus", step_vcpus_init, step_vcpus_fini },
};

#define VM_NR_STEPS (sizeof(vm_steps) / sizeof(vm_steps[0]))

static void vm_unwind(struct vm *vm)
{
	while (vm->builder_steps_done > 0) {
		const struct vm_step *s = &vm_steps[--vm->builder_steps_done];
		s->fini(vm);
	}
}

struct vm *vm_create(const struct vm_config *cfg, const struct boot_image *image, struct loop *loop,
		     struct chardev *serial, struct chardev *console)
{
	struct vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		log_err("out of memory");
		return NULL;
	}
	vm->cfg = cfg;
	vm->image = image;
	vm->loop = loop;
	vm->serial_chr = serial;
	vm->console_chr = console;
	for (size_t i = 0; i < VM_NR_STEPS; i++) {
		log_debug("build: %s", vm_steps[i].name);
		if (vm_steps[i].init(vm)) {
			vm_unwind(vm);
			free(vm);
			return NULL;
		}
		vm->builder_steps_done++;
	}
	return vm;
}

int vm_start(struct vm *vm)
{
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		int ret = vcpu_start(&vm->vcpus[i]);
		if (ret) {
			vm_request_stop(vm, VM_STOP_ERROR, 0);
			return ret;
		}
	}
	return 0;
}

void vm_request_stop(struct vm *vm, enum vm_stop_reason reason, int status)
{
	pthread_mutex_lock(&vm->stop_lock);
	if (vm->stop_reason == VM_STOP_NONE) {
		vm->stop_reason = reason;
		vm->stop_status = status;
	}
	pthread_mutex_unlock(&vm->stop_lock);
	atomic_store(&vm->stopping, true);
	uint64_t one = 1;
	ssize_t w = write(vm->stop_efd, &one, sizeof(one));
	(void)w;
}

void vm_stop(struct vm *vm)
{
	atomic_store(&vm->stopping, true);
	for (unsigned i = 0; i < vm->nr_vcpus; i++)
		vcpu_request(&vm->vcpus[i], VCPU_STOPPED);
	for (unsigned i = 0; i < vm->nr_vcpus; i++)
		vcpu_join(&vm->vcpus[i]);
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	vm_stop(vm);
	vm_unwind(vm);
	free(vm);
}

int vm_irq_line(struct vm *vm, unsigned gsi, bool level)
{
	struct kvm_irq_level irq = { .irq = gsi, .level = level };
	return ioctl(vm->vm_fd, KVM_IRQ_LINE, &irq) < 0 ? -errno : 0;
}
