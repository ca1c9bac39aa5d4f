/* Rotary position embeddings.
 *
 * 1D part (language model): the DeepSeek/Youtu MLA RoPE on the rope slice of
 * q and k, with optional YaRN frequency interpolation and attention factor.
 * Each function is self-contained; the 2D (vision) part lives beside it. */
#ifndef DM_OPS_ROPE_H
#define DM_OPS_ROPE_H

#include <stdint.h>

#include "core/status.h"

/* YaRN settings as transformers reads them from rope_parameters; type 0 means
 * plain RoPE (all other fields ignored). Zero for an optional float field means
 * "absent" (the transformers defaults then apply). */
typedef struct {
    int yarn;                      /* 0: default rope, 1: yarn */
    double theta;                  /* base */
    double factor;                 /* yarn scale factor (> 0) */
    double original_max_pos;       /* original_max_position_embeddings */
    double beta_fast, beta_slow;   /* 0: 32 / 1 */
    double mscale, mscale_all_dim; /* 0: absent */
    double attention_factor;       /* 0: derived from factor / mscale */
    int truncate;                  /* floor/ceil of the correction range (default 1) */
} dm_rope1d_params;

/* inv_freq[dim/2] and the cos/sin multiplier ("attention factor") exactly as
 * transformers' default / yarn initialisers compute them (float32 results). */
dm_status rope1d_init(const dm_rope1d_params *p, int dim, float *inv_freq, float *attn_factor);

/* Softmax scale of MLA attention: head_dim^-0.5, times yarn_get_mscale(factor,
 * mscale_all_dim)^2 under YaRN when mscale_all_dim is set (DeepSeek correction). */
float rope1d_softmax_scale(const dm_rope1d_params *p, int qk_head_dim);

/* Rotate in place the `dim`-wide slices x[t*row_stride + h*head_stride + 0..dim)
 * for t < T, h < n_heads, token t at position pos0 + t.
 * interleave=1: pairs (x[2i], x[2i+1]) rotated by frequency i and written back
 * de-interleaved ([evens' | odds']), as transformers' apply_rotary_pos_emb_interleave.
 * interleave=0: rotate_half convention (x[i], x[i+dim/2]). */
void rope1d_forward(float *x, int64_t T, int64_t n_heads, int64_t row_stride, int64_t head_stride,
                    int dim, int64_t pos0, const float *inv_freq, float attn_factor, int interleave);

/* 2D part (vision tower, Qwen2.5-VL style). With half = head_dim/2 and
 * q = head_dim/4 frequencies f_j = theta^(-2j/half), token t gets the angles
 * [rows[t]*f_0..f_{q-1}, cols[t]*f_0..f_{q-1}] (half of them); cos/sin tables
 * are [n][half] f32. head_dim must be a multiple of 4. */
void rope2d_tables(float *cos_t, float *sin_t, const int32_t *rows, const int32_t *cols, int64_t n,
                   int head_dim, float theta);

/* Rotate-half RoPE in place on x[t*row_stride + h*head_dim + 0..head_dim) for
 * t < n, h < n_heads: dim i pairs with i + half, angle from the tables' row t. */
void rope2d_forward(float *x, int64_t n, int64_t n_heads, int64_t row_stride, int head_dim,
                    const float *cos_t, const float *sin_t);

/* ---- Backwards (in place on the gradient, nothing saved) ----
 * RoPE is a fixed orthogonal-times-attn_factor linear map per (token, head):
 * y = A x, so dx = A^T dy. dx holds dy on entry (same layout and strides as the
 * forward's x) and the input gradient on return. With c_i, s_i the cos/sin of
 * frequency i (times attn_factor for 1D) and half = dim/2:
 *   rope1d interleave=1 (y[i] = x[2i] c - x[2i+1] s, y[half+i] = x[2i+1] c + x[2i] s):
 *       dx[2i] = dy[i] c + dy[half+i] s,   dx[2i+1] = dy[half+i] c - dy[i] s
 *     (the gradient comes back in the interleaved input order)
 *   rope1d interleave=0 and rope2d (rotate-half):
 *       dx[i] = dy[i] c + dy[half+i] s,    dx[half+i] = dy[half+i] c - dy[i] s
 * Same argument meanings as the forwards. */
void rope1d_backward(float *dx, int64_t T, int64_t n_heads, int64_t row_stride, int64_t head_stride,
                     int dim, int64_t pos0, const float *inv_freq, float attn_factor, int interleave);
void rope2d_backward(float *dx, int64_t n, int64_t n_heads, int64_t row_stride, int head_dim,
                     const float *cos_t, const float *sin_t);

#endif
