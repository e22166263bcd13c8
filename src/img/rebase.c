/* `kestrel img rebase`: change an overlay's backing file. Safe mode copies
 * into the overlay every cluster that would read differently through the
 * new backing file; -u only rewrites the header. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/image_ext.h"
#include "img/img.h"

#define REBASE_CHUNK (2u << 20)

struct rebase {
	struct image *img;          /* the overlay, read through its old chain */
	struct image *nb;           /* the new backing file (NULL: none) */
	const char *file;
	uint32_t unit;
	uint8_t *obuf, *nbuf;
};

/* [off, off+len) is not allocated in the overlay itself. */
static int rebase_range(struct rebase *rb, uint64_t off, uint64_t len)
{
	uint64_t nsize = rb->nb ? image_size(rb->nb) : 0;
	while (len) {
		uint64_t n = len < REBASE_CHUNK ? len : REBASE_CHUNK;
		/* Fast path: both sides known to read as zeroes. */
		struct img_status os, ns;
		int r = img_chain_status(rb->img, NULL, off, n, &os);
		if (r < 0)
			goto status_err;
		n = os.len;
		bool ozero = (os.flags & IMAGE_BS_ZERO) && !(os.flags & IMAGE_BS_DATA);
		bool nzero = true;
		if (rb->nb && off < nsize) {
			uint64_t m = n < nsize - off ? n : nsize - off;
			r = img_chain_status(rb->nb, NULL, off, m, &ns);
			if (r < 0)
				goto status_err;
			if (ns.len < n)
				n = ns.len;
			nzero = (ns.flags & IMAGE_BS_ZERO) && !(ns.flags & IMAGE_BS_DATA);
		}
		if (!(ozero && nzero)) {
			r = image_read(rb->img, off, rb->obuf, n);
			if (r < 0) {
				img_err("%s: read error at offset %" PRIu64 ": %s", rb->file, off, strerror(-r));
				return -1;
			}
			uint64_t have = rb->nb && off < nsize ? (n < nsize - off ? n : nsize - off) : 0;
			if (have) {
				r = image_read(rb->nb, off, rb->nbuf, have);
				if (r < 0) {
					img_err("%s: read error at offset %" PRIu64 ": %s", image_path(rb->nb), off,
						strerror(-r));
					return -1;
				}
			}
			memset(rb->nbuf + have, 0, n - have);
			/* Units are aligned to the overlay's clusters. */
			uint64_t u = 0;
			while (u < n) {
				uint64_t un = rb->unit - (off + u) % rb->unit;
				if (un > n - u)
					un = n - u;
				if (memcmp(rb->obuf + u, rb->nbuf + u, un)) {
					bool z = img_is_zero(rb->obuf + u, un);
					r = z ? image_write_zeroes(rb->img, off + u, un, false)
					      : image_write(rb->img, off + u, rb->obuf + u, un);
					if (r < 0) {
						img_err("%s: write error at offset %" PRIu64 ": %s", rb->file, off + u,
							strerror(-r));
						return -1;
					}
				}
				u += un;
			}
		}
		off += n;
		len -= n;
	}
	return 0;
status_err:
	img_err("%s: cannot read the allocation status at offset %" PRIu64, rb->file, off);
	return -1;
}

static int rebase_copy(struct rebase *rb, bool progress)
{
	uint64_t size = image_size(rb->img), off = 0;
	struct img_progress prog;
	img_progress_init(&prog, progress);
	while (off < size) {
		uint64_t pnum = 0, host;
		unsigned flags = 0;
		int r = image_block_status(rb->img, off, size - off, &pnum, &flags, &host);
		if (r < 0) {
			img_err("%s: cannot read the allocation status at offset %" PRIu64 ": %s", rb->file, off,
				strerror(-r));
			prog.on = false;
			return -1;
		}
		if (pnum == 0 || pnum > size - off)
			pnum = size - off;
		if (!(flags & IMAGE_BS_ALLOCATED) && rebase_range(rb, off, pnum)) {
			prog.on = false;
			return -1;
		}
		off += pnum;
		img_progress_update(&prog, off, size);
	}
	img_progress_end(&prog);
	return 0;
}

int img_rebase(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = NULL, *backing = NULL, *backing_fmt = NULL;
	bool unsafe = false, quiet = false, progress = false;
	unsigned flags = 0, src_flags = 0;
	int c;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:t:T:b:F:upqU", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help(stdout, "rebase");
			return 0;
		case 'f': fmt = optarg; break;
		case 't':
			if (img_parse_cache(optarg, &flags))
				return IMG_EXIT_ERR;
			break;
		case 'T':
			if (img_parse_cache(optarg, &src_flags))
				return IMG_EXIT_ERR;
			break;
		case 'b': backing = optarg; break;
		case 'F': backing_fmt = optarg; break;
		case 'u': unsafe = true; break;
		case 'p': progress = true; break;
		case 'q': quiet = true; break;
		case 'U': break;
		default:
			return img_bad_option("rebase", c, argv);
		}
	}
	if ((fmt && img_check_format(fmt)) || (backing_fmt && img_check_format(backing_fmt)))
		return IMG_EXIT_ERR;
	if (optind >= argc)
		return img_usage_error("rebase", "FILE is required");
	if (argc - optind > 1)
		return img_usage_error("rebase", "too many arguments");
	if (!backing)
		return img_usage_error("rebase", "the new backing file (-b) is required (\"\" for none)");
	const char *file = argv[optind];
	if (quiet)
		progress = false;
	if (!backing[0]) {
		backing = NULL;
		if (backing_fmt)
			return img_usage_error("rebase", "-F without a backing file");
	}

	struct rebase rb;
	memset(&rb, 0, sizeof(rb));
	rb.file = file;
	int ret = IMG_EXIT_ERR;
	rb.img = img_open(file, fmt, IMG_OPEN_RW | flags | (unsafe ? IMG_OPEN_NO_BACKING : 0));
	if (!rb.img)
		return IMG_EXIT_ERR;
	if (image_format(rb.img) != IMAGE_QCOW2) {
		img_err("%s: format raw cannot have a backing file", file);
		goto out;
	}
	char bpath[PATH_MAX];
	if (backing) {
		img_backing_path(file, backing, bpath, sizeof(bpath));
		if (!unsafe) {
			rb.nb = img_open(bpath, backing_fmt, src_flags);
			if (!rb.nb)
				goto out;
			if (!backing_fmt)
				backing_fmt = image_format(rb.nb) == IMAGE_QCOW2 ? "qcow2" : "raw";
		} else if (!backing_fmt) {
			/* Record the format when the file is there to look at. */
			backing_fmt = img_probe_format(bpath);
		}
	}

	if (!unsafe) {
		struct image_info info;
		memset(&info, 0, sizeof(info));
		int r = image_get_info(rb.img, &info);
		if (r < 0) {
			img_err("%s: cannot read the image's properties: %s", file, strerror(-r));
			goto out;
		}
		rb.unit = info.cluster_size ? info.cluster_size : 65536;
		rb.obuf = img_alloc(REBASE_CHUNK);
		rb.nbuf = img_alloc(REBASE_CHUNK);
		if (!rb.obuf || !rb.nbuf || rebase_copy(&rb, progress))
			goto out;
	}
	int r = qcow2_set_backing(rb.img, backing, backing ? backing_fmt : NULL);
	if (r == 0)
		r = image_flush(rb.img);
	if (r < 0) {
		img_err("%s: cannot write the new backing file name: %s", file, strerror(-r));
		goto out;
	}
	ret = 0;
out:
	if (rb.nb)
		image_close(rb.nb);
	image_close(rb.img);
	free(rb.obuf);
	free(rb.nbuf);
	return ret;
}
