/*
 * MPSC message ring, see ring.h for the protocol.
 */
#include <errno.h>
#include <string.h>

#include "ring.h"
#include "reactor_internal.h"

int krt_msg_ring_init(struct msg_ring *ring, uint32_t size, int numa_node)
{
	struct msg_slot *slots;
	uint32_t i;

	if (size < 2 || (size & (size - 1)) != 0) {
		return -EINVAL;
	}
	slots = keel_numa_zalloc((size_t)size * sizeof(*slots), numa_node);
	if (slots == NULL) {
		return -ENOMEM;
	}
	for (i = 0; i < size; i++) {
		atomic_init(&slots[i].seq, i);
	}
	atomic_init(&ring->head, 0);
	ring->p_slots = slots;
	ring->p_mask = size - 1;
	ring->tail = 0;
	ring->slots = slots;
	ring->mask = size - 1;
	ring->size = size;
	ring->numa_node = numa_node;
	return 0;
}

void krt_msg_ring_fini(struct msg_ring *ring)
{
	if (ring->slots != NULL) {
		keel_numa_free(ring->slots, (size_t)ring->size * sizeof(*ring->slots));
		ring->slots = NULL;
		ring->p_slots = NULL;
	}
}

int krt_msg_ring_enqueue(struct msg_ring *ring, keel_msg_fn fn, void *arg)
{
	uint64_t pos = atomic_load_explicit(&ring->head, memory_order_relaxed);

	for (;;) {
		struct msg_slot *slot;
		uint64_t seq, cur;
		int64_t dif;

		if (pos & RING_CLOSED) {
			return -ESHUTDOWN;
		}
		slot = &ring->p_slots[pos & ring->p_mask];
		seq = atomic_load_explicit(&slot->seq, memory_order_acquire);
		dif = (int64_t)(seq - pos);
		if (dif == 0) {
			/*
			 * seq_cst on purpose: this CAS is the sender's half of the
			 * Dekker handshake with a reactor going to sleep (it orders the
			 * claim before the later load of reactor->sleeping).
			 */
			if (atomic_compare_exchange_weak(&ring->head, &pos, pos + 1)) {
				slot->fn = fn;
				slot->arg = arg;
				atomic_store_explicit(&slot->seq, pos + 1, memory_order_release);
				return 0;
			}
			/* pos was reloaded by the failed CAS */
		} else if (dif < 0) {
			/* The slot one lap behind is not consumed yet: full, unless head moved. */
			cur = atomic_load_explicit(&ring->head, memory_order_relaxed);
			if (cur == pos) {
				return -ENOMEM;
			}
			pos = cur;
		} else {
			pos = atomic_load_explicit(&ring->head, memory_order_relaxed);
		}
	}
}

uint64_t krt_msg_ring_close(struct msg_ring *ring)
{
	return atomic_fetch_or(&ring->head, RING_CLOSED) & ~RING_CLOSED;
}
