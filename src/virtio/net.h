/* virtio-net beyond its device_ops (virtio/devices.h): the counters for
 * tooling, and a constructor on a given backend for the unit tests. */
#ifndef KESTREL_VIRTIO_NET_H
#define KESTREL_VIRTIO_NET_H

#include "net/net.h"

struct vm;
struct loop;
struct net_config;
struct virtio_dev;
struct vhost_io;

/* `state` is what virtio_net_device_ops.create stored. */
const struct net_stats *virtio_net_stats(const void *state);

/* Builds the device on `be` (taken over: destroyed with the device)
 * without putting it on a transport, kicks and timers in `loop`; `vio`
 * replaces the system calls for vhost (NULL: the real ones). Returns the
 * state, or NULL with an error printed (`be` destroyed). */
void *virtio_net_new(struct vm *vm, const struct net_config *nc, struct net_backend *be,
		     struct loop *loop, const struct vhost_io *vio);
void virtio_net_free(void *state);
struct virtio_dev *virtio_net_vdev(void *state);

#endif
