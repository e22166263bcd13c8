/* Scatter-gather helpers over struct iovec, shared by the block layer and
 * the network backends and devices. Offsets and lengths past the end of
 * the vector are clipped: the helpers touch only bytes that exist. */
#ifndef KESTREL_IOV_H
#define KESTREL_IOV_H

#include <stdint.h>
#include <sys/uio.h>

/* Total bytes in the vector. */
uint64_t iov_size(const struct iovec *iov, int iovcnt);
/* Fills `out` (room for `iovcnt` entries) with the bytes [skip, skip+len)
 * of `iov`; returns the entry count. */
int iov_slice(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len, struct iovec *out);
/* Copy bytes [skip, skip+len) of the vector out to / in from a flat buffer. */
void iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t skip, void *buf, uint64_t len);
void iov_from_buf(const struct iovec *iov, int iovcnt, uint64_t skip, const void *buf, uint64_t len);
void iov_memset(const struct iovec *iov, int iovcnt, uint64_t skip, int c, uint64_t len);

#endif
