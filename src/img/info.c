/* `kestrel img info`: qemu-img info's human and JSON layouts. */
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "block/image_ext.h"
#include "img/img.h"

/* One snapshot line, qemu's bdrv_snapshot_dump() layout. */
static void snapshot_line(FILE *f, const struct qcow2_snapshot *s)
{
	char date[64] = "", clock[64], vmsize[32], icount[32] = "";
	time_t t = (time_t)s->date_sec;
	struct tm tm;
	if (localtime_r(&t, &tm))
		strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
	uint64_t secs = s->vm_clock_nsec / 1000000000ull;
	snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d", (int)(secs / 3600), (int)((secs / 60) % 60),
		 (int)(secs % 60), (int)((s->vm_clock_nsec / 1000000) % 1000));
	img_size_str(s->vm_state_size, vmsize, sizeof(vmsize));
	if (s->icount != -1)
		snprintf(icount, sizeof(icount), "%" PRId64, s->icount);
	fprintf(f, "%-9s %-16s %8s%20s%13s%11s\n", s->id, s->name, vmsize, date, clock, icount);
}

void img_snapshot_table(FILE *f, const struct qcow2_snapshot *s, unsigned n)
{
	fprintf(f, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
	for (unsigned i = 0; i < n; i++)
		snapshot_line(f, &s[i]);
}

static void json_snapshots(FILE *f, const char *ind, const struct qcow2_snapshot *s, unsigned n)
{
	fprintf(f, "%s    \"snapshots\": [\n", ind);
	for (unsigned i = 0; i < n; i++) {
		fprintf(f, "%s        {\n", ind);
		if (s[i].icount != -1)
			fprintf(f, "%s            \"icount\": %" PRId64 ",\n", ind, s[i].icount);
		fprintf(f, "%s            \"vm-clock-nsec\": %" PRIu64 ",\n", ind, s[i].vm_clock_nsec % UINT64_C(1000000000));
		fprintf(f, "%s            \"name\": ", ind);
		img_json_str(f, s[i].name);
		fprintf(f, ",\n%s            \"date-sec\": %" PRIu32 ",\n", ind, s[i].date_sec);
		fprintf(f, "%s            \"date-nsec\": %" PRIu32 ",\n", ind, s[i].date_nsec);
		fprintf(f, "%s            \"vm-clock-sec\": %" PRIu64 ",\n", ind, s[i].vm_clock_nsec / UINT64_C(1000000000));
		fprintf(f, "%s            \"id\": ", ind);
		img_json_str(f, s[i].id);
		fprintf(f, ",\n%s            \"vm-state-size\": %" PRIu64 "\n", ind, s[i].vm_state_size);
		fprintf(f, "%s        }%s\n", ind, i + 1 < n ? "," : "");
	}
	fprintf(f, "%s    ],\n", ind);
}

static int describe(FILE *f, struct image *img, const char *name, enum img_output out, const char *ind)
{
	struct image_info info;
	memset(&info, 0, sizeof(info));
	int r = image_get_info(img, &info);
	if (r < 0) {
		img_err("%s: cannot read the image's properties: %s", name, strerror(-r));
		return -1;
	}
	struct qcow2_snapshot *sn = NULL;
	unsigned nsn = 0;
	bool q = info.format == IMAGE_QCOW2;
	if (q && info.nr_snapshots) {
		r = qcow2_snapshot_list(img, &sn, &nsn);
		if (r < 0) {
			img_err("%s: cannot read the snapshot table: %s", name, strerror(-r));
			return -1;
		}
	}
	const char *fmt = q ? "qcow2" : "raw";
	char full[PATH_MAX];
	if (info.backing_file[0])
		img_backing_path(name, info.backing_file, full, sizeof(full));
	const char *ctype = info.compression_type ? info.compression_type : "zlib";
	const char *compat = info.qcow2_version == 2 ? "0.10" : "1.1";

	if (out == IMG_OUT_HUMAN) {
		char vs[32], ds[32];
		img_size_str(info.virtual_size, vs, sizeof(vs));
		img_size_str(info.actual_size, ds, sizeof(ds));
		fprintf(f, "image: %s\nfile format: %s\nvirtual size: %s (%" PRIu64 " bytes)\ndisk size: %s\n",
			name, fmt, vs, info.virtual_size, ds);
		if (q)
			fprintf(f, "cluster_size: %u\n", info.cluster_size);
		if (info.dirty)
			fprintf(f, "cleanly shut down: no\n");
		if (info.backing_file[0]) {
			fprintf(f, "backing file: %s", info.backing_file);
			if (strcmp(full, info.backing_file))
				fprintf(f, " (actual path: %s)", full);
			fprintf(f, "\n");
			if (info.backing_format[0])
				fprintf(f, "backing file format: %s\n", info.backing_format);
		}
		if (nsn) {
			fprintf(f, "Snapshot list:\n");
			img_snapshot_table(f, sn, nsn);
		}
		if (q) {
			fprintf(f, "Format specific information:\n");
			fprintf(f, "    compat: %s\n", compat);
			fprintf(f, "    compression type: %s\n", ctype);
			if (info.qcow2_version >= 3)
				fprintf(f, "    lazy refcounts: %s\n", info.lazy_refcounts ? "true" : "false");
			fprintf(f, "    refcount bits: %u\n", info.refcount_bits);
			if (info.qcow2_version >= 3) {
				fprintf(f, "    corrupt: %s\n", info.corrupt ? "true" : "false");
				fprintf(f, "    extended l2: %s\n", info.extended_l2 ? "true" : "false");
			}
		}
	} else {
		fprintf(f, "%s{\n", ind);
		if (nsn)
			json_snapshots(f, ind, sn, nsn);
		if (info.backing_format[0] && info.backing_file[0]) {
			fprintf(f, "%s    \"backing-filename-format\": ", ind);
			img_json_str(f, info.backing_format);
			fprintf(f, ",\n");
		}
		fprintf(f, "%s    \"virtual-size\": %" PRIu64 ",\n", ind, info.virtual_size);
		fprintf(f, "%s    \"filename\": ", ind);
		img_json_str(f, name);
		fprintf(f, ",\n");
		if (q)
			fprintf(f, "%s    \"cluster-size\": %u,\n", ind, info.cluster_size);
		fprintf(f, "%s    \"format\": \"%s\",\n", ind, fmt);
		fprintf(f, "%s    \"actual-size\": %" PRIu64 ",\n", ind, info.actual_size);
		if (q) {
			fprintf(f, "%s    \"format-specific\": {\n", ind);
			fprintf(f, "%s        \"type\": \"qcow2\",\n", ind);
			fprintf(f, "%s        \"data\": {\n", ind);
			fprintf(f, "%s            \"compat\": \"%s\",\n", ind, compat);
			fprintf(f, "%s            \"compression-type\": \"%s\",\n", ind, ctype);
			if (info.qcow2_version >= 3)
				fprintf(f, "%s            \"lazy-refcounts\": %s,\n", ind,
					info.lazy_refcounts ? "true" : "false");
			fprintf(f, "%s            \"refcount-bits\": %u%s\n", ind, info.refcount_bits,
				info.qcow2_version >= 3 ? "," : "");
			if (info.qcow2_version >= 3) {
				fprintf(f, "%s            \"corrupt\": %s,\n", ind, info.corrupt ? "true" : "false");
				fprintf(f, "%s            \"extended-l2\": %s\n", ind,
					info.extended_l2 ? "true" : "false");
			}
			fprintf(f, "%s        }\n", ind);
			fprintf(f, "%s    },\n", ind);
		}
		if (info.backing_file[0]) {
			fprintf(f, "%s    \"full-backing-filename\": ", ind);
			img_json_str(f, full);
			fprintf(f, ",\n%s    \"backing-filename\": ", ind);
			img_json_str(f, info.backing_file);
			fprintf(f, ",\n");
		}
		fprintf(f, "%s    \"dirty-flag\": %s\n", ind, info.dirty ? "true" : "false");
		fprintf(f, "%s}", ind);
	}
	qcow2_snapshot_list_free(sn, nsn);
	return 0;
}

int img_info(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "output", required_argument, NULL, 'O' },
		{ "backing-chain", no_argument, NULL, 'B' },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = NULL;
	enum img_output out = IMG_OUT_HUMAN;
	bool chain = false;
	int c;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:U", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help(stdout, "info");
			return 0;
		case 'f': fmt = optarg; break;
		case 'O':
			if (img_parse_output(optarg, &out))
				return IMG_EXIT_ERR;
			break;
		case 'B': chain = true; break;
		case 'U': break;
		default:
			return img_bad_option("info", c, argv);
		}
	}
	if (fmt && img_check_format(fmt))
		return IMG_EXIT_ERR;
	if (optind >= argc)
		return img_usage_error("info", "FILE is required");
	if (argc - optind > 1)
		return img_usage_error("info", "too many arguments");
	const char *file = argv[optind];

	struct image *img = img_open(file, fmt, chain ? 0 : IMG_OPEN_NO_BACKING);
	if (!img)
		return IMG_EXIT_ERR;
	int ret = 0;
	if (!chain) {
		if (describe(stdout, img, file, out, "") < 0)
			ret = IMG_EXIT_ERR;
		else if (out == IMG_OUT_JSON)
			printf("\n");
	} else {
		if (out == IMG_OUT_JSON)
			printf("[\n");
		for (struct image *l = img; l; l = image_backing(l)) {
			char name[PATH_MAX];
			img_layer_name(img, file, l, name, sizeof(name));
			if (l != img)
				printf(out == IMG_OUT_JSON ? ",\n" : "\n");
			if (describe(stdout, l, name, out, out == IMG_OUT_JSON ? "    " : "") < 0) {
				ret = IMG_EXIT_ERR;
				break;
			}
		}
		if (out == IMG_OUT_JSON)
			printf("\n]\n");
	}
	image_close(img);
	return ret;
}
