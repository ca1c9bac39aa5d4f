#include "ops/norm.h"

#include <math.h>
#include <string.h>

/* One row of layernorm; mean/rstd returned for the saving forward. Two passes
 * (mean, then centred squares) in f32: the cancellation-free form PyTorch's CPU
 * kernel also uses. */
static inline void layernorm_row(float *oi, const float *xi, int64_t d, const float *w, const float *b,
                                 float eps, float *mean_out, float *rstd_out) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < d; j++) s += xi[j];
    const float mean = s / (float)d;
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int64_t j = 0; j < d; j++) v += (xi[j] - mean) * (xi[j] - mean);
    const float rstd = 1.0f / sqrtf(v / (float)d + eps);
    if (b) {
#pragma omp simd
        for (int64_t j = 0; j < d; j++) oi[j] = (xi[j] - mean) * rstd * w[j] + b[j];
    } else {
#pragma omp simd
        for (int64_t j = 0; j < d; j++) oi[j] = (xi[j] - mean) * rstd * w[j];
    }
    *mean_out = mean;
    *rstd_out = rstd;
}

void layernorm_forward(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                       int64_t d, const float *w, const float *b, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float mean, rstd;
        layernorm_row(out + i * out_stride, x + i * x_stride, d, w, b, eps, &mean, &rstd);
    }
}

void layernorm_forward_save(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                            int64_t d, const float *w, const float *b, float eps, float *mean, float *rstd) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        layernorm_row(out + i * out_stride, x + i * x_stride, d, w, b, eps, &mean[i], &rstd[i]);
}

static inline float rmsnorm_row(float *oi, const float *xi, int64_t d, const float *w, float eps) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < d; j++) s += xi[j] * xi[j];
    const float r = 1.0f / sqrtf(s / (float)d + eps);
#pragma omp simd
    for (int64_t j = 0; j < d; j++) oi[j] = xi[j] * r * w[j];
    return r;
}

void rmsnorm_forward(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                     int64_t d, const float *w, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) (void)rmsnorm_row(out + i * out_stride, x + i * x_stride, d, w, eps);
}

void rmsnorm_forward_save(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                          int64_t d, const float *w, float eps, float *rstd) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) rstd[i] = rmsnorm_row(out + i * out_stride, x + i * x_stride, d, w, eps);
}

/* Column block width of the parameter-gradient reductions (one thread owns a
 * block and sums its columns over all rows in order). */
#define NORM_COLS 64

/* dw[j] += sum_i dout[i,j] xh[i,j], db[j] += sum_i dout[i,j]; xh from x, mean
 * (NULL: rmsnorm, mean 0) and rstd. */
static void norm_param_grads(float *dw, float *db, const float *dout, int64_t dout_stride, const float *x,
                             int64_t x_stride, const float *mean, const float *rstd, int64_t n, int64_t d) {
    if (!dw && !db) return;
    const int64_t nblk = (d + NORM_COLS - 1) / NORM_COLS;
#pragma omp parallel for schedule(static)
    for (int64_t cb = 0; cb < nblk; cb++) {
        const int64_t j0 = cb * NORM_COLS, nj = d - j0 < NORM_COLS ? d - j0 : NORM_COLS;
        float aw[NORM_COLS], ab[NORM_COLS];
        for (int64_t j = 0; j < nj; j++) aw[j] = ab[j] = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            const float *xi = x + i * x_stride + j0, *gi = dout + i * dout_stride + j0;
            const float mu = mean ? mean[i] : 0.0f, r = rstd[i];
#pragma omp simd
            for (int64_t j = 0; j < nj; j++) {
                aw[j] += gi[j] * ((xi[j] - mu) * r);
                ab[j] += gi[j];
            }
        }
        if (dw)
            for (int64_t j = 0; j < nj; j++) dw[j0 + j] += aw[j];
        if (db)
            for (int64_t j = 0; j < nj; j++) db[j0 + j] += ab[j];
    }
}

/* Input gradient of one row (mean NULL: rmsnorm). Reads all of dout's row before
 * writing dx, so dx may alias dout when not accumulating. */
static inline void norm_dx_row(float *dxi, const float *gi, const float *xi, float mu, float r, const float *w,
                               int64_t d, int centred, int accumulate) {
    float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t j = 0; j < d; j++) {
        const float g = gi[j] * w[j];
        sg += g;
        sgx += g * ((xi[j] - mu) * r);
    }
    const float mg = centred ? sg / (float)d : 0.0f, mgx = sgx / (float)d;
    if (accumulate) {
#pragma omp simd
        for (int64_t j = 0; j < d; j++) dxi[j] += r * (gi[j] * w[j] - mg - (xi[j] - mu) * r * mgx);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < d; j++) dxi[j] = r * (gi[j] * w[j] - mg - (xi[j] - mu) * r * mgx);
    }
}

void layernorm_backward(float *dx, int64_t dx_stride, float *dw, float *db, const float *dout,
                        int64_t dout_stride, const float *x, int64_t x_stride, const float *mean,
                        const float *rstd, const float *w, int64_t n, int64_t d, int accumulate) {
    /* parameter gradients first: dx may overwrite dout */
    norm_param_grads(dw, db, dout, dout_stride, x, x_stride, mean, rstd, n, d);
    if (!dx) return;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        norm_dx_row(dx + i * dx_stride, dout + i * dout_stride, x + i * x_stride, mean[i], rstd[i], w, d, 1,
                    accumulate);
}

void rmsnorm_backward(float *dx, int64_t dx_stride, float *dw, const float *dout, int64_t dout_stride,
                      const float *x, int64_t x_stride, const float *rstd, const float *w, int64_t n,
                      int64_t d, int accumulate) {
    norm_param_grads(dw, NULL, dout, dout_stride, x, x_stride, NULL, rstd, n, d);
    if (!dx) return;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        norm_dx_row(dx + i * dx_stride, dout + i * dout_stride, x + i * x_stride, 0.0f, rstd[i], w, d, 0,
                    accumulate);
}
