/* The 16550A register model: what Linux's 8250 driver relies on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "devices/uart16550.h"

struct sink {
	uint8_t tx[64];
	size_t ntx;
	bool irq;
	int irq_changes;
	int rx_ready;
};

static void s_tx(void *o, uint8_t b) { struct sink *s = o; s->tx[s->ntx++] = b; }
static void s_irq(void *o, bool l) { struct sink *s = o; s->irq = l; s->irq_changes++; }
static void s_ready(void *o) { struct sink *s = o; s->rx_ready++; }

static void setup(struct uart16550 *u, struct sink *s)
{
	memset(s, 0, sizeof(*s));
	struct uart16550_cbs cbs = { s_tx, s_irq, s_ready, s };
	uart16550_init(u, &cbs);
}

enum { THR = 0, IER = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };

static void test_tx_and_lsr(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	assert_int_equal(uart16550_read(&u, LSR) & 0x60, 0x60); /* THRE | TEMT */
	uart16550_write(&u, THR, 'h');
	uart16550_write(&u, THR, 'i');
	assert_int_equal(s.ntx, 2);
	assert_memory_equal(s.tx, "hi", 2);
	assert_int_equal(uart16550_read(&u, LSR) & 0x01, 0); /* no data */
}

static void test_divisor_latch(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	uart16550_write(&u, LCR, 0x83);
	uart16550_write(&u, 0, 0x01);
	uart16550_write(&u, 1, 0x00);
	assert_int_equal(uart16550_read(&u, 0), 0x01);
	assert_int_equal(uart16550_read(&u, 1), 0x00);
	assert_int_equal(s.ntx, 0); /* DLL write is not a transmit */
	uart16550_write(&u, LCR, 0x03);
	assert_int_equal(uart16550_read(&u, IER), 0);
}

static void test_scratch_and_ier_probe(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	uart16550_write(&u, SCR, 0xa5);
	assert_int_equal(uart16550_read(&u, SCR), 0xa5);
	uart16550_write(&u, IER, 0xff);
	assert_int_equal(uart16550_read(&u, IER), 0x0f); /* 8250 autoconfig checks this */
}

static void test_loopback_probe(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	/* Linux: MCR = LOOP | OUT2 | RTS -> MSR high nibble must be 0x90 */
	uart16550_write(&u, MCR, 0x1a);
	assert_int_equal(uart16550_read(&u, MSR) & 0xf0, 0x90);
	uart16550_write(&u, THR, 'x');
	assert_int_equal(s.ntx, 0); /* looped back, not sent */
	assert_int_equal(uart16550_read(&u, LSR) & 0x01, 0x01);
	assert_int_equal(uart16550_read(&u, 0), 'x');
	uart16550_write(&u, MCR, 0x0b);
	assert_int_equal(uart16550_read(&u, MSR) & 0xf0, 0xb0);
}

static void test_fifo_identification(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	assert_int_equal(uart16550_read(&u, IIR) & 0xc0, 0x00);
	uart16550_write(&u, FCR, 0x01);
	assert_int_equal(uart16550_read(&u, IIR) & 0xc0, 0xc0); /* 16550A */
}

static void test_rx_fifo_and_interrupts(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	uart16550_write(&u, FCR, 0x47); /* FIFO on, trigger level 4 */
	uart16550_write(&u, MCR, 0x08); /* OUT2 gates the IRQ */
	uart16550_write(&u, IER, 0x01); /* RDI */
	assert_false(s.irq);
	assert_int_equal(uart16550_receive(&u, (const uint8_t *)"abc", 3), 3);
	assert_true(s.irq);
	assert_int_equal(uart16550_read(&u, IIR) & 0x0f, 0x0c); /* below trigger: timeout */
	assert_int_equal(uart16550_receive(&u, (const uint8_t *)"d", 1), 1);
	assert_int_equal(uart16550_read(&u, IIR) & 0x0f, 0x04); /* at trigger: data available */
	assert_int_equal(uart16550_read(&u, 0), 'a');
	assert_int_equal(uart16550_read(&u, 0), 'b');
	assert_int_equal(uart16550_read(&u, 0), 'c');
	assert_int_equal(uart16550_read(&u, 0), 'd');
	assert_false(s.irq);
	assert_int_equal(uart16550_read(&u, IIR) & 0x01, 0x01);
}

static void test_rx_backpressure(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	uint8_t buf[40];
	memset(buf, 'z', sizeof(buf));
	/* Without FIFO there is one byte of room. */
	assert_int_equal(uart16550_receive(&u, buf, sizeof(buf)), 1);
	uart16550_write(&u, FCR, 0x01); /* enabling the FIFO clears it */
	assert_int_equal(s.rx_ready, 1);
	assert_int_equal(uart16550_receive(&u, buf, sizeof(buf)), UART_FIFO_SIZE);
	assert_int_equal(uart16550_rx_space(&u), 0);
	uart16550_read(&u, 0);
	assert_int_equal(s.rx_ready, 2);
	assert_int_equal(uart16550_rx_space(&u), 1);
	/* Nothing overran: the model never accepted more than it had room for. */
	assert_int_equal(uart16550_read(&u, LSR) & 0x02, 0);
}

static void test_thre_interrupt(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	uart16550_write(&u, MCR, 0x08);
	uart16550_write(&u, IER, 0x02); /* enabling THRI with THR empty raises it */
	assert_true(s.irq);
	assert_int_equal(uart16550_read(&u, IIR) & 0x0f, 0x02);
	assert_false(s.irq); /* reading IIR acknowledged it */
	uart16550_write(&u, THR, 'q');
	assert_true(s.irq);
	uart16550_write(&u, IER, 0x00);
	assert_false(s.irq);
}

static void test_irq_gated_by_out2(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	uart16550_write(&u, IER, 0x01);
	uart16550_receive(&u, (const uint8_t *)"a", 1);
	assert_false(s.irq);
	uart16550_write(&u, MCR, 0x08);
	assert_true(s.irq);
}

static void test_registers_wrap(void **state)
{
	(void)state;
	struct uart16550 u;
	struct sink s;
	setup(&u, &s);
	/* Offsets beyond 7 (guest-chosen) alias, never index out of range. */
	for (unsigned r = 0; r < 256; r++) {
		uart16550_read(&u, r);
		uart16550_write(&u, r, (uint8_t)r);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tx_and_lsr),
		cmocka_unit_test(test_divisor_latch),
		cmocka_unit_test(test_scratch_and_ier_probe),
		cmocka_unit_test(test_loopback_probe),
		cmocka_unit_test(test_fifo_identification),
		cmocka_unit_test(test_rx_fifo_and_interrupts),
		cmocka_unit_test(test_rx_backpressure),
		cmocka_unit_test(test_thre_interrupt),
		cmocka_unit_test(test_irq_gated_by_out2),
		cmocka_unit_test(test_registers_wrap),
	};
	return cmocka_run_group_tests_name("uart16550", tests, NULL, NULL);
}
