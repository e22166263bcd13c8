#include "core/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

struct watch {
	int fd;
	loop_fn fn;
	void *opaque;
	bool dead;
	bool is_timer;
	struct watch *next;
};

struct loop {
	int epfd;
	bool quit;
	struct watch *watches;
};

struct loop *loop_create(void)
{
	struct loop *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd < 0) {
		int e = errno;
		free(l);
		errno = e;
		return NULL;
	}
	return l;
}

static void loop_reap(struct loop *l)
{
	struct watch **pp = &l->watches;
	while (*pp) {
		struct watch *w = *pp;
		if (w->dead) {
			*pp = w->next;
			if (w->is_timer)
				close(w->fd);
			free(w);
		} else {
			pp = &w->next;
		}
	}
}

void loop_destroy(struct loop *l)
{
	if (!l)
		return;
	for (struct watch *w = l->watches; w; w = w->next)
		w->dead = true;
	loop_reap(l);
	close(l->epfd);
	free(l);
}

static struct watch *loop_find(struct loop *l, int fd)
{
	for (struct watch *w = l->watches; w; w = w->next)
		if (w->fd == fd && !w->dead)
			return w;
	return NULL;
}

int loop_add(struct loop *l, int fd, uint32_t events, loop_fn fn, void *opaque)
{
	struct watch *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	*w = (struct watch){ .fd = fd, .fn = fn, .opaque = opaque, .next = l->watches };
	struct epoll_event ev = { .events = events, .data.ptr = w };
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int e = errno;
		free(w);
		return -e;
	}
	l->watches = w;
	return 0;
}

int loop_modify(struct loop *l, int fd, uint32_t events)
{
	struct watch *w = loop_find(l, fd);
	if (!w)
		return -ENOENT;
	struct epoll_event ev = { .events = events, .data.ptr = w };
	return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

void loop_remove(struct loop *l, int fd)
{
	struct watch *w = loop_find(l, fd);
	if (!w)
		return;
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
	/* Freed after the current dispatch round: a pending event in this
	 * round may still point at it. */
	w->dead = true;
}

int loop_timer_add(struct loop *l, uint64_t first_ns, uint64_t period_ns, loop_fn fn, void *opaque)
{
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (tfd < 0)
		return -errno;
	struct itimerspec its = {
		.it_value = { (time_t)(first_ns / 1000000000ULL), (long)(first_ns % 1000000000ULL) },
		.it_interval = { (time_t)(period_ns / 1000000000ULL), (long)(period_ns % 1000000000ULL) },
	};
	if (first_ns == 0)
		its.it_value.tv_nsec = 1;
	if (timerfd_settime(tfd, 0, &its, NULL) < 0) {
		int e = errno;
		close(tfd);
		return -e;
	}
	int ret = loop_add(l, tfd, EPOLLIN, fn, opaque);
	if (ret < 0) {
		close(tfd);
		return ret;
	}
	loop_find(l, tfd)->is_timer = true;
	return tfd;
}

void loop_timer_remove(struct loop *l, int tfd)
{
	loop_remove(l, tfd);
}

int loop_run(struct loop *l)
{
	l->quit = false;
	while (!l->quit) {
		struct epoll_event evs[16];
		int n = epoll_wait(l->epfd, evs, 16, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (int i = 0; i < n && !l->quit; i++) {
			struct watch *w = evs[i].data.ptr;
			if (w->dead)
				continue;
			if (w->is_timer) {
				uint64_t expirations;
				if (read(w->fd, &expirations, sizeof(expirations)) < 0)
					continue;
			}
			w->fn(w->opaque, evs[i].events);
		}
		loop_reap(l);
	}
	loop_reap(l);
	return 0;
}

void loop_quit(struct loop *l)
{
	l->quit = true;
}
