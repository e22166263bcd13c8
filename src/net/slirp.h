/* User-mode networking (libslirp): what slirp.c shows beyond net.h, for
 * tests and statistics. */
#ifndef KESTREL_NET_SLIRP_H
#define KESTREL_NET_SLIRP_H

#include <stdint.h>

#include "net/net.h"

/* Frames slirp had for the guest that wait for recv(); more are dropped. */
#define NET_USER_RXQ_LEN 512

/* Frames dropped so far because that queue was full (the guest did not
 * take them fast enough). `be` must be a user backend. */
uint64_t net_user_rxq_dropped(const struct net_backend *be);

#endif
