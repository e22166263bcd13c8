/*
 * Micro-guest runtime API. Guests implement int main(void), which runs in
 * ring 3 with IOPL=3 (port I/O allowed) over an identity map of all RAM
 * and the 3-4 GiB MMIO hole; returning 0 exits with PASS, anything else
 * with FAIL. Where the hypervisor withholds IOPL from ring 3, IN/OUT and
 * CLI/STI trap to ring 0 and are performed there, so they still work.
 */
#ifndef RT_H
#define RT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define NORETURN __attribute__((noreturn))

int main(void);

/* ---- port I/O, MMIO, CPU ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline uint8_t mmio_read8(uint64_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uint64_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t mmio_read32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline uint64_t mmio_read64(uint64_t a) { return *(volatile uint64_t *)a; }
static inline void mmio_write8(uint64_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uint64_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void mmio_write32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline void mmio_write64(uint64_t a, uint64_t v) { *(volatile uint64_t *)a = v; }

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
/* Ring 3 may use these: IOPL=3, or emulated by the #GP handler. */
static inline void irq_enable(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }

/* ---- atomics and spinlocks (ring 3; LOCK-prefixed ops run natively) ---- */
static inline uint64_t atomic_fetch_add64(volatile uint64_t *p, uint64_t v)
{
	return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline uint64_t atomic_load64(const volatile uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void atomic_store64(volatile uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}
typedef struct { volatile uint32_t locked; } spinlock_t;
static inline bool spin_trylock(spinlock_t *l)
{
	return __atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE) == 0;
}
static inline void spin_lock(spinlock_t *l)
{
	while (!spin_trylock(l))
		while (l->locked)
			cpu_relax();
}
static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }

/* ---- string ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);

/* ---- console and exit ---- */
void serial_putc(char c);
void serial_write(const char *s, size_t n);    /* batched: one ring-0 trip */
void serial_puts(const char *s);
int kvprintf(const char *fmt, va_list ap);
int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
NORETURN void debug_exit(uint32_t v);   /* outl v, 0xf4 */
NORETURN void rt_halt(void);            /* park this CPU in ring 0 */

/* ---- ring-0 calls: fn runs at CPL0 (i.e. emulated here); keep it tiny ---- */
uint64_t rt_ring0_call(uint64_t (*fn)(uint64_t), uint64_t arg);

/* ---- boot information (copied out of hvm_start_info at start-up) ---- */
#define E820_RAM 1
struct rt_mem_region {
	uint64_t addr, size;
	uint32_t type;
};
const char *cmdline(void);
bool cmdline_has(const char *token);
bool cmdline_u64(const char *key, uint64_t *val);   /* "key=N", N decimal or 0x hex */
size_t rt_memmap(const struct rt_mem_region **regions);
uint64_t rt_memmap_ram_total(void);
uint64_t rt_rsdp_from_boot(void);
extern uint64_t rt_mapped_gb;                       /* how much the page tables map */
extern char __image_start[], __image_end[];

/* ---- interrupts ---- */
struct rt_trap_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};
typedef void (*rt_irq_handler_t)(unsigned vector);
/* Handlers run in ring 0 with interrupts off; the runtime EOIs the LAPIC. */
void rt_irq_register(unsigned vector, rt_irq_handler_t fn);

/* ---- time ---- */
uint64_t tsc_khz(void);                 /* calibrated against PIT ch2 once */
void udelay(uint64_t us);
uint64_t tsc_deadline_us(uint64_t us);  /* rdtsc() value us from now */

/* ---- ACPI ---- */
struct acpi_header {
	char sig[4];
	uint32_t length;
	uint8_t revision, checksum;
	char oem_id[6], oem_table_id[8];
	uint32_t oem_revision, creator_id, creator_revision;
} __attribute__((packed));
struct madt_entry {
	uint8_t type, length;
} __attribute__((packed));
#define MADT_LAPIC      0
#define MADT_IOAPIC     1
#define MADT_ISO        2
#define MADT_X2APIC     9
const struct acpi_header *acpi_find_table(const char sig[4]);
/* Calls fn for each MADT entry; stops early when fn returns false.
 * Returns the number of entries visited, or -1 without a MADT. */
int madt_foreach(bool (*fn)(const struct madt_entry *e, void *ctx), void *ctx);
int madt_cpus(uint32_t *apic_ids, int max);          /* enabled LAPICs */
uint64_t madt_lapic_addr(void);
bool madt_ioapic(uint32_t *addr, uint32_t *gsi_base); /* first IOAPIC */
uint32_t madt_isa_gsi(uint8_t irq, uint16_t *flags);  /* after overrides */
/* Returns only on failure (after giving the VMM a moment to act). */
int acpi_poweroff(void);

/* ---- LAPIC / IOAPIC (xAPIC MMIO through the user mapping) ---- */
#define LAPIC_BASE      0xfee00000ull
#define IOAPIC_BASE     0xfec00000ull
#define LAPIC_ID        0x020
#define LAPIC_EOI       0x0b0
#define LAPIC_SVR       0x0f0
#define LAPIC_ISR       0x100
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_CCR 0x390
#define LAPIC_TIMER_DCR 0x3e0
static inline uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }
static inline uint32_t lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
void lapic_enable(void);                /* software-enable, spurious vector 0xff */
bool lapic_send_ipi(uint32_t apic_id, uint32_t icr_lo);
uint32_t ioapic_read(uint64_t base, uint32_t reg);
void ioapic_write(uint64_t base, uint32_t reg, uint32_t v);
/* flags: MADT MPS INTI flags (polarity bits 0-1, trigger bits 2-3). */
void ioapic_route(uint64_t base, uint32_t pin, uint8_t vector, uint32_t dest_apic, uint16_t flags);

/* ---- SMP ---- */
/* Starts the AP with the given APIC ID as runtime CPU `cpu` (1..MAX-1);
 * it runs fn(arg) in ring 3 and then parks. Returns true once it is up. */
bool rt_start_ap(uint32_t apic_id, int cpu, void (*fn)(void *), void *arg);

#endif
