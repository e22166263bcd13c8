/* qtool: a small command-line driver of the image/qcow2 API for the
 * shell tests in tests/qcow2 (interop with qemu-img, crash tests).
 *
 *   qtool create FILE SIZE [cluster_size=N] [compat=0.10|1.1] [backing=F]
 *                [backing_fmt=F] [compression_type=zlib|zstd] [refcount_bits=N]
 *                [lazy_refcounts=on] [extended_l2=on] [preallocation=M]
 *   qtool dump FILE OUT [fmt]         read the whole image (chain) into a raw file
 *   qtool convert SRC DST [-c] [opts] copy SRC into a new qcow2 DST (-c: compressed)
 *   qtool check FILE [leaks|all]      exit 0 clean, 2 corruptions, 3 leaks only, 1 error
 *   qtool info FILE
 *   qtool snap FILE create|apply|delete|list [NAME]
 *   qtool resize FILE SIZE [shrink]
 *   qtool rebase-u FILE BACKING [FMT]
 *   qtool measure SIZE [opts]
 *   qtool map FILE
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/image.h"
#include "block/image_ext.h"
#include "block/qcow2.h"

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 0);
	switch (*end) {
	case 'k': case 'K': v <<= 10; break;
	case 'm': case 'M': v <<= 20; break;
	case 'g': case 'G': v <<= 30; break;
	default: break;
	}
	return v;
}

static void parse_opts(int argc, char **argv, struct qcow2_create_opts *o)
{
	for (int i = 0; i < argc; i++) {
		char *eq = strchr(argv[i], '=');
		if (!eq)
			continue;
		*eq = 0;
		const char *k = argv[i], *v = eq + 1;
		if (!strcmp(k, "cluster_size"))
			o->cluster_size = (uint32_t)parse_size(v);
		else if (!strcmp(k, "compat"))
			o->compat = v;
		else if (!strcmp(k, "backing"))
			o->backing_file = v;
		else if (!strcmp(k, "backing_fmt"))
			o->backing_fmt = v;
		else if (!strcmp(k, "compression_type"))
			o->compression_type = v;
		else if (!strcmp(k, "refcount_bits"))
			o->refcount_bits = (unsigned)atoi(v);
		else if (!strcmp(k, "lazy_refcounts"))
			o->lazy_refcounts = !strcmp(v, "on");
		else if (!strcmp(k, "extended_l2"))
			o->extended_l2 = !strcmp(v, "on");
		else if (!strcmp(k, "preallocation"))
			o->preallocation = v;
		else if (!strcmp(k, "size"))
			o->size = parse_size(v);
	}
}

static struct image *open_img(const char *path, const char *fmt, bool rw, unsigned flags)
{
	char err[1024];
	struct image_open_opts o = { .path = path, .format = fmt, .readonly = !rw, .allow_probed_backing = true };
	struct image *img = image_open_ext(&o, flags, err, sizeof(err));
	if (!img)
		fprintf(stderr, "qtool: %s\n", err);
	return img;
}

static void report(void *opaque, const char *line)
{
	(void)opaque;
	fprintf(stderr, "%s\n", line);
}

int main(int argc, char **argv)
{
	char err[1024];
	if (argc < 3) {
		fprintf(stderr, "usage: see the source\n");
		return 1;
	}
	const char *cmd = argv[1], *file = argv[2];
	if (!strcmp(cmd, "create")) {
		struct qcow2_create_opts o = { 0 };
		o.size = argc > 3 ? parse_size(argv[3]) : 0;
		parse_opts(argc - 4, argv + 4, &o);
		if (qcow2_create(file, &o, err, sizeof(err)) < 0) {
			fprintf(stderr, "qtool: %s\n", err);
			return 1;
		}
		return 0;
	}
	if (!strcmp(cmd, "measure")) {
		struct qcow2_create_opts o = { 0 };
		o.size = parse_size(file);
		parse_opts(argc - 3, argv + 3, &o);
		struct qcow2_measure m;
		if (qcow2_measure(&o, NULL, &m, err, sizeof(err)) < 0) {
			fprintf(stderr, "qtool: %s\n", err);
			return 1;
		}
		printf("required size: %llu\nfully allocated size: %llu\n", (unsigned long long)m.required,
		       (unsigned long long)m.fully_allocated);
		return 0;
	}
	if (!strcmp(cmd, "dump")) {
		if (argc < 4)
			return 1;
		struct image *img = open_img(file, argc > 4 ? argv[4] : NULL, false, 0);
		if (!img)
			return 1;
		int fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
		uint64_t size = image_size(img);
		size_t chunk = 1 << 20;
		char *buf = malloc(chunk);
		int rc = 0;
		for (uint64_t off = 0; off < size; off += chunk) {
			size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
			int r = image_read(img, off, buf, n);
			if (r < 0) {
				fprintf(stderr, "qtool: read at %llu: %s\n", (unsigned long long)off, strerror(-r));
				rc = 1;
				break;
			}
			if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n) {
				rc = 1;
				break;
			}
		}
		if (ftruncate(fd, (off_t)size) < 0)
			rc = 1;
		close(fd);
		free(buf);
		image_close(img);
		return rc;
	}
	if (!strcmp(cmd, "convert")) {
		if (argc < 4)
			return 1;
		bool comp = argc > 4 && !strcmp(argv[4], "-c");
		struct image *src = open_img(file, NULL, false, 0);
		if (!src)
			return 1;
		struct qcow2_create_opts o = { 0 };
		o.size = image_size(src);
		parse_opts(argc - 4, argv + 4, &o);
		if (qcow2_create(argv[3], &o, err, sizeof(err)) < 0) {
			fprintf(stderr, "qtool: %s\n", err);
			return 1;
		}
		struct image *dst = open_img(argv[3], "qcow2", true, 0);
		if (!dst)
			return 1;
		struct image_info info;
		image_get_info(dst, &info);
		size_t cs = info.cluster_size;
		char *buf = malloc(cs), *zero = calloc(1, cs);
		int rc = 0;
		for (uint64_t off = 0; off < o.size; off += cs) {
			size_t n = o.size - off < cs ? (size_t)(o.size - off) : cs;
			int r = image_read(src, off, buf, n);
			if (r == 0 && memcmp(buf, zero, n) == 0)
				continue;
			if (r == 0)
				r = comp ? image_write_compressed(dst, off, buf, n) : image_write(dst, off, buf, n);
			if (r < 0) {
				fprintf(stderr, "qtool: convert at %llu: %s\n", (unsigned long long)off, strerror(-r));
				rc = 1;
				break;
			}
		}
		free(buf);
		free(zero);
		image_close(src);
		image_close(dst);
		return rc;
	}
	if (!strcmp(cmd, "check")) {
		int fix = 0;
		if (argc > 3)
			fix = !strcmp(argv[3], "all") ? QCOW2_FIX_ALL : QCOW2_FIX_LEAKS;
		struct image *img = open_img(file, "qcow2", fix != 0, fix ? IMAGE_OPEN_CHECK : 0);
		if (!img)
			return 1;
		struct qcow2_check_result r = { .report = report };
		int ret = qcow2_check(img, fix, &r);
		image_close(img);
		if (ret < 0) {
			fprintf(stderr, "qtool: check: %s\n", strerror(-ret));
			return 1;
		}
		printf("corruptions=%lld leaks=%lld check_errors=%lld fixed_corruptions=%lld fixed_leaks=%lld "
		       "end=%llu allocated=%llu/%llu fragmented=%llu compressed=%llu\n",
		       (long long)r.corruptions, (long long)r.leaks, (long long)r.check_errors,
		       (long long)r.corruptions_fixed, (long long)r.leaks_fixed,
		       (unsigned long long)r.image_end_offset, (unsigned long long)r.allocated_clusters,
		       (unsigned long long)r.total_clusters, (unsigned long long)r.fragmented_clusters,
		       (unsigned long long)r.compressed_clusters);
		if (r.check_errors)
			return 1;
		if (r.corruptions)
			return 2;
		if (r.leaks)
			return 3;
		return 0;
	}
	if (!strcmp(cmd, "info")) {
		struct image *img = open_img(file, NULL, false, 0);
		if (!img)
			return 1;
		struct image_info i;
		image_get_info(img, &i);
		printf("format=%s size=%llu actual=%llu cluster=%u version=%d refbits=%u lazy=%d corrupt=%d dirty=%d "
		       "extl2=%d comp=%s backing=%s backing_fmt=%s snapshots=%u\n",
		       i.format == IMAGE_QCOW2 ? "qcow2" : "raw", (unsigned long long)i.virtual_size,
		       (unsigned long long)i.actual_size, i.cluster_size, i.qcow2_version, i.refcount_bits,
		       i.lazy_refcounts, i.corrupt, i.dirty, i.extended_l2, i.compression_type ? i.compression_type : "-",
		       i.backing_file, i.backing_format, i.nr_snapshots);
		image_close(img);
		return 0;
	}
	if (!strcmp(cmd, "snap")) {
		if (argc < 4)
			return 1;
		bool list = !strcmp(argv[3], "list");
		struct image *img = open_img(file, "qcow2", !list, 0);
		if (!img)
			return 1;
		int r = 0;
		if (list) {
			struct qcow2_snapshot *s;
			unsigned n;
			r = qcow2_snapshot_list(img, &s, &n);
			for (unsigned k = 0; r == 0 && k < n; k++)
				printf("%s %s %llu %u\n", s[k].id, s[k].name, (unsigned long long)s[k].disk_size,
				       s[k].date_sec);
			if (r == 0)
				qcow2_snapshot_list_free(s, n);
		} else if (argc > 4 && !strcmp(argv[3], "create")) {
			r = qcow2_snapshot_create(img, argv[4], err, sizeof(err));
		} else if (argc > 4 && !strcmp(argv[3], "apply")) {
			r = qcow2_snapshot_apply(img, argv[4], err, sizeof(err));
		} else if (argc > 4 && !strcmp(argv[3], "delete")) {
			r = qcow2_snapshot_delete(img, argv[4], err, sizeof(err));
		}
		if (r < 0)
			fprintf(stderr, "qtool: %s\n", list ? strerror(-r) : err);
		image_close(img);
		return r < 0;
	}
	if (!strcmp(cmd, "resize")) {
		if (argc < 4)
			return 1;
		struct image *img = open_img(file, NULL, true, 0);
		if (!img)
			return 1;
		int r = image_resize(img, parse_size(argv[3]), argc > 4);
		if (r < 0)
			fprintf(stderr, "qtool: resize: %s\n", strerror(-r));
		image_close(img);
		return r < 0;
	}
	if (!strcmp(cmd, "rebase-u")) {
		if (argc < 4)
			return 1;
		struct image *img = open_img(file, "qcow2", true, 0);
		char err2[1];
		(void)err2;
		if (!img)
			return 1;
		int r = qcow2_set_backing(img, argv[3], argc > 4 ? argv[4] : NULL);
		if (r < 0)
			fprintf(stderr, "qtool: rebase: %s\n", strerror(-r));
		image_close(img);
		return r < 0;
	}
	if (!strcmp(cmd, "map")) {
		struct image *img = open_img(file, NULL, false, 0);
		if (!img)
			return 1;
		uint64_t size = image_size(img);
		for (uint64_t off = 0; off < size;) {
			uint64_t pnum, host;
			unsigned flags;
			int r = image_block_status(img, off, size - off, &pnum, &flags, &host);
			if (r < 0 || !pnum) {
				fprintf(stderr, "qtool: map: %s\n", strerror(-r));
				return 1;
			}
			printf("%llu %llu %x %lld\n", (unsigned long long)off, (unsigned long long)pnum, flags,
			       host == UINT64_MAX ? -1LL : (long long)host);
			off += pnum;
		}
		image_close(img);
		return 0;
	}
	fprintf(stderr, "qtool: unknown command %s\n", cmd);
	return 1;
}
