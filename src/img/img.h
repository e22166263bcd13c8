/* `kestrel img`: qemu-img's verbs over the image library (block/image.h,
 * block/image_ext.h, block/qcow2.h). One file per verb; this header holds
 * what they share (common.c). */
#ifndef KESTREL_IMG_H
#define KESTREL_IMG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "block/image.h"
#include "block/qcow2.h"

/* qemu-img's exit status for errors (bad arguments, unreadable files). */
#define IMG_EXIT_ERR 1

/* The verbs. argv[0] is the verb's name. */
int img_create(int argc, char **argv);
int img_info(int argc, char **argv);
int img_check(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_snapshot(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_map(int argc, char **argv);
int img_measure(int argc, char **argv);

/* The snapshot table of info and snapshot -l (info.c): header and lines. */
void img_snapshot_table(FILE *f, const struct qcow2_snapshot *s, unsigned n);

/* Prints `kestrel img VERB --help` (img.c). */
void img_help(FILE *f, const char *verb);

/* ---- messages ------------------------------------------------------- */

/* One line on stderr: "kestrel img: ...". */
void img_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reports a library error message `msg` (which may name `tmp`, a
 * temporary the image was written under, shown as `file`); when msg is
 * empty, "FILE: what: strerror(-r)". */
void img_err_lib(const char *msg, const char *tmp, const char *file, const char *what, int r);
/* Reports a getopt_long() failure for `verb` (c is what getopt returned)
 * and returns IMG_EXIT_ERR. */
int img_bad_option(const char *verb, int c, char **argv);
/* Reports a wrong number of file arguments. */
int img_usage_error(const char *verb, const char *what);

/* ---- sizes ---------------------------------------------------------- */

/* qemu-img's sizes: a decimal number (fractions allowed: 1.5G) or 0x hex,
 * with an optional suffix B, k/K, M, G, T, P, E (binary units); a bare
 * number is bytes. Returns 0 or -1. */
int img_parse_size(const char *text, uint64_t *out);
/* The error qemu-img gives for a bad image size, naming `text`. */
void img_bad_size(const char *text);
/* "1 GiB", "196 KiB", "1.5 KiB": qemu's size_to_str (three significant digits). */
void img_size_str(uint64_t v, char *buf, size_t len);

/* ---- output ----------------------------------------------------------*/

enum img_output { IMG_OUT_HUMAN, IMG_OUT_JSON };
/* Parses --output's value; reports the error itself. Returns 0 or -1. */
int img_parse_output(const char *s, enum img_output *out);
/* A JSON string literal. */
void img_json_str(FILE *f, const char *s);

/* ---- formats and -o options ------------------------------------------ */

/* Checks a -f/-O/-F value: "raw" or "qcow2". Reports and returns -1 otherwise. */
int img_check_format(const char *fmt);

struct img_kv {
	char *key;
	char *val;
};

struct img_optlist {
	struct img_kv *v;
	size_t n;
	bool help;              /* "-o help" or "-o ?" */
};

/* Appends "key=val,key2=val2" (",," is a literal comma; a bare key means
 * "on"). Later values override earlier ones. Returns 0 or -1 (reported). */
int img_opts_add(struct img_optlist *l, const char *text);
const char *img_opts_get(const struct img_optlist *l, const char *key);
void img_opts_free(struct img_optlist *l);

/* What a new image looks like: the format plus its creation options.
 * Strings point into the option list or argv. */
struct img_spec {
	const char *fmt;        /* "raw" or "qcow2" */
	bool size_set;
	struct qcow2_create_opts q; /* q.size is the size for raw too */
	const char *prealloc;   /* raw: off/falloc/full */
};

/* Fills `s` for format `fmt` from the -o list, checking every key and
 * value (one line naming the bad one). Returns 0 or -1. */
int img_spec_from_opts(struct img_spec *s, const char *fmt, const struct img_optlist *l);
/* Lists the -o keys of `fmt` (for -o help). */
void img_spec_help(FILE *f, const char *fmt);
/* Creates the image at `path` (truncating it). */
int img_spec_create(const char *path, const struct img_spec *s, char *err, size_t errlen);
/* The "Formatting 'FILE', fmt=... size=..." line qemu-img create prints. */
void img_spec_print(FILE *f, const char *path, const struct img_spec *s);

/* ---- opening ----------------------------------------------------------*/

#define IMG_OPEN_RW          0x01
#define IMG_OPEN_NO_BACKING  0x02
#define IMG_OPEN_DIRECT      0x04
#define IMG_OPEN_WRITETHROUGH 0x08
#define IMG_OPEN_CHECK       0x10  /* image_open_ext(IMAGE_OPEN_CHECK) */

/* Opens `path` (fmt NULL = probe; probed backing files are trusted since
 * the user named the image). Reports failures. */
struct image *img_open(const char *path, const char *fmt, unsigned flags);
/* Parses a -t/-T cache mode into IMG_OPEN_* flags. Reports and returns -1 on error. */
int img_parse_cache(const char *s, unsigned *flags);

/* `name` as seen from the directory of `image_path` (qemu's rule for
 * backing file names): absolute names are kept, relative ones are joined
 * to dirname(image_path). */
void img_backing_path(const char *image_path, const char *name, char *out, size_t outlen);
/* The name of `layer` (in top's backing chain) as qemu-img shows it: each
 * backing file name joined to the directory of the image naming it,
 * starting from `top_name`. */
void img_layer_name(struct image *top, const char *top_name, struct image *layer, char *out, size_t len);
/* Probes the format of a file: "qcow2" or "raw"; NULL when unreadable (errno set). */
const char *img_probe_format(const char *path);

/* Makes `file` (an overlay) fully unallocated, so it reads as its backing
 * file, as qemu-img commit does. Reports failures; returns 0 or -1. */
int img_empty_image(const char *file, const char *fmt);

/* ---- block status through a chain ------------------------------------- */

struct img_status {
	uint64_t len;           /* bytes sharing this status */
	unsigned flags;         /* IMAGE_BS_* of the layer that defines the data */
	int depth;              /* 0 = top; the layer that defines it, or the last one looked at */
	bool present;           /* allocated in some layer */
	uint64_t host_off;      /* in that layer's file, or UINT64_MAX */
	struct image *layer;    /* that layer */
};

/* Status of [off, off+len) through img's backing chain, down to (not
 * including) `base` (NULL = the whole chain). Unallocated everywhere
 * reads as zeroes. Returns 0 or -errno. */
int img_chain_status(struct image *img, struct image *base, uint64_t off, uint64_t len,
		     struct img_status *st);

/* ---- buffers, progress, temp files ------------------------------------ */

void *img_alloc(size_t len);     /* 4 KiB aligned (O_DIRECT); reports failure */
bool img_is_zero(const void *buf, size_t len);

struct img_progress {
	bool on;
	double shown;
};

/* Enabled when `want` (-p) and stdout is a terminal: "    (45.00/100%)\r". */
void img_progress_init(struct img_progress *p, bool want);
void img_progress_update(struct img_progress *p, uint64_t done, uint64_t total);
void img_progress_end(struct img_progress *p);

/* A temporary name next to `path` for an image being written, deleted on
 * SIGINT/SIGTERM/SIGHUP until img_temp_done(). Returns 0 or -1 (reported). */
int img_temp_begin(const char *path, char *tmp, size_t len);
/* Renames the temporary over `path` (ok) or deletes it (!ok). Returns 0 or -1. */
int img_temp_done(const char *tmp, const char *path, bool ok);

#endif
