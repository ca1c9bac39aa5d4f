/* The one matrix-product interface everything above the backends uses.
 *
 *   out[M,N] = x[M,K] . w[N,K]^T (+ bias[N]) (+ out, when accumulate)
 *
 * x and out are f32 activations, row-major and contiguous. w is a weight view of
 * any float dtype (F32, BF16, F16), used in place: on the oneDNN backend bf16
 * weights meet bf16-rounded activations with f32 accumulation (AMX/AVX512-BF16
 * where present); on the OpenBLAS backend weights are widened to f32 a panel at
 * a time, never as a whole copy. */
#ifndef DM_BACKEND_MATMUL_H
#define DM_BACKEND_MATMUL_H

#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

typedef enum {
    DM_BACKEND_ONEDNN = 0,
    DM_BACKEND_OPENBLAS = 1,
} dm_backend;

dm_status dm_matmul(dm_backend backend, float *out, const float *x, const dm_tensor *w,
                    const dm_tensor *bias, int64_t M, int accumulate);

/* Backend implementations (same contract as dm_matmul, w already validated). */
dm_status dm_matmul_onednn(float *out, const float *x, const dm_tensor *w,
                           const dm_tensor *bias, int64_t M, int accumulate);
dm_status dm_matmul_openblas(float *out, const float *x, const dm_tensor *w,
                             const dm_tensor *bias, int64_t M, int accumulate);

/* ---- Transposed products for the backward of a linear layer -------------
 * Forward: Y[M,N] = X[M,K] . W[N,K]^T + b[N]. With dY = dL/dY:
 *   dX[M,K] = dY[M,N] . W[N,K]          (dm_matmul_dx)
 *   dW[N,K] = dY[M,N]^T . X[M,K]        (dm_matmul_dw)
 *   db[N]   = sum_m dY[m,:]             (dm_bias_grad)
 * All f32 and row-major; ld* are row strides in elements (0: packed, i.e. K for
 * X/dX, N for dY) so column slices of wider rows can be used in place.
 * `accumulate` = 0 overwrites the destination, 1 adds to it (gradient
 * accumulation over micro-batches, or two consumers of one activation).
 * W (dm_matmul_dx) may be F32, BF16 or F16 like dm_matmul: f32 master weights
 * are the training case and are exact f32 products on both backends; a BF16
 * W on oneDNN meets bf16-rounded dY (the precision of the bf16 forward), other
 * non-f32 W are widened a panel at a time (OpenBLAS path).
 * The products' summation order is the backend's (its blocking may depend on
 * the thread count, so their last bits may too); dm_bias_grad is deterministic. */
dm_status dm_matmul_dx(dm_backend backend, float *dx, int64_t ldx, const float *dy, int64_t ldy,
                       const dm_tensor *w, int64_t M, int accumulate);
dm_status dm_matmul_dw(dm_backend backend, float *dw, const float *dy, int64_t ldy, const float *x,
                       int64_t ldx, int64_t M, int64_t N, int64_t K, int accumulate);
/* db[N] (+)= column sums of dY[M,N] (row stride ldy, 0: N). Sequential over m per
 * column (parallel over column blocks): bit-identical for any thread count. */
void dm_bias_grad(float *db, const float *dy, int64_t ldy, int64_t M, int64_t N, int accumulate);

/* The whole linear backward over packed buffers: dX (+)= dY W (dx may be NULL:
 * no input gradient, e.g. the patch embedding), dW += dY^T X and db += sum dY
 * (dw / db may be NULL: frozen or absent). Parameter gradients always
 * accumulate; dx follows accumulate_dx. w is the forward's weight view
 * (shape [N,K]); dw is an f32 [N,K] buffer. The forward saves X. */
dm_status dm_linear_backward(dm_backend backend, float *dx, float *dw, float *db, const float *dy,
                             const float *x, const dm_tensor *w, int64_t M, int accumulate_dx);

/* Backend implementations of the two products (arguments validated, ld* resolved). */
dm_status dm_matmul_dx_openblas(float *dx, int64_t ldx, const float *dy, int64_t ldy, const dm_tensor *w,
                                int64_t M, int accumulate);
dm_status dm_matmul_dw_openblas(float *dw, const float *dy, int64_t ldy, const float *x, int64_t ldx,
                                int64_t M, int64_t N, int64_t K, int accumulate);
dm_status dm_matmul_dx_onednn(float *dx, int64_t ldx, const float *dy, int64_t ldy, const dm_tensor *w,
                              int64_t M, int accumulate);
dm_status dm_matmul_dw_onednn(float *dw, const float *dy, int64_t ldy, const float *x, int64_t ldx,
                              int64_t M, int64_t N, int64_t K, int accumulate);

/* Information for build_info(). */
const char *dm_onednn_version(void);   /* "3.2.0 (git hash)" */
const char *dm_onednn_isa(void);       /* "AVX-512 + AMX (bf16)" ... */
const char *dm_openblas_version(void); /* openblas_get_config() */
const char *dm_openblas_core(void);    /* kernel family OpenBLAS picked */
void dm_openblas_set_threads(int n);

#endif
