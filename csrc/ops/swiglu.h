/* SwiGLU activation of the language model MLP: down(silu(gate(x)) * up(x)). */
#ifndef DM_OPS_SWIGLU_H
#define DM_OPS_SWIGLU_H

#include <stdint.h>

/* gate[i] = silu(gate[i]) * up[i] for i < n (in place on gate). */
void swiglu_forward(float *gate, const float *up, int64_t n);

/* Training forward: out[i] = silu(gate[i]) * up[i], gate and up kept (the
 * backward needs both pre-activations). out may alias gate (then it is
 * swiglu_forward). */
void swiglu_forward_out(float *out, const float *gate, const float *up, int64_t n);

/* Backward of out = silu(g) * u, s = sigmoid(g):
 *   dgate = dout * u * s * (1 + g (1 - s))      dup = dout * g * s
 * from the saved gate and up. accumulate = 0 overwrites dgate / dup, 1 adds.
 * dgate may alias gate, dup may alias up, and either may alias dout, when
 * accumulate = 0 (each element is read before it is written). */
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                     int64_t n, int accumulate);

#endif
