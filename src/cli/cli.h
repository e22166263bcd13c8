/* The `kestrel` verbs. Each returns the process exit status. */
#ifndef KESTREL_CLI_H
#define KESTREL_CLI_H

int cmd_run(int argc, char **argv);
int cmd_img(int argc, char **argv);

#endif
