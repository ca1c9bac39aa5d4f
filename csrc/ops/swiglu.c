/* SwiGLU (see swiglu.h). */
#include "ops/swiglu.h"

#include <math.h>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "ops/vmath.h"


static inline __m512 swiglu16(__m512 g, __m512 u) {
    __m512 den = _mm512_add_ps(_mm512_set1_ps(1.0f), dm_exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)));
    return _mm512_mul_ps(_mm512_div_ps(g, den), u);
}

void swiglu_forward_out(float *out, const float *gate, const float *up, int64_t n) {
    const int64_t blocks = n / 16;
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t b = 0; b < blocks; b++)
        _mm512_storeu_ps(out + b * 16, swiglu16(_mm512_loadu_ps(gate + b * 16), _mm512_loadu_ps(up + b * 16)));
    int64_t rest = n - blocks * 16;
    if (rest) {
        __mmask16 k = (__mmask16)((1u << rest) - 1);
        __m512 v = swiglu16(_mm512_maskz_loadu_ps(k, gate + blocks * 16), _mm512_maskz_loadu_ps(k, up + blocks * 16));
        _mm512_mask_storeu_ps(out + blocks * 16, k, v);
    }
}
#else
void swiglu_forward_out(float *out, const float *gate, const float *up, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
#endif

void swiglu_forward(float *gate, const float *up, int64_t n) { swiglu_forward_out(gate, gate, up, n); }

static inline void swiglu_grad1(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                int64_t i, int accumulate) {
    const float g = gate[i], u = up[i], d = dout[i];
    const float s = 1.0f / (1.0f + expf(-g));
    const float dg = d * u * s * (1.0f + g * (1.0f - s)), du = d * g * s;
    if (accumulate) {
        dgate[i] += dg;
        dup[i] += du;
    } else {
        dgate[i] = dg;
        dup[i] = du;
    }
}

void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                     int64_t n, int accumulate) {
#if defined(__AVX512F__)
    const int64_t nv = n / 16 * 16;
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < nv; i += 16) {
        const __m512 one = _mm512_set1_ps(1.0f);
        __m512 g = _mm512_loadu_ps(gate + i), u = _mm512_loadu_ps(up + i), d = _mm512_loadu_ps(dout + i);
        __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, dm_exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        __m512 ds = _mm512_mul_ps(d, s);
        __m512 dg = _mm512_mul_ps(_mm512_mul_ps(ds, u), _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one));
        __m512 du = _mm512_mul_ps(ds, g);
        if (accumulate) {
            dg = _mm512_add_ps(dg, _mm512_loadu_ps(dgate + i));
            du = _mm512_add_ps(du, _mm512_loadu_ps(dup + i));
        }
        _mm512_storeu_ps(dgate + i, dg);
        _mm512_storeu_ps(dup + i, du);
    }
    for (int64_t i = nv; i < n; i++) swiglu_grad1(dgate, dup, dout, gate, up, i, accumulate);
#else
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) swiglu_grad1(dgate, dup, dout, gate, up, i, accumulate);
#endif
}
