/* Patch merger: RMSNorm per patch, concatenate each merge x merge block,
 * Linear -> exact GELU -> Linear (notes section 3). */
#include "model/vision.h"

#include "ops/activation.h"
#include "ops/norm.h"

dm_status merger_run(const dm_vision *v, float *out, const float *x, int64_t n, float *normed, float *rstd,
                     float *mid, float *mid_act) {
    const dm_vision_config *c = &v->cfg;
    const int64_t unit = c->merge * c->merge, D = c->hidden, Dm = unit * D;
    /* The unit patches of a merged token are adjacent rows, so the normed
     * [n*unit, D] buffer already is the concatenated [n, unit*D] matrix. */
    if (rstd)
        rmsnorm_forward_save(normed, D, x, D, n * unit, D, v->mln_w, c->merger_eps, rstd);
    else
        rmsnorm_forward(normed, D, x, D, n * unit, D, v->mln_w, c->merger_eps);
    DM_TRY(dm_matmul(v->backend, mid, normed, &v->m0, &v->m0b, n, 0));
    gelu_forward(mid_act, mid, n * Dm);
    DM_TRY(dm_matmul(v->backend, out, mid_act, &v->m2, &v->m2b, n, 0));
    return DM_OK;
}

dm_status merger_forward(const dm_vision *v, float *out, const float *x, int64_t n, float *work) {
    const int64_t Dm = v->cfg.merge * v->cfg.merge * v->cfg.hidden;
    return merger_run(v, out, x, n, work, NULL, work + n * Dm, work + n * Dm);
}
