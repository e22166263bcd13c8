/* `kestrel img convert`: copy one or more images (concatenated) into a
 * new image, keeping zero runs sparse, optionally compressed, optionally as
 * an overlay that holds only what differs from a backing file. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "block/image_ext.h"
#include "img/img.h"

#define CONVERT_CHUNK (2u << 20)

struct conv_src {
	struct image *img;
	const char *name;
	uint64_t start, size;
};

struct conv {
	struct conv_src *src;
	int nsrc;
	uint64_t total;
	struct image *dst;
	const char *dst_name;
	struct image *dst_backing;  /* -B: what the overlay must differ from */
	bool fresh;                 /* dst reads as zeroes where not written */
	bool compress;
	uint64_t sparse;            /* -S */
	uint32_t unit;              /* write granularity: the cluster (qcow2) */
	uint8_t *buf, *bbuf;
	struct img_progress prog;
};

static int conv_read(struct conv *cv, uint64_t off, uint8_t *buf, uint64_t len)
{
	for (int i = 0; i < cv->nsrc && len; i++) {
		struct conv_src *s = &cv->src[i];
		if (off >= s->start + s->size)
			continue;
		uint64_t n = s->start + s->size - off;
		if (n > len)
			n = len;
		int r = image_read(s->img, off - s->start, buf, n);
		if (r < 0) {
			img_err("%s: read error at offset %" PRIu64 ": %s", s->name, off - s->start, strerror(-r));
			return -1;
		}
		off += n;
		buf += n;
		len -= n;
	}
	if (len)
		memset(buf, 0, len);
	return 0;
}

/* How many bytes from `off` (at most len) certainly read as zeroes (0 when
 * off starts with data). */
static int conv_zero_extent(struct conv *cv, uint64_t off, uint64_t len, uint64_t *zlen)
{
	*zlen = 0;
	for (int i = 0; i < cv->nsrc && len; i++) {
		struct conv_src *s = &cv->src[i];
		if (off >= s->start + s->size)
			continue;
		uint64_t n = s->start + s->size - off;
		if (n > len)
			n = len;
		struct img_status st;
		int r = img_chain_status(s->img, NULL, off - s->start, n, &st);
		if (r < 0) {
			img_err("%s: cannot read the allocation status at offset %" PRIu64 ": %s", s->name,
				off - s->start, strerror(-r));
			return -1;
		}
		if (!(st.flags & IMAGE_BS_ZERO) || (st.flags & IMAGE_BS_DATA))
			return 0;
		*zlen += st.len;
		if (st.len < n)
			return 0;
		off += n;
		len -= n;
	}
	return 0;
}

static int dst_write(struct conv *cv, uint64_t off, const uint8_t *buf, uint64_t len)
{
	int r = 0;
	if (cv->compress) {
		for (uint64_t done = 0; done < len && r == 0; done += cv->unit) {
			uint64_t n = len - done < cv->unit ? len - done : cv->unit;
			if (img_is_zero(buf + done, n) && cv->fresh && !cv->dst_backing)
				continue;
			r = image_write_compressed(cv->dst, off + done, buf + done, n);
			if (r == -ENOTSUP || r == -EINVAL) {
				/* e.g. a cluster the format cannot compress: store it plainly */
				r = image_write(cv->dst, off + done, buf + done, n);
			}
			if (r < 0)
				off += done;
		}
	} else {
		r = image_write(cv->dst, off, buf, len);
	}
	if (r < 0) {
		img_err("%s: write error at offset %" PRIu64 ": %s", cv->dst_name, off, strerror(-r));
		return -1;
	}
	return 0;
}

static int dst_zero(struct conv *cv, uint64_t off, uint64_t len)
{
	/* With a backing file, the zeroes must be recorded (not unmapped). */
	int r = image_write_zeroes(cv->dst, off, len, !cv->dst_backing);
	if (r < 0) {
		img_err("%s: write error at offset %" PRIu64 ": %s", cv->dst_name, off, strerror(-r));
		return -1;
	}
	return 0;
}

/* A range the source reads as zeroes. */
static int conv_zero_range(struct conv *cv, uint64_t off, uint64_t len)
{
	if (!cv->dst_backing)
		return cv->fresh ? 0 : dst_zero(cv, off, len);
	/* Overlay: record zeroes only where the backing file has data. */
	uint64_t end = off + len;
	while (off < end) {
		uint64_t n = end - off;
		if (n > CONVERT_CHUNK)
			n = CONVERT_CHUNK;
		uint64_t bsize = image_size(cv->dst_backing);
		if (off >= bsize)
			return 0;
		if (n > bsize - off)
			n = bsize - off;
		struct img_status st;
		int r = img_chain_status(cv->dst_backing, NULL, off, n, &st);
		if (r < 0) {
			img_err("%s: cannot read the allocation status at offset %" PRIu64 ": %s",
				image_path(cv->dst_backing), off, strerror(-r));
			return -1;
		}
		n = st.len;
		if (!(st.flags & IMAGE_BS_ZERO) || (st.flags & IMAGE_BS_DATA)) {
			r = image_read(cv->dst_backing, off, cv->bbuf, n);
			if (r < 0) {
				img_err("%s: read error at offset %" PRIu64 ": %s", image_path(cv->dst_backing), off,
					strerror(-r));
				return -1;
			}
			for (uint64_t u = 0; u < n; u += cv->unit) {
				uint64_t un = n - u < cv->unit ? n - u : cv->unit;
				if (!img_is_zero(cv->bbuf + u, un) && dst_zero(cv, off + u, un))
					return -1;
			}
		}
		off += n;
	}
	return 0;
}

/* Writes buf = source [off, off+len), skipping what need not be written. */
static int conv_chunk(struct conv *cv, uint64_t off, const uint8_t *buf, uint64_t len)
{
	if (cv->dst_backing) {
		uint64_t bsize = image_size(cv->dst_backing);
		uint64_t blen = off < bsize ? bsize - off : 0;
		if (blen > len)
			blen = len;
		if (blen) {
			int r = image_read(cv->dst_backing, off, cv->bbuf, blen);
			if (r < 0) {
				img_err("%s: read error at offset %" PRIu64 ": %s", image_path(cv->dst_backing), off,
					strerror(-r));
				return -1;
			}
		}
		memset(cv->bbuf + blen, 0, len - blen);
		uint64_t u = 0;
		while (u < len) {
			/* a run of units that differ from the backing file, all data or all zero */
			uint64_t un = len - u < cv->unit ? len - u : cv->unit;
			if (!memcmp(buf + u, cv->bbuf + u, un)) {
				u += un;
				continue;
			}
			bool z = img_is_zero(buf + u, un);
			uint64_t s = u;
			u += un;
			while (u < len) {
				un = len - u < cv->unit ? len - u : cv->unit;
				if (!memcmp(buf + u, cv->bbuf + u, un) || img_is_zero(buf + u, un) != z)
					break;
				u += un;
			}
			if (z ? dst_zero(cv, off + s, u - s) : dst_write(cv, off + s, buf + s, u - s))
				return -1;
		}
		return 0;
	}

	uint64_t u = 0;
	while (u < len) {
		uint64_t un = len - u < cv->unit ? len - u : cv->unit;
		bool z = cv->sparse && img_is_zero(buf + u, un);
		uint64_t s = u;
		u += un;
		while (u < len) {
			un = len - u < cv->unit ? len - u : cv->unit;
			if ((cv->sparse && img_is_zero(buf + u, un)) != z)
				break;
			u += un;
		}
		if (z && u - s < cv->sparse && u < len && s > 0)
			z = false;          /* a short zero run inside data: write it */
		if (z) {
			if (!cv->fresh && dst_zero(cv, off + s, u - s))
				return -1;
		} else if (dst_write(cv, off + s, buf + s, u - s)) {
			return -1;
		}
	}
	return 0;
}

static int conv_run(struct conv *cv)
{
	uint64_t off = 0;
	img_progress_update(&cv->prog, 0, cv->total);
	while (off < cv->total) {
		uint64_t n = cv->total - off;
		if (n > CONVERT_CHUNK)
			n = CONVERT_CHUNK;
		if (cv->sparse) {
			uint64_t z;
			/* look further than one chunk: sparse images skip fast */
			if (conv_zero_extent(cv, off, cv->total - off, &z))
				return -1;
			if (off + z < cv->total)
				z -= z % cv->unit;
			if (z) {
				if (conv_zero_range(cv, off, z))
					return -1;
				off += z;
				img_progress_update(&cv->prog, off, cv->total);
				continue;
			}
		}
		if (conv_read(cv, off, cv->buf, n) || conv_chunk(cv, off, cv->buf, n))
			return -1;
		off += n;
		img_progress_update(&cv->prog, off, cv->total);
	}
	return 0;
}

int img_convert(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "force-share", no_argument, NULL, 'U' },
		{ "target-is-zero", no_argument, NULL, 'Z' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = NULL, *out_fmt = "raw", *backing = NULL, *backing_fmt = NULL;
	const char *sparse_arg = NULL;
	bool compress = false, quiet = false, progress = false, no_create = false, target_zero = false;
	/* qemu-img convert's default target cache mode is "unsafe": no
	 * fdatasync at the end. qcow2 metadata is written (and synced) by the
	 * flush either way. */
	bool dst_sync = false;
	unsigned src_flags = 0, dst_flags = IMG_OPEN_RW;
	struct img_optlist ol = { 0 };
	struct conv cv;
	int ret = IMG_EXIT_ERR, c;
	char tmp[PATH_MAX] = "";
	bool temp_active = false;

	memset(&cv, 0, sizeof(cv));
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:O:o:B:F:cpqnS:t:T:Um:WC", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help(stdout, "convert");
			return 0;
		case 'f': fmt = optarg; break;
		case 'O': out_fmt = optarg; break;
		case 'o':
			if (img_opts_add(&ol, optarg))
				goto out;
			break;
		case 'B': backing = optarg; break;
		case 'F': backing_fmt = optarg; break;
		case 'c': compress = true; break;
		case 'p': progress = true; break;
		case 'q': quiet = true; break;
		case 'n': no_create = true; break;
		case 'S': sparse_arg = optarg; break;
		case 't':
			if (img_parse_cache(optarg, &dst_flags))
				goto out;
			dst_sync = strcmp(optarg, "unsafe") != 0;
			break;
		case 'T':
			if (img_parse_cache(optarg, &src_flags))
				goto out;
			break;
		case 'Z': target_zero = true; break;
		case 'U': case 'W': case 'C': break;
		case 'm': {
			char *end;
			long m = strtol(optarg, &end, 10);
			if (*end || m < 1 || m > 16) {
				img_err("convert: -m '%s': expected a number from 1 to 16", optarg);
				goto out;
			}
			break;
		}
		default:
			img_bad_option("convert", c, argv);
			goto out;
		}
	}
	if ((fmt && img_check_format(fmt)) || img_check_format(out_fmt) ||
	    (backing_fmt && img_check_format(backing_fmt)))
		goto out;
	if (ol.help) {
		img_spec_help(stdout, out_fmt);
		ret = 0;
		goto out;
	}
	if (argc - optind < 2) {
		img_usage_error("convert", "SRC and DST are required");
		goto out;
	}
	cv.sparse = 4096;
	if (sparse_arg) {
		if (img_parse_size(sparse_arg, &cv.sparse) || cv.sparse % 512 || cv.sparse > (16u << 20)) {
			img_err("convert: -S '%s': expected a multiple of 512 up to 16M (0: no sparse detection)",
				sparse_arg);
			goto out;
		}
	}
	if (quiet)
		progress = false;
	const char *dst_name = argv[argc - 1];
	cv.dst_name = dst_name;
	cv.compress = compress;

	struct img_spec spec;
	if (img_spec_from_opts(&spec, out_fmt, &ol))
		goto out;
	if (backing)
		spec.q.backing_file = backing;
	if (backing_fmt)
		spec.q.backing_fmt = backing_fmt;
	if (spec.q.backing_file && !spec.q.backing_file[0])
		spec.q.backing_file = NULL;
	if (spec.q.backing_file && strcmp(out_fmt, "qcow2")) {
		img_err("%s: format %s cannot have a backing file (use -O qcow2)", dst_name, out_fmt);
		goto out;
	}
	if (compress && strcmp(out_fmt, "qcow2")) {
		img_err("%s: compression (-c) needs -O qcow2", dst_name);
		goto out;
	}
	if (no_create && spec.q.backing_file) {
		img_err("%s: -B cannot be used with -n (the target exists)", dst_name);
		goto out;
	}

	cv.nsrc = argc - optind - 1;
	cv.src = calloc((size_t)cv.nsrc, sizeof(*cv.src));
	if (!cv.src) {
		img_err("out of memory");
		goto out;
	}
	for (int i = 0; i < cv.nsrc; i++) {
		struct conv_src *s = &cv.src[i];
		s->name = argv[optind + i];
		struct stat ss, ds;
		if (no_create && stat(s->name, &ss) == 0 && stat(dst_name, &ds) == 0 && ss.st_dev == ds.st_dev &&
		    ss.st_ino == ds.st_ino) {
			img_err("%s: -n: the target is also a source", dst_name);
			goto out;
		}
		s->img = img_open(s->name, fmt, src_flags);
		if (!s->img)
			goto out;
		s->start = cv.total;
		s->size = image_size(s->img);
		cv.total += s->size;
	}
	spec.q.size = cv.total;
	spec.size_set = true;

	if (spec.q.backing_file) {
		char bpath[PATH_MAX];
		img_backing_path(dst_name, spec.q.backing_file, bpath, sizeof(bpath));
		struct image *b = img_open(bpath, spec.q.backing_fmt, 0);
		if (!b)
			goto out;
		if (!spec.q.backing_fmt)
			spec.q.backing_fmt = image_format(b) == IMAGE_QCOW2 ? "qcow2" : "raw";
		image_close(b);
	}

	char err[PATH_MAX + 256];
	err[0] = '\0';
	if (no_create) {
		cv.dst = img_open(dst_name, out_fmt, dst_flags | IMG_OPEN_NO_BACKING);
		if (!cv.dst)
			goto out;
		if (image_size(cv.dst) < cv.total) {
			img_err("%s: the target is smaller (%" PRIu64 " bytes) than the source (%" PRIu64 " bytes)",
				dst_name, image_size(cv.dst), cv.total);
			goto out;
		}
		cv.fresh = target_zero;
	} else {
		if (img_temp_begin(dst_name, tmp, sizeof(tmp)))
			goto out;
		temp_active = true;
		int r = img_spec_create(tmp, &spec, err, sizeof(err));
		if (r < 0) {
			img_err_lib(err, tmp, dst_name, "cannot create the image", r);
			goto out;
		}
		struct image_open_opts o = {
			.path = tmp,
			.format = out_fmt,
			.allow_probed_backing = true,
			.direct = !!(dst_flags & IMG_OPEN_DIRECT),
			.writethrough = !!(dst_flags & IMG_OPEN_WRITETHROUGH),
		};
		cv.dst = image_open(&o, err, sizeof(err));
		if (!cv.dst) {
			img_err_lib(err, tmp, dst_name, "cannot open the new image", -EIO);
			goto out;
		}
		cv.fresh = true;
		cv.dst_backing = image_backing(cv.dst);
		if (spec.q.backing_file && !cv.dst_backing) {
			img_err("%s: the new image did not open its backing file", dst_name);
			goto out;
		}
	}

	struct image_info di;
	memset(&di, 0, sizeof(di));
	if (image_get_info(cv.dst, &di) == 0 && di.format == IMAGE_QCOW2 && di.cluster_size)
		cv.unit = di.cluster_size;
	else
		cv.unit = cv.sparse && cv.sparse < 4096 ? (uint32_t)cv.sparse : 4096;
	if (cv.sparse && cv.sparse < cv.unit && !cv.compress && !cv.dst_backing)
		cv.sparse = cv.unit;
	cv.buf = img_alloc(CONVERT_CHUNK);
	cv.bbuf = cv.dst_backing ? img_alloc(CONVERT_CHUNK) : NULL;
	if (!cv.buf || (cv.dst_backing && !cv.bbuf))
		goto out;

	img_progress_init(&cv.prog, progress);
	int rr = conv_run(&cv);
	if (rr == 0 && (dst_sync || image_format(cv.dst) == IMAGE_QCOW2)) {
		int r = image_flush(cv.dst);
		if (r < 0) {
			img_err("%s: cannot flush the image: %s", dst_name, strerror(-r));
			rr = -1;
		}
	}
	if (rr == 0)
		img_progress_end(&cv.prog);
	else
		cv.prog.on = false;
	if (rr == 0)
		ret = 0;
out:
	if (cv.dst)
		image_close(cv.dst);
	if (temp_active && img_temp_done(tmp, dst_name, ret == 0) < 0)
		ret = IMG_EXIT_ERR;
	for (int i = 0; i < cv.nsrc && cv.src; i++)
		if (cv.src[i].img)
			image_close(cv.src[i].img);
	free(cv.src);
	free(cv.buf);
	free(cv.bbuf);
	img_opts_free(&ol);
	return ret;
}
