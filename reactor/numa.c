/*
 * NUMA-local allocations. Every block carries a one-cache-line header recording how
 * it was obtained, so keel_numa_free() stays correct whether or not libnuma was
 * usable when the block was allocated.
 */
#include <numa.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "reactor_internal.h"

enum numa_alloc_kind {
	NUMA_KIND_PLAIN = 0x6b65656c,
	NUMA_KIND_NODE = 0x6e6f6465,
};

struct numa_hdr {
	uint32_t kind;
	size_t total;
};

/* -1 unknown yet, 0 unavailable, 1 available. numa_available() is cheap but not free. */
static _Atomic int g_numa_ok = -1;

static bool numa_usable(void)
{
	int ok = atomic_load_explicit(&g_numa_ok, memory_order_relaxed);

	if (ok < 0) {
		ok = numa_available() >= 0 ? 1 : 0;
		atomic_store_explicit(&g_numa_ok, ok, memory_order_relaxed);
	}
	return ok == 1;
}

int krt_numa_node_of_cpu_safe(uint32_t cpu)
{
	if (!numa_usable()) {
		return -1;
	}
	return numa_node_of_cpu((int)cpu);
}

int keel_reactor_numa_node(uint32_t idx)
{
	struct reactor *reactor;

	if (idx == KEEL_REACTOR_ANY) {
		idx = keel_reactor_current();
		if (idx == KEEL_REACTOR_ANY) {
			return -1;
		}
	}
	reactor = krt_reactor_get(idx);
	return reactor != NULL ? reactor->numa_node : -1;
}

void *keel_numa_zalloc(size_t size, int numa_node)
{
	size_t total = size + KEEL_CACHE_LINE;
	struct numa_hdr *hdr;
	void *mem;

	if (numa_node < 0) {
		numa_node = keel_reactor_numa_node(KEEL_REACTOR_ANY);
	}
	if (numa_node >= 0 && numa_usable()) {
		/* numa_alloc_onnode() maps whole pages, which are zeroed and page aligned. */
		mem = numa_alloc_onnode(total, numa_node);
		if (mem == NULL) {
			return NULL;
		}
		hdr = mem;
		hdr->kind = NUMA_KIND_NODE;
	} else {
		total = (total + KEEL_CACHE_LINE - 1) & ~(size_t)(KEEL_CACHE_LINE - 1);
		mem = aligned_alloc(KEEL_CACHE_LINE, total);
		if (mem == NULL) {
			return NULL;
		}
		memset(mem, 0, total);
		hdr = mem;
		hdr->kind = NUMA_KIND_PLAIN;
	}
	hdr->total = total;
	return (char *)mem + KEEL_CACHE_LINE;
}

void keel_numa_free(void *ptr, size_t size)
{
	struct numa_hdr *hdr;

	(void)size;
	if (ptr == NULL) {
		return;
	}
	hdr = (struct numa_hdr *)((char *)ptr - KEEL_CACHE_LINE);
	if (hdr->kind == NUMA_KIND_NODE) {
		numa_free(hdr, hdr->total);
	} else {
		free(hdr);
	}
}
