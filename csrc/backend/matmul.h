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

/* Information for build_info(). */
const char *dm_onednn_version(void);   /* "3.2.0 (git hash)" */
const char *dm_onednn_isa(void);       /* "AVX-512 + AMX (bf16)" ... */
const char *dm_openblas_version(void); /* openblas_get_config() */
const char *dm_openblas_core(void);    /* kernel family OpenBLAS picked */
void dm_openblas_set_threads(int n);

#endif
