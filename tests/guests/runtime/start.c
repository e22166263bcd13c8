/* Ring-3 start-up and boot information. */
#include "rt.h"

struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	uint32_t memmap_entries, reserved;
};

struct hvm_memmap_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};

extern uint64_t rt_start_info_pa;
extern char __bss_start[], __bss_end[];

/* Copies, so tests may overwrite any RAM outside the image. */
static struct rt_mem_region memmap[128];
static size_t memmap_n;
static char cmdline_buf[4096];
static uint64_t rsdp_pa;

static void copy_boot_info(void)
{
	const struct hvm_start_info *si = (const void *)rt_start_info_pa;

	if (!si || si->magic != HVM_START_MAGIC) {
		kprintf("rt: no hvm_start_info (ebx=0x%lx)\n", rt_start_info_pa);
		return;
	}
	rsdp_pa = si->rsdp_paddr;
	if (si->cmdline_paddr) {
		const char *s = (const char *)si->cmdline_paddr;
		size_t i;

		for (i = 0; i < sizeof(cmdline_buf) - 1 && s[i]; i++)
			cmdline_buf[i] = s[i];
		cmdline_buf[i] = 0;
	}
	if (si->version >= 1 && si->memmap_paddr) {
		const struct hvm_memmap_entry *e = (const void *)si->memmap_paddr;

		for (uint32_t i = 0; i < si->memmap_entries && memmap_n < ARRAY_SIZE(memmap); i++)
			memmap[memmap_n++] = (struct rt_mem_region){ e[i].addr, e[i].size, e[i].type };
	}
}

NORETURN void rt_user_start(void)
{
	memset(__bss_start, 0, __bss_end - __bss_start);
	copy_boot_info();
	/* Firmware (SeaBIOS: "Booting from ROM..") may leave the line open. */
	serial_puts("\n");
	int r = main();
	debug_exit(r == 0 ? PASS : FAIL);
}

NORETURN void rt_ap_user_start(void (*fn)(void *), void *arg)
{
	/* The parameter block is free for the next AP once we hold our copy. */
	atomic_store64((volatile uint64_t *)(RT_TRAMP_PARAMS + AP_P_ACK), 1);
	fn(arg);
	rt_halt();
}

static uint64_t halt0(uint64_t unused)
{
	(void)unused;
	for (;;)
		__asm__ volatile("cli; hlt");
	return 0;
}

NORETURN void rt_halt(void)
{
	rt_ring0_call(halt0, 0);
	__builtin_unreachable();
}

NORETURN void debug_exit(uint32_t v)
{
	outl(0xf4, v);
	/* Only reached without an isa-debug-exit style device. */
	kprintf("rt: debug_exit(0x%x) returned; halting\n", v);
	rt_halt();
}

const char *cmdline(void)
{
	return cmdline_buf;
}

/* Finds the space-separated token starting with `prefix` (full match if
 * exact); returns a pointer just past the prefix. */
static const char *find_token(const char *prefix, bool exact)
{
	size_t n = strlen(prefix);

	for (const char *p = cmdline_buf; *p;) {
		while (*p == ' ')
			p++;
		const char *end = p;
		while (*end && *end != ' ')
			end++;
		if ((size_t)(end - p) >= n && !strncmp(p, prefix, n) &&
		    (!exact || (size_t)(end - p) == n))
			return p + n;
		p = end;
	}
	return NULL;
}

bool cmdline_has(const char *token)
{
	return find_token(token, true) != NULL;
}

bool cmdline_u64(const char *key, uint64_t *val)
{
	char prefix[64];
	size_t n = strlen(key);

	if (n + 2 > sizeof(prefix))
		return false;
	memcpy(prefix, key, n);
	prefix[n] = '=';
	prefix[n + 1] = 0;

	const char *p = find_token(prefix, false);
	if (!p || *p == ' ' || !*p)
		return false;

	unsigned base = 10;
	uint64_t v = 0;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
		base = 16, p += 2;
	for (; *p && *p != ' '; p++) {
		unsigned d;

		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (base == 16 && (*p | 0x20) >= 'a' && (*p | 0x20) <= 'f')
			d = (*p | 0x20) - 'a' + 10;
		else
			return false;
		v = v * base + d;
	}
	*val = v;
	return true;
}

size_t rt_memmap(const struct rt_mem_region **regions)
{
	*regions = memmap;
	return memmap_n;
}

uint64_t rt_memmap_ram_total(void)
{
	uint64_t total = 0;

	for (size_t i = 0; i < memmap_n; i++)
		if (memmap[i].type == E820_RAM)
			total += memmap[i].size;
	return total;
}

uint64_t rt_rsdp_from_boot(void)
{
	return rsdp_pa;
}
