/* Character backends for guest consoles: stdio, pty, file, unix socket, off.
 *
 * A backend is opened once per process run and outlives VM reboots; the
 * device front end (UART today, virtio-console later) attaches to it. */
#ifndef KESTREL_CHARDEV_H
#define KESTREL_CHARDEV_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct loop;

enum chardev_kind { CHARDEV_STDIO, CHARDEV_PTY, CHARDEV_FILE, CHARDEV_SOCKET, CHARDEV_OFF };

struct chardev_spec {
	enum chardev_kind kind;
	char path[PATH_MAX]; /* file= and socket= */
};

/* Parses "stdio", "pty", "file=PATH", "socket=PATH" or "off". Returns 0, or
 * -1 with a one-line reason in `err`. */
int chardev_parse(const char *text, struct chardev_spec *spec, char *err, size_t errlen);

/* Called on the main loop thread with bytes the user typed. Returns how many
 * it took; the rest stays pending until chardev_resume_input(). */
typedef size_t (*chardev_input_fn)(void *opaque, const uint8_t *buf, size_t len);
/* Called when the user asks to quit from the console (Ctrl-A x on stdio). */
typedef void (*chardev_quit_fn)(void *opaque);

struct chardev {
	enum chardev_kind kind;
	char name[PATH_MAX];    /* pty path or file/socket path, for messages */
	int in_fd, out_fd;      /* -1 when absent */
	int listen_fd;          /* socket backend */
	int resume_efd;         /* front end has room again (from any thread) */
	bool in_registered;
	bool input_paused;
	bool escape;            /* saw Ctrl-A on stdio */
	struct loop *loop;
	chardev_input_fn input;
	chardev_quit_fn quit;
	void *opaque;
	uint8_t pending[256];   /* input read but not yet taken by the front end */
	size_t pending_len, pending_off;
	pthread_mutex_t lock;   /* out_fd writes from vCPU threads vs. reconnects */
};

/* Opens the backend. Puts a stdin terminal in raw mode (restored at exit,
 * on fatal signals, and by chardev_close). Returns the backend, or NULL
 * with an error already printed. */
struct chardev *chardev_open(const struct chardev_spec *spec);
void chardev_close(struct chardev *c);

/* Connects the backend's input to the main loop and a front end. */
int chardev_attach(struct chardev *c, struct loop *loop, chardev_input_fn input,
		   chardev_quit_fn quit, void *opaque);
void chardev_detach(struct chardev *c);

/* Writes guest output; never blocks the caller for long and drops output if
 * nobody listens (socket without client, off). Thread-safe. */
void chardev_write(struct chardev *c, const void *buf, size_t len);

/* Front end has room again: deliver pending input and read more. Thread-safe. */
void chardev_resume_input(struct chardev *c);

/* Restores the terminal if a backend put it in raw mode. Async-signal-safe. */
void chardev_restore_terminal(void);

#endif
