/* The main loop: epoll over file descriptors (stdin, sockets, signalfd,
 * timerfds, eventfds from vCPU threads). Callbacks run on the loop thread. */
#ifndef KESTREL_LOOP_H
#define KESTREL_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct loop;

/* `events` are EPOLLIN/EPOLLOUT/EPOLLHUP... as reported by epoll. */
typedef void (*loop_fn)(void *opaque, uint32_t events);

/* Returns a loop, or NULL with errno set. */
struct loop *loop_create(void);
void loop_destroy(struct loop *l);

/* Watches `fd` (not owned) for `events`. Returns 0 or -errno. */
int loop_add(struct loop *l, int fd, uint32_t events, loop_fn fn, void *opaque);
int loop_modify(struct loop *l, int fd, uint32_t events);
/* Stops watching `fd`; safe from inside any callback. */
void loop_remove(struct loop *l, int fd);

/* A periodic (or one-shot when period_ns == 0) timer. Returns the timerfd
 * (owned by the loop until loop_timer_remove) or -errno. */
int loop_timer_add(struct loop *l, uint64_t first_ns, uint64_t period_ns, loop_fn fn, void *opaque);
void loop_timer_remove(struct loop *l, int tfd);

/* Dispatches events until loop_quit(). Returns 0, or -errno if epoll fails. */
int loop_run(struct loop *l);
/* Makes loop_run() return after the current callback. Loop thread only. */
void loop_quit(struct loop *l);

#endif
