/* Vector math shared by the AVX-512 kernels (activations, SwiGLU, attention). */
#ifndef DM_OPS_VMATH_H
#define DM_OPS_VMATH_H

#if defined(__AVX512F__)
#include <immintrin.h>

/* exp(x) for 16 floats: x = n ln2 + r with |r| <= ln2/2 (two-constant Cody-Waite
 * reduction), degree-6 Cephes polynomial for e^r, 2^n applied with scalef; about
 * 2 ulp. x above 88.3 is clamped (finite result, no inf); x below -87.3, -inf
 * included, gives exactly 0 (masked softmax entries must vanish). Why not libm:
 * expf is called one element at a time through the PLT and showed up in profiles. */
static inline __m512 dm_exp16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.3f));
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
    return _mm512_mask_mov_ps(_mm512_scalef_ps(p, n), under, _mm512_setzero_ps());
}
#endif

#endif
