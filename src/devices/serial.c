/* COM1: a 16550A on the ISA bus at 0x3f8/IRQ 4, wired to a chardev. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "chardev/chardev.h"
#include "core/device.h"
#include "core/log.h"
#include "core/vm.h"
#include "devices/devices.h"
#include "devices/uart16550.h"
#include "x86/layout.h"

struct serial {
	struct vm *vm;
	struct chardev *chr;
	pthread_mutex_t lock; /* vCPU register access vs. loop-thread input */
	struct uart16550 uart;
	unsigned irq;
};

static void serial_tx(void *opaque, uint8_t byte)
{
	struct serial *s = opaque;
	if (s->chr)
		chardev_write(s->chr, &byte, 1);
}

static void serial_irq(void *opaque, bool level)
{
	struct serial *s = opaque;
	log_debug("serial: IRQ %u %s", s->irq, level ? "raised" : "lowered");
	vm_irq_line(s->vm, s->irq, level);
}

static void serial_rx_ready(void *opaque)
{
	struct serial *s = opaque;
	if (s->chr)
		chardev_resume_input(s->chr);
}

static void serial_io_read(void *dev, uint64_t off, void *data, unsigned len)
{
	struct serial *s = dev;
	uint8_t *p = data;
	pthread_mutex_lock(&s->lock);
	/* Wider accesses read consecutive registers, like byte lanes would. */
	for (unsigned i = 0; i < len; i++)
		p[i] = uart16550_read(&s->uart, (unsigned)(off + i));
	pthread_mutex_unlock(&s->lock);
}

static void serial_io_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	struct serial *s = dev;
	const uint8_t *p = data;
	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < len; i++)
		uart16550_write(&s->uart, (unsigned)(off + i), p[i]);
	pthread_mutex_unlock(&s->lock);
}

static const struct io_ops serial_io_ops = {
	.read = serial_io_read,
	.write = serial_io_write,
};

static size_t serial_input(void *opaque, const uint8_t *buf, size_t len)
{
	struct serial *s = opaque;
	pthread_mutex_lock(&s->lock);
	size_t n = uart16550_receive(&s->uart, buf, len);
	pthread_mutex_unlock(&s->lock);
	return n;
}

static void serial_quit(void *opaque)
{
	struct serial *s = opaque;
	vm_request_stop(s->vm, VM_STOP_SIGNAL, 0);
}

static int serial_create(struct vm *vm, const void *arg, void **state)
{
	(void)arg;
	struct serial *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->vm = vm;
	s->chr = vm->serial_chr;
	s->irq = IRQ_COM1;
	pthread_mutex_init(&s->lock, NULL);
	struct uart16550_cbs cbs = { serial_tx, serial_irq, serial_rx_ready, s };
	uart16550_init(&s->uart, &cbs);
	if (io_bus_register(&vm->pio, PORT_COM1, 8, &serial_io_ops, s, "serial")) {
		log_err("serial: ports 0x%x-0x%x are taken", PORT_COM1, PORT_COM1 + 7);
		pthread_mutex_destroy(&s->lock);
		free(s);
		return -EBUSY;
	}
	if (s->chr && chardev_attach(s->chr, vm->loop, serial_input, serial_quit, s)) {
		io_bus_unregister(&vm->pio, PORT_COM1);
		pthread_mutex_destroy(&s->lock);
		free(s);
		return -EIO;
	}
	*state = s;
	return 0;
}

static void serial_destroy(struct vm *vm, void *state)
{
	struct serial *s = state;
	if (s->chr)
		chardev_detach(s->chr);
	io_bus_unregister(&vm->pio, PORT_COM1);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

const struct device_ops serial_device_ops = {
	.name = "serial",
	.create = serial_create,
	.destroy = serial_destroy,
};
