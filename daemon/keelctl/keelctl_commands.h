/*
 * keelctl's command groups, one file each (keelctl_GROUP.c), run by keelctl.c. argv[0]
 * is the group's name and argv[1] its verb; each returns the process exit status or
 * exits itself (keelctl_args.h). Single-threaded.
 */
#ifndef KEEL_KEELCTL_COMMANDS_H
#define KEEL_KEELCTL_COMMANDS_H

#include "keelctl_args.h"

int keelctl_bdev_main(const struct keelctl_ctx *ctx, int argc, char **argv);
int keelctl_export_main(const struct keelctl_ctx *ctx, int argc, char **argv);
int keelctl_volume_main(const struct keelctl_ctx *ctx, int argc, char **argv);
int keelctl_replica_main(const struct keelctl_ctx *ctx, int argc, char **argv);
int keelctl_rebuild_main(const struct keelctl_ctx *ctx, int argc, char **argv);
int keelctl_reactor_main(const struct keelctl_ctx *ctx, int argc, char **argv);
int keelctl_rpc_main(const struct keelctl_ctx *ctx, int argc, char **argv);

#endif /* KEEL_KEELCTL_COMMANDS_H */
