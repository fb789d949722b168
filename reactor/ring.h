/*
 * Bounded multi-producer / single-consumer message ring.
 *
 * Each slot carries its own sequence number (Vyukov's bounded queue): a producer
 * claims a position with one CAS on the shared head, writes {fn, arg} into the slot
 * and publishes it with a release store of the slot's sequence; the single consumer
 * reads slots in order and hands them back by advancing the sequence by the ring
 * size. The slots are the message objects, so sending never allocates.
 *
 * FIFO per producer holds because one producer's claims are ordered by the CAS.
 * The head carries a CLOSED bit: once a thread is being destroyed no producer can
 * claim a slot any more, and the consumer can drain the claimed ones deterministically.
 */
#ifndef KEEL_REACTOR_RING_H
#define KEEL_REACTOR_RING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "keel/reactor.h"

#define RING_CACHE_LINE 64
#define RING_CLOSED (1ULL << 63)

struct msg_slot {
	_Atomic uint64_t seq;
	keel_msg_fn fn;
	void *arg;
	uint64_t pad; /* 32-byte slots: two per cache line, never straddling one */
};

struct msg_ring {
	/* Producer line: written by every sender (CAS), read-only copies of geometry. */
	_Alignas(RING_CACHE_LINE) _Atomic uint64_t head;
	struct msg_slot *p_slots;
	uint64_t p_mask;
	/* Consumer line: touched only by the owning thread. */
	_Alignas(RING_CACHE_LINE) uint64_t tail;
	struct msg_slot *slots;
	uint64_t mask;
	uint32_t size;
	int numa_node;
};

/** \p size must be a power of two >= 2. \return 0, -EINVAL, -ENOMEM. */
int krt_msg_ring_init(struct msg_ring *ring, uint32_t size, int numa_node);
void krt_msg_ring_fini(struct msg_ring *ring);

/**
 * Queue one message. Any thread.
 * \return 0, -ENOMEM when full (nothing queued), -ESHUTDOWN when closed.
 */
int krt_msg_ring_enqueue(struct msg_ring *ring, keel_msg_fn fn, void *arg);

/**
 * Close the ring to producers. Consumer only. Returns the position one past the
 * last claimed slot: msg_ring_pop_wait() until tail reaches it drains everything.
 */
uint64_t krt_msg_ring_close(struct msg_ring *ring);

/**
 * True when nothing is claimed past the consumer. A claimed slot whose producer has
 * not published yet counts as not empty. Uses a seq_cst load of the head: together
 * with the producer's seq_cst CAS on the head this is one half of the sleep/wake-up
 * handshake (see reactor.c), so no extra fence is needed on the sender side.
 */
static inline bool msg_ring_empty(struct msg_ring *ring)
{
	return ((atomic_load(&ring->head) & ~RING_CLOSED) == ring->tail);
}

/** Consumer only. \return true and the message, or false when nothing is published. */
static inline bool msg_ring_pop(struct msg_ring *ring, keel_msg_fn *fn, void **arg)
{
	struct msg_slot *slot = &ring->slots[ring->tail & ring->mask];
	uint64_t seq = atomic_load_explicit(&slot->seq, memory_order_acquire);

	if (seq != ring->tail + 1) {
		return false;
	}
	*fn = slot->fn;
	*arg = slot->arg;
	atomic_store_explicit(&slot->seq, ring->tail + ring->mask + 1, memory_order_release);
	ring->tail++;
	return true;
}

#endif /* KEEL_REACTOR_RING_H */
