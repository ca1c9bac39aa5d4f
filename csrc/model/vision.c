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
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/norm.h"
#include "ops/resize.h"
#include "ops/rope.h"

/* ---------------- preprocessing ---------------- */

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
    float *rs = dm_alloc((size_t)OH * (size_t)OW, (size_t)C * sizeof(float), "resized image");
    if (!rs) return DM_ERR_NOMEM;
    dm_status st = resize_bilinear_aa_u8(rs, img, H, W, C, sh, sw, sc, OH, OW, 1.0f, 0.0f);
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
            const float *src = rs + ((prow * patch + py) * OW + pcol * patch) * C;
            /* rescale 1/255, then normalise with mean 0.5 and std 0.5 (the processor's order) */
            for (int64_t i = 0; i < patch * C; i++) dst[py * patch * C + i] = (src[i] * (1.0f / 255.0f) - 0.5f) / 0.5f;
        }
    }
    dm_free(rs);
    return DM_OK;
}

/* ---------------- weights ---------------- */

static const char *const vis_prefixes[] = {"siglip2.vision_model.", "vision_model.", NULL};
static const char *const merger_prefixes[] = {"merger.", "vision_model.merger.", NULL};

static dm_status get_w(const dm_checkpoint *ck, const char *const *pre, const char *name, int64_t n,
                       int64_t k, dm_tensor *out) {
    int64_t shape[2] = {n, k};
    return dm_checkpoint_weight(ck, pre, name, k > 0 ? 2 : 1, shape, out);
}

/* A small vector widened to f32 into `dst`. */
static dm_status get_vec(const dm_checkpoint *ck, const char *const *pre, const char *name, int64_t n,
                         float *dst) {
    dm_tensor t;
    DM_TRY(get_w(ck, pre, name, n, 0, &t));
    return dm_tensor_to_f32(&t, dst);
}

dm_status vision_create(const dm_checkpoint *ck, const dm_vision_config *cfg, dm_backend backend,
                        dm_vision **out) {
    *out = NULL;
    const dm_vision_config *c = cfg;
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
    dm_vision *v = dm_calloc(1, sizeof *v, "vision tower");
    if (!v) return DM_ERR_NOMEM;
    v->cfg = *c;
    v->backend = backend;
    pthread_mutex_init(&v->lock, NULL);
    const int64_t D = c->hidden, F = c->ffn, L = c->layers, PD = c->channels * c->patch * c->patch;
    const int64_t Dm = c->merge * c->merge * D;
    v->layers = dm_calloc((size_t)L, sizeof(dm_vision_layer), "vision layers");
    v->small = dm_alloc((size_t)(4 * L + 3) * (size_t)D, sizeof(float), "vision norm weights");
    dm_status st = DM_ERR_NOMEM;
    if (!v->layers || !v->small) goto fail;
    float *sp = v->small;
    char name[160];
#define TRY(e)                        \
    do {                              \
        if ((st = (e)) != DM_OK) goto fail; \
    } while (0)
    TRY(get_w(ck, vis_prefixes, "embeddings.patch_embedding.weight", D, PD, &v->patch_w));
    TRY(get_w(ck, vis_prefixes, "embeddings.patch_embedding.bias", D, 0, &v->patch_b));
    for (int64_t i = 0; i < L; i++) {
        dm_vision_layer *l = &v->layers[i];
        struct { const char *n; int64_t rows, cols; dm_tensor *t; } ws[] = {
            {"self_attn.q_proj.weight", D, D, &l->q},   {"self_attn.q_proj.bias", D, 0, &l->qb},
            {"self_attn.k_proj.weight", D, D, &l->k},   {"self_attn.k_proj.bias", D, 0, &l->kb},
            {"self_attn.v_proj.weight", D, D, &l->v},   {"self_attn.v_proj.bias", D, 0, &l->vb},
            {"self_attn.out_proj.weight", D, D, &l->o}, {"self_attn.out_proj.bias", D, 0, &l->ob},
            {"mlp.fc1.weight", F, D, &l->fc1},          {"mlp.fc1.bias", F, 0, &l->fc1b},
            {"mlp.fc2.weight", D, F, &l->fc2},          {"mlp.fc2.bias", D, 0, &l->fc2b},
        };
        for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) {
            snprintf(name, sizeof name, "encoder.layers.%lld.%s", (long long)i, ws[j].n);
            TRY(get_w(ck, vis_prefixes, name, ws[j].rows, ws[j].cols, ws[j].t));
        }
        float **vecs[4] = {&l->ln1_w, &l->ln1_b, &l->ln2_w, &l->ln2_b};
        const char *vn[4] = {"layer_norm1.weight", "layer_norm1.bias", "layer_norm2.weight",
                             "layer_norm2.bias"};
        for (int j = 0; j < 4; j++) {
            *vecs[j] = sp;
            sp += D;
            snprintf(name, sizeof name, "encoder.layers.%lld.%s", (long long)i, vn[j]);
            TRY(get_vec(ck, vis_prefixes, name, D, *vecs[j]));
        }
    }
    v->post_ln_w = sp, sp += D;
    v->post_ln_b = sp, sp += D;
    v->mln_w = sp, sp += D;
    TRY(get_vec(ck, vis_prefixes, "post_layernorm.weight", D, v->post_ln_w));
    TRY(get_vec(ck, vis_prefixes, "post_layernorm.bias", D, v->post_ln_b));
    TRY(get_vec(ck, merger_prefixes, "ln_q.weight", D, v->mln_w));
    TRY(get_w(ck, merger_prefixes, "mlp.0.weight", Dm, Dm, &v->m0));
    TRY(get_w(ck, merger_prefixes, "mlp.0.bias", Dm, 0, &v->m0b));
    TRY(get_w(ck, merger_prefixes, "mlp.2.weight", c->out_hidden, Dm, &v->m2));
    TRY(get_w(ck, merger_prefixes, "mlp.2.bias", c->out_hidden, 0, &v->m2b));
#undef TRY
    *out = v;
    return DM_OK;
fail:
    vision_destroy(v);
    return st;
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

static dm_status vision_encode_locked(dm_vision *v, const float *patches, int64_t gh, int64_t gw,
                                     float *out) {
    const dm_vision_config *c = &v->cfg;
    const int64_t mg = c->merge, unit = mg * mg;
    if (gh <= 0 || gw <= 0 || gh % mg || gw % mg)
        return dm_fail(DM_ERR_VALUE, "vision: grid %lld x %lld is not a positive multiple of merge %lld",
                       (long long)gh, (long long)gw, (long long)mg);
    const int64_t N = gh * gw, D = c->hidden, F = c->ffn, H = c->heads, hd = D / H;
    const int64_t PD = c->channels * c->patch * c->patch, mh = gh / mg, mw = gw / mg, M = mh * mw;
    const int64_t win = c->window_size / mg / c->patch;
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
    vision_window_index(mh, mw, win, unit, perm, seg, &n_seg);
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
    if ((st = dm_matmul(v->backend, X, R, &v->patch_w, &v->patch_b, N, 0))) goto done;
    rope2d_tables(cos_t, sin_t, rows, cols, N, (int)hd, c->rope_theta);

    float *Q = R, *K = R + N * D, *V = R + 2 * N * D;
    for (int64_t i = 0; i < c->layers; i++) {
        if (dm_interrupted()) {
            st = dm_interrupt_status();
            goto done;
        }
        const dm_vision_layer *l = &v->layers[i];
        layernorm_forward(Hb, D, X, D, N, D, l->ln1_w, l->ln1_b, c->ln_eps);
        if ((st = dm_matmul(v->backend, Q, Hb, &l->q, &l->qb, N, 0))) goto done;
        if ((st = dm_matmul(v->backend, K, Hb, &l->k, &l->kb, N, 0))) goto done;
        if ((st = dm_matmul(v->backend, V, Hb, &l->v, &l->vb, N, 0))) goto done;
        rope2d_forward(Q, N, H, D, (int)hd, cos_t, sin_t);
        rope2d_forward(K, N, H, D, (int)hd, cos_t, sin_t);
        dm_attn_args a = {0};
        a.Tq = a.Tk = N;
        a.H = a.Hkv = (int)H;
        a.Dk = a.Dv = (int)hd;
        a.scale = 1.0f / sqrtf((float)hd);
        /* bf16 weights on oneDNN already round every matmul input to bf16: the
         * attention products may too (AMX); the OpenBLAS path stays f32. */
        a.bf16 = v->backend == DM_BACKEND_ONEDNN && l->q.dtype == DM_BF16;
        a.workspace = ws;
        a.workspace_bytes = ws_bytes;
        if (!c->full_attn[i]) {
            a.segments = seg;
            a.n_seg = n_seg;
        }
        if ((st = attention_forward(Hb, Q, K, V, &a))) goto done;
        if ((st = dm_matmul(v->backend, X, Hb, &l->o, &l->ob, N, 1))) goto done;
        layernorm_forward(Hb, D, X, D, N, D, l->ln2_w, l->ln2_b, c->ln_eps);
        if ((st = dm_matmul(v->backend, R, Hb, &l->fc1, &l->fc1b, N, 0))) goto done;
        if (c->gelu_tanh)
            gelu_tanh_forward(R, R, N * F);
        else
            gelu_forward(R, R, N * F);
        if ((st = dm_matmul(v->backend, X, R, &l->fc2, &l->fc2b, N, 1))) goto done;
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
