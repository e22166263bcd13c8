/*
 * kvmprobe: does this machine's /dev/kvm run guest kernel code natively?
 *
 * Judged by behaviour, not by module names: open /dev/kvm, check the API
 * version, create a VM with one vCPU, and time a real-mode (CPL 0)
 * `dec ecx; jnz` loop of ITERATIONS iterations. Hardware KVM and nested KVM
 * run it in a few ns per iteration; a KVM that runs guest ring 0 in an
 * instruction emulator (kvm-pvm) takes hundreds. A stock Linux kernel boots
 * only on the first kind.
 *
 * Output: one line, "native: ..." / "emulated: ..." / "none: REASON".
 * Exit status: 0 native, 1 emulated (micro-guests run, Linux does not),
 * 2 no usable KVM.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define ITERATIONS 200000u
/* ns per iteration above which ring 0 counts as emulated: kvm-pvm measured
 * 880, nested KVM under TCG 6.5, hardware well under 1. */
#define EMULATED_NS 100.0
#define MEM_SIZE 0x10000
#define CODE_ADDR 0x1000

static int none(const char *what, int err)
{
	printf("none: %s: %s\n", what, strerror(err));
	return 2;
}

static void on_alarm(int sig)
{
	(void)sig;
	/* A loop that has not finished in the time limit is emulated beyond use. */
	static const char msg[] = "emulated: the ring-0 probe loop did not finish in 20 s\n";
	ssize_t r = write(1, msg, sizeof(msg) - 1);
	(void)r;
	_exit(1);
}

int main(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return none("cannot open /dev/kvm", errno);
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		printf("none: /dev/kvm API version %d, want %d\n", api, KVM_API_VERSION);
		return 2;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return none("KVM_CREATE_VM", errno);
	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return none("mmap", errno);
	/* mov ecx, ITERATIONS; 1: dec ecx; jnz 1b; hlt */
	static const uint8_t code[] = { 0x66, 0xb9, ITERATIONS & 0xff, (ITERATIONS >> 8) & 0xff,
					(ITERATIONS >> 16) & 0xff, ITERATIONS >> 24,
					0x66, 0x49, 0x75, 0xfc, 0xf4 };
	memcpy(mem + CODE_ADDR, code, sizeof(code));
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return none("KVM_SET_USER_MEMORY_REGION", errno);
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		return none("KVM_CREATE_VCPU", errno);
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size <= 0)
		return none("KVM_GET_VCPU_MMAP_SIZE", errno);
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		return none("mmap of kvm_run", errno);
	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		return none("KVM_GET_SREGS", errno);
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		return none("KVM_SET_SREGS", errno);
	struct kvm_regs regs = { .rip = CODE_ADDR, .rflags = 2 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		return none("KVM_SET_REGS", errno);

	signal(SIGALRM, on_alarm);
	alarm(20);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR)
				continue;
			return none("KVM_RUN", errno);
		}
		if (run->exit_reason == KVM_EXIT_HLT)
			break;
		printf("none: the probe guest stopped with KVM exit reason %u instead of HLT\n", run->exit_reason);
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	double ns = s * 1e9 / ITERATIONS;
	int emulated = ns > EMULATED_NS;
	printf("%s: a ring-0 loop of %u iterations took %.4f s (%.1f ns each; over %.0f ns means emulated)\n",
	       emulated ? "emulated" : "native", ITERATIONS, s, ns, EMULATED_NS);
	return emulated;
}
