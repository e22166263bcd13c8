#include "x86/aml.h"

#include <string.h>

/* Opcodes and prefixes (ACPI 6.x section 20.3). */
#define AML_ZERO_OP        0x00
#define AML_ONE_OP         0x01
#define AML_NAME_OP        0x08
#define AML_BYTE_PREFIX    0x0A
#define AML_WORD_PREFIX    0x0B
#define AML_DWORD_PREFIX   0x0C
#define AML_STRING_PREFIX  0x0D
#define AML_QWORD_PREFIX   0x0E
#define AML_SCOPE_OP       0x10
#define AML_BUFFER_OP      0x11
#define AML_PACKAGE_OP     0x12
#define AML_DUAL_NAME      0x2E
#define AML_MULTI_NAME     0x2F
#define AML_ROOT_CHAR      0x5C
#define AML_PARENT_CHAR    0x5E
#define AML_EXT_OP_PREFIX  0x5B
#define AML_DEVICE_OP      0x82 /* after AML_EXT_OP_PREFIX */

/* Resource descriptor tags (ACPI 6.x section 6.4). */
#define RES_IRQ_NOFLAGS    0x22 /* small item 0x04, length 2 */
#define RES_IRQ_FLAGS      0x23 /* small item 0x04, length 3 */
#define RES_IO             0x47 /* small item 0x08, length 7 */
#define RES_END_TAG        0x79 /* small item 0x0F, length 1 */
#define RES_MEM32_FIXED    0x86
#define RES_DWORD_ADDR     0x87
#define RES_WORD_ADDR      0x88
#define RES_EXT_IRQ        0x89
#define RES_QWORD_ADDR     0x8A

#define ADDR_TYPE_MEM      0
#define ADDR_TYPE_IO       1
#define ADDR_TYPE_BUS      2
/* General flags: producer (bit 0 clear), positive decode, min and max fixed. */
#define ADDR_FLAGS_FIXED_WINDOW 0x0C
#define IO_RANGE_ENTIRE    0x03
#define MEM_READ_WRITE     0x01
#define MEM_CACHEABLE      0x02

void aml_init(struct aml *a, void *buf, size_t cap)
{
	a->buf = buf;
	a->cap = buf ? cap : 0;
	a->len = 0;
	a->err = false;
}

void aml_bytes(struct aml *a, const void *p, size_t n)
{
	if (a->err)
		return;
	if (n > a->cap - a->len) {
		a->err = true;
		return;
	}
	if (n)
		memcpy(a->buf + a->len, p, n);
	a->len += n;
}

void aml_byte(struct aml *a, uint8_t b)
{
	aml_bytes(a, &b, 1);
}

static void emit_le(struct aml *a, uint64_t v, size_t n)
{
	uint8_t b[8];

	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	aml_bytes(a, b, n);
}

/* Puts `n` bytes in front of the body that starts at `mark`; this is how
 * PkgLengths get in ahead of a body whose size was unknown when it began. */
static void insert_at(struct aml *a, size_t mark, const uint8_t *p, size_t n)
{
	if (a->err)
		return;
	if (mark > a->len || n > a->cap - a->len) {
		a->err = true;
		return;
	}
	memmove(a->buf + mark + n, a->buf + mark, a->len - mark);
	memcpy(a->buf + mark, p, n);
	a->len += n;
}

size_t aml_pkglen_encode(uint8_t out[4], uint32_t value)
{
	if (value <= 0x3F) {
		out[0] = (uint8_t)value;
		return 1;
	}
	if (value > AML_PKGLEN_MAX)
		return 0;
	/* Multi-byte forms: the lead byte carries the count of following bytes
	 * in bits 7:6 and the low nibble of the value in bits 3:0. */
	size_t follow = value <= 0xFFF ? 1 : value <= 0xFFFFF ? 2 : 3;
	out[0] = (uint8_t)((follow << 6) | (value & 0x0F));
	for (size_t i = 0; i < follow; i++)
		out[1 + i] = (uint8_t)(value >> (4 + 8 * i));
	return follow + 1;
}

size_t aml_pkglen_for_body(uint8_t out[4], size_t body_len)
{
	/* The value includes the encoding's own size, so try each form in turn;
	 * growing the form by a byte can push the value over its limit. */
	for (size_t n = 1; n <= 4; n++) {
		if (body_len > AML_PKGLEN_MAX - n)
			return 0;
		if (aml_pkglen_encode(out, (uint32_t)(body_len + n)) == n)
			return n;
	}
	return 0;
}

/* Closes a PkgLength-prefixed object whose body began at `mark`, with
 * `extra` (n_extra bytes) placed after the PkgLength and counted in it. */
static void close_pkg(struct aml *a, size_t mark, const uint8_t *extra, size_t n_extra)
{
	uint8_t prefix[4 + 9];
	size_t n;

	if (a->err)
		return;
	if (mark > a->len) {
		a->err = true;
		return;
	}
	n = aml_pkglen_for_body(prefix, a->len - mark + n_extra);
	if (n == 0) {
		a->err = true;
		return;
	}
	if (n_extra)
		memcpy(prefix + n, extra, n_extra);
	insert_at(a, mark, prefix, n + n_extra);
}

static bool is_lead_char(char c)
{
	return (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_name_char(char c)
{
	return is_lead_char(c) || (c >= '0' && c <= '9');
}

void aml_namestring(struct aml *a, const char *name)
{
	const char *p = name;
	size_t nsegs = 0;

	if (*p == '\\') {
		aml_byte(a, AML_ROOT_CHAR);
		p++;
	} else {
		while (*p == '^') {
			aml_byte(a, AML_PARENT_CHAR);
			p++;
		}
	}
	if (*p == '\0') {
		aml_byte(a, AML_ZERO_OP); /* NullName */
		return;
	}

	/* Validate and count first: the prefix depends on the count. */
	for (const char *q = p;;) {
		size_t seglen = 0;

		while (q[seglen] != '.' && q[seglen] != '\0')
			seglen++;
		if (seglen < 1 || seglen > 4 || !is_lead_char(q[0]))
			goto bad;
		for (size_t i = 1; i < seglen; i++)
			if (!is_name_char(q[i]))
				goto bad;
		nsegs++;
		if (q[seglen] == '\0')
			break;
		q += seglen + 1;
	}
	if (nsegs > 255)
		goto bad;
	if (nsegs == 2) {
		aml_byte(a, AML_DUAL_NAME);
	} else if (nsegs > 2) {
		aml_byte(a, AML_MULTI_NAME);
		aml_byte(a, (uint8_t)nsegs);
	}
	for (size_t s = 0; s < nsegs; s++) {
		char seg[4] = { '_', '_', '_', '_' };
		size_t i = 0;

		while (*p != '.' && *p != '\0')
			seg[i++] = *p++;
		if (*p == '.')
			p++;
		aml_bytes(a, seg, 4);
	}
	return;
bad:
	a->err = true;
}

/* Encodes an integer constant into out[]; returns its size (1..9). */
static size_t encode_integer(uint8_t out[9], uint64_t v)
{
	size_t n;

	if (v == 0 || v == 1) {
		out[0] = v ? AML_ONE_OP : AML_ZERO_OP;
		return 1;
	}
	if (v <= 0xFF) {
		out[0] = AML_BYTE_PREFIX;
		n = 1;
	} else if (v <= 0xFFFF) {
		out[0] = AML_WORD_PREFIX;
		n = 2;
	} else if (v <= 0xFFFFFFFF) {
		out[0] = AML_DWORD_PREFIX;
		n = 4;
	} else {
		out[0] = AML_QWORD_PREFIX;
		n = 8;
	}
	for (size_t i = 0; i < n; i++)
		out[1 + i] = (uint8_t)(v >> (8 * i));
	return n + 1;
}

void aml_integer(struct aml *a, uint64_t v)
{
	uint8_t b[9];

	aml_bytes(a, b, encode_integer(b, v));
}

void aml_string(struct aml *a, const char *s)
{
	for (const char *c = s; *c; c++) {
		if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7E) {
			a->err = true;
			return;
		}
	}
	aml_byte(a, AML_STRING_PREFIX);
	aml_bytes(a, s, strlen(s) + 1);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

bool aml_eisaid_value(const char *id, uint32_t *out)
{
	uint8_t b[4];
	unsigned vendor = 0, product = 0;

	if (strlen(id) != 7)
		return false;
	for (int i = 0; i < 3; i++) {
		if (id[i] < 'A' || id[i] > 'Z')
			return false;
		vendor = (vendor << 5) | (unsigned)(id[i] - 0x40);
	}
	for (int i = 3; i < 7; i++) {
		int d = hex_digit(id[i]);
		if (d < 0)
			return false;
		product = (product << 4) | (unsigned)d;
	}
	/* The compressed id is stored big-endian: vendor bytes, then product. */
	b[0] = (uint8_t)(vendor >> 8);
	b[1] = (uint8_t)vendor;
	b[2] = (uint8_t)(product >> 8);
	b[3] = (uint8_t)product;
	*out = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
	return true;
}

void aml_eisaid(struct aml *a, const char *id)
{
	uint32_t v;

	if (!aml_eisaid_value(id, &v)) {
		a->err = true;
		return;
	}
	/* Always a DWord, as ASL compilers emit it, whatever the value. */
	aml_byte(a, AML_DWORD_PREFIX);
	emit_le(a, v, 4);
}

void aml_name(struct aml *a, const char *name)
{
	aml_byte(a, AML_NAME_OP);
	aml_namestring(a, name);
}

void aml_name_integer(struct aml *a, const char *name, uint64_t v)
{
	aml_name(a, name);
	aml_integer(a, v);
}

void aml_name_string(struct aml *a, const char *name, const char *s)
{
	aml_name(a, name);
	aml_string(a, s);
}

void aml_name_eisaid(struct aml *a, const char *name, const char *id)
{
	aml_name(a, name);
	aml_eisaid(a, id);
}

size_t aml_scope_begin(struct aml *a, const char *name)
{
	size_t mark;

	aml_byte(a, AML_SCOPE_OP);
	mark = a->len;
	aml_namestring(a, name);
	return mark;
}

void aml_scope_end(struct aml *a, size_t mark)
{
	close_pkg(a, mark, NULL, 0);
}

size_t aml_device_begin(struct aml *a, const char *name)
{
	size_t mark;

	aml_byte(a, AML_EXT_OP_PREFIX);
	aml_byte(a, AML_DEVICE_OP);
	mark = a->len;
	aml_namestring(a, name);
	return mark;
}

void aml_device_end(struct aml *a, size_t mark)
{
	close_pkg(a, mark, NULL, 0);
}

size_t aml_package_begin(struct aml *a)
{
	aml_byte(a, AML_PACKAGE_OP);
	return a->len;
}

void aml_package_end(struct aml *a, size_t mark, unsigned nr_elements)
{
	uint8_t n = (uint8_t)nr_elements;

	/* More than 255 elements would need VarPackageOp. */
	if (nr_elements > 255) {
		a->err = true;
		return;
	}
	close_pkg(a, mark, &n, 1);
}

size_t aml_buffer_begin(struct aml *a)
{
	aml_byte(a, AML_BUFFER_OP);
	return a->len;
}

void aml_buffer_end(struct aml *a, size_t mark)
{
	uint8_t size[9];

	if (a->err)
		return;
	if (mark > a->len) {
		a->err = true;
		return;
	}
	close_pkg(a, mark, size, encode_integer(size, a->len - mark));
}

size_t aml_restemplate_begin(struct aml *a)
{
	return aml_buffer_begin(a);
}

void aml_restemplate_end(struct aml *a, size_t mark)
{
	aml_byte(a, RES_END_TAG);
	aml_byte(a, 0);
	aml_buffer_end(a, mark);
}

void aml_res_io(struct aml *a, uint16_t min, uint16_t max, uint8_t align, uint8_t len)
{
	aml_byte(a, RES_IO);
	aml_byte(a, 0x01); /* decodes all 16 address bits */
	emit_le(a, min, 2);
	emit_le(a, max, 2);
	aml_byte(a, align);
	aml_byte(a, len);
}

void aml_res_irq_noflags(struct aml *a, uint8_t irq)
{
	if (irq >= 16) {
		a->err = true;
		return;
	}
	aml_byte(a, RES_IRQ_NOFLAGS);
	emit_le(a, 1u << irq, 2);
}

void aml_res_irq(struct aml *a, uint8_t irq, bool level, bool active_low, bool shared)
{
	if (irq >= 16) {
		a->err = true;
		return;
	}
	aml_byte(a, RES_IRQ_FLAGS);
	emit_le(a, 1u << irq, 2);
	aml_byte(a, (uint8_t)((level ? 0 : 0x01) | (active_low ? 0x08 : 0) | (shared ? 0x10 : 0)));
}

void aml_res_ext_irq(struct aml *a, uint32_t gsi, bool level, bool active_low, bool shared)
{
	aml_byte(a, RES_EXT_IRQ);
	emit_le(a, 6, 2); /* flags, count, one DWord; no resource source */
	aml_byte(a, (uint8_t)(0x01 /* consumer */ | (level ? 0 : 0x02) | (active_low ? 0x04 : 0) |
			      (shared ? 0x08 : 0)));
	aml_byte(a, 1);
	emit_le(a, gsi, 4);
}

void aml_res_mem32_fixed(struct aml *a, uint32_t base, uint32_t len)
{
	aml_byte(a, RES_MEM32_FIXED);
	emit_le(a, 9, 2);
	aml_byte(a, MEM_READ_WRITE);
	emit_le(a, base, 4);
	emit_le(a, len, 4);
}

/* Word/DWord/QWord address space descriptors share one layout with fields
 * of `w` bytes: granularity, min, max, translation offset, length. */
static void addr_space(struct aml *a, uint8_t tag, size_t w, uint8_t type, uint8_t type_flags,
		       uint64_t min, uint64_t max)
{
	/* The length field must hold max - min + 1 (a full 2^(8w) range can't). */
	if (max < min || (w < 8 && max - min >= (UINT64_C(1) << (8 * w)) - 1) ||
	    (w == 8 && max - min == UINT64_MAX)) {
		a->err = true;
		return;
	}
	aml_byte(a, tag);
	emit_le(a, 3 + 5 * w, 2);
	aml_byte(a, type);
	aml_byte(a, ADDR_FLAGS_FIXED_WINDOW);
	aml_byte(a, type_flags);
	emit_le(a, 0, w);
	emit_le(a, min, w);
	emit_le(a, max, w);
	emit_le(a, 0, w);
	emit_le(a, max - min + 1, w);
}

void aml_res_word_bus(struct aml *a, uint16_t min, uint16_t max)
{
	addr_space(a, RES_WORD_ADDR, 2, ADDR_TYPE_BUS, 0, min, max);
}

void aml_res_word_io(struct aml *a, uint16_t min, uint16_t max)
{
	addr_space(a, RES_WORD_ADDR, 2, ADDR_TYPE_IO, IO_RANGE_ENTIRE, min, max);
}

void aml_res_dword_mem(struct aml *a, uint32_t min, uint32_t max, bool cacheable)
{
	addr_space(a, RES_DWORD_ADDR, 4, ADDR_TYPE_MEM,
		   MEM_READ_WRITE | (cacheable ? MEM_CACHEABLE : 0), min, max);
}

void aml_res_qword_mem(struct aml *a, uint64_t min, uint64_t max, bool cacheable)
{
	addr_space(a, RES_QWORD_ADDR, 8, ADDR_TYPE_MEM,
		   MEM_READ_WRITE | (cacheable ? MEM_CACHEABLE : 0), min, max);
}
