/* Generation session (see session.h). */
#include "model/session.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "model/llm.h"

struct dm_session {
    const dm_llm *m;
    int64_t pos, cap;   /* tokens in the cache, rows allocated per layer */
    float **kv;         /* [n_layers] -> [cap, kv_lora + rope] */
    float *vision;      /* [n_vision, hidden] */
    int64_t *vision_pos;
    int64_t n_vision, grid_h, grid_w;
    dm_llm_work work;   /* layer scratch reused by every extend */
};

dm_status dm_session_create(const dm_llm *m, dm_session **out) {
    *out = NULL;
    dm_session *s = calloc(1, sizeof *s);
    if (!s || !(s->kv = calloc((size_t)m->cfg.n_layers, sizeof(float *)))) {
        free(s);
        return dm_fail(DM_ERR_NOMEM, "session: out of memory");
    }
    s->m = m;
    *out = s;
    return DM_OK;
}

void dm_session_free(dm_session *s) {
    if (!s) return;
    if (s->kv)
        for (int64_t l = 0; l < s->m->cfg.n_layers; l++) dm_free(s->kv[l]);
    free(s->kv);
    dm_llm_work_free(&s->work);
    dm_free(s->vision);
    dm_free(s->vision_pos);
    free(s);
}

/* Grow every layer's cache to hold `need` rows (doubling, capped at max_pos). */
static dm_status reserve(dm_session *s, int64_t need) {
    if (need <= s->cap) return DM_OK;
    const int64_t row = s->m->cfg.kv_lora + s->m->cfg.rope;
    int64_t cap = s->cap ? s->cap : 64;
    while (cap < need) cap *= 2;
    if (cap > s->m->cfg.max_pos) cap = s->m->cfg.max_pos;
    for (int64_t l = 0; l < s->m->cfg.n_layers; l++) {
        float *p = dm_alloc((size_t)(cap * row), sizeof(float), "KV cache");
        if (!p) return DM_ERR_NOMEM;
        if (s->kv[l]) memcpy(p, s->kv[l], (size_t)(s->pos * row) * sizeof(float));
        dm_free(s->kv[l]);
        s->kv[l] = p;
    }
    s->cap = cap;
    return DM_OK;
}

dm_status dm_session_extend(dm_session *s, const int64_t *ids, int64_t T, const float *vision,
                            int64_t n_vision, int64_t grid_h, int64_t grid_w, int out_kind, float *out) {
    const dm_llm *m = s->m;
    const int64_t D = m->cfg.hidden;
    if (T <= 0) return dm_fail(DM_ERR_VALUE, "empty input: at least one token is needed");
    if (s->pos + T > m->cfg.max_pos)
        return dm_fail(DM_ERR_VALUE, "sequence of %lld tokens exceeds max_position_embeddings %lld",
                       (long long)(s->pos + T), (long long)m->cfg.max_pos);
    if (vision && s->vision)
        return dm_fail(DM_ERR_NOTIMPL, "session: only one image per session is supported");
    if (vision && grid_h > 0 && grid_w > 0 && grid_h * grid_w != n_vision)
        return dm_fail(DM_ERR_VALUE, "vision grid %lldx%lld does not match %lld vision tokens",
                       (long long)grid_h, (long long)grid_w, (long long)n_vision);
    float *x = dm_alloc((size_t)(T * D), sizeof(float), "llm activations");
    if (!x) return DM_ERR_NOMEM;
    float *vh = NULL;
    int64_t *vp = NULL;
    dm_status st = dm_llm_embed(m, ids, T, vision, n_vision, x);
    if (st) goto done;
    if (vision && n_vision > 0) {
        vh = dm_alloc((size_t)(n_vision * D), sizeof(float), "vision hidden states");
        vp = dm_alloc((size_t)n_vision, sizeof(int64_t), "vision positions");
        if (!vh || !vp) {
            st = DM_ERR_NOMEM;
            goto done;
        }
    }
    if ((st = reserve(s, s->pos + T))) goto done;
    if ((st = dm_llm_layers_forward(m, x, T, s->pos, s->kv, &s->work))) goto done;
    if (vh) {
        int64_t v = 0;
        for (int64_t t = 0; t < T; t++) {
            if (ids[t] != m->cfg.image_token_id) continue;
            memcpy(vh + v * D, x + t * D, (size_t)D * sizeof(float));
            vp[v++] = s->pos + t;
        }
    }
    switch (out_kind) {
    case DM_OUT_LAST_LOGITS: st = dm_llm_head(m, x + (T - 1) * D, 1, out); break;
    case DM_OUT_ALL_LOGITS: st = dm_llm_head(m, x, T, out); break;
    case DM_OUT_ALL_HIDDEN: memcpy(out, x, (size_t)(T * D) * sizeof(float)); break;
    default: break;
    }
    if (st) goto done;
    /* Commit only after everything succeeded (cache rows past pos are scratch). */
    s->pos += T;
    if (vh) {
        s->vision = vh;
        s->vision_pos = vp;
        s->n_vision = n_vision;
        s->grid_h = grid_h > 0 ? grid_h : 0;
        s->grid_w = grid_w > 0 ? grid_w : 0;
        vh = NULL;
        vp = NULL;
    }
done:
    dm_free(x);
    dm_free(vh);
    dm_free(vp);
    return st;
}

int64_t dm_session_position(const dm_session *s) { return s->pos; }

int64_t dm_session_kv_bytes(const dm_session *s) {
    return s->pos * dm_llm_kv_floats_per_token(s->m) * (int64_t)sizeof(float);
}

void dm_session_vision_hidden(const dm_session *s, int64_t *n_tokens, const float **hidden) {
    *n_tokens = s->n_vision;
    *hidden = s->vision;
}

const int64_t *dm_session_vision_positions(const dm_session *s) { return s->vision_pos; }

void dm_session_vision_grid(const dm_session *s, int64_t *grid_h, int64_t *grid_w) {
    *grid_h = s->grid_h;
    *grid_w = s->grid_w;
}

const dm_tensor *dm_session_lm_head(const dm_session *s) { return &s->m->head; }
dm_backend dm_session_backend(const dm_session *s) { return s->m->backend; }
const dm_llm *dm_session_model(const dm_session *s) { return s->m; }
