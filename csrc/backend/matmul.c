#include "backend/matmul.h"

#include "backend/gemv.h"

dm_status dm_matmul(dm_backend backend, float *out, const float *x, const dm_tensor *w,
                    const dm_tensor *bias, int64_t M, int accumulate) {
    if (w->ndim != 2)
        return dm_fail(DM_ERR_VALUE, "matmul: weight must be 2-D, got %d-D", w->ndim);
    if (!dm_tensor_is_weight(w))
        return dm_fail(DM_ERR_TYPE, "matmul: weight dtype %s is not a float type (or int8 with row scales)",
                       dm_dtype_name(w->dtype));
    if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0]))
        return dm_fail(DM_ERR_VALUE, "matmul: bias of %lld elements for %lld outputs",
                       (long long)(bias->ndim == 1 ? bias->shape[0] : -1), (long long)w->shape[0]);
    if (M < 0 || w->shape[0] <= 0 || w->shape[1] <= 0)
        return dm_fail(DM_ERR_VALUE, "matmul: empty or negative dimensions");
    if (M == 0) return DM_OK;
    /* decode-sized products: stream the weight rows (backend/gemv.h) */
    if (dm_gemv_applies(backend, w, M)) return dm_gemv(out, x, w, bias, M, accumulate);
    switch (backend) {
    case DM_BACKEND_ONEDNN: return dm_matmul_onednn(out, x, w, bias, M, accumulate);
    case DM_BACKEND_OPENBLAS: return dm_matmul_openblas(out, x, w, bias, M, accumulate);
    }
    return dm_fail(DM_ERR_VALUE, "matmul: unknown backend %d", (int)backend);
}

/* ---- linear backward (see matmul.h) ---- */

dm_status dm_matmul_dx(dm_backend backend, float *dx, int64_t ldx, const float *dy, int64_t ldy,
                       const dm_tensor *w, int64_t M, int accumulate) {
    if (w->ndim != 2)
        return dm_fail(DM_ERR_VALUE, "matmul dx: weight must be 2-D, got %d-D", w->ndim);
    if (w->dtype == DM_I8)
        return dm_fail(DM_ERR_TYPE, "matmul dx: int8 weights are for inference only (load the model in bf16 "
                                    "or f32 to train)");
    if (w->dtype != DM_F32 && w->dtype != DM_BF16 && w->dtype != DM_F16)
        return dm_fail(DM_ERR_TYPE, "matmul dx: weight dtype %s is not a float type", dm_dtype_name(w->dtype));
    const int64_t N = w->shape[0], K = w->shape[1];
    if (M < 0 || N <= 0 || K <= 0) return dm_fail(DM_ERR_VALUE, "matmul dx: empty or negative dimensions");
    if (!ldx) ldx = K;
    if (!ldy) ldy = N;
    if (ldx < K || ldy < N)
        return dm_fail(DM_ERR_VALUE, "matmul dx: row stride (dx %lld, dy %lld) below the row (%lld, %lld)",
                       (long long)ldx, (long long)ldy, (long long)K, (long long)N);
    if (M == 0) return DM_OK;
    switch (backend) {
    case DM_BACKEND_ONEDNN: return dm_matmul_dx_onednn(dx, ldx, dy, ldy, w, M, accumulate);
    case DM_BACKEND_OPENBLAS: return dm_matmul_dx_openblas(dx, ldx, dy, ldy, w, M, accumulate);
    }
    return dm_fail(DM_ERR_VALUE, "matmul dx: unknown backend %d", (int)backend);
}

dm_status dm_matmul_dw(dm_backend backend, float *dw, const float *dy, int64_t ldy, const float *x,
                       int64_t ldx, int64_t M, int64_t N, int64_t K, int accumulate) {
    if (M < 0 || N <= 0 || K <= 0) return dm_fail(DM_ERR_VALUE, "matmul dw: empty or negative dimensions");
    if (!ldx) ldx = K;
    if (!ldy) ldy = N;
    if (ldx < K || ldy < N)
        return dm_fail(DM_ERR_VALUE, "matmul dw: row stride (x %lld, dy %lld) below the row (%lld, %lld)",
                       (long long)ldx, (long long)ldy, (long long)K, (long long)N);
    if (M == 0) {
        if (!accumulate)
            for (int64_t i = 0; i < N * K; i++) dw[i] = 0.0f;
        return DM_OK;
    }
    switch (backend) {
    case DM_BACKEND_ONEDNN: return dm_matmul_dw_onednn(dw, dy, ldy, x, ldx, M, N, K, accumulate);
    case DM_BACKEND_OPENBLAS: return dm_matmul_dw_openblas(dw, dy, ldy, x, ldx, M, N, K, accumulate);
    }
    return dm_fail(DM_ERR_VALUE, "matmul dw: unknown backend %d", (int)backend);
}

#define BIAS_COLS 64

void dm_bias_grad(float *db, const float *dy, int64_t ldy, int64_t M, int64_t N, int accumulate) {
    if (!ldy) ldy = N;
    const int64_t nblk = (N + BIAS_COLS - 1) / BIAS_COLS;
#pragma omp parallel for schedule(static) if (M * N > 65536)
    for (int64_t cb = 0; cb < nblk; cb++) {
        const int64_t j0 = cb * BIAS_COLS, nj = N - j0 < BIAS_COLS ? N - j0 : BIAS_COLS;
        float acc[BIAS_COLS];
        for (int64_t j = 0; j < nj; j++) acc[j] = 0.0f;
        for (int64_t m = 0; m < M; m++) {
            const float *row = dy + m * ldy + j0;
#pragma omp simd
            for (int64_t j = 0; j < nj; j++) acc[j] += row[j];
        }
        for (int64_t j = 0; j < nj; j++) db[j0 + j] = accumulate ? db[j0 + j] + acc[j] : acc[j];
    }
}

dm_status dm_linear_backward(dm_backend backend, float *dx, float *dw, float *db, const float *dy,
                             const float *x, const dm_tensor *w, int64_t M, int accumulate_dx) {
    if (w->ndim != 2)
        return dm_fail(DM_ERR_VALUE, "linear backward: weight must be 2-D, got %d-D", w->ndim);
    const int64_t N = w->shape[0], K = w->shape[1];
    if (dw) DM_TRY(dm_matmul_dw(backend, dw, dy, N, x, K, M, N, K, 1));
    if (db) dm_bias_grad(db, dy, N, M, N, 1);
    if (dx) DM_TRY(dm_matmul_dx(backend, dx, K, dy, N, w, M, accumulate_dx));
    return DM_OK;
}
