/*
 * The test frames shared by the networking micro-guests (tests/guests/
 * virtio-net.c, e1000.c via netlib.c) and the host peer (tests/net/
 * netpeer.c). Header-only, freestanding: stdint.h and nothing else.
 *
 * A frame (no FCS), 60..1514 bytes:
 *   0..5    destination MAC
 *   6..11   source MAC
 *   12..13  EtherType 0x88B5 (IEEE "local experimental 1")
 *   14      kind: 'P' probe, 'E' echo, 'T' guest TX benchmark, 'B' host blast,
 *           'G' go (a sink tells a TX benchmark guest it is listening)
 *   15      0
 *   16..19  sequence number, big-endian
 *   20..21  frame length, big-endian
 *   22..    pattern bytes: netp_pattern(kind, seq, offset)
 * The echo peer sends a frame back with the MACs swapped (a group
 * destination is replaced by the peer's own MAC as the new source) and
 * every other byte unchanged.
 */
#ifndef NETPROTO_H
#define NETPROTO_H

#include <stdint.h>

#define NETP_ETHERTYPE 0x88b5
#define NETP_OFF_KIND  14
#define NETP_OFF_SEQ   16
#define NETP_OFF_LEN   20
#define NETP_HDR       22
#define NETP_MIN       60
#define NETP_MAX       1514

#define NETP_PROBE 'P'
#define NETP_ECHO  'E'
#define NETP_TX    'T'
#define NETP_BLAST 'B'
#define NETP_GO    'G'

static inline uint8_t netp_pattern(uint8_t kind, uint32_t seq, uint32_t off)
{
	return (uint8_t)(seq * 13u + off + (off >> 8) * 7u + kind + (seq >> 8));
}

/* Echo frame lengths: 60 and 1514 first, then a spread over 60..1514. */
static inline uint32_t netp_echo_len(uint32_t seq)
{
	if (seq == 0)
		return NETP_MIN;
	if (seq == 1)
		return NETP_MAX;
	return NETP_MIN + (seq * 389u) % (NETP_MAX - NETP_MIN + 1);
}

static inline uint32_t netp_get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint16_t netp_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}
static inline void netp_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}
static inline void netp_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/* Header fields only (MACs, EtherType, kind, seq, length). */
static inline void netp_header(uint8_t *f, const uint8_t *dst, const uint8_t *src, uint8_t kind, uint32_t seq,
			       uint32_t len)
{
	for (int i = 0; i < 6; i++) {
		f[i] = dst[i];
		f[6 + i] = src[i];
	}
	netp_put16(f + 12, NETP_ETHERTYPE);
	f[NETP_OFF_KIND] = kind;
	f[15] = 0;
	netp_put32(f + NETP_OFF_SEQ, seq);
	netp_put16(f + NETP_OFF_LEN, (uint16_t)len);
}

/* A whole frame: header and pattern. */
static inline void netp_build(uint8_t *f, const uint8_t *dst, const uint8_t *src, uint8_t kind, uint32_t seq,
			      uint32_t len)
{
	netp_header(f, dst, src, kind, seq, len);
	for (uint32_t i = NETP_HDR; i < len; i++)
		f[i] = netp_pattern(kind, seq, i);
}

static inline int netp_is_ours(const uint8_t *f, uint32_t len)
{
	return len >= NETP_HDR && netp_get16(f + 12) == NETP_ETHERTYPE;
}

/* The offset of the first byte from 12 on that differs from what a frame
 * of this kind/seq/len must hold, or -1 if none does. */
static inline int netp_verify(const uint8_t *f, uint8_t kind, uint32_t seq, uint32_t len)
{
	uint8_t h[NETP_HDR];
	uint8_t z[6] = { 0 };
	netp_header(h, z, z, kind, seq, len);
	for (uint32_t i = 12; i < NETP_HDR; i++)
		if (f[i] != h[i])
			return (int)i;
	for (uint32_t i = NETP_HDR; i < len; i++)
		if (f[i] != netp_pattern(kind, seq, i))
			return (int)i;
	return -1;
}

#endif
