/*
 * Little-endian field access for the on-disk formats (labels, write-intent bitmap).
 * Byte by byte, so a format depends neither on struct padding nor on the host byte
 * order, and a field needs no alignment.
 */
#ifndef KEEL_NEXUS_ENDIAN_H
#define KEEL_NEXUS_ENDIAN_H

#include <stdint.h>

static inline void nexus_put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++) {
		p[i] = (uint8_t)(v >> (8 * i));
	}
}

static inline void nexus_put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		p[i] = (uint8_t)(v >> (8 * i));
	}
}

static inline uint32_t nexus_get_le32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++) {
		v |= (uint32_t)p[i] << (8 * i);
	}
	return v;
}

static inline uint64_t nexus_get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++) {
		v |= (uint64_t)p[i] << (8 * i);
	}
	return v;
}

#endif /* KEEL_NEXUS_ENDIAN_H */
