#include "core/iothread.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/loop.h"

static void iothread_on_stop(void *opaque, uint32_t events)
{
	struct iothread *t = opaque;
	(void)events;
	loop_quit(t->loop);
}

int iothread_init(struct iothread *t, const char *name)
{
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->loop = loop_create();
	if (!t->loop)
		return -errno;
	t->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (t->stop_fd < 0 || loop_add(t->loop, t->stop_fd, EPOLLIN, iothread_on_stop, t)) {
		int e = errno ? errno : EIO;
		if (t->stop_fd >= 0)
			close(t->stop_fd);
		loop_destroy(t->loop);
		t->loop = NULL;
		return -e;
	}
	return 0;
}

static void *iothread_main(void *arg)
{
	struct iothread *t = arg;
	pthread_setname_np(pthread_self(), t->name);
	loop_run(t->loop);
	return NULL;
}

int iothread_start(struct iothread *t)
{
	int ret = pthread_create(&t->thread, NULL, iothread_main, t);
	if (ret)
		return -ret;
	t->running = true;
	return 0;
}

void iothread_stop(struct iothread *t)
{
	if (!t->running)
		return;
	uint64_t one = 1;
	ssize_t w = write(t->stop_fd, &one, sizeof(one));
	(void)w;
	pthread_join(t->thread, NULL);
	t->running = false;
}

void iothread_destroy(struct iothread *t)
{
	if (!t->loop)
		return;
	iothread_stop(t);
	loop_remove(t->loop, t->stop_fd);
	close(t->stop_fd);
	loop_destroy(t->loop);
	t->loop = NULL;
}
