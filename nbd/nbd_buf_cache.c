/*
 * Payload buffers of NBD requests, by power-of-two size class, cached per OS thread and
 * shared by every connection served there.
 *
 * Why shared: each connection once kept its own free lists (up to 4 MiB per class, 9
 * classes), so idle clients that had done some large I/O pinned tens of MiB each. One
 * cache per thread keeps the steady state free of allocation (a busy connection reuses
 * what the last reply freed) while what idle connections cost is bounded per thread,
 * not per client. The cache is freed when the thread's last connection closes.
 *
 * Thread-local because a connection only ever runs on its own thread: no lock, and a
 * buffer freed on another thread (never done today) would still be plain free().
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "nbd/nbd_internal.h"

#define NBD_BUF_MIN_SHIFT 12u
#define NBD_BUF_MAX_SHIFT 20u
#define NBD_BUF_CLASSES (NBD_BUF_MAX_SHIFT - NBD_BUF_MIN_SHIFT + 1u)
/* Alignment of cached buffers; connections that need more bypass the cache. */
#define NBD_BUF_ALIGN 4096u
/* Idle bytes kept per class and per thread in total. */
#define NBD_BUF_CLASS_CACHE_BYTES (4u << 20)
#define NBD_BUF_THREAD_CACHE_BYTES (16u << 20)
/* 4 KiB buffers made ready when a thread gets its first connection. */
#define NBD_BUF_PREALLOC_SMALL 32u

struct nbd_buf_link {
	struct nbd_buf_link *next;
};

struct nbd_buf_cache {
	struct nbd_buf_link *free[NBD_BUF_CLASSES];
	uint32_t count[NBD_BUF_CLASSES];
	uint64_t bytes;
	uint32_t users;
};

static __thread struct nbd_buf_cache g_cache;
static _Atomic uint64_t g_cached_bytes; /* all threads, for statistics */

static size_t nbd_buf_class_size(int c)
{
	return (size_t)1 << (c + (int)NBD_BUF_MIN_SHIFT);
}

static int nbd_buf_class(uint32_t len)
{
	uint32_t shift;

	if (len > (1u << NBD_BUF_MAX_SHIFT)) {
		return -1;
	}
	shift = len <= (1u << NBD_BUF_MIN_SHIFT) ? NBD_BUF_MIN_SHIFT
						 : 32u - (uint32_t)__builtin_clz(len - 1);
	return (int)(shift - NBD_BUF_MIN_SHIFT);
}

static void nbd_buf_cache_account(int64_t delta)
{
	g_cache.bytes += (uint64_t)delta;
	atomic_fetch_add_explicit(&g_cached_bytes, (uint64_t)delta, memory_order_relaxed);
}

void *nbd_buf_get(uint32_t len, size_t align, int *classp)
{
	int c = align <= NBD_BUF_ALIGN ? nbd_buf_class(len) : -1;
	size_t size;
	void *buf = NULL;

	*classp = c;
	if (c >= 0 && g_cache.free[c] != NULL) {
		struct nbd_buf_link *link = g_cache.free[c];

		g_cache.free[c] = link->next;
		g_cache.count[c]--;
		nbd_buf_cache_account(-(int64_t)nbd_buf_class_size(c));
		return link;
	}
	if (c >= 0) {
		size = nbd_buf_class_size(c);
		align = NBD_BUF_ALIGN;
	} else {
		size = (len + align - 1) / align * align;
	}
	if (posix_memalign(&buf, align, size) != 0) {
		return NULL;
	}
	return buf;
}

void nbd_buf_put(void *buf, int c)
{
	struct nbd_buf_link *link = buf;
	size_t size;

	if (c < 0 || g_cache.users == 0) {
		free(buf);
		return;
	}
	size = nbd_buf_class_size(c);
	if (((size_t)g_cache.count[c] + 1) * size > NBD_BUF_CLASS_CACHE_BYTES ||
	    g_cache.bytes + size > NBD_BUF_THREAD_CACHE_BYTES) {
		free(buf);
		return;
	}
	link->next = g_cache.free[c];
	g_cache.free[c] = link;
	g_cache.count[c]++;
	nbd_buf_cache_account((int64_t)size);
}

void nbd_buf_cache_ref(void)
{
	if (g_cache.users++ > 0) {
		return;
	}
	/* Warm the smallest class so 4 KiB traffic never allocates. */
	for (uint32_t i = 0; i < NBD_BUF_PREALLOC_SMALL; i++) {
		void *buf = NULL;

		if (posix_memalign(&buf, NBD_BUF_ALIGN, 1u << NBD_BUF_MIN_SHIFT) != 0) {
			break;
		}
		nbd_buf_put(buf, 0);
	}
}

void nbd_buf_cache_unref(void)
{
	if (g_cache.users == 0 || --g_cache.users > 0) {
		return;
	}
	for (uint32_t c = 0; c < NBD_BUF_CLASSES; c++) {
		while (g_cache.free[c] != NULL) {
			struct nbd_buf_link *link = g_cache.free[c];

			g_cache.free[c] = link->next;
			free(link);
		}
		g_cache.count[c] = 0;
	}
	nbd_buf_cache_account(-(int64_t)g_cache.bytes);
}

uint64_t nbd_buf_cached_bytes(void)
{
	return atomic_load_explicit(&g_cached_bytes, memory_order_relaxed);
}
