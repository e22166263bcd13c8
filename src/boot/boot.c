/* Loading the kernel (and initrd, cmdline) into guest memory. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "boot/boot.h"
#include "boot/bootparam.h"
#include "core/log.h"
#include "core/vm.h"
#include "x86/e820.h"
#include "x86/layout.h"

struct file_map {
	const uint8_t *data;
	size_t size;
};

static int file_map_open(const char *path, const char *what, struct file_map *fm)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		log_err("cannot open %s '%s': %s", what, path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		log_err("%s '%s' is not a regular file", what, path);
		close(fd);
		return -1;
	}
	if (st.st_size == 0) {
		log_err("%s '%s' is empty", what, path);
		close(fd);
		return -1;
	}
	void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		log_err("cannot read %s '%s': %s", what, path, strerror(errno));
		return -1;
	}
	fm->data = p;
	fm->size = (size_t)st.st_size;
	return 0;
}

static void file_map_close(struct file_map *fm)
{
	if (fm->data)
		munmap((void *)fm->data, fm->size);
	fm->data = NULL;
}

/* The initrd goes at the top of low RAM, page-aligned, below `limit`. */
static int boot_load_initrd(struct vm *vm, uint64_t limit, uint64_t kernel_end,
			    uint64_t *addr, uint64_t *size)
{
	*addr = *size = 0;
	if (!vm->cfg->initrd)
		return 0;
	struct file_map fm;
	if (file_map_open(vm->cfg->initrd, "initrd", &fm))
		return -1;
	uint64_t low_end = vm->mem.regions[0].size;
	uint64_t top = low_end < limit ? low_end : limit;
	uint64_t at = top > fm.size ? ((top - fm.size) & ~0xfffULL) : 0;
	if (at < kernel_end || fm.size > top) {
		log_err("initrd '%s' (%zu MiB) does not fit in guest memory below 0x%llx; use more --memory",
			vm->cfg->initrd, fm.size >> 20, (unsigned long long)top);
		file_map_close(&fm);
		return -1;
	}
	guest_mem_write(&vm->mem, at, fm.data, fm.size);
	*addr = at;
	*size = fm.size;
	file_map_close(&fm);
	return 0;
}

static int boot_write_cmdline(struct vm *vm, uint64_t max_len)
{
	size_t len = strlen(vm->cfg->cmdline);
	if (len + 1 > max_len || len + 1 > LAYOUT_CMDLINE_MAX) {
		log_err("--cmdline is %zu bytes; this kernel accepts at most %llu", len,
			(unsigned long long)((max_len < LAYOUT_CMDLINE_MAX ? max_len : LAYOUT_CMDLINE_MAX) - 1));
		return -1;
	}
	return guest_mem_write(&vm->mem, LAYOUT_CMDLINE, vm->cfg->cmdline, len + 1);
}

static uint64_t boot_rsdp(void)
{
	return LAYOUT_ACPI_BASE;
}

static int boot_load_pvh(struct vm *vm, const struct file_map *fm)
{
	struct pvh_image img;
	char err[256];
	if (pvh_parse(fm->data, fm->size, &img, err, sizeof(err))) {
		log_err("kernel '%s': %s", vm->cfg->kernel, err);
		return -1;
	}
	uint64_t kernel_end = 0;
	for (unsigned i = 0; i < img.nr_segments; i++) {
		const struct boot_segment *s = &img.segments[i];
		uint8_t *dst = guest_mem_ptr(&vm->mem, s->paddr, s->memsz);
		if (!dst || s->paddr < LAYOUT_HIGH_MEM) {
			log_err("kernel '%s': segment at 0x%llx (%llu bytes) is outside guest RAM above 1 MiB; "
				"use more --memory", vm->cfg->kernel, (unsigned long long)s->paddr,
				(unsigned long long)s->memsz);
			return -1;
		}
		memcpy(dst, fm->data + s->offset, s->filesz);
		memset(dst + s->filesz, 0, s->memsz - s->filesz);
		if (s->paddr + s->memsz > kernel_end)
			kernel_end = s->paddr + s->memsz;
	}
	if (boot_write_cmdline(vm, LAYOUT_CMDLINE_MAX))
		return -1;
	uint64_t initrd, initrd_size;
	if (boot_load_initrd(vm, LAYOUT_HOLE_START, kernel_end, &initrd, &initrd_size))
		return -1;

	struct e820_entry e820[E820_MAX_ENTRIES];
	int n = e820_build(vm->mem.ram_size, e820);
	uint64_t at = LAYOUT_START_INFO;
	struct hvm_start_info si = {
		.magic = HVM_START_MAGIC,
		.version = 1,
		.cmdline_paddr = LAYOUT_CMDLINE,
		.rsdp_paddr = boot_rsdp(),
		.memmap_entries = (uint32_t)n,
	};
	at += sizeof(si);
	si.memmap_paddr = at;
	for (int i = 0; i < n; i++) {
		struct hvm_memmap_entry me = { e820[i].addr, e820[i].size, e820[i].type, 0 };
		guest_mem_write(&vm->mem, at, &me, sizeof(me));
		at += sizeof(me);
	}
	if (initrd_size) {
		struct hvm_modlist_entry mod = { .paddr = initrd, .size = initrd_size };
		si.nr_modules = 1;
		si.modlist_paddr = at;
		guest_mem_write(&vm->mem, at, &mod, sizeof(mod));
	}
	guest_mem_write(&vm->mem, LAYOUT_START_INFO, &si, sizeof(si));
	vm->boot = (struct boot_info){ BOOT_PVH, img.entry, LAYOUT_START_INFO };
	log_info("loaded PVH ELF '%s', entry 0x%x", vm->cfg->kernel, img.entry);
	return 0;
}

/* Identity map of the first 4 GiB with 2 MiB pages, for the 64-bit entry. */
static void boot_write_identity_map(struct vm *vm)
{
	uint64_t *pml4 = guest_mem_ptr(&vm->mem, LAYOUT_PML4, 4096);
	uint64_t *pdpt = guest_mem_ptr(&vm->mem, LAYOUT_PDPT, 4096);
	uint64_t *pd = guest_mem_ptr(&vm->mem, LAYOUT_PD, 4 * 4096);
	memset(pml4, 0, 4096);
	memset(pdpt, 0, 4096);
	pml4[0] = LAYOUT_PDPT | 0x3;
	for (uint64_t i = 0; i < 4; i++)
		pdpt[i] = (LAYOUT_PD + i * 4096) | 0x3;
	for (uint64_t i = 0; i < 4 * 512; i++)
		pd[i] = (i << 21) | 0x83; /* present, writable, 2 MiB */
}

static int boot_load_bzimage(struct vm *vm, const struct file_map *fm)
{
	struct bzimage_info bz;
	char err[256];
	if (bzimage_parse(fm->data, fm->size, &bz, err, sizeof(err))) {
		log_err("kernel '%s': %s", vm->cfg->kernel, err);
		return -1;
	}
	uint64_t load = bz.pref_address;
	uint64_t low_end = vm->mem.regions[0].size;
	if (load + bz.init_size > low_end) {
		log_err("kernel '%s' needs %llu MiB of low memory to decompress; use more --memory",
			vm->cfg->kernel, (unsigned long long)((load + bz.init_size + (1 << 20) - 1) >> 20));
		return -1;
	}
	guest_mem_write(&vm->mem, load, fm->data + bz.kernel_offset, bz.kernel_size);

	uint8_t *zp = guest_mem_ptr(&vm->mem, LAYOUT_ZERO_PAGE, BP_SIZE);
	memset(zp, 0, BP_SIZE);
	memcpy(zp + SETUP_HDR_START, fm->data + SETUP_HDR_START, bz.hdr_end - SETUP_HDR_START);
	zp[BP_TYPE_OF_LOADER] = 0xff;
	zp[BP_LOADFLAGS] |= CAN_USE_HEAP;
	uint16_t heap_end = 0xfe00;
	memcpy(zp + BP_HEAP_END_PTR, &heap_end, 2);

	uint64_t cmdline_max = bz.cmdline_size ? (uint64_t)bz.cmdline_size + 1 : 256;
	if (boot_write_cmdline(vm, cmdline_max))
		return -1;
	uint32_t cmd = (uint32_t)LAYOUT_CMDLINE;
	memcpy(zp + BP_CMD_LINE_PTR, &cmd, 4);

	uint64_t initrd, initrd_size;
	uint64_t limit = (uint64_t)bz.initrd_addr_max + 1;
	if (bz.xloadflags & 0x40) /* XLF_CAN_BE_LOADED_ABOVE_4G, irrelevant below the hole */
		limit = LAYOUT_HOLE_START;
	if (boot_load_initrd(vm, limit, load + bz.init_size, &initrd, &initrd_size))
		return -1;
	uint32_t lo = (uint32_t)initrd, sz = (uint32_t)initrd_size;
	memcpy(zp + BP_RAMDISK_IMAGE, &lo, 4);
	memcpy(zp + BP_RAMDISK_SIZE, &sz, 4);

	struct e820_entry e820[E820_MAX_ENTRIES];
	int n = e820_build(vm->mem.ram_size, e820);
	zp[BP_E820_ENTRIES] = (uint8_t)n;
	memcpy(zp + BP_E820_TABLE, e820, (size_t)n * sizeof(e820[0]));
	uint64_t rsdp = boot_rsdp();
	memcpy(zp + BP_ACPI_RSDP_ADDR, &rsdp, 8);

	boot_write_identity_map(vm);
	vm->boot = (struct boot_info){ BOOT_LINUX64, load + 0x200, LAYOUT_ZERO_PAGE };
	log_info("loaded bzImage '%s' (protocol %u.%02u) at 0x%llx", vm->cfg->kernel, bz.version >> 8,
		 bz.version & 0xff, (unsigned long long)load);
	return 0;
}

int boot_load(struct vm *vm)
{
	struct file_map fm;
	if (file_map_open(vm->cfg->kernel, "kernel", &fm))
		return -1;
	int ret;
	if (boot_is_elf(fm.data, fm.size)) {
		ret = boot_load_pvh(vm, &fm);
	} else if (boot_is_bzimage(fm.data, fm.size)) {
		ret = boot_load_bzimage(vm, &fm);
	} else {
		log_err("kernel '%s' is neither a bzImage nor an ELF with a PVH note", vm->cfg->kernel);
		ret = -1;
	}
	file_map_close(&fm);
	return ret;
}
