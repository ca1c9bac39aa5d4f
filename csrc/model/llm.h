/* The Youtu / DeepSeek-MLA decoder language model (notes section 4).
 *
 * Per layer: RMSNorm -> MLA attention -> residual; RMSNorm -> SwiGLU MLP ->
 * residual; then final RMSNorm and the (tied or untied) head. Weights are views
 * into the checkpoint (bf16 in place); only the tiny norm vectors are widened.
 *
 * KV cache: per layer and token we keep the MLA latent after its RMSNorm
 * (kv_lora_rank floats) followed by the rotated shared k_rot (qk_rope_head_dim
 * floats), not per-head K/V (see docs/llm.md for the measured trade-off).
 * Attention runs in one of two mathematically equal forms:
 *   expanded: kv_b(latent) -> per-head K=[k_nope,k_rot], V, then attention
 *             (cheaper when many queries share the keys: prefill);
 *   absorbed: W_UK folded into q (q_nope . W_UK -> kv_lora), attention directly
 *             over the cached latent rows (one shared "kv head" of width
 *             kv_lora+rope), then W_UV applied to the result (decode: never
 *             expands the cache). */
#ifndef DM_MODEL_LLM_H
#define DM_MODEL_LLM_H

#include <stdint.h>

#include "backend/matmul.h"
#include "core/status.h"
#include "core/tensor.h"
#include "model/params.h"
#include "ops/rope.h"

struct dm_checkpoint;

typedef struct {
    int64_t vocab, hidden, inter, n_layers, n_heads, n_kv_heads;
    int64_t q_lora;   /* 0: direct q_proj */
    int64_t kv_lora, nope, rope, vdim;
    int64_t max_pos;
    double eps;
    int rope_interleave, attention_bias, tied;
    int64_t image_token_id;
    dm_rope1d_params rope_params;
} dm_llm_config;

typedef struct {
    dm_tensor q_a, q_a_bias, q_b, q_proj, kv_a, kv_a_bias, kv_b, o, o_bias, gate, up, down;
    float *in_norm, *post_norm, *q_a_norm, *kv_a_norm; /* f32 (in dm_llm.small or the training masters) */
} dm_llm_layer;

enum { DM_ATTN_AUTO = 0, DM_ATTN_EXPANDED = 1, DM_ATTN_ABSORBED = 2 };

typedef struct dm_llm {
    dm_llm_config cfg;
    int64_t kv_groups;  /* key/value head groups in kv_b (heads share one when < n_heads) */
    dm_backend backend;
    dm_tensor embed, head;
    float *final_norm;
    dm_llm_layer *layers;
    float *small; /* the widened norm vectors (inference binding) */
    float *inv_freq;
    float attn_factor, scale;
    int attn_mode; /* DM_ATTN_*: test/benchmark switch, AUTO picks by cost */
} dm_llm;

/* Scratch of dm_llm_layers_forward owned by its caller (a session). */
typedef struct {
    void *block;
    size_t bytes;
} dm_llm_work;
void dm_llm_work_free(dm_llm_work *w);

/* Build from a checkpoint (borrowed: must outlive the model). Every weight is
 * checked for presence and shape; messages name the tensor. */
dm_status dm_llm_create(const struct dm_checkpoint *c, const dm_llm_config *cfg, dm_backend backend,
                        dm_llm **out);
void dm_llm_free(dm_llm *m);

extern const char *const dm_llm_prefixes[]; /* "model." */
extern const char *const dm_root_prefixes[]; /* "" (lm_head.weight) */

/* Key/value head groups kv_b_proj has in this checkpoint (n_heads, or
 * n_kv_heads for a shared-kv checkpoint). */
dm_status dm_llm_kv_groups(const struct dm_checkpoint *c, const dm_llm_config *cfg, int64_t *groups);

/* Every weight of the decoder as a slot (params.h) in one fixed order; m NULL
 * lists them without a model. A tied head has no slot (it is the embedding). */
dm_status dm_llm_params(const dm_llm_config *cfg, int64_t kv_groups, dm_llm *m, dm_param_bind_fn bind,
                        void *ctx);

/* dm_llm_create with any binder (the training table binds its f32 masters). */
dm_status dm_llm_create_bound(const dm_llm_config *cfg, int64_t kv_groups, dm_backend backend,
                              dm_param_bind_fn bind, void *ctx, dm_llm **out);

/* Floats of KV cache per token (all layers). */
int64_t dm_llm_kv_floats_per_token(const dm_llm *m);

/* Run the decoder layers over T new tokens whose embeddings are x[T, hidden]
 * (updated in place to the final normalised hidden states), at positions
 * pos0.. pos0+T-1, reading and appending the cache kv[layer] (rows of
 * kv_floats_per_layer; rows < pos0 already filled, room for pos0+T).
 * work: scratch kept by the caller between calls (grown when a call needs
 * more, so a decode loop allocates nothing after its first step); NULL: a
 * temporary block for this call. */
dm_status dm_llm_layers_forward(const dm_llm *m, float *x, int64_t T, int64_t pos0, float *const *kv,
                                dm_llm_work *work);

/* Embed ids into x[T, hidden], replacing image-pad rows in order by
 * vision[n_vision, hidden] (count must match when vision is given). */
dm_status dm_llm_embed(const dm_llm *m, const int64_t *ids, int64_t T, const float *vision,
                       int64_t n_vision, float *x);

/* ---- training: saved activations, forward that fills them, backward ----
 * Per layer, what its backward needs (T tokens, D hidden, H heads, G kv groups,
 * C kv_lora, R rope, qk = nope + R, nv = nope + v, I inter, ql q_lora), floats:
 *   x_in, h1, x_mid, h2: 4 T D; rstd1/2, kv_rstd(, qa_rstd): 3-4 T;
 *   qa, qa_n: 2 T ql; q: T H qk; ckv, kv: 2 T (C+R); lat: T C;
 *   kvx: T G nv; K: T G qk; V: T G v; ao: T H v; lse: T H; g, u, s: 3 T I.
 * Checkpointing keeps x_in per layer and one shared set, refilled in the
 * backward by re-running the layer from x_in. */
typedef struct {
    float *x_in, *h1, *rstd1, *qa, *qa_n, *qa_rstd, *q, *ckv, *kv, *kv_rstd, *lat, *kvx, *K, *V, *ao, *lse;
    float *x_mid, *h2, *rstd2, *g, *u, *s;
} dm_llm_layer_acts;

typedef struct {
    int64_t T;
    int checkpointing;
    dm_llm_layer_acts *layers;
    float *x_final, *rstd_final; /* input of the final norm, its rstd */
    void *block;
    size_t bytes;
    int owns_block; /* 0: the caller's buffer (kept between steps) */
} dm_llm_acts;

size_t dm_llm_acts_bytes(const dm_llm *m, int64_t T, int checkpointing);
/* buf: a caller block of cap bytes used when large enough (NULL: allocate one). */
dm_status dm_llm_acts_init(dm_llm_acts *a, const dm_llm *m, int64_t T, int checkpointing, void *buf, size_t cap);
void dm_llm_acts_free(dm_llm_acts *a);

/* The decoder over a whole sequence (positions 0..T-1, causal, no cache kept)
 * through the inference layer code, filling a: x [T, hidden] embeddings in
 * (overwritten), h_final [T, hidden] final normalised hidden states out. */
dm_status dm_llm_forward_train(const dm_llm *m, float *x, dm_llm_acts *a, float *h_final);

/* Backward from dh_final [T, hidden]: parameter gradients added into P (the
 * model bound by dm_params_bind), dx [T, hidden] = d(loss)/d(input embeddings)
 * (overwritten). */
dm_status dm_llm_backward(const dm_llm *m, const dm_params *P, dm_llm_acts *a, const float *dh_final, float *dx);

/* logits[M, vocab] = head(x[M, hidden]) (x already final-normalised). */
dm_status dm_llm_head(const dm_llm *m, const float *x, int64_t M, float *logits);

#endif
