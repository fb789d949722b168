/*
 * What a volume may hold after a power cut: the promise of a block device with a
 * write cache, block by block (4 KiB), for the power-cut harness (powercut_ut.c).
 *
 * Writes to one block are never in flight together (the workload makes sure), so
 * they are ordered. A write is durable when it was acknowledged with FUA, or
 * acknowledged before a flush that completed was submitted. After the cut a block
 * may hold its last durable write or any write issued after it (acknowledged or
 * not, failed or not), and nothing else: older data is "lost", data no write put
 * there (or a torn block) is "garbage". Before any durable write, the initial zeroes
 * are allowed too. Every block of a write carries the write's id and its block
 * number, so a read tells exactly which write it holds.
 */
#ifndef KEEL_POWERCUT_MODEL_H
#define KEEL_POWERCUT_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#define PC_BLOCK 4096u

struct pc_model;

struct pc_check_stats {
	uint64_t blocks;         /* blocks checked */
	uint64_t durable_blocks; /* ... whose newest durable write was checked */
	uint64_t lost;           /* holds data older than its newest durable write */
	uint64_t garbage;        /* holds data never written there (or torn) */
};

struct pc_model *pc_model_new(uint32_t nblocks);
void pc_model_free(struct pc_model *m);

/* A write of \p n blocks at \p blk issued (\p zero: write_zeroes/unmap). \return its
 * handle; fill its buffer with pc_fill. */
uint32_t pc_write_issued(struct pc_model *m, uint32_t blk, uint32_t n, bool zero, bool fua);
/* Its completion. */
void pc_write_done(struct pc_model *m, uint32_t h, int status);
/* A flush submitted: \return what it covers (pass to pc_flush_done). */
uint64_t pc_flush_issued(struct pc_model *m);
void pc_flush_done(struct pc_model *m, uint64_t cover, int status);
/* Writes acknowledged so far that are durable. */
uint64_t pc_durable_writes(const struct pc_model *m);

/* The data of write \p h for its block \p blk (PC_BLOCK bytes). */
void pc_fill(const struct pc_model *m, uint32_t h, uint32_t blk, uint8_t *buf);
/* Check what block \p blk holds; counts into \p st. \return true if allowed (else
 * a line naming the block and what it holds is printed). */
bool pc_check_block(const struct pc_model *m, uint32_t blk, const uint8_t *data,
		    struct pc_check_stats *st);

#endif /* KEEL_POWERCUT_MODEL_H */
