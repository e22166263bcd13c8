#include "devices/uart16550.h"

#include <string.h>

enum {
	REG_RBR_THR_DLL = 0, REG_IER_DLM = 1, REG_IIR_FCR = 2, REG_LCR = 3,
	REG_MCR = 4, REG_LSR = 5, REG_MSR = 6, REG_SCR = 7,
};

#define IER_RDI  0x01
#define IER_THRI 0x02
#define IER_RLSI 0x04
#define IER_MSI  0x08

#define IIR_NONE    0x01
#define IIR_MSI     0x00
#define IIR_THRI    0x02
#define IIR_RDI     0x04
#define IIR_RLSI    0x06
#define IIR_TIMEOUT 0x0c
#define IIR_FIFO    0xc0

#define LCR_DLAB 0x80
#define MCR_LOOP 0x10
#define LSR_DR   0x01
#define LSR_OE   0x02
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02

#define MSR_DELTA_MASK 0x0f
/* Without loopback a connected modem: CTS, DSR and DCD asserted. */
#define MSR_IDLE 0xb0

void uart16550_init(struct uart16550 *u, const struct uart16550_cbs *cbs)
{
	memset(u, 0, sizeof(*u));
	u->cbs = *cbs;
	u->msr = MSR_IDLE;
	u->dll = 0x0c; /* 9600 baud, as after a BIOS */
}

static unsigned rx_trigger(const struct uart16550 *u)
{
	static const unsigned levels[4] = { 1, 4, 8, 14 };
	return (u->fcr & FCR_ENABLE) ? levels[u->fcr >> 6] : 1;
}

static unsigned rx_capacity(const struct uart16550 *u)
{
	return (u->fcr & FCR_ENABLE) ? UART_FIFO_SIZE : 1;
}

/* The highest-priority pending interrupt's IIR code, or IIR_NONE. */
static uint8_t uart_pending(const struct uart16550 *u)
{
	if ((u->ier & IER_RLSI) && u->lsr_err)
		return IIR_RLSI;
	if ((u->ier & IER_RDI) && u->rx_count) {
		/* Below the trigger level the real part raises a character
		 * timeout after a few idle character times; raising it at once
		 * gives the driver the same signal without a timer. */
		return u->rx_count >= rx_trigger(u) ? IIR_RDI : IIR_TIMEOUT;
	}
	if ((u->ier & IER_THRI) && u->thr_ipending)
		return IIR_THRI;
	if ((u->ier & IER_MSI) && (u->msr & MSR_DELTA_MASK))
		return IIR_MSI;
	return IIR_NONE;
}

static void uart_update_irq(struct uart16550 *u)
{
	/* OUT2 gates the interrupt onto the ISA bus on PCs; Linux sets it. */
	bool level = uart_pending(u) != IIR_NONE && (u->mcr & 0x08);
	if (level != u->irq_level) {
		u->irq_level = level;
		if (u->cbs.irq)
			u->cbs.irq(u->cbs.opaque, level);
	}
}

static void uart_rx_push(struct uart16550 *u, uint8_t byte)
{
	if (u->rx_count >= rx_capacity(u)) {
		u->lsr_err |= LSR_OE;
		return;
	}
	u->rx[(u->rx_head + u->rx_count) % UART_FIFO_SIZE] = byte;
	u->rx_count++;
}

static uint8_t uart_rx_pop(struct uart16550 *u)
{
	if (!u->rx_count)
		return 0;
	uint8_t b = u->rx[u->rx_head];
	u->rx_head = (u->rx_head + 1) % UART_FIFO_SIZE;
	u->rx_count--;
	if (u->rx_was_full && u->rx_count < rx_capacity(u)) {
		u->rx_was_full = false;
		if (u->cbs.rx_ready)
			u->cbs.rx_ready(u->cbs.opaque);
	}
	return b;
}

static uint8_t uart_loopback_msr(uint8_t mcr)
{
	/* DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD */
	return (uint8_t)(((mcr & 0x01) << 5) | ((mcr & 0x02) << 3) | ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4));
}

uint8_t uart16550_read(struct uart16550 *u, unsigned reg)
{
	uint8_t v = 0;
	switch (reg & 7) {
	case REG_RBR_THR_DLL:
		if (u->lcr & LCR_DLAB)
			return u->dll;
		v = uart_rx_pop(u);
		break;
	case REG_IER_DLM:
		return (u->lcr & LCR_DLAB) ? u->dlm : u->ier;
	case REG_IIR_FCR:
		v = uart_pending(u);
		if (v == IIR_THRI)
			u->thr_ipending = false; /* reading IIR acknowledges THRE */
		if (u->fcr & FCR_ENABLE)
			v |= IIR_FIFO;
		break;
	case REG_LCR:
		return u->lcr;
	case REG_MCR:
		return u->mcr;
	case REG_LSR:
		v = LSR_THRE | LSR_TEMT | (u->rx_count ? LSR_DR : 0) | u->lsr_err;
		u->lsr_err = 0;
		break;
	case REG_MSR:
		v = u->msr;
		u->msr &= (uint8_t)~MSR_DELTA_MASK;
		break;
	case REG_SCR:
		return u->scr;
	}
	uart_update_irq(u);
	return v;
}

void uart16550_write(struct uart16550 *u, unsigned reg, uint8_t val)
{
	switch (reg & 7) {
	case REG_RBR_THR_DLL:
		if (u->lcr & LCR_DLAB) {
			u->dll = val;
			return;
		}
		if (u->mcr & MCR_LOOP)
			uart_rx_push(u, val);
		else if (u->cbs.tx)
			u->cbs.tx(u->cbs.opaque, val);
		/* Transmission is instantaneous: THR is empty again at once. */
		u->thr_ipending = true;
		break;
	case REG_IER_DLM:
		if (u->lcr & LCR_DLAB) {
			u->dlm = val;
			return;
		}
		/* Enabling THRI while THR is empty raises it (drivers rely on it). */
		if ((val & IER_THRI) && !(u->ier & IER_THRI))
			u->thr_ipending = true;
		u->ier = val & 0x0f;
		break;
	case REG_IIR_FCR:
		if (val & FCR_CLEAR_RX) {
			u->rx_count = 0;
			u->rx_head = 0;
		}
		if ((val ^ u->fcr) & FCR_ENABLE) {
			/* Toggling the FIFO enable clears both FIFOs. */
			u->rx_count = 0;
			u->rx_head = 0;
		}
		u->fcr = val & 0xc9;
		if (u->rx_was_full && u->rx_count < rx_capacity(u)) {
			u->rx_was_full = false;
			if (u->cbs.rx_ready)
				u->cbs.rx_ready(u->cbs.opaque);
		}
		break;
	case REG_LCR:
		u->lcr = val;
		return;
	case REG_MCR: {
		u->mcr = val & 0x1f;
		uint8_t old = u->msr;
		uint8_t now = (u->mcr & MCR_LOOP) ? uart_loopback_msr(u->mcr) : MSR_IDLE;
		uint8_t delta = (uint8_t)(((old ^ now) >> 4) & 0x0b); /* DCTS, DDSR, DDCD */
		if ((old & 0x40) && !(now & 0x40))
			delta |= 0x04; /* TERI: trailing edge of RI */
		u->msr = (uint8_t)(now | ((old | delta) & MSR_DELTA_MASK));
		if (!(u->mcr & MCR_LOOP) && u->rx_was_full && u->rx_count < rx_capacity(u)) {
			u->rx_was_full = false;
			if (u->cbs.rx_ready)
				u->cbs.rx_ready(u->cbs.opaque);
		}
		break;
	}
	case REG_LSR:
	case REG_MSR:
		return; /* read-only */
	case REG_SCR:
		u->scr = val;
		return;
	}
	uart_update_irq(u);
}

size_t uart16550_rx_space(const struct uart16550 *u)
{
	if (u->mcr & MCR_LOOP)
		return 0; /* in loopback the line is disconnected from the outside */
	return rx_capacity(u) - u->rx_count;
}

size_t uart16550_receive(struct uart16550 *u, const uint8_t *buf, size_t len)
{
	size_t n = uart16550_rx_space(u);
	if (n > len)
		n = len;
	for (size_t i = 0; i < n; i++)
		uart_rx_push(u, buf[i]);
	if (n < len)
		u->rx_was_full = true;
	if (n)
		uart_update_irq(u);
	return n;
}
