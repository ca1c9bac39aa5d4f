/* Youtu MLA decoder (see llm.h). */
#include "model/llm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/interrupt.h"
#include "io/safetensors.h"
#include "model/params.h"
#include "ops/attention.h"
#include "ops/mla.h"
#include "ops/norm.h"
#include "ops/swiglu.h"

const char *const dm_llm_prefixes[] = {"model.", NULL};
const char *const dm_root_prefixes[] = {"", NULL};

/* ---- construction ------------------------------------------------------- */

void dm_llm_free(dm_llm *m) {
    if (!m) return;
    free(m->layers);
    dm_free(m->small);
    dm_free(m->inv_freq);
    free(m);
}

static int is_float_dtype(dm_dtype t) { return t == DM_F32 || t == DM_BF16 || t == DM_F16; }

static dm_status llm_check_config(const dm_llm_config *k) {
    if (k->vocab <= 0 || k->hidden <= 0 || k->inter <= 0 || k->n_layers <= 0 || k->n_heads <= 0 ||
        k->kv_lora <= 0 || k->nope < 0 || k->rope <= 0 || k->vdim <= 0 || k->max_pos <= 0 || k->q_lora < 0)
        return dm_fail(DM_ERR_VALUE, "llm config: sizes must be positive");
    if (k->rope % 2) return dm_fail(DM_ERR_VALUE, "llm config: qk_rope_head_dim must be even");
    if (k->n_kv_heads <= 0 || k->n_heads % k->n_kv_heads)
        return dm_fail(DM_ERR_VALUE, "llm config: num_attention_heads %lld not a multiple of num_key_value_heads %lld",
                       (long long)k->n_heads, (long long)k->n_kv_heads);
    return DM_OK;
}

/* Floats of m->small: the widened RMSNorm vectors. */
static int64_t llm_small_floats(const dm_llm_config *k) {
    return k->n_layers * (2 * k->hidden + k->q_lora + k->kv_lora) + k->hidden;
}

dm_status dm_llm_kv_groups(const dm_checkpoint *c, const dm_llm_config *k, int64_t *groups) {
    /* kv_b decides how many distinct key/value heads exist: transformers' Youtu
     * (and DeepSeek) give every query head its own k_nope/v (rows H*(nope+v));
     * a checkpoint with rows n_kv_heads*(nope+v) shares each among H/n_kv heads. */
    DM_TRY(llm_check_config(k));
    const char *name = "layers.0.self_attn.kv_b_proj.weight";
    int64_t rows_full = k->n_heads * (k->nope + k->vdim), rows_gqa = k->n_kv_heads * (k->nope + k->vdim);
    if (dm_checkpoint_weight(c, dm_llm_prefixes, name, 2, (int64_t[]){rows_full, k->kv_lora}, NULL) == DM_OK) {
        *groups = k->n_heads;
        return DM_OK;
    }
    DM_TRY(dm_checkpoint_weight(c, dm_llm_prefixes, name, 2, (int64_t[]){rows_gqa, k->kv_lora}, NULL));
    *groups = k->n_kv_heads;
    return DM_OK;
}

dm_status dm_llm_params(const dm_llm_config *k, int64_t kv_groups, dm_llm *m, dm_param_bind_fn bind, void *ctx) {
    DM_TRY(llm_check_config(k));
    if (kv_groups <= 0 || k->n_heads % kv_groups)
        return dm_fail(DM_ERR_VALUE, "llm: %lld key/value groups do not divide %lld heads", (long long)kv_groups,
                       (long long)k->n_heads);
    const int64_t H = k->n_heads, qk = k->nope + k->rope, D = k->hidden;
    float *sp = m ? m->small : NULL;
    char name[160];
#define NAME(...) snprintf(name, sizeof name, __VA_ARGS__)
#define MAT(pre, field, rows, cols)                                                                 \
    do {                                                                                           \
        dm_param_slot s_ = {pre, name, (cols) > 0 ? 2 : 1, {rows, cols}, m ? &(field) : NULL, NULL, NULL}; \
        DM_TRY(bind(ctx, &s_));                                                                    \
    } while (0)
#define VEC(field, n)                                                                         \
    do {                                                                                     \
        dm_param_slot s_ = {dm_llm_prefixes, name, 1, {n, 0}, NULL, m ? &(field) : NULL, sp}; \
        DM_TRY(bind(ctx, &s_));                                                              \
        if (sp) sp += (n);                                                                   \
    } while (0)
    NAME("embed_tokens.weight");
    MAT(dm_llm_prefixes, m->embed, k->vocab, D);
    for (int64_t i = 0; i < k->n_layers; i++) {
        dm_llm_layer *L = m ? &m->layers[i] : NULL;
        const long long li = (long long)i;
        NAME("layers.%lld.input_layernorm.weight", li);
        VEC(L->in_norm, D);
        NAME("layers.%lld.post_attention_layernorm.weight", li);
        VEC(L->post_norm, D);
        if (k->q_lora) {
            NAME("layers.%lld.self_attn.q_a_proj.weight", li);
            MAT(dm_llm_prefixes, L->q_a, k->q_lora, D);
            if (k->attention_bias) {
                NAME("layers.%lld.self_attn.q_a_proj.bias", li);
                MAT(dm_llm_prefixes, L->q_a_bias, k->q_lora, 0);
            }
            NAME("layers.%lld.self_attn.q_a_layernorm.weight", li);
            VEC(L->q_a_norm, k->q_lora);
            NAME("layers.%lld.self_attn.q_b_proj.weight", li);
            MAT(dm_llm_prefixes, L->q_b, H * qk, k->q_lora);
        } else {
            NAME("layers.%lld.self_attn.q_proj.weight", li);
            MAT(dm_llm_prefixes, L->q_proj, H * qk, D);
        }
        NAME("layers.%lld.self_attn.kv_a_proj_with_mqa.weight", li);
        MAT(dm_llm_prefixes, L->kv_a, k->kv_lora + k->rope, D);
        if (k->attention_bias) {
            NAME("layers.%lld.self_attn.kv_a_proj_with_mqa.bias", li);
            MAT(dm_llm_prefixes, L->kv_a_bias, k->kv_lora + k->rope, 0);
        }
        NAME("layers.%lld.self_attn.kv_a_layernorm.weight", li);
        VEC(L->kv_a_norm, k->kv_lora);
        NAME("layers.%lld.self_attn.kv_b_proj.weight", li);
        MAT(dm_llm_prefixes, L->kv_b, kv_groups * (k->nope + k->vdim), k->kv_lora);
        NAME("layers.%lld.self_attn.o_proj.weight", li);
        MAT(dm_llm_prefixes, L->o, D, H * k->vdim);
        if (k->attention_bias) {
            NAME("layers.%lld.self_attn.o_proj.bias", li);
            MAT(dm_llm_prefixes, L->o_bias, D, 0);
        }
        NAME("layers.%lld.mlp.gate_proj.weight", li);
        MAT(dm_llm_prefixes, L->gate, k->inter, D);
        NAME("layers.%lld.mlp.up_proj.weight", li);
        MAT(dm_llm_prefixes, L->up, k->inter, D);
        NAME("layers.%lld.mlp.down_proj.weight", li);
        MAT(dm_llm_prefixes, L->down, D, k->inter);
    }
    NAME("norm.weight");
    VEC(m->final_norm, D);
    if (!k->tied) {
        NAME("lm_head.weight");
        MAT(dm_root_prefixes, m->head, k->vocab, D);
    }
#undef NAME
#undef MAT
#undef VEC
    return DM_OK;
}

dm_status dm_llm_create_bound(const dm_llm_config *k, int64_t kv_groups, dm_backend backend,
                              dm_param_bind_fn bind, void *ctx, dm_llm **out) {
    *out = NULL;
    DM_TRY(llm_check_config(k));
    dm_llm *m = calloc(1, sizeof *m);
    if (!m) return dm_fail(DM_ERR_NOMEM, "llm: out of memory");
    m->cfg = *k;
    m->backend = backend;
    m->kv_groups = kv_groups;
    m->layers = calloc((size_t)k->n_layers, sizeof *m->layers);
    m->small = dm_alloc((size_t)llm_small_floats(k), sizeof(float), "rmsnorm weights");
    m->inv_freq = dm_alloc((size_t)(k->rope / 2), sizeof(float), "rope inv_freq");
    dm_status s = DM_OK;
    if (!m->layers || !m->small || !m->inv_freq) {
        s = dm_fail(DM_ERR_NOMEM, "llm: out of memory");
        goto fail;
    }
    if ((s = dm_llm_params(k, kv_groups, m, bind, ctx))) goto fail;
    if (k->tied) m->head = m->embed;
    if (!dm_tensor_is_weight(&m->embed)) {
        s = dm_fail(DM_ERR_TYPE, "embed_tokens.weight: dtype %s is not a float type (or int8 with row scales)",
                    dm_dtype_name(m->embed.dtype));
        goto fail;
    }
    for (int64_t i = 0; i < k->n_layers; i++)
        if (!is_float_dtype(m->layers[i].kv_b.dtype)) {
            s = dm_fail(DM_ERR_TYPE, "layer %lld kv_b_proj: dtype %s is not a float type", (long long)i,
                        dm_dtype_name(m->layers[i].kv_b.dtype));
            goto fail;
        }
    if ((s = rope1d_init(&k->rope_params, (int)k->rope, m->inv_freq, &m->attn_factor))) goto fail;
    m->scale = rope1d_softmax_scale(&k->rope_params, (int)(k->nope + k->rope));
    *out = m;
    return DM_OK;
fail:
    dm_llm_free(m);
    return s;
}

dm_status dm_llm_create(const dm_checkpoint *c, const dm_llm_config *cfg, dm_backend backend, dm_llm **out) {
    *out = NULL;
    int64_t groups;
    DM_TRY(dm_llm_kv_groups(c, cfg, &groups));
    return dm_llm_create_bound(cfg, groups, backend, dm_param_bind_checkpoint, (void *)c, out);
}

int64_t dm_llm_kv_floats_per_token(const dm_llm *m) {
    return m->cfg.n_layers * (m->cfg.kv_lora + m->cfg.rope);
}

/* ---- embedding and head ------------------------------------------------- */

dm_status dm_llm_embed(const dm_llm *m, const int64_t *ids, int64_t T, const float *vision,
                       int64_t n_vision, float *x) {
    const int64_t V = m->cfg.vocab, D = m->cfg.hidden;
    int64_t pads = 0;
    for (int64_t t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= V)
            return dm_fail(DM_ERR_INDEX, "token id %lld at position %lld is outside the vocabulary [0, %lld)",
                           (long long)ids[t], (long long)t, (long long)V);
        pads += ids[t] == m->cfg.image_token_id;
    }
    if (vision && pads != n_vision)
        return dm_fail(DM_ERR_VALUE, "the prompt has %lld image-pad tokens (id %lld) but %lld vision embeddings were given",
                       (long long)pads, (long long)m->cfg.image_token_id, (long long)n_vision);
    int64_t v = 0;
    for (int64_t t = 0; t < T; t++) {
        float *row = x + t * D;
        if (vision && ids[t] == m->cfg.image_token_id) {
            memcpy(row, vision + (v++) * D, (size_t)D * sizeof(float));
        } else {
            DM_TRY(dm_tensor_row_f32(&m->embed, ids[t], row));
        }
    }
    return DM_OK;
}

dm_status dm_llm_head(const dm_llm *m, const float *x, int64_t M, float *logits) {
    return dm_matmul(m->backend, logits, x, &m->head, NULL, M, 0);
}

/* ---- attention ---------------------------------------------------------- */

/* Inference scratch of the layer loop, carved from one dm_llm_work block and
 * reused by every layer (and by later calls: no page faults once warm). */
typedef struct {
    float *h, *qa, *q, *ckv, *ao, *g, *u;
    int absorbed;
    float *lat, *kvx, *K, *V; /* expanded attention */
    float *qabs, *lo;         /* absorbed attention */
    void *attn_ws;            /* attention_forward's K/V packs or the MLA block states */
    size_t attn_ws_bytes;
} llm_scratch;

/* Token rows per absorbed-attention call (its kernel takes <= DM_MLA_MAX_ROWS query rows). */
static int64_t absorbed_group(const dm_llm *m) {
    const int64_t g = DM_MLA_MAX_ROWS / m->cfg.n_heads;
    return g > 0 ? g : 1;
}

static dm_attn_args expanded_args(const dm_llm *m, int64_t T, int64_t Tk) {
    const dm_llm_config *k = &m->cfg;
    /* bf16 products for a bf16 model on oneDNN (the precision of its matmuls);
     * training sets lse, which keeps attention exact f32 */
    return (dm_attn_args){.Tq = T, .Tk = Tk, .H = (int)k->n_heads, .Hkv = (int)m->kv_groups,
                          .Dk = (int)(k->nope + k->rope), .Dv = (int)k->vdim, .scale = m->scale, .causal = 1,
                          .bf16 = m->backend == DM_BACKEND_ONEDNN && m->layers[0].kv_b.dtype == DM_BF16};
}

static dm_mla_args absorbed_args(const dm_llm *m, int64_t T, int64_t Tk) {
    const dm_llm_config *k = &m->cfg;
    return (dm_mla_args){.T = T, .Tk = Tk, .H = (int)k->n_heads, .hpg = (int)(k->n_heads / m->kv_groups),
                         .C = (int)k->kv_lora, .R = (int)k->rope, .nope = (int)k->nope, .vdim = (int)k->vdim,
                         .scale = m->scale};
}

/* Expanded MLA: K/V for all Tk cached tokens through kv_b, then attention.
 * la set (training, Tk == T): the latent, kv_b output, K, V and the attention's
 * log-sum-exp go to la; else the buffers are b's. */
static dm_status attn_expanded(const dm_llm *m, const dm_llm_layer *L, const float *q, const float *kv,
                               int64_t T, int64_t Tk, float *out, dm_llm_layer_acts *la, const llm_scratch *b) {
    const dm_llm_config *k = &m->cfg;
    const int64_t G = m->kv_groups, C = k->kv_lora, R = k->rope, D = C + R;
    const int64_t qk = k->nope + R, nv = k->nope + k->vdim;
    float *lat = la ? la->lat : b->lat, *kvx = la ? la->kvx : b->kvx, *K = la ? la->K : b->K, *Vv = la ? la->V : b->V;
    for (int64_t j = 0; j < Tk; j++) memcpy(lat + j * C, kv + j * D, (size_t)C * sizeof(float));
    DM_TRY(dm_matmul(m->backend, kvx, lat, &L->kv_b, NULL, Tk, 0));
    #pragma omp parallel for schedule(static) if (Tk > 16)
    for (int64_t j = 0; j < Tk; j++) {
        for (int64_t g = 0; g < G; g++) {
            const float *src = kvx + (j * G + g) * nv;
            float *kd = K + (j * G + g) * qk;
            memcpy(kd, src, (size_t)k->nope * sizeof(float));
            memcpy(kd + k->nope, kv + j * D + C, (size_t)R * sizeof(float));
            memcpy(Vv + (j * G + g) * k->vdim, src + k->nope, (size_t)k->vdim * sizeof(float));
        }
    }
    dm_attn_args a = expanded_args(m, T, Tk);
    a.lse = la ? la->lse : NULL;
    if (!la) {
        a.workspace = b->attn_ws;
        a.workspace_bytes = b->attn_ws_bytes;
    }
    return attention_forward(out, q, K, Vv, &a);
}

/* Absorbed MLA (ops/mla.h): W_UK folded into q, one pass over the latent
 * cache for all heads, W_UV applied afterwards; kv_b read in place. Tokens go
 * in groups of absorbed_group(m), each seeing the keys causality allows. */
static dm_status attn_absorbed(const dm_llm *m, const dm_llm_layer *L, const float *q, const float *kv,
                               int64_t T, int64_t Tk, float *out, const llm_scratch *b) {
    const dm_llm_config *k = &m->cfg;
    const int64_t H = k->n_heads, qk = k->nope + k->rope, step = absorbed_group(m);
    for (int64_t t0 = 0; t0 < T; t0 += step) {
        const int64_t tg = T - t0 < step ? T - t0 : step;
        dm_mla_args a = absorbed_args(m, tg, Tk - (T - t0 - tg));
        DM_TRY(mla_absorb_q_forward(b->qabs, q + t0 * H * qk, &L->kv_b, &a));
        DM_TRY(mla_latent_attention_forward(b->lo, b->qabs, kv, &a, b->attn_ws, b->attn_ws_bytes));
        DM_TRY(mla_absorb_out_forward(out + t0 * H * k->vdim, b->lo, &L->kv_b, &a));
    }
    return DM_OK;
}

static int use_absorbed(const dm_llm *m, int64_t T, int64_t Tk) {
    if (m->attn_mode == DM_ATTN_EXPANDED) return 0;
    if (m->attn_mode == DM_ATTN_ABSORBED) return 1;
    const dm_llm_config *k = &m->cfg;
    const double H = (double)k->n_heads, G = (double)m->kv_groups, C = (double)k->kv_lora;
    const double nv = (double)(k->nope + k->vdim), avg = (double)Tk - (double)T / 2;
    double expanded = (double)Tk * C * G * nv + H * T * avg * (double)(k->nope + k->rope + k->vdim);
    double absorbed = H * T * C * nv + H * T * avg * (2 * C + k->rope);
    return absorbed < expanded;
}

/* Bytes of the scratch for T new tokens after pos0 cached ones; base set: carve b. */
static size_t scratch_layout(const dm_llm *m, int64_t T, int64_t pos0, llm_scratch *b, char *base) {
    const dm_llm_config *k = &m->cfg;
    const int64_t D = k->hidden, H = k->n_heads, C = k->kv_lora, R = k->rope, KD = C + R, G = m->kv_groups;
    const int64_t qk = k->nope + R, nv = k->nope + k->vdim, Tk = pos0 + T;
    const int absorbed = use_absorbed(m, T, Tk);
    size_t off = 0;
#define TAKE(field, count)                                       \
    do {                                                         \
        if (base) b->field = (float *)(base + off);              \
        off += ((size_t)(count) * sizeof(float) + 63) / 64 * 64; \
    } while (0)
    TAKE(h, T * D);
    TAKE(qa, T * (k->q_lora ? k->q_lora : 1));
    TAKE(q, T * H * qk);
    TAKE(ckv, T * KD);
    TAKE(ao, T * H * k->vdim);
    TAKE(g, T * k->inter);
    TAKE(u, T * k->inter);
    size_t ws;
    if (absorbed) {
        const int64_t tg = T < absorbed_group(m) ? T : absorbed_group(m);
        dm_mla_args a = absorbed_args(m, tg, Tk);
        TAKE(qabs, tg * H * KD);
        TAKE(lo, tg * H * C);
        ws = mla_latent_attention_workspace_bytes(&a);
    } else {
        dm_attn_args a = expanded_args(m, T, Tk);
        TAKE(lat, Tk * C);
        TAKE(kvx, Tk * G * nv);
        TAKE(K, Tk * G * qk);
        TAKE(V, Tk * G * k->vdim);
        ws = attention_workspace_bytes(&a);
    }
    if (base) {
        b->absorbed = absorbed;
        b->attn_ws = base + off;
        b->attn_ws_bytes = ws;
    }
    off += (ws + 63) / 64 * 64;
#undef TAKE
    return off;
}

void dm_llm_work_free(dm_llm_work *w) {
    dm_free(w->block);
    w->block = NULL;
    w->bytes = 0;
}

/* ---- layers ------------------------------------------------------------- */

/* One decoder layer on x [T, hidden] (updated in place) at positions pos0..,
 * appending its cache rows to `cache` (rows < pos0 filled). la NULL: inference
 * with scratch b. la set (training: pos0 = 0, cache = la->kv): every
 * intermediate the backward needs goes to la; attention is the expanded form. */
static dm_status llm_layer_forward(const dm_llm *m, int64_t l, float *x, int64_t T, int64_t pos0, float *cache,
                                   const llm_scratch *b, dm_llm_layer_acts *la) {
    const dm_llm_config *k = &m->cfg;
    const dm_llm_layer *L = &m->layers[l];
    const int64_t D = k->hidden, H = k->n_heads, C = k->kv_lora, R = k->rope, KD = C + R;
    const int64_t qk = k->nope + R, Tk = pos0 + T;
    const float eps = (float)k->eps;
    float *h = la ? la->h1 : b->h, *q = la ? la->q : b->q, *ckv = la ? la->ckv : b->ckv, *ao = la ? la->ao : b->ao;
    if (la) {
        if (la->x_in != x) memcpy(la->x_in, x, (size_t)(T * D) * sizeof(float));
        rmsnorm_forward_save(h, D, x, D, T, D, L->in_norm, eps, la->rstd1);
    } else {
        rmsnorm_forward(h, D, x, D, T, D, L->in_norm, eps);
    }
    if (k->q_lora) {
        float *qa = la ? la->qa : b->qa, *qn = la ? la->qa_n : b->qa;
        DM_TRY(dm_matmul(m->backend, qa, h, &L->q_a, k->attention_bias ? &L->q_a_bias : NULL, T, 0));
        if (la)
            rmsnorm_forward_save(qn, k->q_lora, qa, k->q_lora, T, k->q_lora, L->q_a_norm, eps, la->qa_rstd);
        else
            rmsnorm_forward(qn, k->q_lora, qa, k->q_lora, T, k->q_lora, L->q_a_norm, eps);
        DM_TRY(dm_matmul(m->backend, q, qn, &L->q_b, NULL, T, 0));
    } else {
        DM_TRY(dm_matmul(m->backend, q, h, &L->q_proj, NULL, T, 0));
    }
    DM_TRY(dm_matmul(m->backend, ckv, h, &L->kv_a, k->attention_bias ? &L->kv_a_bias : NULL, T, 0));
    /* latent normalised, k_rot rotated, both appended to the cache */
    if (la)
        rmsnorm_forward_save(cache + pos0 * KD, KD, ckv, KD, T, C, L->kv_a_norm, eps, la->kv_rstd);
    else
        rmsnorm_forward(cache + pos0 * KD, KD, ckv, KD, T, C, L->kv_a_norm, eps);
    for (int64_t t = 0; t < T; t++)
        memcpy(cache + (pos0 + t) * KD + C, ckv + t * KD + C, (size_t)R * sizeof(float));
    rope1d_forward(cache + pos0 * KD + C, T, 1, KD, 0, (int)R, pos0, m->inv_freq, m->attn_factor,
                   k->rope_interleave);
    rope1d_forward(q + k->nope, T, H, H * qk, qk, (int)R, pos0, m->inv_freq, m->attn_factor,
                   k->rope_interleave);
    if (!la && b->absorbed)
        DM_TRY(attn_absorbed(m, L, q, cache, T, Tk, ao, b));
    else
        DM_TRY(attn_expanded(m, L, q, cache, T, Tk, ao, la, b));
    /* residual adds fused into the matmuls (accumulate into x) */
    DM_TRY(dm_matmul(m->backend, x, ao, &L->o, k->attention_bias ? &L->o_bias : NULL, T, 1));
    float *h2 = la ? la->h2 : b->h, *g = la ? la->g : b->g, *u = la ? la->u : b->u;
    if (la) {
        memcpy(la->x_mid, x, (size_t)(T * D) * sizeof(float));
        rmsnorm_forward_save(h2, D, x, D, T, D, L->post_norm, eps, la->rstd2);
    } else {
        rmsnorm_forward(h2, D, x, D, T, D, L->post_norm, eps);
    }
    DM_TRY(dm_matmul(m->backend, g, h2, &L->gate, NULL, T, 0));
    DM_TRY(dm_matmul(m->backend, u, h2, &L->up, NULL, T, 0));
    if (la) {
        swiglu_forward_out(la->s, g, u, T * k->inter);
        DM_TRY(dm_matmul(m->backend, x, la->s, &L->down, NULL, T, 1));
    } else {
        swiglu_forward(g, u, T * k->inter);
        DM_TRY(dm_matmul(m->backend, x, g, &L->down, NULL, T, 1));
    }
    return DM_OK;
}

dm_status dm_llm_layers_forward(const dm_llm *m, float *x, int64_t T, int64_t pos0, float *const *kv,
                                dm_llm_work *work) {
    const dm_llm_config *k = &m->cfg;
    const int64_t D = k->hidden;
    dm_llm_work local = {0};
    dm_llm_work *w = work ? work : &local;
    llm_scratch b;
    const size_t need = scratch_layout(m, T, pos0, &b, NULL);
    dm_status s = DM_OK;
    if (!dm_grow(&w->block, &w->bytes, need, "llm scratch")) {
        s = DM_ERR_NOMEM;
        goto done;
    }
    scratch_layout(m, T, pos0, &b, w->block);
    for (int64_t l = 0; l < k->n_layers; l++) {
        if (dm_interrupted()) {
            s = dm_interrupt_status();
            goto done;
        }
        if ((s = llm_layer_forward(m, l, x, T, pos0, kv[l], &b, NULL))) goto done;
    }
    rmsnorm_forward(x, D, x, D, T, D, m->final_norm, (float)k->eps);
done:
    if (s != DM_OK && s != DM_ERR_NOMEM) dm_fail_context(s, "language model layer forward: ");
    if (!work) dm_llm_work_free(&local);
    return s;
}

/* ---- training ------------------------------------------------------------ */

static size_t llm_acts_layout(dm_llm_acts *a, const dm_llm *m, int64_t T, int ckpt, char *base) {
    const dm_llm_config *k = &m->cfg;
    const int64_t D = k->hidden, H = k->n_heads, C = k->kv_lora, R = k->rope, KD = C + R, G = m->kv_groups;
    const int64_t qk = k->nope + R, nv = k->nope + k->vdim, ql = k->q_lora, I = k->inter;
    size_t off = 0;
#define TAKE(ptr, count)                                               \
    do {                                                               \
        if (base) (ptr) = (float *)(base + off);                       \
        off += ((size_t)(count) * sizeof(float) + 63) / 64 * 64;       \
    } while (0)
    float *dummy = NULL;
    for (int64_t l = 0; l < k->n_layers; l++) {
        dm_llm_layer_acts *la = base ? &a->layers[l] : NULL;
#define T_(field, count) TAKE(*(la ? &la->field : &dummy), count)
        if (l > 0 && ckpt) {
            if (la) *la = a->layers[0];
            T_(x_in, T * D);
            continue;
        }
        T_(x_in, T * D);
        T_(h1, T * D);
        T_(rstd1, T);
        if (ql) {
            T_(qa, T * ql);
            T_(qa_n, T * ql);
            T_(qa_rstd, T);
        }
        T_(q, T * H * qk);
        T_(ckv, T * KD);
        T_(kv, T * KD);
        T_(kv_rstd, T);
        T_(lat, T * C);
        T_(kvx, T * G * nv);
        T_(K, T * G * qk);
        T_(V, T * G * k->vdim);
        T_(ao, T * H * k->vdim);
        T_(lse, T * H);
        T_(x_mid, T * D);
        T_(h2, T * D);
        T_(rstd2, T);
        T_(g, T * I);
        T_(u, T * I);
        T_(s, T * I);
#undef T_
    }
    (void)dummy;
    TAKE(*(base ? &a->x_final : &dummy), T * D);
    TAKE(*(base ? &a->rstd_final : &dummy), T);
#undef TAKE
    return off;
}

size_t dm_llm_acts_bytes(const dm_llm *m, int64_t T, int checkpointing) {
    dm_llm_acts a;
    return llm_acts_layout(&a, m, T, checkpointing, NULL);
}

dm_status dm_llm_acts_init(dm_llm_acts *a, const dm_llm *m, int64_t T, int checkpointing, void *buf, size_t cap) {
    memset(a, 0, sizeof *a);
    if (T <= 0 || T > m->cfg.max_pos)
        return dm_fail(DM_ERR_VALUE, "sequence length %lld is outside [1, max_position_embeddings=%lld]",
                       (long long)T, (long long)m->cfg.max_pos);
    a->layers = dm_calloc((size_t)m->cfg.n_layers, sizeof *a->layers, "llm activations");
    if (!a->layers) return DM_ERR_NOMEM;
    a->bytes = llm_acts_layout(a, m, T, checkpointing, NULL);
    a->owns_block = !(buf && cap >= a->bytes);
    a->block = a->owns_block ? dm_alloc(a->bytes, 1, "llm activations") : buf;
    if (!a->block) {
        dm_llm_acts_free(a);
        return DM_ERR_NOMEM;
    }
    llm_acts_layout(a, m, T, checkpointing, a->block);
    a->T = T;
    a->checkpointing = checkpointing;
    return DM_OK;
}

void dm_llm_acts_free(dm_llm_acts *a) {
    dm_free(a->layers);
    if (a->owns_block) dm_free(a->block);
    memset(a, 0, sizeof *a);
}

dm_status dm_llm_forward_train(const dm_llm *m, float *x, dm_llm_acts *a, float *h_final) {
    const dm_llm_config *k = &m->cfg;
    const int64_t T = a->T, D = k->hidden;
    for (int64_t l = 0; l < k->n_layers; l++) {
        dm_llm_layer_acts *la = &a->layers[l];
        DM_TRY(llm_layer_forward(m, l, x, T, 0, la->kv, NULL, la));
    }
    memcpy(a->x_final, x, (size_t)(T * D) * sizeof(float));
    rmsnorm_forward_save(h_final, D, x, D, T, D, m->final_norm, (float)k->eps, a->rstd_final);
    return DM_OK;
}

#define GRAD(w) dm_params_grad_of(P, (w))

static dm_status lin_bw(const dm_llm *m, const dm_params *P, float *dx, const float *dy, const float *x,
                        const dm_tensor *w, const dm_tensor *b, int64_t M, int acc_dx) {
    float *dw = GRAD(w->data), *db = b ? GRAD(b->data) : NULL;
    if (!dw || (b && !db)) return dm_fail(DM_ERR_VALUE, "llm backward: weights are not bound to a parameter table");
    return dm_linear_backward(m->backend, dx, dw, db, dy, x, w, M, acc_dx);
}

/* Scratch of one layer's backward. */
typedef struct {
    float *dI, *dI2, *dH, *dq, *dqa, *dK, *dV, *dkvx, *dlat, *dckv, *dao;
} llm_grads;

static dm_status llm_layer_backward(const dm_llm *m, const dm_params *P, int64_t l, dm_llm_layer_acts *la,
                                    float *dX, const llm_grads *w, int64_t T) {
    const dm_llm_config *k = &m->cfg;
    const dm_llm_layer *L = &m->layers[l];
    const int64_t D = k->hidden, H = k->n_heads, C = k->kv_lora, R = k->rope, KD = C + R, G = m->kv_groups;
    const int64_t qk = k->nope + R, nv = k->nope + k->vdim, I = k->inter, ql = k->q_lora;
    const float eps = (float)k->eps;
    (void)eps;
    const int bias = k->attention_bias;
    /* MLP: x_out = x_mid + down(silu(gate(h2)) * up(h2)), h2 = rms(x_mid) */
    DM_TRY(lin_bw(m, P, w->dI, dX, la->s, &L->down, NULL, T, 0));
    swiglu_backward(w->dI, w->dI2, w->dI, la->g, la->u, T * I, 0);
    DM_TRY(lin_bw(m, P, w->dH, w->dI, la->h2, &L->gate, NULL, T, 0));
    DM_TRY(lin_bw(m, P, w->dH, w->dI2, la->h2, &L->up, NULL, T, 1));
    rmsnorm_backward(dX, D, GRAD(L->post_norm), w->dH, D, la->x_mid, D, la->rstd2, L->post_norm, T, D, 1);
    /* attention: x_mid = x_in + o(attn(q, [k_nope, k_rot], v)) */
    DM_TRY(lin_bw(m, P, w->dao, dX, la->ao, &L->o, bias ? &L->o_bias : NULL, T, 0));
    dm_attn_args a = {.Tq = T, .Tk = T, .H = (int)H, .Hkv = (int)G, .Dk = (int)qk, .Dv = (int)k->vdim,
                      .scale = m->scale, .causal = 1};
    DM_TRY(attention_backward(w->dq, w->dK, w->dV, w->dao, la->q, la->K, la->V, la->ao, la->lse, &a));
    /* K = [k_nope (kv_b), k_rot (shared by every group)], V (kv_b) */
    for (int64_t t = 0; t < T; t++) {
        float *dkr = w->dckv + t * KD + C;
        memset(dkr, 0, (size_t)R * sizeof(float));
        for (int64_t g = 0; g < G; g++) {
            const float *dk = w->dK + (t * G + g) * qk;
            float *dst = w->dkvx + (t * G + g) * nv;
            memcpy(dst, dk, (size_t)k->nope * sizeof(float));
            memcpy(dst + k->nope, w->dV + (t * G + g) * k->vdim, (size_t)k->vdim * sizeof(float));
            for (int64_t r = 0; r < R; r++) dkr[r] += dk[k->nope + r];
        }
    }
    rope1d_backward(w->dckv + C, T, 1, KD, 0, (int)R, 0, m->inv_freq, m->attn_factor, k->rope_interleave);
    DM_TRY(lin_bw(m, P, w->dlat, w->dkvx, la->lat, &L->kv_b, NULL, T, 0));
    rmsnorm_backward(w->dckv, KD, GRAD(L->kv_a_norm), w->dlat, C, la->ckv, KD, la->kv_rstd, L->kv_a_norm, T, C, 0);
    DM_TRY(lin_bw(m, P, w->dH, w->dckv, la->h1, &L->kv_a, bias ? &L->kv_a_bias : NULL, T, 0));
    /* q: RoPE on the rope slice of every head, then q_b(q_a_norm(q_a)) or q_proj */
    rope1d_backward(w->dq + k->nope, T, H, H * qk, qk, (int)R, 0, m->inv_freq, m->attn_factor, k->rope_interleave);
    if (ql) {
        DM_TRY(lin_bw(m, P, w->dqa, w->dq, la->qa_n, &L->q_b, NULL, T, 0));
        rmsnorm_backward(w->dqa, ql, GRAD(L->q_a_norm), w->dqa, ql, la->qa, ql, la->qa_rstd, L->q_a_norm, T, ql, 0);
        DM_TRY(lin_bw(m, P, w->dH, w->dqa, la->h1, &L->q_a, bias ? &L->q_a_bias : NULL, T, 1));
    } else {
        DM_TRY(lin_bw(m, P, w->dH, w->dq, la->h1, &L->q_proj, NULL, T, 1));
    }
    rmsnorm_backward(dX, D, GRAD(L->in_norm), w->dH, D, la->x_in, D, la->rstd1, L->in_norm, T, D, 1);
    return DM_OK;
}

dm_status dm_llm_backward(const dm_llm *m, const dm_params *P, dm_llm_acts *a, const float *dh_final, float *dx) {
    const dm_llm_config *k = &m->cfg;
    const int64_t T = a->T, D = k->hidden, H = k->n_heads, C = k->kv_lora, R = k->rope, KD = C + R, G = m->kv_groups;
    const int64_t qk = k->nope + R, nv = k->nope + k->vdim, I = k->inter, ql = k->q_lora ? k->q_lora : 1;
    llm_grads w;
    float *tmp = NULL;
    w.dI = dm_alloc((size_t)(T * I), sizeof(float), "llm gradient");
    w.dI2 = dm_alloc((size_t)(T * I), sizeof(float), "llm gradient");
    w.dH = dm_alloc((size_t)(T * D), sizeof(float), "llm gradient");
    w.dq = dm_alloc((size_t)(T * H * qk), sizeof(float), "llm gradient");
    w.dqa = dm_alloc((size_t)(T * ql), sizeof(float), "llm gradient");
    w.dK = dm_alloc((size_t)(T * G * qk), sizeof(float), "llm gradient");
    w.dV = dm_alloc((size_t)(T * G * k->vdim), sizeof(float), "llm gradient");
    w.dkvx = dm_alloc((size_t)(T * G * nv), sizeof(float), "llm gradient");
    w.dlat = dm_alloc((size_t)(T * C), sizeof(float), "llm gradient");
    w.dckv = dm_alloc((size_t)(T * KD), sizeof(float), "llm gradient");
    w.dao = dm_alloc((size_t)(T * H * k->vdim), sizeof(float), "llm gradient");
    if (a->checkpointing) tmp = dm_alloc((size_t)(T * D), sizeof(float), "llm recompute stream");
    dm_status s = DM_ERR_NOMEM;
    if (!w.dI || !w.dI2 || !w.dH || !w.dq || !w.dqa || !w.dK || !w.dV || !w.dkvx || !w.dlat || !w.dckv || !w.dao ||
        (a->checkpointing && !tmp))
        goto done;
    /* final norm: dx = d(x_final) */
    rmsnorm_backward(dx, D, GRAD(m->final_norm), dh_final, D, a->x_final, D, a->rstd_final, m->final_norm, T, D, 0);
    s = DM_OK;
    for (int64_t l = k->n_layers - 1; l >= 0 && s == DM_OK; l--) {
        dm_llm_layer_acts *la = &a->layers[l];
        if (a->checkpointing) {
            memcpy(tmp, la->x_in, (size_t)(T * D) * sizeof(float));
            if ((s = llm_layer_forward(m, l, tmp, T, 0, la->kv, NULL, la))) break;
        }
        s = llm_layer_backward(m, P, l, la, dx, &w, T);
    }
done:
    dm_free(w.dI);
    dm_free(w.dI2);
    dm_free(w.dH);
    dm_free(w.dq);
    dm_free(w.dqa);
    dm_free(w.dK);
    dm_free(w.dV);
    dm_free(w.dkvx);
    dm_free(w.dlat);
    dm_free(w.dckv);
    dm_free(w.dao);
    dm_free(tmp);
    return s;
}
