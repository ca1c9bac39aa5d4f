/* Element-wise activations over n contiguous f32 values, in place allowed. */
#ifndef DM_OPS_ACTIVATION_H
#define DM_OPS_ACTIVATION_H

#include <stdint.h>

/* gelu with the tanh approximation (torch approximate="tanh", "gelu_pytorch_tanh"). */
void gelu_tanh_forward(float *out, const float *x, int64_t n);
/* exact gelu: 0.5 x (1 + erf(x / sqrt 2)) (torch nn.GELU()). */
void gelu_forward(float *out, const float *x, int64_t n);

#endif
