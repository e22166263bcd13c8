/* `kestrel img compare`: do two images read the same? qemu-img compare's
 * messages and exit statuses: 0 identical, 1 different, 2 error. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/image_ext.h"
#include "img/img.h"

#define CMP_CHUNK (2u << 20)
#define CMP_DIFFERENT 1
#define CMP_ERROR 2

struct cmp_side {
	struct image *img;
	const char *name;
	uint8_t *buf;
};

static int cmp_read(struct cmp_side *s, uint64_t off, uint64_t len)
{
	int r = image_read(s->img, off, s->buf, len);
	if (r < 0) {
		img_err("%s: read error at offset %" PRIu64 ": %s", s->name, off, strerror(-r));
		return -1;
	}
	return 0;
}

static int64_t first_nonzero(const uint8_t *buf, uint64_t len)
{
	for (uint64_t i = 0; i < len; i += 4096) {
		uint64_t n = len - i < 4096 ? len - i : 4096;
		if (img_is_zero(buf + i, n))
			continue;
		for (uint64_t j = i; j < i + n; j++)
			if (buf[j])
				return (int64_t)j;
	}
	return -1;
}

/* Offset (from buf start) of the first 512-byte sector that differs, or -1. */
static int64_t first_diff_sector(const uint8_t *a, const uint8_t *b, uint64_t len)
{
	for (uint64_t i = 0; i < len; i += 65536) {
		uint64_t n = len - i < 65536 ? len - i : 65536;
		if (!memcmp(a + i, b + i, n))
			continue;
		for (uint64_t j = i; j < i + n; j += 512) {
			uint64_t m = i + n - j < 512 ? i + n - j : 512;
			if (memcmp(a + j, b + j, m))
				return (int64_t)j;
		}
	}
	return -1;
}

static bool reads_zero(const struct img_status *st)
{
	return (st->flags & IMAGE_BS_ZERO) && !(st->flags & IMAGE_BS_DATA);
}

/* The part of `s` past the other image's end must read as zeroes. */
static int cmp_tail(struct cmp_side *s, uint64_t off, uint64_t end, bool quiet, struct img_progress *p,
		    uint64_t total)
{
	while (off < end) {
		struct img_status st;
		int r = img_chain_status(s->img, NULL, off, end - off, &st);
		if (r < 0) {
			img_err("%s: cannot read the allocation status at offset %" PRIu64 ": %s", s->name, off,
				strerror(-r));
			return CMP_ERROR;
		}
		uint64_t n = st.len < CMP_CHUNK ? st.len : CMP_CHUNK;
		if (!reads_zero(&st)) {
			if (cmp_read(s, off, n))
				return CMP_ERROR;
			int64_t i = first_nonzero(s->buf, n);
			if (i >= 0) {
				p->on = false;
				if (!quiet)
					printf("Content mismatch at offset %" PRIu64 "!\n", off + (uint64_t)i);
				return CMP_DIFFERENT;
			}
		}
		off += n;
		img_progress_update(p, off, total);
	}
	return 0;
}

static int cmp_run(struct cmp_side *a, struct cmp_side *b, bool strict, bool quiet, bool progress)
{
	uint64_t s1 = image_size(a->img), s2 = image_size(b->img);
	uint64_t common = s1 < s2 ? s1 : s2, total = s1 > s2 ? s1 : s2;
	struct img_progress p;

	if (strict && s1 != s2) {
		if (!quiet)
			printf("Strict mode: Image size mismatch!\n");
		return CMP_DIFFERENT;
	}
	img_progress_init(&p, progress);
	uint64_t off = 0;
	while (off < common) {
		struct img_status st1, st2;
		int r = img_chain_status(a->img, NULL, off, common - off, &st1);
		if (r < 0) {
			img_err("%s: cannot read the allocation status at offset %" PRIu64 ": %s", a->name, off,
				strerror(-r));
			return CMP_ERROR;
		}
		r = img_chain_status(b->img, NULL, off, st1.len, &st2);
		if (r < 0) {
			img_err("%s: cannot read the allocation status at offset %" PRIu64 ": %s", b->name, off,
				strerror(-r));
			return CMP_ERROR;
		}
		uint64_t n = st2.len < CMP_CHUNK ? st2.len : CMP_CHUNK;
		bool z1 = reads_zero(&st1), z2 = reads_zero(&st2);
		if (strict && (st1.present != st2.present || z1 != z2)) {
			p.on = false;
			if (!quiet)
				printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", off);
			return CMP_DIFFERENT;
		}
		if (z1 && z2) {
			/* both zero */
		} else if (st1.present == st2.present) {
			if (cmp_read(a, off, n) || cmp_read(b, off, n))
				return CMP_ERROR;
			int64_t i = first_diff_sector(a->buf, b->buf, n);
			if (i >= 0) {
				p.on = false;
				if (!quiet)
					printf("Content mismatch at offset %" PRIu64 "!\n", off + (uint64_t)i);
				return CMP_DIFFERENT;
			}
		} else {
			/* One side is unallocated everywhere: the other must be zeroes. */
			struct cmp_side *s = st1.present ? a : b;
			if (cmp_read(s, off, n))
				return CMP_ERROR;
			int64_t i = first_nonzero(s->buf, n);
			if (i >= 0) {
				p.on = false;
				if (!quiet)
					printf("Content mismatch at offset %" PRIu64 "!\n", off + (uint64_t)i);
				return CMP_DIFFERENT;
			}
		}
		off += n;
		img_progress_update(&p, off, total);
	}
	if (s1 != s2) {
		p.on = false;
		if (!quiet)
			printf("Warning: Image size mismatch!\n");
		p.on = progress && p.shown >= 0;
		int r = cmp_tail(s1 > s2 ? a : b, common, total, quiet, &p, total);
		if (r)
			return r;
	}
	img_progress_end(&p);
	if (!quiet)
		printf("Images are identical.\n");
	return 0;
}

int img_compare(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt1 = NULL, *fmt2 = NULL;
	bool strict = false, quiet = false, progress = false;
	unsigned flags = 0;
	int c;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:F:T:spqU", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help(stdout, "compare");
			return 0;
		case 'f': fmt1 = optarg; break;
		case 'F': fmt2 = optarg; break;
		case 'T':
			if (img_parse_cache(optarg, &flags))
				return CMP_ERROR;
			break;
		case 's': strict = true; break;
		case 'p': progress = true; break;
		case 'q': quiet = true; break;
		case 'U': break;
		default:
			img_bad_option("compare", c, argv);
			return CMP_ERROR;
		}
	}
	if ((fmt1 && img_check_format(fmt1)) || (fmt2 && img_check_format(fmt2)))
		return CMP_ERROR;
	if (argc - optind != 2) {
		img_usage_error("compare", "FILE1 and FILE2 are required");
		return CMP_ERROR;
	}
	if (quiet)
		progress = false;

	struct cmp_side a = { .name = argv[optind] }, b = { .name = argv[optind + 1] };
	int ret = CMP_ERROR;
	a.img = img_open(a.name, fmt1, flags);
	if (!a.img)
		goto out;
	b.img = img_open(b.name, fmt2, flags);
	if (!b.img)
		goto out;
	a.buf = img_alloc(CMP_CHUNK);
	b.buf = img_alloc(CMP_CHUNK);
	if (!a.buf || !b.buf)
		goto out;
	ret = cmp_run(&a, &b, strict, quiet, progress);
out:
	if (a.img)
		image_close(a.img);
	if (b.img)
		image_close(b.img);
	free(a.buf);
	free(b.buf);
	return ret;
}
