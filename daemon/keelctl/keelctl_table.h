/*
 * keelctl's output: aligned text tables, the cell formatters the commands share, and
 * the --json printer. Single-threaded; out of memory exits with status 1.
 */
#ifndef KEEL_KEELCTL_TABLE_H
#define KEEL_KEELCTL_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define KEELCTL_TABLE_MAX_COLS 10

/**
 * A table being filled: set ncols (at most KEELCTL_TABLE_MAX_COLS), add rows (the first
 * is the header), then print or free it. Reusable after either, with another ncols.
 */
struct keelctl_table {
	int ncols;
	int nrows;
	char **cells; /* nrows * ncols, copies */
};

/** Append a row of t->ncols strings (const char *); NULL prints as "-". */
void keelctl_table_row(struct keelctl_table *t, ...);

/** Print the rows with columns padded to their widest cell, then free them. */
void keelctl_table_print(struct keelctl_table *t);

/** Free the rows without printing (the table was empty apart from its header). */
void keelctl_table_free(struct keelctl_table *t);

/**
 * Print the table, or only the line \p empty (what to do instead) when no row followed
 * the header. Frees the rows either way.
 */
void keelctl_table_print_or(struct keelctl_table *t, const char *empty);

/** \p bytes as "64 MiB" or "1.5 GiB" into \p buf. */
void keelctl_human_size(uint64_t bytes, char *buf, size_t len);

/** JSON integer \p v in decimal, into \p buf. \return buf. */
const char *keelctl_fmt_int(char *buf, size_t len, json_t *v);

/** JSON number \p v with one decimal and \p suffix, into \p buf. \return buf. */
const char *keelctl_fmt_real(char *buf, size_t len, json_t *v, const char *suffix);

/** The string \p v, or "-" when it is not a string or empty. */
const char *keelctl_str_or_dash(json_t *v);

/** Print \p value as indented JSON on stdout (--json output). */
void keelctl_print_json(json_t *value);

/**
 * With --json (\p json true) print \p result, release it and return true; otherwise
 * return false and leave \p result to the caller's table.
 */
bool keelctl_print_json_if(bool json, json_t *result);

#endif /* KEEL_KEELCTL_TABLE_H */
