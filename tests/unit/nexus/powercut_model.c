/*
 * The per-block promise checked after a power cut (see powercut_model.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "powercut_model.h"

#define PC_MAGIC 0x6b65656c70637574ull /* "keelpcut" */

struct pc_write {
	uint64_t ack_seq; /* 0: not acknowledged (yet, or failed) */
	bool zero;
	bool fua;
};

struct pc_blocklist {
	uint32_t *h; /* write handles in issue order */
	uint32_t n, cap;
};

struct pc_model {
	uint32_t nblocks;
	struct pc_blocklist *blocks;
	struct pc_write *w;
	uint32_t nw, capw;
	uint64_t ack_seq; /* acknowledgements so far */
	uint64_t cover;   /* writes with ack_seq <= cover are durable */
};

struct pc_model *pc_model_new(uint32_t nblocks)
{
	struct pc_model *m = calloc(1, sizeof(*m));

	if (!m) {
		abort();
	}
	m->nblocks = nblocks;
	m->blocks = calloc(nblocks, sizeof(*m->blocks));
	if (!m->blocks) {
		abort();
	}
	return m;
}

void pc_model_free(struct pc_model *m)
{
	if (!m) {
		return;
	}
	for (uint32_t b = 0; b < m->nblocks; b++) {
		free(m->blocks[b].h);
	}
	free(m->blocks);
	free(m->w);
	free(m);
}

static void *pc_grow(void *p, uint32_t *cap, size_t elem)
{
	*cap = *cap ? *cap * 2 : 8;
	p = realloc(p, *cap * elem);
	if (!p) {
		abort();
	}
	return p;
}

uint32_t pc_write_issued(struct pc_model *m, uint32_t blk, uint32_t n, bool zero, bool fua)
{
	uint32_t h = m->nw;

	if (m->nw == m->capw) {
		m->w = pc_grow(m->w, &m->capw, sizeof(*m->w));
	}
	m->w[m->nw++] = (struct pc_write){.zero = zero, .fua = fua};
	for (uint32_t b = blk; b < blk + n && b < m->nblocks; b++) {
		struct pc_blocklist *l = &m->blocks[b];

		if (l->n == l->cap) {
			l->h = pc_grow(l->h, &l->cap, sizeof(*l->h));
		}
		l->h[l->n++] = h;
	}
	return h;
}

void pc_write_done(struct pc_model *m, uint32_t h, int status)
{
	if (status == 0) {
		m->w[h].ack_seq = ++m->ack_seq;
	}
}

uint64_t pc_flush_issued(struct pc_model *m)
{
	return m->ack_seq;
}

void pc_flush_done(struct pc_model *m, uint64_t cover, int status)
{
	if (status == 0 && cover > m->cover) {
		m->cover = cover;
	}
}

static bool pc_durable(const struct pc_model *m, uint32_t h)
{
	const struct pc_write *w = &m->w[h];

	return w->ack_seq && (w->fua || w->ack_seq <= m->cover);
}

uint64_t pc_durable_writes(const struct pc_model *m)
{
	uint64_t n = 0;

	for (uint32_t h = 0; h < m->nw; h++) {
		n += pc_durable(m, h);
	}
	return n;
}

void pc_fill(const struct pc_model *m, uint32_t h, uint32_t blk, uint8_t *buf)
{
	uint64_t *p = (uint64_t *)buf;

	(void)m;
	p[0] = PC_MAGIC;
	p[1] = h;
	p[2] = blk;
	for (uint32_t i = 3; i < PC_BLOCK / 8; i++) {
		p[i] = (h + 1) * 0x9e3779b97f4a7c15ull ^ ((uint64_t)blk << 20) ^ i;
	}
}

/* Which write a block holds: -1 zeroes, -2 garbage, else the handle. */
static int64_t pc_decode(uint32_t blk, const uint8_t *data)
{
	const uint64_t *p = (const uint64_t *)data;
	static uint8_t zero[PC_BLOCK];
	uint8_t want[PC_BLOCK];

	if (memcmp(data, zero, PC_BLOCK) == 0) {
		return -1;
	}
	if (p[0] != PC_MAGIC || p[2] != blk) {
		return -2;
	}
	pc_fill(NULL, (uint32_t)p[1], blk, want);
	return memcmp(want, data, PC_BLOCK) == 0 ? (int64_t)p[1] : -2;
}

bool pc_check_block(const struct pc_model *m, uint32_t blk, const uint8_t *data,
		    struct pc_check_stats *st)
{
	const struct pc_blocklist *l = &m->blocks[blk];
	int64_t v = pc_decode(blk, data);
	int64_t k = -1; /* index of the newest durable write in l */

	st->blocks++;
	for (int64_t i = (int64_t)l->n - 1; i >= 0; i--) {
		if (pc_durable(m, l->h[i])) {
			k = i;
			break;
		}
	}
	st->durable_blocks += k >= 0;
	if (v == -2) {
		st->garbage++;
		fprintf(stderr, "powercut: block %u holds data no write put there\n", blk);
		return false;
	}
	if (k < 0 && v == -1) {
		return true; /* initial zeroes */
	}
	for (uint32_t i = k < 0 ? 0 : (uint32_t)k; i < l->n; i++) {
		uint32_t h = l->h[i];

		if ((v == -1 && m->w[h].zero) || (v >= 0 && !m->w[h].zero && (uint32_t)v == h)) {
			return true;
		}
	}
	for (uint32_t i = 0; i < l->n; i++) {
		if (v >= 0 && (uint32_t)v == l->h[i] && !m->w[l->h[i]].zero) {
			st->lost++;
			fprintf(stderr,
				"powercut: block %u holds write %lld, older than durable write "
				"%u\n",
				blk, (long long)v, l->h[k]);
			return false;
		}
	}
	if (v == -1) {
		st->lost++;
		fprintf(stderr, "powercut: block %u holds zeroes, older than durable write %u\n",
			blk, l->h[k]);
		return false;
	}
	st->garbage++;
	fprintf(stderr, "powercut: block %u holds write %lld, which never wrote it\n", blk,
		(long long)v);
	return false;
}
