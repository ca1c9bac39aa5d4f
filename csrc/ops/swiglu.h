/* SwiGLU activation of the language model MLP: down(silu(gate(x)) * up(x)). */
#ifndef DM_OPS_SWIGLU_H
#define DM_OPS_SWIGLU_H

#include <stdint.h>

/* gate[i] = silu(gate[i]) * up[i] for i < n (in place on gate). */
void swiglu_forward(float *gate, const float *up, int64_t n);

#endif
