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

/* ---- Training: forwards that save per-row statistics, and backwards ----
 * The saving forwards compute exactly what layernorm_forward / rmsnorm_forward
 * compute (same code) and also store, per row i < n:
 *   layernorm: mean[i], rstd[i] = 1/sqrt(var_i + eps)    rmsnorm: rstd[i] = 1/sqrt(mean(x_i^2) + eps)
 * so the backward needs the saved input x plus these 1-2 floats per row (no
 * recomputation of the reductions; x-hat is recomputed element-wise).
 *
 * Backward, with xh = (x - mean) * rstd (layernorm) or x * rstd (rmsnorm),
 * g = dout * w:
 *   layernorm: dx = rstd * (g - mean_j(g) - xh * mean_j(g * xh))
 *   rmsnorm:   dx = rstd * (g - xh * mean_j(g * xh))
 *   dw[j] += sum_i dout[i,j] * xh[i,j]     db[j] += sum_i dout[i,j]
 * dx: overwritten (accumulate = 0) or added to (accumulate = 1, e.g. into a
 * residual stream's gradient); dx may alias dout when accumulate = 0.
 * dw / db (f32 [d]) always accumulate and may be NULL (no parameter gradient);
 * dx may be NULL too (only parameter gradients wanted).
 * Deterministic: dx is row-parallel, dw/db are column-parallel with each
 * column summed over rows in order, so results do not depend on the thread count.
 * Row strides in elements for every [n, d] buffer. */
void layernorm_forward_save(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                            int64_t d, const float *w, const float *b, float eps, float *mean, float *rstd);
void layernorm_backward(float *dx, int64_t dx_stride, float *dw, float *db, const float *dout,
                        int64_t dout_stride, const float *x, int64_t x_stride, const float *mean,
                        const float *rstd, const float *w, int64_t n, int64_t d, int accumulate);

void rmsnorm_forward_save(float *out, int64_t out_stride, const float *x, int64_t x_stride, int64_t n,
                          int64_t d, const float *w, float eps, float *rstd);
void rmsnorm_backward(float *dx, int64_t dx_stride, float *dw, const float *dout, int64_t dout_stride,
                      const float *x, int64_t x_stride, const float *rstd, const float *w, int64_t n,
                      int64_t d, int accumulate);

#endif
