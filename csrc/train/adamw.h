/* AdamW (decoupled weight decay, bias correction, f32 moments) with global-norm
 * gradient clipping, and the learning-rate schedule (linear warmup, then cosine
 * from the peak to a minimum). Definitions: docs/training.md, "Trainer".
 *
 * One step, for every tensor that is not frozen (torch.optim.AdamW's order):
 *   g = grad * grad_scale * clip                  (clip: see below)
 *   p = p * (1 - lr * lr_scale * weight_decay)
 *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
 *   p = p - lr * lr_scale / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * with t the 1-based step. Clipping (torch.nn.utils.clip_grad_norm_): the global L2
 * norm N of grad * grad_scale over all non-frozen tensors; clip = min(1,
 * max_grad_norm / (N + 1e-6)) when max_grad_norm > 0, else 1. grad is not modified.
 * Sums are taken in double over fixed blocks in a fixed order, so the result does
 * not depend on the thread count. */
#ifndef DM_TRAIN_ADAMW_H
#define DM_TRAIN_ADAMW_H

#include <stdint.h>

#include "core/status.h"

typedef struct {
    float *param;        /* [n] f32 master weights, updated in place */
    const float *grad;   /* [n] */
    float *m, *v;        /* [n] first and second moments, updated in place */
    int64_t n;
    double weight_decay; /* this tensor's decoupled decay (0: none) */
    double lr_scale;     /* multiplies the step's lr for this tensor (1: none) */
    int frozen;          /* nonzero: untouched and outside the clipping norm */
} dm_adamw_tensor;

typedef struct {
    double beta1, beta2, eps;
    double max_grad_norm; /* <= 0: no clipping */
} dm_adamw_config;

/* step >= 1; lr >= 0; grad_scale > 0 (e.g. 1 / micro-batches when their losses were
 * summed). *grad_norm (may be NULL): the norm N before clipping. Non-finite
 * gradients: DM_ERR_VALUE before anything is changed. */
dm_status dm_adamw_step(const dm_adamw_config *c, dm_adamw_tensor *t, int64_t n_tensors, int64_t step, double lr,
                        double grad_scale, double *grad_norm, int threads);

typedef struct {
    double peak_lr, min_lr;
    int64_t warmup_steps, total_steps;
} dm_lr_schedule;

/* Validates a schedule: 0 < peak, 0 <= min <= peak, 0 <= warmup <= total, total >= 1. */
dm_status dm_lr_schedule_check(const dm_lr_schedule *s);

/* The lr of 0-based step s:
 *   s < warmup:  peak * (s + 1) / warmup
 *   otherwise:   min + (peak - min) * (1 + cos(pi * p)) / 2,
 *                p = min(1, (s - warmup + 1) / (total - warmup))
 * so the last warmup step and the first cosine step are at (about) the peak and step
 * total - 1 is at min; steps past the total stay at min. */
double dm_lr_at(const dm_lr_schedule *s, int64_t step);

#endif
