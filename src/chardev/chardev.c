#include "chardev/chardev.h"

#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"

#define CTRL_A 0x01

/* The terminal is a process-wide resource, not VM state: its saved mode
 * must be reachable from a signal handler, hence these two statics. */
static struct termios saved_termios;
static volatile sig_atomic_t termios_saved;

void chardev_restore_terminal(void)
{
	if (termios_saved) {
		tcsetattr(STDIN_FILENO, TCSANOW, &saved_termios);
		termios_saved = 0;
	}
}

static void chardev_fatal_signal(int sig)
{
	chardev_restore_terminal();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void chardev_raw_stdin(void)
{
	if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_termios) < 0)
		return;
	struct termios raw = saved_termios;
	cfmakeraw(&raw);
	/* Keep output post-processing so guest "\n" still reads well and our
	 * own messages line up. */
	raw.c_oflag |= OPOST | ONLCR;
	termios_saved = 1;
	atexit(chardev_restore_terminal);
	static const int fatal[] = { SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL, SIGQUIT };
	for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
		signal(fatal[i], chardev_fatal_signal);
	tcsetattr(STDIN_FILENO, TCSANOW, &raw);
}

int chardev_parse(const char *text, struct chardev_spec *spec, char *err, size_t errlen)
{
	memset(spec, 0, sizeof(*spec));
	const char *path = NULL;
	if (!strcmp(text, "stdio")) {
		spec->kind = CHARDEV_STDIO;
	} else if (!strcmp(text, "pty")) {
		spec->kind = CHARDEV_PTY;
	} else if (!strcmp(text, "off") || !strcmp(text, "none")) {
		spec->kind = CHARDEV_OFF;
	} else if (!strncmp(text, "file=", 5)) {
		spec->kind = CHARDEV_FILE;
		path = text + 5;
	} else if (!strncmp(text, "socket=", 7)) {
		spec->kind = CHARDEV_SOCKET;
		path = text + 7;
	} else {
		snprintf(err, errlen, "'%s' is not a console backend (expected stdio, pty, file=PATH, socket=PATH or off)",
			 text);
		return -1;
	}
	if (path) {
		size_t max = spec->kind == CHARDEV_SOCKET ? sizeof(((struct sockaddr_un *)0)->sun_path)
							  : sizeof(spec->path);
		if (!*path) {
			snprintf(err, errlen, "'%s' needs a path after '='", text);
			return -1;
		}
		if (strlen(path) >= max) {
			snprintf(err, errlen, "path in '%s' is too long (at most %zu bytes)", text, max - 1);
			return -1;
		}
		strcpy(spec->path, path);
	}
	return 0;
}

static int chardev_open_socket(struct chardev *c, const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, path);
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	c->listen_fd = fd;
	return 0;
}

struct chardev *chardev_open(const struct chardev_spec *spec)
{
	struct chardev *c = calloc(1, sizeof(*c));
	if (!c) {
		log_err("out of memory");
		return NULL;
	}
	c->kind = spec->kind;
	c->in_fd = c->out_fd = c->listen_fd = -1;
	c->resume_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->resume_efd < 0) {
		log_err("eventfd: %s", strerror(errno));
		free(c);
		return NULL;
	}
	pthread_mutex_init(&c->lock, NULL);
	int ret = 0;
	switch (spec->kind) {
	case CHARDEV_STDIO:
		c->in_fd = STDIN_FILENO;
		c->out_fd = STDOUT_FILENO;
		snprintf(c->name, sizeof(c->name), "stdio");
		chardev_raw_stdin();
		break;
	case CHARDEV_PTY: {
		int master, slave;
		if (openpty(&master, &slave, c->name, NULL, NULL) < 0) {
			ret = -errno;
			break;
		}
		/* Raw: the guest owns the line discipline. */
		struct termios t;
		tcgetattr(slave, &t);
		cfmakeraw(&t);
		tcsetattr(slave, TCSANOW, &t);
		close(slave);
		fcntl(master, F_SETFL, O_NONBLOCK);
		fcntl(master, F_SETFD, FD_CLOEXEC);
		c->in_fd = c->out_fd = master;
		log_msg(LOG_ERROR, "serial console on %s", c->name);
		break;
	}
	case CHARDEV_FILE:
		snprintf(c->name, sizeof(c->name), "%s", spec->path);
		c->out_fd = open(spec->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_APPEND, 0644);
		if (c->out_fd < 0)
			ret = -errno;
		break;
	case CHARDEV_SOCKET:
		snprintf(c->name, sizeof(c->name), "%s", spec->path);
		ret = chardev_open_socket(c, spec->path);
		break;
	case CHARDEV_OFF:
		snprintf(c->name, sizeof(c->name), "off");
		break;
	}
	if (ret) {
		log_err("cannot open console backend '%s': %s", spec->path[0] ? spec->path : "pty", strerror(-ret));
		close(c->resume_efd);
		pthread_mutex_destroy(&c->lock);
		free(c);
		return NULL;
	}
	return c;
}

void chardev_close(struct chardev *c)
{
	if (!c)
		return;
	if (c->kind == CHARDEV_STDIO)
		chardev_restore_terminal();
	else {
		if (c->in_fd >= 0)
			close(c->in_fd);
		if (c->out_fd >= 0 && c->out_fd != c->in_fd)
			close(c->out_fd);
	}
	if (c->listen_fd >= 0) {
		close(c->listen_fd);
		unlink(c->name);
	}
	close(c->resume_efd);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* Hands pending input to the front end; pauses reading while it is full. */
static void chardev_deliver(struct chardev *c)
{
	while (c->pending_off < c->pending_len) {
		size_t took = c->input(c->opaque, c->pending + c->pending_off, c->pending_len - c->pending_off);
		if (took == 0)
			break;
		c->pending_off += took;
	}
	bool full = c->pending_off < c->pending_len;
	if (full != c->input_paused && c->in_registered) {
		c->input_paused = full;
		loop_modify(c->loop, c->in_fd, full ? 0 : EPOLLIN);
	}
}

static void chardev_drop_client(struct chardev *c)
{
	if (c->in_registered)
		loop_remove(c->loop, c->in_fd);
	c->in_registered = false;
	pthread_mutex_lock(&c->lock);
	close(c->in_fd);
	c->in_fd = c->out_fd = -1;
	pthread_mutex_unlock(&c->lock);
}

static void chardev_readable(void *opaque, uint32_t events)
{
	struct chardev *c = opaque;
	(void)events;
	uint8_t buf[sizeof(c->pending)];
	ssize_t n = read(c->in_fd, buf, sizeof(buf));
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		/* EOF: stdin closed or the socket client left. */
		if (c->kind == CHARDEV_SOCKET) {
			chardev_drop_client(c);
		} else if (c->in_registered) {
			loop_remove(c->loop, c->in_fd);
			c->in_registered = false;
		}
		return;
	}
	c->pending_len = c->pending_off = 0;
	for (ssize_t i = 0; i < n; i++) {
		uint8_t b = buf[i];
		if (c->kind == CHARDEV_STDIO && termios_saved) {
			/* Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A: QEMU's keys. */
			if (c->escape) {
				c->escape = false;
				if (b == 'x' || b == 'X') {
					if (c->quit)
						c->quit(c->opaque);
					return;
				}
				if (b != CTRL_A)
					continue;
			} else if (b == CTRL_A) {
				c->escape = true;
				continue;
			}
		}
		c->pending[c->pending_len++] = b;
	}
	chardev_deliver(c);
}

static void chardev_accept(void *opaque, uint32_t events)
{
	struct chardev *c = opaque;
	(void)events;
	int fd = accept4(c->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (c->in_fd >= 0) {
		/* One client at a time. */
		close(fd);
		return;
	}
	pthread_mutex_lock(&c->lock);
	c->in_fd = c->out_fd = fd;
	pthread_mutex_unlock(&c->lock);
	if (loop_add(c->loop, fd, EPOLLIN, chardev_readable, c) == 0)
		c->in_registered = true;
}

/* vCPU threads cannot touch the loop; they post to this eventfd and the
 * loop thread hands over what is pending and re-arms reading. */
static void chardev_resume_event(void *opaque, uint32_t events)
{
	struct chardev *c = opaque;
	(void)events;
	uint64_t v;
	ssize_t r = read(c->resume_efd, &v, sizeof(v));
	(void)r;
	if (c->input)
		chardev_deliver(c);
}

int chardev_attach(struct chardev *c, struct loop *loop, chardev_input_fn input,
		   chardev_quit_fn quit, void *opaque)
{
	c->loop = loop;
	c->input = input;
	c->quit = quit;
	c->opaque = opaque;
	c->pending_len = c->pending_off = 0;
	c->input_paused = false;
	int ret = loop_add(loop, c->resume_efd, EPOLLIN, chardev_resume_event, c);
	if (!ret && c->listen_fd >= 0)
		ret = loop_add(loop, c->listen_fd, EPOLLIN, chardev_accept, c);
	if (!ret && c->in_fd >= 0 && c->kind != CHARDEV_FILE) {
		ret = loop_add(loop, c->in_fd, EPOLLIN, chardev_readable, c);
		/* A regular file or /dev/null on stdin cannot be polled: no input. */
		if (ret == -EPERM)
			ret = 0;
		else if (!ret)
			c->in_registered = true;
	}
	if (ret)
		log_err("console '%s': cannot watch input: %s", c->name, strerror(-ret));
	return ret;
}

void chardev_detach(struct chardev *c)
{
	if (!c->loop)
		return;
	if (c->in_registered)
		loop_remove(c->loop, c->in_fd);
	if (c->listen_fd >= 0)
		loop_remove(c->loop, c->listen_fd);
	loop_remove(c->loop, c->resume_efd);
	c->in_registered = false;
	c->input = NULL;
	c->loop = NULL;
}

void chardev_write(struct chardev *c, const void *buf, size_t len)
{
	pthread_mutex_lock(&c->lock);
	const uint8_t *p = buf;
	while (c->out_fd >= 0 && len > 0) {
		ssize_t n = write(c->out_fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			/* EAGAIN (nobody reading a pty/socket) or a broken pipe:
			 * a console must never stall the guest, so drop. */
			break;
		}
		p += n;
		len -= (size_t)n;
	}
	pthread_mutex_unlock(&c->lock);
}

void chardev_resume_input(struct chardev *c)
{
	uint64_t one = 1;
	ssize_t w = write(c->resume_efd, &one, sizeof(one));
	(void)w;
}
