/* libFuzzer harness: safetensors files through the real loader.
 *
 * The input is one file, or two when its first byte is 0xFF (split at the offset in the
 * next two bytes), written to memfds and opened by path exactly as load() opens them
 * (open + fstat + mmap + header JSON + validation + duplicate names across files).
 * An accepted checkpoint is then walked (every view, every lookup, one dtype
 * conversion, which reads every tensor byte) so a view that points outside its
 * mapping faults here. Built with ASan + UBSan; see `make fuzz`. */
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
#include "core/tensor.h"
#include "io/safetensors.h"

static int memfd_with(const uint8_t *data, size_t size) {
    static int fds[2] = {-1, -1};
    static int next;
    int slot = next++ & 1;
    if (fds[slot] < 0) fds[slot] = memfd_create("fuzz.safetensors", 0);
    if (fds[slot] < 0) abort();
    if (ftruncate(fds[slot], 0) != 0 || ftruncate(fds[slot], (off_t)size) != 0) abort();
    if (size && pwrite(fds[slot], data, size, 0) != (ssize_t)size) abort();
    return fds[slot];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *part[2] = {data, NULL};
    size_t len[2] = {size, 0};
    int n_files = 1;
    if (size >= 3 && data[0] == 0xFF) {
        size_t cut = ((size_t)data[1] | (size_t)data[2] << 8) % (size - 2);
        part[0] = data + 3;
        len[0] = cut;
        part[1] = data + 3 + cut;
        len[1] = size - 3 - cut;
        n_files = 2;
    }
    char paths[2][64];
    const char *pp[2];
    for (int i = 0; i < n_files; i++) {
        int fd = memfd_with(part[i], len[i]);
        snprintf(paths[i], sizeof paths[i], "/proc/self/fd/%d", fd);
        pp[i] = paths[i];
    }
    dm_checkpoint *c = NULL;
    dm_status st = dm_checkpoint_open(pp, n_files, &c);
    if (st != DM_OK) {
        if (c || !dm_last_error()[0]) abort(); /* a failure always says why and returns nothing */
        return 0;
    }
    volatile unsigned sink = 0;
    int64_t n = dm_checkpoint_count(c);
    for (int64_t i = 0; i < n; i++) {
        const char *name, *file;
        dm_tensor v;
        if (dm_checkpoint_at(c, i, &name, &v, &file) != DM_OK) abort();
        dm_tensor w;
        if (dm_checkpoint_find(c, name, &w) != DM_OK || w.data != v.data) abort();
        int64_t numel = dm_tensor_numel(&v);
        if (numel > 0) { /* first and last byte of every view */
            const unsigned char *p = v.data;
            sink += p[0] + p[(size_t)numel * dm_dtype_size(v.dtype) - 1];
        }
        if (v.ndim >= 0 && v.ndim <= DM_MAX_DIMS)
            (void)dm_checkpoint_weight(c, NULL, name, v.ndim, v.shape, &w);
    }
    (void)dm_checkpoint_find(c, "model.embed_tokens.weight", NULL);
    (void)(size && data[size - 1] & 1 ? dm_checkpoint_widen_f32(c) : dm_checkpoint_narrow_bf16(c));
    dm_checkpoint_close(c);
    (void)sink;
    return 0;
}
