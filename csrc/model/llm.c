/* Youtu MLA decoder (see llm.h). */
#include "model/llm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/interrupt.h"
#include "io/safetensors.h"
#include "ops/attention.h"
#include "ops/norm.h"
#include "ops/swiglu.h"

static const char *const llm_prefixes[] = {"model.", NULL};
static const char *const root_prefixes[] = {"", NULL};

/* ---- construction ------------------------------------------------------- */

static dm_status find_w(const dm_checkpoint *c, const char *const *pre, const char *name, int ndim,
                        int64_t d0, int64_t d1, dm_tensor *v) {
    int64_t shape[2] = {d0, d1};
    return dm_checkpoint_weight(c, pre, name, ndim, shape, v);
}

static dm_status norm_w(const dm_checkpoint *c, const char *name, int64_t n, float **out) {
    dm_tensor v;
    DM_TRY(find_w(c, llm_prefixes, name, 1, n, 0, &v));
    float *w = dm_alloc((size_t)n, sizeof(float), "rmsnorm weight");
    if (!w) return DM_ERR_NOMEM;
    dm_status s = dm_tensor_to_f32(&v, w);
    if (s != DM_OK) {
        dm_free(w);
        return s;
    }
    *out = w;
    return DM_OK;
}

void dm_llm_free(dm_llm *m) {
    if (!m) return;
    if (m->layers) {
        for (int64_t i = 0; i < m->cfg.n_layers; i++) {
            dm_llm_layer *L = &m->layers[i];
            dm_free(L->in_norm);
            dm_free(L->post_norm);
            dm_free(L->q_a_norm);
            dm_free(L->kv_a_norm);
        }
        free(m->layers);
    }
    dm_free(m->final_norm);
    dm_free(m->inv_freq);
    free(m);
}

static int is_float_dtype(dm_dtype t) { return t == DM_F32 || t == DM_BF16 || t == DM_F16; }

dm_status dm_llm_create(const dm_checkpoint *c, const dm_llm_config *cfg, dm_backend backend,
                        dm_llm **out) {
    *out = NULL;
    const dm_llm_config *k = cfg;
    if (k->vocab <= 0 || k->hidden <= 0 || k->inter <= 0 || k->n_layers <= 0 || k->n_heads <= 0 ||
        k->kv_lora <= 0 || k->nope < 0 || k->rope <= 0 || k->vdim <= 0 || k->max_pos <= 0 || k->q_lora < 0)
        return dm_fail(DM_ERR_VALUE, "llm config: sizes must be positive");
    if (k->rope % 2) return dm_fail(DM_ERR_VALUE, "llm config: qk_rope_head_dim must be even");
    if (k->n_kv_heads <= 0 || k->n_heads % k->n_kv_heads)
        return dm_fail(DM_ERR_VALUE, "llm config: num_attention_heads %lld not a multiple of num_key_value_heads %lld",
                       (long long)k->n_heads, (long long)k->n_kv_heads);
    dm_llm *m = calloc(1, sizeof *m);
    if (!m) return dm_fail(DM_ERR_NOMEM, "llm: out of memory");
    m->cfg = *cfg;
    m->backend = backend;
    m->layers = calloc((size_t)k->n_layers, sizeof *m->layers);
    dm_status s = DM_OK;
    if (!m->layers) {
        s = dm_fail(DM_ERR_NOMEM, "llm: out of memory");
        goto fail;
    }
    const int64_t H = k->n_heads, qk = k->nope + k->rope, H_ = k->hidden;
    if ((s = find_w(c, llm_prefixes, "embed_tokens.weight", 2, k->vocab, H_, &m->embed))) goto fail;
    if (k->tied) {
        m->head = m->embed;
    } else if ((s = find_w(c, root_prefixes, "lm_head.weight", 2, k->vocab, H_, &m->head))) {
        goto fail;
    }
    if (!is_float_dtype(m->embed.dtype)) {
        s = dm_fail(DM_ERR_TYPE, "embed_tokens.weight: dtype %s is not a float type", dm_dtype_name(m->embed.dtype));
        goto fail;
    }
    if ((s = norm_w(c, "norm.weight", H_, &m->final_norm))) goto fail;
    /* kv_b decides how many distinct key/value heads exist: transformers' Youtu
     * (and DeepSeek) give every query head its own k_nope/v (rows H*(nope+v));
     * a checkpoint with rows n_kv_heads*(nope+v) shares each among H/n_kv heads. */
    {
        char name[128];
        dm_tensor kvb;
        snprintf(name, sizeof name, "layers.0.self_attn.kv_b_proj.weight");
        int64_t rows_full = H * (k->nope + k->vdim), rows_gqa = k->n_kv_heads * (k->nope + k->vdim);
        if (dm_checkpoint_weight(c, llm_prefixes, name, 2, (int64_t[]){rows_full, k->kv_lora}, &kvb) == DM_OK) {
            m->kv_groups = H;
        } else if ((s = find_w(c, llm_prefixes, name, 2, rows_gqa, k->kv_lora, &kvb))) {
            goto fail;
        } else {
            m->kv_groups = k->n_kv_heads;
        }
    }
    for (int64_t i = 0; i < k->n_layers; i++) {
        dm_llm_layer *L = &m->layers[i];
        char name[160];
#define W(field, nm, d0, d1)                                                            \
    do {                                                                                \
        snprintf(name, sizeof name, "layers.%lld." nm, (long long)i);                   \
        if ((s = find_w(c, llm_prefixes, name, ((d1) != 0) ? 2 : 1, d0, d1, &L->field))) goto fail; \
    } while (0)
#define N(field, nm, n)                                                                 \
    do {                                                                                \
        snprintf(name, sizeof name, "layers.%lld." nm, (long long)i);                   \
        if ((s = norm_w(c, name, n, &L->field))) goto fail;                             \
    } while (0)
        N(in_norm, "input_layernorm.weight", H_);
        N(post_norm, "post_attention_layernorm.weight", H_);
        if (k->q_lora) {
            W(q_a, "self_attn.q_a_proj.weight", k->q_lora, H_);
            if (k->attention_bias) W(q_a_bias, "self_attn.q_a_proj.bias", k->q_lora, 0);
            N(q_a_norm, "self_attn.q_a_layernorm.weight", k->q_lora);
            W(q_b, "self_attn.q_b_proj.weight", H * qk, k->q_lora);
        } else {
            W(q_proj, "self_attn.q_proj.weight", H * qk, H_);
        }
        W(kv_a, "self_attn.kv_a_proj_with_mqa.weight", k->kv_lora + k->rope, H_);
        if (k->attention_bias) W(kv_a_bias, "self_attn.kv_a_proj_with_mqa.bias", k->kv_lora + k->rope, 0);
        N(kv_a_norm, "self_attn.kv_a_layernorm.weight", k->kv_lora);
        W(kv_b, "self_attn.kv_b_proj.weight", m->kv_groups * (k->nope + k->vdim), k->kv_lora);
        W(o, "self_attn.o_proj.weight", H_, H * k->vdim);
        if (k->attention_bias) W(o_bias, "self_attn.o_proj.bias", H_, 0);
        W(gate, "mlp.gate_proj.weight", k->inter, H_);
        W(up, "mlp.up_proj.weight", k->inter, H_);
        W(down, "mlp.down_proj.weight", H_, k->inter);
#undef W
#undef N
        if (!is_float_dtype(L->kv_b.dtype)) {
            s = dm_fail(DM_ERR_TYPE, "layer %lld kv_b_proj: dtype %s is not a float type", (long long)i,
                        dm_dtype_name(L->kv_b.dtype));
            goto fail;
        }
    }
    m->inv_freq = dm_alloc((size_t)(k->rope / 2), sizeof(float), "rope inv_freq");
    if (!m->inv_freq) {
        s = DM_ERR_NOMEM;
        goto fail;
    }
    if ((s = rope1d_init(&k->rope_params, (int)k->rope, m->inv_freq, &m->attn_factor))) goto fail;
    m->scale = rope1d_softmax_scale(&k->rope_params, (int)qk);
    *out = m;
    return DM_OK;
fail:
    dm_llm_free(m);
    return s;
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

/* Row r of a 2-D float weight widened into dst[n] (n = row length). */
static void weight_row(const dm_tensor *w, int64_t r, float *dst) {
    const int64_t n = w->shape[1];
    const char *base = (const char *)w->data + (size_t)(r * n) * dm_dtype_size(w->dtype);
    dm_to_f32_n(dst, base, w->dtype, (size_t)n);
}

/* Expanded MLA: K/V for all Tk cached tokens through kv_b, then attention. */
static dm_status attn_expanded(const dm_llm *m, const dm_llm_layer *L, const float *q, const float *kv,
                               int64_t T, int64_t Tk, float *out) {
    const dm_llm_config *k = &m->cfg;
    const int64_t G = m->kv_groups, C = k->kv_lora, R = k->rope, D = C + R;
    const int64_t qk = k->nope + R, nv = k->nope + k->vdim;
    float *lat = dm_alloc((size_t)(Tk * C), sizeof(float), "attention latent");
    float *kvx = dm_alloc((size_t)(Tk * G * nv), sizeof(float), "attention kv");
    float *K = dm_alloc((size_t)(Tk * G * qk), sizeof(float), "attention keys");
    float *Vv = dm_alloc((size_t)(Tk * G * k->vdim), sizeof(float), "attention values");
    dm_status s = DM_OK;
    if (!lat || !kvx || !K || !Vv) {
        s = DM_ERR_NOMEM;
        goto done;
    }
    for (int64_t j = 0; j < Tk; j++) memcpy(lat + j * C, kv + j * D, (size_t)C * sizeof(float));
    if ((s = dm_matmul(m->backend, kvx, lat, &L->kv_b, NULL, Tk, 0))) goto done;
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
    dm_attn_args a = {.Tq = T, .Tk = Tk, .H = (int)k->n_heads, .Hkv = (int)G, .Dk = (int)qk,
                      .Dv = (int)k->vdim, .scale = m->scale, .causal = 1};
    s = attention_forward(out, q, K, Vv, &a);
done:
    dm_free(lat);
    dm_free(kvx);
    dm_free(K);
    dm_free(Vv);
    return s;
}

/* Absorbed MLA: fold W_UK into q, attend over the latent cache (one shared
 * head of width kv_lora+rope, values = the latent), apply W_UV afterwards. */
static dm_status attn_absorbed(const dm_llm *m, const dm_llm_layer *L, const float *q, const float *kv,
                               int64_t T, int64_t Tk, float *out) {
    const dm_llm_config *k = &m->cfg;
    const int64_t H = k->n_heads, G = m->kv_groups, C = k->kv_lora, R = k->rope, D = C + R;
    const int64_t qk = k->nope + R, nv = k->nope + k->vdim, hpg = H / G;
    float *qa = dm_alloc((size_t)(T * H * D), sizeof(float), "absorbed queries");
    float *lo = dm_alloc((size_t)(T * H * C), sizeof(float), "absorbed attention output");
    /* kv_b as f32: used in place when it is f32, else widened once per call
     * (G*(nope+v)*kv_lora floats, one layer's small matrix) for the loops below. */
    const int widen = L->kv_b.dtype != DM_F32;
    float *wtmp = widen ? dm_alloc((size_t)(G * nv * C), sizeof(float), "kv_b rows") : NULL;
    const float *wbuf = widen ? wtmp : (const float *)L->kv_b.data;
    dm_status s = DM_OK;
    if (!qa || !lo || (widen && !wtmp)) {
        s = DM_ERR_NOMEM;
        goto done;
    }
    if (widen) {
        #pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < G * nv; r++) weight_row(&L->kv_b, r, wtmp + r * C);
    }
    #pragma omp parallel for schedule(static) collapse(2)
    for (int64_t t = 0; t < T; t++) {
        for (int64_t h = 0; h < H; h++) {
            const float *qh = q + (t * H + h) * qk;
            float *dst = qa + (t * H + h) * D;
            const float *wg = wbuf + (h / hpg) * nv * C;
            for (int64_t c = 0; c < C; c++) dst[c] = 0;
            for (int64_t d = 0; d < k->nope; d++) {
                const float qd = qh[d], *wr = wg + d * C;
                for (int64_t c = 0; c < C; c++) dst[c] += qd * wr[c];
            }
            memcpy(dst + C, qh + k->nope, (size_t)R * sizeof(float));
        }
    }
    dm_attn_args a = {.Tq = T, .Tk = Tk, .H = (int)H, .Hkv = 1, .Dk = (int)D, .Dv = (int)C,
                      .k_stride = D, .v_stride = D, .scale = m->scale, .causal = 1};
    if ((s = attention_forward(lo, qa, kv, kv, &a))) goto done;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int64_t t = 0; t < T; t++) {
        for (int64_t h = 0; h < H; h++) {
            const float *l = lo + (t * H + h) * C;
            const float *wv = wbuf + ((h / hpg) * nv + k->nope) * C;
            float *o = out + (t * H + h) * k->vdim;
            for (int64_t j = 0; j < k->vdim; j++) {
                const float *wr = wv + j * C;
                float acc = 0;
                for (int64_t c = 0; c < C; c++) acc += wr[c] * l[c];
                o[j] = acc;
            }
        }
    }
done:
    dm_free(qa);
    dm_free(lo);
    dm_free(wtmp);
    return s;
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

/* ---- layers ------------------------------------------------------------- */

dm_status dm_llm_layers_forward(const dm_llm *m, float *x, int64_t T, int64_t pos0, float *const *kv) {
    const dm_llm_config *k = &m->cfg;
    const int64_t D = k->hidden, H = k->n_heads, C = k->kv_lora, R = k->rope, KD = C + R;
    const int64_t qk = k->nope + R, Tk = pos0 + T;
    const float eps = (float)k->eps;
    float *h = dm_alloc((size_t)(T * D), sizeof(float), "llm hidden");
    float *qa = k->q_lora ? dm_alloc((size_t)(T * k->q_lora), sizeof(float), "llm q_a") : NULL;
    float *q = dm_alloc((size_t)(T * H * qk), sizeof(float), "llm q");
    float *ckv = dm_alloc((size_t)(T * KD), sizeof(float), "llm kv_a");
    float *ao = dm_alloc((size_t)(T * H * k->vdim), sizeof(float), "llm attention out");
    float *g = dm_alloc((size_t)(T * k->inter), sizeof(float), "llm mlp gate");
    float *u = dm_alloc((size_t)(T * k->inter), sizeof(float), "llm mlp up");
    dm_status s = DM_OK;
    if (!h || (k->q_lora && !qa) || !q || !ckv || !ao || !g || !u) {
        s = DM_ERR_NOMEM;
        goto done;
    }
    for (int64_t l = 0; l < k->n_layers; l++) {
        if (dm_interrupted()) {
            s = dm_interrupt_status();
            goto done;
        }
        const dm_llm_layer *L = &m->layers[l];
        rmsnorm_forward(h, D, x, D, T, D, L->in_norm, eps);
        if (k->q_lora) {
            if ((s = dm_matmul(m->backend, qa, h, &L->q_a, k->attention_bias ? &L->q_a_bias : NULL, T, 0))) goto done;
            rmsnorm_forward(qa, k->q_lora, qa, k->q_lora, T, k->q_lora, L->q_a_norm, eps);
            if ((s = dm_matmul(m->backend, q, qa, &L->q_b, NULL, T, 0))) goto done;
        } else if ((s = dm_matmul(m->backend, q, h, &L->q_proj, NULL, T, 0))) {
            goto done;
        }
        if ((s = dm_matmul(m->backend, ckv, h, &L->kv_a, k->attention_bias ? &L->kv_a_bias : NULL, T, 0))) goto done;
        /* latent normalised, k_rot rotated, both appended to the cache */
        float *cache = kv[l];
        rmsnorm_forward(cache + pos0 * KD, KD, ckv, KD, T, C, L->kv_a_norm, eps);
        for (int64_t t = 0; t < T; t++)
            memcpy(cache + (pos0 + t) * KD + C, ckv + t * KD + C, (size_t)R * sizeof(float));
        rope1d_forward(cache + pos0 * KD + C, T, 1, KD, 0, (int)R, pos0, m->inv_freq, m->attn_factor,
                       k->rope_interleave);
        rope1d_forward(q + k->nope, T, H, H * qk, qk, (int)R, pos0, m->inv_freq, m->attn_factor,
                       k->rope_interleave);
        s = use_absorbed(m, T, Tk) ? attn_absorbed(m, L, q, cache, T, Tk, ao)
                                   : attn_expanded(m, L, q, cache, T, Tk, ao);
        if (s) goto done;
        /* residual adds fused into the matmuls (accumulate into x) */
        if ((s = dm_matmul(m->backend, x, ao, &L->o, k->attention_bias ? &L->o_bias : NULL, T, 1))) goto done;
        rmsnorm_forward(h, D, x, D, T, D, L->post_norm, eps);
        if ((s = dm_matmul(m->backend, g, h, &L->gate, NULL, T, 0))) goto done;
        if ((s = dm_matmul(m->backend, u, h, &L->up, NULL, T, 0))) goto done;
        swiglu_forward(g, u, T * k->inter);
        if ((s = dm_matmul(m->backend, x, g, &L->down, NULL, T, 1))) goto done;
    }
    rmsnorm_forward(x, D, x, D, T, D, m->final_norm, eps);
done:
    if (s != DM_OK && s != DM_ERR_NOMEM) dm_fail_context(s, "language model layer forward: ");
    dm_free(h);
    dm_free(qa);
    dm_free(q);
    dm_free(ckv);
    dm_free(ao);
    dm_free(g);
    dm_free(u);
    return s;
}
