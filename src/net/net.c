#include "net/net.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/config.h"
#include "core/log.h"

void net_stats_format(const struct net_stats *s, char *buf, size_t len)
{
#define G(f) ((unsigned long long)atomic_load_explicit(&s->f, memory_order_relaxed))
	snprintf(buf, len,
		 "tx %llu pkts %llu bytes %llu dropped, rx %llu pkts %llu bytes %llu dropped, "
		 "%llu doorbells, %llu register exits, %llu irqs, %llu throttled",
		 G(tx_packets), G(tx_bytes), G(tx_dropped), G(rx_packets), G(rx_bytes), G(rx_dropped),
		 G(doorbells), G(reg_exits), G(irqs), G(throttled));
#undef G
}

uint64_t net_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void token_bucket_init(struct token_bucket *tb, uint64_t rate, uint64_t burst, uint64_t now_ns)
{
	tb->rate = rate;
	tb->burst = burst ? burst : 1;
	tb->tokens = (int64_t)tb->burst;
	tb->last_ns = now_ns;
}

static void token_bucket_refill(struct token_bucket *tb, uint64_t now_ns)
{
	if (now_ns <= tb->last_ns)
		return;
	unsigned __int128 add = (unsigned __int128)(now_ns - tb->last_ns) * tb->rate / 1000000000ULL;
	if (add == 0)
		return;   /* keep last_ns: the fraction accumulates */
	unsigned __int128 room = (unsigned __int128)((__int128)tb->burst - tb->tokens);
	if (add >= room) {
		tb->tokens = (int64_t)tb->burst;
		tb->last_ns = now_ns;
		return;
	}
	tb->tokens += (int64_t)add;
	/* Advance by the time those whole tokens took, keeping the remainder. */
	tb->last_ns += (uint64_t)(add * 1000000000ULL / tb->rate);
}

bool token_bucket_ready(struct token_bucket *tb, uint64_t now_ns)
{
	if (!tb->rate)
		return true;
	token_bucket_refill(tb, now_ns);
	return tb->tokens > 0;
}

void token_bucket_charge(struct token_bucket *tb, uint64_t n)
{
	if (!tb->rate)
		return;
	if (n > (uint64_t)INT64_MAX / 2)
		n = (uint64_t)INT64_MAX / 2;
	tb->tokens -= (int64_t)n;
	/* Bound the debt (ten seconds' worth) so an absurd charge cannot stall
	 * a queue for long; saturate rather than overflow for huge rates. */
	uint64_t cap = tb->rate > (uint64_t)INT64_MAX / 20 ? (uint64_t)INT64_MAX / 2 : tb->rate * 10 + tb->burst;
	if (cap > (uint64_t)INT64_MAX / 2)
		cap = (uint64_t)INT64_MAX / 2;
	if (tb->tokens < -(int64_t)cap)
		tb->tokens = -(int64_t)cap;
}

uint64_t token_bucket_wait_ns(struct token_bucket *tb, uint64_t now_ns)
{
	if (token_bucket_ready(tb, now_ns))
		return 0;
	uint64_t need = (uint64_t)(1 - tb->tokens);   /* to reach 1 token */
	uint64_t ns = (uint64_t)((unsigned __int128)need * 1000000000ULL / tb->rate) + 1;
	uint64_t since = now_ns > tb->last_ns ? now_ns - tb->last_ns : 0;
	return ns > since ? ns - since : 1;
}

void net_limiter_init(struct net_limiter *l, uint64_t bw, uint64_t pps, uint64_t now_ns)
{
	/* Bursts of 10 ms worth, but never less than one maximal frame (or
	 * one packet), so a limit always lets traffic through. */
	uint64_t bburst = bw / 100;
	if (bburst < NET_MAX_FRAME)
		bburst = NET_MAX_FRAME;
	uint64_t pburst = pps / 100;
	if (pburst < 1)
		pburst = 1;
	token_bucket_init(&l->bytes, bw, bburst, now_ns);
	token_bucket_init(&l->packets, pps, pburst, now_ns);
}

bool net_limiter_ready(struct net_limiter *l, uint64_t now_ns)
{
	bool b = token_bucket_ready(&l->bytes, now_ns);
	bool p = token_bucket_ready(&l->packets, now_ns);
	return b && p;
}

void net_limiter_charge(struct net_limiter *l, uint64_t bytes)
{
	token_bucket_charge(&l->bytes, bytes);
	token_bucket_charge(&l->packets, 1);
}

uint64_t net_limiter_wait_ns(struct net_limiter *l, uint64_t now_ns)
{
	uint64_t a = token_bucket_wait_ns(&l->bytes, now_ns);
	uint64_t b = token_bucket_wait_ns(&l->packets, now_ns);
	return a > b ? a : b;
}

void net_default_mac(const char *vm_name, unsigned index, uint8_t mac[6])
{
	/* FNV-1a over the name and the index. */
	uint32_t h = 2166136261u;
	for (const char *p = vm_name; p && *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	h = (h ^ (uint8_t)index) * 16777619u;
	h = (h ^ (uint8_t)(index >> 8)) * 16777619u;
	mac[0] = 0x52;
	mac[1] = 0x54;
	mac[2] = 0x00;
	mac[3] = (uint8_t)(h >> 16);
	mac[4] = (uint8_t)(h >> 8);
	mac[5] = (uint8_t)h;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int net_parse_mac(const char *s, uint8_t mac[6])
{
	/* Exactly "xx:xx:xx:xx:xx:xx" (sscanf's %x would also take spaces,
	 * signs and "0x"). */
	uint8_t m[6];
	if (!s || strlen(s) != 17)
		return -1;
	for (int i = 0; i < 6; i++) {
		int hi = hex_digit(s[i * 3]), lo = hex_digit(s[i * 3 + 1]);
		if (hi < 0 || lo < 0 || (i < 5 && s[i * 3 + 2] != ':'))
			return -1;
		m[i] = (uint8_t)(hi << 4 | lo);
	}
	if (m[0] & 1)
		return -1;   /* multicast: no NIC may own it */
	memcpy(mac, m, 6);
	return 0;
}
