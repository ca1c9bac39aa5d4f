/* Small-M matrix products (decode steps): out[M,N] = x[M,K] . w[N,K]^T
 * (+ bias) (+ out when accumulate), M <= DM_GEMV_MAX_M.
 *
 * Why: at M = 1 a GEMM library spends its time packing and dispatching; the
 * product is a stream over the weight matrix (memory-bandwidth bound). This
 * reads bf16 (or f32) weight rows in place, widens bf16 exactly to f32 (a
 * shift), and accumulates in f32 against f32 activations (no bf16 rounding of
 * x, so it is at least as accurate as either backend), OpenMP over rows. */
#ifndef DM_BACKEND_GEMV_H
#define DM_BACKEND_GEMV_H

#include <stdint.h>

#include "backend/matmul.h"
#include "core/status.h"
#include "core/tensor.h"

#define DM_GEMV_MAX_M 4

/* Whether dm_matmul routes this product through dm_gemv (M small, weight dtype
 * bf16 or f32, fast path enabled). */
int dm_gemv_applies(dm_backend backend, const dm_tensor *w, int64_t M);

/* Same contract as dm_matmul (w, bias already validated by it). */
dm_status dm_gemv(float *out, const float *x, const dm_tensor *w, const dm_tensor *bias, int64_t M,
                  int accumulate);

/* Process-wide switch (default on), for benchmarks and tests comparing paths. */
void dm_gemv_set_enabled(int on);
int dm_gemv_enabled(void);

#endif
