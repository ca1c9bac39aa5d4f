/* Token embedding: a row gather from the table E[V, D] and its backward.
 * (The patch embedding is a Linear over flattened patches: its backward is
 * dm_linear_backward with dx = NULL, see backend/matmul.h.) */
#ifndef DM_OPS_EMBEDDING_H
#define DM_OPS_EMBEDDING_H

#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

/* out[t, :] = E[ids[t], :] (widened to f32) for t < T; E is [V, D] of any float
 * dtype. ids[t] < 0 leaves row t untouched (positions whose embedding the
 * caller supplies itself, e.g. image-pad tokens replaced by vision features).
 * Every id is checked against V before anything is written (DM_ERR_INDEX). */
dm_status embedding_forward(float *out, int64_t out_stride, const dm_tensor *E, const int64_t *ids,
                            int64_t T);

/* dE[ids[t], :] += dout[t, :] for t < T (scatter-add into the f32 [V, D]
 * gradient, always accumulating: a tied LM head adds its own dE elsewhere).
 * ids[t] < 0 is skipped (no gradient reaches the table for spliced positions).
 * Deterministic: parallel over column blocks of D, each column adds the tokens
 * in order t = 0..T-1, so repeated ids give the same bits for any thread count.
 * Ids are checked against V first (DM_ERR_INDEX, nothing written). */
dm_status embedding_backward(float *dE, int64_t V, int64_t D, const int64_t *ids, int64_t T,
                             const float *dout, int64_t dout_stride);

#endif
