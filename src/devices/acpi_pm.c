/* ACPI fixed hardware: PM1a event block (status/enable), PM1a control
 * (SLP_TYP/SLP_EN: S5 powers the VM off), the 24-bit PM timer at
 * 3.579545 MHz, and an idle GPE0 block. SCI_EN reads as set: Kestrel has no
 * SMM, so the machine is always in ACPI mode (FADT SMI_CMD = 0). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/vm.h"
#include "devices/devices.h"
#include "x86/layout.h"

#define PM1_CNT_SCI_EN  0x0001
#define PM1_CNT_SLP_EN  0x2000
#define PM_TIMER_HZ     3579545ULL

struct acpi_pm {
	struct vm *vm;
	pthread_mutex_t lock;
	uint16_t pm1_sts, pm1_en, pm1_cnt;
	uint16_t gpe0_sts, gpe0_en;
};

static uint32_t pm_timer_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	/* 128-bit-free: seconds and nanoseconds scaled separately. */
	uint64_t ticks = (uint64_t)ts.tv_sec * PM_TIMER_HZ + (uint64_t)ts.tv_nsec * PM_TIMER_HZ / 1000000000ULL;
	return (uint32_t)(ticks & 0xffffff);
}

/* Registers as a byte array so any access width works: offsets from 0x600. */
static uint8_t acpi_pm_byte(struct acpi_pm *pm, unsigned off, uint32_t tmr)
{
	switch (off) {
	case 0x0: return (uint8_t)pm->pm1_sts;
	case 0x1: return (uint8_t)(pm->pm1_sts >> 8);
	case 0x2: return (uint8_t)pm->pm1_en;
	case 0x3: return (uint8_t)(pm->pm1_en >> 8);
	case 0x4: return (uint8_t)pm->pm1_cnt;
	case 0x5: return (uint8_t)(pm->pm1_cnt >> 8);
	case 0x8: case 0x9: case 0xa: case 0xb: return (uint8_t)(tmr >> (8 * (off - 8)));
	case 0x20: return (uint8_t)pm->gpe0_sts;
	case 0x21: return (uint8_t)(pm->gpe0_sts >> 8);
	case 0x22: return (uint8_t)pm->gpe0_en;
	case 0x23: return (uint8_t)(pm->gpe0_en >> 8);
	default: return 0xff;
	}
}

static void acpi_pm_read(void *dev, uint64_t off, void *data, unsigned len)
{
	struct acpi_pm *pm = dev;
	uint8_t *p = data;
	uint32_t tmr = pm_timer_now();
	pthread_mutex_lock(&pm->lock);
	for (unsigned i = 0; i < len; i++)
		p[i] = acpi_pm_byte(pm, (unsigned)off + i, tmr);
	pthread_mutex_unlock(&pm->lock);
}

static void acpi_pm_cnt_write(struct acpi_pm *pm, uint16_t v)
{
	/* SCI_EN stays set; SLP_EN is write-only. */
	pm->pm1_cnt = (uint16_t)((v & ~PM1_CNT_SLP_EN) | PM1_CNT_SCI_EN);
	if (v & PM1_CNT_SLP_EN) {
		unsigned typ = (v >> 10) & 7;
		if (typ == ACPI_S5_SLP_TYP)
			vm_request_stop(pm->vm, VM_STOP_POWEROFF, 0);
		else
			log_info("guest asked for sleep type %u; only S5 (soft off) is supported", typ);
	}
}

static void acpi_pm_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	struct acpi_pm *pm = dev;
	uint64_t v = 0;
	memcpy(&v, data, len);
	pthread_mutex_lock(&pm->lock);
	/* Merge the written bytes into each 16-bit register they touch. */
	for (unsigned i = 0; i < len; i++) {
		unsigned o = (unsigned)off + i;
		uint16_t b = (uint16_t)((v >> (8 * i)) & 0xff);
		unsigned shift = (o & 1) * 8;
		switch (o & ~1u) {
		case 0x0: pm->pm1_sts &= (uint16_t)~(b << shift); break; /* write 1 to clear */
		case 0x2: pm->pm1_en = (uint16_t)((pm->pm1_en & ~(0xff << shift)) | (b << shift)); break;
		case 0x20: pm->gpe0_sts &= (uint16_t)~(b << shift); break;
		case 0x22: pm->gpe0_en = (uint16_t)((pm->gpe0_en & ~(0xff << shift)) | (b << shift)); break;
		default: break;
		}
	}
	/* PM1_CNT acts on the whole register once written (SLP_EN + SLP_TYP). */
	if (off <= 0x5 && off + len > 0x4) {
		uint16_t cnt = pm->pm1_cnt;
		for (unsigned i = 0; i < len; i++) {
			unsigned o = (unsigned)off + i;
			if (o == 4 || o == 5) {
				unsigned shift = (o - 4) * 8;
				cnt = (uint16_t)((cnt & ~(0xff << shift)) | (((v >> (8 * i)) & 0xff) << shift));
			}
		}
		acpi_pm_cnt_write(pm, cnt);
	}
	pthread_mutex_unlock(&pm->lock);
}

static const struct io_ops acpi_pm_io = { acpi_pm_read, acpi_pm_write };

static int acpi_pm_create(struct vm *vm, const void *arg, void **state)
{
	(void)arg;
	struct acpi_pm *pm = calloc(1, sizeof(*pm));
	if (!pm)
		return -ENOMEM;
	pm->vm = vm;
	pm->pm1_cnt = PM1_CNT_SCI_EN;
	pthread_mutex_init(&pm->lock, NULL);
	/* One range covers PM1_EVT, PM1_CNT, PM_TMR and GPE0 (0x600-0x623). */
	if (io_bus_register(&vm->pio, PORT_ACPI_PM_BASE, 0x24, &acpi_pm_io, pm, "acpi-pm")) {
		log_err("acpi-pm: ports 0x%x-0x%x are taken", PORT_ACPI_PM_BASE, PORT_ACPI_PM_BASE + 0x23);
		pthread_mutex_destroy(&pm->lock);
		free(pm);
		return -EBUSY;
	}
	*state = pm;
	return 0;
}

static void acpi_pm_destroy(struct vm *vm, void *state)
{
	struct acpi_pm *pm = state;
	io_bus_unregister(&vm->pio, PORT_ACPI_PM_BASE);
	pthread_mutex_destroy(&pm->lock);
	free(pm);
}

const struct device_ops acpi_pm_device_ops = {
	.name = "acpi-pm",
	.create = acpi_pm_create,
	.destroy = acpi_pm_destroy,
};
