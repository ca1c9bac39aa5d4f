#include "ops/norm.h"

#include <math.h>

void layernorm_forward(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                       int64_t d, const float *w, const float *b, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * x_stride;
        float *oi = out + i * out_stride;
        /* Two passes (mean, then centred squares) in f32: the cancellation-free
         * form PyTorch's CPU kernel also uses. */
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
    }
}

void rmsnorm_forward(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                     int64_t d, const float *w, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * x_stride;
        float *oi = out + i * out_stride;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < d; j++) s += xi[j] * xi[j];
        const float r = 1.0f / sqrtf(s / (float)d + eps);
#pragma omp simd
        for (int64_t j = 0; j < d; j++) oi[j] = xi[j] * r * w[j];
    }
}
