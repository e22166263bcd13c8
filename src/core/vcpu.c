#include "core/vcpu.h"

#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/vm.h"
#include "x86/cpu.h"

/* The kick signal only has to interrupt KVM_RUN; its handler does nothing. */
#define VCPU_KICK_SIGNAL SIGUSR1

static void vcpu_kick_handler(int sig)
{
	(void)sig;
}

void vcpu_init_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = vcpu_kick_handler;
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: KVM_RUN must return EINTR. */
	sigaction(VCPU_KICK_SIGNAL, &sa, NULL);
}

int vcpu_create(struct vm *vm, unsigned id, struct vcpu *vcpu)
{
	memset(vcpu, 0, sizeof(*vcpu));
	vcpu->vm = vm;
	vcpu->id = id;
	vcpu->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)id);
	if (vcpu->fd < 0) {
		log_err("cannot create vcpu%u: %s", id, strerror(errno));
		return -errno;
	}
	vcpu->run = mmap(NULL, (size_t)vm->vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
	if (vcpu->run == MAP_FAILED) {
		int e = errno;
		log_err("cannot map vcpu%u's run area: %s", id, strerror(e));
		close(vcpu->fd);
		vcpu->fd = -1;
		vcpu->run = NULL;
		return -e;
	}
	pthread_mutex_init(&vcpu->lock, NULL);
	pthread_cond_init(&vcpu->cond, NULL);
	vcpu->state = vcpu->request = VCPU_CREATED;
	int ret = x86_vcpu_init(vm, vcpu);
	if (ret) {
		vcpu_destroy(vcpu);
		return ret;
	}
	return 0;
}

void vcpu_destroy(struct vcpu *vcpu)
{
	if (vcpu->fd < 0 && !vcpu->run)
		return;
	if (vcpu->run)
		munmap(vcpu->run, (size_t)vcpu->vm->vcpu_mmap_size);
	if (vcpu->fd >= 0)
		close(vcpu->fd);
	pthread_mutex_destroy(&vcpu->lock);
	pthread_cond_destroy(&vcpu->cond);
	vcpu->run = NULL;
	vcpu->fd = -1;
}

/* vDSO clock: cheap enough to time every exit handler. */
static uint64_t vcpu_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void vcpu_set_state(struct vcpu *vcpu, enum vcpu_state s)
{
	vcpu->state = s;
	pthread_cond_broadcast(&vcpu->cond);
}

/* Waits while paused; returns false when the thread must stop. */
static bool vcpu_wait_runnable(struct vcpu *vcpu)
{
	pthread_mutex_lock(&vcpu->lock);
	while (vcpu->request == VCPU_PAUSED) {
		if (vcpu->state != VCPU_PAUSED)
			vcpu_set_state(vcpu, VCPU_PAUSED);
		pthread_cond_wait(&vcpu->cond, &vcpu->lock);
	}
	bool run = vcpu->request != VCPU_STOPPED;
	if (run && vcpu->state != VCPU_RUNNING)
		vcpu_set_state(vcpu, VCPU_RUNNING);
	pthread_mutex_unlock(&vcpu->lock);
	return run;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *vcpu = arg;
	char name[16];
	snprintf(name, sizeof(name), "vcpu%u", vcpu->id);
	pthread_setname_np(pthread_self(), name);

	/* Only the kick signal is delivered to vCPU threads; the loop thread
	 * owns SIGINT/SIGTERM through its signalfd. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, VCPU_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	bool first = vcpu->id == 0;
	while (vcpu_wait_runnable(vcpu)) {
		if (first) {
			first = false;
			log_info("first KVM_RUN %.3f ms after start",
				 (double)(vcpu_now_ns() - vcpu->vm->cfg->start_ns) / 1e6);
		}
		if (ioctl(vcpu->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				vcpu->run->immediate_exit = 0;
				continue;
			}
			log_err("vcpu%u: KVM_RUN failed: %s", vcpu->id, strerror(errno));
			vm_request_stop(vcpu->vm, VM_STOP_ERROR, 0);
			break;
		}
		vcpu->nr_exits++;
		uint64_t t0 = vcpu_now_ns();
		enum vcpu_action action = vcpu_handle_exit(vcpu);
		vcpu->ns_in_exits += vcpu_now_ns() - t0;
		if (action == VCPU_EXIT_LOOP || atomic_load(&vcpu->vm->stopping))
			break;
	}
	pthread_mutex_lock(&vcpu->lock);
	vcpu_set_state(vcpu, VCPU_STOPPED);
	pthread_mutex_unlock(&vcpu->lock);
	return NULL;
}

int vcpu_start(struct vcpu *vcpu)
{
	pthread_mutex_lock(&vcpu->lock);
	vcpu->request = VCPU_RUNNING;
	pthread_mutex_unlock(&vcpu->lock);
	int ret = pthread_create(&vcpu->thread, NULL, vcpu_thread, vcpu);
	if (ret) {
		log_err("cannot start vcpu%u's thread: %s", vcpu->id, strerror(ret));
		return -ret;
	}
	vcpu->thread_started = true;
	return 0;
}

void vcpu_request(struct vcpu *vcpu, enum vcpu_state target)
{
	pthread_mutex_lock(&vcpu->lock);
	if (vcpu->state == VCPU_STOPPED || !vcpu->thread_started) {
		pthread_mutex_unlock(&vcpu->lock);
		return;
	}
	vcpu->request = target;
	pthread_cond_broadcast(&vcpu->cond);
	if (target != VCPU_RUNNING) {
		/* Kick it out of KVM_RUN: immediate_exit covers the window
		 * before it enters, the signal the time inside. */
		vcpu->run->immediate_exit = 1;
		pthread_kill(vcpu->thread, VCPU_KICK_SIGNAL);
	}
	while (vcpu->state != target && vcpu->state != VCPU_STOPPED)
		pthread_cond_wait(&vcpu->cond, &vcpu->lock);
	pthread_mutex_unlock(&vcpu->lock);
}

void vcpu_join(struct vcpu *vcpu)
{
	if (!vcpu->thread_started)
		return;
	pthread_join(vcpu->thread, NULL);
	vcpu->thread_started = false;
}
