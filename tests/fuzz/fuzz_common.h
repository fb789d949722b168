/*
 * Shared by the libFuzzer harnesses: quiet logging (a parser that warns on every bad
 * record would otherwise spend the run writing to stderr) and a NUL-terminated copy of
 * the input for text parsers.
 */
#ifndef KEEL_FUZZ_COMMON_H
#define KEEL_FUZZ_COMMON_H
#include <stddef.h>
#include <stdint.h>

/** libFuzzer's entry point, one per harness: \return 0 (the input is not kept aside). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/** Once per process: keel's log only prints errors. */
void fuzz_quiet_logs(void);

/** \p data as a NUL-terminated string (caller frees), or NULL on out of memory. */
char *fuzz_strndup(const uint8_t *data, size_t size);

#endif /* KEEL_FUZZ_COMMON_H */
