/* virtio-console (virtio 1.2 section 5.3), one port: the guest's hvc0.
 * Output (transmitq) goes to a chardev; input from the chardev fills the
 * receiveq's buffers, pausing the backend while the guest has none. Both
 * run on the main loop thread, under the device lock. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chardev/chardev.h"
#include "core/device.h"
#include "core/log.h"
#include "core/vm.h"
#include "virtio/devices.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"

#define VCON_RXQ 0
#define VCON_TXQ 1
#define VCON_QUEUE_SIZE 128
#define VCON_CONFIG_SIZE 12 /* cols, rows, max_nr_ports, emerg_wr */

struct vcon {
	struct virtio_dev vdev;
	struct chardev *chr;
	void *transport;
	enum virtio_transport_kind kind;
	struct virtq_chain chain;
	uint8_t buf[4096];
};

static void vcon_config_read(struct virtio_dev *vdev, unsigned off, void *data, unsigned len)
{
	(void)vdev;
	uint8_t c[VCON_CONFIG_SIZE] = { 0 };
	uint32_t ports = 1;
	memcpy(c + 4, &ports, 4);
	memcpy(data, c + off, len);
}

static void vcon_config_write(struct virtio_dev *vdev, unsigned off, const void *data, unsigned len)
{
	struct vcon *c = vdev->priv;
	/* emerg_wr: one character written straight out */
	if (off == 8 && len >= 1 && c->chr)
		chardev_write(c->chr, data, 1);
}

static void vcon_tx(struct vcon *c)
{
	struct virtq *vq = &c->vdev.queues[VCON_TXQ].vq;
	for (;;) {
		enum virtq_pop_result r = virtq_pop(vq, &c->chain);
		/* Empty: ask for the next kick, and look once more in case the
		 * driver added a buffer before it could see the request. */
		if (r == VIRTQ_EMPTY && !virtq_enable_notify(vq, true))
			break;
		if (r == VIRTQ_EMPTY)
			continue;
		if (r == VIRTQ_BAD_RING) {
			virtio_dev_needs_reset(&c->vdev, "transmit ring is corrupt");
			return;
		}
		if (r == VIRTQ_OK) {
			for (unsigned i = 0; i < c->chain.nr_out; i++)
				if (c->chr && c->chain.iov[i].len)
					chardev_write(c->chr, c->chain.iov[i].base, c->chain.iov[i].len);
		} else {
			c->vdev.bad_requests++;
		}
		virtq_push(vq, c->chain.head, 0);
	}
	virtio_queue_notify_guest(&c->vdev, VCON_TXQ);
}

static void vcon_queue_notify(struct virtio_dev *vdev, unsigned q)
{
	struct vcon *c = vdev->priv;
	if (q == VCON_TXQ)
		vcon_tx(c);
	else if (q == VCON_RXQ && c->chr)
		chardev_resume_input(c->chr); /* new receive buffers */
}

/* Input from the backend (main loop thread). */
static size_t vcon_input(void *opaque, const uint8_t *buf, size_t len)
{
	struct vcon *c = opaque;
	struct virtio_dev *vdev = &c->vdev;
	size_t done = 0;
	pthread_mutex_lock(&vdev->lock);
	struct virtio_queue *q = &vdev->queues[VCON_RXQ];
	if ((vdev->status & VIRTIO_STATUS_DRIVER_OK) && q->enabled) {
		while (done < len) {
			enum virtq_pop_result r = virtq_pop(&q->vq, &c->chain);
			/* Out of buffers: have the driver kick when it adds some
			 * (the kick resumes input), unless one just arrived. */
			if (r == VIRTQ_EMPTY && !virtq_enable_notify(&q->vq, true))
				break;
			if (r == VIRTQ_EMPTY)
				continue;
			if (r == VIRTQ_BAD_RING) {
				virtio_dev_needs_reset(vdev, "receive ring is corrupt");
				break;
			}
			size_t n = 0;
			if (r == VIRTQ_OK)
				n = virtq_copy_to_in(&c->chain, 0, buf + done, len - done);
			virtq_push(&q->vq, c->chain.head, (uint32_t)n);
			done += n;
			if (r != VIRTQ_OK)
				vdev->bad_requests++;
		}
		if (done)
			virtio_queue_notify_guest(vdev, VCON_RXQ);
	}
	pthread_mutex_unlock(&vdev->lock);
	return done;
}

static void vcon_quit(void *opaque)
{
	struct vcon *c = opaque;
	vm_request_stop(c->vdev.vm, VM_STOP_SIGNAL, 0);
}

static const struct virtio_device_ops vcon_ops = {
	.name = "virtio-console",
	.device_id = VIRTIO_ID_CONSOLE,
	.pci_class = 0x078000,
	.queue_notify = vcon_queue_notify,
	.config_read = vcon_config_read,
	.config_write = vcon_config_write,
};

static int vcon_create(struct vm *vm, const void *arg, void **state)
{
	const struct console_config *cc = arg;
	struct vcon *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->chr = vm->console_chr;
	c->kind = cc->transport;
	if (virtio_dev_init(&c->vdev, vm, &vcon_ops, c, "virtio-console", 0, 2, VCON_QUEUE_SIZE,
			    VCON_CONFIG_SIZE, vm->loop))
		goto fail;
	c->transport = virtio_transport_add(vm, &c->vdev, c->kind);
	if (!c->transport)
		goto fail_vdev;
	if (c->chr && chardev_attach(c->chr, vm->loop, vcon_input, vcon_quit, c))
		goto fail_transport;
	*state = c;
	return 0;
fail_transport:
	virtio_transport_remove(vm, c->kind, c->transport);
fail_vdev:
	virtio_dev_destroy(&c->vdev);
fail:
	free(c);
	return -EIO;
}

static void vcon_destroy(struct vm *vm, void *state)
{
	struct vcon *c = state;
	if (c->chr)
		chardev_detach(c->chr);
	virtio_transport_remove(vm, c->kind, c->transport);
	virtio_dev_destroy(&c->vdev);
	free(c);
}

const struct device_ops virtio_console_device_ops = {
	.name = "virtio-console",
	.create = vcon_create,
	.destroy = vcon_destroy,
};
