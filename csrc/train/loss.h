/* Loss heads fused with the LM head: logits = h . W^T are computed a chunk at a
 * time, the loss and its gradient are taken on the chunk, and the chunk's
 * gradient is pushed straight back through the head (dH, dW); no [tokens, vocab]
 * buffer larger than the chunk budget ever exists.
 *
 * Shapes and conventions (both heads):
 *   h   [T, H] f32, row-major: the final normalised hidden states of the sequence.
 *   w   [V, H] head weight view, F32 / BF16 / F16 (for training: the f32 master).
 *       A tied head passes the embedding matrix here and the embedding's gradient
 *       as dw, so the head's contribution adds to it.
 *   dh  [T, H] f32 or NULL: dh += d(loss)/dh. Rows the loss does not touch are left alone.
 *   dw  [V, H] f32 or NULL: dw += d(loss)/dW (only the rows the loss touches change;
 *       for NTP-M with per-token valid sets, only the valid rows).
 *   "loss" is always the value the gradients are of: weight * (sum of terms) / denom.
 *
 * Chunk budget: the f32 logits (and, where a variant needs it, a separate dense
 * gradient) of one chunk of tokens x vocabulary columns fit in chunk_bytes
 * (<= 0: DM_HEAD_CHUNK_BYTES). The head's other scratch is O(chunk rows x H +
 * threads x V) bytes (marks and lists of the NTP-M kernel) and is reported in
 * *workspace_bytes. Tokens are chunked first; a vocabulary too large for the
 * budget at DM_HEAD_MIN_ROWS rows is streamed in column chunks (cross-entropy:
 * logsumexp streamed over vocabulary chunks, then the logits recomputed for the
 * gradient; NTP-M: the budget is raised to hold DM_HEAD_MIN_ROWS full rows, since
 * its top-k needs a whole row, and the raise is visible in *workspace_bytes).
 *
 * Errors: DM_ERR_VALUE for bad sizes / ids / offsets / parameters (checked before
 * any gradient is touched), DM_ERR_TYPE for a weight dtype that is not a float,
 * DM_ERR_NOMEM. A NaN logit found during the pass is DM_ERR_VALUE too, but then
 * dh / dw may already hold part of the gradient (the inputs were not finite). */
#ifndef DM_TRAIN_LOSS_H
#define DM_TRAIN_LOSS_H

#include <stdint.h>

#include "backend/matmul.h"
#include "core/status.h"
#include "core/tensor.h"
#include "train/ntpm.h"

#define DM_HEAD_CHUNK_BYTES ((int64_t)64 << 20) /* default logits budget: 64 MiB */
#define DM_HEAD_MIN_ROWS 8                      /* fewer rows than this per chunk: stream the vocabulary */

typedef struct {
    int64_t T, H;
    const float *h;         /* [T, H] */
    const dm_tensor *w;     /* [V, H]; V = w->shape[0] */
    float *dh;              /* [T, H] or NULL */
    float *dw;              /* [V, H] f32 or NULL (never aliases h or w) */
    dm_backend backend;     /* for the logits product */
    int64_t chunk_bytes;    /* <= 0: DM_HEAD_CHUNK_BYTES */
    int threads;            /* <= 0: the library's thread count */
} dm_head;

/* (a) Next-token cross-entropy (softmax over the whole vocabulary).
 *   targets [T]: the id row t must predict (the caller shifts: for Hugging Face
 *   labels, targets[t] = labels[t + 1]); rows with targets[t] == ignore_index are
 *   skipped entirely (no logits are computed for them). Any other value must be in
 *   [0, V).
 *   loss = weight * sum_{counted t} (logsumexp(z_t) - z_t[targets[t]]) / denom,
 *   denom = the number of counted rows when denom_in <= 0 (mean over counted
 *   tokens), else denom_in (e.g. the count over all micro-batches of a step).
 *   No counted row: loss 0, nothing touched.
 * Outputs: *loss (may be NULL), *n_counted (may be NULL), *workspace_bytes (peak
 * scratch of the call, may be NULL). */
dm_status dm_head_ce(const dm_head *hd, const int64_t *targets, int64_t ignore_index, double weight,
                     double denom_in, double *loss, int64_t *n_counted, int64_t *workspace_bytes);

/* (b) NTP-M (or one of its ablation variants, train/ntpm.h) on vision positions.
 * Vision token i (i < L) is row rows[i] of h (rows NULL: row i), supervised with
 * the labels of its own merged patch, i.e. no shift: the row dense decoding reads.
 * Targets and validity follow ntpm_args (train/ntpm.h, docs/ntpm.md) in the full
 * vocabulary's ids:
 *   positives  CSR per token (pos_offsets [L+1], pos_ids)
 *   validity   none (every id valid: logits over the whole vocabulary), or valid id
 *              sets in CSR (valid_offsets [n_sets+1], valid_ids), token i using set
 *              token_set[i] (token_set NULL: set i, so n_sets == L). A per-sample
 *              set is one set shared by that sample's tokens. Then only the head
 *              rows of the union of a chunk's sets are multiplied (logits over the
 *              compacted union; ids keep their order, so the top-k tie-break -
 *              lower id wins - is the same as over the full vocabulary).
 *   labels     ntp_ce only: [L] ids (-1 = ignore) or NULL (first valid positive).
 * variant / k / gamma / alpha / ohem_ratio: as ntpm_args.
 *   loss = weight * sum_i loss_i / denom with loss_i the token loss of the kernel;
 *   denom = the number of active (not masked) tokens when denom_in == 0 (mean),
 *   1 when denom_in < 0 (sum, the paper's Eq. 5), else denom_in.
 * The gradient of ntpm / ohem is taken in sparse form (|P_i| + k entries per
 * token): dh and dw cost O(L (|P| + k) H), not O(L V H). */
typedef struct {
    int64_t L;
    const int64_t *rows;          /* [L] or NULL */
    const int64_t *pos_offsets;   /* [L + 1] */
    const int64_t *pos_ids;       /* [n_pos] */
    int64_t n_pos;
    int64_t n_sets;               /* 0: no validity sets */
    const int64_t *valid_offsets; /* [n_sets + 1] */
    const int64_t *valid_ids;     /* [n_valid] */
    int64_t n_valid;
    const int64_t *token_set;     /* [L] in [0, n_sets), or NULL */
    const int64_t *labels;        /* [L] or NULL */
    int64_t k;
    double gamma, alpha, ohem_ratio;
    ntpm_variant variant;
} dm_head_ntpm_args;

/* Outputs: *loss, *n_active (tokens not masked), *workspace_bytes; each may be NULL. */
dm_status dm_head_ntpm(const dm_head *hd, const dm_head_ntpm_args *a, double weight, double denom_in,
                       double *loss, int64_t *n_active, int64_t *workspace_bytes);

#endif
