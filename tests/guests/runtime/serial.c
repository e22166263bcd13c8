/* COM1 output and a small printf. Works in ring 3 and ring 0. */
#include "rt.h"

#define COM1 0x3f8

static spinlock_t print_lock;

void serial_putc(char c)
{
	/* Bounded: a VMM without a UART reads 0xff (THRE set) anyway. */
	for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
		cpu_relax();
	outb(COM1, c);
}

struct buf {
	const char *s;
	size_t n;
};

static uint64_t serial_write0(uint64_t arg)
{
	const struct buf *b = (const struct buf *)arg;

	for (size_t i = 0; i < b->n; i++)
		serial_putc(b->s[i]);
	return 0;
}

/* True when IN/OUT would trap: then one ring-0 call per buffer is much
 * cheaper than two emulated traps per character. */
static bool io_traps(void)
{
	uint64_t cs, fl;

	__asm__ volatile("mov %%cs, %0; pushfq; popq %1" : "=r"(cs), "=r"(fl));
	return (cs & 3) > ((fl >> 12) & 3);
}

void serial_write(const char *s, size_t n)
{
	struct buf b = { s, n };

	if (io_traps())
		rt_ring0_call(serial_write0, (uint64_t)&b);
	else
		serial_write0((uint64_t)&b);
}

void serial_puts(const char *s)
{
	serial_write(s, strlen(s));
}

struct out {
	int n;
	size_t len;
	char buf[256];
};

static void flush(struct out *o)
{
	serial_write(o->buf, o->len);
	o->len = 0;
}

static void put(struct out *o, char c)
{
	if (o->len + 2 > sizeof(o->buf))
		flush(o);
	if (c == '\n')
		o->buf[o->len++] = '\r';
	o->buf[o->len++] = c;
	o->n++;
}

static void put_num(struct out *o, uint64_t v, unsigned base, bool neg, int width, char pad)
{
	char digits[24];
	int i = 0;

	do {
		digits[i++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		digits[i++] = '-';
	while (width-- > i)
		put(o, pad);
	while (i)
		put(o, digits[--i]);
}

static void format(struct out *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(o, *fmt);
			continue;
		}
		char pad = ' ';
		int width = 0, longs = 0;
		bool left = false;

		if (*++fmt == '-')
			left = true, fmt++;
		if (*fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l')
			longs++, fmt++;
		if (*fmt == 'z')
			longs = 1, fmt++;

		switch (*fmt) {
		case 'd': {
			int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
			put_num(o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, v < 0, width, pad);
			break;
		}
		case 'u':
		case 'x': {
			uint64_t v = longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			put_num(o, v, *fmt == 'u' ? 10 : 16, false, width, pad);
			break;
		}
		case 'p':
			put(o, '0');
			put(o, 'x');
			put_num(o, (uint64_t)va_arg(ap, void *), 16, false, width, pad);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			int len = 0;

			if (!s)
				s = "(null)";
			for (const char *p = s; *p; p++)
				len++;
			while (!left && width-- > len)
				put(o, ' ');
			while (*s)
				put(o, *s++);
			while (left && width-- > len)
				put(o, ' ');
			break;
		}
		case 'c':
			put(o, (char)va_arg(ap, int));
			break;
		case '%':
			put(o, '%');
			break;
		case '\0':
			return;
		default:
			put(o, '%');
			put(o, *fmt);
		}
	}
}

int kvprintf(const char *fmt, va_list ap)
{
	struct out o;

	o.n = 0;
	o.len = 0;
	format(&o, fmt, ap);
	flush(&o);
	return o.n;
}

int kprintf(const char *fmt, ...)
{
	va_list ap;
	int n;
	/* Bounded so a fault while another CPU (or the interrupted code)
	 * holds the lock still gets its message out. */
	bool locked = false;

	for (int i = 0; i < 10000000 && !(locked = spin_trylock(&print_lock)); i++)
		cpu_relax();
	va_start(ap, fmt);
	n = kvprintf(fmt, ap);
	va_end(ap);
	if (locked)
		spin_unlock(&print_lock);
	return n;
}
