/* virtio-rng (virtio 1.2 section 5.4): fills the guest's buffers from the
 * host's getrandom(). An optional token bucket (max_bytes per period)
 * limits the rate; when it is empty the queue waits for a timer. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "core/device.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/vm.h"
#include "virtio/devices.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"

#define VRNG_QUEUE_SIZE 64

struct vrng {
	struct virtio_dev vdev;
	void *transport;
	enum virtio_transport_kind kind;
	uint64_t max_bytes, period_ns;
	uint64_t budget;          /* bytes left in this period */
	uint64_t period_start;
	int timer_fd;
	struct virtq_chain chain;
	uint8_t buf[4096];
	uint64_t bytes_served;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void vrng_refill(struct vrng *r)
{
	if (!r->max_bytes)
		return;
	uint64_t t = now_ns();
	if (t - r->period_start >= r->period_ns) {
		r->period_start = t;
		r->budget = r->max_bytes;
	}
}

static void vrng_queue_notify(struct virtio_dev *vdev, unsigned q)
{
	struct vrng *r = vdev->priv;
	struct virtq *vq = &vdev->queues[q].vq;
	bool pushed = false;
	vrng_refill(r);
	while (!r->max_bytes || r->budget > 0) {
		enum virtq_pop_result res = virtq_pop(vq, &r->chain);
		/* Empty: ask for the next kick, then look once more. */
		if (res == VIRTQ_EMPTY && !virtq_enable_notify(vq, true))
			break;
		if (res == VIRTQ_EMPTY)
			continue;
		if (res == VIRTQ_BAD_RING) {
			virtio_dev_needs_reset(vdev, "request ring is corrupt");
			return;
		}
		uint64_t want = res == VIRTQ_OK ? r->chain.in_len : 0;
		if (r->max_bytes && want > r->budget)
			want = r->budget;
		if (want > sizeof(r->buf))
			want = sizeof(r->buf);
		ssize_t got = want ? getrandom(r->buf, want, 0) : 0;
		if (got < 0)
			got = 0;
		size_t n = virtq_copy_to_in(&r->chain, 0, r->buf, (size_t)got);
		if (res != VIRTQ_OK)
			vdev->bad_requests++;
		virtq_push(vq, r->chain.head, (uint32_t)n);
		pushed = true;
		r->bytes_served += n;
		if (r->max_bytes)
			r->budget -= n;
	}
	if (pushed)
		virtio_queue_notify_guest(vdev, q);
	if (r->max_bytes && r->budget == 0 && virtq_has_work(vq)) {
		/* Come back when the next period starts. */
		uint64_t left = r->period_start + r->period_ns - now_ns();
		struct itimerspec its = { .it_value = { (time_t)(left / 1000000000ULL), (long)(left % 1000000000ULL) } };
		if (left == 0 || left > r->period_ns)
			its.it_value.tv_nsec = 1000;
		timerfd_settime(r->timer_fd, 0, &its, NULL);
	}
}

static void vrng_on_timer(void *opaque, uint32_t events)
{
	struct vrng *r = opaque;
	(void)events;
	uint64_t n;
	if (read(r->timer_fd, &n, sizeof(n)) < 0)
		return;
	pthread_mutex_lock(&r->vdev.lock);
	if ((r->vdev.status & VIRTIO_STATUS_DRIVER_OK) && r->vdev.queues[0].enabled)
		vrng_queue_notify(&r->vdev, 0);
	pthread_mutex_unlock(&r->vdev.lock);
}

static const struct virtio_device_ops vrng_ops = {
	.name = "virtio-rng",
	.device_id = VIRTIO_ID_RNG,
	.pci_class = 0x00ff00,
	.queue_notify = vrng_queue_notify,
};

static int vrng_create(struct vm *vm, const void *arg, void **state)
{
	const struct rng_config *rc = arg;
	struct vrng *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->kind = rc->transport;
	r->max_bytes = rc->max_bytes;
	r->period_ns = (rc->period_ms ? rc->period_ms : 1000) * 1000000ULL;
	r->budget = r->max_bytes;
	r->period_start = now_ns();
	r->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (r->timer_fd < 0)
		goto fail;
	if (virtio_dev_init(&r->vdev, vm, &vrng_ops, r, "virtio-rng", 0, 1, VRNG_QUEUE_SIZE, 0, vm->loop))
		goto fail_timer;
	if (loop_add(vm->loop, r->timer_fd, EPOLLIN, vrng_on_timer, r))
		goto fail_vdev;
	r->transport = virtio_transport_add(vm, &r->vdev, r->kind);
	if (!r->transport)
		goto fail_loop;
	*state = r;
	return 0;
fail_loop:
	loop_remove(vm->loop, r->timer_fd);
fail_vdev:
	virtio_dev_destroy(&r->vdev);
fail_timer:
	close(r->timer_fd);
fail:
	free(r);
	return -EIO;
}

static void vrng_destroy(struct vm *vm, void *state)
{
	struct vrng *r = state;
	log_info("virtio-rng: served %llu bytes", (unsigned long long)r->bytes_served);
	virtio_transport_remove(vm, r->kind, r->transport);
	loop_remove(vm->loop, r->timer_fd);
	virtio_dev_destroy(&r->vdev);
	close(r->timer_fd);
	free(r);
}

const struct device_ops virtio_rng_device_ops = {
	.name = "virtio-rng",
	.create = vrng_create,
	.destroy = vrng_destroy,
};
