/* The virtio device model: feature negotiation, the status state machine,
 * queue enabling and NEEDS_RESET, config bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/loop.h"
#include "core/vm.h"
#include "virtio/virtio.h"

struct fake {
	struct vm vm;
	struct loop *loop;
	uint8_t *ram;
	struct virtio_dev vdev;
	int resets, activates, config_notifies, queue_notifies;
	uint8_t config[8];
};

static void f_reset(struct virtio_dev *v) { ((struct fake *)v->priv)->resets++; }
static void f_activate(struct virtio_dev *v) { ((struct fake *)v->priv)->activates++; }
static void f_queue(struct virtio_dev *v, unsigned q) { (void)q; ((struct fake *)v->priv)->queue_notifies++; }
static void f_cfg_read(struct virtio_dev *v, unsigned off, void *d, unsigned len)
{
	memcpy(d, ((struct fake *)v->priv)->config + off, len);
}
static void t_notify_queue(struct virtio_dev *v, unsigned q) { (void)v; (void)q; }
static void t_notify_config(struct virtio_dev *v) { ((struct fake *)v->priv)->config_notifies++; }

static const struct virtio_device_ops fake_ops = {
	.name = "fake", .device_id = 99, .queue_notify = f_queue, .config_read = f_cfg_read,
	.activate = f_activate, .reset = f_reset,
};
static const struct virtio_transport_ops fake_transport = { t_notify_queue, t_notify_config };

#define FEAT_A (1ULL << 3)

static int setup(void **state)
{
	struct fake *f = calloc(1, sizeof(*f));
	f->ram = calloc(1, 1 << 20);
	guest_mem_add_region(&f->vm.mem, 0, 1 << 20, f->ram);
	f->loop = loop_create();
	assert_int_equal(virtio_dev_init(&f->vdev, &f->vm, &fake_ops, f, "fake0", FEAT_A, 2, 64,
					 sizeof(f->config), f->loop), 0);
	f->vdev.transport = &fake_transport;
	memcpy(f->config, "ABCDEFGH", 8);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fake *f = *state;
	virtio_dev_destroy(&f->vdev);
	loop_destroy(f->loop);
	free(f->ram);
	free(f);
	return 0;
}

static void drive_to_features_ok(struct fake *f, uint64_t features)
{
	virtio_dev_set_status(&f->vdev, VIRTIO_STATUS_ACKNOWLEDGE);
	virtio_dev_set_status(&f->vdev, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	f->vdev.guest_features = features;
	virtio_dev_set_status(&f->vdev, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
						 VIRTIO_STATUS_FEATURES_OK);
}

static void test_offered_features(void **state)
{
	struct fake *f = *state;
	uint64_t h = f->vdev.host_features;
	assert_true(h & FEAT_A);
	assert_true(h & VIRTIO_BIT(VIRTIO_F_VERSION_1));
	assert_true(h & VIRTIO_BIT(VIRTIO_F_EVENT_IDX));
	assert_true(h & VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC));
	assert_int_equal(f->vdev.status, 0);
}

static void test_features_ok_accepted(void **state)
{
	struct fake *f = *state;
	drive_to_features_ok(f, VIRTIO_BIT(VIRTIO_F_VERSION_1) | FEAT_A);
	assert_true(f->vdev.status & VIRTIO_STATUS_FEATURES_OK);
}

static void test_features_ok_refused_without_version_1(void **state)
{
	struct fake *f = *state;
	drive_to_features_ok(f, FEAT_A); /* a legacy driver */
	assert_false(f->vdev.status & VIRTIO_STATUS_FEATURES_OK);
}

static void test_features_ok_refused_for_unoffered(void **state)
{
	struct fake *f = *state;
	drive_to_features_ok(f, VIRTIO_BIT(VIRTIO_F_VERSION_1) | (1ULL << 40));
	assert_false(f->vdev.status & VIRTIO_STATUS_FEATURES_OK);
}

static void test_driver_ok_activates_and_reset(void **state)
{
	struct fake *f = *state;
	drive_to_features_ok(f, VIRTIO_BIT(VIRTIO_F_VERSION_1) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX));
	virtio_dev_set_status(&f->vdev, f->vdev.status | VIRTIO_STATUS_DRIVER_OK);
	assert_int_equal(f->activates, 1);
	assert_true(f->vdev.queues[0].vq.event_idx);
	assert_false(f->vdev.queues[0].vq.indirect);
	/* The driver cannot clear bits short of a reset. */
	virtio_dev_set_status(&f->vdev, VIRTIO_STATUS_ACKNOWLEDGE);
	assert_true(f->vdev.status & VIRTIO_STATUS_DRIVER_OK);
	int resets = f->resets;
	virtio_dev_set_status(&f->vdev, 0);
	assert_int_equal(f->resets, resets + 1);
	assert_int_equal(f->vdev.status, 0);
	assert_int_equal(f->vdev.guest_features, 0);
	assert_false(f->vdev.queues[0].enabled);
}

static void test_queue_enable_checks_rings(void **state)
{
	struct fake *f = *state;
	drive_to_features_ok(f, VIRTIO_BIT(VIRTIO_F_VERSION_1));
	struct virtio_queue *q = &f->vdev.queues[0];
	q->vq.size = 64;
	q->vq.desc_gpa = 0x1000;
	q->vq.avail_gpa = 0x2000;
	q->vq.used_gpa = 0x3000;
	assert_int_equal(virtio_dev_enable_queue(&f->vdev, 0), 0);
	assert_true(q->enabled);
	/* Rings outside RAM: refused, the device needs a reset and says so. */
	virtio_dev_set_status(&f->vdev, f->vdev.status | VIRTIO_STATUS_DRIVER_OK);
	struct virtio_queue *q1 = &f->vdev.queues[1];
	q1->vq.size = 64;
	q1->vq.desc_gpa = (1 << 20) - 16; /* runs off the end of RAM */
	q1->vq.avail_gpa = 0x4000;
	q1->vq.used_gpa = 0x5000;
	assert_int_equal(virtio_dev_enable_queue(&f->vdev, 1), -1);
	assert_false(q1->enabled);
	assert_true(f->vdev.status & VIRTIO_STATUS_NEEDS_RESET);
	assert_int_equal(f->config_notifies, 1);
	/* NEEDS_RESET sticks through driver status writes, clears on reset. */
	virtio_dev_set_status(&f->vdev, f->vdev.status & ~VIRTIO_STATUS_NEEDS_RESET);
	assert_true(f->vdev.status & VIRTIO_STATUS_NEEDS_RESET);
	virtio_dev_set_status(&f->vdev, 0);
	assert_false(f->vdev.status & VIRTIO_STATUS_NEEDS_RESET);
}

static void test_queue_size_over_max(void **state)
{
	struct fake *f = *state;
	struct virtio_queue *q = &f->vdev.queues[0];
	q->vq.size = 128; /* max is 64 */
	q->vq.desc_gpa = 0x1000;
	q->vq.avail_gpa = 0x2000;
	q->vq.used_gpa = 0x3000;
	assert_int_equal(virtio_dev_enable_queue(&f->vdev, 0), -1);
}

static void test_config_bounds(void **state)
{
	struct fake *f = *state;
	uint32_t v = 0;
	virtio_dev_config_read(&f->vdev, 4, &v, 4);
	assert_memory_equal(&v, "EFGH", 4);
	v = 0x11111111;
	virtio_dev_config_read(&f->vdev, 6, &v, 4); /* straddles the end: zeros */
	assert_int_equal(v, 0);
	virtio_dev_config_read(&f->vdev, 0xffffffff, &v, 4);
	assert_int_equal(v, 0);
	virtio_dev_config_write(&f->vdev, 100, &v, 4); /* no config_write op: ignored */
}

/* Doorbells are counted from the eventfd value; a detached kick fd is no
 * longer read by the loop and comes back on attach. */
static int loop_quitter_fd;
static void quit_loop(void *opaque, uint32_t events)
{
	(void)events;
	loop_quit(opaque);
}

static void run_loop_once(struct fake *f)
{
	loop_quitter_fd = loop_timer_add(f->loop, 20 * 1000 * 1000, 0, quit_loop, f->loop);
	assert_true(loop_quitter_fd >= 0);
	loop_run(f->loop);
	loop_timer_remove(f->loop, loop_quitter_fd);
}

static void test_kicks_counted_and_detach(void **state)
{
	struct fake *f = *state;
	drive_to_features_ok(f, VIRTIO_BIT(VIRTIO_F_VERSION_1));
	struct virtio_queue *q = &f->vdev.queues[0];
	q->vq.size = 64;
	q->vq.desc_gpa = 0x1000;
	q->vq.avail_gpa = 0x2000;
	q->vq.used_gpa = 0x3000;
	assert_int_equal(virtio_dev_enable_queue(&f->vdev, 0), 0);
	virtio_dev_set_status(&f->vdev, f->vdev.status | VIRTIO_STATUS_DRIVER_OK);
	run_loop_once(f); /* the kick DRIVER_OK writes */
	uint64_t base = atomic_load(&q->kicks);
	int notifies = f->queue_notifies;
	uint64_t three = 3;
	assert_int_equal(write(q->kick_fd, &three, 8), 8);
	run_loop_once(f);
	assert_int_equal(atomic_load(&q->kicks), base + 3);
	assert_int_equal(f->queue_notifies, notifies + 1);

	assert_int_equal(virtio_queue_detach_kick(&f->vdev, 0), q->kick_fd);
	assert_int_equal(write(q->kick_fd, &three, 8), 8);
	run_loop_once(f);
	assert_int_equal(f->queue_notifies, notifies + 1);
	assert_int_equal(virtio_queue_attach_kick(&f->vdev, 0), 0);
	run_loop_once(f);
	assert_int_equal(f->queue_notifies, notifies + 2);
	assert_int_equal(atomic_load(&q->kicks), base + 6);
	/* Detached at destroy: no double removal. */
	virtio_queue_detach_kick(&f->vdev, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_offered_features, setup, teardown),
		cmocka_unit_test_setup_teardown(test_features_ok_accepted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_features_ok_refused_without_version_1, setup, teardown),
		cmocka_unit_test_setup_teardown(test_features_ok_refused_for_unoffered, setup, teardown),
		cmocka_unit_test_setup_teardown(test_driver_ok_activates_and_reset, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_enable_checks_rings, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_size_over_max, setup, teardown),
		cmocka_unit_test_setup_teardown(test_config_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kicks_counted_and_detach, setup, teardown),
	};
	return cmocka_run_group_tests_name("virtio", tests, NULL, NULL);
}
