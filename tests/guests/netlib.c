/* NIC-independent echo test and benchmarks; see netlib.h. */
#include "netlib.h"
#include "virtio_drv.h"   /* vmem_alloc, cmdline_str */

uint8_t netlib_peer[6];
static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

void netlib_print_mac(const char *prefix, const uint8_t *m)
{
	kprintf("%s%02x:%02x:%02x:%02x:%02x:%02x\n", prefix, m[0], m[1], m[2], m[3], m[4], m[5]);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool netlib_parse_mac(const char *s, uint8_t *mac)
{
	for (int i = 0; i < 6; i++) {
		int hi = hexval(s[0]), lo = hexval(s[1]);
		if (hi < 0 || lo < 0)
			return false;
		mac[i] = (uint8_t)(hi << 4 | lo);
		s += 2;
		if (i < 5 && *s++ != ':')
			return false;
	}
	return *s == 0;
}

void netlib_fixed(char *out, uint64_t num, uint64_t den, int digits)
{
	uint64_t scale = 1;
	for (int i = 0; i < digits; i++)
		scale *= 10;
	uint64_t v = den ? (num * scale + den / 2) / den : 0;
	uint64_t ip = v / scale, fp = v % scale;
	char tmp[24];
	int k = 0;
	do {
		tmp[k++] = (char)('0' + ip % 10);
		ip /= 10;
	} while (ip && k < 20);
	int o = 0;
	while (k)
		out[o++] = tmp[--k];
	if (digits) {
		out[o++] = '.';
		for (int i = digits - 1; i >= 0; i--) {
			out[o + i] = (char)('0' + fp % 10);
			fp /= 10;
		}
		o += digits;
	}
	out[o] = 0;
}

static bool mac_eq(const uint8_t *a, const uint8_t *b)
{
	return !memcmp(a, b, 6);
}

static void diag(struct nic *n)
{
	if (n->ops->diag)
		n->ops->diag(n->drv);
}

static uint64_t us_since(uint64_t t0, uint64_t t1)
{
	return (t1 - t0) * 1000 / tsc_khz();
}

/* Drops whatever is received (after counting it), returns the buffers. */
static int rx_drain(struct nic *n)
{
	const uint8_t *f;
	int k = 0, len;
	while ((len = n->ops->rx_get(n->drv, &f)) > 0) {
		n->ops->rx_put(n->drv);
		k++;
	}
	if (k)
		n->ops->rx_kick(n->drv);
	return len < 0 ? len : k;
}

static void dst_mac(uint8_t *dst)
{
	char ps[24];
	if (!(cmdline_str("peer", ps, sizeof(ps)) && netlib_parse_mac(ps, dst)))
		memcpy(dst, bcast, 6);
}

bool netlib_probe(struct nic *n, uint32_t seq, uint64_t timeout_us)
{
	const struct nic_ops *o = n->ops;
	uint8_t *f = o->tx_slot(n->drv, 0);
	if (!f) {
		o->tx_reap(n->drv);
		f = o->tx_slot(n->drv, 0);
		if (!f)
			return false;
	}
	uint8_t dst[6];
	dst_mac(dst);
	netp_build(f, dst, n->mac, NETP_PROBE, seq, NETP_MIN);
	o->tx_queue(n->drv, NETP_MIN, 0);
	o->tx_kick(n->drv);
	uint64_t end = tsc_deadline_us(timeout_us);
	bool got = false;
	while (!got && (int64_t)(rdtsc() - end) < 0) {
		if (o->tx_reap(n->drv) < 0)
			return false;
		const uint8_t *r;
		int len, k = 0;
		while ((len = o->rx_get(n->drv, &r)) > 0) {
			if (netp_is_ours(r, (uint32_t)len) && r[NETP_OFF_KIND] == NETP_PROBE &&
			    netp_get32(r + NETP_OFF_SEQ) == seq && mac_eq(r, n->mac)) {
				memcpy(netlib_peer, r + 6, 6);
				got = true;
			}
			o->rx_put(n->drv);
			k++;
		}
		if (k)
			o->rx_kick(n->drv);
		if (len < 0)
			return false;
		cpu_relax();
	}
	return got;
}

/* ---- echo ---------------------------------------------------------------- */

static int run_echo(struct nic *n)
{
	const struct nic_ops *o = n->ops;
	const char *nm = o->name;
	uint64_t count = 200, window = 16, wait_s = 60;
	cmdline_u64("count", &count);
	cmdline_u64("window", &window);
	cmdline_u64("wait_s", &wait_s);
	if (!count || count > (1u << 24)) {
		kprintf("%s: FAIL: count=%lu out of range (1..%u)\n", nm, count, 1u << 24);
		return 1;
	}
	if (!window)
		window = 1;
	uint8_t dst[6];
	dst_mac(dst);

	/* The peer may start after us: probe until it answers. */
	uint64_t deadline = tsc_deadline_us(wait_s * 1000000);
	uint32_t probes = 0;
	bool up = false;
	while (!up && (int64_t)(rdtsc() - deadline) < 0)
		up = netlib_probe(n, probes++, 250000);
	if (!up) {
		kprintf("%s: FAIL: echo: no answer from the peer to %u probes in %lu s\n", nm, probes, wait_s);
		return 1;
	}
	kprintf("%s: echo: peer answered probe %u from %02x:%02x:%02x:%02x:%02x:%02x\n", nm, probes - 1,
		netlib_peer[0], netlib_peer[1], netlib_peer[2], netlib_peer[3], netlib_peer[4], netlib_peer[5]);

	uint8_t *seen = vmem_alloc(count, 64);
	uint64_t sent = 0, got = 0, ok = 0, bad = 0, ignored = 0;
	uint32_t minlen = ~0u, maxlen = 0;
	uint64_t khz = tsc_khz(), last = rdtsc(), t0 = last;
	while (got < count) {
		unsigned queued = 0;
		while (sent < count && sent - got < window) {
			unsigned layout = (unsigned)(sent % 3);
			uint8_t *f = o->tx_slot(n->drv, layout);
			if (!f)
				break;
			uint32_t len = netp_echo_len((uint32_t)sent);
			netp_build(f, dst, n->mac, NETP_ECHO, (uint32_t)sent, len);
			o->tx_queue(n->drv, len, layout);
			sent++;
			queued++;
		}
		if (queued)
			o->tx_kick(n->drv);
		if (o->tx_reap(n->drv) < 0)
			return 1;

		const uint8_t *f;
		int r;
		unsigned k = 0;
		while ((r = o->rx_get(n->drv, &f)) > 0) {
			uint32_t len = (uint32_t)r;
			k++;
			last = rdtsc();
			if (!netp_is_ours(f, len) || f[NETP_OFF_KIND] == NETP_PROBE) {
				ignored++;
				o->rx_put(n->drv);
				continue;
			}
			uint32_t seq = netp_get32(f + NETP_OFF_SEQ);
			const char *why = NULL;
			int off = -1;
			if (f[NETP_OFF_KIND] != NETP_ECHO)
				why = "not an echo frame";
			else if (seq >= sent)
				why = "sequence number never sent";
			else if (seen[seq])
				why = "duplicate";
			else if (len != netp_echo_len(seq))
				why = "wrong length";
			else if (!mac_eq(f, n->mac))
				why = "destination is not our MAC";
			else if (!mac_eq(f + 6, netlib_peer))
				why = "source is not the peer's MAC";
			else if ((off = netp_verify(f, NETP_ECHO, seq, len)) >= 0)
				why = "payload differs";
			if (f[NETP_OFF_KIND] == NETP_ECHO && seq < sent && !seen[seq]) {
				seen[seq] = 1;
				got++;
			}
			if (why) {
				if (bad++ < 5)
					kprintf("%s: FAIL: echo: frame seq %u len %u (want %u): %s (offset %d)\n", nm, seq,
						len, seq < sent ? netp_echo_len(seq) : 0, why, off);
			} else {
				ok++;
				if (len < minlen)
					minlen = len;
				if (len > maxlen)
					maxlen = len;
			}
			o->rx_put(n->drv);
		}
		if (k)
			o->rx_kick(n->drv);
		if (r < 0)
			return 1;
		if (!k && rdtsc() - last > 5000 * khz) {
			kprintf("%s: FAIL: echo: nothing for 5 s; sent %lu, echoed %lu of %lu\n", nm, sent, got, count);
			diag(n);
			break;
		}
		if (!k)
			cpu_relax();
	}
	uint64_t us = us_since(t0, rdtsc());
	if (ok == 0)
		minlen = maxlen = 0;
	kprintf("%s: echo %lu/%lu frames ok (%u..%u bytes)\n", nm, ok, count, minlen, maxlen);
	kprintf("%s: echo: %lu us, %lu bad, %lu other frames ignored, %lu traps\n", nm, us, bad, ignored,
		o->traps(n->drv));
	return ok == count ? 0 : 1;
}

/* ---- TX benchmark --------------------------------------------------------- */

static int run_tx(struct nic *n)
{
	const struct nic_ops *o = n->ops;
	const char *nm = o->name;
	uint64_t count = 100000, size = NETP_MAX, batch = 32, seconds = 0, wait_s = 60;
	cmdline_u64("seconds", &seconds);
	if (seconds)
		count = ~0ull;
	cmdline_u64("count", &count);
	cmdline_u64("size", &size);
	cmdline_u64("batch", &batch);
	cmdline_u64("wait_s", &wait_s);
	if (size < NETP_MIN || size > NETP_MAX) {
		kprintf("%s: FAIL: size=%lu out of range (%u..%u)\n", nm, size, NETP_MIN, NETP_MAX);
		return 1;
	}
	if (!batch)
		batch = 1;
	uint8_t dst[6];
	dst_mac(dst);
	uint64_t khz = tsc_khz();
	if (cmdline_has("go")) {
		/* The sink is listening once its 'G' frame comes in. */
		uint64_t end = tsc_deadline_us(wait_s * 1000000);
		bool go = false;
		while (!go) {
			const uint8_t *f;
			int r = o->rx_get(n->drv, &f);
			if (r < 0)
				return 1;
			if (r > 0) {
				go = netp_is_ours(f, (uint32_t)r) && f[NETP_OFF_KIND] == NETP_GO;
				o->rx_put(n->drv);
				o->rx_kick(n->drv);
			} else if ((int64_t)(rdtsc() - end) > 0) {
				kprintf("%s: FAIL: tx: no go frame from the sink in %lu s\n", nm, wait_s);
				return 1;
			} else {
				cpu_relax();
			}
		}
		kprintf("%s: tx: go\n", nm);
	}
	uint64_t sent = 0, done = 0, traps0 = o->traps(n->drv);
	uint64_t t0 = rdtsc(), last = t0, stop_at = seconds ? t0 + seconds * 1000 * khz : 0;
	while (done < sent || sent < count) {
		int r = o->tx_reap(n->drv);
		if (r < 0)
			return 1;
		done += (uint64_t)r;
		uint64_t q = 0;
		uint8_t *f;
		if (stop_at && (int64_t)(rdtsc() - stop_at) > 0)
			count = sent;   /* time is up: let what is in flight finish */
		while (sent < count && q < batch && (f = o->tx_slot(n->drv, 0))) {
			netp_header(f, dst, n->mac, NETP_TX, (uint32_t)sent, (uint32_t)size);
			o->tx_queue(n->drv, (uint32_t)size, 0);
			sent++;
			q++;
		}
		if (q)
			o->tx_kick(n->drv);
		uint64_t now = rdtsc();
		if (r || q)
			last = now;
		else if (now - last > 10000 * khz) {
			kprintf("%s: FAIL: tx: stuck for 10 s: %lu queued, %lu done of %lu\n", nm, sent, done, count);
			diag(n);
			return 1;
		}
	}
	uint64_t t1 = rdtsc(), us = us_since(t0, t1), traps = o->traps(n->drv) - traps0;
	char mbps[24], tpp[24];
	netlib_fixed(mbps, done * size, us, 2);
	netlib_fixed(tpp, traps, done, 4);
	kprintf("%s: tx: frames=%lu size=%lu us=%lu pps=%lu MBps=%s traps=%lu traps_per_pkt=%s\n", nm, done, size, us,
		us ? done * 1000000 / us : 0, mbps, traps, tpp);
	return 0;
}

/* ---- RX benchmark --------------------------------------------------------- */

static int run_rx(struct nic *n)
{
	const struct nic_ops *o = n->ops;
	const char *nm = o->name;
	uint64_t count = 100000, batch = 32, wait_s = 60, idle_ms = 2000, seconds = 0;
	cmdline_u64("seconds", &seconds);
	if (seconds)
		count = ~0ull;
	cmdline_u64("count", &count);
	cmdline_u64("batch", &batch);
	cmdline_u64("wait_s", &wait_s);
	cmdline_u64("idle_ms", &idle_ms);
	if (!batch)
		batch = 1;
	uint64_t khz = tsc_khz();
	if (rx_drain(n) < 0)
		return 1;
	kprintf("%s: rx: ready\n", nm);

	uint64_t frames = 0, bytes = 0, bad = 0, lost = 0, ignored = 0, traps0 = 0;
	uint32_t next_seq = 0;
	uint64_t t0 = 0, tlast = 0, start = rdtsc(), pending = 0;
	for (;;) {
		const uint8_t *f;
		int r;
		while ((r = o->rx_get(n->drv, &f)) > 0) {
			uint32_t len = (uint32_t)r;
			if (netp_is_ours(f, len) && f[NETP_OFF_KIND] == NETP_BLAST) {
				uint64_t now = rdtsc();
				uint32_t seq = netp_get32(f + NETP_OFF_SEQ);
				if (!frames) {
					t0 = now;
					traps0 = o->traps(n->drv);
					next_seq = seq;
				}
				frames++;
				bytes += len;
				tlast = now;
				if (netp_get16(f + NETP_OFF_LEN) != len)
					bad++;
				if (seq >= next_seq) {
					lost += seq - next_seq;
					next_seq = seq + 1;
				} else {
					bad++;
				}
			} else {
				ignored++;
			}
			o->rx_put(n->drv);
			if (++pending >= batch) {
				o->rx_kick(n->drv);
				pending = 0;
			}
			if (frames >= count)
				break;
		}
		if (r < 0)
			return 1;
		if (pending) {
			o->rx_kick(n->drv);
			pending = 0;
		}
		if (frames >= count)
			break;
		uint64_t now = rdtsc();
		if (frames && seconds && now - t0 > seconds * 1000 * khz)
			break;
		if (!frames && now - start > wait_s * 1000 * khz) {
			kprintf("%s: FAIL: rx: no frame in %lu s (%lu others ignored)\n", nm, wait_s, ignored);
			diag(n);
			return 1;
		}
		if (frames && now - tlast > idle_ms * khz) {
			if (frames < count && count != ~0ull) {
				kprintf("%s: rx: idle for %lu ms after %lu of %lu frames\n", nm, idle_ms, frames, count);
				diag(n);
			}
			break;
		}
		cpu_relax();
	}
	uint64_t us = us_since(t0, tlast), traps = o->traps(n->drv) - traps0;
	char mbps[24], tpp[24];
	netlib_fixed(mbps, bytes, us, 2);
	netlib_fixed(tpp, traps, frames, 4);
	kprintf("%s: rx: frames=%lu size=%lu us=%lu pps=%lu MBps=%s traps=%lu traps_per_pkt=%s lost=%lu bad=%lu\n", nm,
		frames, frames ? bytes / frames : 0, us, us ? frames * 1000000 / us : 0, mbps, traps, tpp, lost, bad);
	return bad ? 1 : 0;
}

int netlib_run(struct nic *n)
{
	char mode[16] = "echo";
	cmdline_str("mode", mode, sizeof(mode));
	tsc_khz();   /* calibrate before anything is timed */
	if (!strncmp(mode, "echo", 5))
		return run_echo(n);
	if (!strncmp(mode, "tx", 3))
		return run_tx(n);
	if (!strncmp(mode, "rx", 3))
		return run_rx(n);
	kprintf("%s: FAIL: unknown mode=%s (echo, tx, rx)\n", n->ops->name, mode);
	return 1;
}
