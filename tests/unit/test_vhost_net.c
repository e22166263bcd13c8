/* vhost-net start/stop against a fake kernel: the exact ioctl sequence and
 * arguments, and unwinding when a step fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <linux/vhost.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "net/vhost_net.h"
#include "virtio/virtio.h"

#define MiB (1024ull * 1024)

/* ---- the fake kernel ---------------------------------------------------- */

enum call_kind { C_OPEN, C_IOCTL, C_CLOSE };

struct call {
	enum call_kind kind;
	int fd;
	unsigned long req;
	uint64_t u64;
	struct vhost_vring_state state;
	struct vhost_vring_addr addr;
	struct vhost_vring_file file;
	unsigned nregions;
	struct vhost_memory_region regions[GUEST_MEM_MAX_REGIONS];
};

static struct {
	struct call calls[256];
	unsigned n;
	int next_fd;
	int open_errno;            /* fail open with this */
	int fail_at;               /* fail the n-th ioctl (1-based); 0 = never */
	int fail_errno;
	uint64_t kernel_features;
	unsigned open_fds;
} k;

static int f_open(const char *path, int flags)
{
	(void)flags;
	assert_string_equal(path, "/dev/vhost-net");
	if (k.open_errno) {
		errno = k.open_errno;
		return -1;
	}
	struct call *c = &k.calls[k.n++];
	*c = (struct call){ .kind = C_OPEN, .fd = k.next_fd++ };
	k.open_fds++;
	return c->fd;
}

static unsigned ioctls_seen(void)
{
	unsigned n = 0;
	for (unsigned i = 0; i < k.n; i++)
		n += k.calls[i].kind == C_IOCTL;
	return n;
}

static int f_ioctl(int fd, unsigned long req, void *arg)
{
	struct call *c = &k.calls[k.n++];
	*c = (struct call){ .kind = C_IOCTL, .fd = fd, .req = req };
	switch (req) {
	case VHOST_GET_FEATURES:
		*(uint64_t *)arg = k.kernel_features;
		break;
	case VHOST_SET_FEATURES:
		c->u64 = *(uint64_t *)arg;
		break;
	case VHOST_SET_MEM_TABLE: {
		struct vhost_memory *m = arg;
		c->nregions = m->nregions;
		assert_true(m->nregions <= GUEST_MEM_MAX_REGIONS);
		memcpy(c->regions, m->regions, m->nregions * sizeof(m->regions[0]));
		break;
	}
	case VHOST_SET_VRING_NUM:
	case VHOST_SET_VRING_BASE:
		c->state = *(struct vhost_vring_state *)arg;
		break;
	case VHOST_GET_VRING_BASE: {
		struct vhost_vring_state *s = arg;
		c->state = *s;
		s->num = 40 + s->index + 10u * (unsigned)(fd - 100);
		break;
	}
	case VHOST_SET_VRING_ADDR:
		c->addr = *(struct vhost_vring_addr *)arg;
		break;
	case VHOST_SET_VRING_KICK:
	case VHOST_SET_VRING_CALL:
	case VHOST_NET_SET_BACKEND:
		c->file = *(struct vhost_vring_file *)arg;
		break;
	case VHOST_SET_OWNER:
		assert_null(arg);
		break;
	default:
		fail_msg("unexpected ioctl 0x%lx", req);
	}
	if (k.fail_at && (int)ioctls_seen() == k.fail_at) {
		errno = k.fail_errno;
		return -1;
	}
	return 0;
}

static int f_close(int fd)
{
	struct call *c = &k.calls[k.n++];
	*c = (struct call){ .kind = C_CLOSE, .fd = fd };
	k.open_fds--;
	return 0;
}

static const struct vhost_io fake_io = { f_open, f_ioctl, f_close };

/* ---- fixture: two RAM regions, two queue pairs ---------------------------- */

static uint8_t *host;
static struct guest_mem mem;
static struct vhost_net_ring rings[4];
static const int taps[2] = { 7, 8 };
static const uint64_t features = VIRTIO_BIT(VIRTIO_F_VERSION_1) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX) |
				 VIRTIO_BIT(15) /* MRG_RXBUF */ | VIRTIO_BIT(5) /* MAC */ |
				 VIRTIO_BIT(0) /* CSUM */;

static int setup(void **state)
{
	(void)state;
	memset(&k, 0, sizeof(k));
	k.next_fd = 100;
	k.kernel_features = VIRTIO_BIT(VIRTIO_F_VERSION_1) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX) |
			    VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) | VIRTIO_BIT(15) | VIRTIO_BIT(27) |
			    VIRTIO_BIT(VHOST_NET_F_VIRTIO_NET_HDR);
	host = aligned_alloc(4096, 4 * MiB);
	memset(&mem, 0, sizeof(mem));
	assert_int_equal(guest_mem_add_region(&mem, 0, 2 * MiB, host), 0);
	assert_int_equal(guest_mem_add_region(&mem, 4 * MiB, 2 * MiB, host + 2 * MiB), 0);
	for (unsigned i = 0; i < 4; i++)
		rings[i] = (struct vhost_net_ring){
			.num = 256, .base = (uint16_t)(i * 3),
			.desc_gpa = 0x10000 + i * 0x10000ull,
			.avail_gpa = 0x14000 + i * 0x10000ull,
			/* ring 3's used ring in the second region */
			.used_gpa = (i == 3 ? 4 * MiB : 0) + 0x18000 + i * 0x10000ull,
			.kick_fd = 50 + (int)i, .call_fd = 60 + (int)i,
		};
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	free(host);
	return 0;
}

static unsigned pos;

static const struct call *next_call(enum call_kind kind, int fd, unsigned long req)
{
	assert_true(pos < k.n);
	const struct call *c = &k.calls[pos++];
	assert_int_equal(c->kind, kind);
	assert_int_equal(c->fd, fd);
	if (kind == C_IOCTL)
		assert_int_equal(c->req, req);
	return c;
}

static void expect_ring(int fd, unsigned index, const struct vhost_net_ring *r)
{
	const struct call *c = next_call(C_IOCTL, fd, VHOST_SET_VRING_NUM);
	assert_int_equal(c->state.index, index);
	assert_int_equal(c->state.num, r->num);
	c = next_call(C_IOCTL, fd, VHOST_SET_VRING_BASE);
	assert_int_equal(c->state.index, index);
	assert_int_equal(c->state.num, r->base);
	c = next_call(C_IOCTL, fd, VHOST_SET_VRING_ADDR);
	assert_int_equal(c->addr.index, index);
	assert_int_equal(c->addr.flags, 0);
	assert_int_equal(c->addr.desc_user_addr, (uintptr_t)guest_mem_ptr(&mem, r->desc_gpa, 1));
	assert_int_equal(c->addr.avail_user_addr, (uintptr_t)guest_mem_ptr(&mem, r->avail_gpa, 1));
	assert_int_equal(c->addr.used_user_addr, (uintptr_t)guest_mem_ptr(&mem, r->used_gpa, 1));
	c = next_call(C_IOCTL, fd, VHOST_SET_VRING_KICK);
	assert_int_equal(c->file.index, index);
	assert_int_equal(c->file.fd, r->kick_fd);
	c = next_call(C_IOCTL, fd, VHOST_SET_VRING_CALL);
	assert_int_equal(c->file.index, index);
	assert_int_equal(c->file.fd, r->call_fd);
}

static void expect_pair_start(int fd, unsigned p)
{
	next_call(C_OPEN, fd, 0);
	next_call(C_IOCTL, fd, VHOST_SET_OWNER);
	next_call(C_IOCTL, fd, VHOST_GET_FEATURES);
	const struct call *c = next_call(C_IOCTL, fd, VHOST_SET_FEATURES);
	/* Only the ring features; the tap keeps the header (no VNET_HDR). */
	assert_int_equal(c->u64, VIRTIO_BIT(VIRTIO_F_VERSION_1) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX) |
					 VIRTIO_BIT(15));
	c = next_call(C_IOCTL, fd, VHOST_SET_MEM_TABLE);
	assert_int_equal(c->nregions, 2);
	for (unsigned i = 0; i < 2; i++) {
		assert_int_equal(c->regions[i].guest_phys_addr, mem.regions[i].gpa);
		assert_int_equal(c->regions[i].memory_size, mem.regions[i].size);
		assert_int_equal(c->regions[i].userspace_addr, (uintptr_t)mem.regions[i].host);
	}
	expect_ring(fd, 0, &rings[2 * p]);
	expect_ring(fd, 1, &rings[2 * p + 1]);
	for (unsigned i = 0; i < 2; i++) {
		c = next_call(C_IOCTL, fd, VHOST_NET_SET_BACKEND);
		assert_int_equal(c->file.index, i);
		assert_int_equal(c->file.fd, taps[p]);
	}
}

static void expect_pair_stop(int fd, bool bases)
{
	for (unsigned i = 0; i < 2; i++) {
		const struct call *c = next_call(C_IOCTL, fd, VHOST_NET_SET_BACKEND);
		assert_int_equal(c->file.index, i);
		assert_int_equal(c->file.fd, -1);
	}
	for (unsigned i = 0; bases && i < 2; i++) {
		const struct call *c = next_call(C_IOCTL, fd, VHOST_GET_VRING_BASE);
		assert_int_equal(c->state.index, i);
	}
	next_call(C_CLOSE, fd, 0);
}

static void test_start_stop_sequence(void **state)
{
	(void)state;
	struct vhost_net vn = { 0 };
	pos = 0;
	assert_int_equal(vhost_net_start(&vn, &fake_io, &mem, features, 2, rings, taps), 0);
	assert_int_equal(vn.nr_pairs, 2);
	expect_pair_start(100, 0);
	expect_pair_start(101, 1);
	assert_int_equal(pos, k.n);

	vhost_net_stop(&vn, rings);
	expect_pair_stop(100, true);
	expect_pair_stop(101, true);
	assert_int_equal(pos, k.n);
	assert_int_equal(k.open_fds, 0);
	assert_int_equal(vn.nr_pairs, 0);
	/* Where the kernel stopped (the fake says 40 + index + 10 * pair). */
	assert_int_equal(rings[0].base, 40);
	assert_int_equal(rings[1].base, 41);
	assert_int_equal(rings[2].base, 50);
	assert_int_equal(rings[3].base, 51);
	/* Idempotent. */
	unsigned n = k.n;
	vhost_net_stop(&vn, rings);
	assert_int_equal(k.n, n);
}

static void test_open_enoent(void **state)
{
	(void)state;
	struct vhost_net vn = { 0 };
	k.open_errno = ENOENT;
	assert_int_equal(vhost_net_start(&vn, &fake_io, &mem, features, 1, rings, taps), -ENOENT);
	assert_true(vn.open_failed);
	assert_string_equal(vn.err, "/dev/vhost-net: No such file or directory");
	assert_int_equal(k.n, 0);
	assert_int_equal(vn.nr_pairs, 0);
}

/* Every ioctl of a two-pair start failing in turn: the error comes back,
 * every handle is closed, started pairs are detached from their taps. */
static void test_fail_each_step(void **state)
{
	(void)state;
	const unsigned per_pair = 4 + 2 * 5 + 2;   /* ioctls in one pair's start */
	for (unsigned step = 1; step <= 2 * per_pair; step++) {
		memset(k.calls, 0, sizeof(k.calls));
		k.n = 0;
		k.next_fd = 100;
		k.open_fds = 0;
		k.fail_at = (int)step;
		k.fail_errno = EINVAL;
		struct vhost_net vn = { 0 };
		int ret = vhost_net_start(&vn, &fake_io, &mem, features, 2, rings, taps);
		assert_int_equal(ret, -EINVAL);
		assert_int_equal(vn.nr_pairs, 0);
		assert_int_equal(k.open_fds, 0);
		assert_true(vn.err[0] != 0);
		assert_false(vn.open_failed);
		/* The failing call was the last ioctl on its handle before the
		 * detach-and-close. */
		const struct call *last = &k.calls[k.n - 1];
		assert_int_equal(last->kind, C_CLOSE);
		if (step > per_pair) {
			/* Pair 0 had started: detached (SET_BACKEND -1) then closed. */
			bool detached = false, closed = false;
			for (unsigned i = 0; i < k.n; i++) {
				const struct call *c = &k.calls[i];
				if (c->fd == 100 && c->kind == C_IOCTL && c->req == VHOST_NET_SET_BACKEND &&
				    c->file.fd == -1)
					detached = true;
				if (c->fd == 100 && c->kind == C_CLOSE)
					closed = detached;
			}
			assert_true(closed);
		}
		/* Nothing after the failure touches the failing handle but the
		 * detach and close. */
		int fail_fd = step > per_pair ? 101 : 100;
		unsigned seen = 0;
		for (unsigned i = 0; i < k.n; i++) {
			const struct call *c = &k.calls[i];
			if (c->kind == C_IOCTL && ++seen == step) {
				assert_int_equal(c->fd, fail_fd);
				for (unsigned j = i + 1; j < k.n; j++)
					if (k.calls[j].fd == fail_fd)
						assert_true(k.calls[j].kind == C_CLOSE ||
							    k.calls[j].req == VHOST_NET_SET_BACKEND);
			}
		}
	}
}

static void test_kernel_lacks_feature(void **state)
{
	(void)state;
	struct vhost_net vn = { 0 };
	k.kernel_features &= ~VIRTIO_BIT(VIRTIO_F_EVENT_IDX);
	assert_int_equal(vhost_net_start(&vn, &fake_io, &mem, features, 1, rings, taps), -EOPNOTSUPP);
	assert_int_equal(k.open_fds, 0);
	/* Without EVENT_IDX negotiated it works. */
	assert_int_equal(vhost_net_start(&vn, &fake_io, &mem, features & ~VIRTIO_BIT(VIRTIO_F_EVENT_IDX), 1,
					 rings, taps), 0);
	vhost_net_stop(&vn, NULL);
	assert_int_equal(k.open_fds, 0);
}

static void test_ring_outside_ram(void **state)
{
	(void)state;
	struct vhost_net vn = { 0 };
	rings[1].used_gpa = 2 * MiB - 8;   /* runs into the hole */
	assert_int_equal(vhost_net_start(&vn, &fake_io, &mem, features, 1, rings, taps), -EINVAL);
	assert_int_equal(k.open_fds, 0);
	for (unsigned i = 0; i < k.n; i++)
		assert_false(k.calls[i].kind == C_IOCTL && k.calls[i].req == VHOST_NET_SET_BACKEND &&
			     k.calls[i].file.fd >= 0);
}

static void test_no_tap(void **state)
{
	(void)state;
	struct vhost_net vn = { 0 };
	const int bad[2] = { 7, -1 };
	assert_int_equal(vhost_net_start(&vn, &fake_io, &mem, features, 2, rings, bad), -EINVAL);
	assert_int_equal(k.open_fds, 0);
	assert_int_equal(vhost_net_start(&vn, &fake_io, &mem, features, 0, rings, bad), -EINVAL);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_start_stop_sequence),
		T(test_open_enoent),
		T(test_fail_each_step),
		T(test_kernel_lacks_feature),
		T(test_ring_outside_ram),
		T(test_no_tap),
	};
	return cmocka_run_group_tests_name("vhost_net", tests, NULL, NULL);
}
