/* aio=threads: a small pool of worker threads doing blocking syscalls.
 *
 * The poll thread appends jobs to `jobs`; a worker runs one with
 * blk_fio_run_sync() (which finishes short transfers itself), appends it to
 * `done` and signals the event fd when that list was empty; reap() moves the
 * whole `done` list to the engine's ready list. Workers start on demand, up
 * to THREADS_MAX, and live until the engine is destroyed. */
#include "block/block_int.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define THREADS_MAX 16

struct threads {
	struct blk_engine e;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct blk_fio *jobs, **jobs_tail;  /* under lock */
	struct blk_fio *done, **done_tail;  /* under lock */
	unsigned njobs;                     /* under lock: length of `jobs` */
	unsigned idle;                      /* under lock: workers waiting for a job */
	unsigned nworkers;                  /* poll thread only */
	bool stop;                          /* under lock */
	pthread_t workers[THREADS_MAX];
};

static void *worker(void *arg)
{
	struct threads *t = arg;
	pthread_mutex_lock(&t->lock);
	for (;;) {
		while (!t->jobs && !t->stop) {
			t->idle++;
			pthread_cond_wait(&t->cond, &t->lock);
			t->idle--;
		}
		if (!t->jobs)
			break;
		struct blk_fio *f = t->jobs;
		t->jobs = f->next;
		if (!t->jobs)
			t->jobs_tail = &t->jobs;
		t->njobs--;
		pthread_mutex_unlock(&t->lock);

		f->result = blk_fio_run_sync(f);

		pthread_mutex_lock(&t->lock);
		bool was_empty = !t->done;
		f->next = NULL;
		*t->done_tail = f;
		t->done_tail = &f->next;
		/* One wakeup per batch: reap() takes the whole list under the
		 * lock, so a non-empty list always has a signal pending. */
		if (was_empty)
			blk_engine_kick(&t->e);
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

/* Starts one more worker. Signals are blocked in workers so that the
 * VMM's signal handling (vCPU kicks, SIGINT) never lands on them. */
static int spawn(struct threads *t)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&t->workers[t->nworkers], NULL, worker, t);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r == 0)
		t->nworkers++;
	return r;
}

static void threads_submit(struct blk_engine *e, struct blk_fio *f)
{
	struct threads *t = container_of(e, struct threads, e);
	pthread_mutex_lock(&t->lock);
	f->next = NULL;
	*t->jobs_tail = f;
	t->jobs_tail = &f->next;
	t->njobs++;
	bool want_worker = t->njobs > t->idle && t->nworkers < THREADS_MAX;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	if (!want_worker)
		return;
	int r = spawn(t);
	if (r == 0 || t->nworkers > 0)
		return; /* someone will run it */
	/* No worker at all: take the job back and fail it. */
	pthread_mutex_lock(&t->lock);
	struct blk_fio **pp = &t->jobs;
	while (*pp && *pp != f)
		pp = &(*pp)->next;
	if (*pp) {
		*pp = f->next;
		if (!*pp)
			t->jobs_tail = pp;
		t->njobs--;
	}
	pthread_mutex_unlock(&t->lock);
	blk_engine_finish(e, f, -r);
	blk_engine_kick(e);
}

static void threads_reap(struct blk_engine *e)
{
	struct threads *t = container_of(e, struct threads, e);
	pthread_mutex_lock(&t->lock);
	struct blk_fio *list = t->done;
	t->done = NULL;
	t->done_tail = &t->done;
	pthread_mutex_unlock(&t->lock);
	while (list) {
		struct blk_fio *f = list;
		list = f->next;
		blk_engine_finish(e, f, f->result);
	}
}

static void threads_destroy(struct blk_engine *e)
{
	struct threads *t = container_of(e, struct threads, e);
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	for (unsigned i = 0; i < t->nworkers; i++)
		pthread_join(t->workers[i], NULL);
	pthread_cond_destroy(&t->cond);
	pthread_mutex_destroy(&t->lock);
	close(e->event_fd);
	free(t);
}

static const struct blk_engine_ops threads_ops = {
	.name = "threads",
	.submit = threads_submit,
	.reap = threads_reap,
	.destroy = threads_destroy,
};

struct blk_engine *blk_threads_create(char *err, size_t errlen)
{
	struct threads *t = calloc(1, sizeof(*t));
	if (!t) {
		snprintf(err, errlen, "aio=threads: %s", strerror(ENOMEM));
		return NULL;
	}
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (efd < 0) {
		snprintf(err, errlen, "aio=threads: eventfd: %s", strerror(errno));
		free(t);
		return NULL;
	}
	blk_engine_init(&t->e, &threads_ops, efd);
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	t->jobs_tail = &t->jobs;
	t->done_tail = &t->done;
	return &t->e;
}
