/* SwiGLU (see swiglu.h). */
#include "ops/swiglu.h"

#include <math.h>

void swiglu_forward(float *gate, const float *up, int64_t n) {
    #pragma omp parallel for simd schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
