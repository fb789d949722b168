/*
 * Small helpers every keel library shares: branch hints and little-endian field
 * access. Header only, no state, safe from any thread.
 *
 * One copy each, so a fix or a port (another compiler, a big-endian host) is made
 * once. Clocks live in reactor.h (keel_now_ns, keel_ticks).
 */
#ifndef KEEL_UTIL_H
#define KEEL_UTIL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Branch hints for the I/O and poll paths: keel_likely(x) tells the compiler x is
 * almost always true, keel_unlikely(x) almost always false. Both evaluate to x as
 * 0 or 1. Use them where a measurement showed the cold branch in the way, not as
 * decoration.
 */
#define keel_likely(x) __builtin_expect(!!(x), 1)
#define keel_unlikely(x) __builtin_expect(!!(x), 0)

/*
 * Little-endian fields of the on-disk formats (nexus labels, write-intent bitmap),
 * byte by byte: a format then depends neither on struct padding nor on the host's
 * byte order, and \p p needs no alignment. (Network formats such as NBD are
 * big-endian and use <endian.h> on packed structs.)
 */

/** Store \p v at \p p as 4 little-endian bytes. */
static inline void keel_put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++) {
		p[i] = (uint8_t)(v >> (8 * i));
	}
}

/** Store \p v at \p p as 8 little-endian bytes. */
static inline void keel_put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		p[i] = (uint8_t)(v >> (8 * i));
	}
}

/** The 4 little-endian bytes at \p p. */
static inline uint32_t keel_get_le32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++) {
		v |= (uint32_t)p[i] << (8 * i);
	}
	return v;
}

/** The 8 little-endian bytes at \p p. */
static inline uint64_t keel_get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++) {
		v |= (uint64_t)p[i] << (8 * i);
	}
	return v;
}

#ifdef __cplusplus
}
#endif

#endif /* KEEL_UTIL_H */
