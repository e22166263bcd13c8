/* The one interface every device implements. Each device file exposes one
 * `const struct device_ops`; the builder creates devices in order and
 * destroys them in reverse. */
#ifndef KESTREL_DEVICE_H
#define KESTREL_DEVICE_H

struct vm;

struct device_ops {
	const char *name;
	/* Allocates the device, claims its ports/MMIO/IRQs on `vm`, and stores
	 * its state in *state. `arg` is device-specific (may be NULL). Returns
	 * 0, or -errno after printing one error line; nothing is left claimed. */
	int (*create)(struct vm *vm, const void *arg, void **state);
	/* Releases what create claimed. Called with vCPUs stopped. */
	void (*destroy)(struct vm *vm, void *state);
};

#endif
