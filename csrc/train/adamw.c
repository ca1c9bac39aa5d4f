/* AdamW + global-norm clipping + the lr schedule (contract: train/adamw.h).
 * Per-element math is f32 in torch.optim.AdamW's order (single-tensor CPU path:
 * decay, lerp of m, v, bias-corrected denominator, addcdiv), so 20 steps agree with
 * it to float rounding. Work is split into fixed 64K-element blocks: the norm's
 * partial sums are per block (double), added in block order. */
#include "train/adamw.h"

#include <math.h>

#include "core/alloc.h"
#include "core/threads.h"

#define BLOCK ((int64_t)1 << 16)

typedef struct {
    int64_t t, off, n; /* tensor, first element, count */
} block;

static dm_status make_blocks(const dm_adamw_tensor *t, int64_t nt, block **out, int64_t *nb) {
    int64_t n = 0;
    for (int64_t i = 0; i < nt; i++)
        if (!t[i].frozen) n += (t[i].n + BLOCK - 1) / BLOCK;
    block *b = dm_alloc((size_t)(n > 0 ? n : 1), sizeof(block), "adamw blocks");
    if (!b) return DM_ERR_NOMEM;
    int64_t k = 0;
    for (int64_t i = 0; i < nt; i++) {
        if (t[i].frozen) continue;
        for (int64_t o = 0; o < t[i].n; o += BLOCK) {
            b[k].t = i;
            b[k].off = o;
            b[k].n = t[i].n - o < BLOCK ? t[i].n - o : BLOCK;
            k++;
        }
    }
    *out = b;
    *nb = n;
    return DM_OK;
}

dm_status dm_adamw_step(const dm_adamw_config *c, dm_adamw_tensor *t, int64_t n_tensors, int64_t step, double lr,
                        double grad_scale, double *grad_norm, int threads) {
    if (!c || (n_tensors > 0 && !t) || n_tensors < 0) return dm_fail(DM_ERR_VALUE, "adamw: missing arguments");
    if (step < 1) return dm_fail(DM_ERR_VALUE, "adamw: step must be >= 1 (bias correction), got %lld", (long long)step);
    if (!(lr >= 0) || isinf(lr)) return dm_fail(DM_ERR_VALUE, "adamw: lr must be finite and >= 0, got %g", lr);
    if (!(grad_scale > 0) || isinf(grad_scale))
        return dm_fail(DM_ERR_VALUE, "adamw: grad_scale must be finite and > 0, got %g", grad_scale);
    if (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1))
        return dm_fail(DM_ERR_VALUE, "adamw: betas must be in [0, 1), got (%g, %g)", c->beta1, c->beta2);
    if (!(c->eps > 0) || isinf(c->eps)) return dm_fail(DM_ERR_VALUE, "adamw: eps must be finite and > 0, got %g", c->eps);
    if (isnan(c->max_grad_norm)) return dm_fail(DM_ERR_VALUE, "adamw: max_grad_norm is NaN");
    for (int64_t i = 0; i < n_tensors; i++) {
        if (t[i].n < 0 || (t[i].n > 0 && (!t[i].param || !t[i].grad || !t[i].m || !t[i].v)))
            return dm_fail(DM_ERR_VALUE, "adamw: tensor %lld: missing buffers", (long long)i);
        if (!(t[i].weight_decay >= 0) || isinf(t[i].weight_decay))
            return dm_fail(DM_ERR_VALUE, "adamw: tensor %lld: weight_decay must be finite and >= 0, got %g",
                           (long long)i, t[i].weight_decay);
        if (!(t[i].lr_scale >= 0) || isinf(t[i].lr_scale))
            return dm_fail(DM_ERR_VALUE, "adamw: tensor %lld: lr_scale must be finite and >= 0, got %g", (long long)i,
                           t[i].lr_scale);
    }
    block *b = NULL;
    int64_t nb = 0;
    DM_TRY(make_blocks(t, n_tensors, &b, &nb));
    double *part = dm_alloc((size_t)(nb > 0 ? nb : 1), sizeof(double), "adamw norm partials");
    if (!part) {
        dm_free(b);
        return DM_ERR_NOMEM;
    }
    dm_threads_enter();
    const int nth = threads > 0 ? threads : dm_get_num_threads();
    const float gs = (float)grad_scale;
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t k = 0; k < nb; k++) {
        const float *g = t[b[k].t].grad + b[k].off;
        double s = 0;
        for (int64_t j = 0; j < b[k].n; j++) {
            float x = g[j] * gs;
            s += (double)x * (double)x;
        }
        part[k] = s;
    }
    double ss = 0;
    for (int64_t k = 0; k < nb; k++) ss += part[k];
    dm_free(part);
    if (!isfinite(ss)) {
        int64_t bad = -1;
        for (int64_t k = 0; k < nb && bad < 0; k++)
            for (int64_t j = 0; j < b[k].n; j++)
                if (!isfinite(t[b[k].t].grad[b[k].off + j])) { bad = b[k].t; break; }
        dm_free(b);
        return dm_fail(DM_ERR_VALUE, "adamw: non-finite gradient in tensor %lld (nothing was updated)", (long long)bad);
    }
    const double norm = sqrt(ss);
    if (grad_norm) *grad_norm = norm;
    double clip = 1.0;
    if (c->max_grad_norm > 0) {
        clip = c->max_grad_norm / (norm + 1e-6);
        if (clip > 1.0) clip = 1.0;
    }
    /* torch multiplies the gradients by the f32 clip coefficient, then steps */
    const float clipf = (float)clip;
    const int scale_grads = grad_scale != 1.0 || clip != 1.0;
    const double bc1 = 1.0 - pow(c->beta1, (double)step), bc2 = 1.0 - pow(c->beta2, (double)step);
    const float b2 = (float)c->beta2, w1 = (float)(1.0 - c->beta1), w2 = (float)(1.0 - c->beta2);
    const float bc2s = (float)sqrt(bc2), eps = (float)c->eps;
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t k = 0; k < nb; k++) {
        const dm_adamw_tensor *x = &t[b[k].t];
        const double lrt = lr * x->lr_scale;
        const float decay = (float)(1.0 - lrt * x->weight_decay), neg_step = (float)(-(lrt / bc1));
        float *p = x->param + b[k].off, *m = x->m + b[k].off, *v = x->v + b[k].off;
        const float *g = x->grad + b[k].off;
        for (int64_t j = 0; j < b[k].n; j++) {
            float gj = g[j];
            if (scale_grads) gj = (gj * gs) * clipf;
            float pj = p[j] * decay;
            float mj = m[j] + w1 * (gj - m[j]);
            float vj = v[j] * b2 + w2 * gj * gj; /* mul_(beta2).addcmul_(g, g, 1 - beta2) */
            float den = sqrtf(vj) / bc2s + eps;
            p[j] = pj + neg_step * mj / den; /* torch's addcdiv: self + (value * t1) / t2 */
            m[j] = mj;
            v[j] = vj;
        }
    }
    dm_free(b);
    return DM_OK;
}

dm_status dm_lr_schedule_check(const dm_lr_schedule *s) {
    if (!(s->peak_lr > 0) || isinf(s->peak_lr))
        return dm_fail(DM_ERR_VALUE, "lr must be finite and > 0, got %g", s->peak_lr);
    if (!(s->min_lr >= 0) || s->min_lr > s->peak_lr)
        return dm_fail(DM_ERR_VALUE, "min_lr must be in [0, lr=%g], got %g", s->peak_lr, s->min_lr);
    if (s->total_steps < 1) return dm_fail(DM_ERR_VALUE, "total_steps must be >= 1, got %lld", (long long)s->total_steps);
    if (s->warmup_steps < 0 || s->warmup_steps > s->total_steps)
        return dm_fail(DM_ERR_VALUE, "warmup must be in [0, total_steps=%lld], got %lld", (long long)s->total_steps,
                       (long long)s->warmup_steps);
    return DM_OK;
}

double dm_lr_at(const dm_lr_schedule *s, int64_t step) {
    if (step < 0) step = 0;
    if (step < s->warmup_steps) return s->peak_lr * (double)(step + 1) / (double)s->warmup_steps;
    int64_t span = s->total_steps - s->warmup_steps;
    double p = span > 0 ? (double)(step - s->warmup_steps + 1) / (double)span : 1.0;
    if (p > 1) p = 1;
    return s->min_lr + (s->peak_lr - s->min_lr) * 0.5 * (1.0 + cos(M_PI * p));
}
