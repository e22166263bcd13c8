/* The virtio devices; each is created with its config as `arg`. */
#ifndef KESTREL_VIRTIO_DEVICES_H
#define KESTREL_VIRTIO_DEVICES_H

#include "core/device.h"

extern const struct device_ops virtio_blk_device_ops;     /* arg: struct disk_config */
extern const struct device_ops virtio_console_device_ops; /* arg: struct console_config */
extern const struct device_ops virtio_rng_device_ops;     /* arg: struct rng_config */
extern const struct device_ops virtio_net_device_ops;     /* arg: struct net_config */

#endif
