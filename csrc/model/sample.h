/* Next-token choice with Hugging Face `generate` semantics.
 *
 * Order as transformers applies it: repetition penalty (on every token id in
 * the history: positive logits divided by the penalty, negative multiplied),
 * then, when sampling, temperature, top-k (keep logits >= the k-th largest),
 * top-p (drop the low tail whose ascending cumulative probability is
 * <= 1 - top_p, always keeping the most likely token), softmax, draw. Greedy
 * (do_sample = 0 or temperature = 0) takes the first maximum after the penalty.
 * The random source is our own xoshiro256** (seeded by splitmix64), so runs are
 * reproducible under a seed; it does not reproduce torch's sampler. */
#ifndef DM_MODEL_SAMPLE_H
#define DM_MODEL_SAMPLE_H

#include <stdint.h>

#include "core/status.h"

typedef struct {
    uint64_t s[4];
} dm_rng;

void dm_rng_seed(dm_rng *r, uint64_t seed);
uint64_t dm_rng_next(dm_rng *r);
double dm_rng_uniform(dm_rng *r); /* [0, 1) with 53 random bits */

typedef struct {
    int do_sample;
    float temperature;        /* > 0 when sampling; 0 means greedy */
    int64_t top_k;            /* <= 0: off */
    float top_p;              /* >= 1: off */
    float repetition_penalty; /* 1: off */
} dm_sample_params;

/* Pick the next token from logits[V] (modified in place: penalised and
 * filtered). history[n_hist] are the ids seen so far (prompt included, as HF). */
dm_status dm_sample(float *logits, int64_t V, const int64_t *history, int64_t n_hist,
                    const dm_sample_params *p, dm_rng *rng, int64_t *token);

#endif
