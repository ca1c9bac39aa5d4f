#include "core/alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DM_ALIGN 64

void *dm_alloc(size_t n, size_t size, const char *what) {
    if (size && n > SIZE_MAX / size) {
        dm_fail(DM_ERR_NOMEM, "%s: size overflow (%zu x %zu bytes)", what, n, size);
        return NULL;
    }
    size_t bytes = n * size;
    bytes = (bytes + DM_ALIGN - 1) / DM_ALIGN * DM_ALIGN;
    if (bytes == 0) bytes = DM_ALIGN;
    void *p = aligned_alloc(DM_ALIGN, bytes);
    if (!p) dm_fail(DM_ERR_NOMEM, "%s: cannot allocate %zu bytes", what, bytes);
    return p;
}

void *dm_calloc(size_t n, size_t size, const char *what) {
    void *p = dm_alloc(n, size, what);
    if (p) memset(p, 0, n * size);
    return p;
}

void dm_free(void *p) { free(p); }

void *dm_grow(void **p, size_t *cap, size_t n, const char *what) {
    if (*p && *cap >= n) return *p;
    void *d = dm_alloc(n ? n : 1, 1, what);
    if (!d) return NULL;
    dm_free(*p);
    *p = d;
    *cap = n;
    return d;
}

dm_status dm_arena_init(dm_arena *a, size_t cap) {
    a->base = dm_alloc(cap, 1, "activation arena");
    a->cap = a->base ? cap : 0;
    a->used = 0;
    return a->base ? DM_OK : DM_ERR_NOMEM;
}

void *dm_arena_take(dm_arena *a, size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) {
        dm_fail(DM_ERR_NOMEM, "arena: size overflow");
        return NULL;
    }
    size_t bytes = (n * size + DM_ALIGN - 1) / DM_ALIGN * DM_ALIGN;
    if (bytes > a->cap - a->used) {
        dm_fail(DM_ERR_NOMEM, "arena: need %zu more bytes, %zu of %zu left", bytes,
                a->cap - a->used, a->cap);
        return NULL;
    }
    void *p = a->base + a->used;
    a->used += bytes;
    return p;
}

void dm_arena_reset(dm_arena *a) { a->used = 0; }

void dm_arena_free(dm_arena *a) {
    dm_free(a->base);
    a->base = NULL;
    a->cap = a->used = 0;
}
