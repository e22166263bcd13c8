/* Split virtqueue, device side. See virtqueue.h for the contract.
 *
 * Everything the guest can write is read exactly once into a local copy
 * (descriptors via memcpy, ring indices via atomic loads) and only the
 * copy is checked and used: a guest racing us cannot change a value
 * between its check and its use.
 *
 * Byte order: virtio 1.x rings are little-endian. The le*toh/htole*
 * conversions are no-ops on x86-64 but keep the layout explicit. */
#include "virtio/virtqueue.h"

#include <endian.h>
#include <string.h>

struct vdesc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};
_Static_assert(sizeof(struct vdesc) == 16, "virtq descriptor is 16 bytes");

/* Byte offsets inside the rings (virtio 1.2, 2.7.6 and 2.7.8). */
#define AVAIL_FLAGS     0
#define AVAIL_IDX       2
#define AVAIL_RING      4
#define USED_FLAGS      0
#define USED_IDX        2
#define USED_RING       4
#define USED_ELEM_SIZE  8

static uint64_t desc_bytes(uint16_t size)  { return 16ull * size; }
static uint64_t avail_bytes(uint16_t size) { return 6ull + 2ull * size; }
static uint64_t used_bytes(uint16_t size)  { return 6ull + 8ull * size; }

static bool size_ok(uint16_t size)
{
	return size >= 1 && size <= VIRTQ_MAX_SIZE && (size & (size - 1)) == 0;
}

/* Translates one ring area for its full length. Besides the guest address
 * alignment the spec requires, the host pointer must be aligned too: the
 * rings are accessed with atomic 16/32-bit operations. */
static uint8_t *ring_ptr(const struct virtq *vq, uint64_t gpa, uint64_t len, unsigned align)
{
	if (!vq->mem || !size_ok(vq->size) || (gpa & (align - 1)))
		return NULL;
	uint8_t *p = guest_mem_ptr(vq->mem, gpa, len);
	if (!p || ((uintptr_t)p & (align - 1)))
		return NULL;
	return p;
}

static uint8_t *avail_ring(const struct virtq *vq)
{
	return ring_ptr(vq, vq->avail_gpa, avail_bytes(vq->size), 2);
}

static uint8_t *used_ring(const struct virtq *vq)
{
	return ring_ptr(vq, vq->used_gpa, used_bytes(vq->size), 4);
}

static uint8_t *desc_table(const struct virtq *vq)
{
	return ring_ptr(vq, vq->desc_gpa, desc_bytes(vq->size), 16);
}

static uint16_t *ring16(uint8_t *ring, uint64_t off)
{
	return (uint16_t *)(void *)(ring + off);
}

static uint32_t *ring32(uint8_t *ring, uint64_t off)
{
	return (uint32_t *)(void *)(ring + off);
}

/* The guest writes these concurrently: atomic loads so the compiler can
 * neither tear nor re-read them. */
static uint16_t load16(uint8_t *ring, uint64_t off, int order)
{
	return le16toh(__atomic_load_n(ring16(ring, off), order));
}

static void store16(uint8_t *ring, uint64_t off, uint16_t v, int order)
{
	__atomic_store_n(ring16(ring, off), htole16(v), order);
}

static void store32(uint8_t *ring, uint64_t off, uint32_t v, int order)
{
	__atomic_store_n(ring32(ring, off), htole32(v), order);
}

static struct vdesc read_desc(const uint8_t *table, unsigned i)
{
	struct vdesc d;
	memcpy(&d, table + 16ull * i, sizeof(d));
	d.addr = le64toh(d.addr);
	d.len = le32toh(d.len);
	d.flags = le16toh(d.flags);
	d.next = le16toh(d.next);
	return d;
}

void virtq_reset(struct virtq *vq)
{
	vq->last_avail = 0;
	vq->used_idx = 0;
	vq->signalled_used = 0;
	vq->signalled_valid = false;
}

int virtq_validate(const struct virtq *vq)
{
	if (!size_ok(vq->size))
		return -1;
	if (!desc_table(vq) || !avail_ring(vq) || !used_ring(vq))
		return -1;
	return 0;
}

/* Walk state shared by the main chain and an indirect table. */
struct walk {
	struct virtq_chain *chain;
	const struct guest_mem *mem;
	bool seen_write;
};

/* Records one buffer. Zero-length buffers are checked for ordering but not
 * recorded: there is no memory to translate, and devices never have to
 * cope with an iov whose base is NULL. */
static int add_buf(struct walk *w, const struct vdesc *d)
{
	struct virtq_chain *c = w->chain;
	bool write = d->flags & VIRTQ_DESC_F_WRITE;

	if (!write && w->seen_write)
		return -1;
	w->seen_write |= write;
	if (d->len == 0)
		return 0;
	if (c->nr_out + c->nr_in >= VIRTQ_MAX_CHAIN)
		return -1;
	void *p = guest_mem_ptr(w->mem, d->addr, d->len);
	if (!p)
		return -1;
	c->iov[c->nr_out + c->nr_in] = (struct virtq_iov){ p, d->len };
	/* At most VIRTQ_MAX_CHAIN lengths below 2^32 each: no overflow. */
	if (write) {
		c->nr_in++;
		c->in_len += d->len;
	} else {
		c->nr_out++;
		c->out_len += d->len;
	}
	return 0;
}

static int walk_indirect(struct walk *w, const struct vdesc *ind)
{
	if (ind->len == 0 || ind->len % 16 != 0 || ind->len / 16 > VIRTQ_MAX_INDIRECT)
		return -1;
	const uint8_t *table = guest_mem_ptr(w->mem, ind->addr, ind->len);
	if (!table)
		return -1;
	unsigned n = ind->len / 16;

	/* The table's own entries bound the walk, so a cycle inside it ends. */
	unsigned i = 0;
	for (unsigned hops = 0;; hops++) {
		if (hops >= n)
			return -1;
		struct vdesc d = read_desc(table, i);
		if (d.flags & VIRTQ_DESC_F_INDIRECT)
			return -1;
		if (add_buf(w, &d) < 0)
			return -1;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= n)
			return -1;
		i = d.next;
	}
}

/* Zero or more direct descriptors, optionally ended by one indirect one
 * (whose WRITE flag the spec says to ignore). */
static int walk_chain(const struct virtq *vq, const uint8_t *table, uint16_t head,
		      struct virtq_chain *chain)
{
	struct walk w = { .chain = chain, .mem = vq->mem, .seen_write = false };
	unsigned i = head;

	/* A valid chain visits each descriptor at most once, so more than
	 * `size` hops means a loop. */
	for (unsigned hops = 0;; hops++) {
		if (hops >= vq->size)
			return -1;
		struct vdesc d = read_desc(table, i);
		if (d.flags & VIRTQ_DESC_F_INDIRECT) {
			if (!vq->indirect || (d.flags & VIRTQ_DESC_F_NEXT))
				return -1;
			return walk_indirect(&w, &d);
		}
		if (add_buf(&w, &d) < 0)
			return -1;
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			return 0;
		if (d.next >= vq->size)
			return -1;
		i = d.next;
	}
}

enum virtq_pop_result virtq_pop(struct virtq *vq, struct virtq_chain *chain)
{
	uint8_t *avail = avail_ring(vq);
	const uint8_t *table = desc_table(vq);
	if (!avail || !table)
		return VIRTQ_BAD_RING;

	/* Acquire pairs with the driver's release of avail->idx: the ring
	 * entry and the descriptors it points to are visible after it. */
	uint16_t avail_idx = load16(avail, AVAIL_IDX, __ATOMIC_ACQUIRE);
	uint16_t pending = (uint16_t)(avail_idx - vq->last_avail);
	if (pending == 0)
		return VIRTQ_EMPTY;
	if (pending > vq->size)
		return VIRTQ_BAD_RING;

	uint16_t slot = vq->last_avail & (vq->size - 1);
	uint16_t head = load16(avail, AVAIL_RING + 2ull * slot, __ATOMIC_RELAXED);
	/* Without a valid head there is nothing the device could complete. */
	if (head >= vq->size)
		return VIRTQ_BAD_RING;

	vq->last_avail++;
	chain->head = head;
	chain->nr_out = chain->nr_in = 0;
	chain->out_len = chain->in_len = 0;
	if (walk_chain(vq, table, head, chain) < 0) {
		/* No partial chain leaks to a device that ignores the result. */
		chain->nr_out = chain->nr_in = 0;
		chain->out_len = chain->in_len = 0;
		return VIRTQ_BAD_CHAIN;
	}
	return VIRTQ_OK;
}

void virtq_unpop(struct virtq *vq, uint16_t n)
{
	vq->last_avail = (uint16_t)(vq->last_avail - n);
}

void virtq_push(struct virtq *vq, uint16_t head, uint32_t len)
{
	uint8_t *used = used_ring(vq);
	/* Only reachable if the transport skipped virtq_validate(); there is
	 * no ring to complete into. */
	if (!used)
		return;

	uint64_t elem = USED_RING + (uint64_t)USED_ELEM_SIZE * (vq->used_idx & (vq->size - 1));
	store32(used, elem, head, __ATOMIC_RELAXED);
	store32(used, elem + 4, len, __ATOMIC_RELAXED);
	vq->used_idx++;
	/* Release: the driver that sees the new index sees the element. */
	store16(used, USED_IDX, vq->used_idx, __ATOMIC_RELEASE);
}

bool virtq_should_notify(struct virtq *vq)
{
	uint8_t *avail = avail_ring(vq);
	/* A spurious interrupt is harmless, a missing one can hang the guest. */
	if (!avail)
		return true;

	/* Order the used->idx store before the loads of used_event/flags,
	 * pairing with the driver's barrier between writing used_event and
	 * re-reading used->idx; otherwise both sides may decide to wait. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);

	if (!vq->event_idx)
		return !(load16(avail, AVAIL_FLAGS, __ATOMIC_RELAXED) & VIRTQ_AVAIL_F_NO_INTERRUPT);

	/* Notify if used_event lies in [old, new): the used index moved past
	 * the entry the driver waits for since we last decided. Batches that
	 * did not cross it never will, so `old` advances either way. Without
	 * a known previous decision (after reset) we cannot tell: notify. */
	uint16_t old = vq->signalled_used;
	uint16_t new = vq->used_idx;
	bool valid = vq->signalled_valid;
	vq->signalled_used = new;
	vq->signalled_valid = true;
	if (!valid)
		return true;
	uint16_t event = load16(avail, AVAIL_RING + 2ull * vq->size, __ATOMIC_RELAXED);
	return (uint16_t)(new - event - 1) < (uint16_t)(new - old);
}

bool virtq_enable_notify(struct virtq *vq, bool enable)
{
	uint8_t *used = used_ring(vq);
	if (!used)
		return false;

	if (vq->event_idx) {
		/* With EVENT_IDX the driver ignores used->flags. Disabling is
		 * just leaving avail_event behind: the driver kicks only when
		 * it crosses it, and enable moves it up again. */
		if (!enable)
			return virtq_has_work(vq);
		store16(used, USED_RING + (uint64_t)USED_ELEM_SIZE * vq->size, vq->last_avail,
			__ATOMIC_RELAXED);
	} else {
		store16(used, USED_FLAGS, enable ? 0 : VIRTQ_USED_F_NO_NOTIFY, __ATOMIC_RELAXED);
		if (!enable)
			return virtq_has_work(vq);
	}

	/* The driver writes avail->idx, fences, then reads our flags or
	 * avail_event; we write those, fence, then read avail->idx. With both
	 * fences at least one side sees the other's write, so a buffer added
	 * just now is either kicked or found here. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return virtq_has_work(vq);
}

bool virtq_has_work(const struct virtq *vq)
{
	uint8_t *avail = avail_ring(vq);
	if (!avail)
		return false;
	return load16(avail, AVAIL_IDX, __ATOMIC_ACQUIRE) != vq->last_avail;
}

/* Walks n buffers skipping `offset` bytes, copying into `to_flat` or out of
 * `from_flat`, whichever the direction needs. */
static size_t copy_iov(const struct virtq_iov *iov, unsigned n, size_t offset,
		       bool to_iov, uint8_t *to_flat, const uint8_t *from_flat, size_t len)
{
	size_t done = 0;
	for (unsigned i = 0; i < n && done < len; i++) {
		size_t blen = iov[i].len;
		if (offset >= blen) {
			offset -= blen;
			continue;
		}
		size_t chunk = blen - offset;
		if (chunk > len - done)
			chunk = len - done;
		uint8_t *b = (uint8_t *)iov[i].base + offset;
		if (to_iov)
			memcpy(b, from_flat + done, chunk);
		else
			memcpy(to_flat + done, b, chunk);
		done += chunk;
		offset = 0;
	}
	return done;
}

/* The clamps only matter for a chain the device filled in itself. */
size_t virtq_copy_from_out(const struct virtq_chain *c, size_t offset, void *dst, size_t len)
{
	unsigned n = c->nr_out <= VIRTQ_MAX_CHAIN ? c->nr_out : VIRTQ_MAX_CHAIN;
	return copy_iov(c->iov, n, offset, false, dst, NULL, len);
}

size_t virtq_copy_to_in(const struct virtq_chain *c, size_t offset, const void *src, size_t len)
{
	if (c->nr_out >= VIRTQ_MAX_CHAIN)
		return 0;
	unsigned n = c->nr_in;
	if (n > VIRTQ_MAX_CHAIN - c->nr_out)
		n = VIRTQ_MAX_CHAIN - c->nr_out;
	return copy_iov(c->iov + c->nr_out, n, offset, true, NULL, src, len);
}
