/* PVH ELF parsing: an ELF whose PT_NOTE holds XEN_ELFNOTE_PHYS32_ENTRY. */
#include <elf.h>
#include <stdio.h>
#include <string.h>

#include "boot/boot.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18

int boot_is_elf(const uint8_t *img, size_t size)
{
	return size >= SELFMAG && memcmp(img, ELFMAG, SELFMAG) == 0;
}

/* Reads a little-endian field of `width` bytes at `off` if it lies within
 * the image; ELF field widths differ between the classes. */
static int rd(const uint8_t *img, size_t size, uint64_t off, unsigned width, uint64_t *out)
{
	*out = 0;
	if (off > size || width > size - off)
		return -1;
	uint64_t v = 0;
	for (unsigned i = 0; i < width; i++)
		v |= (uint64_t)img[off + i] << (8 * i);
	*out = v;
	return 0;
}

/* Field offsets/widths for the two ELF classes. */
struct elf_layout {
	unsigned ph_off, ph_entsize_min;
	unsigned e_phoff_off, e_phoff_w, e_phentsize_off, e_phnum_off;
	unsigned p_type, p_offset, p_paddr, p_filesz, p_memsz, w;
};

static const struct elf_layout elf64 = { 0, sizeof(Elf64_Phdr), 32, 8, 54, 56, 0, 8, 24, 32, 40, 8 };
static const struct elf_layout elf32 = { 0, sizeof(Elf32_Phdr), 28, 4, 42, 44, 0, 4, 12, 16, 20, 4 };

static int pvh_scan_notes(const uint8_t *img, size_t size, uint64_t off, uint64_t len,
			  struct pvh_image *out, int *found)
{
	uint64_t end = off + len;
	while (off + 12 <= end) {
		uint64_t namesz, descsz, type;
		if (rd(img, size, off, 4, &namesz) || rd(img, size, off + 4, 4, &descsz) ||
		    rd(img, size, off + 8, 4, &type))
			return -1;
		uint64_t name_off = off + 12;
		uint64_t desc_off = name_off + ((namesz + 3) & ~3ULL);
		uint64_t next = desc_off + ((descsz + 3) & ~3ULL);
		if (next > end || next <= off)
			return -1;
		if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 &&
		    memcmp(img + name_off, "Xen", 4) == 0 && (descsz == 4 || descsz == 8)) {
			uint64_t entry;
			rd(img, size, desc_off, (unsigned)descsz, &entry);
			if (entry > UINT32_MAX)
				return -1;
			out->entry = (uint32_t)entry;
			*found = 1;
		}
		off = next;
	}
	return 0;
}

int pvh_parse(const uint8_t *img, size_t size, struct pvh_image *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (size < EI_NIDENT + 40 || !boot_is_elf(img, size)) {
		snprintf(err, errlen, "not an ELF file");
		return -1;
	}
	const struct elf_layout *L;
	if (img[EI_CLASS] == ELFCLASS64 && size >= sizeof(Elf64_Ehdr))
		L = &elf64;
	else if (img[EI_CLASS] == ELFCLASS32 && size >= sizeof(Elf32_Ehdr))
		L = &elf32;
	else {
		snprintf(err, errlen, "ELF class %u is not supported (expected 32- or 64-bit)", img[EI_CLASS]);
		return -1;
	}
	if (img[EI_DATA] != ELFDATA2LSB) {
		snprintf(err, errlen, "ELF is not little-endian");
		return -1;
	}
	uint64_t machine;
	rd(img, size, 18, 2, &machine);
	if (machine != EM_X86_64 && machine != EM_386) {
		snprintf(err, errlen, "ELF machine %llu is not x86 (expected EM_X86_64 or EM_386)",
			 (unsigned long long)machine);
		return -1;
	}
	uint64_t phoff, phentsize, phnum;
	rd(img, size, L->e_phoff_off, L->e_phoff_w, &phoff);
	rd(img, size, L->e_phentsize_off, 2, &phentsize);
	rd(img, size, L->e_phnum_off, 2, &phnum);
	if (phnum == 0 || phentsize < L->ph_entsize_min || phoff > size ||
	    phnum * phentsize > size - phoff) {
		snprintf(err, errlen, "ELF program headers lie outside the file");
		return -1;
	}
	int found = 0;
	for (uint64_t i = 0; i < phnum; i++) {
		uint64_t ph = phoff + i * phentsize, type, offset, paddr, filesz, memsz;
		rd(img, size, ph + L->p_type, 4, &type);
		rd(img, size, ph + L->p_offset, L->w, &offset);
		rd(img, size, ph + L->p_paddr, L->w, &paddr);
		rd(img, size, ph + L->p_filesz, L->w, &filesz);
		rd(img, size, ph + L->p_memsz, L->w, &memsz);
		if (type != PT_LOAD && type != PT_NOTE)
			continue;
		if (offset > size || filesz > size - offset) {
			snprintf(err, errlen, "ELF segment %llu lies outside the file", (unsigned long long)i);
			return -1;
		}
		if (type == PT_NOTE) {
			if (pvh_scan_notes(img, size, offset, filesz, out, &found)) {
				snprintf(err, errlen, "ELF note segment %llu is malformed", (unsigned long long)i);
				return -1;
			}
			continue;
		}
		if (memsz == 0)
			continue;
		if (filesz > memsz || paddr + memsz < paddr) {
			snprintf(err, errlen, "ELF segment %llu has bad sizes", (unsigned long long)i);
			return -1;
		}
		if (out->nr_segments == PVH_MAX_SEGMENTS) {
			snprintf(err, errlen, "ELF has more than %d loadable segments", PVH_MAX_SEGMENTS);
			return -1;
		}
		out->segments[out->nr_segments++] = (struct boot_segment){ paddr, offset, filesz, memsz };
	}
	if (!found) {
		snprintf(err, errlen, "ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "
				      "build the kernel with CONFIG_PVH=y");
		return -1;
	}
	if (out->nr_segments == 0) {
		snprintf(err, errlen, "ELF has no loadable segments");
		return -1;
	}
	return 0;
}
