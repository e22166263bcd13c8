/* vCPU threads: a small state machine driven by requests.
 *
 * A request (pause, resume, stop) is posted under the vCPU's lock; a thread
 * inside KVM_RUN is kicked out with run->immediate_exit plus a signal, sees
 * the request, and moves to the requested state. Shutdown joins threads;
 * it never cancels them. */
#ifndef KESTREL_VCPU_H
#define KESTREL_VCPU_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct vm;
struct kvm_run;

enum vcpu_state { VCPU_CREATED, VCPU_RUNNING, VCPU_PAUSED, VCPU_STOPPED };

/* What an exit handler tells the run loop. */
enum vcpu_action { VCPU_CONTINUE, VCPU_EXIT_LOOP };

struct vcpu {
	struct vm *vm;
	unsigned id;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	bool thread_started;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum vcpu_state state;     /* what the thread is doing now */
	enum vcpu_state request;   /* what it was asked to do */

	/* Statistics, written by the vCPU thread only. */
	uint64_t nr_exits;
	uint64_t nr_io_exits;
	uint64_t nr_mmio_exits;
	uint64_t ns_in_exits;      /* time in Kestrel's userspace exit handlers */
};

/* Creates vCPU `id` of `vm` (fd, kvm_run mapping, CPUID, MSRs, FPU, LAPIC
 * LINTs). The BSP gets the boot register state; APs wait for INIT/SIPI.
 * Returns 0 or -errno with an error printed. */
int vcpu_create(struct vm *vm, unsigned id, struct vcpu *vcpu);
void vcpu_destroy(struct vcpu *vcpu);

/* Starts the thread running the guest. Returns 0 or -errno. */
int vcpu_start(struct vcpu *vcpu);

/* Asks the thread to move to `target` (VCPU_PAUSED, VCPU_RUNNING or
 * VCPU_STOPPED) and waits until it has. Callable from any thread but the
 * vCPU's own. */
void vcpu_request(struct vcpu *vcpu, enum vcpu_state target);

/* Joins a stopped thread. */
void vcpu_join(struct vcpu *vcpu);

/* One-time, per process: installs the kick signal's handler. */
void vcpu_init_signals(void);

/* Prints the one-screen diagnostic for a fatal exit. */
void vcpu_dump(struct vcpu *vcpu, const char *why);

/* Exit dispatch (core/exits.c): handles run->exit_reason. */
enum vcpu_action vcpu_handle_exit(struct vcpu *vcpu);

#endif
