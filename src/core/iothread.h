/* An I/O thread: a thread running its own main loop, for devices whose
 * queue work should stay off both the vCPUs and the main loop. File
 * descriptors are added to iothread->loop before iothread_start(). */
#ifndef KESTREL_IOTHREAD_H
#define KESTREL_IOTHREAD_H

#include <pthread.h>
#include <stdbool.h>

struct loop;

struct iothread {
	struct loop *loop;
	pthread_t thread;
	bool running;
	int stop_fd;
	char name[16];
};

/* Returns 0 or -errno. */
int iothread_init(struct iothread *t, const char *name);
int iothread_start(struct iothread *t);
/* Stops and joins the thread; the loop stays, so fds can be removed. */
void iothread_stop(struct iothread *t);
/* Stops (if running) and frees the loop. */
void iothread_destroy(struct iothread *t);

#endif
