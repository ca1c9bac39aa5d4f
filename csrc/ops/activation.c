/* Activations. gelu-tanh runs on every ffn activation of the tower, so it gets
 * an AVX-512 path (libm's tanhf is a scalar call that costs as much as a
 * fifth of the layer's matmuls). */
#include "ops/activation.h"

#include <math.h>
#include <stdint.h>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "ops/vmath.h"

#endif

void gelu_tanh_forward(float *out, const float *x, int64_t n) {
    const float k0 = 0.7978845608028654f, k1 = 0.044715f;
    /* 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)): no cancellation, one exp */
#if defined(__AVX512F__)
    const int64_t nv = n / 16 * 16;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nv; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
        __m512 u = _mm512_mul_ps(_mm512_set1_ps(-2.0f * k0), _mm512_fmadd_ps(_mm512_set1_ps(k1), v3, v));
        __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), dm_exp16(u));
        _mm512_storeu_ps(out + i, _mm512_div_ps(v, d));
    }
    for (int64_t i = nv; i < n; i++) {
#else
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
#endif
        float v = x[i];
        float u = k0 * (v + k1 * v * v * v);
        out[i] = v / (1.0f + expf(-2.0f * u));
    }
}

/* libm erff (scalar): the merger applies this to tokens x 4*hidden values once
 * per image, small next to its matmuls, and erff is exact to 1 ulp. */
void gelu_forward(float *out, const float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        out[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

/* ---- backwards (see activation.h) ----
 * gelu-tanh through s = sigmoid(2u): 0.5 (1 + tanh u) = s and 1 - tanh^2 u =
 * 4 s (1 - s), so f'(x) = s + 2 x s (1 - s) k0 (1 + 3 k1 x^2): one exp, no
 * cancellation, the same exp as the forward (AVX-512: dm_exp16). */
static inline float gelu_tanh_grad(float v) {
    const float k0 = 0.7978845608028654f, k1 = 0.044715f;
    const float v2 = v * v;
    const float s = 1.0f / (1.0f + expf(-2.0f * k0 * (v + k1 * v2 * v)));
    return s + 2.0f * v * s * (1.0f - s) * k0 * (1.0f + 3.0f * k1 * v2);
}

void gelu_tanh_backward(float *dx, const float *dy, const float *x, int64_t n, int accumulate) {
#if defined(__AVX512F__)
    const float k0 = 0.7978845608028654f, k1 = 0.044715f;
    const int64_t nv = n / 16 * 16;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nv; i += 16) {
        const __m512 one = _mm512_set1_ps(1.0f);
        __m512 v = _mm512_loadu_ps(x + i), v2 = _mm512_mul_ps(v, v);
        __m512 u = _mm512_mul_ps(_mm512_set1_ps(-2.0f * k0), _mm512_fmadd_ps(_mm512_set1_ps(k1), _mm512_mul_ps(v2, v), v));
        __m512 sg = _mm512_div_ps(one, _mm512_add_ps(one, dm_exp16(u)));
        __m512 poly = _mm512_fmadd_ps(_mm512_set1_ps(3.0f * k1), v2, one);
        __m512 t = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(2.0f * k0), v), _mm512_mul_ps(sg, _mm512_sub_ps(one, sg)));
        __m512 g = _mm512_fmadd_ps(t, poly, sg);
        __m512 r = _mm512_mul_ps(_mm512_loadu_ps(dy + i), g);
        if (accumulate) r = _mm512_add_ps(r, _mm512_loadu_ps(dx + i));
        _mm512_storeu_ps(dx + i, r);
    }
    for (int64_t i = nv; i < n; i++) {
#else
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
#endif
        const float r = dy[i] * gelu_tanh_grad(x[i]);
        dx[i] = accumulate ? dx[i] + r : r;
    }
}

/* Exact gelu: libm erff and expf, scalar (see gelu_forward). */
void gelu_backward(float *dx, const float *dy, const float *x, int64_t n, int accumulate) {
    const float inv_sqrt2 = 0.70710678118654752f, inv_sqrt_2pi = 0.39894228040143268f;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        const float g = 0.5f * (1.0f + erff(v * inv_sqrt2)) + v * inv_sqrt_2pi * expf(-0.5f * v * v);
        const float r = dy[i] * g;
        dx[i] = accumulate ? dx[i] + r : r;
    }
}
