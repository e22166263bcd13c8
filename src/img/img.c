/* `kestrel img VERB ...`: dispatch and help. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "img/img.h"

struct img_verb {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
	const char *usage;
	const char *details;
};

static const struct img_verb img_verbs[] = {
	{ "create", img_create, "create a new image",
	  "create [-q] [-f FMT] [-o OPTIONS] [-b BACKING [-F BACKING_FMT]] [-u] FILE [SIZE]",
	  "Creates FILE (truncating an existing one) as an empty image of SIZE bytes\n"
	  "(suffixes k, M, G, T, P, E). Without SIZE, a backing file gives the size.\n"
	  "  -f FMT          raw (default) or qcow2\n"
	  "  -o OPTIONS      key=value,... creation options; '-o help' lists them:\n"
	  "                  size, cluster_size, compat, backing_file, backing_fmt,\n"
	  "                  compression_type, preallocation, lazy_refcounts,\n"
	  "                  refcount_bits, extended_l2\n"
	  "  -b BACKING      the new image is an overlay of BACKING (a name relative\n"
	  "                  to FILE's directory, as in qemu-img)\n"
	  "  -F BACKING_FMT  BACKING's format (default: detected from its content)\n"
	  "  -u              do not open BACKING (SIZE is then required)\n"
	  "  -q              quiet: no \"Formatting ...\" line\n" },
	{ "info", img_info, "show an image's format, sizes and properties",
	  "info [-f FMT] [--output=human|json] [--backing-chain] [-U] FILE",
	  "  -f FMT           raw or qcow2 (default: detected)\n"
	  "  --output=json    qemu-img's JSON layout\n"
	  "  --backing-chain  also describe every backing file\n"
	  "  -U               force share (accepted for compatibility)\n" },
	{ "check", img_check, "check (and repair) a qcow2 image's metadata",
	  "check [-q] [-f FMT] [-r leaks|all] [--output=human|json] [-U] FILE",
	  "  -r leaks   free leaked clusters; -r all: also repair refcount errors\n"
	  "Exit status: 0 no problems, 1 the check could not complete, 2 corruptions,\n"
	  "3 leaks only, 63 the format (raw) has nothing to check.\n" },
	{ "convert", img_convert, "copy an image to another format",
	  "convert [-q] [-p] [-n] [-c] [-f FMT] [-O FMT] [-o OPTIONS] [-B BACKING [-F BACKING_FMT]]\n"
	  "        [-S SPARSE_SIZE] [-t CACHE] [-T SRC_CACHE] [-U] SRC... DST",
	  "Copies SRC (several are concatenated) into a new image DST. DST is written\n"
	  "under a temporary name and renamed at the end: a failed conversion leaves\n"
	  "nothing behind (and an existing DST untouched).\n"
	  "  -O FMT          DST's format: raw (default) or qcow2\n"
	  "  -o OPTIONS      creation options for DST, as in create\n"
	  "  -c              compress the data clusters (qcow2; zlib unless\n"
	  "                  -o compression_type=zstd)\n"
	  "  -B BACKING      DST is an overlay of BACKING, holding only the clusters\n"
	  "                  whose content differs from it\n"
	  "  -F BACKING_FMT  BACKING's format (default: detected)\n"
	  "  -S SIZE         zero runs at least SIZE long stay unallocated (default 4k;\n"
	  "                  0 writes everything)\n"
	  "  -n              DST exists: write into it instead of creating it\n"
	  "  -t CACHE        DST cache mode: none, writeback, writethrough, directsync,\n"
	  "                  unsafe (the default, as in qemu-img: a raw DST is not\n"
	  "                  fdatasync'ed at the end)\n"
	  "  -T CACHE        SRC cache mode\n"
	  "  -p              progress bar (on a terminal)\n" },
	{ "resize", img_resize, "change an image's virtual size",
	  "resize [-q] [--shrink] [-f FMT] FILE [+|-]SIZE",
	  "  +SIZE/-SIZE grows/shrinks by SIZE; SIZE alone sets it.\n"
	  "  --shrink   allow making the image smaller (data past the new end is lost)\n" },
	{ "snapshot", img_snapshot, "list, create, apply or delete internal snapshots",
	  "snapshot [-q] [-f FMT] [-l | -c NAME | -a NAME | -d NAME] [-U] FILE",
	  "  -l        list the snapshots (the default)\n"
	  "  -c NAME   take a snapshot of the disk as it is now\n"
	  "  -a NAME   revert the disk to snapshot NAME (ID or name)\n"
	  "  -d NAME   delete snapshot NAME\n" },
	{ "commit", img_commit, "write an overlay's data into its backing file",
	  "commit [-q] [-p] [-d] [-f FMT] [-t CACHE] [-b BASE] FILE",
	  "Writes the data FILE defines into its backing file (or into BASE, a file\n"
	  "further down FILE's backing chain), then empties FILE.\n"
	  "  -d        keep FILE's data (do not empty it)\n"
	  "  -b BASE   commit into BASE; the images between FILE and BASE become\n"
	  "            invalid, so -b implies -d\n" },
	{ "rebase", img_rebase, "change an overlay's backing file",
	  "rebase [-q] [-p] [-u] [-f FMT] [-t CACHE] [-T SRC_CACHE] -b BACKING [-F BACKING_FMT] FILE",
	  "Makes BACKING (\"\" for none) FILE's backing file. Safe mode (the default)\n"
	  "copies into FILE every cluster that reads differently through the new\n"
	  "backing file, so FILE's content does not change.\n"
	  "  -u   unsafe: only rewrite the header (BACKING must hold the same data)\n" },
	{ "compare", img_compare, "compare two images' content",
	  "compare [-q] [-p] [-s] [-f FMT] [-F FMT] [-T SRC_CACHE] [-U] FILE1 FILE2",
	  "Exit status 0: same content; 1: different (the first differing offset is\n"
	  "printed); 2: error. Images of different sizes are equal when the larger\n"
	  "one's extra part reads as zeroes.\n"
	  "  -f FMT/-F FMT  formats of FILE1/FILE2\n"
	  "  -s             strict: sizes and allocation must match too\n" },
	{ "map", img_map, "show where an image's data comes from",
	  "map [-f FMT] [--output=human|json] [--start-offset=OFF] [--max-length=LEN] [-U] FILE",
	  "JSON entries: start, length, depth (0 = FILE, 1 = its backing, ...),\n"
	  "present, zero, data, compressed, offset (in the file holding the data).\n" },
	{ "measure", img_measure, "compute the size a new image needs",
	  "measure [--output=human|json] [-O FMT] [-o OPTIONS] (--size SIZE | [-f FMT] FILE)",
	  "Prints the file size a conversion to FMT (default raw) needs (\"required\n"
	  "size\") and the size with every cluster allocated.\n" },
};

#define NR_VERBS (sizeof(img_verbs) / sizeof(img_verbs[0]))

static void img_usage(FILE *f)
{
	fprintf(f, "Usage: kestrel img VERB [options]\n\n"
		   "Creates, inspects and converts raw and qcow2 disk images, with the\n"
		   "arguments, output and exit statuses of qemu-img.\n\nVerbs:\n");
	for (size_t i = 0; i < NR_VERBS; i++)
		fprintf(f, "  %-9s %s\n", img_verbs[i].name, img_verbs[i].summary);
	fprintf(f, "\n`kestrel img VERB --help` describes a verb.\n");
}

void img_help(FILE *f, const char *verb)
{
	for (size_t i = 0; i < NR_VERBS; i++) {
		if (strcmp(img_verbs[i].name, verb))
			continue;
		fprintf(f, "Usage: kestrel img %s\n\n%s: %s.\n%s", img_verbs[i].usage, verb,
			img_verbs[i].summary, img_verbs[i].details);
		return;
	}
}

int cmd_img(int argc, char **argv)
{
	if (argc < 2) {
		img_usage(stderr);
		return IMG_EXIT_ERR;
	}
	const char *v = argv[1];
	if (!strcmp(v, "--help") || !strcmp(v, "-h") || !strcmp(v, "help")) {
		img_usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < NR_VERBS; i++)
		if (!strcmp(v, img_verbs[i].name))
			return img_verbs[i].fn(argc - 1, argv + 1);
	img_err("unknown verb '%s' (expected one of: create, info, check, convert, resize, snapshot, "
		"commit, rebase, compare, map, measure)", v);
	return IMG_EXIT_ERR;
}
