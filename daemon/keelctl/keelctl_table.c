/* keelctl's tables and cell formatting: what every command's plain-text output uses. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keelctl_args.h"
#include "keelctl_table.h"

void keelctl_table_row(struct keelctl_table *t, ...)
{
	va_list ap;
	int c;

	t->cells = realloc(t->cells, sizeof(char *) * (size_t)(t->nrows + 1) * (size_t)t->ncols);
	if (t->cells == NULL) {
		keelctl_die(KEELCTL_EXIT_FAIL, "out of memory");
	}
	va_start(ap, t);
	for (c = 0; c < t->ncols; c++) {
		const char *s = va_arg(ap, const char *);
		char *copy = strdup(s != NULL ? s : "-");

		if (copy == NULL) {
			keelctl_die(KEELCTL_EXIT_FAIL, "out of memory");
		}
		t->cells[t->nrows * t->ncols + c] = copy;
	}
	va_end(ap);
	t->nrows++;
}

void keelctl_table_free(struct keelctl_table *t)
{
	int i;

	for (i = 0; i < t->nrows * t->ncols; i++) {
		free(t->cells[i]);
	}
	free(t->cells);
	t->cells = NULL;
	t->nrows = 0;
}

void keelctl_table_print(struct keelctl_table *t)
{
	int width[KEELCTL_TABLE_MAX_COLS] = {0};
	int r, c;

	for (r = 0; r < t->nrows; r++) {
		for (c = 0; c < t->ncols; c++) {
			int w = (int)strlen(t->cells[r * t->ncols + c]);

			width[c] = w > width[c] ? w : width[c];
		}
	}
	for (r = 0; r < t->nrows; r++) {
		for (c = 0; c < t->ncols; c++) {
			const char *s = t->cells[r * t->ncols + c];

			if (c == t->ncols - 1) {
				printf("%s\n", s);
			} else {
				printf("%-*s  ", width[c], s);
			}
		}
	}
	keelctl_table_free(t);
}

void keelctl_table_print_or(struct keelctl_table *t, const char *empty)
{
	if (t->nrows <= 1) {
		printf("%s\n", empty);
		keelctl_table_free(t);
	} else {
		keelctl_table_print(t);
	}
}

void keelctl_human_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double v = (double)bytes;
	int u = 0;

	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u == 0 || v == (double)(uint64_t)v) {
		snprintf(buf, len, "%.0f %s", v, units[u]);
	} else {
		snprintf(buf, len, "%.1f %s", v, units[u]);
	}
}

const char *keelctl_fmt_int(char *buf, size_t len, json_t *v)
{
	snprintf(buf, len, "%lld", (long long)json_integer_value(v));
	return buf;
}

const char *keelctl_fmt_real(char *buf, size_t len, json_t *v, const char *suffix)
{
	snprintf(buf, len, "%.1f%s", json_real_value(v), suffix);
	return buf;
}

const char *keelctl_str_or_dash(json_t *v)
{
	const char *s = json_string_value(v);

	return s != NULL && s[0] != '\0' ? s : "-";
}

void keelctl_print_json(json_t *value)
{
	char *text = json_dumps(value, JSON_INDENT(2) | JSON_ENCODE_ANY);

	if (text != NULL) {
		puts(text);
		free(text);
	}
}

bool keelctl_print_json_if(bool json, json_t *result)
{
	if (!json) {
		return false;
	}
	keelctl_print_json(result);
	json_decref(result);
	return true;
}
