#include "bus/msix.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "bus/pci.h"
#include "core/log.h"
#include "x86/irq.h"

#define PCI_CAP_ID_MSIX     0x11
#define MSIX_CTRL_ENABLE    0x8000
#define MSIX_CTRL_MASKALL   0x4000
#define MSIX_ENTRY_MASKED   0x1

static uint16_t msix_ctrl(const struct msix *m)
{
	uint16_t v;
	memcpy(&v, &m->pci->cfg[m->cap + 2], 2);
	return v;
}

bool msix_enabled(struct msix *m)
{
	/* Config space changes under the bus lock; a torn read of a 16-bit
	 * value cannot happen on x86, and a stale one only delays a switch. */
	return msix_ctrl(m) & MSIX_CTRL_ENABLE;
}

int msix_init(struct msix *m, struct vm *vm, struct pci_device *d, unsigned nr, int bar)
{
	memset(m, 0, sizeof(*m));
	if (nr == 0 || nr > MSIX_MAX_VECTORS)
		return -EINVAL;
	m->vm = vm;
	m->pci = d;
	m->nr = nr;
	pthread_mutex_init(&m->lock, NULL);
	for (unsigned i = 0; i < nr; i++) {
		m->gsi[i] = -1;
		m->efd[i] = -1;
		m->table[i].ctrl = MSIX_ENTRY_MASKED; /* reset state: masked */
	}
	m->cap = pci_device_add_cap(d, PCI_CAP_ID_MSIX, 12);
	if (!m->cap) {
		pthread_mutex_destroy(&m->lock);
		return -ENOSPC;
	}
	uint16_t ctrl = (uint16_t)(nr - 1);
	uint32_t table = MSIX_TABLE_OFFSET | (uint32_t)bar, pba = MSIX_PBA_OFFSET | (uint32_t)bar;
	memcpy(&d->cfg[m->cap + 2], &ctrl, 2);
	memcpy(&d->cfg[m->cap + 4], &table, 4);
	memcpy(&d->cfg[m->cap + 8], &pba, 4);
	d->wmask[m->cap + 3] = 0xc0; /* Enable, Function Mask */
	for (unsigned i = 0; i < nr; i++) {
		m->efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (m->efd[i] < 0)
			goto fail;
		if (!vm)
			continue;
		m->gsi[i] = irq_msi_alloc(vm);
		if (m->gsi[i] < 0 || irq_irqfd_assign(vm, m->efd[i], (uint32_t)m->gsi[i]))
			goto fail;
	}
	return 0;
fail:
	msix_destroy(m);
	return -EIO;
}

void msix_destroy(struct msix *m)
{
	for (unsigned i = 0; i < m->nr; i++) {
		if (m->vm && m->gsi[i] >= 0 && m->efd[i] >= 0)
			irq_irqfd_deassign(m->vm, m->efd[i], (uint32_t)m->gsi[i]);
		if (m->efd[i] >= 0)
			close(m->efd[i]);
		m->efd[i] = -1;
	}
	if (m->nr)
		pthread_mutex_destroy(&m->lock);
	m->nr = 0;
}

/* Caller holds m->lock. */
static bool vector_masked(const struct msix *m, unsigned v)
{
	return (msix_ctrl(m) & MSIX_CTRL_MASKALL) || (m->table[v].ctrl & MSIX_ENTRY_MASKED);
}

static void fire(struct msix *m, unsigned v)
{
	uint64_t one = 1;
	ssize_t w = write(m->efd[v], &one, sizeof(one));
	(void)w;
	m->fired++;
}

/* Caller holds m->lock. KVM_SET_GSI_ROUTING is costly and drivers program
 * entries while they are masked, so routes follow the table only for
 * unmasked vectors (irq_msi_set skips unchanged ones). */
static void msix_sync_route(struct msix *m, unsigned v)
{
	const struct msix_entry *e = &m->table[v];
	if (m->vm && m->gsi[v] >= 0 && !vector_masked(m, v))
		irq_msi_set(m->vm, (uint32_t)m->gsi[v], ((uint64_t)e->addr_hi << 32) | e->addr_lo, e->data);
}

/* Caller holds m->lock: deliver what became deliverable. */
static void msix_flush_pending(struct msix *m)
{
	if (!(msix_ctrl(m) & MSIX_CTRL_ENABLE))
		return;
	for (unsigned v = 0; v < m->nr; v++) {
		uint64_t bit = 1ULL << (v % 64);
		if ((m->pba[v / 64] & bit) && !vector_masked(m, v)) {
			m->pba[v / 64] &= ~bit;
			fire(m, v);
		}
	}
}

bool msix_notify(struct msix *m, unsigned vector)
{
	if (vector >= m->nr)
		return false;
	pthread_mutex_lock(&m->lock);
	bool ok = msix_ctrl(m) & MSIX_CTRL_ENABLE;
	if (ok) {
		if (vector_masked(m, vector)) {
			m->pba[vector / 64] |= 1ULL << (vector % 64);
			m->pended++;
		} else {
			fire(m, vector);
		}
	}
	pthread_mutex_unlock(&m->lock);
	return ok;
}

void msix_config_written(struct msix *m, unsigned off, unsigned len)
{
	if (off + len <= m->cap + 2 || off >= m->cap + 4)
		return;
	pthread_mutex_lock(&m->lock);
	for (unsigned v = 0; v < m->nr; v++)
		msix_sync_route(m, v);
	msix_flush_pending(m);
	pthread_mutex_unlock(&m->lock);
}

static void msix_read(void *dev, uint64_t off, void *data, unsigned len)
{
	struct msix *m = dev;
	memset(data, 0, len);
	pthread_mutex_lock(&m->lock);
	if (off < MSIX_PBA_OFFSET) {
		/* Table: dword or qword accesses inside one entry. */
		uint64_t entry = off / 16, word = (off % 16) / 4;
		if (entry < m->nr && (off % 4) == 0 && (len == 4 || (len == 8 && word % 2 == 0))) {
			const uint32_t *e = &m->table[entry].addr_lo;
			memcpy(data, &e[word], len);
		}
	} else {
		uint64_t o = off - MSIX_PBA_OFFSET;
		if (o + len <= sizeof(m->pba))
			memcpy(data, (const uint8_t *)m->pba + o, len);
	}
	pthread_mutex_unlock(&m->lock);
}

static void msix_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	struct msix *m = dev;
	if (off >= MSIX_PBA_OFFSET)
		return; /* PBA is read-only */
	uint64_t entry = off / 16, word = (off % 16) / 4;
	if (entry >= m->nr || (off % 4) != 0 || !(len == 4 || (len == 8 && word % 2 == 0)))
		return;
	pthread_mutex_lock(&m->lock);
	struct msix_entry *e = &m->table[entry];
	uint32_t *w = &e->addr_lo;
	memcpy(&w[word], data, len);
	e->ctrl &= MSIX_ENTRY_MASKED; /* other control bits are reserved */
	msix_sync_route(m, (unsigned)entry);
	msix_flush_pending(m);
	pthread_mutex_unlock(&m->lock);
}

const struct io_ops msix_io_ops = { msix_read, msix_write };
