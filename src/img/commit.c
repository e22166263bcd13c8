/* `kestrel img commit`: write an overlay's data into its backing file (or
 * a base further down the chain), then empty the overlay. */
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

#define COMMIT_CHUNK (2u << 20)

static bool same_file(const char *a, const struct stat *bs)
{
	struct stat as;
	return stat(a, &as) == 0 && as.st_dev == bs->st_dev && as.st_ino == bs->st_ino;
}

/* Copies what the layers above `base` define into base. */
static int commit_data(struct image *top, struct image *base, const char *file, const char *bname,
		       bool progress)
{
	uint64_t size = image_size(top), off = 0;
	uint8_t *buf = img_alloc(COMMIT_CHUNK);
	struct img_progress prog;
	int ret = -1;
	if (!buf)
		return -1;
	img_progress_init(&prog, progress);
	while (off < size) {
		uint64_t n = size - off;
		struct img_status st;
		int r = img_chain_status(top, base, off, n, &st);
		if (r < 0) {
			img_err("%s: cannot read the allocation status at offset %" PRIu64 ": %s", file, off,
				strerror(-r));
			goto out;
		}
		n = st.len;
		if (st.present && st.layer != base) {
			if ((st.flags & IMAGE_BS_ZERO) && !(st.flags & IMAGE_BS_DATA)) {
				r = image_write_zeroes(base, off, n, false);
				if (r < 0) {
					img_err("%s: write error at offset %" PRIu64 ": %s", bname, off,
						strerror(-r));
					goto out;
				}
			} else {
				for (uint64_t done = 0; done < n;) {
					uint64_t m = n - done < COMMIT_CHUNK ? n - done : COMMIT_CHUNK;
					r = image_read(top, off + done, buf, m);
					if (r < 0) {
						img_err("%s: read error at offset %" PRIu64 ": %s", file, off + done,
							strerror(-r));
						goto out;
					}
					r = image_write(base, off + done, buf, m);
					if (r < 0) {
						img_err("%s: write error at offset %" PRIu64 ": %s", bname, off + done,
							strerror(-r));
						goto out;
					}
					done += m;
					img_progress_update(&prog, off + done, size);
				}
			}
		}
		off += n;
		img_progress_update(&prog, off, size);
	}
	ret = 0;
	img_progress_end(&prog);
out:
	prog.on = false;
	free(buf);
	return ret;
}

int img_commit(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = NULL, *base_arg = NULL;
	bool keep = false, quiet = false, progress = false;
	unsigned flags = 0;
	int c;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:t:b:dpqr:", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help(stdout, "commit");
			return 0;
		case 'f': fmt = optarg; break;
		case 't':
			if (img_parse_cache(optarg, &flags))
				return IMG_EXIT_ERR;
			break;
		case 'b': base_arg = optarg; keep = true; break;
		case 'd': keep = true; break;
		case 'p': progress = true; break;
		case 'q': quiet = true; break;
		case 'r': break;        /* rate limit: accepted, not applied */
		default:
			return img_bad_option("commit", c, argv);
		}
	}
	if (fmt && img_check_format(fmt))
		return IMG_EXIT_ERR;
	if (optind >= argc)
		return img_usage_error("commit", "FILE is required");
	if (argc - optind > 1)
		return img_usage_error("commit", "too many arguments");
	const char *file = argv[optind];
	if (quiet)
		progress = false;

	struct image *top = img_open(file, fmt, flags);
	if (!top)
		return IMG_EXIT_ERR;
	int ret = IMG_EXIT_ERR;
	struct image *base = image_backing(top);
	if (!base) {
		img_err("%s: the image has no backing file to commit to", file);
		goto out;
	}
	if (base_arg) {
		struct stat bs;
		char rel[PATH_MAX];
		img_backing_path(file, base_arg, rel, sizeof(rel));
		if (stat(base_arg, &bs) < 0 && stat(rel, &bs) < 0) {
			img_err("%s: base '%s': %s", file, base_arg, strerror(errno));
			goto out;
		}
		for (base = image_backing(top); base; base = image_backing(base))
			if (same_file(image_path(base), &bs))
				break;
		if (!base) {
			img_err("%s: '%s' is not in the image's backing chain", file, base_arg);
			goto out;
		}
	}
	char err[PATH_MAX + 256] = "", bname[PATH_MAX];
	img_layer_name(top, file, base, bname, sizeof(bname));
	if (image_reopen_rw(base, err, sizeof(err)) < 0) {
		img_err_lib(err, NULL, bname, "cannot open the backing file for writing", -EACCES);
		goto out;
	}
	if (image_size(base) < image_size(top)) {
		int r = image_resize(base, image_size(top), false);
		if (r < 0) {
			img_err("%s: cannot grow the backing file to %" PRIu64 " bytes: %s", bname,
				image_size(top), strerror(-r));
			goto out;
		}
	}
	if (commit_data(top, base, file, bname, progress))
		goto out;
	int r = image_flush(base);
	if (r < 0) {
		img_err("%s: cannot flush: %s", bname, strerror(-r));
		goto out;
	}
	const char *top_fmt = image_format(top) == IMAGE_QCOW2 ? "qcow2" : "raw";
	image_close(top);
	top = NULL;
	if (!keep && img_empty_image(file, top_fmt))
		goto out;
	if (!quiet)
		printf("Image committed.\n");
	ret = 0;
out:
	if (top)
		image_close(top);
	return ret;
}
