/* vhost-net start/stop; see vhost_net.h for the sequence. */
#include "net/vhost_net.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/vhost.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "virtio/virtio.h"

#define VIRTIO_NET_F_MRG_RXBUF 15

static int sys_open(const char *path, int flags) { return open(path, flags); }
static int sys_ioctl(int fd, unsigned long req, void *arg) { return ioctl(fd, req, arg); }
static int sys_close(int fd) { return close(fd); }

const struct vhost_io vhost_io_system = { sys_open, sys_ioctl, sys_close };

uint64_t vhost_net_ring_features(uint64_t guest_features)
{
	return guest_features & (VIRTIO_BIT(VIRTIO_NET_F_MRG_RXBUF) | VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) |
				 VIRTIO_BIT(VIRTIO_F_EVENT_IDX) | VIRTIO_BIT(VIRTIO_F_VERSION_1));
}

/* One ioctl; on failure records which one and returns -errno. */
static int vh_ioctl(struct vhost_net *vn, int fd, unsigned long req, void *arg, const char *what)
{
	if (vn->io->ioctl(fd, req, arg) == 0)
		return 0;
	int e = errno ? errno : EIO;
	snprintf(vn->err, sizeof(vn->err), "%s: %s", what, strerror(e));
	return -e;
}

static int set_mem_table(struct vhost_net *vn, int fd, const struct guest_mem *mem)
{
	struct vhost_memory *m = calloc(1, sizeof(*m) + mem->nr_regions * sizeof(m->regions[0]));
	if (!m)
		return -ENOMEM;
	m->nregions = mem->nr_regions;
	for (unsigned i = 0; i < mem->nr_regions; i++) {
		m->regions[i].guest_phys_addr = mem->regions[i].gpa;
		m->regions[i].memory_size = mem->regions[i].size;
		m->regions[i].userspace_addr = (uint64_t)(uintptr_t)mem->regions[i].host;
	}
	int ret = vh_ioctl(vn, fd, VHOST_SET_MEM_TABLE, m, "VHOST_SET_MEM_TABLE");
	free(m);
	return ret;
}

static int set_ring(struct vhost_net *vn, int fd, unsigned index, const struct guest_mem *mem,
		    const struct vhost_net_ring *r)
{
	struct vhost_vring_state num = { .index = index, .num = r->num };
	struct vhost_vring_state base = { .index = index, .num = r->base };
	/* The transport validated the rings when the driver enabled them;
	 * translate again with their full lengths all the same. */
	void *desc = guest_mem_ptr(mem, r->desc_gpa, 16ull * r->num);
	void *avail = guest_mem_ptr(mem, r->avail_gpa, 6ull + 2ull * r->num);
	void *used = guest_mem_ptr(mem, r->used_gpa, 6ull + 8ull * r->num);
	if (!r->num || !desc || !avail || !used) {
		snprintf(vn->err, sizeof(vn->err), "ring %u outside guest RAM", index);
		return -EINVAL;
	}
	struct vhost_vring_addr addr = {
		.index = index,
		.desc_user_addr = (uint64_t)(uintptr_t)desc,
		.used_user_addr = (uint64_t)(uintptr_t)used,
		.avail_user_addr = (uint64_t)(uintptr_t)avail,
	};
	struct vhost_vring_file kick = { .index = index, .fd = r->kick_fd };
	struct vhost_vring_file call = { .index = index, .fd = r->call_fd };
	int ret;
	if ((ret = vh_ioctl(vn, fd, VHOST_SET_VRING_NUM, &num, "VHOST_SET_VRING_NUM")) ||
	    (ret = vh_ioctl(vn, fd, VHOST_SET_VRING_BASE, &base, "VHOST_SET_VRING_BASE")) ||
	    (ret = vh_ioctl(vn, fd, VHOST_SET_VRING_ADDR, &addr, "VHOST_SET_VRING_ADDR")) ||
	    (ret = vh_ioctl(vn, fd, VHOST_SET_VRING_KICK, &kick, "VHOST_SET_VRING_KICK")) ||
	    (ret = vh_ioctl(vn, fd, VHOST_SET_VRING_CALL, &call, "VHOST_SET_VRING_CALL")))
		return ret;
	return 0;
}

/* Detaches both rings of one handle from their tap; failures are ignored
 * (closing the handle detaches too). Reads the bases if `rings`. */
static void stop_pair(struct vhost_net *vn, int fd, struct vhost_net_ring *rings)
{
	for (unsigned i = 0; i < 2; i++) {
		struct vhost_vring_file be = { .index = i, .fd = -1 };
		vn->io->ioctl(fd, VHOST_NET_SET_BACKEND, &be);
	}
	for (unsigned i = 0; rings && i < 2; i++) {
		struct vhost_vring_state st = { .index = i };
		if (vn->io->ioctl(fd, VHOST_GET_VRING_BASE, &st) == 0)
			rings[i].base = (uint16_t)st.num;
	}
	vn->io->close(fd);
}

static int start_pair(struct vhost_net *vn, int fd, const struct guest_mem *mem, uint64_t features,
		      const struct vhost_net_ring *rings, int tap_fd)
{
	uint64_t have = 0, want = vhost_net_ring_features(features);
	int ret;
	if ((ret = vh_ioctl(vn, fd, VHOST_SET_OWNER, NULL, "VHOST_SET_OWNER")) ||
	    (ret = vh_ioctl(vn, fd, VHOST_GET_FEATURES, &have, "VHOST_GET_FEATURES")))
		return ret;
	if (want & ~have) {
		snprintf(vn->err, sizeof(vn->err), "the kernel lacks features 0x%llx",
			 (unsigned long long)(want & ~have));
		return -EOPNOTSUPP;
	}
	if ((ret = vh_ioctl(vn, fd, VHOST_SET_FEATURES, &want, "VHOST_SET_FEATURES")) ||
	    (ret = set_mem_table(vn, fd, mem)) ||
	    (ret = set_ring(vn, fd, 0, mem, &rings[0])) ||
	    (ret = set_ring(vn, fd, 1, mem, &rings[1])))
		return ret;
	for (unsigned i = 0; i < 2; i++) {
		struct vhost_vring_file be = { .index = i, .fd = tap_fd };
		if ((ret = vh_ioctl(vn, fd, VHOST_NET_SET_BACKEND, &be, "VHOST_NET_SET_BACKEND")))
			return ret;
	}
	return 0;
}

int vhost_net_start(struct vhost_net *vn, const struct vhost_io *io, const struct guest_mem *mem,
		    uint64_t features, unsigned nr_pairs, const struct vhost_net_ring *rings,
		    const int *tap_fds)
{
	vn->io = io;
	vn->nr_pairs = 0;
	vn->err[0] = 0;
	vn->open_failed = false;
	if (nr_pairs == 0 || nr_pairs > NET_MAX_QUEUES) {
		snprintf(vn->err, sizeof(vn->err), "%u queue pairs", nr_pairs);
		return -EINVAL;
	}
	for (unsigned p = 0; p < nr_pairs; p++) {
		if (tap_fds[p] < 0) {
			snprintf(vn->err, sizeof(vn->err), "queue pair %u has no tap", p);
			vhost_net_stop(vn, NULL);
			return -EINVAL;
		}
		int fd = io->open(VHOST_NET_DEV, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			int e = errno ? errno : EIO;
			snprintf(vn->err, sizeof(vn->err), "%s: %s", VHOST_NET_DEV, strerror(e));
			vn->open_failed = true;
			vhost_net_stop(vn, NULL);
			return -e;
		}
		int ret = start_pair(vn, fd, mem, features, &rings[2 * p], tap_fds[p]);
		if (ret) {
			stop_pair(vn, fd, NULL);
			vhost_net_stop(vn, NULL);
			return ret;
		}
		vn->fds[vn->nr_pairs++] = fd;
	}
	return 0;
}

void vhost_net_stop(struct vhost_net *vn, struct vhost_net_ring *rings)
{
	for (unsigned p = 0; p < vn->nr_pairs; p++)
		stop_pair(vn, vn->fds[p], rings ? &rings[2 * p] : NULL);
	vn->nr_pairs = 0;
}
