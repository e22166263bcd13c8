/* virtio-mmio, version 2 (virtio 1.2 section 4.2). Each device gets a
 * 4 KiB slot below the ECAM window and an edge-triggered IOAPIC pin fed by
 * an irqfd; the DSDT announces both. QueueNotify is bound to the queues'
 * kick eventfds with datamatch ioeventfds, so doorbells do not exit. */
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "core/log.h"
#include "core/vm.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"
#include "x86/irq.h"
#include "x86/layout.h"

#define VMMIO_MAGIC 0x74726976 /* "virt" */
#define VMMIO_VENDOR 0x4c54534b /* "KSTL" */
#define VMMIO_CONFIG 0x100
#define VMMIO_QUEUE_NOTIFY 0x50

struct virtio_mmio {
	struct vm *vm;
	struct virtio_dev *vdev;
	uint64_t base;
	unsigned slot;
	uint32_t gsi;
	int irq_fd;
	uint32_t queue_select;
	bool ioeventfds;
};

static void vmmio_interrupt(struct virtio_dev *vdev, uint8_t why)
{
	struct virtio_mmio *vm = vdev->transport_priv;
	atomic_fetch_or(&vdev->isr, why);
	uint64_t one = 1;
	ssize_t w = write(vm->irq_fd, &one, sizeof(one));
	(void)w;
}

static void vmmio_notify_queue(struct virtio_dev *vdev, unsigned q)
{
	(void)q;
	vmmio_interrupt(vdev, 1);
}

static void vmmio_notify_config(struct virtio_dev *vdev)
{
	vdev->config_generation++;
	vmmio_interrupt(vdev, 2);
}

static const struct virtio_transport_ops vmmio_transport = { vmmio_notify_queue, vmmio_notify_config };

static uint32_t vmmio_reg_read(struct virtio_mmio *m, unsigned off)
{
	struct virtio_dev *vdev = m->vdev;
	struct virtio_queue *q = m->queue_select < vdev->nr_queues ? &vdev->queues[m->queue_select] : NULL;
	switch (off) {
	case 0x000: return VMMIO_MAGIC;
	case 0x004: return 2;
	case 0x008: return vdev->ops->device_id;
	case 0x00c: return VMMIO_VENDOR;
	case 0x010:
		return vdev->device_feature_select < 2
			       ? (uint32_t)(vdev->host_features >> (32 * vdev->device_feature_select))
			       : 0;
	case 0x034: return q ? q->max_size : 0;
	case 0x044: return q ? q->enabled : 0;
	case 0x060: return atomic_load(&vdev->isr);
	case 0x070: return vdev->status;
	case 0x0fc: return vdev->config_generation;
	default: return 0;
	}
}

static void set_half(uint64_t *v, bool high, uint32_t val)
{
	*v = high ? (*v & 0xffffffffULL) | ((uint64_t)val << 32) : (*v & ~0xffffffffULL) | val;
}

static void vmmio_reg_write(struct virtio_mmio *m, unsigned off, uint32_t val)
{
	struct virtio_dev *vdev = m->vdev;
	struct virtio_queue *q = m->queue_select < vdev->nr_queues ? &vdev->queues[m->queue_select] : NULL;
	bool q_writable = q && !q->enabled;
	switch (off) {
	case 0x014: vdev->device_feature_select = val; break;
	case 0x020:
		if (vdev->driver_feature_select < 2 && !(vdev->status & VIRTIO_STATUS_FEATURES_OK))
			set_half(&vdev->guest_features, vdev->driver_feature_select == 1, val);
		break;
	case 0x024: vdev->driver_feature_select = val; break;
	case 0x030: m->queue_select = val; break;
	case 0x038:
		if (q_writable) {
			if (val && !(val & (val - 1)) && val <= q->max_size)
				q->vq.size = (uint16_t)val;
			else
				virtio_dev_needs_reset(vdev, "queue size not a power of two within the maximum");
		}
		break;
	case 0x044:
		if (q && (val & 1) && !q->enabled)
			virtio_dev_enable_queue(vdev, m->queue_select);
		else if (q && !(val & 1))
			q->enabled = false;
		break;
	case VMMIO_QUEUE_NOTIFY:
		/* Only reached without ioeventfds. */
		if (val < vdev->nr_queues) {
			uint64_t one = 1;
			ssize_t w = write(vdev->queues[val].kick_fd, &one, sizeof(one));
			(void)w;
		}
		break;
	case 0x064: atomic_fetch_and(&vdev->isr, (uint8_t)~val); break;
	case 0x070: virtio_dev_set_status(vdev, (uint8_t)val); break;
	case 0x080: case 0x084: if (q_writable) set_half(&q->vq.desc_gpa, off == 0x084, val); break;
	case 0x090: case 0x094: if (q_writable) set_half(&q->vq.avail_gpa, off == 0x094, val); break;
	case 0x0a0: case 0x0a4: if (q_writable) set_half(&q->vq.used_gpa, off == 0x0a4, val); break;
	default: break;
	}
}

static void vmmio_read(void *dev, uint64_t off, void *data, unsigned len)
{
	struct virtio_mmio *m = dev;
	memset(data, 0, len);
	pthread_mutex_lock(&m->vdev->lock);
	if (off >= VMMIO_CONFIG) {
		virtio_dev_config_read(m->vdev, (unsigned)(off - VMMIO_CONFIG), data, len);
	} else if (len == 4 && !(off & 3)) {
		uint32_t v = vmmio_reg_read(m, (unsigned)off);
		memcpy(data, &v, 4);
	}
	pthread_mutex_unlock(&m->vdev->lock);
}

static void vmmio_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	struct virtio_mmio *m = dev;
	pthread_mutex_lock(&m->vdev->lock);
	if (off >= VMMIO_CONFIG) {
		virtio_dev_config_write(m->vdev, (unsigned)(off - VMMIO_CONFIG), data, len);
	} else if (len == 4 && !(off & 3)) {
		uint32_t v;
		memcpy(&v, data, 4);
		vmmio_reg_write(m, (unsigned)off, v);
	}
	pthread_mutex_unlock(&m->vdev->lock);
}

static const struct io_ops vmmio_io = { vmmio_read, vmmio_write };

static void vmmio_ioeventfds(struct virtio_mmio *m, bool assign)
{
	for (unsigned i = 0; i < m->vdev->nr_queues; i++) {
		struct kvm_ioeventfd io = {
			.datamatch = i,
			.addr = m->base + VMMIO_QUEUE_NOTIFY,
			.len = 4,
			.fd = m->vdev->queues[i].kick_fd,
			.flags = KVM_IOEVENTFD_FLAG_DATAMATCH | (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN),
		};
		if (ioctl(m->vm->vm_fd, KVM_IOEVENTFD, &io) < 0 && assign) {
			log_info("%s: KVM_IOEVENTFD failed: %s; doorbells will exit", m->vdev->name, strerror(errno));
			return;
		}
	}
	m->ioeventfds = assign;
}

void *virtio_mmio_add(struct vm *vm, struct virtio_dev *vdev)
{
	if (vm->nr_virtio_mmio >= LAYOUT_VIRTIO_MMIO_MAX) {
		log_err("%s: no free virtio-mmio slot (at most %d devices use transport=mmio)", vdev->name,
			LAYOUT_VIRTIO_MMIO_MAX);
		return NULL;
	}
	struct virtio_mmio *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->vm = vm;
	m->vdev = vdev;
	m->slot = vm->nr_virtio_mmio;
	m->base = LAYOUT_VIRTIO_MMIO + m->slot * LAYOUT_VIRTIO_MMIO_SLOT;
	m->gsi = LAYOUT_VIRTIO_MMIO_GSI + m->slot;
	vdev->transport = &vmmio_transport;
	vdev->transport_priv = m;
	m->irq_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (m->irq_fd < 0 || irq_irqfd_assign(vm, m->irq_fd, m->gsi)) {
		log_err("%s: cannot bind its interrupt (GSI %u)", vdev->name, m->gsi);
		goto fail;
	}
	if (io_bus_register(&vm->mmio, m->base, LAYOUT_VIRTIO_MMIO_SLOT, &vmmio_io, m, vdev->name)) {
		irq_irqfd_deassign(vm, m->irq_fd, m->gsi);
		log_err("%s: virtio-mmio slot at 0x%llx is taken", vdev->name, (unsigned long long)m->base);
		goto fail;
	}
	vmmio_ioeventfds(m, true);
	vm->nr_virtio_mmio++;
	log_info("%s: virtio-mmio at 0x%llx, GSI %u", vdev->name, (unsigned long long)m->base, m->gsi);
	return m;
fail:
	if (m->irq_fd >= 0)
		close(m->irq_fd);
	free(m);
	return NULL;
}

void virtio_mmio_remove(struct vm *vm, void *handle)
{
	struct virtio_mmio *m = handle;
	if (!m)
		return;
	if (m->ioeventfds)
		vmmio_ioeventfds(m, false);
	io_bus_unregister(&vm->mmio, m->base);
	irq_irqfd_deassign(vm, m->irq_fd, m->gsi);
	close(m->irq_fd);
	free(m);
}
