/*
 * MPSC ring: exact delivery, FIFO per producer, full ring back-pressure, close.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include "reactor/reactor_internal.h"
#include "ut_cunit.h"
#include "ut_threads.h"

#define MPSC_PRODUCERS 4
#define MPSC_PER_PRODUCER 50000

static void ring_dummy(void *arg)
{
	(void)arg;
}

static void test_ring_basic_full(void)
{
	struct msg_ring ring;
	keel_msg_fn fn = NULL;
	void *arg = NULL;

	CU_ASSERT_EQUAL(krt_msg_ring_init(&ring, 6, -1), -EINVAL);
	CU_ASSERT_EQUAL_FATAL(krt_msg_ring_init(&ring, 8, -1), 0);
	CU_ASSERT_TRUE(msg_ring_empty(&ring));
	CU_ASSERT_FALSE(msg_ring_pop(&ring, &fn, &arg));
	for (uintptr_t i = 0; i < 8; i++) {
		CU_ASSERT_EQUAL(krt_msg_ring_enqueue(&ring, ring_dummy, (void *)i), 0);
	}
	CU_ASSERT_EQUAL(krt_msg_ring_enqueue(&ring, ring_dummy, (void *)8), -ENOMEM);
	CU_ASSERT_FALSE(msg_ring_empty(&ring));
	/* Recovers as soon as one slot is consumed. */
	CU_ASSERT_TRUE(msg_ring_pop(&ring, &fn, &arg));
	CU_ASSERT_EQUAL((uintptr_t)arg, 0);
	CU_ASSERT_EQUAL(krt_msg_ring_enqueue(&ring, ring_dummy, (void *)8), 0);
	for (uintptr_t i = 1; i <= 8; i++) {
		CU_ASSERT_TRUE(msg_ring_pop(&ring, &fn, &arg));
		CU_ASSERT_EQUAL((uintptr_t)arg, i);
		CU_ASSERT_PTR_EQUAL(fn, ring_dummy);
	}
	CU_ASSERT_TRUE(msg_ring_empty(&ring));
	/* Wrap around many laps. */
	for (uintptr_t i = 0; i < 1000; i++) {
		CU_ASSERT_EQUAL(krt_msg_ring_enqueue(&ring, ring_dummy, (void *)i), 0);
		CU_ASSERT_TRUE(msg_ring_pop(&ring, &fn, &arg));
		CU_ASSERT_EQUAL((uintptr_t)arg, i);
	}
	krt_msg_ring_fini(&ring);
}

static void test_ring_close(void)
{
	struct msg_ring ring;
	keel_msg_fn fn = NULL;
	void *arg = NULL;
	uint64_t end;

	CU_ASSERT_EQUAL_FATAL(krt_msg_ring_init(&ring, 16, -1), 0);
	for (uintptr_t i = 0; i < 3; i++) {
		CU_ASSERT_EQUAL(krt_msg_ring_enqueue(&ring, ring_dummy, (void *)i), 0);
	}
	end = krt_msg_ring_close(&ring);
	CU_ASSERT_EQUAL(end, 3);
	CU_ASSERT_EQUAL(krt_msg_ring_enqueue(&ring, ring_dummy, NULL), -ESHUTDOWN);
	for (uintptr_t i = 0; i < 3; i++) {
		CU_ASSERT_TRUE(msg_ring_pop(&ring, &fn, &arg));
		CU_ASSERT_EQUAL((uintptr_t)arg, i);
	}
	CU_ASSERT_EQUAL(ring.tail, end);
	CU_ASSERT_TRUE(msg_ring_empty(&ring));
	krt_msg_ring_fini(&ring);
}

struct mpsc_producer {
	struct msg_ring *ring;
	uint32_t id;
	uint64_t full_seen;
	pthread_t pthread;
};

static void *mpsc_producer_main(void *arg)
{
	struct mpsc_producer *p = arg;

	for (uint64_t seq = 0; seq < MPSC_PER_PRODUCER; seq++) {
		uintptr_t val = ((uintptr_t)p->id << 32) | seq;
		int rc;

		while ((rc = krt_msg_ring_enqueue(p->ring, ring_dummy, (void *)val)) == -ENOMEM) {
			p->full_seen++;
			sched_yield();
		}
		if (rc != 0) {
			break;
		}
	}
	return NULL;
}

static void test_ring_mpsc(void)
{
	struct mpsc_producer producers[MPSC_PRODUCERS];
	uint64_t next[MPSC_PRODUCERS] = {0};
	uint64_t received = 0, order_errors = 0, full = 0;
	struct msg_ring ring;

	/* Small ring so producers hit "full" regularly and must recover. */
	CU_ASSERT_EQUAL_FATAL(krt_msg_ring_init(&ring, 64, -1), 0);
	for (uint32_t i = 0; i < MPSC_PRODUCERS; i++) {
		producers[i] = (struct mpsc_producer){.ring = &ring, .id = i};
		CU_ASSERT_EQUAL_FATAL(pthread_create(&producers[i].pthread, NULL,
						     mpsc_producer_main, &producers[i]),
				      0);
	}
	while (received < (uint64_t)MPSC_PRODUCERS * MPSC_PER_PRODUCER) {
		keel_msg_fn fn = NULL;
		void *arg = NULL;

		if (!msg_ring_pop(&ring, &fn, &arg)) {
			sched_yield();
			continue;
		}
		uint32_t id = (uint32_t)((uintptr_t)arg >> 32);
		uint64_t seq = (uintptr_t)arg & 0xffffffffu;

		if (id >= MPSC_PRODUCERS || seq != next[id]) {
			order_errors++;
		} else {
			next[id]++;
		}
		received++;
	}
	for (uint32_t i = 0; i < MPSC_PRODUCERS; i++) {
		pthread_join(producers[i].pthread, NULL);
		full += producers[i].full_seen;
		CU_ASSERT_EQUAL(next[i], MPSC_PER_PRODUCER);
	}
	CU_ASSERT_EQUAL(order_errors, 0);
	CU_ASSERT_EQUAL(received, (uint64_t)MPSC_PRODUCERS * MPSC_PER_PRODUCER);
	CU_ASSERT_TRUE(msg_ring_empty(&ring));
	/* With 4 producers and 64 slots the ring must have been full at some point. */
	CU_ASSERT_TRUE(full > 0);
	krt_msg_ring_fini(&ring);
}

/* keel_thread_send_msg on a full ring (cross-thread) and a full local FIFO (self). */
static int g_count;

static void count_msg(void *arg)
{
	(void)arg;
	g_count++;
}

static void test_send_msg_full(void)
{
	CU_ASSERT_EQUAL_FATAL(ut_threads_init_ring(2, 16), 0);
	g_count = 0;
	ut_set_thread(0);
	for (int i = 0; i < 16; i++) {
		CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(1), count_msg, NULL), 0);
	}
	CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(1), count_msg, NULL), -ENOMEM);
	ut_poll_thread(1);
	CU_ASSERT_EQUAL(g_count, 16);
	CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(1), count_msg, NULL), 0);

	/* Same-thread FIFO has the same bound. */
	ut_set_thread(0);
	for (int i = 0; i < 16; i++) {
		CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(0), count_msg, NULL), 0);
	}
	CU_ASSERT_EQUAL(keel_thread_send_msg(ut_thread(0), count_msg, NULL), -ENOMEM);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_count, 33);
	ut_threads_fini();
}

/*
 * keel_thread_send_msg_reliable: on a full ring the messages wait on the sender, which
 * goes on and re-sends them in order from its poll loop; a receiver that exits before
 * they fit gets them dropped through drop_fn, on the sender.
 */
static uintptr_t g_rel_next, g_rel_errors, g_rel_dropped;

static void rel_msg(void *arg)
{
	if ((uintptr_t)arg != g_rel_next) {
		g_rel_errors++;
	}
	g_rel_next = (uintptr_t)arg + 1;
}

static void rel_drop(void *arg)
{
	(void)arg;
	g_rel_dropped++;
}

static void test_send_msg_reliable(void)
{
	struct keel_thread *t1;

	CU_ASSERT_EQUAL_FATAL(ut_threads_init_ring(2, 16), 0);
	g_rel_next = g_rel_errors = g_rel_dropped = 0;
	t1 = ut_thread(1);
	ut_set_thread(0);
	for (uintptr_t i = 0; i < 40; i++) {
		CU_ASSERT_EQUAL(keel_thread_send_msg_reliable(t1, rel_msg, (void *)i, rel_drop), 0);
	}
	/* 16 fit, 24 wait on thread 0, which therefore must not go to sleep. */
	CU_ASSERT_TRUE(krt_thread_has_pending(ut_thread(0)));
	ut_poll_thread(1);
	CU_ASSERT_EQUAL(g_rel_next, 16);
	/* The ring has room again, but a new send queues behind the waiting ones. */
	ut_set_thread(0);
	CU_ASSERT_EQUAL(keel_thread_send_msg_reliable(t1, rel_msg, (void *)40, rel_drop), 0);
	ut_poll_threads();
	CU_ASSERT_EQUAL(g_rel_next, 41);
	CU_ASSERT_EQUAL(g_rel_errors, 0);
	CU_ASSERT_EQUAL(g_rel_dropped, 0);
	CU_ASSERT_FALSE(krt_thread_has_pending(ut_thread(0)));

	/* 16 fit, 4 wait; thread 1 runs its 16 and exits before the 4 could be sent. */
	ut_set_thread(0);
	for (uintptr_t i = 41; i < 61; i++) {
		CU_ASSERT_EQUAL(keel_thread_send_msg_reliable(t1, rel_msg, (void *)i, rel_drop), 0);
	}
	ut_set_thread(1);
	keel_thread_exit(t1);
	while (ut_thread(1) != NULL) {
		ut_poll_thread(1);
	}
	CU_ASSERT_EQUAL(g_rel_next, 57);
	ut_poll_thread(0);
	CU_ASSERT_EQUAL(g_rel_dropped, 4);
	CU_ASSERT_FALSE(krt_thread_has_pending(ut_thread(0)));
	/* Gone before the call: -ESHUTDOWN, and drop_fn is the caller's business. */
	ut_set_thread(0);
	CU_ASSERT_EQUAL(keel_thread_send_msg_reliable(t1, rel_msg, NULL, rel_drop), -ESHUTDOWN);
	CU_ASSERT_EQUAL(g_rel_dropped, 4);
	CU_ASSERT_EQUAL(g_rel_errors, 0);
	ut_threads_fini();
}

/* Several OS threads sending to one keel thread through the public API. */
struct send_producer {
	struct keel_thread *target;
	uint32_t id;
	pthread_t pthread;
};

static uint64_t g_next[MPSC_PRODUCERS];
static uint64_t g_recv, g_order_errors;

static void order_msg(void *arg)
{
	uint32_t id = (uint32_t)((uintptr_t)arg >> 32);
	uint64_t seq = (uintptr_t)arg & 0xffffffffu;

	if (seq != g_next[id]) {
		g_order_errors++;
	}
	g_next[id] = seq + 1;
	g_recv++;
}

static void *send_producer_main(void *arg)
{
	struct send_producer *p = arg;

	for (uint64_t seq = 0; seq < MPSC_PER_PRODUCER / 4; seq++) {
		uintptr_t val = ((uintptr_t)p->id << 32) | seq;

		while (keel_thread_send_msg(p->target, order_msg, (void *)val) == -ENOMEM) {
			sched_yield();
		}
	}
	return NULL;
}

static void test_send_msg_many_os_threads(void)
{
	struct send_producer producers[MPSC_PRODUCERS];
	uint64_t total = (uint64_t)MPSC_PRODUCERS * (MPSC_PER_PRODUCER / 4);

	CU_ASSERT_EQUAL_FATAL(ut_threads_init_ring(1, 256), 0);
	g_recv = 0;
	g_order_errors = 0;
	for (uint32_t i = 0; i < MPSC_PRODUCERS; i++) {
		g_next[i] = 0;
		producers[i] = (struct send_producer){.target = ut_thread(0), .id = i};
		CU_ASSERT_EQUAL_FATAL(pthread_create(&producers[i].pthread, NULL,
						     send_producer_main, &producers[i]),
				      0);
	}
	while (g_recv < total) {
		if (ut_poll_thread(0) == 0) {
			sched_yield();
		}
	}
	for (uint32_t i = 0; i < MPSC_PRODUCERS; i++) {
		pthread_join(producers[i].pthread, NULL);
	}
	CU_ASSERT_EQUAL(g_recv, total);
	CU_ASSERT_EQUAL(g_order_errors, 0);
	ut_threads_fini();
}

int main(void)
{
	static const struct ut_test tests[] = {
		{"ring_basic_full", test_ring_basic_full},
		{"ring_close", test_ring_close},
		{"ring_mpsc", test_ring_mpsc},
		{"send_msg_full", test_send_msg_full},
		{"send_msg_reliable", test_send_msg_reliable},
		{"send_msg_many_os_threads", test_send_msg_many_os_threads},
		{NULL, NULL},
	};

	return ut_cunit_run("ring", tests);
}
