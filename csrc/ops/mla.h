/* Absorbed MLA attention for a few new tokens (decode), inference only.
 *
 * With the latent cache c_j = [latent_j (C floats) | k_rot_j (R floats)] per token
 * (row stride C+R) and one kv group g = h / hpg per head, the attention of
 * head h of new token t is computed without expanding the cache:
 *   qa[t,h] = [q_nope[t,h] . W_UK[g] | q_rot[t,h]]                (mla_absorb_q)
 *   lo[t,h] = sum_j softmax_j(scale qa[t,h] . c_j) latent_j        (mla_latent_attention)
 *   out[t,h] = W_UV[g] lo[t,h]                                      (mla_absorb_out)
 * where W_UK[g] = kv_b rows g*(nope+v) .. +nope and W_UV[g] the next v rows
 * (kv_b [G*(nope+v), C], f32 or bf16 read in place: never widened into a copy).
 *
 * Why not attention_forward with one shared kv head: that visits the cache once
 * per head. Here every block of cached rows is read once for all T*H query
 * rows. Keys are split into fixed blocks of DM_MLA_KEY_BLOCK whose partial
 * softmax states are merged in block order, so results do not depend on the
 * thread count. No backward: training uses the expanded form. */
#ifndef DM_OPS_MLA_H
#define DM_OPS_MLA_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

#define DM_MLA_KEY_BLOCK 128
/* Query rows (T * H) one latent-attention call takes; callers split larger T. */
#define DM_MLA_MAX_ROWS 256

typedef struct {
    int64_t T;   /* new tokens (query rows per head) */
    int64_t Tk;  /* cached tokens, the new ones last (causal: token t sees keys <= Tk - T + t) */
    int H, hpg;  /* heads, heads per kv group */
    int C, R;    /* kv_lora_rank, qk_rope_head_dim */
    int nope, vdim;
    float scale;
} dm_mla_args;

/* qa [T, H, C+R] from q [T, H, nope+R] (q_rot copied). */
dm_status mla_absorb_q_forward(float *qa, const float *q, const dm_tensor *kv_b, const dm_mla_args *a);

/* Bytes of workspace mla_latent_attention_forward needs (the per-block partial
 * states: blocks * T*H * (C+2) floats). */
size_t mla_latent_attention_workspace_bytes(const dm_mla_args *a);

/* lo [T, H, C] from qa [T, H, C+R] and cache [Tk, C+R]; workspace of at least
 * mla_latent_attention_workspace_bytes(a) (NULL: allocated here). */
dm_status mla_latent_attention_forward(float *lo, const float *qa, const float *cache, const dm_mla_args *a,
                                       void *workspace, size_t workspace_bytes);

/* out [T, H, vdim] from lo [T, H, C]. */
dm_status mla_absorb_out_forward(float *out, const float *lo, const dm_tensor *kv_b, const dm_mla_args *a);

#endif
