/*
 * keel-bench subcommands. Each takes the arguments after its name (argv[0] is the
 * subcommand) and returns the process exit code.
 */
#ifndef KEEL_BENCH_H
#define KEEL_BENCH_H

int bench_reactor_main(int argc, char **argv);
int bench_bdev_main(int argc, char **argv);

#endif /* KEEL_BENCH_H */
