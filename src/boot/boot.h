/* Kernel loading: detects the image format from its content, checks it
 * before the VM exists (boot_prepare) and loads it into guest memory when
 * the VM is built (boot_load): PVH ELF or bzImage with the 64-bit entry. */
#ifndef KESTREL_BOOT_H
#define KESTREL_BOOT_H

#include <stddef.h>
#include <stdint.h>

struct vm;

enum boot_mode {
	BOOT_PVH,      /* 32-bit protected mode, paging off, EBX = hvm_start_info */
	BOOT_LINUX64,  /* long mode, identity-mapped, RSI = boot_params */
};

/* What the boot vCPU starts with. */
struct boot_info {
	enum boot_mode mode;
	uint64_t entry;
	uint64_t arg;   /* EBX for PVH, RSI for the 64-bit Linux entry */
};

/* One loadable piece of an image: file bytes [offset, offset+filesz) go to
 * guest-physical `paddr`, the rest up to memsz is zeroed. */
struct boot_segment {
	uint64_t paddr;
	uint64_t offset;
	uint64_t filesz;
	uint64_t memsz;
};

#define PVH_MAX_SEGMENTS 16

struct pvh_image {
	uint32_t entry;   /* XEN_ELFNOTE_PHYS32_ENTRY */
	unsigned nr_segments;
	struct boot_segment segments[PVH_MAX_SEGMENTS];
};

/* Parses an ELF (32- or 64-bit, x86) and its PVH entry note. Checks every
 * header, segment and note against the file size. Returns 0, or -1 with a
 * one-line reason in `err`. */
int pvh_parse(const uint8_t *img, size_t size, struct pvh_image *out, char *err, size_t errlen);

struct bzimage_info {
	uint16_t version;
	uint8_t setup_sects;
	uint64_t setup_size;      /* bytes of real-mode setup, incl. boot sector */
	uint64_t kernel_offset;   /* protected-mode kernel within the file */
	uint64_t kernel_size;
	uint64_t pref_address;
	uint32_t init_size;
	uint32_t kernel_alignment;
	uint32_t initrd_addr_max;
	uint32_t cmdline_size;    /* max cmdline length, excluding NUL */
	uint8_t relocatable;
	uint16_t xloadflags;
	size_t hdr_end;           /* end offset of the setup header in the file */
};

/* Parses a bzImage's setup header. Requires protocol >= 2.12 with the
 * 64-bit entry point (XLF_KERNEL_64). Returns 0, or -1 with a reason. */
int bzimage_parse(const uint8_t *img, size_t size, struct bzimage_info *out, char *err, size_t errlen);

/* True if the bytes look like a bzImage / an ELF (format detection only). */
int boot_is_bzimage(const uint8_t *img, size_t size);
int boot_is_elf(const uint8_t *img, size_t size);

/* A kernel (and initrd) read, checked and placed for one configuration,
 * before any VM resource exists: everything that can be wrong with the
 * user's --kernel, --initrd, --cmdline and --memory is found here, so it is
 * reported even on a host without KVM. The files are read once, into the
 * heap; boot_load() copies them into guest RAM at every (re)build. */
struct boot_image {
	const char *kernel_path;  /* borrowed from the config, for messages */
	uint8_t *kernel;          /* the whole kernel file */
	size_t kernel_size;
	uint8_t *initrd;          /* the whole initrd, or NULL */
	size_t initrd_size;
	enum boot_mode mode;      /* the format: BOOT_PVH or BOOT_LINUX64 */
	struct pvh_image pvh;     /* BOOT_PVH: entry and segments */
	struct bzimage_info bz;   /* BOOT_LINUX64: the setup header */
	uint64_t initrd_addr;     /* guest-physical, page-aligned; 0 without an initrd */
};

struct vm_config;

/* Reads cfg->kernel and cfg->initrd into `out`, detects the kernel's format
 * from its content, parses it, and checks that the kernel, the command line
 * and the initrd fit this kernel and cfg->mem_size of guest RAM. Takes no
 * resource but heap memory. Returns 0 (free `out` with boot_image_free()),
 * or -1 with one error line printed naming the bad file or option and
 * nothing to free. */
int boot_prepare(const struct vm_config *cfg, struct boot_image *out);

/* Frees what boot_prepare() read. Safe on a zeroed or freed image. */
void boot_image_free(struct boot_image *img);

/* Copies vm->image (prepared for vm->cfg) and the command line into guest
 * memory, writes the boot structures (PVH start info or zero page, E820
 * map) after the firmware tables exist, and fills vm->boot. Returns 0, or
 * -1 with an error printed (only if guest memory is not laid out as
 * boot_prepare() assumed). */
int boot_load(struct vm *vm);

#endif
