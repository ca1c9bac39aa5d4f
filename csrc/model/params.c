/* Parameter table and binders (see params.h). */
#include "model/params.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "io/safetensors.h"

dm_status dm_param_bind_checkpoint(void *ctx, const dm_param_slot *s) {
    const dm_checkpoint *ck = ctx;
    dm_tensor t;
    DM_TRY(dm_checkpoint_weight(ck, s->prefixes, s->name, s->ndim, s->shape, &t));
    if (s->view) *s->view = t;
    if (s->vec) {
        DM_TRY(dm_tensor_to_f32(&t, s->vec_store));
        *s->vec = s->vec_store;
    }
    return DM_OK;
}

dm_status dm_params_collect(void *ctx, const dm_param_slot *s) {
    dm_params *p = ctx;
    if (p->n == p->cap) {
        int64_t cap = p->cap ? 2 * p->cap : 256;
        dm_param_entry *e = dm_alloc((size_t)cap, sizeof *e, "parameter table");
        if (!e) return DM_ERR_NOMEM;
        if (p->n) memcpy(e, p->entries, (size_t)p->n * sizeof *e);
        dm_free(p->entries);
        p->entries = e;
        p->cap = cap;
    }
    dm_param_entry *e = &p->entries[p->n];
    memset(e, 0, sizeof *e);
    const char *pre = s->prefixes && s->prefixes[0] ? s->prefixes[0] : "";
    int len = snprintf(e->name, sizeof e->name, "%s%s", pre, s->name);
    if (len < 0 || (size_t)len >= sizeof e->name || strlen(s->name) >= sizeof e->suffix)
        return dm_fail(DM_ERR_VALUE, "parameter name too long: '%s%s'", pre, s->name);
    snprintf(e->suffix, sizeof e->suffix, "%s", s->name);
    e->prefixes = s->prefixes;
    e->ndim = s->ndim;
    e->shape[0] = s->shape[0];
    e->shape[1] = s->ndim == 2 ? s->shape[1] : 1;
    if (e->shape[0] <= 0 || e->shape[1] <= 0 || e->shape[0] > ((int64_t)1 << 40) / e->shape[1])
        return dm_fail(DM_ERR_VALUE, "parameter %s: bad shape", e->name);
    e->numel = e->shape[0] * e->shape[1];
    /* 16-float (64-byte) alignment of every tensor: vector loads, no false sharing */
    e->offset = p->total;
    p->total += (e->numel + 15) / 16 * 16;
    if (p->total > ((int64_t)1 << 40)) return dm_fail(DM_ERR_VALUE, "parameter table too large");
    p->n++;
    return DM_OK;
}

dm_status dm_params_load(dm_params *p, const dm_checkpoint *ck) {
    dm_tensor *views = dm_alloc((size_t)(p->n ? p->n : 1), sizeof *views, "parameter views");
    if (!views) return DM_ERR_NOMEM;
    dm_status st = DM_OK;
    for (int64_t i = 0; i < p->n && st == DM_OK; i++) {
        const dm_param_entry *e = &p->entries[i];
        st = dm_checkpoint_weight(ck, e->prefixes, e->suffix, e->ndim, e->shape, &views[i]);
    }
    if (st == DM_OK) {
        dm_free(p->data);
        p->data = dm_alloc((size_t)p->total * 2, sizeof(float), "f32 master weights and gradients");
        if (!p->data) st = DM_ERR_NOMEM;
    }
    if (st == DM_OK) {
        memset(p->data, 0, (size_t)p->total * 2 * sizeof(float));
        int64_t bad = -1; /* the last tensor that is not a float type, if any */
#pragma omp parallel for schedule(dynamic) reduction(max : bad)
        for (int64_t i = 0; i < p->n; i++)
            if (!dm_to_f32_n(p->data + p->entries[i].offset, views[i].data, views[i].dtype, (size_t)p->entries[i].numel))
                bad = i;
        if (bad >= 0)
            st = dm_fail(DM_ERR_TYPE, "%s: dtype %s is not a float type", p->entries[bad].name,
                         dm_dtype_name(views[bad].dtype));
    }
    dm_free(views);
    return st;
}

dm_status dm_params_bind(void *ctx, const dm_param_slot *s) {
    dm_params *p = ctx;
    if (p->cursor >= p->n || strcmp(p->entries[p->cursor].suffix, s->name) ||
        p->entries[p->cursor].prefixes != s->prefixes)
        return dm_fail(DM_ERR_VALUE, "parameter table does not match the model at '%s'", s->name);
    const dm_param_entry *e = &p->entries[p->cursor++];
    float *m = p->data + e->offset;
    if (s->view) {
        memset(s->view, 0, sizeof *s->view);
        s->view->data = m;
        s->view->dtype = DM_F32;
        s->view->ndim = e->ndim;
        s->view->shape[0] = e->shape[0];
        if (e->ndim == 2) s->view->shape[1] = e->shape[1];
    }
    if (s->vec) *s->vec = m;
    return DM_OK;
}

void dm_params_free(dm_params *p) {
    dm_free(p->entries);
    dm_free(p->data);
    memset(p, 0, sizeof *p);
}

float *dm_params_grad_of(const dm_params *p, const void *w) {
    const float *f = w;
    if (!p->data || f < p->data || f >= p->data + p->total) return NULL;
    return (float *)f + p->total;
}

int64_t dm_params_find(const dm_params *p, const char *name) {
    for (int64_t i = 0; i < p->n; i++)
        if (!strcmp(p->entries[i].name, name)) return i;
    return -1;
}
