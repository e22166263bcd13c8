/* `kestrel img`: what the verbs share. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/image_ext.h"
#include "img/img.h"

/* ---- messages ------------------------------------------------------- */

void img_err(const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fputs("kestrel img: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* The library says "image 'PATH': why"; say "PATH: why", qemu-img style. */
static void unquote_lib(const char *in, char *out, size_t len)
{
	size_t n = 0;
	while (*in && n + 1 < len) {
		const char *q;
		if (!strncmp(in, "image '", 7) && (q = strstr(in + 7, "': "))) {
			size_t pl = (size_t)(q - (in + 7));
			if (pl > len - n - 1)
				pl = len - n - 1;
			memcpy(out + n, in + 7, pl);
			n += pl;
			in = q + 1;
			continue;
		}
		out[n++] = *in++;
	}
	out[n] = '\0';
}

void img_err_lib(const char *msg, const char *tmp, const char *file, const char *what, int r)
{
	if (!msg || !msg[0]) {
		img_err("%s: %s: %s", file, what, strerror(r < 0 ? -r : r));
		return;
	}
	char buf[2 * PATH_MAX + 512], clean[2 * PATH_MAX + 512];
	size_t n = 0, tl = tmp ? strlen(tmp) : 0;
	unquote_lib(msg, clean, sizeof(clean));
	for (const char *p = clean; *p && n + 1 < sizeof(buf);) {
		if (tl && !strncmp(p, tmp, tl)) {
			n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s", file);
			if (n >= sizeof(buf))
				n = sizeof(buf) - 1;
			p += tl;
		} else {
			buf[n++] = *p++;
		}
	}
	buf[n] = '\0';
	/* "FILE: cause": name the file first unless the message does. */
	size_t fl = strlen(file);
	if (!strncmp(buf, file, fl) && buf[fl] == ':')
		img_err("%s", buf);
	else
		img_err("%s: %s", file, buf);
}

int img_bad_option(const char *verb, int c, char **argv)
{
	const char *arg = argv[optind - 1];
	if (c == ':') {
		if (optopt)
			img_err("%s: option -%c needs a value (see kestrel img %s --help)", verb, optopt, verb);
		else
			img_err("%s: option %s needs a value (see kestrel img %s --help)", verb, arg, verb);
	} else if (optopt) {
		img_err("%s: unknown option -%c (see kestrel img %s --help)", verb, optopt, verb);
	} else {
		img_err("%s: unknown option '%s' (see kestrel img %s --help)", verb, arg, verb);
	}
	return IMG_EXIT_ERR;
}

int img_usage_error(const char *verb, const char *what)
{
	img_err("%s: %s (see kestrel img %s --help)", verb, what, verb);
	return IMG_EXIT_ERR;
}

/* ---- sizes ---------------------------------------------------------- */

int img_parse_size(const char *text, uint64_t *out)
{
	const char *p = text;
	uint64_t ip = 0;
	uint64_t frac_num = 0, frac_den = 1;
	bool digits = false;

	if (!p || !*p)
		return -1;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		p += 2;
		for (; *p; p++) {
			int d;
			if (*p >= '0' && *p <= '9')
				d = *p - '0';
			else if (*p >= 'a' && *p <= 'f')
				d = *p - 'a' + 10;
			else if (*p >= 'A' && *p <= 'F')
				d = *p - 'A' + 10;
			else
				break;
			if (ip > (UINT64_MAX >> 4))
				return -1;
			ip = ip << 4 | (uint64_t)d;
			digits = true;
		}
	} else {
		for (; *p >= '0' && *p <= '9'; p++) {
			if (ip > (UINT64_MAX - 9) / 10)
				return -1;
			ip = ip * 10 + (uint64_t)(*p - '0');
			digits = true;
		}
		if (*p == '.') {
			p++;
			for (; *p >= '0' && *p <= '9'; p++) {
				if (frac_den < 1000000000000000000ull) {
					frac_num = frac_num * 10 + (uint64_t)(*p - '0');
					frac_den *= 10;
				}
				digits = true;
			}
		}
	}
	if (!digits)
		return -1;
	unsigned shift;
	switch (*p) {
	case '\0': shift = 0; break;
	case 'b': case 'B': shift = 0; p++; break;
	case 'k': case 'K': shift = 10; p++; break;
	case 'm': case 'M': shift = 20; p++; break;
	case 'g': case 'G': shift = 30; p++; break;
	case 't': case 'T': shift = 40; p++; break;
	case 'p': case 'P': shift = 50; p++; break;
	case 'e': case 'E': shift = 60; p++; break;
	default: return -1;
	}
	if (*p)
		return -1;
	if (frac_num && shift == 0)
		return -1;          /* fractional bytes */
	if (shift && ip > (UINT64_MAX >> shift))
		return -1;
	uint64_t v = ip << shift;
	if (frac_num) {
		/* frac_num / frac_den * 2^shift, without floating point rounding
		 * surprises for the common cases (1.5G). */
		unsigned __int128 f = ((unsigned __int128)frac_num << shift) / frac_den;
		if (v + (uint64_t)f < v)
			return -1;
		v += (uint64_t)f;
	}
	*out = v;
	return 0;
}

void img_bad_size(const char *text)
{
	img_err("invalid size '%s' (a number with an optional suffix k, M, G, T, P or E)", text);
}

void img_size_str(uint64_t v, char *buf, size_t len)
{
	static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
	/* qemu's size_to_str: switch to the next unit from 1000 on. */
	double x = (double)v / (1000.0 / 1024.0);
	int e = 0;
	while (x >= 1.0) {
		x /= 2;
		e++;
	}
	int i = (e - 1) / 10;
	if (i < 0)
		i = 0;
	if (i > 6)
		i = 6;
	double div = (double)(1ull << (i * 10));
	snprintf(buf, len, "%0.3g %sB", (double)v / div, suffixes[i]);
}

/* ---- output ----------------------------------------------------------*/

int img_parse_output(const char *s, enum img_output *out)
{
	if (!strcmp(s, "human")) {
		*out = IMG_OUT_HUMAN;
	} else if (!strcmp(s, "json")) {
		*out = IMG_OUT_JSON;
	} else {
		img_err("--output '%s' is not an output format (accepted: human, json)", s);
		return -1;
	}
	return 0;
}

void img_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"': fputs("\\\"", f); break;
		case '\\': fputs("\\\\", f); break;
		case '\n': fputs("\\n", f); break;
		case '\r': fputs("\\r", f); break;
		case '\t': fputs("\\t", f); break;
		case '\b': fputs("\\b", f); break;
		case '\f': fputs("\\f", f); break;
		default:
			if (*p < 0x20)
				fprintf(f, "\\u%04x", *p);
			else
				fputc(*p, f);
		}
	}
	fputc('"', f);
}

/* ---- formats and -o options ------------------------------------------ */

int img_check_format(const char *fmt)
{
	if (!strcmp(fmt, "raw") || !strcmp(fmt, "qcow2"))
		return 0;
	img_err("unknown format '%s' (accepted: raw, qcow2)", fmt);
	return -1;
}

static int opts_set(struct img_optlist *l, char *key, char *val)
{
	for (size_t i = 0; i < l->n; i++) {
		if (!strcmp(l->v[i].key, key)) {
			free(l->v[i].key);
			free(l->v[i].val);
			l->v[i].key = key;
			l->v[i].val = val;
			return 0;
		}
	}
	struct img_kv *nv = realloc(l->v, (l->n + 1) * sizeof(*nv));
	if (!nv) {
		free(key);
		free(val);
		img_err("out of memory");
		return -1;
	}
	l->v = nv;
	l->v[l->n].key = key;
	l->v[l->n].val = val;
	l->n++;
	return 0;
}

int img_opts_add(struct img_optlist *l, const char *text)
{
	const char *p = text;
	while (*p) {
		size_t klen = strcspn(p, "=,");
		if (klen == 0) {
			img_err("-o '%s': empty option name", text);
			return -1;
		}
		char *key = strndup(p, klen);
		char *val;
		p += klen;
		if (*p == '=') {
			p++;
			size_t cap = strlen(p) + 1, n = 0;
			val = malloc(cap);
			if (!val || !key) {
				free(key);
				free(val);
				img_err("out of memory");
				return -1;
			}
			while (*p) {
				if (*p == ',') {
					if (p[1] == ',') {
						val[n++] = ',';
						p += 2;
						continue;
					}
					break;
				}
				val[n++] = *p++;
			}
			val[n] = '\0';
		} else {
			val = strdup("on");
		}
		if (!key || !val) {
			free(key);
			free(val);
			img_err("out of memory");
			return -1;
		}
		if (*p == ',')
			p++;
		if (!strcmp(key, "help") || !strcmp(key, "?")) {
			l->help = true;
			free(key);
			free(val);
			continue;
		}
		if (opts_set(l, key, val))
			return -1;
	}
	return 0;
}

const char *img_opts_get(const struct img_optlist *l, const char *key)
{
	for (size_t i = 0; i < l->n; i++)
		if (!strcmp(l->v[i].key, key))
			return l->v[i].val;
	return NULL;
}

void img_opts_free(struct img_optlist *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].key);
		free(l->v[i].val);
	}
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

struct spec_key {
	const char *name;
	const char *type;
	const char *help;
	bool qcow2, raw;
};

static const struct spec_key spec_keys[] = {
	{ "backing_file", "str", "file name of a base image", true, false },
	{ "backing_fmt", "str", "format of the base image (raw, qcow2)", true, false },
	{ "cluster_size", "size", "qcow2 cluster size (power of two, 512 to 2M; default 64k)", true, false },
	{ "compat", "str", "compatibility level (0.10 or v2; 1.1 or v3, the default)", true, false },
	{ "compression_type", "str", "compression method for compressed clusters (zlib, zstd)", true, false },
	{ "extended_l2", "bool (on/off)", "extended L2 tables (subclusters)", true, false },
	{ "lazy_refcounts", "bool (on/off)", "postpone refcount updates", true, false },
	{ "preallocation", "str", "preallocation mode (qcow2: off, metadata, falloc, full; raw: off, falloc, full)", true, true },
	{ "refcount_bits", "num", "width of a reference count entry in bits (1 to 64, power of two)", true, false },
	{ "size", "size", "virtual disk size", true, true },
};

void img_spec_help(FILE *f, const char *fmt)
{
	bool q = !strcmp(fmt, "qcow2");
	fprintf(f, "Supported %s options:\n", fmt);
	for (size_t i = 0; i < sizeof(spec_keys) / sizeof(spec_keys[0]); i++) {
		const struct spec_key *k = &spec_keys[i];
		if (q ? !k->qcow2 : !k->raw)
			continue;
		char left[64];
		snprintf(left, sizeof(left), "%s=<%s>", k->name, k->type);
		fprintf(f, "  %-22s - %s\n", left, k->help);
	}
}

static void spec_accepted(const char *fmt, char *buf, size_t len)
{
	bool q = !strcmp(fmt, "qcow2");
	size_t n = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(spec_keys) / sizeof(spec_keys[0]); i++) {
		const struct spec_key *k = &spec_keys[i];
		if (q ? !k->qcow2 : !k->raw)
			continue;
		n += (size_t)snprintf(buf + n, n < len ? len - n : 0, "%s%s", n ? ", " : "", k->name);
	}
}

static int parse_bool(const char *key, const char *v, bool *out)
{
	if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true")) {
		*out = true;
	} else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false")) {
		*out = false;
	} else {
		img_err("-o %s='%s': expected on or off", key, v);
		return -1;
	}
	return 0;
}

int img_spec_from_opts(struct img_spec *s, const char *fmt, const struct img_optlist *l)
{
	bool q = !strcmp(fmt, "qcow2");
	memset(s, 0, sizeof(*s));
	s->fmt = fmt;
	for (size_t i = 0; i < l->n; i++) {
		const char *key = l->v[i].key;
		bool known = false;
		for (size_t j = 0; j < sizeof(spec_keys) / sizeof(spec_keys[0]); j++)
			if (!strcmp(spec_keys[j].name, key) && (q ? spec_keys[j].qcow2 : spec_keys[j].raw))
				known = true;
		if (!known) {
			char acc[256];
			spec_accepted(fmt, acc, sizeof(acc));
			img_err("-o: unknown option '%s' for format %s (accepted: %s)", key, fmt, acc);
			return -1;
		}
	}

	const char *v;
	if ((v = img_opts_get(l, "size"))) {
		if (img_parse_size(v, &s->q.size)) {
			img_bad_size(v);
			return -1;
		}
		s->size_set = true;
	}
	if ((v = img_opts_get(l, "preallocation"))) {
		bool ok = !strcmp(v, "off") || !strcmp(v, "falloc") || !strcmp(v, "full") ||
			  (q && !strcmp(v, "metadata"));
		if (!ok) {
			img_err("-o preallocation='%s' is not a preallocation mode (accepted: %s)", v,
				q ? "off, metadata, falloc, full" : "off, falloc, full");
			return -1;
		}
		s->prealloc = v;
		s->q.preallocation = v;
	}
	if (!q)
		return 0;

	int version = 3;
	if ((v = img_opts_get(l, "compat"))) {
		if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
			s->q.compat = "0.10";
			version = 2;
		} else if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
			s->q.compat = "1.1";
		} else {
			img_err("-o compat='%s' is not a compatibility level (accepted: 0.10, v2, 1.1, v3)", v);
			return -1;
		}
	}
	if ((v = img_opts_get(l, "cluster_size"))) {
		uint64_t cs;
		if (img_parse_size(v, &cs) || cs < 512 || cs > (2u << 20) || (cs & (cs - 1))) {
			img_err("-o cluster_size='%s': must be a power of two between 512 and 2M", v);
			return -1;
		}
		s->q.cluster_size = (uint32_t)cs;
	}
	if ((v = img_opts_get(l, "backing_file")))
		s->q.backing_file = v;
	if ((v = img_opts_get(l, "backing_fmt"))) {
		if (strcmp(v, "raw") && strcmp(v, "qcow2")) {
			img_err("-o backing_fmt='%s' is not a format (accepted: raw, qcow2)", v);
			return -1;
		}
		s->q.backing_fmt = v;
	}
	if ((v = img_opts_get(l, "compression_type"))) {
		if (strcmp(v, "zlib") && strcmp(v, "zstd")) {
			img_err("-o compression_type='%s' is not a compression type (accepted: zlib, zstd)", v);
			return -1;
		}
		if (!strcmp(v, "zstd") && version == 2) {
			img_err("-o compression_type=zstd needs compat=1.1 (v3)");
			return -1;
		}
		s->q.compression_type = v;
	}
	if ((v = img_opts_get(l, "lazy_refcounts"))) {
		if (parse_bool("lazy_refcounts", v, &s->q.lazy_refcounts))
			return -1;
		if (s->q.lazy_refcounts && version == 2) {
			img_err("-o lazy_refcounts=on needs compat=1.1 (v3)");
			return -1;
		}
	}
	if ((v = img_opts_get(l, "refcount_bits"))) {
		char *end;
		errno = 0;
		unsigned long b = strtoul(v, &end, 10);
		if (errno || *end || end == v || b < 1 || b > 64 || (b & (b - 1))) {
			img_err("-o refcount_bits='%s': must be a power of two from 1 to 64", v);
			return -1;
		}
		if (version == 2 && b != 16) {
			img_err("-o refcount_bits=%lu needs compat=1.1 (v3); v2 images use 16", b);
			return -1;
		}
		s->q.refcount_bits = (unsigned)b;
	}
	if ((v = img_opts_get(l, "extended_l2"))) {
		if (parse_bool("extended_l2", v, &s->q.extended_l2))
			return -1;
		if (s->q.extended_l2 && version == 2) {
			img_err("-o extended_l2=on needs compat=1.1 (v3)");
			return -1;
		}
		uint32_t cs = s->q.cluster_size ? s->q.cluster_size : 65536;
		if (s->q.extended_l2 && cs < 16384) {
			img_err("-o extended_l2=on needs cluster_size of at least 16k");
			return -1;
		}
	}
	return 0;
}

int img_spec_create(const char *path, const struct img_spec *s, char *err, size_t errlen)
{
	if (!strcmp(s->fmt, "raw"))
		return image_create_raw(path, s->q.size, s->prealloc, err, errlen);
	return qcow2_create(path, &s->q, err, errlen);
}

void img_spec_print(FILE *f, const char *path, const struct img_spec *s)
{
	fprintf(f, "Formatting '%s', fmt=%s", path, s->fmt);
	if (!strcmp(s->fmt, "qcow2")) {
		fprintf(f, " cluster_size=%u extended_l2=%s compression_type=%s",
			s->q.cluster_size ? s->q.cluster_size : 65536, s->q.extended_l2 ? "on" : "off",
			s->q.compression_type ? s->q.compression_type : "zlib");
		fprintf(f, " size=%llu", (unsigned long long)s->q.size);
		if (s->q.backing_file)
			fprintf(f, " backing_file=%s", s->q.backing_file);
		if (s->q.backing_fmt)
			fprintf(f, " backing_fmt=%s", s->q.backing_fmt);
		if (s->q.compat)
			fprintf(f, " compat=%s", s->q.compat);
		if (s->q.preallocation)
			fprintf(f, " preallocation=%s", s->q.preallocation);
		fprintf(f, " lazy_refcounts=%s refcount_bits=%u", s->q.lazy_refcounts ? "on" : "off",
			s->q.refcount_bits ? s->q.refcount_bits : 16);
	} else {
		fprintf(f, " size=%llu", (unsigned long long)s->q.size);
		if (s->prealloc)
			fprintf(f, " preallocation=%s", s->prealloc);
	}
	fputc('\n', f);
}

/* ---- opening ----------------------------------------------------------*/

struct image *img_open(const char *path, const char *fmt, unsigned flags)
{
	struct image_open_opts o = {
		.path = path,
		.format = fmt,
		.readonly = !(flags & IMG_OPEN_RW),
		.no_backing = !!(flags & IMG_OPEN_NO_BACKING),
		.allow_probed_backing = true,
		.direct = !!(flags & IMG_OPEN_DIRECT),
		.writethrough = !!(flags & IMG_OPEN_WRITETHROUGH),
	};
	char err[PATH_MAX + 256];
	err[0] = '\0';
	struct image *img;
	if (flags & IMG_OPEN_CHECK)
		img = image_open_ext(&o, IMAGE_OPEN_CHECK, err, sizeof(err));
	else
		img = image_open(&o, err, sizeof(err));
	if (!img)
		img_err_lib(err, NULL, path, "cannot open the image", -EIO);
	return img;
}

int img_parse_cache(const char *s, unsigned *flags)
{
	*flags &= ~(unsigned)(IMG_OPEN_DIRECT | IMG_OPEN_WRITETHROUGH);
	if (!strcmp(s, "none"))
		*flags |= IMG_OPEN_DIRECT;
	else if (!strcmp(s, "writethrough"))
		*flags |= IMG_OPEN_WRITETHROUGH;
	else if (!strcmp(s, "directsync"))
		*flags |= IMG_OPEN_DIRECT | IMG_OPEN_WRITETHROUGH;
	else if (strcmp(s, "writeback") && strcmp(s, "unsafe")) {
		img_err("cache mode '%s' is not one of none, writeback, writethrough, directsync, unsafe", s);
		return -1;
	}
	return 0;
}

void img_backing_path(const char *image_path, const char *name, char *out, size_t outlen)
{
	const char *slash = strrchr(image_path, '/');
	if (name[0] == '/' || !slash) {
		snprintf(out, outlen, "%s", name);
		return;
	}
	snprintf(out, outlen, "%.*s/%s", (int)(slash - image_path), image_path, name);
}

void img_layer_name(struct image *top, const char *top_name, struct image *layer, char *out, size_t len)
{
	char cur[PATH_MAX];
	snprintf(cur, sizeof(cur), "%s", top_name);
	for (struct image *l = top; l && l != layer; l = image_backing(l)) {
		struct image_info info;
		if (image_get_info(l, &info) < 0 || !info.backing_file[0]) {
			snprintf(out, len, "%s", image_path(layer));
			return;
		}
		char next[PATH_MAX];
		img_backing_path(cur, info.backing_file, next, sizeof(next));
		memcpy(cur, next, sizeof(cur));
	}
	snprintf(out, len, "%s", cur);
}

const char *img_probe_format(const char *path)
{
	unsigned char buf[512];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	ssize_t n = pread(fd, buf, sizeof(buf), 0);
	int e = errno;
	close(fd);
	if (n < 0) {
		errno = e;
		return NULL;
	}
	return qcow2_probe(buf, (size_t)n) ? "qcow2" : "raw";
}

int img_empty_image(const char *file, const char *fmt)
{
	struct image *img = img_open(file, fmt, IMG_OPEN_RW | IMG_OPEN_NO_BACKING);
	if (!img)
		return -1;
	struct image_info info;
	memset(&info, 0, sizeof(info));
	int r = image_get_info(img, &info);
	if (r < 0) {
		image_close(img);
		img_err("%s: cannot read the image's properties: %s", file, strerror(-r));
		return -1;
	}
	if (info.format == IMAGE_QCOW2 && info.nr_snapshots == 0) {
		/* Nothing to keep but the header's settings: write a fresh image
		 * with them and put it in place (what qemu's make_empty does). */
		struct qcow2_create_opts o = {
			.size = info.virtual_size,
			.cluster_size = info.cluster_size,
			.compat = info.qcow2_version == 2 ? "0.10" : "1.1",
			.backing_file = info.backing_file[0] ? info.backing_file : NULL,
			.backing_fmt = info.backing_file[0] && info.backing_format[0] ? info.backing_format : NULL,
			.compression_type = info.compression_type,
			.lazy_refcounts = info.lazy_refcounts,
			.refcount_bits = info.refcount_bits,
			.extended_l2 = info.extended_l2,
		};
		image_close(img);
		char tmp[PATH_MAX], err[PATH_MAX + 256] = "";
		if (img_temp_begin(file, tmp, sizeof(tmp)))
			return -1;
		r = qcow2_create(tmp, &o, err, sizeof(err));
		if (r < 0) {
			img_temp_done(tmp, file, false);
			img_err_lib(err, tmp, file, "cannot empty the image", r);
			return -1;
		}
		return img_temp_done(tmp, file, true);
	}
	/* The library's discard of a backed range records zeroes (as qemu's
	 * does), which would hide the backing file: keep the data instead. It
	 * reads the same as the backing file now, so the image stays valid. */
	image_close(img);
	fflush(stdout);
	fprintf(stderr, "kestrel img: warning: %s: %s; its clusters were kept (they now match the backing file)\n",
		file, info.format == IMAGE_QCOW2 ? "it has internal snapshots" : "it cannot be emptied");
	return 0;
}

/* ---- block status through a chain ------------------------------------- */

int img_chain_status(struct image *img, struct image *base, uint64_t off, uint64_t len,
		     struct img_status *st)
{
	struct image *layer = img;
	int depth = 0;
	memset(st, 0, sizeof(*st));
	st->host_off = UINT64_MAX;
	for (;;) {
		uint64_t pnum = 0, host = UINT64_MAX;
		unsigned flags = 0;
		int r = image_block_status(layer, off, len, &pnum, &flags, &host);
		if (r < 0)
			return r;
		if (pnum == 0 || pnum > len)
			pnum = len;
		len = pnum;
		if (image_format(layer) == IMAGE_RAW)
			flags |= IMAGE_BS_ALLOCATED;
		st->len = len;
		st->depth = depth;
		st->layer = layer;
		if (flags & IMAGE_BS_ALLOCATED) {
			st->flags = flags;
			st->present = true;
			st->host_off = host;
			return 0;
		}
		struct image *next = image_backing(layer);
		if (!next || next == base || off >= image_size(next)) {
			st->flags = IMAGE_BS_ZERO;
			return 0;
		}
		if (len > image_size(next) - off)
			len = image_size(next) - off;
		layer = next;
		depth++;
	}
}

/* ---- buffers, progress, temp files ------------------------------------ */

void *img_alloc(size_t len)
{
	void *p = NULL;
	if (posix_memalign(&p, 4096, len ? len : 1)) {
		img_err("out of memory (%zu bytes)", len);
		return NULL;
	}
	return p;
}

bool img_is_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	size_t head = len < 16 ? len : 16;
	for (size_t i = 0; i < head; i++)
		if (p[i])
			return false;
	return len <= 16 || !memcmp(p, p + 16, len - 16);
}

void img_progress_init(struct img_progress *p, bool want)
{
	p->on = want && isatty(STDOUT_FILENO);
	p->shown = -1.0;
	if (p->on)
		img_progress_update(p, 0, 1);
}

void img_progress_update(struct img_progress *p, uint64_t done, uint64_t total)
{
	if (!p->on)
		return;
	double pct = total ? (double)done * 100.0 / (double)total : 100.0;
	if (pct > 100.0)
		pct = 100.0;
	if (p->shown >= 0 && pct - p->shown < 1.0 && pct < 100.0)
		return;
	if (p->shown >= 100.0)
		return;
	p->shown = pct;
	printf("    (%3.2f/100%%)\r", pct);
	fflush(stdout);
}

void img_progress_end(struct img_progress *p)
{
	if (!p->on)
		return;
	if (p->shown < 100.0) {
		p->shown = -1.0;
		img_progress_update(p, 1, 1);
	}
	printf("\n");
	fflush(stdout);
	p->on = false;
}

static char temp_path[PATH_MAX];
static volatile sig_atomic_t temp_armed;
static struct sigaction temp_old[3];
static const int temp_sigs[3] = { SIGINT, SIGTERM, SIGHUP };

static void temp_signal(int sig)
{
	if (temp_armed)
		unlink(temp_path);
	signal(sig, SIG_DFL);
	raise(sig);
}

int img_temp_begin(const char *path, char *tmp, size_t len)
{
	struct stat st;
	bool exists = lstat(path, &st) == 0;
	if (exists && !S_ISREG(st.st_mode)) {
		/* A device or a link: write in place, as qemu-img does. */
		snprintf(tmp, len, "%s", path);
		return 0;
	}
	if (exists) {
		/* Do not replace an image a running VM (or another kestrel img)
		 * has open read-write: it holds an OFD write lock on it. */
		int lfd = open(path, O_RDONLY | O_CLOEXEC);
		if (lfd >= 0) {
			struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
			bool locked = fcntl(lfd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
			close(lfd);
			if (locked) {
				img_err("%s: in use by another process (locked)", path);
				return -1;
			}
		}
	}
	const char *slash = strrchr(path, '/');
	int n;
	if (slash)
		n = snprintf(tmp, len, "%.*s/.%s.kestrel-XXXXXX", (int)(slash - path), path, slash + 1);
	else
		n = snprintf(tmp, len, ".%s.kestrel-XXXXXX", path);
	if (n < 0 || (size_t)n >= len || (size_t)n >= sizeof(temp_path)) {
		img_err("%s: file name too long", path);
		return -1;
	}
	int fd = mkstemp(tmp);
	if (fd < 0) {
		img_err("%s: cannot create a file in its directory: %s", path, strerror(errno));
		return -1;
	}
	mode_t mode;
	if (exists) {
		mode = st.st_mode & 07777;
	} else {
		mode_t um = umask(0);
		umask(um);
		mode = 0666 & ~um;
	}
	if (fchmod(fd, mode) < 0) {
		/* harmless: the image keeps mode 0600 */
	}
	close(fd);
	snprintf(temp_path, sizeof(temp_path), "%s", tmp);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = temp_signal;
	sigemptyset(&sa.sa_mask);
	for (int i = 0; i < 3; i++)
		sigaction(temp_sigs[i], &sa, &temp_old[i]);
	temp_armed = 1;
	return 0;
}

int img_temp_done(const char *tmp, const char *path, bool ok)
{
	if (!strcmp(tmp, path))
		return ok ? 0 : -1;
	int r = 0;
	if (ok && rename(tmp, path) < 0) {
		img_err("%s: cannot rename %s to it: %s", path, tmp, strerror(errno));
		ok = false;
		r = -1;
	}
	if (!ok) {
		unlink(tmp);
		r = -1;
	}
	temp_armed = 0;
	for (int i = 0; i < 3; i++)
		sigaction(temp_sigs[i], &temp_old[i], NULL);
	return r;
}
