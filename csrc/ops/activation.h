/* Element-wise activations over n contiguous f32 values, in place allowed. */
#ifndef DM_OPS_ACTIVATION_H
#define DM_OPS_ACTIVATION_H

#include <stdint.h>

/* gelu with the tanh approximation (torch approximate="tanh", "gelu_pytorch_tanh"). */
void gelu_tanh_forward(float *out, const float *x, int64_t n);
/* exact gelu: 0.5 x (1 + erf(x / sqrt 2)) (torch nn.GELU()). */
void gelu_forward(float *out, const float *x, int64_t n);

/* Backwards: dx = dy * f'(x) with x the forward's saved INPUT (f' recomputed,
 * nothing else saved). accumulate = 0 overwrites dx (dx may alias dy or x),
 * 1 adds to it.
 *   gelu_tanh: u = k0 (x + k1 x^3), t = tanh(u), k0 = sqrt(2/pi), k1 = 0.044715
 *              f'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) k0 (1 + 3 k1 x^2)
 *   gelu:      f'(x) = Phi(x) + x phi(x) = 0.5 (1 + erf(x/sqrt2)) + x exp(-x^2/2) / sqrt(2 pi) */
void gelu_tanh_backward(float *dx, const float *dy, const float *x, int64_t n, int accumulate);
void gelu_backward(float *dx, const float *dy, const float *x, int64_t n, int accumulate);

#endif
