/* Symmetric quantization rules shared by the int8 weights (quantized at load),
 * the per-token int8 activations of the oneDNN int8 products and the int16
 * activations of the int8 GEMV: value = q * scale, scale = max|x| / qmax (1 for
 * an all-zero row), q = round-half-even(x / scale). */
#ifndef DM_CORE_QUANT_H
#define DM_CORE_QUANT_H

#include <math.h>
#include <stdint.h>

static inline float dm_absmax(const float *x, int64_t n) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}

static inline float dm_quant_scale(float absmax, float qmax) { return absmax > 0.0f ? absmax / qmax : 1.0f; }

/* q[i] = round(x[i] * inv_scale); |x| <= absmax keeps q within [-qmax, qmax]. */
static inline void dm_quantize_i8(int8_t *q, const float *x, int64_t n, float inv_scale) {
    for (int64_t i = 0; i < n; i++) q[i] = (int8_t)lrintf(x[i] * inv_scale);
}

static inline void dm_quantize_i16(int16_t *q, const float *x, int64_t n, float inv_scale) {
    for (int64_t i = 0; i < n; i++) q[i] = (int16_t)lrintf(x[i] * inv_scale);
}

#endif
