/* isa-debug-exit: a write of V ends the VM with exit status (V << 1) | 1,
 * QEMU's convention, so test guests run unchanged on both VMMs. */
#include <string.h>

#include "core/log.h"
#include "core/vm.h"
#include "devices/devices.h"
#include "x86/layout.h"

static void debug_exit_read(void *dev, uint64_t off, void *data, unsigned len)
{
	(void)dev;
	(void)off;
	memset(data, 0xff, len);
}

static void debug_exit_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	(void)off;
	uint32_t v = 0;
	memcpy(&v, data, len > 4 ? 4 : len);
	vm_request_stop(dev, VM_STOP_DEBUG_EXIT, (int)v);
}

static const struct io_ops debug_exit_io = { debug_exit_read, debug_exit_write };

static int debug_exit_create(struct vm *vm, const void *arg, void **state)
{
	(void)arg;
	if (io_bus_register(&vm->pio, PORT_DEBUG_EXIT, 4, &debug_exit_io, vm, "debug-exit")) {
		log_err("debug-exit: port 0x%x is taken", PORT_DEBUG_EXIT);
		return -1;
	}
	*state = NULL;
	return 0;
}

static void debug_exit_destroy(struct vm *vm, void *state)
{
	(void)state;
	io_bus_unregister(&vm->pio, PORT_DEBUG_EXIT);
}

const struct device_ops debug_exit_device_ops = {
	.name = "debug-exit",
	.create = debug_exit_create,
	.destroy = debug_exit_destroy,
};
