/* Kernel image parsing: PVH ELF notes and bzImage setup headers, including
 * truncated and hostile files. */
#include <elf.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "boot/boot.h"
#include "boot/bootparam.h"

/* A minimal ELF64 with one PT_LOAD and one PT_NOTE holding the PVH note. */
struct pvh_elf {
	Elf64_Ehdr eh;
	Elf64_Phdr ph[2];
	struct {
		uint32_t namesz, descsz, type;
		char name[4];
		uint32_t entry;
	} note;
	uint8_t payload[64];
};

static void make_pvh(struct pvh_elf *e)
{
	memset(e, 0, sizeof(*e));
	memcpy(e->eh.e_ident, ELFMAG, SELFMAG);
	e->eh.e_ident[EI_CLASS] = ELFCLASS64;
	e->eh.e_ident[EI_DATA] = ELFDATA2LSB;
	e->eh.e_type = ET_EXEC;
	e->eh.e_machine = EM_X86_64;
	e->eh.e_phoff = offsetof(struct pvh_elf, ph);
	e->eh.e_phentsize = sizeof(Elf64_Phdr);
	e->eh.e_phnum = 2;
	e->ph[0].p_type = PT_LOAD;
	e->ph[0].p_offset = offsetof(struct pvh_elf, payload);
	e->ph[0].p_paddr = 0x100000;
	e->ph[0].p_filesz = sizeof(e->payload);
	e->ph[0].p_memsz = 0x2000;
	e->ph[1].p_type = PT_NOTE;
	e->ph[1].p_offset = offsetof(struct pvh_elf, note);
	e->ph[1].p_filesz = sizeof(e->note);
	e->note.namesz = 4;
	e->note.descsz = 4;
	e->note.type = 18;
	memcpy(e->note.name, "Xen", 4);
	e->note.entry = 0x100040;
}

static void test_pvh_valid(void **state)
{
	(void)state;
	struct pvh_elf e;
	make_pvh(&e);
	struct pvh_image img;
	char err[256];
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), 0);
	assert_int_equal(img.entry, 0x100040);
	assert_int_equal(img.nr_segments, 1);
	assert_int_equal(img.segments[0].paddr, 0x100000);
	assert_int_equal(img.segments[0].memsz, 0x2000);
}

static void test_pvh_every_truncation_fails_cleanly(void **state)
{
	(void)state;
	struct pvh_elf e;
	make_pvh(&e);
	char err[256];
	struct pvh_image img;
	/* Each prefix in its own exact-size buffer so ASan sees any overread. */
	size_t end = offsetof(struct pvh_elf, payload) + sizeof(e.payload); /* before tail padding */
	for (size_t n = 0; n < end; n++) {
		uint8_t *buf = malloc(n ? n : 1);
		memcpy(buf, &e, n);
		assert_int_equal(pvh_parse(buf, n, &img, err, sizeof(err)), -1);
		assert_true(strlen(err) > 0);
		free(buf);
	}
}

static void test_pvh_no_note(void **state)
{
	(void)state;
	struct pvh_elf e;
	make_pvh(&e);
	e.note.type = 5;
	struct pvh_image img;
	char err[256];
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "PVH"));
}

static void test_pvh_hostile(void **state)
{
	(void)state;
	struct pvh_image img;
	char err[256];
	struct pvh_elf e;

	make_pvh(&e);
	e.ph[0].p_filesz = 0x3000; /* filesz > memsz and past EOF */
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);

	make_pvh(&e);
	e.ph[0].p_offset = UINT64_MAX - 8; /* offset + filesz wraps */
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);

	make_pvh(&e);
	e.ph[0].p_paddr = UINT64_MAX - 0x10; /* paddr + memsz wraps */
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);

	make_pvh(&e);
	e.eh.e_phnum = 0xffff; /* program headers past EOF */
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);

	make_pvh(&e);
	e.eh.e_phoff = UINT64_MAX;
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);

	make_pvh(&e);
	e.note.namesz = 0xfffffff0; /* note runs past its segment */
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);

	make_pvh(&e);
	e.note.descsz = 3; /* wrong descriptor size: ignored, so no entry */
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);

	make_pvh(&e);
	e.eh.e_machine = EM_AARCH64;
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "x86"));

	make_pvh(&e);
	e.eh.e_ident[EI_CLASS] = 7;
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), -1);
}

static void test_pvh_8byte_note(void **state)
{
	(void)state;
	/* Linux's vmlinux uses an 8-byte (.quad) descriptor. */
	struct {
		Elf64_Ehdr eh;
		Elf64_Phdr ph[2];
		uint32_t namesz, descsz, type;
		char name[4];
		uint64_t entry;
		uint8_t payload[16];
	} e;
	memset(&e, 0, sizeof(e));
	memcpy(e.eh.e_ident, ELFMAG, SELFMAG);
	e.eh.e_ident[EI_CLASS] = ELFCLASS64;
	e.eh.e_ident[EI_DATA] = ELFDATA2LSB;
	e.eh.e_machine = EM_X86_64;
	e.eh.e_phoff = offsetof(__typeof__(e), ph);
	e.eh.e_phentsize = sizeof(Elf64_Phdr);
	e.eh.e_phnum = 2;
	e.ph[0] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_offset = offsetof(__typeof__(e), payload),
				.p_paddr = 0x1000000, .p_filesz = 16, .p_memsz = 16 };
	e.ph[1] = (Elf64_Phdr){ .p_type = PT_NOTE, .p_offset = offsetof(__typeof__(e), namesz),
				.p_filesz = 24 };
	e.namesz = 4;
	e.descsz = 8;
	e.type = 18;
	memcpy(e.name, "Xen", 4);
	e.entry = 0x1000abc;
	struct pvh_image img;
	char err[256];
	assert_int_equal(pvh_parse((uint8_t *)&e, sizeof(e), &img, err, sizeof(err)), 0);
	assert_int_equal(img.entry, 0x1000abc);
}

/* A bzImage: 1 boot sector + setup_sects sectors + kernel bytes. */
static uint8_t *make_bzimage(size_t *size, uint16_t version, uint8_t setup_sects)
{
	size_t setup = (size_t)(setup_sects + 1) * 512;
	*size = setup + 4096;
	uint8_t *b = calloc(1, *size);
	b[0x1f1] = setup_sects;
	uint32_t syssize = 4096 / 16;
	memcpy(b + 0x1f4, &syssize, 4);
	b[0x1fe] = 0x55;
	b[0x1ff] = 0xaa;
	b[0x200] = 0xeb;
	b[0x201] = 0x66; /* header ends at 0x268 */
	memcpy(b + 0x202, "HdrS", 4);
	memcpy(b + 0x206, &version, 2);
	b[0x211] = LOADED_HIGH;
	uint32_t initrd_max = 0x7fffffff, align = 0x200000, cmdline_size = 2047;
	memcpy(b + 0x22c, &initrd_max, 4);
	memcpy(b + 0x230, &align, 4);
	b[0x234] = 1;
	uint16_t xlf = XLF_KERNEL_64;
	memcpy(b + 0x236, &xlf, 2);
	memcpy(b + 0x238, &cmdline_size, 4);
	uint64_t pref = 0x1000000;
	memcpy(b + 0x258, &pref, 8);
	uint32_t init_size = 0x800000;
	memcpy(b + 0x260, &init_size, 4);
	return b;
}

static void test_bzimage_valid(void **state)
{
	(void)state;
	size_t size;
	uint8_t *b = make_bzimage(&size, 0x020f, 27);
	struct bzimage_info bz;
	char err[256];
	assert_true(boot_is_bzimage(b, size));
	assert_int_equal(bzimage_parse(b, size, &bz, err, sizeof(err)), 0);
	assert_int_equal(bz.setup_size, 28 * 512);
	assert_int_equal(bz.kernel_offset, 28 * 512);
	assert_int_equal(bz.kernel_size, 4096);
	assert_int_equal(bz.pref_address, 0x1000000);
	assert_int_equal(bz.init_size, 0x800000);
	assert_int_equal(bz.cmdline_size, 2047);
	assert_int_equal(bz.hdr_end, 0x268);
	free(b);
}

static void test_bzimage_setup_sects_zero_means_four(void **state)
{
	(void)state;
	size_t size;
	uint8_t *b = make_bzimage(&size, 0x020c, 4);
	b[0x1f1] = 0;
	struct bzimage_info bz;
	char err[256];
	assert_int_equal(bzimage_parse(b, size, &bz, err, sizeof(err)), 0);
	assert_int_equal(bz.setup_size, 5 * 512);
	free(b);
}

static void test_bzimage_rejects(void **state)
{
	(void)state;
	size_t size;
	struct bzimage_info bz;
	char err[256];
	uint8_t *b;

	b = make_bzimage(&size, 0x020b, 4); /* too old for the 64-bit entry */
	assert_int_equal(bzimage_parse(b, size, &bz, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "2.11"));
	free(b);

	b = make_bzimage(&size, 0x020f, 4);
	b[0x236] = 0; /* no XLF_KERNEL_64 */
	assert_int_equal(bzimage_parse(b, size, &bz, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "64-bit"));
	free(b);

	b = make_bzimage(&size, 0x020f, 255); /* setup claims more than the file */
	assert_int_equal(bzimage_parse(b, 4096, &bz, err, sizeof(err)), -1);
	free(b);

	b = make_bzimage(&size, 0x020f, 4);
	uint32_t syssize = 0x10000000; /* kernel claims more than the file */
	memcpy(b + 0x1f4, &syssize, 4);
	assert_int_equal(bzimage_parse(b, size, &bz, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "truncated"));
	free(b);

	b = make_bzimage(&size, 0x020f, 4);
	b[0x201] = 0x10; /* header too short for protocol 2.12 fields */
	assert_int_equal(bzimage_parse(b, size, &bz, err, sizeof(err)), -1);
	free(b);

	b = make_bzimage(&size, 0x020f, 4);
	memset(b + 0x258, 0, 8); /* no preferred address */
	assert_int_equal(bzimage_parse(b, size, &bz, err, sizeof(err)), -1);
	free(b);
}

static void test_bzimage_every_truncation_fails_cleanly(void **state)
{
	(void)state;
	size_t size;
	uint8_t *b = make_bzimage(&size, 0x020f, 4);
	struct bzimage_info bz;
	char err[256];
	for (size_t n = 0; n < 5 * 512 + 1; n++) {
		uint8_t *t = malloc(n ? n : 1);
		memcpy(t, b, n);
		assert_int_equal(bzimage_parse(t, n, &bz, err, sizeof(err)), -1);
		free(t);
	}
	free(b);
}

static void test_format_detection(void **state)
{
	(void)state;
	uint8_t junk[1024];
	memset(junk, 0x41, sizeof(junk));
	assert_false(boot_is_bzimage(junk, sizeof(junk)));
	assert_false(boot_is_elf(junk, sizeof(junk)));
	assert_false(boot_is_elf(junk, 0));
	assert_false(boot_is_bzimage(junk, 0x205));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pvh_valid),
		cmocka_unit_test(test_pvh_every_truncation_fails_cleanly),
		cmocka_unit_test(test_pvh_no_note),
		cmocka_unit_test(test_pvh_hostile),
		cmocka_unit_test(test_pvh_8byte_note),
		cmocka_unit_test(test_bzimage_valid),
		cmocka_unit_test(test_bzimage_setup_sects_zero_means_four),
		cmocka_unit_test(test_bzimage_rejects),
		cmocka_unit_test(test_bzimage_every_truncation_fails_cleanly),
		cmocka_unit_test(test_format_detection),
	};
	return cmocka_run_group_tests_name("boot", tests, NULL, NULL);
}
