/* `kestrel run` option parsing: pure, so every error message is tested. */
#ifndef KESTREL_CLI_OPTS_H
#define KESTREL_CLI_OPTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/config.h"

enum run_opts_result {
	RUN_OPTS_OK,      /* cfg is filled in */
	RUN_OPTS_HELP,    /* --help was given */
	RUN_OPTS_VERSION, /* --version was given */
	RUN_OPTS_ERROR,   /* err holds one line naming the bad value */
};

/* Parses argv (argv[0] is the verb). Strings in cfg point into argv. */
enum run_opts_result run_opts_parse(int argc, char **argv, struct vm_config *cfg, char *err, size_t errlen);

/* Parses a memory size: a number with an optional K/M/G/T suffix (binary
 * units; no suffix means MiB, as in QEMU's -m). Returns 0 or -1. */
int parse_size(const char *text, uint64_t *out);

void run_opts_usage(FILE *f);

#endif
