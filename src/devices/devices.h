/* The platform's legacy devices: each file exposes one const ops struct. */
#ifndef KESTREL_DEVICES_H
#define KESTREL_DEVICES_H

#include "core/device.h"

extern const struct device_ops serial_device_ops;     /* COM1 16550A */
extern const struct device_ops debug_exit_device_ops; /* isa-debug-exit at 0xf4 */
extern const struct device_ops post_device_ops;       /* port 0x80, ignored */
extern const struct device_ops i8042_device_ops;      /* keyboard controller: reset line */
extern const struct device_ops rtc_device_ops;        /* CMOS RTC */
extern const struct device_ops acpi_pm_device_ops;    /* PM1 event/control, PM timer, GPE0 */
extern const struct device_ops e1000_device_ops;      /* arg: struct net_config */

#endif
