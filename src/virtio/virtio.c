#include "virtio/virtio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/vm.h"

/* A doorbell: runs on the I/O thread. */
static void virtio_kick(void *opaque, uint32_t events)
{
	struct virtio_queue *q = opaque;
	struct virtio_dev *vdev = q->vdev;
	(void)events;
	uint64_t n;
	if (read(q->kick_fd, &n, sizeof(n)) < 0)
		return;
	atomic_fetch_add_explicit(&q->kicks, n, memory_order_relaxed);
	pthread_mutex_lock(&vdev->lock);
	if ((vdev->status & VIRTIO_STATUS_DRIVER_OK) && !(vdev->status & VIRTIO_STATUS_NEEDS_RESET) &&
	    q->enabled)
		vdev->ops->queue_notify(vdev, q->index);
	pthread_mutex_unlock(&vdev->lock);
}

int virtio_dev_init(struct virtio_dev *vdev, struct vm *vm, const struct virtio_device_ops *ops,
		    void *priv, const char *name, uint64_t features, unsigned nr_queues,
		    uint16_t queue_size, unsigned config_size, struct loop *loop)
{
	memset(vdev, 0, sizeof(*vdev));
	vdev->ops = ops;
	vdev->priv = priv;
	vdev->vm = vm;
	vdev->name = name;
	vdev->host_features = features | VIRTIO_BIT(VIRTIO_F_VERSION_1) |
			      VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX);
	vdev->nr_queues = nr_queues;
	vdev->config_size = config_size;
	vdev->config_msix_vector = VIRTIO_MSI_NO_VECTOR;
	vdev->loop = loop;
	pthread_mutex_init(&vdev->lock, NULL);
	vdev->queues = calloc(nr_queues, sizeof(*vdev->queues));
	if (!vdev->queues)
		goto fail;
	for (unsigned i = 0; i < nr_queues; i++)
		vdev->queues[i].kick_fd = -1; /* so a partial init unwinds only what it made */
	for (unsigned i = 0; i < nr_queues; i++) {
		struct virtio_queue *q = &vdev->queues[i];
		q->vdev = vdev;
		q->index = i;
		q->max_size = queue_size;
		q->msix_vector = VIRTIO_MSI_NO_VECTOR;
		q->vq.mem = &vm->mem;
		q->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (q->kick_fd < 0 || loop_add(loop, q->kick_fd, EPOLLIN, virtio_kick, q)) {
			log_err("%s: cannot set up queue %u's doorbell", name, i);
			goto fail;
		}
	}
	virtio_dev_reset(vdev);
	return 0;
fail:
	virtio_dev_destroy(vdev);
	return -ENOMEM;
}

void virtio_dev_destroy(struct virtio_dev *vdev)
{
	for (unsigned i = 0; vdev->queues && i < vdev->nr_queues; i++) {
		struct virtio_queue *q = &vdev->queues[i];
		if (q->kick_fd >= 0) {
			if (!q->kick_detached)
				loop_remove(vdev->loop, q->kick_fd);
			close(q->kick_fd);
		}
	}
	free(vdev->queues);
	vdev->queues = NULL;
	pthread_mutex_destroy(&vdev->lock);
}

bool virtio_dev_has_feature(const struct virtio_dev *vdev, unsigned bit)
{
	return vdev->guest_features & VIRTIO_BIT(bit);
}

void virtio_dev_reset(struct virtio_dev *vdev)
{
	if (vdev->ops->reset)
		vdev->ops->reset(vdev);
	vdev->status = 0;
	vdev->guest_features = 0;
	vdev->device_feature_select = vdev->driver_feature_select = 0;
	atomic_store(&vdev->isr, 0);
	vdev->config_msix_vector = VIRTIO_MSI_NO_VECTOR;
	for (unsigned i = 0; i < vdev->nr_queues; i++) {
		struct virtio_queue *q = &vdev->queues[i];
		q->enabled = false;
		q->msix_vector = VIRTIO_MSI_NO_VECTOR;
		q->vq.size = q->max_size;
		q->vq.desc_gpa = q->vq.avail_gpa = q->vq.used_gpa = 0;
		virtq_reset(&q->vq);
	}
}

void virtio_dev_set_status(struct virtio_dev *vdev, uint8_t status)
{
	if (status == 0) {
		virtio_dev_reset(vdev);
		return;
	}
	uint8_t old = vdev->status;
	if (status & ~old & VIRTIO_STATUS_FEATURES_OK) {
		/* Refuse features we do not offer, and drivers without VERSION_1
		 * (legacy is not supported): FEATURES_OK then reads back clear. */
		if ((vdev->guest_features & ~vdev->host_features) ||
		    !(vdev->guest_features & VIRTIO_BIT(VIRTIO_F_VERSION_1))) {
			log_info("%s: driver features 0x%llx refused (offered 0x%llx)", vdev->name,
				 (unsigned long long)vdev->guest_features,
				 (unsigned long long)vdev->host_features);
			status &= (uint8_t)~VIRTIO_STATUS_FEATURES_OK;
		}
	}
	/* The driver may only add bits; NEEDS_RESET is the device's. */
	vdev->status = (uint8_t)((old | status) & ~VIRTIO_STATUS_NEEDS_RESET) | (old & VIRTIO_STATUS_NEEDS_RESET);
	if ((status & ~old & VIRTIO_STATUS_DRIVER_OK)) {
		for (unsigned i = 0; i < vdev->nr_queues; i++) {
			struct virtq *vq = &vdev->queues[i].vq;
			vq->event_idx = virtio_dev_has_feature(vdev, VIRTIO_F_EVENT_IDX);
			vq->indirect = virtio_dev_has_feature(vdev, VIRTIO_F_INDIRECT_DESC);
		}
		if (vdev->ops->activate)
			vdev->ops->activate(vdev);
		/* Buffers made available before DRIVER_OK were not processed:
		 * look now. */
		for (unsigned i = 0; i < vdev->nr_queues; i++) {
			uint64_t one = 1;
			if (vdev->queues[i].enabled) {
				ssize_t w = write(vdev->queues[i].kick_fd, &one, sizeof(one));
				(void)w;
			}
		}
	}
}

int virtio_dev_enable_queue(struct virtio_dev *vdev, unsigned q)
{
	struct virtio_queue *vq = &vdev->queues[q];
	vq->vq.event_idx = virtio_dev_has_feature(vdev, VIRTIO_F_EVENT_IDX);
	vq->vq.indirect = virtio_dev_has_feature(vdev, VIRTIO_F_INDIRECT_DESC);
	if (vq->vq.size == 0 || vq->vq.size > vq->max_size || virtq_validate(&vq->vq)) {
		virtio_dev_needs_reset(vdev, "queue rings outside guest RAM or bad size");
		return -1;
	}
	virtq_reset(&vq->vq);
	vq->enabled = true;
	return 0;
}

void virtio_dev_config_read(struct virtio_dev *vdev, unsigned off, void *data, unsigned len)
{
	memset(data, 0, len);
	if (off < vdev->config_size && len <= vdev->config_size - off && vdev->ops->config_read)
		vdev->ops->config_read(vdev, off, data, len);
}

void virtio_dev_config_write(struct virtio_dev *vdev, unsigned off, const void *data, unsigned len)
{
	if (off < vdev->config_size && len <= vdev->config_size - off && vdev->ops->config_write)
		vdev->ops->config_write(vdev, off, data, len);
}

bool virtio_queue_notify_guest(struct virtio_dev *vdev, unsigned q)
{
	if (!virtq_should_notify(&vdev->queues[q].vq))
		return false;
	vdev->transport->notify_queue(vdev, q);
	return true;
}

int virtio_queue_detach_kick(struct virtio_dev *vdev, unsigned q)
{
	struct virtio_queue *vq = &vdev->queues[q];
	if (!vq->kick_detached) {
		loop_remove(vdev->loop, vq->kick_fd);
		vq->kick_detached = true;
	}
	return vq->kick_fd;
}

int virtio_queue_attach_kick(struct virtio_dev *vdev, unsigned q)
{
	struct virtio_queue *vq = &vdev->queues[q];
	if (!vq->kick_detached)
		return 0;
	int ret = loop_add(vdev->loop, vq->kick_fd, EPOLLIN, virtio_kick, vq);
	if (ret < 0) {
		log_err("%s: cannot watch queue %u's doorbell again: %s", vdev->name, q, strerror(-ret));
		return ret;
	}
	vq->kick_detached = false;
	return 0;
}

void virtio_dev_needs_reset(struct virtio_dev *vdev, const char *why)
{
	vdev->bad_requests++;
	if (vdev->status & VIRTIO_STATUS_NEEDS_RESET)
		return;
	log_warn("%s: %s; device needs reset", vdev->name, why);
	vdev->status |= VIRTIO_STATUS_NEEDS_RESET;
	if (vdev->status & VIRTIO_STATUS_DRIVER_OK)
		vdev->transport->notify_config(vdev);
}
