/* `kestrel img resize`: grow or (with --shrink) shrink the virtual size. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "block/image_ext.h"
#include "img/img.h"

int img_resize(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "shrink", no_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = NULL;
	bool shrink = false, quiet = false;
	int c;

	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			img_help(stdout, "resize");
			return 0;
		}
	if (argc < 3)
		return img_usage_error("resize", "FILE and SIZE are required");
	/* The size comes last and may start with '-': keep it from getopt. */
	const char *size_arg = argv[argc - 1];
	argc--;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:q", longopts, NULL)) != -1) {
		switch (c) {
		case 'f': fmt = optarg; break;
		case 'q': quiet = true; break;
		case 's': shrink = true; break;
		default:
			return img_bad_option("resize", c, argv);
		}
	}
	if (fmt && img_check_format(fmt))
		return IMG_EXIT_ERR;
	if (optind >= argc)
		return img_usage_error("resize", "FILE and SIZE are required");
	if (argc - optind > 1)
		return img_usage_error("resize", "too many arguments");
	const char *file = argv[optind];

	int rel = 0;
	const char *num = size_arg;
	if (*num == '+' || *num == '-') {
		rel = *num == '+' ? 1 : -1;
		num++;
	}
	uint64_t v;
	if (img_parse_size(num, &v)) {
		img_bad_size(size_arg);
		return IMG_EXIT_ERR;
	}

	struct image *img = img_open(file, fmt, IMG_OPEN_RW | IMG_OPEN_NO_BACKING);
	if (!img)
		return IMG_EXIT_ERR;
	uint64_t cur = image_size(img), target = v;
	int ret = IMG_EXIT_ERR;
	if (rel > 0) {
		if (cur + v < cur) {
			img_err("%s: the new size is too large", file);
			goto out;
		}
		target = cur + v;
	} else if (rel < 0) {
		if (v > cur) {
			img_err("%s: the size cannot be negative (%" PRIu64 " - %" PRIu64 ")", file, cur, v);
			goto out;
		}
		target = cur - v;
	}
	if (target > (uint64_t)INT64_MAX) {
		img_err("%s: image size must be less than 8 EiB", file);
		goto out;
	}
	if (target < cur && !shrink) {
		img_err("%s: shrinking from %" PRIu64 " to %" PRIu64 " bytes deletes the data past the new "
			"end; use --shrink to do it",
			file, cur, target);
		goto out;
	}
	int r = image_resize(img, target, shrink);
	if (r == 0)
		r = image_flush(img);
	if (r == -ENOTSUP && target < cur) {
		img_err("%s: cannot shrink an image that has internal snapshots", file);
		goto out;
	}
	if (r < 0) {
		img_err("%s: cannot resize the image to %" PRIu64 " bytes: %s", file, target, strerror(-r));
		goto out;
	}
	if (!quiet)
		printf("Image resized.\n");
	ret = 0;
out:
	image_close(img);
	return ret;
}
