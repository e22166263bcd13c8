/* Creating a virtio device on a transport. */
#ifndef KESTREL_VIRTIO_TRANSPORT_H
#define KESTREL_VIRTIO_TRANSPORT_H

struct vm;
struct virtio_dev;

enum virtio_transport_kind { VIRTIO_TRANSPORT_PCI, VIRTIO_TRANSPORT_MMIO };

/* Puts an initialised `vdev` on the PCI bus (virtio-pci modern) or on a
 * virtio-mmio slot. Returns an opaque handle for virtio_transport_remove,
 * or NULL with an error printed. */
void *virtio_pci_add(struct vm *vm, struct virtio_dev *vdev);
void virtio_pci_remove(struct vm *vm, void *handle);
void *virtio_mmio_add(struct vm *vm, struct virtio_dev *vdev);
void virtio_mmio_remove(struct vm *vm, void *handle);

/* Either of the above by kind. */
void *virtio_transport_add(struct vm *vm, struct virtio_dev *vdev, enum virtio_transport_kind kind);
void virtio_transport_remove(struct vm *vm, enum virtio_transport_kind kind, void *handle);

/* Parses "pci" or "mmio". Returns 0 or -1. */
int virtio_parse_transport(const char *s, enum virtio_transport_kind *out);

#endif
