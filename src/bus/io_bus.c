#include "bus/io_bus.h"

#include <stdlib.h>
#include <string.h>

#include "core/log.h"

void io_bus_init(struct io_bus *bus, const char *name)
{
	memset(bus, 0, sizeof(*bus));
	bus->name = name;
	pthread_rwlock_init(&bus->lock, NULL);
}

void io_bus_destroy(struct io_bus *bus)
{
	free(bus->ranges);
	bus->ranges = NULL;
	bus->nr = bus->cap = 0;
	pthread_rwlock_destroy(&bus->lock);
}

int io_bus_register(struct io_bus *bus, uint64_t base, uint64_t len,
		    const struct io_ops *ops, void *dev, const char *name)
{
	if (len == 0 || base + len < base)
		return -1;
	int ret = -1;
	pthread_rwlock_wrlock(&bus->lock);
	unsigned pos = 0;
	while (pos < bus->nr && bus->ranges[pos].base < base)
		pos++;
	if (pos > 0) {
		const struct io_range *prev = &bus->ranges[pos - 1];
		if (prev->base + prev->len > base)
			goto out;
	}
	if (pos < bus->nr && base + len > bus->ranges[pos].base)
		goto out;
	if (bus->nr == bus->cap) {
		unsigned cap = bus->cap ? bus->cap * 2 : 16;
		struct io_range *r = realloc(bus->ranges, cap * sizeof(*r));
		if (!r)
			goto out;
		bus->ranges = r;
		bus->cap = cap;
	}
	memmove(&bus->ranges[pos + 1], &bus->ranges[pos], (bus->nr - pos) * sizeof(*bus->ranges));
	bus->ranges[pos] = (struct io_range){ base, len, ops, dev, name };
	bus->nr++;
	ret = 0;
out:
	pthread_rwlock_unlock(&bus->lock);
	return ret;
}

int io_bus_unregister(struct io_bus *bus, uint64_t base)
{
	int ret = -1;
	pthread_rwlock_wrlock(&bus->lock);
	for (unsigned i = 0; i < bus->nr; i++) {
		if (bus->ranges[i].base == base) {
			memmove(&bus->ranges[i], &bus->ranges[i + 1],
				(bus->nr - i - 1) * sizeof(*bus->ranges));
			bus->nr--;
			ret = 0;
			break;
		}
	}
	pthread_rwlock_unlock(&bus->lock);
	return ret;
}

static const struct io_range *io_bus_find(const struct io_bus *bus, uint64_t addr)
{
	unsigned lo = 0, hi = bus->nr;
	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;
		const struct io_range *r = &bus->ranges[mid];
		if (addr < r->base)
			hi = mid;
		else if (addr - r->base >= r->len)
			lo = mid + 1;
		else
			return r;
	}
	return NULL;
}

bool io_bus_access(struct io_bus *bus, uint64_t addr, void *data, unsigned len, bool is_write)
{
	pthread_rwlock_rdlock(&bus->lock);
	const struct io_range *r = io_bus_find(bus, addr);
	struct io_range hit;
	bool found = r && len <= r->len - (addr - r->base);
	if (found)
		hit = *r;
	pthread_rwlock_unlock(&bus->lock);

	/* The handler runs unlocked: a config-space write may move a BAR and
	 * re-register ranges on this very bus. Devices outlive every access
	 * because they are destroyed only after the vCPUs have stopped. */
	if (found) {
		if (is_write)
			hit.ops->write(hit.dev, addr - hit.base, data, len);
		else
			hit.ops->read(hit.dev, addr - hit.base, data, len);
		return true;
	}

	if (is_write) {
		atomic_fetch_add(&bus->unclaimed_writes, 1);
	} else {
		memset(data, 0xff, len);
		atomic_fetch_add(&bus->unclaimed_reads, 1);
	}
	if (!atomic_exchange(&bus->unclaimed_logged, true))
		log_info("unclaimed %s %s at 0x%llx (%u bytes): %s; further ones are only counted",
			 bus->name, is_write ? "write" : "read", (unsigned long long)addr, len,
			 is_write ? "ignored" : "reads all-ones");
	else
		log_debug("unclaimed %s %s at 0x%llx (%u bytes)", bus->name,
			  is_write ? "write" : "read", (unsigned long long)addr, len);
	return false;
}
