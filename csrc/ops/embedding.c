/* Token embedding gather and scatter-add backward (see embedding.h). */
#include "ops/embedding.h"

#include "core/dtype.h"

static dm_status check_ids(const int64_t *ids, int64_t T, int64_t V) {
    for (int64_t t = 0; t < T; t++)
        if (ids[t] >= V)
            return dm_fail(DM_ERR_INDEX, "embedding: token id %lld at position %lld is out of range [0, %lld)",
                           (long long)ids[t], (long long)t, (long long)V);
    return DM_OK;
}

dm_status embedding_forward(float *out, int64_t out_stride, const dm_tensor *E, const int64_t *ids,
                            int64_t T) {
    if (E->ndim != 2) return dm_fail(DM_ERR_VALUE, "embedding: table must be 2-D, got %d-D", E->ndim);
    if (E->dtype != DM_F32 && E->dtype != DM_BF16 && E->dtype != DM_F16)
        return dm_fail(DM_ERR_TYPE, "embedding: table dtype %s is not a float type", dm_dtype_name(E->dtype));
    if (T < 0) return dm_fail(DM_ERR_VALUE, "embedding: negative token count %lld", (long long)T);
    const int64_t V = E->shape[0], D = E->shape[1];
    if (out_stride < D)
        return dm_fail(DM_ERR_VALUE, "embedding: out row stride %lld < width %lld", (long long)out_stride,
                       (long long)D);
    DM_TRY(check_ids(ids, T, V));
    const size_t esz = dm_dtype_size(E->dtype);
#pragma omp parallel for schedule(static) if (T * D > 65536)
    for (int64_t t = 0; t < T; t++)
        if (ids[t] >= 0)
            dm_to_f32_n(out + t * out_stride, (const char *)E->data + (size_t)ids[t] * (size_t)D * esz, E->dtype,
                        (size_t)D);
    return DM_OK;
}

/* Columns per work item of the scatter-add: each item adds every token's slice of
 * these columns in token order (no two threads touch one element). */
#define EMB_COLS 64

dm_status embedding_backward(float *dE, int64_t V, int64_t D, const int64_t *ids, int64_t T,
                             const float *dout, int64_t dout_stride) {
    if (V <= 0 || D <= 0 || T < 0)
        return dm_fail(DM_ERR_VALUE, "embedding backward: bad sizes V=%lld D=%lld T=%lld", (long long)V,
                       (long long)D, (long long)T);
    if (dout_stride < D)
        return dm_fail(DM_ERR_VALUE, "embedding backward: dout row stride %lld < width %lld",
                       (long long)dout_stride, (long long)D);
    DM_TRY(check_ids(ids, T, V));
    const int64_t nblk = (D + EMB_COLS - 1) / EMB_COLS;
#pragma omp parallel for schedule(static) if (T * D > 65536)
    for (int64_t cb = 0; cb < nblk; cb++) {
        const int64_t j0 = cb * EMB_COLS, nj = D - j0 < EMB_COLS ? D - j0 : EMB_COLS;
        for (int64_t t = 0; t < T; t++) {
            if (ids[t] < 0) continue;
            float *dst = dE + ids[t] * D + j0;
            const float *src = dout + t * dout_stride + j0;
#pragma omp simd
            for (int64_t j = 0; j < nj; j++) dst[j] += src[j];
        }
    }
    return DM_OK;
}
