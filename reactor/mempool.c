/*
 * Fixed-size object pools. Objects are carved from NUMA-local segments: a first small
 * one at creation, then segments that double what the pool holds, each made the first
 * time the free list runs dry, up to the pool's count. A bdev channel's pool of 1024
 * requests (~440 KiB) was allocated whole for every channel, and keeld locks its
 * memory, so 1000 idle volumes held 1.5 GB; most channels never use more than a few
 * dozen. The shared free list is a stack of pointers under a spinlock (critical
 * sections are a few loads and stores), and per-thread caches move objects in batches
 * of half their size so the lock is taken once per many gets or puts.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reactor_internal.h"

/*
 * Objects in a pool's first segment, and at most what a cache takes or gives back at
 * once. keeld locks its memory: every object carved is resident, and each bdev of a
 * volume has a pool per thread that serves it, so an idle client's first read must
 * not carve dozens per bdev (a 64-object refill made a volume with one idle client
 * cost ~400 KiB). A busy thread's cache still refills rarely: gets and puts balance
 * inside it.
 */
#define MEMPOOL_FIRST_SEGMENT 16
#define MEMPOOL_CACHE_BATCH_MAX 16

struct mempool_segment {
	struct mempool_segment *next;
	uint8_t *mem;
	size_t mem_size;
};

struct keel_mempool {
	pthread_spinlock_t lock;
	void **free_objs;            /* room for count pointers */
	_Atomic uint32_t free_count; /* written under the lock, read lock-free by count() */
	_Atomic uint32_t allocated;  /* objects carved so far; written under grow_lock + lock */
	uint32_t count;
	uint32_t elt_size;
	int numa_node;
	pthread_mutex_t grow_lock; /* one grower at a time, allocating outside the spinlock */
	struct mempool_segment *segments;
	char name[KEEL_NAME_MAX];
};

struct keel_mempool_cache {
	struct keel_mempool *pool;
	uint32_t size;
	uint32_t batch;
	uint32_t count;
	void *objs[];
};

/*
 * Carve \p n more objects into a new segment and push them. Takes the spinlock only
 * to publish them. \return 0, or -ENOMEM.
 */
static int mempool_grow(struct keel_mempool *pool, uint32_t n)
{
	struct mempool_segment *seg = calloc(1, sizeof(*seg));
	uint32_t free_count;

	if (seg == NULL) {
		return -ENOMEM;
	}
	seg->mem_size = (size_t)pool->elt_size * n;
	seg->mem = keel_numa_zalloc(seg->mem_size, pool->numa_node);
	if (seg->mem == NULL) {
		free(seg);
		return -ENOMEM;
	}
	pthread_spin_lock(&pool->lock);
	/* Linked under the lock: debug builds' puts walk the list under it. */
	seg->next = pool->segments;
	pool->segments = seg;
	free_count = atomic_load_explicit(&pool->free_count, memory_order_relaxed);
	/* Below what is already free: the objects freed last are reused first, and the
	 * lowest addresses of the new segment come out first. */
	memmove(&pool->free_objs[n], pool->free_objs, (size_t)free_count * sizeof(void *));
	for (uint32_t i = 0; i < n; i++) {
		pool->free_objs[i] = seg->mem + (size_t)(n - 1 - i) * pool->elt_size;
	}
	atomic_store_explicit(&pool->free_count, free_count + n, memory_order_relaxed);
	atomic_store_explicit(&pool->allocated, atomic_load(&pool->allocated) + n,
			      memory_order_relaxed);
	pthread_spin_unlock(&pool->lock);
	return 0;
}

/*
 * The free list ran dry: double what the pool holds, up to its count.
 * \return 0 (grown, or another thread grew it or freed objects meanwhile) or -ENOMEM.
 */
static int mempool_grow_more(struct keel_mempool *pool)
{
	uint32_t allocated, n;
	int rc = 0;

	pthread_mutex_lock(&pool->grow_lock);
	allocated = atomic_load(&pool->allocated);
	/* Another thread may have grown it while we waited for the lock. */
	if (atomic_load(&pool->free_count) == 0 && allocated < pool->count) {
		n = allocated < pool->count - allocated ? allocated : pool->count - allocated;
		rc = mempool_grow(pool, n > 0 ? n : 1);
	}
	pthread_mutex_unlock(&pool->grow_lock);
	return rc;
}

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
	pool->free_objs = malloc((size_t)count * sizeof(void *));
	if (pool->free_objs == NULL) {
		goto out_free_pool;
	}
	if (pthread_spin_init(&pool->lock, PTHREAD_PROCESS_PRIVATE) != 0) {
		goto out_free_list;
	}
	if (pthread_mutex_init(&pool->grow_lock, NULL) != 0) {
		goto out_destroy_spin;
	}
	pool->count = count;
	pool->elt_size = (uint32_t)stride;
	pool->numa_node = numa_node;
	snprintf(pool->name, sizeof(pool->name), "%s", name ? name : "mempool");
	atomic_init(&pool->free_count, 0);
	atomic_init(&pool->allocated, 0);
	if (mempool_grow(pool, count < MEMPOOL_FIRST_SEGMENT ? count : MEMPOOL_FIRST_SEGMENT) !=
	    0) {
		goto out_destroy_mutex;
	}
	return pool;

out_destroy_mutex:
	pthread_mutex_destroy(&pool->grow_lock);
out_destroy_spin:
	pthread_spin_destroy(&pool->lock);
out_free_list:
	free(pool->free_objs);
out_free_pool:
	free(pool);
	return NULL;
}

void keel_mempool_free(struct keel_mempool *pool)
{
	struct mempool_segment *seg;
	uint32_t free_count, allocated;

	if (pool == NULL) {
		return;
	}
	free_count = atomic_load(&pool->free_count);
	allocated = atomic_load(&pool->allocated);
	if (free_count != allocated) {
		KEEL_WARNLOG("mempool %s: freed with %u of %u objects still in use", pool->name,
			     allocated - free_count, pool->count);
	}
	while ((seg = pool->segments) != NULL) {
		pool->segments = seg->next;
		keel_numa_free(seg->mem, seg->mem_size);
		free(seg);
	}
	pthread_mutex_destroy(&pool->grow_lock);
	pthread_spin_destroy(&pool->lock);
	free(pool->free_objs);
	free(pool);
}

static uint32_t mempool_free_now(struct keel_mempool *pool)
{
	return atomic_load_explicit(&pool->free_count, memory_order_relaxed);
}

static bool mempool_can_grow(struct keel_mempool *pool)
{
	return atomic_load_explicit(&pool->allocated, memory_order_relaxed) < pool->count;
}

/* \return how many objects were taken (up to n); grows the pool when it is dry. */
static uint32_t mempool_get_bulk(struct keel_mempool *pool, void **objs, uint32_t n)
{
	uint32_t avail;

	for (;;) {
		if (keel_unlikely(mempool_free_now(pool) == 0 && mempool_can_grow(pool)) &&
		    mempool_grow_more(pool) != 0) {
			return 0; /* no memory to grow: dry, as a full pool is */
		}
		pthread_spin_lock(&pool->lock);
		avail = mempool_free_now(pool);
		/* Other threads may have taken what the growth added before we got the lock:
		 * while the pool can still grow, "dry" is not the answer; grow again. */
		if (keel_likely(avail > 0) || !mempool_can_grow(pool)) {
			break;
		}
		pthread_spin_unlock(&pool->lock);
	}
	if (n > avail) {
		n = avail;
	}
	avail -= n;
	memcpy(objs, &pool->free_objs[avail], (size_t)n * sizeof(void *));
	atomic_store_explicit(&pool->free_count, avail, memory_order_relaxed);
	pthread_spin_unlock(&pool->lock);
	return n;
}

#ifndef NDEBUG
/* Debug builds, under the pool's lock: \p obj is one of the pool's objects. */
static bool mempool_owns(struct keel_mempool *pool, const void *obj)
{
	for (struct mempool_segment *seg = pool->segments; seg != NULL; seg = seg->next) {
		if ((const uint8_t *)obj >= seg->mem &&
		    (const uint8_t *)obj < seg->mem + seg->mem_size) {
			return true;
		}
	}
	return false;
}
#endif

static void mempool_put_bulk(struct keel_mempool *pool, void *const *objs, uint32_t n)
{
	uint32_t used;

	pthread_spin_lock(&pool->lock);
#ifndef NDEBUG
	for (uint32_t i = 0; i < n; i++) {
		assert(mempool_owns(pool, objs[i]));
	}
#endif
	used = atomic_load_explicit(&pool->free_count, memory_order_relaxed);
	assert(used + n <= atomic_load_explicit(&pool->allocated, memory_order_relaxed));
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
	/* Objects not carved yet can still be had. */
	return atomic_load_explicit(&pool->free_count, memory_order_relaxed) + pool->count -
	       atomic_load_explicit(&pool->allocated, memory_order_relaxed);
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
	if (cache->batch > MEMPOOL_CACHE_BATCH_MAX) {
		cache->batch = MEMPOOL_CACHE_BATCH_MAX;
	}
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
