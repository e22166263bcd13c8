/* The virtio device model shared by both transports (virtio-pci modern,
 * virtio-mmio v2): features, status, queues, interrupts.
 *
 * Threads: the transport's register handlers run on vCPU threads; queue
 * work runs on the device's I/O thread (a `struct loop`: the main loop, or
 * a dedicated iothread). Both hold vdev->lock, so a device reset never
 * races queue processing. Doorbells arrive on per-queue eventfds bound to
 * KVM ioeventfds; they are registered in the I/O loop when the device is
 * built, and ignored until the driver has set DRIVER_OK. */
#ifndef KESTREL_VIRTIO_H
#define KESTREL_VIRTIO_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "virtio/virtqueue.h"

struct vm;
struct loop;
struct virtio_dev;

/* Feature bits (virtio 1.2 section 6) */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX     29
#define VIRTIO_F_VERSION_1     32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_BIT(b) (1ULL << (b))

/* Device status bits */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED      128

#define VIRTIO_MSI_NO_VECTOR 0xffff

/* Device IDs */
#define VIRTIO_ID_NET     1
#define VIRTIO_ID_BLOCK   2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG     4

/* What a device type provides; one const instance per device file. */
struct virtio_device_ops {
	const char *name;
	uint16_t device_id;
	uint32_t pci_class;          /* class code << 8 (revision filled in) */
	/* A queue has buffers (I/O thread, lock held, DRIVER_OK set). */
	void (*queue_notify)(struct virtio_dev *vdev, unsigned q);
	/* Device-specific config space; accesses are bounds-checked against
	 * vdev->config_size before these are called. */
	void (*config_read)(struct virtio_dev *vdev, unsigned off, void *data, unsigned len);
	void (*config_write)(struct virtio_dev *vdev, unsigned off, const void *data, unsigned len);
	/* The driver set DRIVER_OK (lock held, vCPU thread). Optional. */
	void (*activate)(struct virtio_dev *vdev);
	/* The driver reset the device: finish or drop in-flight work so that
	 * nothing touches guest memory afterwards (lock held). Optional. */
	void (*reset)(struct virtio_dev *vdev);
};

/* Interrupt delivery, supplied by the transport. */
struct virtio_transport_ops {
	void (*notify_queue)(struct virtio_dev *vdev, unsigned q);
	void (*notify_config)(struct virtio_dev *vdev);
};

struct virtio_queue {
	struct virtq vq;
	uint16_t max_size;
	bool enabled;                /* queue_enable / QueueReady */
	uint16_t msix_vector;
	int kick_fd;                 /* eventfd: ioeventfd target */
	bool kick_detached;          /* kick_fd is read by someone else (vhost) */
	atomic_uint_fast64_t kicks;  /* doorbells seen: the sum of the eventfd counts */
	struct virtio_dev *vdev;
	unsigned index;
};

struct virtio_dev {
	const struct virtio_device_ops *ops;
	void *priv;                  /* the device's state */
	struct vm *vm;
	const char *name;            /* for messages, e.g. "virtio-blk0" */
	pthread_mutex_t lock;
	uint64_t host_features;
	uint64_t guest_features;
	uint32_t device_feature_select, driver_feature_select;
	uint8_t status;
	uint8_t config_generation;
	atomic_uchar isr;            /* bit 0: queue, bit 1: config */
	uint16_t config_msix_vector;
	unsigned config_size;
	unsigned nr_queues;
	struct virtio_queue *queues;
	struct loop *loop;           /* where kicks are handled */
	const struct virtio_transport_ops *transport;
	void *transport_priv;
	uint64_t bad_requests;       /* malformed chains seen (statistics) */
};

/* Initialises `vdev` with `nr_queues` queues of at most `queue_size`
 * entries and the device's feature set (VERSION_1, INDIRECT_DESC and
 * EVENT_IDX are added), and registers the queues' kick eventfds in `loop`.
 * Call on the main thread while building the VM. Returns 0 or -errno. */
int virtio_dev_init(struct virtio_dev *vdev, struct vm *vm, const struct virtio_device_ops *ops,
		    void *priv, const char *name, uint64_t features, unsigned nr_queues,
		    uint16_t queue_size, unsigned config_size, struct loop *loop);
void virtio_dev_destroy(struct virtio_dev *vdev);

/* Transport helpers (lock held). */
void virtio_dev_reset(struct virtio_dev *vdev);
/* Applies a status write with the spec's rules (FEATURES_OK only when the
 * features are acceptable, DRIVER_OK activates, 0 resets). */
void virtio_dev_set_status(struct virtio_dev *vdev, uint8_t status);
/* The driver enabled queue q: validate and arm it. Returns 0, or -1 (the
 * device is marked NEEDS_RESET). */
int virtio_dev_enable_queue(struct virtio_dev *vdev, unsigned q);
/* Reads/writes of the device-specific configuration, bounds-checked. */
void virtio_dev_config_read(struct virtio_dev *vdev, unsigned off, void *data, unsigned len);
void virtio_dev_config_write(struct virtio_dev *vdev, unsigned off, const void *data, unsigned len);

/* Device helpers (I/O thread, lock held): signal the driver that queue q
 * has used buffers, if it wants to know. Returns true if an interrupt was
 * sent. */
bool virtio_queue_notify_guest(struct virtio_dev *vdev, unsigned q);
/* Takes queue q's kick eventfd out of the I/O loop, so that another reader
 * (vhost) consumes the doorbells, or gives it back. I/O thread only (the
 * loop is not thread-safe). Detaching returns the eventfd; attaching
 * returns 0 or -errno (the queue is then deaf until the next attach). */
int virtio_queue_detach_kick(struct virtio_dev *vdev, unsigned q);
int virtio_queue_attach_kick(struct virtio_dev *vdev, unsigned q);
/* A malformed request: the device is marked NEEDS_RESET, the driver told. */
void virtio_dev_needs_reset(struct virtio_dev *vdev, const char *why);
bool virtio_dev_has_feature(const struct virtio_dev *vdev, unsigned bit);

#endif
