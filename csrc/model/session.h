/* A generation session: one sequence's KV cache and position over a dm_llm.
 *
 * The cache holds, per layer and token, the normalised MLA latent followed by
 * the rotated k_rot (see llm.h). When the prompt carries an image, the session
 * also keeps the final-RMSNorm'ed hidden states of the vision tokens (rows at
 * the image-pad positions, in order) for dense decoding, which reads them
 * through the accessors below without another forward pass. */
#ifndef DM_MODEL_SESSION_H
#define DM_MODEL_SESSION_H

#include <stdint.h>

#include "backend/matmul.h"
#include "core/status.h"
#include "core/tensor.h"

struct dm_llm;
typedef struct dm_session dm_session;

/* The model is borrowed and must outlive the session. */
dm_status dm_session_create(const struct dm_llm *m, dm_session **out);
void dm_session_free(dm_session *s);

enum {
    DM_OUT_NONE = 0,        /* just extend the cache */
    DM_OUT_LAST_LOGITS = 1, /* out[vocab]: logits of the last new token */
    DM_OUT_ALL_LOGITS = 2,  /* out[T, vocab] */
    DM_OUT_ALL_HIDDEN = 3,  /* out[T, hidden]: final-normalised hidden states */
};

/* Append T >= 1 tokens (ids in [0, vocab)), with `vision[n_vision, hidden]`
 * spliced at the image-pad positions (count must match; at most one image per
 * session; grid_h * grid_w == n_vision when both are > 0). Fails without
 * touching the session when the total would exceed max_position_embeddings. */
dm_status dm_session_extend(dm_session *s, const int64_t *ids, int64_t T, const float *vision,
                            int64_t n_vision, int64_t grid_h, int64_t grid_w, int out_kind, float *out);

int64_t dm_session_position(const dm_session *s);      /* tokens consumed so far */
int64_t dm_session_kv_bytes(const dm_session *s);      /* bytes of cache in use */

/* Vision tokens' final-normalised hidden states (float32 row-major [n, hidden]);
 * n = 0 and hidden = NULL when the session saw no image. */
void dm_session_vision_hidden(const dm_session *s, int64_t *n_tokens, const float **hidden);
/* Positions (token indices) of those vision tokens in the sequence. */
const int64_t *dm_session_vision_positions(const dm_session *s);
/* Merged-token grid of the image (0, 0 when unknown / no image). */
void dm_session_vision_grid(const dm_session *s, int64_t *grid_h, int64_t *grid_w);
/* The output head ([vocab, hidden], lm_head or the tied embedding) and backend. */
const dm_tensor *dm_session_lm_head(const dm_session *s);
dm_backend dm_session_backend(const dm_session *s);
const struct dm_llm *dm_session_model(const dm_session *s);

#endif
