/*
 * keelctl's command line on top of getopt_long. getopt's own messages are turned off
 * (opterr = 0) so every mistake is reported the same way, naming the option as typed,
 * followed by the command's help, with exit status 2.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keelctl_args.h"

static void keelctl_vwarn(const char *fmt, va_list ap)
{
	fputs("keelctl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void keelctl_die(int status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	keelctl_vwarn(fmt, ap);
	va_end(ap);
	exit(status);
}

void keelctl_die_usage(const char *help, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	keelctl_vwarn(fmt, ap);
	va_end(ap);
	fputs(help, stderr);
	exit(KEELCTL_EXIT_USAGE);
}

void keelctl_help(const char *help)
{
	fputs(help, stdout);
	exit(0);
}

void keelctl_getopt_init(struct keelctl_getopt *g, int argc, char **argv,
			 const struct option *longopts, const char *help, bool stop_at_positional)
{
	size_t n = 0;
	int i;

	memset(g, 0, sizeof(*g));
	g->argc = argc;
	g->argv = argv;
	g->longopts = longopts;
	g->help = help;
	/* '+' stops at the first positional; ':' reports a missing value apart. */
	if (stop_at_positional) {
		g->shortbuf[n++] = '+';
	}
	g->shortbuf[n++] = ':';
	for (i = 0; longopts[i].name != NULL && n + 3 < sizeof(g->shortbuf); i++) {
		int id = longopts[i].val;

		if (id > ' ' && id < 127 && longopts[i].flag == NULL) {
			g->shortbuf[n++] = (char)id;
			if (longopts[i].has_arg == required_argument) {
				g->shortbuf[n++] = ':';
			}
		}
	}
	g->shortbuf[n] = '\0';
	g->shortopts = g->shortbuf;
	/* 0, not 1: makes GNU getopt start afresh (keelctl parses twice: globals, command). */
	optind = 0;
	opterr = 0;
}

/*
 * The option getopt just refused, as typed and without "=VALUE", into \p buf. A long
 * option is the word before optind (getopt sets optopt to 0 for an unknown one, to its
 * id when a flag was given a value); a short one is optopt, as the word may be a
 * cluster such as -wx.
 */
static const char *keelctl_opt_text(const struct keelctl_getopt *g, bool missing_value, char *buf,
				    size_t len)
{
	const char *arg = optind > 0 && optind <= g->argc ? g->argv[optind - 1] : "";

	/* A missing value is always the last word, so that word is the option. */
	if (strncmp(arg, "--", 2) == 0 &&
	    (missing_value || optopt == 0 || optopt >= 256 || strchr(arg, '=') != NULL)) {
		snprintf(buf, len, "%.*s", (int)strcspn(arg, "="), arg);
	} else {
		snprintf(buf, len, "-%c", optopt > ' ' && optopt < 127 ? optopt : '?');
	}
	return buf;
}

/*
 * getopt_long accepts any unambiguous prefix (--wat for --watch); keelctl wants the
 * whole name, so that adding an option later never breaks a script that abbreviated.
 */
static void keelctl_refuse_abbreviation(const struct keelctl_getopt *g, int index)
{
	const char *name = g->longopts[index].name;
	const char *word = g->argv[optind - 1];

	/* A value given as the next word: the option is the word before it. */
	if (optarg != NULL && optarg == word && optind >= 2) {
		word = g->argv[optind - 2];
	}
	if (strncmp(word, "--", 2) == 0 && strcspn(word + 2, "=") != strlen(name)) {
		keelctl_die_usage(g->help, "unknown option '%.*s' (did you mean '--%s'?)",
				  (int)strcspn(word, "="), word, name);
	}
}

int keelctl_getopt_next(struct keelctl_getopt *g)
{
	int index = -1;
	char text[128];
	int c;

	c = getopt_long(g->argc, g->argv, g->shortopts, g->longopts, &index);
	if (c != -1 && c != '?' && c != ':' && index >= 0) {
		keelctl_refuse_abbreviation(g, index);
	}
	switch (c) {
	case -1:
		g->pos = g->argv + optind;
		g->npos = g->argc - optind;
		return -1;
	case KEELCTL_OPT_HELP:
		keelctl_help(g->help);
	case ':':
		keelctl_die_usage(g->help, "option '%s' needs a value",
				  keelctl_opt_text(g, true, text, sizeof(text)));
	case '?':
		/* getopt sets optopt to a known long option's id when it was given a value
		 * it does not take (--force=yes), and to 0 for an unknown one. */
		keelctl_opt_text(g, false, text, sizeof(text));
		if (optopt != 0 && strncmp(text, "--", 2) == 0 &&
		    strchr(g->argv[optind - 1], '=') != NULL) {
			keelctl_die_usage(g->help, "option '%s' takes no value", text);
		}
		keelctl_die_usage(g->help, "unknown option '%s'", text);
	default:
		g->value = optarg;
		return c;
	}
}

void keelctl_need_pos(const struct keelctl_getopt *g, int min, int max)
{
	if (g->npos < min) {
		keelctl_die_usage(g->help, "missing arguments");
	}
	if (g->npos > max) {
		keelctl_die_usage(g->help, "unexpected argument '%s'", g->pos[max]);
	}
}

void keelctl_getopt_positionals(struct keelctl_getopt *g, int argc, char **argv, const char *help,
				int min, int max)
{
	static const struct option help_only[] = {KEELCTL_HELP_OPTION, {0}};

	keelctl_getopt_init(g, argc, argv, help_only, help, false);
	while (keelctl_getopt_next(g) != -1) {
		/* only --help, which does not return */
	}
	keelctl_need_pos(g, min, max);
}

int keelctl_dispatch(const struct keelctl_ctx *ctx, int argc, char **argv,
		     const struct keelctl_verb *verbs, int nverbs, const char *help)
{
	const char *verb;
	int i;

	if (argc < 2) {
		fputs(help, stderr);
		exit(KEELCTL_EXIT_USAGE);
	}
	verb = argv[1];
	if (strcmp(verb, "-h") == 0 || strcmp(verb, "--help") == 0 || strcmp(verb, "help") == 0) {
		keelctl_help(help);
	}
	for (i = 0; i < nverbs; i++) {
		if (strcmp(verb, verbs[i].name) == 0 ||
		    (verbs[i].alias != NULL && strcmp(verb, verbs[i].alias) == 0)) {
			return verbs[i].fn(ctx, argc - 1, argv + 1);
		}
	}
	keelctl_die_usage(help, "unknown %s command '%s'", argv[0], verb);
}

int keelctl_parse_size(const char *text, uint64_t *out)
{
	unsigned long long v;
	char *end;
	unsigned shift = 0;

	if (text[0] < '0' || text[0] > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno != 0) {
		return -EINVAL;
	}
	switch (*end) {
	case 'k':
	case 'K':
		shift = 10;
		end++;
		break;
	case 'm':
	case 'M':
		shift = 20;
		end++;
		break;
	case 'g':
	case 'G':
		shift = 30;
		end++;
		break;
	case 't':
	case 'T':
		shift = 40;
		end++;
		break;
	default:
		break;
	}
	if (shift != 0 && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0)) {
		end += strlen(end);
	} else if (shift == 0 && strcmp(end, "B") == 0) {
		end++;
	}
	if (*end != '\0' || v == 0 || (shift != 0 && v > (UINT64_MAX >> shift))) {
		return -EINVAL;
	}
	*out = (uint64_t)v << shift;
	return 0;
}

uint32_t keelctl_parse_u32(const char *text, const char *what)
{
	unsigned long v;
	char *end;

	errno = 0;
	v = strtoul(text, &end, 10);
	if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || v > UINT32_MAX) {
		keelctl_die(KEELCTL_EXIT_USAGE, "%s '%s' is not a number", what, text);
	}
	return (uint32_t)v;
}

json_t *keelctl_abs_path(const char *path)
{
	char abs[PATH_MAX], cwd[PATH_MAX];

	if (path[0] == '/' || strstr(path, "://") != NULL) {
		return json_string(path); /* absolute, or a URI (a replica on an NBD server) */
	}
	if (getcwd(cwd, sizeof(cwd)) == NULL ||
	    (size_t)snprintf(abs, sizeof(abs), "%s/%s", cwd, path) >= sizeof(abs)) {
		keelctl_die(KEELCTL_EXIT_USAGE, "path too long: %s", path);
	}
	return json_string(abs);
}
