/* SwiGLU (see swiglu.h). */
#include "ops/swiglu.h"

#include <math.h>

#if defined(__AVX512F__)
#include <immintrin.h>

/* exp(x) for 16 floats: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for
 * e^r (relative error ~2e-7), 2^n applied with scalef (inf / 0 outside the
 * float range, as expf). Why: libm's expf is called through the PLT one element
 * at a time and showed up at ~5% of a prefill. */
static inline __m512 exp16(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(100.0f)), _mm512_set1_ps(-110.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 swiglu16(__m512 g, __m512 u) {
    __m512 den = _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)));
    return _mm512_mul_ps(_mm512_div_ps(g, den), u);
}

void swiglu_forward(float *gate, const float *up, int64_t n) {
    const int64_t blocks = n / 16;
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t b = 0; b < blocks; b++) {
        float *g = gate + b * 16;
        _mm512_storeu_ps(g, swiglu16(_mm512_loadu_ps(g), _mm512_loadu_ps(up + b * 16)));
    }
    int64_t rest = n - blocks * 16;
    if (rest) {
        __mmask16 k = (__mmask16)((1u << rest) - 1);
        float *g = gate + blocks * 16;
        __m512 v = swiglu16(_mm512_maskz_loadu_ps(k, g), _mm512_maskz_loadu_ps(k, up + blocks * 16));
        _mm512_mask_storeu_ps(g, k, v);
    }
}
#else
void swiglu_forward(float *gate, const float *up, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
#endif
