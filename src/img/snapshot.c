/* `kestrel img snapshot`: qcow2 internal snapshots. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "block/image_ext.h"
#include "img/img.h"

enum snap_action { SNAP_LIST, SNAP_CREATE, SNAP_APPLY, SNAP_DELETE };

int img_snapshot(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	const char *fmt = NULL, *name = NULL;
	enum snap_action action = SNAP_LIST;
	bool have_action = false, quiet = false;
	int c;

	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hf:lc:a:d:qU", longopts, NULL)) != -1) {
		enum snap_action a;
		switch (c) {
		case 'h':
			img_help(stdout, "snapshot");
			return 0;
		case 'f': fmt = optarg; continue;
		case 'q': quiet = true; continue;
		case 'U': continue;
		case 'l': a = SNAP_LIST; break;
		case 'c': a = SNAP_CREATE; break;
		case 'a': a = SNAP_APPLY; break;
		case 'd': a = SNAP_DELETE; break;
		default:
			return img_bad_option("snapshot", c, argv);
		}
		if (have_action)
			return img_usage_error("snapshot", "give only one of -l, -c, -a, -d");
		have_action = true;
		action = a;
		name = a == SNAP_LIST ? NULL : optarg;
	}
	if (fmt && img_check_format(fmt))
		return IMG_EXIT_ERR;
	if (optind >= argc)
		return img_usage_error("snapshot", "FILE is required");
	if (argc - optind > 1)
		return img_usage_error("snapshot", "too many arguments");
	const char *file = argv[optind];
	if (name && !name[0]) {
		img_err("%s: a snapshot name cannot be empty", file);
		return IMG_EXIT_ERR;
	}

	struct image *img = img_open(file, fmt, IMG_OPEN_NO_BACKING | (action == SNAP_LIST ? 0 : IMG_OPEN_RW));
	if (!img)
		return IMG_EXIT_ERR;
	int ret = IMG_EXIT_ERR, r;
	char err[PATH_MAX + 256] = "";
	if (image_format(img) != IMAGE_QCOW2) {
		img_err("%s: format raw has no internal snapshots (they need qcow2)", file);
		goto out;
	}
	switch (action) {
	case SNAP_LIST: {
		struct qcow2_snapshot *sn = NULL;
		unsigned n = 0;
		r = qcow2_snapshot_list(img, &sn, &n);
		if (r < 0) {
			img_err("%s: cannot read the snapshot table: %s", file, strerror(-r));
			goto out;
		}
		if (n) {
			printf("Snapshot list:\n");
			img_snapshot_table(stdout, sn, n);
		}
		qcow2_snapshot_list_free(sn, n);
		break;
	}
	case SNAP_CREATE:
		r = qcow2_snapshot_create(img, name, err, sizeof(err));
		if (r == 0)
			r = image_flush(img);
		if (r < 0) {
			if (r == -EEXIST && !err[0])
				img_err("%s: could not create snapshot '%s': the name is in use", file, name);
			else
				img_err_lib(err, NULL, file, "could not create the snapshot", r);
			goto out;
		}
		break;
	case SNAP_APPLY:
		r = qcow2_snapshot_apply(img, name, err, sizeof(err));
		if (r == 0)
			r = image_flush(img);
		if (r < 0) {
			if (r == -ENOENT && !err[0])
				img_err("%s: could not apply snapshot '%s': there is no such snapshot", file, name);
			else
				img_err_lib(err, NULL, file, "could not apply the snapshot", r);
			goto out;
		}
		break;
	case SNAP_DELETE:
		r = qcow2_snapshot_delete(img, name, err, sizeof(err));
		if (r == 0)
			r = image_flush(img);
		if (r < 0) {
			if (r == -ENOENT && !err[0])
				img_err("%s: could not delete snapshot '%s': there is no such snapshot", file, name);
			else
				img_err_lib(err, NULL, file, "could not delete the snapshot", r);
			goto out;
		}
		break;
	}
	(void)quiet;
	ret = 0;
out:
	image_close(img);
	return ret;
}
