/* A tensor view: pointer, dtype and shape of row-major contiguous data that
 * someone else owns (usually the mmap'd checkpoint). Weights are never copied
 * into these; activations are plain float arrays passed with explicit sizes. */
#ifndef DM_CORE_TENSOR_H
#define DM_CORE_TENSOR_H

#include <stdint.h>

#include "core/dtype.h"
#include "core/status.h"

#define DM_MAX_DIMS 8

typedef struct {
    const void *data;
    dm_dtype dtype;
    int ndim;
    int64_t shape[DM_MAX_DIMS];
    /* DM_I8 weights only (2-D, quantized at load): element [r][c] stands for
     * data[r][c] * row_scale[r] (symmetric, one f32 scale per output row). */
    const float *row_scale;
} dm_tensor;

/* A weight matmuls accept: a float dtype, or int8 with its row scales. */
static inline int dm_tensor_is_weight(const dm_tensor *t) {
    return t->dtype == DM_F32 || t->dtype == DM_BF16 || t->dtype == DM_F16 ||
           (t->dtype == DM_I8 && t->ndim == 2 && t->row_scale);
}

static inline int64_t dm_tensor_numel(const dm_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* Check that `t` has exactly the given shape; `what` names it in the message. */
dm_status dm_tensor_expect(const dm_tensor *t, const char *what, int ndim, const int64_t *shape);

/* Row r of a 2-D tensor as f32 (any float dtype, or scaled int8). */
dm_status dm_tensor_row_f32(const dm_tensor *t, int64_t r, float *out);
/* Rows r0 .. r0+n-1 of a 2-D weight (dm_tensor_is_weight) as f32 into out[n][cols]. */
dm_status dm_tensor_rows_f32(const dm_tensor *t, int64_t r0, int64_t n, float *out);

/* A whole float-kind tensor as f32 into `out` (numel elements). */
dm_status dm_tensor_to_f32(const dm_tensor *t, float *out);

#endif
