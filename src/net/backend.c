/* Picks the backend a --net option asks for. */
#include "core/config.h"
#include "core/log.h"
#include "net/net.h"

struct net_backend *net_backend_create(const struct net_config *nc, const char *vm_name,
				       struct loop *loop, unsigned want_queues)
{
	(void)vm_name;
	if (want_queues == 0)
		want_queues = 1;
	if (want_queues > NET_MAX_QUEUES)
		want_queues = NET_MAX_QUEUES;
	switch (nc->kind) {
	case NET_KIND_TAP:
	case NET_KIND_BRIDGE:
		return net_tap_create(nc, loop, want_queues);
	case NET_KIND_USER:
		return net_user_create(nc, loop);
	}
	log_err("net: unknown backend kind %d", (int)nc->kind);
	return NULL;
}

void net_backend_destroy(struct net_backend *be)
{
	if (be)
		be->ops->destroy(be);
}
