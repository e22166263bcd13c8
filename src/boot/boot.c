/* The kernel (and initrd, cmdline): read, checked and placed before the VM
 * exists (boot_prepare), copied into guest memory by the builder
 * (boot_load). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "boot/boot.h"
#include "boot/bootparam.h"
#include "core/log.h"
#include "core/vm.h"
#include "x86/e820.h"
#include "x86/layout.h"

/* Reads a whole kernel or initrd (`what`) into the heap, with one error
 * line naming the file for each way it can be unusable. O_NONBLOCK: a FIFO
 * or a terminal named by mistake is refused as "not a regular file" instead
 * of blocking the open; regular files ignore the flag. */
static int boot_read_file(const char *path, const char *what, uint8_t **data, size_t *size)
{
	*data = NULL;
	*size = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
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
	size_t want = (size_t)st.st_size;
	uint8_t *buf = want ? malloc(want) : NULL;
	if (want && !buf) {
		log_err("cannot read %s '%s': %s", what, path, strerror(ENOMEM));
		close(fd);
		return -1;
	}
	/* A file that shrinks while it is read is taken as it now is. */
	size_t got = 0;
	while (got < want) {
		ssize_t n = read(fd, buf + got, want - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			log_err("cannot read %s '%s': %s", what, path, strerror(errno));
			free(buf);
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (got == 0) {
		log_err("%s '%s' is empty", what, path);
		free(buf);
		return -1;
	}
	*data = buf;
	*size = got;
	return 0;
}

/* Guest memory does not exist yet when boot_prepare() runs, so its layout
 * is read off the E820 map, which describes the layout guest_mem_alloc()
 * makes (RAM below the PCI hole, the rest from 4 GiB). */

/* The end of the RAM that starts at 1 MiB: below the PCI hole. */
static uint64_t boot_low_ram_end(uint64_t ram_size)
{
	struct e820_entry e820[E820_MAX_ENTRIES];
	int n = e820_build(ram_size, e820);
	for (int i = 0; i < n; i++)
		if (e820[i].type == E820_RAM && e820[i].addr == LAYOUT_HIGH_MEM)
			return e820[i].addr + e820[i].size;
	return LAYOUT_HIGH_MEM;
}

/* True if guest-physical [gpa, gpa + len) is RAM at or above 1 MiB. */
static bool boot_ram_holds(uint64_t ram_size, uint64_t gpa, uint64_t len)
{
	struct e820_entry e820[E820_MAX_ENTRIES];
	int n = e820_build(ram_size, e820);
	for (int i = 0; i < n; i++) {
		uint64_t addr = e820[i].addr, size = e820[i].size;
		if (e820[i].type == E820_RAM && addr >= LAYOUT_HIGH_MEM && gpa >= addr && gpa - addr <= size &&
		    len <= size - (gpa - addr))
			return true;
	}
	return false;
}

/* Decides where everything goes in cfg->mem_size of guest RAM and checks
 * that it fits: the kernel (PVH segments in RAM above 1 MiB; a bzImage's
 * whole decompression area below the hole), the command line within this
 * kernel's limit, and the initrd at the top of low RAM, page-aligned,
 * above the kernel and below the kernel's initrd limit. */
static int boot_place(const struct vm_config *cfg, struct boot_image *img)
{
	uint64_t low_end = boot_low_ram_end(cfg->mem_size);
	uint64_t kernel_end = 0, cmdline_max, initrd_limit;
	if (img->mode == BOOT_PVH) {
		for (unsigned i = 0; i < img->pvh.nr_segments; i++) {
			const struct boot_segment *s = &img->pvh.segments[i];
			if (!boot_ram_holds(cfg->mem_size, s->paddr, s->memsz)) {
				log_err("kernel '%s': segment at 0x%llx (%llu bytes) is outside guest RAM above 1 MiB; "
					"use more --memory", cfg->kernel, (unsigned long long)s->paddr,
					(unsigned long long)s->memsz);
				return -1;
			}
			if (s->paddr + s->memsz > kernel_end)
				kernel_end = s->paddr + s->memsz;
		}
		cmdline_max = LAYOUT_CMDLINE_MAX;
		initrd_limit = LAYOUT_HOLE_START;
	} else {
		const struct bzimage_info *bz = &img->bz;
		uint64_t load = bz->pref_address;
		/* The 64-bit entry runs on an identity map of low memory. */
		if (load < LAYOUT_HIGH_MEM || load >= LAYOUT_HOLE_START) {
			log_err("kernel '%s': bzImage wants to be loaded at 0x%llx, outside RAM between 1 MiB and 0x%llx",
				cfg->kernel, (unsigned long long)load, (unsigned long long)LAYOUT_HOLE_START);
			return -1;
		}
		kernel_end = load + bz->init_size; /* below 2^33: no overflow */
		if (kernel_end > low_end) {
			log_err("kernel '%s' needs %llu MiB of low memory to decompress; use more --memory",
				cfg->kernel, (unsigned long long)((kernel_end + (1 << 20) - 1) >> 20));
			return -1;
		}
		cmdline_max = bz->cmdline_size ? (uint64_t)bz->cmdline_size + 1 : 256;
		initrd_limit = (uint64_t)bz->initrd_addr_max + 1;
		if (bz->xloadflags & 0x40) /* XLF_CAN_BE_LOADED_ABOVE_4G, irrelevant below the hole */
			initrd_limit = LAYOUT_HOLE_START;
	}
	if (cmdline_max > LAYOUT_CMDLINE_MAX)
		cmdline_max = LAYOUT_CMDLINE_MAX;
	size_t len = strlen(cfg->cmdline);
	if (len + 1 > cmdline_max) {
		log_err("--cmdline is %zu bytes; this kernel accepts at most %llu", len,
			(unsigned long long)(cmdline_max - 1));
		return -1;
	}
	if (img->initrd) {
		uint64_t top = low_end < initrd_limit ? low_end : initrd_limit;
		uint64_t at = top > img->initrd_size ? ((top - img->initrd_size) & ~0xfffULL) : 0;
		if (at < kernel_end || img->initrd_size > top) {
			log_err("initrd '%s' (%zu MiB) does not fit in guest memory below 0x%llx; use more --memory",
				cfg->initrd, img->initrd_size >> 20, (unsigned long long)top);
			return -1;
		}
		img->initrd_addr = at;
	}
	return 0;
}

int boot_prepare(const struct vm_config *cfg, struct boot_image *out)
{
	memset(out, 0, sizeof(*out));
	out->kernel_path = cfg->kernel;
	if (boot_read_file(cfg->kernel, "kernel", &out->kernel, &out->kernel_size))
		goto fail;
	char err[256];
	int bad;
	if (boot_is_elf(out->kernel, out->kernel_size)) {
		out->mode = BOOT_PVH;
		bad = pvh_parse(out->kernel, out->kernel_size, &out->pvh, err, sizeof(err));
	} else if (boot_is_bzimage(out->kernel, out->kernel_size)) {
		out->mode = BOOT_LINUX64;
		bad = bzimage_parse(out->kernel, out->kernel_size, &out->bz, err, sizeof(err));
	} else {
		log_err("kernel '%s' is neither a bzImage nor an ELF with a PVH note", cfg->kernel);
		goto fail;
	}
	if (bad) {
		log_err("kernel '%s': %s", cfg->kernel, err);
		goto fail;
	}
	if (cfg->initrd && boot_read_file(cfg->initrd, "initrd", &out->initrd, &out->initrd_size))
		goto fail;
	if (boot_place(cfg, out))
		goto fail;
	return 0;
fail:
	boot_image_free(out);
	return -1;
}

void boot_image_free(struct boot_image *img)
{
	free(img->kernel);
	free(img->initrd);
	img->kernel = img->initrd = NULL;
	img->kernel_size = img->initrd_size = 0;
}

/* The builder's copies: boot_prepare() checked every length and address
 * against this memory size, so these fail only if guest memory is not laid
 * out as the E820 map says (boot_load() reports that). */
static int boot_write_cmdline(struct vm *vm)
{
	return guest_mem_write(&vm->mem, LAYOUT_CMDLINE, vm->cfg->cmdline, strlen(vm->cfg->cmdline) + 1);
}

static int boot_write_initrd(struct vm *vm, const struct boot_image *img)
{
	if (!img->initrd)
		return 0;
	return guest_mem_write(&vm->mem, img->initrd_addr, img->initrd, img->initrd_size);
}

static uint64_t boot_rsdp(void)
{
	return LAYOUT_ACPI_BASE;
}

static int boot_load_pvh(struct vm *vm, const struct boot_image *img)
{
	for (unsigned i = 0; i < img->pvh.nr_segments; i++) {
		const struct boot_segment *s = &img->pvh.segments[i];
		uint8_t *dst = guest_mem_ptr(&vm->mem, s->paddr, s->memsz);
		if (!dst)
			return -1;
		memcpy(dst, img->kernel + s->offset, s->filesz);
		memset(dst + s->filesz, 0, s->memsz - s->filesz);
	}
	if (boot_write_cmdline(vm) || boot_write_initrd(vm, img))
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
	if (img->initrd) {
		struct hvm_modlist_entry mod = { .paddr = img->initrd_addr, .size = img->initrd_size };
		si.nr_modules = 1;
		si.modlist_paddr = at;
		guest_mem_write(&vm->mem, at, &mod, sizeof(mod));
	}
	guest_mem_write(&vm->mem, LAYOUT_START_INFO, &si, sizeof(si));
	vm->boot = (struct boot_info){ BOOT_PVH, img->pvh.entry, LAYOUT_START_INFO };
	log_info("loaded PVH ELF '%s', entry 0x%x", img->kernel_path, img->pvh.entry);
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

static int boot_load_bzimage(struct vm *vm, const struct boot_image *img)
{
	const struct bzimage_info *bz = &img->bz;
	uint64_t load = bz->pref_address;
	if (guest_mem_write(&vm->mem, load, img->kernel + bz->kernel_offset, bz->kernel_size))
		return -1;

	uint8_t *zp = guest_mem_ptr(&vm->mem, LAYOUT_ZERO_PAGE, BP_SIZE);
	memset(zp, 0, BP_SIZE);
	memcpy(zp + SETUP_HDR_START, img->kernel + SETUP_HDR_START, bz->hdr_end - SETUP_HDR_START);
	zp[BP_TYPE_OF_LOADER] = 0xff;
	zp[BP_LOADFLAGS] |= CAN_USE_HEAP;
	uint16_t heap_end = 0xfe00;
	memcpy(zp + BP_HEAP_END_PTR, &heap_end, 2);

	if (boot_write_cmdline(vm) || boot_write_initrd(vm, img))
		return -1;
	uint32_t cmd = (uint32_t)LAYOUT_CMDLINE;
	memcpy(zp + BP_CMD_LINE_PTR, &cmd, 4);
	uint32_t lo = (uint32_t)img->initrd_addr, sz = (uint32_t)img->initrd_size;
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
	log_info("loaded bzImage '%s' (protocol %u.%02u) at 0x%llx", img->kernel_path, bz->version >> 8,
		 bz->version & 0xff, (unsigned long long)load);
	return 0;
}

int boot_load(struct vm *vm)
{
	const struct boot_image *img = vm->image;
	int ret = img->mode == BOOT_PVH ? boot_load_pvh(vm, img) : boot_load_bzimage(vm, img);
	if (ret)
		log_err("kernel '%s': guest memory is not laid out as its E820 map says; cannot load it",
			img->kernel_path);
	return ret;
}
