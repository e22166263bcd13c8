/* The one split-virtqueue implementation every virtio device uses
 * (virtio 1.2, section 2.7): descriptor table, available ring, used ring,
 * indirect descriptors and VIRTIO_F_EVENT_IDX.
 *
 * Guest input is hostile. virtq_pop() is the single chain walker and its
 * contract is:
 *   - the available index may run at most `size` entries ahead of what the
 *     device consumed, else the ring is corrupt (VIRTQ_BAD_RING);
 *   - the head index and every `next` index must be < size;
 *   - an indirect table must have a non-zero length that is a multiple of
 *     16 and at most VIRTQ_MAX_INDIRECT entries; indirect descriptors must
 *     not nest (no INDIRECT flag inside a table), INDIRECT is only allowed
 *     when negotiated, and an indirect descriptor ends the main chain;
 *   - every buffer and the indirect table itself are translated through
 *     guest_mem_ptr() with their full length (overflow-safe);
 *   - device-readable buffers come first; a readable buffer after a
 *     writable one is an error;
 *   - the walk stops after `size` hops (plus the indirect table's length),
 *     so loops terminate;
 *   - a chain with a valid head but a bad body is VIRTQ_BAD_CHAIN: the
 *     head is reported so the device can complete it with length 0.
 * Nothing here asserts or aborts on guest data.
 *
 * Threading: one virtq is driven by one thread at a time (its device's
 * I/O thread); the guest runs concurrently, hence the barriers inside. */
#ifndef KESTREL_VIRTQUEUE_H
#define KESTREL_VIRTQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/mem.h"

#define VIRTQ_MAX_SIZE      1024   /* largest queue Kestrel offers */
#define VIRTQ_MAX_INDIRECT  1024   /* entries in one indirect table */
#define VIRTQ_MAX_CHAIN     1024   /* buffers in one chain */

#define VIRTQ_DESC_F_NEXT     1
#define VIRTQ_DESC_F_WRITE    2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY     1

struct virtq {
	/* Set by the transport from the driver's configuration. */
	uint16_t size;          /* power of two, 1..VIRTQ_MAX_SIZE */
	uint64_t desc_gpa;
	uint64_t avail_gpa;
	uint64_t used_gpa;
	bool event_idx;         /* VIRTIO_F_EVENT_IDX negotiated */
	bool indirect;          /* VIRTIO_F_INDIRECT_DESC negotiated */
	const struct guest_mem *mem;

	/* Device-side state (also what save/restore keeps). */
	uint16_t last_avail;    /* next available-ring slot to consume */
	uint16_t used_idx;      /* our copy of used->idx */
	uint16_t signalled_used;   /* used_idx at the last interrupt */
	bool signalled_valid;
};

/* One buffer of a chain, already translated to host memory. */
struct virtq_iov {
	void *base;
	uint32_t len;
};

struct virtq_chain {
	uint16_t head;
	unsigned nr_out;        /* device-readable buffers: iov[0 .. nr_out) */
	unsigned nr_in;         /* device-writable buffers: iov[nr_out .. nr_out + nr_in) */
	uint64_t out_len;       /* total bytes readable */
	uint64_t in_len;        /* total bytes writable */
	struct virtq_iov iov[VIRTQ_MAX_CHAIN];
};

enum virtq_pop_result {
	VIRTQ_EMPTY = 0,        /* nothing available */
	VIRTQ_OK = 1,           /* *chain holds a valid chain */
	VIRTQ_BAD_CHAIN = -1,   /* chain->head is valid, the rest is not: complete it with 0 */
	VIRTQ_BAD_RING = -2,    /* rings unusable (bad address, index, head): device needs reset */
};

/* Resets device-side state (after the transport sets up or resets it). */
void virtq_reset(struct virtq *vq);

/* Checks that the three ring areas lie in guest RAM for `size`. Returns 0
 * or -1; transports call it when the driver enables the queue. */
int virtq_validate(const struct virtq *vq);

/* Takes the next available chain, see the contract above. */
enum virtq_pop_result virtq_pop(struct virtq *vq, struct virtq_chain *chain);

/* Gives back the last `n` chains virtq_pop() returned (VIRTQ_OK ones the
 * device has not pushed), so the next pops return them again, as QEMU's
 * virtqueue_unpop. A chain completed meanwhile, or one popped before it,
 * must not be given back. */
void virtq_unpop(struct virtq *vq, uint16_t n);

/* Returns a completed chain to the driver: writes the used element and
 * publishes the new used index (release ordering). `len` is the number of
 * bytes the device wrote into the chain's writable buffers. */
void virtq_push(struct virtq *vq, uint16_t head, uint32_t len);

/* After one or more virtq_push(): does the driver want an interrupt now?
 * Honours VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX. */
bool virtq_should_notify(struct virtq *vq);

/* Asks the driver for (or to suppress) kicks: used->flags NO_NOTIFY, or
 * avail_event with EVENT_IDX. Returns true if more buffers became
 * available meanwhile (re-check before sleeping). */
bool virtq_enable_notify(struct virtq *vq, bool enable);

/* True if the driver has made buffers available that are not yet popped. */
bool virtq_has_work(const struct virtq *vq);

/* Copies between a chain's buffers and a flat buffer. Return bytes copied. */
size_t virtq_copy_from_out(const struct virtq_chain *c, size_t offset, void *dst, size_t len);
size_t virtq_copy_to_in(const struct virtq_chain *c, size_t offset, const void *src, size_t len);

#endif
