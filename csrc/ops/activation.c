/* Activations. gelu-tanh runs on every ffn activation of the tower, so it gets
 * an AVX-512 path (libm's tanhf is a scalar call that costs as much as a
 * fifth of the layer's matmuls). */
#include "ops/activation.h"

#include <math.h>
#include <stdint.h>

#if defined(__AVX512F__)
#include <immintrin.h>

/* exp(x), x clamped to [-87.3, 88.3]: range reduction to |r| <= ln2/2, degree-6
 * polynomial (Cephes expf coefficients), about 2 ulp. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
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
        __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(u));
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
