/* Vision tower: preprocessing, weight binding and the forward pass.
 *
 * The tower runs in window order (Qwen2.5-VL): patches are permuted once before
 * the patch embedding, every layer then sees windows as contiguous segments of
 * the streaming attention kernel (global layers: one segment), and the merger
 * output is permuted back to the row-major merged grid. */
#include "model/vision.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/interrupt.h"
#include "io/safetensors.h"
#include "model/params.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/norm.h"
#include "ops/resize.h"
#include "ops/rope.h"

/* ---------------- preprocessing ---------------- */

/* mean 0.5 and std 0.5 of the processor, times 1 / rescale_factor (255) */
#define VISION_NORM_MEAN 127.5f
#define VISION_NORM_STD 127.5f

dm_status vision_target_size(int64_t H, int64_t W, int64_t patch, int64_t merge,
                             int64_t max_num_patches, int64_t *OH, int64_t *OW) {
    if (H <= 0 || W <= 0) return dm_fail(DM_ERR_VALUE, "image is empty (%lld x %lld)", (long long)H, (long long)W);
    if (patch <= 0 || merge <= 0) return dm_fail(DM_ERR_VALUE, "patch and merge sizes must be positive");
    if (max_num_patches < merge * merge)
        return dm_fail(DM_ERR_VALUE, "max_num_patches=%lld is below one merged token (%lld patches)",
                       (long long)max_num_patches, (long long)(merge * merge));
    const int64_t unit = patch * merge;
    double scale = 1.0;
    for (int k = 1;; k++) {
        int64_t oh = (int64_t)ceil((double)H * scale / (double)unit) * unit;
        int64_t ow = (int64_t)ceil((double)W * scale / (double)unit) * unit;
        if (oh < unit) oh = unit;
        if (ow < unit) ow = unit;
        if ((oh / patch) * (ow / patch) <= max_num_patches) {
            *OH = oh;
            *OW = ow;
            return DM_OK;
        }
        /* 0.02 steps as the reference processor; past 0.02, shrink by 2% so
         * that extreme aspect ratios still terminate (at unit x unit at worst). */
        scale = k < 49 ? 1.0 - 0.02 * k : scale * 0.98;
        if (k > 100000) return dm_fail(DM_ERR_VALUE, "target size search did not converge");
    }
}

dm_status vision_preprocess(float *patches, const uint8_t *img, int64_t H, int64_t W, int64_t C,
                            int64_t sh, int64_t sw, int64_t sc, int64_t OH, int64_t OW,
                            int64_t patch, int64_t merge) {
    const int64_t unit = patch * merge;
    if (OH <= 0 || OW <= 0 || OH % unit || OW % unit)
        return dm_fail(DM_ERR_VALUE, "preprocess: target %lld x %lld is not a multiple of %lld",
                       (long long)OH, (long long)OW, (long long)unit);
    uint8_t *rs = dm_alloc((size_t)OH * (size_t)OW, (size_t)C, "resized image");
    if (!rs) return DM_ERR_NOMEM;
    dm_status st = resize_bilinear_aa_u8(rs, img, H, W, C, sh, sw, sc, OH, OW);
    if (st != DM_OK) {
        dm_free(rs);
        return st;
    }
    const int64_t gh = OH / patch, gw = OW / patch, mm = merge * merge, bw = gw / merge;
    const int64_t pd = C * patch * patch;
    (void)gh;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < gh * gw; t++) {
        const int64_t b = t / mm, in = t % mm;
        const int64_t prow = (b / bw) * merge + in / merge, pcol = (b % bw) * merge + in % merge;
        float *dst = patches + t * pd;
        for (int64_t py = 0; py < patch; py++) {
            const uint8_t *src = rs + ((prow * patch + py) * OW + pcol * patch) * C;
            /* rescale 1/255 and normalise (mean 0.5, std 0.5) fused as transformers' fast
             * processor does: mean and std scaled by 255 in f32 (127.5 both), then
             * (v - 127.5f) / 127.5f in f32, so the values are bit-equal to its output. */
            for (int64_t i = 0; i < patch * C; i++)
                dst[py * patch * C + i] = ((float)src[i] - VISION_NORM_MEAN) / VISION_NORM_STD;
        }
    }
    dm_free(rs);
    return DM_OK;
}

/* ---------------- weights ---------------- */

const char *const dm_vision_prefixes[] = {"siglip2.vision_model.", "vision_model.", NULL};
const char *const dm_merger_prefixes[] = {"merger.", "vision_model.merger.", NULL};

static dm_status vision_check_config(const dm_vision_config *c) {
    if (c->hidden <= 0 || c->heads <= 0 || c->ffn <= 0 || c->layers <= 0 || c->patch <= 0 ||
        c->channels <= 0 || c->merge <= 0 || c->out_hidden <= 0)
        return dm_fail(DM_ERR_VALUE, "vision config: sizes must be positive");
    if (c->layers > DM_VISION_MAX_LAYERS)
        return dm_fail(DM_ERR_VALUE, "vision config: %lld layers (max %d)", (long long)c->layers,
                       DM_VISION_MAX_LAYERS);
    if (c->hidden % c->heads || (c->hidden / c->heads) % 4 || c->hidden / c->heads > 2048)
        return dm_fail(DM_ERR_VALUE,
                       "vision config: head dim hidden/heads = %lld/%lld must be a whole multiple of 4",
                       (long long)c->hidden, (long long)c->heads);
    if (c->window_size <= 0 || c->window_size % (c->merge * c->patch))
        return dm_fail(DM_ERR_VALUE, "vision config: window_size %lld is not a multiple of merge*patch=%lld",
                       (long long)c->window_size, (long long)(c->merge * c->patch));
    if (!(c->ln_eps > 0) || !(c->merger_eps > 0) || !(c->rope_theta > 0))
        return dm_fail(DM_ERR_VALUE, "vision config: eps and rope theta must be positive");
    return DM_OK;
}

/* Floats of v->small: the widened norm vectors. */
static int64_t vision_small_floats(const dm_vision_config *c) { return (4 * c->layers + 3) * c->hidden; }

dm_status vision_params(const dm_vision_config *c, dm_vision *v, dm_param_bind_fn bind, void *ctx) {
    DM_TRY(vision_check_config(c));
    const int64_t D = c->hidden, F = c->ffn, L = c->layers, PD = c->channels * c->patch * c->patch;
    const int64_t Dm = c->merge * c->merge * D;
    float *sp = v ? v->small : NULL;
    char name[160];
    /* a matrix (cols > 0) or bias (cols == 0) bound as a view */
#define MAT(pre, field, rows, cols)                                                                   \
    do {                                                                                             \
        dm_param_slot s_ = {pre, name, (cols) > 0 ? 2 : 1, {rows, cols}, v ? &(field) : NULL, NULL, NULL}; \
        DM_TRY(bind(ctx, &s_));                                                                      \
    } while (0)
    /* a norm vector of D floats, widened into v->small */
#define VEC(pre, field)                                                                \
    do {                                                                              \
        dm_param_slot s_ = {pre, name, 1, {D, 0}, NULL, v ? &(field) : NULL, sp};     \
        DM_TRY(bind(ctx, &s_));                                                       \
        if (sp) sp += D;                                                              \
    } while (0)
#define NAME(...) snprintf(name, sizeof name, __VA_ARGS__)
    NAME("embeddings.patch_embedding.weight");
    MAT(dm_vision_prefixes, v->patch_w, D, PD);
    NAME("embeddings.patch_embedding.bias");
    MAT(dm_vision_prefixes, v->patch_b, D, 0);
    for (int64_t i = 0; i < L; i++) {
        dm_vision_layer *l = v ? &v->layers[i] : NULL;
        const char *p = "encoder.layers";
        long long li = (long long)i;
        NAME("%s.%lld.layer_norm1.weight", p, li);
        VEC(dm_vision_prefixes, l->ln1_w);
        NAME("%s.%lld.layer_norm1.bias", p, li);
        VEC(dm_vision_prefixes, l->ln1_b);
        NAME("%s.%lld.layer_norm2.weight", p, li);
        VEC(dm_vision_prefixes, l->ln2_w);
        NAME("%s.%lld.layer_norm2.bias", p, li);
        VEC(dm_vision_prefixes, l->ln2_b);
        struct { const char *n; int64_t rows, cols; dm_tensor *t; } ws[] = {
            {"self_attn.q_proj.weight", D, D, l ? &l->q : NULL},   {"self_attn.q_proj.bias", D, 0, l ? &l->qb : NULL},
            {"self_attn.k_proj.weight", D, D, l ? &l->k : NULL},   {"self_attn.k_proj.bias", D, 0, l ? &l->kb : NULL},
            {"self_attn.v_proj.weight", D, D, l ? &l->v : NULL},   {"self_attn.v_proj.bias", D, 0, l ? &l->vb : NULL},
            {"self_attn.out_proj.weight", D, D, l ? &l->o : NULL}, {"self_attn.out_proj.bias", D, 0, l ? &l->ob : NULL},
            {"mlp.fc1.weight", F, D, l ? &l->fc1 : NULL},          {"mlp.fc1.bias", F, 0, l ? &l->fc1b : NULL},
            {"mlp.fc2.weight", D, F, l ? &l->fc2 : NULL},          {"mlp.fc2.bias", D, 0, l ? &l->fc2b : NULL},
        };
        for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) {
            NAME("%s.%lld.%s", p, li, ws[j].n);
            dm_param_slot s_ = {dm_vision_prefixes, name, ws[j].cols > 0 ? 2 : 1, {ws[j].rows, ws[j].cols},
                                ws[j].t, NULL, NULL};
            DM_TRY(bind(ctx, &s_));
        }
    }
    NAME("post_layernorm.weight");
    VEC(dm_vision_prefixes, v->post_ln_w);
    NAME("post_layernorm.bias");
    VEC(dm_vision_prefixes, v->post_ln_b);
    /* merger: RMSNorm per patch, merge^2 concat, Linear -> GELU -> Linear */
    NAME("ln_q.weight");
    VEC(dm_merger_prefixes, v->mln_w);
    NAME("mlp.0.weight");
    MAT(dm_merger_prefixes, v->m0, Dm, Dm);
    NAME("mlp.0.bias");
    MAT(dm_merger_prefixes, v->m0b, Dm, 0);
    NAME("mlp.2.weight");
    MAT(dm_merger_prefixes, v->m2, c->out_hidden, Dm);
    NAME("mlp.2.bias");
    MAT(dm_merger_prefixes, v->m2b, c->out_hidden, 0);
#undef MAT
#undef VEC
#undef NAME
    return DM_OK;
}

dm_status vision_create_bound(const dm_vision_config *c, dm_backend backend, dm_param_bind_fn bind, void *ctx,
                              dm_vision **out) {
    *out = NULL;
    DM_TRY(vision_check_config(c));
    dm_vision *v = dm_calloc(1, sizeof *v, "vision tower");
    if (!v) return DM_ERR_NOMEM;
    v->cfg = *c;
    v->backend = backend;
    pthread_mutex_init(&v->lock, NULL);
    v->layers = dm_calloc((size_t)c->layers, sizeof(dm_vision_layer), "vision layers");
    v->small = dm_alloc((size_t)vision_small_floats(c), sizeof(float), "vision norm weights");
    dm_status st = DM_ERR_NOMEM;
    if (v->layers && v->small) st = vision_params(c, v, bind, ctx);
    if (st != DM_OK) {
        vision_destroy(v);
        return st;
    }
    *out = v;
    return DM_OK;
}

dm_status vision_create(const dm_checkpoint *ck, const dm_vision_config *cfg, dm_backend backend,
                        dm_vision **out) {
    return vision_create_bound(cfg, backend, dm_param_bind_checkpoint, (void *)ck, out);
}

void vision_destroy(dm_vision *v) {
    if (!v) return;
    dm_arena_free(&v->arena);
    pthread_mutex_destroy(&v->lock);
    dm_free(v->layers);
    dm_free(v->small);
    dm_free(v);
}

/* ---------------- forward ---------------- */

void vision_window_index(int64_t mh, int64_t mw, int64_t win, int64_t unit, int64_t *perm,
                         int64_t *segments, int64_t *n_seg) {
    int64_t p = 0, s = 0;
    segments[0] = 0;
    for (int64_t wy = 0; wy < mh; wy += win)
        for (int64_t wx = 0; wx < mw; wx += win) {
            for (int64_t y = wy; y < wy + win && y < mh; y++)
                for (int64_t x = wx; x < wx + win && x < mw; x++) perm[p++] = y * mw + x;
            segments[++s] = p * unit;
        }
    *n_seg = s;
}

static dm_status vision_encode_locked(dm_vision *v, const float *patches, int64_t gh, int64_t gw,
                                     float *out);

dm_status vision_encode(dm_vision *v, const float *patches, int64_t gh, int64_t gw, float *out) {
    pthread_mutex_lock(&v->lock);
    dm_status st = vision_encode_locked(v, patches, gh, gw, out);
    pthread_mutex_unlock(&v->lock);
    return st;
}

static dm_status check_grid(const dm_vision_config *c, int64_t gh, int64_t gw) {
    const int64_t mg = c->merge;
    if (gh <= 0 || gw <= 0 || gh % mg || gw % mg)
        return dm_fail(DM_ERR_VALUE, "vision: grid %lld x %lld is not a positive multiple of merge %lld",
                       (long long)gh, (long long)gw, (long long)mg);
    return DM_OK;
}

/* Shared prologue: window order, patches permuted into R, grid coordinates,
 * patch embedding into X, 2D RoPE tables. */
static dm_status vision_embed(const dm_vision *v, const float *patches, int64_t gh, int64_t gw, float *X,
                              float *R, float *cos_t, float *sin_t, int64_t *perm, int64_t *seg, int64_t *n_seg,
                              int32_t *rows, int32_t *cols) {
    const dm_vision_config *c = &v->cfg;
    const int64_t mg = c->merge, unit = mg * mg, mh = gh / mg, mw = gw / mg, M = mh * mw, N = gh * gw;
    const int64_t PD = c->channels * c->patch * c->patch, hd = c->hidden / c->heads;
    const int64_t win = c->window_size / mg / c->patch;
    vision_window_index(mh, mw, win, unit, perm, seg, n_seg);
    /* Patches and their grid coordinates in window order. */
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < M; p++) {
        const int64_t b = perm[p];
        for (int64_t u = 0; u < unit; u++) {
            memcpy(R + (p * unit + u) * PD, patches + (b * unit + u) * PD, (size_t)PD * sizeof(float));
            rows[p * unit + u] = (int32_t)((b / mw) * mg + u / mg);
            cols[p * unit + u] = (int32_t)((b % mw) * mg + u % mg);
        }
    }
    DM_TRY(dm_matmul(v->backend, X, R, &v->patch_w, &v->patch_b, N, 0));
    rope2d_tables(cos_t, sin_t, rows, cols, N, (int)hd, c->rope_theta);
    return DM_OK;
}

static void layer_attn_args(const dm_vision *v, int64_t i, int64_t N, const int64_t *seg, int64_t n_seg,
                            dm_attn_args *a) {
    const dm_vision_config *c = &v->cfg;
    const int64_t hd = c->hidden / c->heads;
    memset(a, 0, sizeof *a);
    a->Tq = a->Tk = N;
    a->H = a->Hkv = (int)c->heads;
    a->Dk = a->Dv = (int)hd;
    a->scale = 1.0f / sqrtf((float)hd);
    if (!c->full_attn[i]) {
        a->segments = seg;
        a->n_seg = n_seg;
    }
}

/* One encoder layer on the residual stream X [N, D] (updated in place).
 * la NULL (inference): Hb [N, D] and R [N, max(3D, F)] are scratch. la set
 * (training): every intermediate goes to la, which keeps what the backward needs. */
static dm_status vision_layer_forward(const dm_vision *v, int64_t i, float *X, float *Hb, float *R, int64_t N,
                                      const float *cos_t, const float *sin_t, const int64_t *seg, int64_t n_seg,
                                      void *ws, size_t ws_bytes, dm_vision_layer_acts *la) {
    const dm_vision_config *c = &v->cfg;
    const dm_vision_layer *l = &v->layers[i];
    const int64_t D = c->hidden, F = c->ffn, H = c->heads, hd = D / H;
    float *h1 = la ? la->ln1 : Hb, *Q = la ? la->q : R, *K = la ? la->k : R + N * D, *V = la ? la->v : R + 2 * N * D;
    float *attn = la ? la->attn : Hb, *h2 = la ? la->ln2 : Hb, *f1 = la ? la->fc1 : R, *act = la ? la->act : R;
    if (la) {
        if (la->x_in != X) memcpy(la->x_in, X, (size_t)(N * D) * sizeof(float));
        layernorm_forward_save(h1, D, X, D, N, D, l->ln1_w, l->ln1_b, c->ln_eps, la->ln1_mean, la->ln1_rstd);
    } else {
        layernorm_forward(h1, D, X, D, N, D, l->ln1_w, l->ln1_b, c->ln_eps);
    }
    DM_TRY(dm_matmul(v->backend, Q, h1, &l->q, &l->qb, N, 0));
    DM_TRY(dm_matmul(v->backend, K, h1, &l->k, &l->kb, N, 0));
    DM_TRY(dm_matmul(v->backend, V, h1, &l->v, &l->vb, N, 0));
    rope2d_forward(Q, N, H, D, (int)hd, cos_t, sin_t);
    rope2d_forward(K, N, H, D, (int)hd, cos_t, sin_t);
    dm_attn_args a;
    layer_attn_args(v, i, N, seg, n_seg, &a);
    /* bf16 weights on oneDNN already round every matmul input to bf16: the
     * attention products may too (AMX); the OpenBLAS path stays f32. */
    a.bf16 = v->backend == DM_BACKEND_ONEDNN && l->q.dtype == DM_BF16;
    a.workspace = ws;
    a.workspace_bytes = ws_bytes;
    a.lse = la ? la->lse : NULL;
    DM_TRY(attention_forward(attn, Q, K, V, &a));
    DM_TRY(dm_matmul(v->backend, X, attn, &l->o, &l->ob, N, 1));
    if (la) {
        memcpy(la->x_mid, X, (size_t)(N * D) * sizeof(float));
        layernorm_forward_save(h2, D, X, D, N, D, l->ln2_w, l->ln2_b, c->ln_eps, la->ln2_mean, la->ln2_rstd);
    } else {
        layernorm_forward(h2, D, X, D, N, D, l->ln2_w, l->ln2_b, c->ln_eps);
    }
    DM_TRY(dm_matmul(v->backend, f1, h2, &l->fc1, &l->fc1b, N, 0));
    if (c->gelu_tanh)
        gelu_tanh_forward(act, f1, N * F);
    else
        gelu_forward(act, f1, N * F);
    DM_TRY(dm_matmul(v->backend, X, act, &l->fc2, &l->fc2b, N, 1));
    return DM_OK;
}

static dm_status vision_encode_locked(dm_vision *v, const float *patches, int64_t gh, int64_t gw,
                                     float *out) {
    const dm_vision_config *c = &v->cfg;
    DM_TRY(check_grid(c, gh, gw));
    const int64_t mg = c->merge;
    const int64_t N = gh * gw, D = c->hidden, F = c->ffn, H = c->heads, hd = D / H;
    const int64_t PD = c->channels * c->patch * c->patch, mh = gh / mg, mw = gw / mg, M = mh * mw;
    int64_t rw = 3 * D > F ? 3 * D : F;
    if (PD > rw) rw = PD;
    if (2 * D > rw) rw = 2 * D; /* merger work (normed + mid) reuses this region */
    /* attention's packed K/V come from the arena too (warm pages across layers and calls) */
    dm_attn_args wa = {0};
    wa.Tq = wa.Tk = N;
    wa.H = wa.Hkv = (int)H;
    wa.Dk = wa.Dv = (int)hd;
    const size_t ws_bytes = attention_workspace_bytes(&wa);
    const size_t bytes = sizeof(float) * ((size_t)N * (2 * D + rw) + (size_t)N * hd + (size_t)M * c->out_hidden) +
                         sizeof(int64_t) * (2 * (size_t)M + 2) + sizeof(int32_t) * 2 * (size_t)N + ws_bytes + 16 * 64;
    if (v->arena.cap < bytes) { /* grow (never shrinks: the largest image sets it) */
        dm_arena_free(&v->arena);
        DM_TRY(dm_arena_init(&v->arena, bytes));
    }
    dm_arena *arp = &v->arena;
    dm_arena_reset(arp);
    dm_status st = DM_ERR_NOMEM;
    float *X = dm_arena_take(arp, (size_t)N * D, sizeof(float));
    float *Hb = dm_arena_take(arp, (size_t)N * D, sizeof(float));
    float *R = dm_arena_take(arp, (size_t)N * rw, sizeof(float));
    float *cos_t = dm_arena_take(arp, (size_t)N * hd / 2, sizeof(float));
    float *sin_t = dm_arena_take(arp, (size_t)N * hd / 2, sizeof(float));
    float *Y = dm_arena_take(arp, (size_t)M * c->out_hidden, sizeof(float));
    int64_t *perm = dm_arena_take(arp, (size_t)M, sizeof(int64_t));
    int64_t *seg = dm_arena_take(arp, (size_t)M + 1, sizeof(int64_t));
    int32_t *rows = dm_arena_take(arp, (size_t)N, sizeof(int32_t));
    int32_t *cols = dm_arena_take(arp, (size_t)N, sizeof(int32_t));
    void *ws = dm_arena_take(arp, ws_bytes, 1);
    if (!X || !Hb || !R || !cos_t || !sin_t || !Y || !perm || !seg || !rows || !cols || !ws) goto done;

    int64_t n_seg = 0;
    if ((st = vision_embed(v, patches, gh, gw, X, R, cos_t, sin_t, perm, seg, &n_seg, rows, cols))) goto done;
    for (int64_t i = 0; i < c->layers; i++) {
        if (dm_interrupted()) {
            st = dm_interrupt_status();
            goto done;
        }
        if ((st = vision_layer_forward(v, i, X, Hb, R, N, cos_t, sin_t, seg, n_seg, ws, ws_bytes, NULL))) goto done;
    }
    layernorm_forward(Hb, D, X, D, N, D, v->post_ln_w, v->post_ln_b, c->ln_eps);
    if ((st = merger_forward(v, Y, Hb, M, R))) goto done;
    /* back from window order to the row-major merged grid */
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < M; p++)
        memcpy(out + perm[p] * c->out_hidden, Y + p * c->out_hidden, (size_t)c->out_hidden * sizeof(float));
    st = DM_OK;
done:
    dm_arena_reset(arp);
    /* keep up to 512 MiB for the next image (a 1024x1024 image needs ~160 MiB);
     * a huge one gives its memory back */
    if (arp->cap > ((size_t)512 << 20)) dm_arena_free(arp);
    return st;
}

/* ---------------- training ---------------- */

/* Layout of the acts block: carve (NULL base: count only). Returns bytes. */
static size_t vision_acts_layout(dm_vision_acts *a, const dm_vision_config *c, int64_t gh, int64_t gw, int ckpt,
                                 char *base) {
    const int64_t mg = c->merge, N = gh * gw, M = N / (mg * mg), D = c->hidden, F = c->ffn, H = c->heads;
    const int64_t PD = c->channels * c->patch * c->patch, hd = D / H, Dm = mg * mg * D, L = c->layers;
    size_t off = 0;
#define TAKE(ptr, count, type)                                                        \
    do {                                                                              \
        size_t b_ = ((size_t)(count) * sizeof(type) + 63) / 64 * 64;                  \
        if (base) (ptr) = (type *)(base + off);                                       \
        off += b_;                                                                    \
    } while (0)
    dm_vision_layer_acts scratch; /* the counting pass (base NULL) writes nothing */
    for (int64_t i = 0; i < L; i++) {
        dm_vision_layer_acts *la = base ? &a->layers[i] : &scratch;
        if (i > 0 && ckpt) { /* share layer 0's set, own x_in */
            if (base) *la = a->layers[0];
            TAKE(la->x_in, N * D, float);
            continue;
        }
        TAKE(la->x_in, N * D, float);
        TAKE(la->ln1, N * D, float);
        TAKE(la->ln1_mean, N, float);
        TAKE(la->ln1_rstd, N, float);
        TAKE(la->q, N * D, float);
        TAKE(la->k, N * D, float);
        TAKE(la->v, N * D, float);
        TAKE(la->attn, N * D, float);
        TAKE(la->lse, N * H, float);
        TAKE(la->x_mid, N * D, float);
        TAKE(la->ln2, N * D, float);
        TAKE(la->ln2_mean, N, float);
        TAKE(la->ln2_rstd, N, float);
        TAKE(la->fc1, N * F, float);
        TAKE(la->act, N * F, float);
    }
    TAKE(a->patches, N * PD, float);
    TAKE(a->x_final, N * D, float);
    TAKE(a->post, N * D, float);
    TAKE(a->post_mean, N, float);
    TAKE(a->post_rstd, N, float);
    TAKE(a->mnorm, N * D, float);
    TAKE(a->mnorm_rstd, N, float);
    TAKE(a->mid, M * Dm, float);
    TAKE(a->mid_act, M * Dm, float);
    TAKE(a->cos_t, N * hd / 2, float);
    TAKE(a->sin_t, N * hd / 2, float);
    TAKE(a->perm, M, int64_t);
    TAKE(a->seg, M + 1, int64_t);
#undef TAKE
    return off;
}

size_t vision_acts_bytes(const dm_vision_config *c, int64_t gh, int64_t gw, int checkpointing) {
    dm_vision_acts a;
    return vision_acts_layout(&a, c, gh, gw, checkpointing, NULL);
}

dm_status vision_acts_init(dm_vision_acts *a, const dm_vision_config *c, int64_t gh, int64_t gw,
                           int checkpointing, void *buf, size_t cap) {
    memset(a, 0, sizeof *a);
    DM_TRY(check_grid(c, gh, gw));
    if (gh * gw > ((int64_t)1 << 24))
        return dm_fail(DM_ERR_VALUE, "vision: %lld patches is too many to train on", (long long)(gh * gw));
    a->layers = dm_calloc((size_t)c->layers, sizeof *a->layers, "vision activations");
    if (!a->layers) return DM_ERR_NOMEM;
    a->bytes = vision_acts_layout(a, c, gh, gw, checkpointing, NULL);
    a->owns_block = !(buf && cap >= a->bytes);
    a->block = a->owns_block ? dm_alloc(a->bytes, 1, "vision activations") : buf;
    if (!a->block) {
        vision_acts_free(a);
        return DM_ERR_NOMEM;
    }
    vision_acts_layout(a, c, gh, gw, checkpointing, a->block);
    a->gh = gh;
    a->gw = gw;
    a->N = gh * gw;
    a->M = a->N / (c->merge * c->merge);
    a->checkpointing = checkpointing;
    return DM_OK;
}

void vision_acts_free(dm_vision_acts *a) {
    dm_free(a->layers);
    if (a->owns_block) dm_free(a->block);
    memset(a, 0, sizeof *a);
}

dm_status vision_forward_train(dm_vision *v, const float *patches, dm_vision_acts *a, float *out) {
    const dm_vision_config *c = &v->cfg;
    const int64_t N = a->N, M = a->M, D = c->hidden, L = c->layers;
    int32_t *rc = dm_alloc((size_t)(2 * N), sizeof(int32_t), "vision grid coordinates");
    float *X = dm_alloc((size_t)(N * D), sizeof(float), "vision residual stream");
    float *Y = dm_alloc((size_t)(M * c->out_hidden), sizeof(float), "vision merger output");
    dm_status st = DM_ERR_NOMEM;
    if (!rc || !X || !Y) goto done;
    if ((st = vision_embed(v, patches, a->gh, a->gw, X, a->patches, a->cos_t, a->sin_t, a->perm, a->seg, &a->n_seg,
                           rc, rc + N)))
        goto done;
    for (int64_t i = 0; i < L; i++)
        if ((st = vision_layer_forward(v, i, X, NULL, NULL, N, a->cos_t, a->sin_t, a->seg, a->n_seg, NULL, 0,
                                       &a->layers[i])))
            goto done;
    memcpy(a->x_final, X, (size_t)(N * D) * sizeof(float));
    layernorm_forward_save(a->post, D, X, D, N, D, v->post_ln_w, v->post_ln_b, c->ln_eps, a->post_mean,
                           a->post_rstd);
    if ((st = merger_run(v, Y, a->post, M, a->mnorm, a->mnorm_rstd, a->mid, a->mid_act))) goto done;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < M; p++)
        memcpy(out + a->perm[p] * c->out_hidden, Y + p * c->out_hidden, (size_t)c->out_hidden * sizeof(float));
done:
    dm_free(rc);
    dm_free(X);
    dm_free(Y);
    return st;
}

#define GRAD(w) dm_params_grad_of(P, (w))

/* Linear backward of y = x W^T + b with W a bound master view. */
static dm_status lin_bw(const dm_vision *v, const dm_params *P, float *dx, const float *dy, const float *x,
                        const dm_tensor *w, const dm_tensor *b, int64_t M, int acc_dx) {
    float *dw = GRAD(w->data), *db = b ? GRAD(b->data) : NULL;
    if (!dw || (b && !db)) return dm_fail(DM_ERR_VALUE, "vision backward: weights are not bound to a parameter table");
    return dm_linear_backward(v->backend, dx, dw, db, dy, x, w, M, acc_dx);
}

/* Backward of one layer: dX holds d(output) and becomes d(input). */
static dm_status vision_layer_backward(const dm_vision *v, const dm_params *P, int64_t i, dm_vision_layer_acts *la,
                                       const int64_t *seg, int64_t n_seg, const float *cos_t, const float *sin_t,
                                       float *dX, float *dF, float *dH, float *dq, float *dk, float *dv, int64_t N) {
    const dm_vision_config *c = &v->cfg;
    const dm_vision_layer *l = &v->layers[i];
    const int64_t D = c->hidden, F = c->ffn, hd = D / c->heads;
    /* MLP: x_out = x_mid + fc2(act(fc1(ln2(x_mid)))) */
    DM_TRY(lin_bw(v, P, dF, dX, la->act, &l->fc2, &l->fc2b, N, 0));
    if (c->gelu_tanh)
        gelu_tanh_backward(dF, dF, la->fc1, N * F, 0);
    else
        gelu_backward(dF, dF, la->fc1, N * F, 0);
    DM_TRY(lin_bw(v, P, dH, dF, la->ln2, &l->fc1, &l->fc1b, N, 0));
    layernorm_backward(dX, D, GRAD(l->ln2_w), GRAD(l->ln2_b), dH, D, la->x_mid, D, la->ln2_mean, la->ln2_rstd,
                       l->ln2_w, N, D, 1);
    /* attention: x_mid = x_in + out_proj(attn(rope(q), rope(k), v)) of ln1(x_in) */
    DM_TRY(lin_bw(v, P, dH, dX, la->attn, &l->o, &l->ob, N, 0));
    dm_attn_args a;
    layer_attn_args(v, i, N, seg, n_seg, &a);
    DM_TRY(attention_backward(dq, dk, dv, dH, la->q, la->k, la->v, la->attn, la->lse, &a));
    rope2d_backward(dq, N, c->heads, D, (int)hd, cos_t, sin_t);
    rope2d_backward(dk, N, c->heads, D, (int)hd, cos_t, sin_t);
    DM_TRY(lin_bw(v, P, dH, dq, la->ln1, &l->q, &l->qb, N, 0));
    DM_TRY(lin_bw(v, P, dH, dk, la->ln1, &l->k, &l->kb, N, 1));
    DM_TRY(lin_bw(v, P, dH, dv, la->ln1, &l->v, &l->vb, N, 1));
    layernorm_backward(dX, D, GRAD(l->ln1_w), GRAD(l->ln1_b), dH, D, la->x_in, D, la->ln1_mean, la->ln1_rstd,
                       l->ln1_w, N, D, 1);
    return DM_OK;
}

dm_status vision_backward(dm_vision *v, const dm_params *P, dm_vision_acts *a, const float *dout) {
    const dm_vision_config *c = &v->cfg;
    const int64_t N = a->N, M = a->M, D = c->hidden, F = c->ffn, Dm = c->merge * c->merge * D, O = c->out_hidden;
    const int64_t big = (F > Dm ? F : Dm) > O ? (F > Dm ? F : Dm) : O;
    float *dX = dm_alloc((size_t)(N * D), sizeof(float), "vision gradient");
    float *dF = dm_alloc((size_t)(N * (big > D ? big : D)), sizeof(float), "vision gradient scratch");
    float *dH = dm_alloc((size_t)(N * D), sizeof(float), "vision gradient scratch");
    float *dqkv = dm_alloc((size_t)(3 * N * D), sizeof(float), "vision attention gradients");
    float *tmp = a->checkpointing ? dm_alloc((size_t)(N * D), sizeof(float), "vision recompute stream") : NULL;
    dm_status st = DM_ERR_NOMEM;
    if (!dX || !dF || !dH || !dqkv || (a->checkpointing && !tmp)) goto done;
    /* merger: out[perm[p]] = m2(gelu(m0(rms(post)))) of window-order token p */
    float *dY = dqkv; /* [M, O] in window order; M*O <= 3*N*D is not guaranteed: use dF when larger */
    if (M * O > 3 * N * D) dY = dF;
    for (int64_t p = 0; p < M; p++) memcpy(dY + p * O, dout + a->perm[p] * O, (size_t)O * sizeof(float));
    float *dmid = dY == dF ? dqkv : dF; /* [M, Dm] = N*D floats */
    if ((st = lin_bw(v, P, dmid, dY, a->mid_act, &v->m2, &v->m2b, M, 0))) goto done;
    gelu_backward(dmid, dmid, a->mid, M * Dm, 0);
    if ((st = lin_bw(v, P, dH, dmid, a->mnorm, &v->m0, &v->m0b, M, 0))) goto done;
    rmsnorm_backward(dX, D, GRAD(v->mln_w), dH, D, a->post, D, a->mnorm_rstd, v->mln_w, N, D, 0);
    /* post_layernorm (its output gradient is dX; the input gradient goes to dH, then back to dX) */
    layernorm_backward(dH, D, GRAD(v->post_ln_w), GRAD(v->post_ln_b), dX, D, a->x_final, D, a->post_mean,
                       a->post_rstd, v->post_ln_w, N, D, 0);
    memcpy(dX, dH, (size_t)(N * D) * sizeof(float));
    for (int64_t i = c->layers - 1; i >= 0; i--) {
        dm_vision_layer_acts *la = &a->layers[i];
        if (a->checkpointing) { /* refill the shared set by re-running layer i from its input */
            memcpy(tmp, la->x_in, (size_t)(N * D) * sizeof(float));
            if ((st = vision_layer_forward(v, i, tmp, NULL, NULL, N, a->cos_t, a->sin_t, a->seg, a->n_seg, NULL, 0,
                                           la)))
                goto done;
        }
        if ((st = vision_layer_backward(v, P, i, la, a->seg, a->n_seg, a->cos_t, a->sin_t, dX, dF, dH, dqkv,
                                        dqkv + N * D, dqkv + 2 * N * D, N)))
            goto done;
    }
    /* patch embedding: no input gradient */
    st = lin_bw(v, P, NULL, dX, a->patches, &v->patch_w, &v->patch_b, N, 0);
done:
    dm_free(dX);
    dm_free(dF);
    dm_free(dH);
    dm_free(dqkv);
    dm_free(tmp);
    return st;
}
