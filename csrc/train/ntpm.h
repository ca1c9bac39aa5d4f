/* NTP-M: the multi-label next-token loss of DenseMLLM for vision tokens (paper
 * Sec. 3.2, Eq. 3-5) and the ablation losses of Tables 3-4, value and gradient in
 * one pass. Exact definitions, tie-break and edge cases: docs/ntpm.md.
 *
 * Targets are sparse: per token a CSR list of positive ids, and a validity set
 * that is all ids, one [V] mask shared by all tokens, or a CSR id list per token.
 * No dense [L, V] target is ever built; the gradient is the only [L, V] output. */
#ifndef DM_TRAIN_NTPM_H
#define DM_TRAIN_NTPM_H

#include <stdint.h>

#include "core/status.h"

typedef enum {
    NTPM_VARIANT_NTPM = 0,   /* mean over positives + mean over top-k valid negatives */
    NTPM_VARIANT_BCE,        /* plain BCE, mean over all valid ids */
    NTPM_VARIANT_INDIVIDUAL, /* mean over positives + mean over all valid negatives */
    NTPM_VARIANT_BALANCED,   /* class-balanced BCE (HED weights), mean over valid ids */
    NTPM_VARIANT_FOCAL,      /* sigmoid focal loss (gamma, alpha), mean over valid ids */
    NTPM_VARIANT_OHEM,       /* positives + hardest ceil(ratio*max(|P|,1)) negatives, joint mean */
    NTPM_VARIANT_NTP_CE,     /* single-label softmax cross-entropy over the valid ids */
    NTPM_VARIANT_COUNT
} ntpm_variant;
/* Python-facing names of the variants, in enum order. */
extern const char *const ntpm_variant_names[NTPM_VARIANT_COUNT];

typedef enum {
    NTPM_REDUCE_SUM = 0,  /* sum of the token losses */
    NTPM_REDUCE_MEAN,     /* sum / number of active (not masked) tokens; 0 if none */
    NTPM_REDUCE_NONE,     /* per-token losses; the gradient is that of their sum */
} ntpm_reduction;

typedef struct {
    int64_t L, V;
    /* Exactly one of: f32 logits [L, V], or bf16 bit patterns [L, V]. Row-major,
     * contiguous rows. */
    const float *logits;
    const uint16_t *logits_bf16;
    /* Positives in CSR: token i owns pos_ids[pos_offsets[i] .. pos_offsets[i+1]).
     * Duplicates are ignored (set semantics); ids outside the token's valid set are
     * dropped (P_i = valid ids with y = 1, as in the paper). */
    const int64_t *pos_offsets; /* [L + 1] */
    const int64_t *pos_ids;     /* [n_pos] */
    int64_t n_pos;
    /* Validity: valid_mask [V] (nonzero = valid) shared by all tokens, or CSR id
     * sets (duplicates ignored), or neither (all ids valid). Not both. With sets,
     * token i uses set valid_set[i] (valid_set NULL: set i, one set per token), so
     * a per-sample set is stored once. n_sets: the number of sets (valid_offsets
     * has n_sets + 1 entries); 0 with valid_set NULL means n_sets = L. */
    const uint8_t *valid_mask;
    const int64_t *valid_offsets; /* [n_sets + 1] */
    const int64_t *valid_ids;     /* [n_valid] */
    int64_t n_valid;
    const int64_t *valid_set;     /* [L] set index per token, or NULL */
    int64_t n_sets;
    /* ntp_ce only: label per token (-1 = ignore the token), or NULL to use each
     * token's first positive (in the given order) that is valid. */
    const int64_t *labels;
    int64_t k;          /* ntpm: number of relevant negatives kept, >= 0 */
    double gamma;       /* focal: >= 0 */
    double alpha;       /* focal: in [0, 1]; < 0 disables the alpha weighting */
    double ohem_ratio;  /* ohem: > 0 */
    ntpm_variant variant;
    ntpm_reduction reduction;
    int threads;        /* <= 0: the library's thread count */
} ntpm_args;

/* The gradient of ntpm / ohem in sparse form: token i's nonzero entries are
 * ids[i*stride .. +count[i]) (ascending) with values vals[...]. */
typedef struct {
    int64_t stride;  /* >= ntpm_sparse_stride() */
    int32_t *ids;    /* [L, stride] */
    float *vals;     /* [L, stride] */
    int64_t *count;  /* [L] */
} ntpm_sparse_grad;

/* Validates `a` (sizes, offsets, ids, parameters; no logits are read) and counts
 * the tokens that are active (not masked: a non-empty valid set and, for ntp_ce,
 * a label). */
dm_status ntpm_count_active(const ntpm_args *a, int64_t *n_active);

/* Validates `a` and gives the per-token capacity a sparse gradient needs (the most
 * positives of a token + the most negatives kept). ntpm and ohem only. */
dm_status ntpm_sparse_stride(const ntpm_args *a, int64_t *stride);

/* Computes the loss of `a` and its gradient with respect to the logits.
 *   loss       : the reduced loss (sum or mean; for NONE the sum), may be NULL
 *   token_loss : [L] per-token losses (0 for masked tokens), may be NULL
 *   grad       : [L, V] f32 gradient of the reduced loss, or NULL for none; every
 *                entry outside the selected terms is 0. With grad_zeroed != 0 the
 *                caller promises grad is already all zeros (e.g. calloc'd) and only
 *                the nonzero entries are written.
 *   sparse     : the same gradient as (ids, values) per token, or NULL (ntpm / ohem)
 *   n_active   : number of tokens that are not masked, may be NULL
 * Errors (DM_ERR_VALUE): bad sizes or offsets, ids out of range, k < 0, bad
 * variant parameters, NaN logits among a token's valid ids, an ntp_ce label
 * outside the token's valid set. DM_ERR_NOMEM when scratch cannot be allocated. */
dm_status ntpm_forward_backward(const ntpm_args *a, double *loss, float *token_loss, float *grad,
                                int grad_zeroed, const ntpm_sparse_grad *sparse, int64_t *n_active);

#endif
