/*
 * Blocking-work pool: plain pthreads for calls that may block (fsync, open, stat),
 * so reactors never do. Jobs come back to the submitting keel thread by message.
 * The queue is a mutex and a condition variable: submitting blocking work is
 * never on a hot path, and the workers must be able to sleep.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "reactor_internal.h"

#define BLOCKING_DEFAULT_THREADS 2

struct blocking_job {
	keel_blocking_fn fn;
	void *arg;
	keel_blocking_done_cb done_cb;
	void *cb_arg;
	struct keel_thread *thread;
	int rc;
	TAILQ_ENTRY(blocking_job) link;
};

static pthread_mutex_t g_blk_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_blk_cond = PTHREAD_COND_INITIALIZER;
static TAILQ_HEAD(, blocking_job) g_blk_queue = TAILQ_HEAD_INITIALIZER(g_blk_queue);
static pthread_t *g_blk_threads;
static uint32_t g_blk_nthreads;
static bool g_blk_running;
static bool g_blk_stopping;

static void blocking_done(void *arg)
{
	struct blocking_job *job = arg;

	job->thread->pending_blocking--;
	job->done_cb(job->cb_arg, job->rc);
	free(job);
}

static void *blocking_worker(void *arg)
{
	char name[16];

	snprintf(name, sizeof(name), "keel_blk_%u", (unsigned)(uintptr_t)arg);
	pthread_setname_np(pthread_self(), name);
	pthread_mutex_lock(&g_blk_lock);
	for (;;) {
		struct blocking_job *job;

		while (!g_blk_stopping && TAILQ_EMPTY(&g_blk_queue)) {
			pthread_cond_wait(&g_blk_cond, &g_blk_lock);
		}
		job = TAILQ_FIRST(&g_blk_queue);
		if (job == NULL) {
			break; /* stopping and drained */
		}
		TAILQ_REMOVE(&g_blk_queue, job, link);
		pthread_mutex_unlock(&g_blk_lock);

		job->rc = job->fn(job->arg);
		/* A full ring is back-pressure, waited out; only a destroyed thread drops it. */
		if (keel_thread_send_msg_reliable(job->thread, blocking_done, job, NULL) != 0) {
			KEEL_ERRLOG("blocking job: thread %s is gone, completion dropped",
				    job->thread->name);
			free(job);
		}
		pthread_mutex_lock(&g_blk_lock);
	}
	pthread_mutex_unlock(&g_blk_lock);
	return NULL;
}

/* Under g_blk_lock. */
static int blocking_pool_start_locked(uint32_t nthreads)
{
	if (g_blk_running) {
		return 0;
	}
	if (nthreads == 0) {
		nthreads = 1;
	}
	g_blk_threads = calloc(nthreads, sizeof(*g_blk_threads));
	if (g_blk_threads == NULL) {
		return -ENOMEM;
	}
	g_blk_stopping = false;
	for (uint32_t i = 0; i < nthreads; i++) {
		int rc = pthread_create(&g_blk_threads[i], NULL, blocking_worker,
					(void *)(uintptr_t)i);

		if (rc != 0) {
			/* Run with the workers we have; none at all is an error. */
			if (i == 0) {
				free(g_blk_threads);
				g_blk_threads = NULL;
				return -rc;
			}
			nthreads = i;
			break;
		}
	}
	g_blk_nthreads = nthreads;
	g_blk_running = true;
	return 0;
}

int krt_blocking_pool_start(uint32_t nthreads)
{
	int rc;

	pthread_mutex_lock(&g_blk_lock);
	rc = blocking_pool_start_locked(nthreads);
	pthread_mutex_unlock(&g_blk_lock);
	return rc;
}

void krt_blocking_pool_stop(void)
{
	pthread_t *threads;
	uint32_t n;

	pthread_mutex_lock(&g_blk_lock);
	if (!g_blk_running || g_blk_stopping) {
		pthread_mutex_unlock(&g_blk_lock);
		return;
	}
	g_blk_stopping = true;
	threads = g_blk_threads;
	n = g_blk_nthreads;
	pthread_cond_broadcast(&g_blk_cond);
	pthread_mutex_unlock(&g_blk_lock);

	for (uint32_t i = 0; i < n; i++) {
		pthread_join(threads[i], NULL);
	}

	pthread_mutex_lock(&g_blk_lock);
	free(g_blk_threads);
	g_blk_threads = NULL;
	g_blk_nthreads = 0;
	g_blk_running = false;
	g_blk_stopping = false;
	pthread_mutex_unlock(&g_blk_lock);
}

int keel_spawn_blocking(keel_blocking_fn fn, void *arg, keel_blocking_done_cb done_cb, void *cb_arg)
{
	struct keel_thread *thread = krt_thread_tls_current;
	struct blocking_job *job;
	int rc;

	if (thread == NULL || fn == NULL || done_cb == NULL) {
		return -EINVAL;
	}
	job = calloc(1, sizeof(*job));
	if (job == NULL) {
		return -ENOMEM;
	}
	job->fn = fn;
	job->arg = arg;
	job->done_cb = done_cb;
	job->cb_arg = cb_arg;
	job->thread = thread;

	pthread_mutex_lock(&g_blk_lock);
	if (g_blk_stopping) {
		rc = -ESHUTDOWN;
		goto out_unlock;
	}
	/* Only the thread library was initialised: start a default pool on first use. */
	rc = blocking_pool_start_locked(BLOCKING_DEFAULT_THREADS);
	if (rc != 0) {
		goto out_unlock;
	}
	TAILQ_INSERT_TAIL(&g_blk_queue, job, link);
	thread->pending_blocking++;
	pthread_cond_signal(&g_blk_cond);
	pthread_mutex_unlock(&g_blk_lock);
	return 0;

out_unlock:
	pthread_mutex_unlock(&g_blk_lock);
	free(job);
	return rc;
}
