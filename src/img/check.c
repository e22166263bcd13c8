/* `kestrel img check`: qcow2 metadata check and repair, with qemu-img
 * check's output and exit statuses. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "block/image_ext.h"
#include "img/img.h"

#define CHECK_EXIT_CORRUPT 2
#define CHECK_EXIT_LEAKS 3
#define CHECK_EXIT_NOTSUP 63

static void report_line(void *opaque, const char *line)
{
	(void)opaque;
	fflush(stdout);
	fprintf(stderr, "%s\n", line);
}

static void dump_human(const struct qcow2_check_result *r)
{
	if (!(r->corruptions || r->leaks || r->check_errors)) {
		printf("No errors were found on the image.\n");
	} else {
		if (r->corruptions)
			printf("\n%" PRId64 " errors were found on the image.\n"
			       "Data may be corrupted, or further writes to the image may corrupt it.\n",
			       r->corruptions);
		if (r->leaks)
			printf("\n%" PRId64 " leaked clusters were found on the image.\n"
			       "This means waste of disk space, but no harm to data.\n",
			       r->leaks);
		if (r->check_errors)
			printf("\n%" PRId64 " internal errors have occurred during the check.\n", r->check_errors);
	}
	if (r->total_clusters && r->allocated_clusters)
		printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
		       r->allocated_clusters, r->total_clusters,
		       (double)r->allocated_clusters * 100.0 / (double)r->total_clusters,
		       (double)r->fragmented_clusters * 100.0 / (double)r->allocated_clusters,
		       (double)r->compressed_clusters * 100.0 / (double)r->allocated_clusters);
	if (r->image_end_offset)
		printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

static void dump_json(const struct qcow2_check_result *r, const char *file)
{
	printf("{\n");
	if (r->image_end_offset)
		printf("    \"image-end-offset\": %" PRIu64 ",\n", r->image_end_offset);
	printf("    \"total-clusters\": %" PRIu64 ",\n", r->total_clusters);
	printf("    \"check-errors\": %" PRId64 ",\n", r->check_errors);
	if (r->leaks)
		printf("    \"leaks\": %" PRId64 ",\n", r->leaks);
	if (r->corruptions)
		printf("    \"corruptions\": %" PRId64 ",\n", r->corruptions);
	if (r->leaks_fixed)
		printf("    \"leaks-fixed\": %" PRId64 ",\n", r->leaks_fixed);
	if (r->corruptions_fixed)
		printf("    \"corruptions-fixed\": %" PRId64 ",\n", r->corruptions_fixed);
	if (r->allocated_clusters) {
		printf("    \"allocated-clusters\": %" PRIu64 ",\n", r->allocated_clusters);
		printf("    \"fragmented-clusters\": %" PRIu64 ",\n", r->fragmented_clusters);
		printf("    \"compressed-clusters\": %" PRIu64 ",\n", r->compressed_clusters);
	}
	printf("    \"filename\": ");
	img_json_str(stdout, file);
	printf(",\n    \"format\": \"qcow2\"\n}\n");
}

int img_check(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "output", required_argument, NULL, 'O' },
		{ "repair", required_argument, NULL, 'r' },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = NULL;
	enum img_output out = IMG_OUT_HUMAN;
	int fix = 0, c;
	bool quiet = false;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:r:qUT:", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help(stdout, "check");
			return 0;
		case 'f': fmt = optarg; break;
		case 'r':
			if (!strcmp(optarg, "leaks")) {
				fix = QCOW2_FIX_LEAKS;
			} else if (!strcmp(optarg, "all")) {
				fix = QCOW2_FIX_ALL;
			} else {
				img_err("check: -r '%s' is not a repair mode (accepted: leaks, all)", optarg);
				return IMG_EXIT_ERR;
			}
			break;
		case 'O':
			if (img_parse_output(optarg, &out))
				return IMG_EXIT_ERR;
			break;
		case 'q': quiet = true; break;
		case 'U': break;
		case 'T': {
			unsigned ignored = 0;
			if (img_parse_cache(optarg, &ignored))
				return IMG_EXIT_ERR;
			break;
		}
		default:
			return img_bad_option("check", c, argv);
		}
	}
	if (fmt && img_check_format(fmt))
		return IMG_EXIT_ERR;
	if (optind >= argc)
		return img_usage_error("check", "FILE is required");
	if (argc - optind > 1)
		return img_usage_error("check", "too many arguments");
	const char *file = argv[optind];

	struct image *img = img_open(file, fmt, IMG_OPEN_NO_BACKING | IMG_OPEN_CHECK | (fix ? IMG_OPEN_RW : 0));
	if (!img)
		return IMG_EXIT_ERR;
	if (image_format(img) != IMAGE_QCOW2) {
		image_close(img);
		img_err("%s: format raw has no metadata to check", file);
		return CHECK_EXIT_NOTSUP;
	}

	struct qcow2_check_result r;
	memset(&r, 0, sizeof(r));
	r.report = report_line;
	int e = qcow2_check(img, fix, &r);
	if (e == 0 && fix)
		e = image_flush(img);
	image_close(img);
	if (e < 0) {
		img_err("%s: check failed: %s", file, strerror(-e));
		return IMG_EXIT_ERR;
	}
	if (!quiet) {
		if (out == IMG_OUT_HUMAN) {
			if (r.leaks_fixed || r.corruptions_fixed)
				printf("The following inconsistencies were found and repaired:\n\n"
				       "    %" PRId64 " leaked clusters\n    %" PRId64 " corruptions\n\n"
				       "Double checking the fixed image now...\n",
				       r.leaks_fixed, r.corruptions_fixed);
			dump_human(&r);
		} else {
			dump_json(&r, file);
		}
	}
	if (r.check_errors) {
		img_err("%s: check failed (%" PRId64 " internal errors)", file, r.check_errors);
		return IMG_EXIT_ERR;
	}
	if (r.corruptions)
		return CHECK_EXIT_CORRUPT;
	if (r.leaks)
		return CHECK_EXIT_LEAKS;
	return 0;
}
