/* virtio-pci, modern interface only (virtio 1.2 section 4.1). BAR0 holds
 * the common, ISR, device and notify regions; BAR1 the MSI-X table. Every
 * queue has its own notify address, bound to its kick eventfd with
 * KVM_IOEVENTFD, so doorbells never exit to userspace. */
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "bus/msix.h"
#include "bus/pci.h"
#include "core/log.h"
#include "core/vm.h"
#include "virtio/transport.h"
#include "virtio/virtio.h"

#define VPCI_BAR            0
#define VPCI_MSIX_BAR       1
#define VPCI_BAR_SIZE       0x4000
#define VPCI_COMMON_OFF     0x0000
#define VPCI_COMMON_LEN     0x003c
#define VPCI_ISR_OFF        0x1000
#define VPCI_DEVICE_OFF     0x2000
#define VPCI_DEVICE_LEN     0x1000
#define VPCI_NOTIFY_OFF     0x3000
#define VPCI_NOTIFY_MULT    4

#define PCI_CAP_ID_VNDR     0x09
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG    3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG    5

struct virtio_pci {
	struct vm *vm;
	struct virtio_dev *vdev;
	struct pci_device pci;
	struct msix msix;
	uint16_t queue_select;
	unsigned pci_cfg_cap;       /* offset of the VIRTIO_PCI_CAP_PCI_CFG window */
	bool ioeventfds;            /* registered with KVM at the current BAR address */
	uint64_t bar_addr;
};

static void vpci_add_cap(struct pci_device *d, uint8_t type, uint32_t off, uint32_t len, unsigned extra)
{
	unsigned c = pci_device_add_cap(d, PCI_CAP_ID_VNDR, 16 + extra);
	d->cfg[c + 2] = (uint8_t)(16 + extra);
	d->cfg[c + 3] = type;
	d->cfg[c + 4] = VPCI_BAR;
	memcpy(&d->cfg[c + 8], &off, 4);
	memcpy(&d->cfg[c + 12], &len, 4);
	if (type == VIRTIO_PCI_CAP_NOTIFY_CFG) {
		uint32_t mult = VPCI_NOTIFY_MULT;
		memcpy(&d->cfg[c + 16], &mult, 4);
	}
}

/* Interrupts */

static void vpci_notify_queue(struct virtio_dev *vdev, unsigned q)
{
	struct virtio_pci *vp = vdev->transport_priv;
	if (msix_enabled(&vp->msix)) {
		uint16_t v = vdev->queues[q].msix_vector;
		if (v != VIRTIO_MSI_NO_VECTOR)
			msix_notify(&vp->msix, v);
		return;
	}
	atomic_fetch_or(&vdev->isr, 1);
	pci_set_intx(&vp->pci, true);
}

static void vpci_notify_config(struct virtio_dev *vdev)
{
	struct virtio_pci *vp = vdev->transport_priv;
	vdev->config_generation++;
	if (msix_enabled(&vp->msix)) {
		if (vdev->config_msix_vector != VIRTIO_MSI_NO_VECTOR)
			msix_notify(&vp->msix, vdev->config_msix_vector);
		return;
	}
	atomic_fetch_or(&vdev->isr, 2);
	pci_set_intx(&vp->pci, true);
}

static const struct virtio_transport_ops vpci_transport = { vpci_notify_queue, vpci_notify_config };

/* Doorbells */

static void vpci_ioeventfds(struct virtio_pci *vp, uint64_t bar, bool assign)
{
	for (unsigned i = 0; i < vp->vdev->nr_queues; i++) {
		struct kvm_ioeventfd io = {
			.addr = bar + VPCI_NOTIFY_OFF + (uint64_t)i * VPCI_NOTIFY_MULT,
			.len = 0, /* any width: Linux writes 16 bits, others 32 */
			.fd = vp->vdev->queues[i].kick_fd,
			.flags = assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN,
		};
		if (ioctl(vp->vm->vm_fd, KVM_IOEVENTFD, &io) < 0 && assign) {
			/* The notify handler still works, through an exit. */
			log_info("%s: KVM_IOEVENTFD at 0x%llx failed: %s; doorbells will exit",
				 vp->vdev->name, (unsigned long long)io.addr, strerror(errno));
			vp->ioeventfds = false;
			return;
		}
	}
	vp->ioeventfds = assign;
}

static void vpci_bar_moved(struct pci_device *d, int bar, uint64_t old, uint64_t new)
{
	struct virtio_pci *vp = d->opaque;
	if (bar != VPCI_BAR || !vp->vm)
		return;
	if (old && vp->ioeventfds)
		vpci_ioeventfds(vp, old, false);
	if (new)
		vpci_ioeventfds(vp, new, true);
	vp->bar_addr = new;
}

/* Common configuration (virtio 1.2 4.1.4.3) */

static uint64_t vpci_common_read(struct virtio_pci *vp, unsigned off)
{
	struct virtio_dev *vdev = vp->vdev;
	struct virtio_queue *q = vp->queue_select < vdev->nr_queues ? &vdev->queues[vp->queue_select] : NULL;
	switch (off) {
	case 0x00: return vdev->device_feature_select;
	case 0x04:
		return vdev->device_feature_select < 2
			       ? (uint32_t)(vdev->host_features >> (32 * vdev->device_feature_select))
			       : 0;
	case 0x08: return vdev->driver_feature_select;
	case 0x0c:
		return vdev->driver_feature_select < 2
			       ? (uint32_t)(vdev->guest_features >> (32 * vdev->driver_feature_select))
			       : 0;
	case 0x10: return vdev->config_msix_vector;
	case 0x12: return vdev->nr_queues;
	case 0x14: return vdev->status;
	case 0x15: return vdev->config_generation;
	case 0x16: return vp->queue_select;
	case 0x18: return q ? q->vq.size : 0;
	case 0x1a: return q ? q->msix_vector : VIRTIO_MSI_NO_VECTOR;
	case 0x1c: return q ? q->enabled : 0;
	case 0x1e: return q ? vp->queue_select : 0;
	case 0x20: return q ? (uint32_t)q->vq.desc_gpa : 0;
	case 0x24: return q ? (uint32_t)(q->vq.desc_gpa >> 32) : 0;
	case 0x28: return q ? (uint32_t)q->vq.avail_gpa : 0;
	case 0x2c: return q ? (uint32_t)(q->vq.avail_gpa >> 32) : 0;
	case 0x30: return q ? (uint32_t)q->vq.used_gpa : 0;
	case 0x34: return q ? (uint32_t)(q->vq.used_gpa >> 32) : 0;
	case 0x38: return q ? vp->queue_select : 0; /* queue_notify_data */
	default: return 0;
	}
}

static void set_half(uint64_t *v, bool high, uint32_t val)
{
	*v = high ? (*v & 0xffffffffULL) | ((uint64_t)val << 32) : (*v & ~0xffffffffULL) | val;
}

static uint16_t vpci_valid_vector(struct virtio_pci *vp, uint32_t v)
{
	/* A vector the table does not have reads back as NO_VECTOR, which
	 * is how the driver learns that the mapping failed. */
	return v < vp->msix.nr ? (uint16_t)v : VIRTIO_MSI_NO_VECTOR;
}

static void vpci_common_write(struct virtio_pci *vp, unsigned off, uint32_t val)
{
	struct virtio_dev *vdev = vp->vdev;
	struct virtio_queue *q = vp->queue_select < vdev->nr_queues ? &vdev->queues[vp->queue_select] : NULL;
	/* Queue layout may change only while the queue is disabled. */
	bool q_writable = q && !q->enabled;
	switch (off) {
	case 0x00: vdev->device_feature_select = val; break;
	case 0x08: vdev->driver_feature_select = val; break;
	case 0x0c:
		if (vdev->driver_feature_select < 2 && !(vdev->status & VIRTIO_STATUS_FEATURES_OK))
			set_half(&vdev->guest_features, vdev->driver_feature_select == 1, val);
		break;
	case 0x10: vdev->config_msix_vector = vpci_valid_vector(vp, val & 0xffff); break;
	case 0x14:
		virtio_dev_set_status(vdev, (uint8_t)val);
		if (val == 0)
			pci_set_intx(&vp->pci, false);
		break;
	case 0x16: vp->queue_select = (uint16_t)val; break;
	case 0x18:
		if (q_writable) {
			uint16_t n = (uint16_t)val;
			/* Split rings need a power of two no larger than offered. */
			if (n && !(n & (n - 1)) && n <= q->max_size)
				q->vq.size = n;
			else
				virtio_dev_needs_reset(vdev, "queue size not a power of two within the maximum");
		}
		break;
	case 0x1a:
		if (q)
			q->msix_vector = vpci_valid_vector(vp, val & 0xffff);
		break;
	case 0x1c:
		if (q_writable && (val & 1))
			virtio_dev_enable_queue(vdev, vp->queue_select);
		break;
	case 0x20: case 0x24: if (q_writable) set_half(&q->vq.desc_gpa, off == 0x24, val); break;
	case 0x28: case 0x2c: if (q_writable) set_half(&q->vq.avail_gpa, off == 0x2c, val); break;
	case 0x30: case 0x34: if (q_writable) set_half(&q->vq.used_gpa, off == 0x34, val); break;
	default: break; /* read-only or reserved */
	}
}

/* Field widths of the common config, to reject torn accesses. */
static unsigned vpci_common_width(unsigned off)
{
	if (off < 0x10 || (off >= 0x20 && off < 0x38))
		return 4;
	if (off == 0x14 || off == 0x15)
		return 1;
	return 2;
}

static void vpci_bar_read(void *dev, uint64_t off, void *data, unsigned len)
{
	struct virtio_pci *vp = dev;
	struct virtio_dev *vdev = vp->vdev;
	uint64_t v = 0;
	memset(data, 0, len);
	pthread_mutex_lock(&vdev->lock);
	if (off < VPCI_COMMON_LEN) {
		if (vpci_common_width((unsigned)off) == len)
			v = vpci_common_read(vp, (unsigned)off);
		memcpy(data, &v, len);
	} else if (off == VPCI_ISR_OFF) {
		/* Reading ISR acknowledges it and drops INTx. */
		v = atomic_exchange(&vdev->isr, 0);
		pci_set_intx(&vp->pci, false);
		memcpy(data, &v, len > 1 ? 1 : len);
	} else if (off >= VPCI_DEVICE_OFF && off < VPCI_DEVICE_OFF + VPCI_DEVICE_LEN) {
		virtio_dev_config_read(vdev, (unsigned)(off - VPCI_DEVICE_OFF), data, len);
	}
	pthread_mutex_unlock(&vdev->lock);
}

static void vpci_bar_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	struct virtio_pci *vp = dev;
	struct virtio_dev *vdev = vp->vdev;
	if (off >= VPCI_NOTIFY_OFF) {
		/* Only reached when KVM could not take the doorbell itself. */
		unsigned q = (unsigned)((off - VPCI_NOTIFY_OFF) / VPCI_NOTIFY_MULT);
		if (q < vdev->nr_queues) {
			uint64_t one = 1;
			ssize_t w = write(vdev->queues[q].kick_fd, &one, sizeof(one));
			(void)w;
		}
		return;
	}
	uint64_t v = 0;
	memcpy(&v, data, len > 8 ? 8 : len);
	pthread_mutex_lock(&vdev->lock);
	if (off < VPCI_COMMON_LEN) {
		if (vpci_common_width((unsigned)off) == len)
			vpci_common_write(vp, (unsigned)off, (uint32_t)v);
	} else if (off >= VPCI_DEVICE_OFF && off < VPCI_DEVICE_OFF + VPCI_DEVICE_LEN) {
		virtio_dev_config_write(vdev, (unsigned)(off - VPCI_DEVICE_OFF), data, len);
	}
	pthread_mutex_unlock(&vdev->lock);
}

static const struct io_ops vpci_bar_ops = { vpci_bar_read, vpci_bar_write };

/* VIRTIO_PCI_CAP_PCI_CFG: a window into the BARs through config space. */
static void vpci_config_written(struct pci_device *d, unsigned off, unsigned len)
{
	struct virtio_pci *vp = d->opaque;
	msix_config_written(&vp->msix, off, len);
	unsigned data = vp->pci_cfg_cap + 16;
	if (off < data + 4 && off + len > data) {
		uint32_t boff, blen, val;
		memcpy(&boff, &d->cfg[vp->pci_cfg_cap + 8], 4);
		memcpy(&blen, &d->cfg[vp->pci_cfg_cap + 12], 4);
		memcpy(&val, &d->cfg[data], 4);
		if (d->cfg[vp->pci_cfg_cap + 4] == VPCI_BAR && (blen == 1 || blen == 2 || blen == 4) &&
		    boff < VPCI_BAR_SIZE && blen <= VPCI_BAR_SIZE - boff) {
			/* The bus lock is held; the BAR handlers take only vdev->lock. */
			vpci_bar_write(vp, boff, &val, blen);
		}
	}
}

static const struct pci_device_ops vpci_pci_ops = {
	.bar_moved = vpci_bar_moved,
	.config_written = vpci_config_written,
};

void *virtio_pci_add(struct vm *vm, struct virtio_dev *vdev)
{
	struct virtio_pci *vp = calloc(1, sizeof(*vp));
	if (!vp)
		return NULL;
	vp->vm = vm;
	vp->vdev = vdev;
	vdev->transport = &vpci_transport;
	vdev->transport_priv = vp;
	struct pci_device *d = &vp->pci;
	pci_device_init(d, vdev->name, 0x1af4, (uint16_t)(0x1040 + vdev->ops->device_id),
			(vdev->ops->pci_class << 8) | 0x01, 0x1af4, 0x40);
	d->ops = &vpci_pci_ops;
	d->opaque = vp;
	pci_device_add_bar(d, VPCI_BAR, PCI_BAR_MEM32, VPCI_BAR_SIZE, &vpci_bar_ops, vp);
	pci_device_add_bar(d, VPCI_MSIX_BAR, PCI_BAR_MEM32, MSIX_BAR_SIZE, &msix_io_ops, &vp->msix);
	vpci_add_cap(d, VIRTIO_PCI_CAP_COMMON_CFG, VPCI_COMMON_OFF, VPCI_COMMON_LEN, 0);
	vpci_add_cap(d, VIRTIO_PCI_CAP_ISR_CFG, VPCI_ISR_OFF, 1, 0);
	vpci_add_cap(d, VIRTIO_PCI_CAP_DEVICE_CFG, VPCI_DEVICE_OFF, VPCI_DEVICE_LEN, 0);
	vpci_add_cap(d, VIRTIO_PCI_CAP_NOTIFY_CFG, VPCI_NOTIFY_OFF, vdev->nr_queues * VPCI_NOTIFY_MULT, 4);
	vp->pci_cfg_cap = pci_device_add_cap(d, PCI_CAP_ID_VNDR, 20);
	if (vp->pci_cfg_cap) {
		d->cfg[vp->pci_cfg_cap + 2] = 20;
		d->cfg[vp->pci_cfg_cap + 3] = VIRTIO_PCI_CAP_PCI_CFG;
		d->wmask[vp->pci_cfg_cap + 4] = 0xff;                     /* bar */
		memset(&d->wmask[vp->pci_cfg_cap + 8], 0xff, 12);         /* offset, length, data */
	}
	/* One vector for config changes plus one per queue. */
	unsigned nvec = vdev->nr_queues + 1 <= MSIX_MAX_VECTORS ? vdev->nr_queues + 1 : MSIX_MAX_VECTORS;
	if (msix_init(&vp->msix, vm, d, nvec, VPCI_MSIX_BAR)) {
		log_err("%s: cannot set up MSI-X", vdev->name);
		free(vp);
		return NULL;
	}
	if (pci_bus_plug(vm->pci, d)) {
		msix_destroy(&vp->msix);
		free(vp);
		return NULL;
	}
	log_info("%s: PCI 00:%02x.0, BAR0 0x%llx, %u queue(s)", vdev->name, d->devfn >> 3,
		 (unsigned long long)d->bars[VPCI_BAR].addr, vdev->nr_queues);
	return vp;
}

void virtio_pci_remove(struct vm *vm, void *handle)
{
	struct virtio_pci *vp = handle;
	if (!vp)
		return;
	pci_bus_unplug(vm->pci, &vp->pci); /* unmaps BARs: ioeventfds go via bar_moved */
	msix_destroy(&vp->msix);
	free(vp);
}

void *virtio_transport_add(struct vm *vm, struct virtio_dev *vdev, enum virtio_transport_kind kind)
{
	return kind == VIRTIO_TRANSPORT_MMIO ? virtio_mmio_add(vm, vdev) : virtio_pci_add(vm, vdev);
}

void virtio_transport_remove(struct vm *vm, enum virtio_transport_kind kind, void *handle)
{
	if (kind == VIRTIO_TRANSPORT_MMIO)
		virtio_mmio_remove(vm, handle);
	else
		virtio_pci_remove(vm, handle);
}

int virtio_parse_transport(const char *s, enum virtio_transport_kind *out)
{
	if (!strcmp(s, "pci"))
		*out = VIRTIO_TRANSPORT_PCI;
	else if (!strcmp(s, "mmio"))
		*out = VIRTIO_TRANSPORT_MMIO;
	else
		return -1;
	return 0;
}
