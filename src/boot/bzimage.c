/* bzImage setup-header parsing (Documentation/x86/boot.rst). */
#include <stdio.h>
#include <string.h>

#include "boot/boot.h"
#include "boot/bootparam.h"

int boot_is_bzimage(const uint8_t *img, size_t size)
{
	return size >= 0x206 && img[0x1fe] == 0x55 && img[0x1ff] == 0xaa &&
	       memcmp(img + 0x202, "HdrS", 4) == 0;
}

static uint32_t le(const uint8_t *p, unsigned width)
{
	uint32_t v = 0;
	for (unsigned i = 0; i < width; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

int bzimage_parse(const uint8_t *img, size_t size, struct bzimage_info *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (!boot_is_bzimage(img, size)) {
		snprintf(err, errlen, "not a bzImage (no boot signature or HdrS magic)");
		return -1;
	}
	/* The header's length is given by the byte at 0x201 (jump offset). */
	size_t hdr_end = 0x202 + img[0x201];
	if (hdr_end > size || hdr_end < SETUP_HDR_MIN_END) {
		snprintf(err, errlen, "bzImage setup header is truncated");
		return -1;
	}
	out->hdr_end = hdr_end;
	out->version = (uint16_t)le(img + 0x206, 2);
	if (out->version < 0x020c) {
		snprintf(err, errlen, "boot protocol %u.%02u is too old (need 2.12+ for the 64-bit entry)",
			 out->version >> 8, out->version & 0xff);
		return -1;
	}
	out->xloadflags = (uint16_t)le(img + 0x236, 2);
	if (!(out->xloadflags & XLF_KERNEL_64)) {
		snprintf(err, errlen, "bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)");
		return -1;
	}
	if (!(img[0x211] & LOADED_HIGH)) {
		snprintf(err, errlen, "bzImage is not a protected-mode kernel loaded high");
		return -1;
	}
	out->setup_sects = img[0x1f1] ? img[0x1f1] : 4;
	out->setup_size = (uint64_t)(out->setup_sects + 1) * 512;
	if (out->setup_size >= size) {
		snprintf(err, errlen, "bzImage is truncated: setup (%llu bytes) fills the whole file",
			 (unsigned long long)out->setup_size);
		return -1;
	}
	out->kernel_offset = out->setup_size;
	out->kernel_size = size - out->setup_size;
	uint64_t syssize = (uint64_t)le(img + 0x1f4, 4) * 16;
	if (syssize > out->kernel_size) {
		snprintf(err, errlen, "bzImage is truncated: header says %llu kernel bytes, file has %llu",
			 (unsigned long long)syssize, (unsigned long long)out->kernel_size);
		return -1;
	}
	out->initrd_addr_max = le(img + 0x22c, 4);
	out->kernel_alignment = le(img + 0x230, 4);
	out->relocatable = img[0x234];
	out->cmdline_size = le(img + 0x238, 4);
	out->pref_address = (uint64_t)le(img + 0x258, 4) | ((uint64_t)le(img + 0x25c, 4) << 32);
	out->init_size = le(img + 0x260, 4);
	if (out->init_size < out->kernel_size)
		out->init_size = (uint32_t)out->kernel_size;
	if (out->pref_address == 0 || out->pref_address & 0xfff) {
		snprintf(err, errlen, "bzImage has a bad preferred load address 0x%llx",
			 (unsigned long long)out->pref_address);
		return -1;
	}
	return 0;
}
