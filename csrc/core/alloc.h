/* Aligned allocation for activations (64 bytes: one cache line, one zmm). */
#ifndef DM_CORE_ALLOC_H
#define DM_CORE_ALLOC_H

#include <stddef.h>

#include "core/status.h"

/* Returns NULL on failure (also for n*size overflow); `what` goes into the message. */
void *dm_alloc(size_t n, size_t size, const char *what);
void *dm_calloc(size_t n, size_t size, const char *what);
void dm_free(void *p);

/* A grow-only buffer kept between calls: *p (of *cap bytes) replaced by a fresh
 * block when it is absent or smaller than n bytes (contents not kept). Returns
 * *p, or NULL (and *p unchanged) when the allocation fails. */
void *dm_grow(void **p, size_t *cap, size_t n, const char *what);

/* A bump arena: many buffers, one free. */
typedef struct {
    char *base;
    size_t cap, used;
} dm_arena;

dm_status dm_arena_init(dm_arena *a, size_t cap);
void *dm_arena_take(dm_arena *a, size_t n, size_t size); /* NULL + message when full */
void dm_arena_reset(dm_arena *a);
void dm_arena_free(dm_arena *a);

#endif
