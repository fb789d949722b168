/*
 * Fixed-size object pools. Objects are carved from one NUMA-local block up front;
 * the shared free list is a stack of pointers under a spinlock (critical sections
 * are a few loads and stores), and per-thread caches move objects in batches of
 * half their size so the lock is taken once per many gets or puts.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reactor_internal.h"

struct keel_mempool {
	pthread_spinlock_t lock;
	void **free_objs;
	_Atomic uint32_t free_count; /* written under the lock, read lock-free by count() */
	uint32_t count;
	uint32_t elt_size;
	uint8_t *mem;
	size_t mem_size;
	char name[KEEL_NAME_MAX];
};

struct keel_mempool_cache {
	struct keel_mempool *pool;
	uint32_t size;
	uint32_t batch;
	uint32_t count;
	void *objs[];
};

struct keel_mempool *keel_mempool_create(const char *name, uint32_t count, uint32_t elt_size,
					 int numa_node)
{
	struct keel_mempool *pool;
	size_t stride;

	if (count == 0 || elt_size == 0) {
		return NULL;
	}
	stride = ((size_t)elt_size + KEEL_CACHE_LINE - 1) & ~(size_t)(KEEL_CACHE_LINE - 1);
	if (stride > UINT32_MAX) {
		return NULL;
	}
	pool = calloc(1, sizeof(*pool));
	if (pool == NULL) {
		return NULL;
	}
	pool->mem_size = stride * count;
	pool->mem = keel_numa_zalloc(pool->mem_size, numa_node);
	if (pool->mem == NULL) {
		goto out_free_pool;
	}
	pool->free_objs = malloc((size_t)count * sizeof(void *));
	if (pool->free_objs == NULL) {
		goto out_free_mem;
	}
	if (pthread_spin_init(&pool->lock, PTHREAD_PROCESS_PRIVATE) != 0) {
		goto out_free_list;
	}
	pool->count = count;
	pool->elt_size = (uint32_t)stride;
	snprintf(pool->name, sizeof(pool->name), "%s", name ? name : "mempool");
	/* Lowest addresses on top of the stack: first gets walk memory in order. */
	for (uint32_t i = 0; i < count; i++) {
		pool->free_objs[i] = pool->mem + (size_t)(count - 1 - i) * stride;
	}
	atomic_init(&pool->free_count, count);
	return pool;

out_free_list:
	free(pool->free_objs);
out_free_mem:
	keel_numa_free(pool->mem, pool->mem_size);
out_free_pool:
	free(pool);
	return NULL;
}

void keel_mempool_free(struct keel_mempool *pool)
{
	uint32_t free_count;

	if (pool == NULL) {
		return;
	}
	free_count = atomic_load(&pool->free_count);
	if (free_count != pool->count) {
		KEEL_WARNLOG("mempool %s: freed with %u of %u objects still in use", pool->name,
			     pool->count - free_count, pool->count);
	}
	pthread_spin_destroy(&pool->lock);
	free(pool->free_objs);
	keel_numa_free(pool->mem, pool->mem_size);
	free(pool);
}

/* \return how many objects were taken (up to n). */
static uint32_t mempool_get_bulk(struct keel_mempool *pool, void **objs, uint32_t n)
{
	uint32_t avail;

	pthread_spin_lock(&pool->lock);
	avail = atomic_load_explicit(&pool->free_count, memory_order_relaxed);
	if (n > avail) {
		n = avail;
	}
	avail -= n;
	memcpy(objs, &pool->free_objs[avail], (size_t)n * sizeof(void *));
	atomic_store_explicit(&pool->free_count, avail, memory_order_relaxed);
	pthread_spin_unlock(&pool->lock);
	return n;
}

static void mempool_put_bulk(struct keel_mempool *pool, void *const *objs, uint32_t n)
{
	uint32_t used;

#ifndef NDEBUG
	for (uint32_t i = 0; i < n; i++) {
		assert((uint8_t *)objs[i] >= pool->mem &&
		       (uint8_t *)objs[i] < pool->mem + pool->mem_size);
	}
#endif
	pthread_spin_lock(&pool->lock);
	used = atomic_load_explicit(&pool->free_count, memory_order_relaxed);
	assert(used + n <= pool->count);
	memcpy(&pool->free_objs[used], objs, (size_t)n * sizeof(void *));
	atomic_store_explicit(&pool->free_count, used + n, memory_order_relaxed);
	pthread_spin_unlock(&pool->lock);
}

void *keel_mempool_get(struct keel_mempool *pool)
{
	void *obj;

	return mempool_get_bulk(pool, &obj, 1) == 1 ? obj : NULL;
}

void keel_mempool_put(struct keel_mempool *pool, void *obj)
{
	mempool_put_bulk(pool, &obj, 1);
}

uint32_t keel_mempool_count(const struct keel_mempool *pool)
{
	return atomic_load_explicit(&pool->free_count, memory_order_relaxed);
}

struct keel_mempool_cache *keel_mempool_cache_create(struct keel_mempool *pool, uint32_t size)
{
	struct keel_mempool_cache *cache;

	if (pool == NULL || size == 0) {
		return NULL;
	}
	cache = calloc(1, sizeof(*cache) + (size_t)size * sizeof(void *));
	if (cache == NULL) {
		return NULL;
	}
	cache->pool = pool;
	cache->size = size;
	cache->batch = size / 2 ? size / 2 : 1;
	return cache;
}

void keel_mempool_cache_free(struct keel_mempool_cache *cache)
{
	if (cache == NULL) {
		return;
	}
	if (cache->count != 0) {
		mempool_put_bulk(cache->pool, cache->objs, cache->count);
	}
	free(cache);
}

void *keel_mempool_cache_get(struct keel_mempool_cache *cache)
{
	if (keel_unlikely(cache->count == 0)) {
		cache->count = mempool_get_bulk(cache->pool, cache->objs, cache->batch);
		if (cache->count == 0) {
			return NULL;
		}
	}
	return cache->objs[--cache->count];
}

void keel_mempool_cache_put(struct keel_mempool_cache *cache, void *obj)
{
	if (keel_unlikely(cache->count == cache->size)) {
		cache->count -= cache->batch;
		mempool_put_bulk(cache->pool, &cache->objs[cache->count], cache->batch);
	}
	cache->objs[cache->count++] = obj;
}
