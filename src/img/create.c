/* `kestrel img create`: a new, empty image. */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "block/image_ext.h"
#include "img/img.h"

int img_create(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "quiet", no_argument, NULL, 'q' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = "raw", *backing = NULL, *backing_fmt = NULL;
	bool unsafe = false, quiet = false;
	struct img_optlist ol = { 0 };
	int ret = IMG_EXIT_ERR, c;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:o:b:F:uq", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help(stdout, "create");
			img_opts_free(&ol);
			return 0;
		case 'f': fmt = optarg; break;
		case 'o':
			if (img_opts_add(&ol, optarg))
				goto out;
			break;
		case 'b': backing = optarg; break;
		case 'F': backing_fmt = optarg; break;
		case 'u': unsafe = true; break;
		case 'q': quiet = true; break;
		default:
			img_bad_option("create", c, argv);
			goto out;
		}
	}
	if (img_check_format(fmt))
		goto out;
	if (ol.help) {
		img_spec_help(stdout, fmt);
		ret = 0;
		goto out;
	}
	if (optind >= argc) {
		img_usage_error("create", "FILE is required");
		goto out;
	}
	if (argc - optind > 2) {
		img_usage_error("create", "too many arguments");
		goto out;
	}
	const char *file = argv[optind];
	const char *size_arg = argc - optind == 2 ? argv[optind + 1] : NULL;

	struct img_spec spec;
	if (img_spec_from_opts(&spec, fmt, &ol))
		goto out;
	if (size_arg) {
		if (img_parse_size(size_arg, &spec.q.size)) {
			img_bad_size(size_arg);
			goto out;
		}
		spec.size_set = true;
	}
	if (backing)
		spec.q.backing_file = backing;
	if (backing_fmt) {
		if (img_check_format(backing_fmt))
			goto out;
		spec.q.backing_fmt = backing_fmt;
	}
	if (spec.q.backing_file && !spec.q.backing_file[0])
		spec.q.backing_file = NULL;
	if (spec.q.backing_file && !strcmp(fmt, "raw")) {
		img_err("%s: format raw cannot have a backing file (use -f qcow2)", file);
		goto out;
	}
	if (spec.q.backing_fmt && !spec.q.backing_file) {
		img_err("%s: a backing format was given without a backing file (-b)", file);
		goto out;
	}

	if (spec.q.backing_file && !unsafe) {
		/* Check that the backing file opens, and take its size and format. */
		char bpath[PATH_MAX];
		img_backing_path(file, spec.q.backing_file, bpath, sizeof(bpath));
		struct image *b = img_open(bpath, spec.q.backing_fmt, 0);
		if (!b)
			goto out;
		if (!spec.size_set) {
			spec.q.size = image_size(b);
			spec.size_set = true;
		}
		if (!spec.q.backing_fmt)
			spec.q.backing_fmt = image_format(b) == IMAGE_QCOW2 ? "qcow2" : "raw";
		image_close(b);
	}
	if (!spec.size_set) {
		img_err("%s: the image needs a size (SIZE, -o size= or a backing file%s)", file,
			spec.q.backing_file ? " opened without -u" : "");
		goto out;
	}
	if (spec.q.size > (uint64_t)INT64_MAX) {
		img_err("%s: image size must be less than 8 EiB", file);
		goto out;
	}

	if (!quiet)
		img_spec_print(stdout, file, &spec);
	fflush(stdout);

	char tmp[PATH_MAX], err[PATH_MAX + 256];
	if (img_temp_begin(file, tmp, sizeof(tmp)))
		goto out;
	err[0] = '\0';
	int r = img_spec_create(tmp, &spec, err, sizeof(err));
	if (r < 0) {
		img_temp_done(tmp, file, false);
		img_err_lib(err, tmp, file, "cannot create the image", r);
		goto out;
	}
	if (img_temp_done(tmp, file, true))
		goto out;
	ret = 0;
out:
	img_opts_free(&ol);
	return ret;
}
