/*
 * keelctl's command line: exit codes, fatal errors, option parsing on top of
 * getopt_long, positional-argument checks, verb dispatch and value parsers.
 *
 * Every usage mistake (unknown option, missing value, value given to a flag, missing or
 * stray argument) prints a message naming the culprit, then the command's help, on
 * stderr and exits KEELCTL_EXIT_USAGE. Functions named keelctl_die* never return.
 * Single-threaded program: nothing here is thread-safe.
 */
#ifndef KEEL_KEELCTL_ARGS_H
#define KEEL_KEELCTL_ARGS_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#define KEELCTL_EXIT_FAIL 1  /**< keeld refused, or could not be reached */
#define KEELCTL_EXIT_USAGE 2 /**< the command line is wrong */

/** Option id of -h/--help in every command's table; keelctl_getopt_next handles it. */
#define KEELCTL_OPT_HELP 'h'
/** The --help entry every struct option table of a command ends with (before {0}). */
#define KEELCTL_HELP_OPTION                                 \
	{                                                   \
		"help", no_argument, NULL, KEELCTL_OPT_HELP \
	}

/** What every command learns from the global options. */
struct keelctl_ctx {
	bool json; /**< --json: print keeld's JSON result instead of tables */
};

/** Print "keelctl: MESSAGE" on stderr and exit with \p status. */
void keelctl_die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

/** Print "keelctl: MESSAGE" and \p help on stderr, exit KEELCTL_EXIT_USAGE. */
void keelctl_die_usage(const char *help, const char *fmt, ...)
	__attribute__((format(printf, 2, 3), noreturn));

/** Print \p help on stdout and exit 0 (the user asked for it). */
void keelctl_help(const char *help) __attribute__((noreturn));

/** One command line being parsed; fields are read-only for callers. */
struct keelctl_getopt {
	int argc;
	char **argv;           /**< argv[0] names the command (group or verb) */
	const char *shortopts; /**< getopt's string, built from longopts */
	const struct option *longopts;
	const char *help;  /**< shown with -h/--help and after a usage mistake */
	const char *value; /**< the current option's value (NULL for a flag) */
	char shortbuf[32];
	char **pos; /**< positional arguments, after keelctl_getopt_next returned -1 */
	int npos;
};

/**
 * Start parsing \p argv (argv[0] is the command's own name, skipped) against
 * \p longopts, which ends with KEELCTL_HELP_OPTION and a zero entry. Options and
 * positional arguments may be mixed; "--" ends the options. Entries whose id is a
 * printable character also get that short option (-h, -w). \p stop_at_positional:
 * options end at the first positional argument (the global options, and `rpc`, whose
 * JSON may start with '-').
 */
void keelctl_getopt_init(struct keelctl_getopt *g, int argc, char **argv,
			 const struct option *longopts, const char *help, bool stop_at_positional);

/**
 * \return the id of the next option (its value in g->value), or -1 when the options
 * are done: then g->pos and g->npos hold the positional arguments. Handles --help
 * itself and exits on every usage mistake, naming the option.
 */
int keelctl_getopt_next(struct keelctl_getopt *g);

/** Exit with a usage error unless \p min <= g->npos <= \p max. */
void keelctl_need_pos(const struct keelctl_getopt *g, int min, int max);

/**
 * For a command without options of its own: parse \p argv (only --help is known) and
 * check that it has \p min to \p max positional arguments, then in g->pos.
 */
void keelctl_getopt_positionals(struct keelctl_getopt *g, int argc, char **argv, const char *help,
				int min, int max);

/** One verb of a command group. */
struct keelctl_verb {
	const char *name;
	const char *alias; /**< another spelling (ls, rm, get), or NULL */
	/** argv[0] is the verb; \return the exit status. */
	int (*fn)(const struct keelctl_ctx *ctx, int argc, char **argv);
};

/**
 * Run the verb argv[1] of group argv[0] from \p verbs (\p nverbs entries). No verb:
 * \p help on stderr, exit 2; -h, --help or help: \p help on stdout, exit 0; an unknown
 * verb: "unknown GROUP command 'VERB'", exit 2. \return the verb's exit status.
 */
int keelctl_dispatch(const struct keelctl_ctx *ctx, int argc, char **argv,
		     const struct keelctl_verb *verbs, int nverbs, const char *help);

/**
 * "64M" -> 67108864: bytes with an optional K, M, G or T suffix (powers of 1024),
 * optionally followed by B or iB. \return 0, or -EINVAL for anything else, zero or
 * an overflow.
 */
int keelctl_parse_size(const char *text, uint64_t *out);

/** \p text as a decimal uint32; exits with a usage error naming \p what otherwise. */
uint32_t keelctl_parse_u32(const char *text, const char *what);

/**
 * \p path as a JSON string, made absolute against the current directory (keeld runs
 * in /). Exits with a usage error when the result is longer than PATH_MAX.
 */
json_t *keelctl_abs_path(const char *path);

#endif /* KEEL_KEELCTL_ARGS_H */
