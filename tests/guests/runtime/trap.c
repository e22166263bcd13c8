/*
 * Descriptor tables and the C side of interrupt entry. This file runs in
 * ring 0 (emulated on this project's host): no loops beyond the one-time
 * IDT fill, no printing except on the fatal path.
 */
#include "rt.h"

struct idt_gate {
	uint16_t off_lo, sel;
	uint8_t ist, type;
	uint16_t off_mid;
	uint32_t off_hi, zero;
} __attribute__((packed));

struct tss64 {
	uint32_t rsvd0;
	uint64_t rsp0, rsp1, rsp2, rsvd1;
	uint64_t ist[7];
	uint64_t rsvd2;
	uint16_t rsvd3, iopb;
} __attribute__((packed));

struct desc_ptr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

extern char rt_isr_stubs[], rt_ring0_gate[];
extern char rt_bsp_kstack[];

/* Flat descriptors; TSS slots are filled per CPU by rt_tss_install(). */
uint64_t rt_gdt[RT_GDT_ENTRIES] __attribute__((aligned(16))) = {
	0,
	0x00cf9a000000ffffull,  /* SEL_KCODE32 */
	0x00af9a000000ffffull,  /* SEL_KCODE64 */
	0x00cf93000000ffffull,  /* SEL_KDATA */
	0x00cff3000000ffffull,  /* SEL_UDATA */
	0x00affa000000ffffull,  /* SEL_UCODE64 */
};
struct desc_ptr rt_gdt_ptr = { sizeof(rt_gdt) - 1, (uint64_t)rt_gdt };

static struct idt_gate rt_idt[256] __attribute__((section(".bss.noinit"), aligned(16)));
struct desc_ptr rt_idt_ptr = { sizeof(rt_idt) - 1, (uint64_t)rt_idt };

static struct tss64 rt_tss[RT_MAX_CPUS] __attribute__((section(".bss.noinit"), aligned(16)));

/* Read in ring 0, so kept out of .bss (which ring 3 clears at start). */
static rt_irq_handler_t rt_irq_handlers[256] __attribute__((section(".data")));
uint64_t rt_irq_unhandled __attribute__((section(".data")));

/* Plain memory writes: also called from ring 3 to prepare an AP's TSS. */
void rt_tss_install(int cpu, uint64_t rsp0)
{
	struct tss64 *t = &rt_tss[cpu];
	uint64_t base = (uint64_t)t, limit = sizeof(*t) - 1;

	memset(t, 0, sizeof(*t));
	t->rsp0 = rsp0;
	t->iopb = sizeof(*t);   /* no bitmap: IOPL=3, or #GP emulation below */
	rt_gdt[SEL_TSS0 / 8 + 2 * cpu] = (limit & 0xffff) | (base & 0xffffff) << 16 |
		0x89ull << 40 | ((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
	rt_gdt[SEL_TSS0 / 8 + 2 * cpu + 1] = base >> 32;
}

void rt_ring0_init(void)
{
	for (int v = 0; v < 256; v++) {
		uint64_t off = (uint64_t)rt_isr_stubs + 16 * v;

		rt_idt[v] = (struct idt_gate){
			.off_lo = off, .sel = SEL_KCODE64, .ist = 0,
			.type = 0x8e,   /* present, DPL0, interrupt gate: IF off */
			.off_mid = off >> 16, .off_hi = off >> 32, .zero = 0,
		};
	}
	rt_tss_install(0, (uint64_t)rt_bsp_kstack + RT_BSP_KSTACK_SIZE);

	/* Remap the 8259s away from the exception vectors and mask them, so a
	 * firmware-programmed PIT tick cannot arrive as "exception 8". */
	static const uint8_t icw[][2] = {
		{ 0x20, 0x11 }, { 0xa0, 0x11 }, { 0x21, 0x20 }, { 0xa1, 0x28 },
		{ 0x21, 0x04 }, { 0xa1, 0x02 }, { 0x21, 0x01 }, { 0xa1, 0x01 },
		{ 0x21, 0xff }, { 0xa1, 0xff },
	};
	for (unsigned i = 0; i < ARRAY_SIZE(icw); i++)
		outb(icw[i][0], icw[i][1]);
}

void rt_irq_register(unsigned vector, rt_irq_handler_t fn)
{
	rt_irq_handlers[vector & 0xff] = fn;
}

static const char *const exc_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO",
	"#TS", "#NP", "#SS", "#GP", "#PF", "?15", "#MF", "#AC", "#MC", "#XM",
	"#VE", "#CP",
};

static NORETURN void fatal(struct rt_trap_frame *f)
{
	uint64_t cr2;
	const char *name = exc_names[f->vector] ? exc_names[f->vector] : "reserved";

	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	kprintf("\n*** exception %lu (%s) error=0x%lx rip=0x%lx cs=0x%lx rflags=0x%lx "
		"rsp=0x%lx cr2=0x%lx apic=%u\n", f->vector, name, f->error, f->rip,
		f->cs, f->rflags, f->rsp, cr2, lapic_id());
	outl(0xf4, FAIL);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/*
 * Some hypervisors (this project's kvm_pvm host among them) run guest
 * ring 3 without the IOPL we asked for, so port I/O (and CLI/STI) from
 * ring 3 raises #GP. Perform them here; ring-3 code stays oblivious.
 */
static bool emulate_pio(struct rt_trap_frame *f)
{
	const uint8_t *ip = (const uint8_t *)f->rip;
	unsigned size = 4, len = 1;
	uint16_t port;

	if (*ip == 0x66)
		size = 2, ip++, len++;
	switch (*ip) {
	case 0xfa:              /* CLI/STI: IOPL-sensitive as well */
	case 0xfb:
		f->rflags = (f->rflags & ~0x200ull) | (*ip == 0xfb ? 0x200 : 0);
		f->rip += len;
		return true;
	case 0xe4: case 0xe5: case 0xe6: case 0xe7:
		port = ip[1];
		len++;
		break;
	case 0xec: case 0xed: case 0xee: case 0xef:
		port = f->rdx;
		break;
	default:
		return false;
	}
	if (!(*ip & 1))
		size = 1;
	if (*ip & 2) {
		if (size == 1)
			outb(port, f->rax);
		else if (size == 2)
			outw(port, f->rax);
		else
			outl(port, f->rax);
	} else {
		if (size == 1)
			f->rax = (f->rax & ~0xffull) | inb(port);
		else if (size == 2)
			f->rax = (f->rax & ~0xffffull) | inw(port);
		else
			f->rax = inl(port);     /* 32-bit results zero-extend */
	}
	f->rip += len;
	return true;
}

void rt_trap(struct rt_trap_frame *f)
{
	if (f->vector == 13 && f->error == 0 && (f->cs & 3) == 3 && emulate_pio(f))
		return;
	if (f->vector == 6 && f->rip == (uint64_t)rt_ring0_gate) {
		uint64_t (*fn)(uint64_t) = (uint64_t (*)(uint64_t))f->rax;

		f->rax = fn(f->rdi);
		f->rip += 2;    /* skip the UD2 */
		return;
	}
	if (f->vector < 32)
		fatal(f);

	rt_irq_handler_t h = rt_irq_handlers[f->vector];
	if (h)
		h(f->vector);
	else
		rt_irq_unhandled++;
	/* Only EOI what the LAPIC has in service: ExtINT and spurious
	 * deliveries are not, and an EOI would retire another vector. */
	if (lapic_read(LAPIC_ISR + (f->vector / 32) * 0x10) & (1u << (f->vector % 32)))
		lapic_write(LAPIC_EOI, 0);
}
