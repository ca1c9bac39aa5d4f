/* OpenBLAS backend: f32 sgemm. Non-f32 weights are widened a panel of rows at a
 * time into a scratch buffer (bounded size), so no f32 copy of a model exists. */
#include <cblas.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "backend/matmul.h"
#include "core/alloc.h"

#define PANEL_BYTES (8u << 20) /* widened-weight scratch per call */

void dm_openblas_set_threads(int n) { scipy_openblas_set_num_threads(n); }

const char *dm_openblas_version(void) { return scipy_openblas_get_config(); }

const char *dm_openblas_core(void) { return scipy_openblas_get_corename(); }

static void add_bias(float *out, const dm_tensor *bias, int64_t M, int64_t N, float *tmp) {
    dm_tensor_to_f32(bias, tmp);
    for (int64_t m = 0; m < M; m++) {
        float *row = out + m * N;
        for (int64_t n = 0; n < N; n++) row[n] += tmp[n];
    }
}

dm_status dm_matmul_openblas(float *out, const float *x, const dm_tensor *w,
                             const dm_tensor *bias, int64_t M, int accumulate) {
    const int64_t N = w->shape[0], K = w->shape[1];
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX)
        return dm_fail(DM_ERR_VALUE, "matmul: dimension exceeds OpenBLAS 32-bit index");
    float *bias_f32 = NULL;
    if (bias) {
        bias_f32 = dm_alloc((size_t)N, sizeof(float), "matmul bias");
        if (!bias_f32) return DM_ERR_NOMEM;
    }
    if (w->dtype == DM_F32) {
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x,
                    (int)K, (const float *)w->data, (int)K, accumulate ? 1.0f : 0.0f, out, (int)N);
    } else {
        int64_t rows = (int64_t)(PANEL_BYTES / sizeof(float)) / K;
        if (rows < 16) rows = 16;
        if (rows > N) rows = N;
        float *panel = dm_alloc((size_t)(rows * K), sizeof(float), "matmul weight panel");
        if (!panel) {
            dm_free(bias_f32);
            return DM_ERR_NOMEM;
        }
        for (int64_t n0 = 0; n0 < N; n0 += rows) {
            int64_t nb = N - n0 < rows ? N - n0 : rows;
            #pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < nb; r++) dm_tensor_rows_f32(w, n0 + r, 1, panel + r * K);
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)nb, (int)K, 1.0f, x,
                        (int)K, panel, (int)K, accumulate ? 1.0f : 0.0f, out + n0, (int)N);
        }
        dm_free(panel);
    }
    if (bias) add_bias(out, bias, M, N, bias_f32);
    dm_free(bias_f32);
    return DM_OK;
}

/* ---- transposed products of the linear backward (see matmul.h) ---- */

dm_status dm_matmul_dx_openblas(float *dx, int64_t ldx, const float *dy, int64_t ldy, const dm_tensor *w,
                                int64_t M, int accumulate) {
    const int64_t N = w->shape[0], K = w->shape[1];
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || ldx > INT_MAX || ldy > INT_MAX)
        return dm_fail(DM_ERR_VALUE, "matmul dx: dimension exceeds OpenBLAS 32-bit index");
    if (w->dtype == DM_F32) {
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)N, 1.0f, dy, (int)ldy,
                          (const float *)w->data, (int)K, accumulate ? 1.0f : 0.0f, dx, (int)ldx);
        return DM_OK;
    }
    /* dx = sum over row panels of W: dy[:, n0:n0+nb] . W[n0:n0+nb, :] */
    int64_t rows = (int64_t)(PANEL_BYTES / sizeof(float)) / K;
    if (rows < 16) rows = 16;
    if (rows > N) rows = N;
    float *panel = dm_alloc((size_t)(rows * K), sizeof(float), "matmul dx weight panel");
    if (!panel) return DM_ERR_NOMEM;
    const size_t esz = dm_dtype_size(w->dtype);
    for (int64_t n0 = 0; n0 < N; n0 += rows) {
        int64_t nb = N - n0 < rows ? N - n0 : rows;
        const char *src = (const char *)w->data + (size_t)n0 * (size_t)K * esz;
        #pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < nb; r++)
            dm_to_f32_n(panel + r * K, src + (size_t)r * (size_t)K * esz, w->dtype, (size_t)K);
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)nb, 1.0f, dy + n0,
                          (int)ldy, panel, (int)K, (accumulate || n0 > 0) ? 1.0f : 0.0f, dx, (int)ldx);
    }
    dm_free(panel);
    return DM_OK;
}

dm_status dm_matmul_dw_openblas(float *dw, const float *dy, int64_t ldy, const float *x, int64_t ldx,
                                int64_t M, int64_t N, int64_t K, int accumulate) {
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || ldx > INT_MAX || ldy > INT_MAX)
        return dm_fail(DM_ERR_VALUE, "matmul dw: dimension exceeds OpenBLAS 32-bit index");
    scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)N, (int)K, (int)M, 1.0f, dy, (int)ldy, x,
                      (int)ldx, accumulate ? 1.0f : 0.0f, dw, (int)K);
    return DM_OK;
}
