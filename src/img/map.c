/* `kestrel img map`: where each range of an image comes from, in
 * qemu-img map's human and JSON layouts. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "block/image_ext.h"
#include "img/img.h"

struct map_entry {
	uint64_t start, length;
	int depth;
	bool present, zero, data, compressed, has_offset;
	uint64_t offset;
	int layer;              /* index into the names */
};

static bool mergeable(const struct map_entry *a, const struct map_entry *b)
{
	if (!a->length)
		return false;
	if (a->zero != b->zero || a->data != b->data || a->compressed != b->compressed ||
	    a->depth != b->depth || a->present != b->present || a->has_offset != b->has_offset)
		return false;
	if (a->layer != b->layer)
		return false;
	if (a->has_offset && a->offset + a->length != b->offset)
		return false;
	return true;
}

#define MAP_MAX_DEPTH 64

static void dump(const struct map_entry *e, enum img_output out, bool first, char (*names)[PATH_MAX])
{
	if (out == IMG_OUT_HUMAN) {
		if (e->data && e->has_offset)
			printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length, e->offset,
			       names[e->layer]);
		return;
	}
	printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, \"present\": %s, "
	       "\"zero\": %s, \"data\": %s, \"compressed\": %s",
	       first ? "" : ",\n", e->start, e->length, e->depth, e->present ? "true" : "false",
	       e->zero ? "true" : "false", e->data ? "true" : "false", e->compressed ? "true" : "false");
	if (e->has_offset)
		printf(", \"offset\": %" PRIu64, e->offset);
	printf("}");
}

/* Like qemu, look into the file under a qcow2 data range: holes there
 * (preallocation=metadata, falloc) read as zeroes. Shortens *len to one
 * kind of extent. */
struct host_file {
	int fd;
	uint64_t data_start, data_end;  /* the last data extent lseek found */
};

static bool host_zero(struct host_file *hf, uint64_t host, uint64_t *len)
{
	int fd = hf->fd;
	if (fd < 0)
		return false;
	if (host >= hf->data_start && host < hf->data_end) {
		if (hf->data_end - host < *len)
			*len = hf->data_end - host;
		return false;
	}
	off_t d = lseek(fd, (off_t)host, SEEK_DATA);
	if (d < 0)
		return errno == ENXIO;  /* a hole up to the end of the file */
	if ((uint64_t)d > host) {
		if ((uint64_t)d - host < *len)
			*len = (uint64_t)d - host;
		return true;
	}
	off_t h = lseek(fd, (off_t)host, SEEK_HOLE);
	if (h > (off_t)host) {
		hf->data_start = host;
		hf->data_end = (uint64_t)h;
		if ((uint64_t)h - host < *len)
			*len = (uint64_t)h - host;
	}
	return false;
}

int img_map(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "output", required_argument, NULL, 'O' },
		{ "start-offset", required_argument, NULL, 's' },
		{ "max-length", required_argument, NULL, 'l' },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = NULL;
	enum img_output out = IMG_OUT_HUMAN;
	uint64_t start = 0, max_len = UINT64_MAX;
	int c;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:U", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help(stdout, "map");
			return 0;
		case 'f': fmt = optarg; break;
		case 'O':
			if (img_parse_output(optarg, &out))
				return IMG_EXIT_ERR;
			break;
		case 's':
			if (img_parse_size(optarg, &start)) {
				img_err("map: --start-offset '%s' is not an offset", optarg);
				return IMG_EXIT_ERR;
			}
			break;
		case 'l':
			if (img_parse_size(optarg, &max_len)) {
				img_err("map: --max-length '%s' is not a length", optarg);
				return IMG_EXIT_ERR;
			}
			break;
		case 'U': break;
		default:
			return img_bad_option("map", c, argv);
		}
	}
	if (fmt && img_check_format(fmt))
		return IMG_EXIT_ERR;
	if (optind >= argc)
		return img_usage_error("map", "FILE is required");
	if (argc - optind > 1)
		return img_usage_error("map", "too many arguments");
	const char *file = argv[optind];

	struct image *img = img_open(file, fmt, 0);
	if (!img)
		return IMG_EXIT_ERR;
	uint64_t size = image_size(img), end = size;
	if (start > size)
		start = size;
	if (max_len < end - start)
		end = start + max_len;

	static char names[MAP_MAX_DEPTH][PATH_MAX];
	struct host_file hf[MAP_MAX_DEPTH];
	int depth = 0;
	for (struct image *l = img; l && depth < MAP_MAX_DEPTH; l = image_backing(l), depth++) {
		img_layer_name(img, file, l, names[depth], sizeof(names[depth]));
		hf[depth].fd = image_format(l) == IMAGE_QCOW2 ? open(image_path(l), O_RDONLY | O_CLOEXEC) : -1;
		hf[depth].data_start = hf[depth].data_end = 0;
	}
	if (out == IMG_OUT_HUMAN)
		printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
	else
		printf("[");
	struct map_entry cur = { 0 };
	bool first = true;
	int ret = 0;
	for (uint64_t off = start; off < end;) {
		struct img_status st;
		int r = img_chain_status(img, NULL, off, end - off, &st);
		if (r < 0) {
			fflush(stdout);
			img_err("%s: cannot read the allocation status at offset %" PRIu64 ": %s", file, off,
				strerror(-r));
			ret = IMG_EXIT_ERR;
			break;
		}
		struct map_entry e = {
			.start = off,
			.length = st.len,
			.depth = st.depth,
			.present = st.present,
			.zero = !!(st.flags & IMAGE_BS_ZERO),
			.data = !!(st.flags & IMAGE_BS_DATA),
			.compressed = !!(st.flags & IMAGE_BS_COMPRESSED),
			.layer = st.depth < MAP_MAX_DEPTH ? st.depth : MAP_MAX_DEPTH - 1,
		};
		if (st.present && st.host_off != UINT64_MAX && !e.compressed) {
			e.has_offset = true;
			e.offset = st.host_off;
			if (e.data && st.depth < depth && host_zero(&hf[st.depth], st.host_off, &e.length)) {
				e.zero = true;
				st.len = e.length;
			}
		}
		if (mergeable(&cur, &e)) {
			cur.length += e.length;
		} else {
			if (cur.length) {
				dump(&cur, out, first, names);
				first = false;
			}
			cur = e;
		}
		off += st.len;
	}
	if (ret == 0 && cur.length)
		dump(&cur, out, first, names);
	if (out == IMG_OUT_JSON)
		printf("]\n");
	for (int i = 0; i < depth; i++)
		if (hf[i].fd >= 0)
			close(hf[i].fd);
	image_close(img);
	return ret;
}
