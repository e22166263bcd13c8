/* The i8042 keyboard controller, as far as a guest needs it without a
 * keyboard: self-tests, the command byte, and the CPU reset line (command
 * 0xFE, or output-port bit 0 cleared). No IRQs: no keys are ever pressed. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/vm.h"
#include "devices/devices.h"
#include "x86/layout.h"

#define STS_OBF 0x01
#define STS_SYS 0x04
#define STS_CMD 0x08

struct i8042 {
	struct vm *vm;
	pthread_mutex_t lock;
	uint8_t status;
	uint8_t out;            /* byte waiting for the guest */
	uint8_t ccb;            /* controller command byte */
	uint8_t pending_cmd;    /* command waiting for its data byte */
};

static void i8042_reply(struct i8042 *k, uint8_t v)
{
	k->out = v;
	k->status |= STS_OBF;
}

static void i8042_command(struct i8042 *k, uint8_t cmd)
{
	switch (cmd) {
	case 0x20: i8042_reply(k, k->ccb); break;
	case 0x60: case 0xd1: case 0xd2: case 0xd3: case 0xd4: k->pending_cmd = cmd; break;
	case 0xa9: case 0xab: i8042_reply(k, 0x00); break; /* port tests pass */
	case 0xaa: i8042_reply(k, 0x55); break;            /* self-test passed */
	case 0xc0: i8042_reply(k, 0x00); break;            /* input port */
	case 0xd0: i8042_reply(k, 0x03); break;            /* output port: A20 on, no reset */
	case 0xfe: vm_request_stop(k->vm, VM_STOP_RESET, 0); break;
	default: break;                                    /* enable/disable ports etc. */
	}
}

static void i8042_data(struct i8042 *k, uint8_t v)
{
	uint8_t cmd = k->pending_cmd;
	k->pending_cmd = 0;
	switch (cmd) {
	case 0x60: k->ccb = v; break;
	case 0xd1:
		if (!(v & 1))
			vm_request_stop(k->vm, VM_STOP_RESET, 0);
		break;
	case 0xd2: case 0xd3: i8042_reply(k, v); break; /* echo as if from the device */
	default:
		/* A byte for the (absent) keyboard: answer "resend"-free ACK so
		 * probes finish quickly. */
		if (cmd == 0)
			i8042_reply(k, 0xfa);
		break;
	}
}

static void i8042_access(struct i8042 *k, bool cmd_port, void *data, unsigned len, bool is_write)
{
	pthread_mutex_lock(&k->lock);
	if (is_write) {
		uint8_t v = *(const uint8_t *)data;
		if (cmd_port) {
			k->status |= STS_CMD;
			i8042_command(k, v);
		} else {
			k->status &= (uint8_t)~STS_CMD;
			i8042_data(k, v);
		}
	} else {
		uint8_t v = k->status;
		if (!cmd_port) {
			v = k->out;
			k->status &= (uint8_t)~STS_OBF;
		}
		memset(data, v, len);
	}
	pthread_mutex_unlock(&k->lock);
}

static void i8042_data_read(void *dev, uint64_t off, void *data, unsigned len)
{
	(void)off;
	i8042_access(dev, false, data, len, false);
}

static void i8042_data_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	(void)off;
	i8042_access(dev, false, (void *)data, len, true);
}

static void i8042_cmd_read(void *dev, uint64_t off, void *data, unsigned len)
{
	(void)off;
	i8042_access(dev, true, data, len, false);
}

static void i8042_cmd_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	(void)off;
	i8042_access(dev, true, (void *)data, len, true);
}

static const struct io_ops i8042_data_io = { i8042_data_read, i8042_data_write };
static const struct io_ops i8042_cmd_io = { i8042_cmd_read, i8042_cmd_write };

static int i8042_create(struct vm *vm, const void *arg, void **state)
{
	(void)arg;
	struct i8042 *k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->vm = vm;
	k->status = STS_SYS;
	k->ccb = 0x45; /* kbd interrupt, system flag, translation */
	pthread_mutex_init(&k->lock, NULL);
	if (io_bus_register(&vm->pio, PORT_I8042_DATA, 1, &i8042_data_io, k, "i8042") ||
	    io_bus_register(&vm->pio, PORT_I8042_CMD, 1, &i8042_cmd_io, k, "i8042")) {
		log_err("i8042: ports 0x60/0x64 are taken");
		io_bus_unregister(&vm->pio, PORT_I8042_DATA);
		pthread_mutex_destroy(&k->lock);
		free(k);
		return -EBUSY;
	}
	*state = k;
	return 0;
}

static void i8042_destroy(struct vm *vm, void *state)
{
	struct i8042 *k = state;
	io_bus_unregister(&vm->pio, PORT_I8042_CMD);
	io_bus_unregister(&vm->pio, PORT_I8042_DATA);
	pthread_mutex_destroy(&k->lock);
	free(k);
}

const struct device_ops i8042_device_ops = {
	.name = "i8042",
	.create = i8042_create,
	.destroy = i8042_destroy,
};
