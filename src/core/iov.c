#include "core/iov.h"

#include <string.h>

uint64_t iov_size(const struct iovec *iov, int iovcnt)
{
	uint64_t n = 0;
	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	return n;
}

/* Walks the bytes [skip, skip+len) of an iovec, calling fn on each piece
 * with its position relative to `skip`. */
static void iov_walk(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len,
		     void (*fn)(void *piece, uint64_t at, uint64_t n, void *arg), void *arg)
{
	uint64_t at = 0;
	for (int i = 0; i < iovcnt && len; i++) {
		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		uint64_t take = iov[i].iov_len - skip;
		if (take > len)
			take = len;
		fn((char *)iov[i].iov_base + skip, at, take, arg);
		at += take;
		len -= take;
		skip = 0;
	}
}

struct slice {
	struct iovec *out;
	int n;
};

static void piece_slice(void *piece, uint64_t at, uint64_t n, void *arg)
{
	struct slice *sl = arg;
	(void)at;
	sl->out[sl->n++] = (struct iovec){ .iov_base = piece, .iov_len = (size_t)n };
}

int iov_slice(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len, struct iovec *out)
{
	struct slice sl = { out, 0 };
	iov_walk(iov, iovcnt, skip, len, piece_slice, &sl);
	return sl.n;
}

static void piece_to_buf(void *piece, uint64_t at, uint64_t n, void *arg)
{
	memcpy((char *)arg + at, piece, n);
}

static void piece_from_buf(void *piece, uint64_t at, uint64_t n, void *arg)
{
	memcpy(piece, (const char *)arg + at, n);
}

static void piece_memset(void *piece, uint64_t at, uint64_t n, void *arg)
{
	(void)at;
	memset(piece, *(const int *)arg, n);
}

void iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t skip, void *buf, uint64_t len)
{
	iov_walk(iov, iovcnt, skip, len, piece_to_buf, buf);
}

void iov_from_buf(const struct iovec *iov, int iovcnt, uint64_t skip, const void *buf,
		      uint64_t len)
{
	iov_walk(iov, iovcnt, skip, len, piece_from_buf, (void *)buf);
}

void iov_memset(const struct iovec *iov, int iovcnt, uint64_t skip, int c, uint64_t len)
{
	iov_walk(iov, iovcnt, skip, len, piece_memset, &c);
}
