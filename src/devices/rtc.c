/* The MC146818 CMOS RTC at 0x70/0x71: host wall-clock time (UTC), as a PC
 * BIOS would keep it, plus 128 bytes of CMOS RAM. The guest may set the
 * clock; Kestrel keeps that as an offset from host time. Alarm and
 * periodic interrupts are not emulated (register C reads 0). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/vm.h"
#include "devices/devices.h"
#include "x86/layout.h"

enum {
	RTC_SEC = 0, RTC_MIN = 2, RTC_HOUR = 4, RTC_WDAY = 6, RTC_MDAY = 7, RTC_MON = 8,
	RTC_YEAR = 9, RTC_A = 0x0a, RTC_B = 0x0b, RTC_C = 0x0c, RTC_D = 0x0d, RTC_CENTURY = 0x32,
};
#define B_SET   0x80
#define B_24H   0x02
#define B_BIN   0x04

struct rtc {
	pthread_mutex_t lock;
	uint8_t index;
	uint8_t cmos[128];
	int64_t offset; /* guest time - host time, seconds */
};

static uint8_t to_bcd(const struct rtc *r, int v)
{
	if (r->cmos[RTC_B] & B_BIN)
		return (uint8_t)v;
	return (uint8_t)(((v / 10) << 4) | (v % 10));
}

static int from_bcd(const struct rtc *r, uint8_t v)
{
	if (r->cmos[RTC_B] & B_BIN)
		return v;
	return (v >> 4) * 10 + (v & 0xf);
}

static void rtc_latch_time(struct rtc *r)
{
	time_t now = time(NULL) + (time_t)r->offset;
	struct tm tm;
	gmtime_r(&now, &tm);
	r->cmos[RTC_SEC] = to_bcd(r, tm.tm_sec);
	r->cmos[RTC_MIN] = to_bcd(r, tm.tm_min);
	int hour = tm.tm_hour;
	if (!(r->cmos[RTC_B] & B_24H)) {
		int h12 = hour % 12 ? hour % 12 : 12;
		r->cmos[RTC_HOUR] = (uint8_t)(to_bcd(r, h12) | (hour >= 12 ? 0x80 : 0));
	} else {
		r->cmos[RTC_HOUR] = to_bcd(r, hour);
	}
	r->cmos[RTC_WDAY] = to_bcd(r, tm.tm_wday + 1);
	r->cmos[RTC_MDAY] = to_bcd(r, tm.tm_mday);
	r->cmos[RTC_MON] = to_bcd(r, tm.tm_mon + 1);
	r->cmos[RTC_YEAR] = to_bcd(r, tm.tm_year % 100);
	r->cmos[RTC_CENTURY] = to_bcd(r, (tm.tm_year + 1900) / 100);
}

/* The guest finished setting the clock: remember how far it is from ours. */
static void rtc_commit_time(struct rtc *r)
{
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	tm.tm_sec = from_bcd(r, r->cmos[RTC_SEC]);
	tm.tm_min = from_bcd(r, r->cmos[RTC_MIN]);
	uint8_t h = r->cmos[RTC_HOUR];
	if (r->cmos[RTC_B] & B_24H) {
		tm.tm_hour = from_bcd(r, h);
	} else {
		tm.tm_hour = from_bcd(r, h & 0x7f) % 12 + ((h & 0x80) ? 12 : 0);
	}
	tm.tm_mday = from_bcd(r, r->cmos[RTC_MDAY]);
	tm.tm_mon = from_bcd(r, r->cmos[RTC_MON]) - 1;
	tm.tm_year = from_bcd(r, r->cmos[RTC_CENTURY]) * 100 + from_bcd(r, r->cmos[RTC_YEAR]) - 1900;
	time_t t = timegm(&tm);
	if (t != (time_t)-1)
		r->offset = (int64_t)(t - time(NULL));
}

static void rtc_read(void *dev, uint64_t off, void *data, unsigned len)
{
	struct rtc *r = dev;
	uint8_t v = 0xff;
	pthread_mutex_lock(&r->lock);
	if (off == 1) {
		uint8_t i = r->index;
		if (i <= RTC_YEAR || i == RTC_CENTURY) {
			if (!(r->cmos[RTC_B] & B_SET))
				rtc_latch_time(r);
			v = r->cmos[i];
		} else if (i == RTC_A) {
			v = r->cmos[RTC_A] & 0x7f; /* update never in progress */
		} else if (i == RTC_C) {
			v = 0;
		} else if (i == RTC_D) {
			v = 0x80; /* battery good */
		} else {
			v = r->cmos[i];
		}
	} else {
		v = r->index;
	}
	pthread_mutex_unlock(&r->lock);
	memset(data, v, len);
}

static void rtc_write(void *dev, uint64_t off, const void *data, unsigned len)
{
	struct rtc *r = dev;
	(void)len;
	uint8_t v = *(const uint8_t *)data;
	pthread_mutex_lock(&r->lock);
	if (off == 0) {
		r->index = v & 0x7f; /* bit 7 is the NMI mask */
	} else {
		uint8_t i = r->index;
		if (i == RTC_B) {
			bool was_set = r->cmos[RTC_B] & B_SET;
			if (!was_set && (v & B_SET))
				rtc_latch_time(r);
			r->cmos[RTC_B] = v;
			if (was_set && !(v & B_SET))
				rtc_commit_time(r);
		} else if (i == RTC_C || i == RTC_D) {
			/* read-only */
		} else {
			r->cmos[i] = v;
		}
	}
	pthread_mutex_unlock(&r->lock);
}

static const struct io_ops rtc_io = { rtc_read, rtc_write };

static int rtc_create(struct vm *vm, const void *arg, void **state)
{
	(void)arg;
	struct rtc *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	pthread_mutex_init(&r->lock, NULL);
	r->cmos[RTC_A] = 0x26;          /* 32.768 kHz base, 1024 Hz rate */
	r->cmos[RTC_B] = B_24H;         /* BCD, 24-hour, as PC firmware sets it */
	if (io_bus_register(&vm->pio, PORT_RTC, 2, &rtc_io, r, "rtc")) {
		log_err("rtc: ports 0x70-0x71 are taken");
		pthread_mutex_destroy(&r->lock);
		free(r);
		return -EBUSY;
	}
	*state = r;
	return 0;
}

static void rtc_destroy(struct vm *vm, void *state)
{
	struct rtc *r = state;
	io_bus_unregister(&vm->pio, PORT_RTC);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

const struct device_ops rtc_device_ops = {
	.name = "rtc",
	.create = rtc_create,
	.destroy = rtc_destroy,
};
