/* `kestrel img measure`: the file size a new image needs. */
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "block/image_ext.h"
#include "img/img.h"

int img_measure(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "output", required_argument, NULL, 'J' },
		{ "size", required_argument, NULL, 's' },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = NULL, *out_fmt = "raw", *size_arg = NULL;
	enum img_output out = IMG_OUT_HUMAN;
	struct img_optlist ol = { 0 };
	int ret = IMG_EXIT_ERR, c;
	struct image *src = NULL;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:O:o:U", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help(stdout, "measure");
			return 0;
		case 'f': fmt = optarg; break;
		case 'O': out_fmt = optarg; break;
		case 'o':
			if (img_opts_add(&ol, optarg))
				goto out;
			break;
		case 'J':
			if (img_parse_output(optarg, &out))
				goto out;
			break;
		case 's': size_arg = optarg; break;
		case 'U': break;
		default:
			img_bad_option("measure", c, argv);
			goto out;
		}
	}
	if ((fmt && img_check_format(fmt)) || img_check_format(out_fmt))
		goto out;
	if (ol.help) {
		img_spec_help(stdout, out_fmt);
		ret = 0;
		goto out;
	}
	if (argc - optind > 1) {
		img_usage_error("measure", "too many arguments");
		goto out;
	}
	const char *file = optind < argc ? argv[optind] : NULL;
	if (!!file == !!size_arg) {
		img_usage_error("measure", "give either --size SIZE or FILE");
		goto out;
	}
	struct img_spec spec;
	if (img_spec_from_opts(&spec, out_fmt, &ol))
		goto out;
	if (size_arg) {
		if (img_parse_size(size_arg, &spec.q.size)) {
			img_bad_size(size_arg);
			goto out;
		}
	} else {
		src = img_open(file, fmt, 0);
		if (!src)
			goto out;
		spec.q.size = image_size(src);
	}
	if (spec.q.size > (uint64_t)INT64_MAX) {
		img_err("measure: the image size must be less than 8 EiB");
		goto out;
	}

	struct qcow2_measure m;
	if (!strcmp(out_fmt, "raw")) {
		m.required = m.fully_allocated = (spec.q.size + 511) & ~511ull;
	} else {
		char err[PATH_MAX + 256] = "";
		int r = qcow2_measure(&spec.q, src, &m, err, sizeof(err));
		if (r < 0) {
			img_err_lib(err, NULL, file ? file : "measure", "cannot measure", r);
			goto out;
		}
	}
	if (out == IMG_OUT_HUMAN)
		printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64 "\n", m.required,
		       m.fully_allocated);
	else
		printf("{\n    \"required\": %" PRIu64 ",\n    \"fully-allocated\": %" PRIu64 "\n}\n", m.required,
		       m.fully_allocated);
	ret = 0;
out:
	if (src)
		image_close(src);
	img_opts_free(&ol);
	return ret;
}
