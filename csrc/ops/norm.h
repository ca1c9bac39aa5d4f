/* Normalisations over the last dimension of row-major [n, d] f32 activations.
 * Weights/biases are f32 (callers widen the small bf16 vectors once at build). */
#ifndef DM_OPS_NORM_H
#define DM_OPS_NORM_H

#include <stdint.h>

/* out = (x - mean) / sqrt(var + eps) * w + b  (biased variance, like torch). b may be NULL.
 * out may alias x. Row strides in elements. */
void layernorm_forward(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                       int64_t d, const float *w, const float *b, float eps);

/* out = x / sqrt(mean(x^2) + eps) * w. out may alias x. */
void rmsnorm_forward(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                     int64_t d, const float *w, float eps);

#endif
