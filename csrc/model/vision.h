/* The vision side: image preprocessing and the Qwen2.5-VL-style windowed ViT
 * with SigLIP2 layers, followed by the 2x2 patch merger (notes sections 2, 3). */
#ifndef DM_MODEL_VISION_H
#define DM_MODEL_VISION_H

#include <pthread.h>
#include <stdint.h>

#include "backend/matmul.h"
#include "core/alloc.h"
#include "core/status.h"
#include "core/tensor.h"
#include "model/params.h"

struct dm_checkpoint;

#define DM_VISION_MAX_LAYERS 256

typedef struct {
    int64_t hidden, heads, ffn, layers, patch, channels, merge, out_hidden, window_size;
    float ln_eps;      /* LayerNorm eps of the tower (1e-6) */
    float merger_eps;  /* RMSNorm eps of the merger (1e-6) */
    float rope_theta;  /* 10000 */
    int gelu_tanh;     /* tower MLP activation: 1 gelu_pytorch_tanh, 0 exact gelu */
    uint8_t full_attn[DM_VISION_MAX_LAYERS]; /* 1 for layers with global attention */
} dm_vision_config;

/* ---- preprocessing ---- */

/* Resized size for an H x W image: sides rounded up to multiples of
 * patch*merge; while (OH/patch)*(OW/patch) > max_num_patches the scale shrinks
 * by 0.02 (then by 2% steps geometrically below 0.02, so any size terminates). */
dm_status vision_target_size(int64_t H, int64_t W, int64_t patch, int64_t merge,
                             int64_t max_num_patches, int64_t *OH, int64_t *OW);

/* uint8 RGB image (byte strides) -> patches f32 [gh*gw, C*patch*patch] in 2x2
 * merge-block order (blocks row-major, patches row-major in a block, each patch
 * [py][px][c]), values (v - 127.5f) / 127.5f (the processor's fused rescale 1/255 and
 * normalisation with mean = std = 0.5) of the uint8 anti-aliased bilinear resize to
 * OH x OW (multiples of patch*merge; bit-exact to torch, see ops/resize.h). */
dm_status vision_preprocess(float *patches, const uint8_t *img, int64_t H, int64_t W, int64_t C,
                            int64_t sh, int64_t sw, int64_t sc, int64_t OH, int64_t OW,
                            int64_t patch, int64_t merge);

/* ---- tower ---- */

typedef struct {
    dm_tensor q, k, v, o, qb, kb, vb, ob, fc1, fc1b, fc2, fc2b;
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b; /* widened f32 copies (small vectors) */
} dm_vision_layer;

typedef struct dm_vision {
    dm_vision_config cfg;
    dm_backend backend;
    dm_tensor patch_w, patch_b;
    dm_vision_layer *layers;
    float *post_ln_w, *post_ln_b;
    /* merger */
    float *mln_w;
    dm_tensor m0, m0b, m2, m2b;
    float *small; /* one allocation holding all widened vectors */
    /* Activation arena kept between calls up to 512 MiB (fresh pages cost ~10%
     * of a forward in page faults); the lock serialises concurrent encodes. */
    pthread_mutex_t lock;
    dm_arena arena;
} dm_vision;

/* Bind the tower's weights from the checkpoint (prefixes siglip2.vision_model. /
 * vision_model.; merger merger. / vision_model.merger.), validating every shape
 * against cfg. The checkpoint must outlive the returned object. */
dm_status vision_create(const struct dm_checkpoint *ck, const dm_vision_config *cfg,
                        dm_backend backend, dm_vision **out);
void vision_destroy(dm_vision *v);

/* Prefix alternatives of the tower's and the merger's checkpoint names. */
extern const char *const dm_vision_prefixes[];
extern const char *const dm_merger_prefixes[];

/* Every weight of the tower and merger as a slot (params.h), in one fixed
 * order; v NULL lists them without a model (the config is validated). */
dm_status vision_params(const dm_vision_config *cfg, dm_vision *v, dm_param_bind_fn bind, void *ctx);

/* vision_create with any binder (the training table binds its f32 masters). */
dm_status vision_create_bound(const dm_vision_config *cfg, dm_backend backend, dm_param_bind_fn bind,
                              void *ctx, dm_vision **out);

/* patches f32 [gh*gw, C*patch^2] (merge-block order) -> out f32
 * [gh/merge * gw/merge, out_hidden] row-major over the merged grid. */
dm_status vision_encode(dm_vision *v, const float *patches, int64_t gh, int64_t gw, float *out);

/* Window order of the merged tokens (Qwen2.5-VL get_window_index): perm[p] is the
 * merged token at window position p; segments (n_seg+1 boundaries, in patches)
 * delimit the windows. perm has mh*mw entries, segments room for mh*mw+1. */
void vision_window_index(int64_t mh, int64_t mw, int64_t win, int64_t unit, int64_t *perm,
                         int64_t *segments, int64_t *n_seg);

/* ---- training: saved activations, forward that fills them, backward ----
 *
 * What a tower layer's backward needs, sized from the sequence (N patches,
 * D hidden, F ffn, H heads), in floats:
 *   x_in N*D (layer input), ln1 N*D + ln1_mean/rstd 2N, q/k/v 3*N*D (after RoPE),
 *   attn N*D + lse N*H, x_mid N*D, ln2 N*D + 2N, fc1 N*F (pre-activation), act N*F
 *   = N*(8D + 2F + H + 4) per layer.
 * Checkpointing keeps only x_in per layer (N*D) plus ONE layer's set, which the
 * backward refills by re-running that layer's forward from x_in. */
typedef struct {
    float *x_in, *ln1, *ln1_mean, *ln1_rstd, *q, *k, *v, *attn, *lse, *x_mid, *ln2, *ln2_mean, *ln2_rstd;
    float *fc1, *act;
} dm_vision_layer_acts;

typedef struct {
    int64_t gh, gw, N, M, n_seg;
    int checkpointing;
    dm_vision_layer_acts *layers; /* [layers]; with checkpointing all but x_in are shared */
    float *patches;               /* [N, PD] in window order (patch embedding input) */
    float *x_final;               /* [N, D] tower output before post_layernorm */
    float *post, *post_mean, *post_rstd; /* post_layernorm: [N, D], [N], [N] */
    float *mnorm, *mnorm_rstd;    /* merger RMSNorm: [N, D] (= [M, merge^2 D]), [N] */
    float *mid, *mid_act;         /* merger hidden [M, merge^2 D] before / after GELU */
    float *cos_t, *sin_t;         /* [N, hd/2] */
    int64_t *perm, *seg;          /* [M], [M + 1] */
    void *block;                  /* one block holding all of the above */
    size_t bytes;
    int owns_block;               /* 0: the caller's buffer (kept between steps) */
} dm_vision_acts;

/* Bytes dm_vision_acts_init allocates for a gh x gw patch grid. */
size_t vision_acts_bytes(const dm_vision_config *c, int64_t gh, int64_t gw, int checkpointing);
/* buf: a caller block of cap bytes used when large enough (NULL: allocate one). */
dm_status vision_acts_init(dm_vision_acts *a, const dm_vision_config *c, int64_t gh, int64_t gw,
                           int checkpointing, void *buf, size_t cap);
void vision_acts_free(dm_vision_acts *a);

/* The forward of vision_encode (same code, same weights) keeping what the
 * backward needs in `a` (initialised for this grid). out as vision_encode. */
dm_status vision_forward_train(dm_vision *v, const float *patches, dm_vision_acts *a, float *out);

/* Backward: dout [M, out_hidden] (row-major merged grid, the layout of out) ->
 * parameter gradients added into P's gradient buffers (v must be bound to P by
 * dm_params_bind). `a` holds the forward's activations (refilled layer by layer
 * when checkpointing). dout is not modified. */
dm_status vision_backward(dm_vision *v, const dm_params *P, dm_vision_acts *a, const float *dout);

/* The merger alone: x f32 [n*merge^2, hidden] (a merged token's patches
 * adjacent) -> out [n, out_hidden]. `work` needs 2*n*merge^2*hidden floats. */
dm_status merger_forward(const dm_vision *v, float *out, const float *x, int64_t n, float *work);

/* The merger with its intermediates in caller buffers: normed [n*merge^2, D],
 * rstd [n*merge^2] (NULL: not saved), mid / mid_act [n, merge^2 D] before / after
 * the GELU (the same buffer for inference). */
dm_status merger_run(const dm_vision *v, float *out, const float *x, int64_t n, float *normed, float *rstd,
                     float *mid, float *mid_act);

#endif
