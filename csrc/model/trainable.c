/* Whole-model forward + backward for training (see trainable.h). */
#include "model/trainable.h"

#include <string.h>

#include "core/alloc.h"
#include "io/safetensors.h"
#include "ops/embedding.h"
#include "train/loss.h"

void dm_trainable_free(dm_trainable *t) {
    if (!t) return;
    vision_destroy(t->vision);
    dm_llm_free(t->llm);
    dm_params_free(&t->params);
    dm_free(t->vision_block);
    dm_free(t->llm_block);
    pthread_mutex_destroy(&t->lock);
    dm_free(t);
}

dm_status dm_trainable_create(const dm_checkpoint *ck, const dm_vision_config *vcfg, const dm_llm_config *lcfg,
                              dm_backend backend, dm_trainable **out) {
    *out = NULL;
    int64_t groups;
    DM_TRY(dm_llm_kv_groups(ck, lcfg, &groups));
    dm_trainable *t = dm_calloc(1, sizeof *t, "trainable model");
    if (!t) return DM_ERR_NOMEM;
    pthread_mutex_init(&t->lock, NULL);
    t->vcfg = *vcfg;
    t->lcfg = *lcfg;
    t->backend = backend;
    /* the table from the builders' own listing, masters from the checkpoint, then
     * the models bound to the masters (same order, checked entry by entry) */
    dm_status st = vision_params(vcfg, NULL, dm_params_collect, &t->params);
    if (st == DM_OK) st = dm_llm_params(lcfg, groups, NULL, dm_params_collect, &t->params);
    if (st == DM_OK) st = dm_params_load(&t->params, ck);
    if (st == DM_OK) {
        t->params.cursor = 0;
        st = vision_create_bound(vcfg, backend, dm_params_bind, &t->params, &t->vision);
    }
    if (st == DM_OK) st = dm_llm_create_bound(lcfg, groups, backend, dm_params_bind, &t->params, &t->llm);
    if (st == DM_OK && t->params.cursor != t->params.n)
        st = dm_fail(DM_ERR_VALUE, "parameter table: %lld entries bound of %lld", (long long)t->params.cursor,
                     (long long)t->params.n);
    if (st != DM_OK) {
        dm_trainable_free(t);
        return st;
    }
    *out = t;
    return DM_OK;
}

void dm_trainable_zero_grad(dm_trainable *t) {
    pthread_mutex_lock(&t->lock);
    memset(t->params.data + t->params.total, 0, (size_t)t->params.total * sizeof(float));
    pthread_mutex_unlock(&t->lock);
}

size_t dm_trainable_act_bytes(const dm_trainable *t, int64_t T, int64_t gh, int64_t gw, int checkpointing) {
    size_t b = dm_llm_acts_bytes(t->llm, T, checkpointing);
    if (gh > 0 && gw > 0) b += vision_acts_bytes(&t->vcfg, gh, gw, checkpointing);
    return b;
}

/* Make *buf at least `need` bytes (contents not kept); a block more than twice
 * the need (e.g. checkpointing switched on) is given back and reallocated. */
static dm_status grow(void **buf, size_t *cap, size_t need, const char *what) {
    if (*cap >= need && *cap / 2 <= need) return DM_OK;
    dm_free(*buf);
    *cap = 0;
    *buf = dm_alloc(need, 1, what);
    if (!*buf) return DM_ERR_NOMEM;
    *cap = need;
    return DM_OK;
}

static dm_status step_locked(dm_trainable *t, const dm_train_inputs *in, dm_train_result *res) {
    const dm_llm *m = t->llm;
    const dm_llm_config *k = &m->cfg;
    const int64_t T = in->T, D = k->hidden, V = k->vocab, pad = k->image_token_id;
    memset(res, 0, sizeof *res);
    if (T <= 0 || T > k->max_pos)
        return dm_fail(DM_ERR_VALUE, "input_ids: length %lld is outside [1, max_position_embeddings=%lld]",
                       (long long)T, (long long)k->max_pos);
    int64_t pads = 0;
    for (int64_t i = 0; i < T; i++) {
        if (in->ids[i] < 0 || in->ids[i] >= V)
            return dm_fail(DM_ERR_INDEX, "input_ids[%lld] = %lld is outside the vocabulary [0, %lld)", (long long)i,
                           (long long)in->ids[i], (long long)V);
        pads += in->ids[i] == pad;
    }
    if (in->labels)
        for (int64_t i = 0; i < T; i++)
            if (in->labels[i] != -100 && (in->labels[i] < 0 || in->labels[i] >= V))
                return dm_fail(DM_ERR_INDEX, "labels[%lld] = %lld is neither -100 nor in [0, %lld)", (long long)i,
                               (long long)in->labels[i], (long long)V);
    const int has_image = in->patches != NULL;
    int64_t M = 0;
    if (has_image) {
        const int64_t mg = t->vcfg.merge;
        if (in->gh <= 0 || in->gw <= 0 || in->gh % mg || in->gw % mg)
            return dm_fail(DM_ERR_VALUE, "image grid %lld x %lld is not a positive multiple of merge %lld",
                           (long long)in->gh, (long long)in->gw, (long long)mg);
        M = (in->gh / mg) * (in->gw / mg);
        if (pads != M)
            return dm_fail(DM_ERR_VALUE,
                           "input_ids has %lld image-pad tokens (id %lld) but the image gives %lld vision tokens",
                           (long long)pads, (long long)pad, (long long)M);
        if (t->vcfg.out_hidden != D)
            return dm_fail(DM_ERR_VALUE, "vision out_hidden_size %lld != text hidden_size %lld",
                           (long long)t->vcfg.out_hidden, (long long)D);
    }
    if (in->pos_offsets && !has_image) return dm_fail(DM_ERR_VALUE, "vision targets given without an image");

    dm_vision_acts va;
    dm_llm_acts la;
    memset(&va, 0, sizeof va);
    memset(&la, 0, sizeof la);
    float *vis = NULL, *x = NULL, *h = NULL, *dh = NULL, *dx = NULL, *dvis = NULL;
    int64_t *rows = NULL, *targets = NULL, *emb_ids = NULL;
    dm_status st = DM_OK;
    if (has_image) {
        if ((st = grow(&t->vision_block, &t->vision_cap, vision_acts_bytes(&t->vcfg, in->gh, in->gw, t->checkpointing),
                       "vision activations")))
            goto done;
        if ((st = vision_acts_init(&va, &t->vcfg, in->gh, in->gw, t->checkpointing, t->vision_block, t->vision_cap)))
            goto done;
    }
    if ((st = grow(&t->llm_block, &t->llm_cap, dm_llm_acts_bytes(m, T, t->checkpointing), "llm activations")))
        goto done;
    if ((st = dm_llm_acts_init(&la, m, T, t->checkpointing, t->llm_block, t->llm_cap))) goto done;
    res->act_bytes = va.bytes + la.bytes;
    st = DM_ERR_NOMEM;
    x = dm_alloc((size_t)(T * D), sizeof(float), "embeddings");
    h = dm_alloc((size_t)(T * D), sizeof(float), "final hidden states");
    dh = dm_calloc((size_t)(T * D), sizeof(float), "hidden gradient");
    dx = dm_alloc((size_t)(T * D), sizeof(float), "embedding gradient");
    emb_ids = dm_alloc((size_t)T, sizeof(int64_t), "embedding ids");
    rows = dm_alloc((size_t)(M ? M : 1), sizeof(int64_t), "vision rows");
    if (!x || !h || !dh || !dx || !emb_ids || !rows) goto done;
    if (has_image) {
        vis = dm_alloc((size_t)(M * D), sizeof(float), "vision tokens");
        dvis = dm_alloc((size_t)(M * D), sizeof(float), "vision token gradient");
        if (!vis || !dvis) goto done;
        if ((st = vision_forward_train(t->vision, in->patches, &va, vis))) goto done;
    }
    /* embeddings; with an image, pad rows are the vision tokens and get no table gradient */
    for (int64_t i = 0, j = 0; i < T; i++) {
        const int spliced = has_image && in->ids[i] == pad;
        emb_ids[i] = spliced ? -1 : in->ids[i];
        if (spliced) rows[j++] = i;
    }
    if ((st = embedding_forward(x, D, &m->embed, emb_ids, T))) goto done;
    for (int64_t j = 0; j < M; j++) memcpy(x + rows[j] * D, vis + j * D, (size_t)D * sizeof(float));
    if ((st = dm_llm_forward_train(m, x, &la, h))) goto done;

    dm_head hd = {.T = T, .H = D, .h = h, .w = &m->head, .dh = dh, .dw = dm_params_grad_of(&t->params, m->head.data),
                  .backend = t->backend, .chunk_bytes = t->head_chunk_bytes, .threads = 0};
    if (!hd.dw) {
        st = dm_fail(DM_ERR_VALUE, "trainable: head weight is not in the parameter table");
        goto done;
    }
    if (in->labels) {
        targets = dm_alloc((size_t)T, sizeof(int64_t), "text targets");
        if (!targets) {
            st = DM_ERR_NOMEM;
            goto done;
        }
        for (int64_t i = 0; i + 1 < T; i++) targets[i] = in->labels[i + 1];
        targets[T - 1] = -100;
        int64_t ws = 0;
        if ((st = dm_head_ce(&hd, targets, -100, 1.0, in->text_denom, &res->text_loss, &res->n_text, &ws))) goto done;
        if (ws > res->head_workspace) res->head_workspace = ws;
    }
    if (in->pos_offsets) {
        dm_head_ntpm_args na = {.L = M, .rows = rows, .pos_offsets = in->pos_offsets, .pos_ids = in->pos_ids,
                                .n_pos = in->n_pos, .n_sets = in->n_sets, .valid_offsets = in->valid_offsets,
                                .valid_ids = in->valid_ids, .n_valid = in->n_valid, .token_set = in->token_set,
                                .labels = in->ntp_labels, .k = in->k, .gamma = in->gamma, .alpha = in->alpha,
                                .ohem_ratio = in->ohem_ratio, .variant = in->variant};
        int64_t ws = 0;
        if ((st = dm_head_ntpm(&hd, &na, 1.0, in->vision_denom, &res->vision_loss, &res->n_vision, &ws))) goto done;
        if (ws > res->head_workspace) res->head_workspace = ws;
    }
    res->loss = res->text_loss + res->vision_loss;

    if ((st = dm_llm_backward(m, &t->params, &la, dh, dx))) goto done;
    if (in->padding_idx >= 0)
        for (int64_t i = 0; i < T; i++)
            if (emb_ids[i] == in->padding_idx) emb_ids[i] = -1; /* the forward is done with them */
    if ((st = embedding_backward(dm_params_grad_of(&t->params, m->embed.data), V, D, emb_ids, T, dx, D))) goto done;
    if (has_image) {
        for (int64_t j = 0; j < M; j++) memcpy(dvis + j * D, dx + rows[j] * D, (size_t)D * sizeof(float));
        if ((st = vision_backward(t->vision, &t->params, &va, dvis))) goto done;
    }
done:
    vision_acts_free(&va);
    dm_llm_acts_free(&la);
    dm_free(vis);
    dm_free(dvis);
    dm_free(x);
    dm_free(h);
    dm_free(dh);
    dm_free(dx);
    dm_free(rows);
    dm_free(targets);
    dm_free(emb_ids);
    return st;
}

dm_status dm_trainable_forward_backward(dm_trainable *t, const dm_train_inputs *in, dm_train_result *res) {
    pthread_mutex_lock(&t->lock);
    dm_status st = step_locked(t, in, res);
    pthread_mutex_unlock(&t->lock);
    return st;
}
