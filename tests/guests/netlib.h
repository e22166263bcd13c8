/*
 * The NIC-independent half of the networking micro-guests (virtio-net,
 * e1000): the echo test, the TX and RX benchmarks and their output. A
 * driver fills in struct nic_ops; everything here runs in ring 3 and
 * touches the NIC only through those calls, so the trap count the driver
 * keeps is the whole cost of the data path.
 *
 * cmdline (shared):
 *   mode=echo|tx|rx    (default echo)
 *   count=N            frames (echo default 200, tx 100000, rx 100000)
 *   size=S             tx: frame length without FCS, 60..1514 (default 1514)
 *   peer=MAC           destination MAC (default ff:ff:ff:ff:ff:ff)
 *   window=N           echo: frames in flight (default 16)
 *   batch=N            tx/rx: frames per doorbell (default 32)
 *   wait_s=N           echo: how long to probe for the peer; rx: how long
 *                      to wait for the first frame (default 60)
 *   idle_ms=N          rx: stop after this long without a frame (default 2000)
 *   seconds=N          tx, rx: stop after N seconds (tx: from the first frame
 *                      sent, rx: from the first received); count is then
 *                      unlimited unless given
 *   go                 tx: wait for a 'G' frame (netpeer sink --go) first
 * Output lines (stable, for regexes):
 *   NAME: echo OK/N frames ok (MIN..MAX bytes)
 *   NAME: tx: frames=N size=S us=U pps=P MBps=X.XX traps=T traps_per_pkt=X.XXXX
 *   NAME: tx: go
 *   NAME: rx: ready
 *   NAME: rx: frames=N size=S us=U pps=P MBps=X.XX traps=T traps_per_pkt=X.XXXX lost=L bad=B
 */
#ifndef NETLIB_H
#define NETLIB_H

#include "rt.h"
#include "../net/netproto.h"

struct nic_ops {
	const char *name;
	/* A free TX slot for a frame sent as `layout` (0: one buffer, 1: two,
	 * 2: three pieces), or NULL when the ring is full. The frame goes at
	 * the returned address (room for 1514 bytes). */
	uint8_t *(*tx_slot)(void *nic, unsigned layout);
	/* Queues the frame written into the last slot (not yet visible). */
	void (*tx_queue)(void *nic, uint32_t len, unsigned layout);
	/* Makes the queued frames visible and rings the doorbell (if needed). */
	void (*tx_kick)(void *nic);
	/* Reclaims sent frames; returns how many. <0: the device failed. */
	int (*tx_reap)(void *nic);
	/* One received frame: its length (and *frame), 0 if none, <0 on a
	 * device error (the driver printed why). Valid until rx_put. */
	int (*rx_get)(void *nic, const uint8_t **frame);
	/* Gives the last frame's buffer(s) back (visible after rx_kick). */
	void (*rx_put)(void *nic);
	void (*rx_kick)(void *nic);
	/* Register accesses and doorbells the driver did so far. */
	uint64_t (*traps)(void *nic);
	/* Optional: prints the device and ring state (after a stall). */
	void (*diag)(void *nic);
};

struct nic {
	const struct nic_ops *ops;
	void *drv;
	uint8_t mac[6];
};

/* Runs the mode the cmdline asks for; returns 0 on success. */
int netlib_run(struct nic *n);

/* Pieces the drivers' own checks use. */
extern uint8_t netlib_peer[6];                 /* the echo peer's MAC, once known */
/* Sends one probe (kind 'P', `seq`) and waits up to timeout_us for its
 * echo; other frames are dropped. True if it came back. */
bool netlib_probe(struct nic *n, uint32_t seq, uint64_t timeout_us);
void netlib_print_mac(const char *prefix, const uint8_t *mac);
bool netlib_parse_mac(const char *s, uint8_t *mac);
/* "%lu.%0*lu" of num/den with `digits` decimals. */
void netlib_fixed(char *out, uint64_t num, uint64_t den, int digits);

#endif
