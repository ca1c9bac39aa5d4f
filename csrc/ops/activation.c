/* Activations. The tanh/erf here are written as branch-free polynomial code so
 * the compiler vectorises the loops (libm's tanhf/erff are scalar calls and
 * would cost more than the matmuls around them). */
#include "ops/activation.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for finite x: 2^n * p(r), |r| <= ln2/2, about 2 ulp; clamps to
 * [-87.3, 88.3] (callers only need it there). */
static inline float vexpf(float x) {
    x = fminf(fmaxf(x, -87.3f), 88.3f);
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

void gelu_tanh_forward(float *out, const float *x, int64_t n) {
    const float k0 = 0.7978845608028654f, k1 = 0.044715f;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float u = k0 * (v + k1 * v * v * v);
        /* 1 + tanh(u) = 2 - 2 / (exp(2u) + 1) = 2 / (1 + exp(-2u)); no cancellation */
        out[i] = v / (1.0f + vexpf(-2.0f * u));
    }
}

/* libm erff (scalar): the merger applies this to tokens x 4*hidden values once
 * per image, small next to its matmuls, and erff is exact to 1 ulp. */
void gelu_forward(float *out, const float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        out[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}
