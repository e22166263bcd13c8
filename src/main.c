/* kestrel: a KVM virtual machine monitor. Dispatches to one verb. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"

struct verb {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
};

static const struct verb verbs[] = {
	{ "run", cmd_run, "boot a virtual machine" },
	{ "img", cmd_img, "create, inspect and convert disk images" },
};

static void usage(FILE *f)
{
	fprintf(f, "Usage: kestrel VERB [options]\n\nVerbs:\n");
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		fprintf(f, "  %-8s %s\n", verbs[i].name, verbs[i].help);
	fprintf(f, "\n`kestrel VERB --help` describes a verb's options.\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("kestrel %s\n", KESTREL_VERSION);
		return 0;
	}
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (!strcmp(argv[1], verbs[i].name))
			return verbs[i].fn(argc - 1, argv + 1);
	log_err("unknown verb '%s' (expected: run, img; see kestrel --help)", argv[1]);
	return 2;
}
