/* libFuzzer harness: the strict JSON parser of the safetensors header.
 *
 * The input is the header text alone; the harness frames it as a safetensors file
 * (u64 length + header, no data section) and opens it through the real loader, so
 * the fuzzer spends its time in the JSON grammar (strings, escapes, surrogates,
 * UTF-8, numbers, nesting) instead of rediscovering the 8-byte framing. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/status.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    if (fd < 0) fd = memfd_create("fuzz.json", 0);
    if (fd < 0) abort();
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)size >> (8 * i));
    if (ftruncate(fd, 0) != 0 || ftruncate(fd, (off_t)(8 + size)) != 0) abort();
    if (pwrite(fd, len, 8, 0) != 8) abort();
    if (size && pwrite(fd, data, size, 8) != (ssize_t)size) abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    const char *pp[1] = {path};
    dm_checkpoint *c = NULL;
    if (dm_checkpoint_open(pp, 1, &c) == DM_OK) {
        /* Only tensors of zero bytes fit an empty data section. */
        for (int64_t i = 0; i < dm_checkpoint_count(c); i++) {
            const char *name;
            if (dm_checkpoint_at(c, i, &name, NULL, NULL) != DM_OK || !name) abort();
        }
        dm_checkpoint_close(c);
    } else if (c || !dm_last_error()[0]) {
        abort();
    }
    return 0;
}
