/* Port 0x80: POST codes and the classic I/O delay port. Claimed so that the
 * millions of delay writes some guests make are not counted as unclaimed. */
#include <string.h>

#include "core/log.h"
#include "core/vm.h"
#include "devices/devices.h"
#include "x86/layout.h"

static void post_read(void *dev, uint64_t off, void *data, unsigned len)
{
	(void)dev;
	(void)off;
	memset(data, 0xff, len);
}

static void post_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	(void)dev;
	(void)off;
	(void)data;
	(void)len;
}

static const struct io_ops post_io = { post_read, post_write };

static int post_create(struct vm *vm, const void *arg, void **state)
{
	(void)arg;
	*state = NULL;
	if (io_bus_register(&vm->pio, PORT_POST, 1, &post_io, NULL, "post")) {
		log_err("post: port 0x%x is taken", PORT_POST);
		return -1;
	}
	return 0;
}

static void post_destroy(struct vm *vm, void *state)
{
	(void)state;
	io_bus_unregister(&vm->pio, PORT_POST);
}

const struct device_ops post_device_ops = {
	.name = "post",
	.create = post_create,
	.destroy = post_destroy,
};
