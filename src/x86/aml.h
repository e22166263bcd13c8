/* A small AML (ACPI Machine Language) byte-code builder.
 *
 * It writes into a caller buffer and never past its end: once anything does
 * not fit (or a name is malformed), the builder latches `err` and every later
 * call is a no-op, so callers emit a whole table and check once at the end.
 *
 * Only data objects are supported (Name, Scope, Device, Package, Buffer and
 * resource templates): Kestrel's DSDT has no methods, so there is nothing the
 * guest's AML interpreter could loop or block on.
 *
 * Objects whose encoding starts with a PkgLength are built open/close style:
 * *_begin() returns a mark, the body is emitted, and *_end(mark) measures the
 * body and inserts the PkgLength (and, for Package/Buffer, the element count
 * or size) in front of it. Marks nest like parentheses. */
#ifndef KESTREL_AML_H
#define KESTREL_AML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct aml {
	uint8_t *buf;
	size_t cap;
	size_t len;
	bool err;
};

/* Largest value a PkgLength can encode (4-byte form, 28 bits). */
#define AML_PKGLEN_MAX 0x0FFFFFFFu

/* Starts an empty builder over buf[0..cap). buf may be NULL when cap is 0
 * (every emit then fails, which is how a size probe would see it). */
void aml_init(struct aml *a, void *buf, size_t cap);

/* Raw bytes, for encodings this builder does not wrap. */
void aml_byte(struct aml *a, uint8_t b);
void aml_bytes(struct aml *a, const void *p, size_t n);

/* Encodes PkgLength value `value` (which, per the spec, counts the PkgLength
 * bytes themselves) into out[], using the shortest form that can hold it.
 * Returns the number of bytes (1..4), or 0 if value > AML_PKGLEN_MAX. */
size_t aml_pkglen_encode(uint8_t out[4], uint32_t value);

/* Encodes the PkgLength for a body of `body_len` bytes that follows it, i.e.
 * value = body_len + the encoding's own size. Returns 1..4, or 0 if too big. */
size_t aml_pkglen_for_body(uint8_t out[4], size_t body_len);

/* A NameString: optional leading '\' (root) or '^'s (parent), then dotted
 * segments of 1..4 characters ([A-Z_] then [A-Z0-9_]) which are padded with
 * '_' to 4 ("\\_SB.PCI0", "_S5", "COM1"). "" is the NullName. A malformed name
 * latches the error. */
void aml_namestring(struct aml *a, const char *name);

/* An Integer constant in its shortest form (ZeroOp, OneOp, Byte/Word/DWord/
 * QWordPrefix). Values above 32 bits need a DSDT of revision 2 or later. */
void aml_integer(struct aml *a, uint64_t v);

/* A String constant; s must be 7-bit ASCII without control characters. */
void aml_string(struct aml *a, const char *s);

/* The 32-bit compressed EISA ID of a 7-character PNP-style id ("PNP0A03":
 * three letters A-Z then four hex digits, upper- or lower-case hex), in the
 * byte order AML stores it. Returns false (and leaves *out alone) if
 * the id is malformed. */
bool aml_eisaid_value(const char *id, uint32_t *out);

/* EISAID("...") as a DWord integer constant. */
void aml_eisaid(struct aml *a, const char *id);

/* Name(name, ...): emits NameOp and the name; the caller emits the value
 * right after (an integer, string, Package or Buffer). */
void aml_name(struct aml *a, const char *name);

/* Convenience forms of Name() with a simple value. */
void aml_name_integer(struct aml *a, const char *name, uint64_t v);
void aml_name_string(struct aml *a, const char *name, const char *s);
void aml_name_eisaid(struct aml *a, const char *name, const char *id);

/* Scope(name) { ... } and Device(name) { ... }. */
size_t aml_scope_begin(struct aml *a, const char *name);
void aml_scope_end(struct aml *a, size_t mark);
size_t aml_device_begin(struct aml *a, const char *name);
void aml_device_end(struct aml *a, size_t mark);

/* Package(n) { elements }: the caller emits the n elements (integers,
 * strings, names, nested packages) and passes their count, at most 255, to
 * aml_package_end(). */
size_t aml_package_begin(struct aml *a);
void aml_package_end(struct aml *a, size_t mark, unsigned nr_elements);

/* Buffer() { bytes }: the size is the number of bytes emitted in between. */
size_t aml_buffer_begin(struct aml *a);
void aml_buffer_end(struct aml *a, size_t mark);

/* ResourceTemplate() { descriptors }: a Buffer ending in an EndTag whose
 * checksum byte is 0 ("treat as valid", which the spec allows). */
size_t aml_restemplate_begin(struct aml *a);
void aml_restemplate_end(struct aml *a, size_t mark);

/* Resource descriptors (ACPI 6.x section 6.4), for use inside a template. */

/* IO(Decode16, min, max, align, len). */
void aml_res_io(struct aml *a, uint16_t min, uint16_t max, uint8_t align, uint8_t len);

/* IRQNoFlags() { irq }: ISA-style, edge-triggered, active-high, exclusive.
 * irq must be < 16. */
void aml_res_irq_noflags(struct aml *a, uint8_t irq);

/* IRQ(mode, polarity, sharing) { irq } (the 3-byte form with flags). */
void aml_res_irq(struct aml *a, uint8_t irq, bool level, bool active_low, bool shared);

/* Interrupt(ResourceConsumer, mode, polarity, sharing) { gsi }. */
void aml_res_ext_irq(struct aml *a, uint32_t gsi, bool level, bool active_low, bool shared);

/* Memory32Fixed(ReadWrite, base, len). */
void aml_res_mem32_fixed(struct aml *a, uint32_t base, uint32_t len);

/* The address space descriptors below describe a fixed [min, max] window
 * the device produces (a bridge's decode range): ResourceProducer,
 * MinFixed, MaxFixed, PosDecode, granularity 0, no translation, length
 * max - min + 1. */
void aml_res_word_bus(struct aml *a, uint16_t min, uint16_t max);
void aml_res_word_io(struct aml *a, uint16_t min, uint16_t max);
void aml_res_dword_mem(struct aml *a, uint32_t min, uint32_t max, bool cacheable);
void aml_res_qword_mem(struct aml *a, uint64_t min, uint64_t max, bool cacheable);

#endif
