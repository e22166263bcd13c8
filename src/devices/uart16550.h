/* The 16550A UART register model, free of I/O: the serial device (and unit
 * tests) supply callbacks for transmitted bytes and the interrupt line. */
#ifndef KESTREL_UART16550_H
#define KESTREL_UART16550_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UART_FIFO_SIZE 16

struct uart16550_cbs {
	void (*tx)(void *opaque, uint8_t byte);
	void (*irq)(void *opaque, bool level);
	/* The receive FIFO has room again after being full. */
	void (*rx_ready)(void *opaque);
	void *opaque;
};

struct uart16550 {
	uint8_t ier, lcr, mcr, lsr_err, msr, scr, dll, dlm, fcr;
	bool thr_ipending;      /* THR-empty interrupt pending */
	bool irq_level;
	uint8_t rx[UART_FIFO_SIZE];
	unsigned rx_head, rx_count;
	bool rx_was_full;
	struct uart16550_cbs cbs;
};

/* Power-on state; `cbs` is copied. */
void uart16550_init(struct uart16550 *u, const struct uart16550_cbs *cbs);

/* Register access at offset 0..7 from the base port. */
uint8_t uart16550_read(struct uart16550 *u, unsigned reg);
void uart16550_write(struct uart16550 *u, unsigned reg, uint8_t val);

/* Bytes from the outside world. Returns how many fit in the receive FIFO. */
size_t uart16550_receive(struct uart16550 *u, const uint8_t *buf, size_t len);

/* How many bytes the receive side can take now. */
size_t uart16550_rx_space(const struct uart16550 *u);

#endif
