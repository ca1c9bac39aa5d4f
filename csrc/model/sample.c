/* Logits processing and sampling (see sample.h). */
#include "model/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void dm_rng_seed(dm_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t dm_rng_next(dm_rng *r) {
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double dm_rng_uniform(dm_rng *r) { return (double)(dm_rng_next(r) >> 11) * 0x1.0p-53; }

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static int64_t argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

typedef struct {
    float v;
    int64_t i;
} vi_pair;

static int cmp_pair_desc(const void *a, const void *b) {
    const vi_pair *x = a, *y = b;
    if (x->v != y->v) return (x->v < y->v) - (x->v > y->v);
    return (x->i > y->i) - (x->i < y->i);
}

/* top-p over logits already filtered to -inf where removed. Tokens are visited
 * from the most likely down; token i survives while the probability mass of
 * tokens strictly above it is < top_p (the same set as HF's ascending-cumsum
 * rule). The first few are found by selection (usually only a handful
 * survive); beyond 64 survivors the rest is sorted once. */
static dm_status top_p_filter(float *x, int64_t V, float top_p) {
    float mx = x[argmax(x, V)];
    double z = 0;
    for (int64_t i = 0; i < V; i++) z += exp((double)x[i] - mx);
    unsigned char *kept = dm_calloc((size_t)V, 1, "top-p mask");
    if (!kept) return DM_ERR_NOMEM;
    double above = 0;
    int done = 0;
    for (int n = 0; n < 64; n++) {
        int64_t best = -1;
        for (int64_t i = 0; i < V; i++)
            if (!kept[i] && x[i] != -INFINITY && (best < 0 || x[i] > x[best])) best = i;
        if (best < 0 || (above >= top_p && above > 0)) {
            done = 1;
            break;
        }
        kept[best] = 1;
        above += exp((double)x[best] - mx) / z;
    }
    if (!done) {
        vi_pair *pr = dm_alloc((size_t)V, sizeof(vi_pair), "top-p sort");
        if (!pr) {
            dm_free(kept);
            return DM_ERR_NOMEM;
        }
        int64_t n = 0;
        for (int64_t i = 0; i < V; i++)
            if (!kept[i] && x[i] != -INFINITY) pr[n++] = (vi_pair){x[i], i};
        qsort(pr, (size_t)n, sizeof(vi_pair), cmp_pair_desc);
        for (int64_t j = 0; j < n && above < top_p; j++) {
            kept[pr[j].i] = 1;
            above += exp((double)pr[j].v - mx) / z;
        }
        dm_free(pr);
    }
    for (int64_t i = 0; i < V; i++)
        if (!kept[i]) x[i] = -INFINITY;
    dm_free(kept);
    return DM_OK;
}

dm_status dm_sample(float *logits, int64_t V, const int64_t *history, int64_t n_hist,
                    const dm_sample_params *p, dm_rng *rng, int64_t *token) {
    if (V <= 0) return dm_fail(DM_ERR_VALUE, "sample: empty logits");
    /* Written so that NaN fails every check (NaN < 0 is false). densemllm.llm checks
     * these first with the same bounds; this guards the core's own callers. */
    if (!(p->repetition_penalty > 0 && isfinite(p->repetition_penalty)))
        return dm_fail(DM_ERR_VALUE, "repetition_penalty must be a finite number > 0, got %g",
                       (double)p->repetition_penalty);
    if (p->do_sample && !(p->temperature >= 0 && isfinite(p->temperature)))
        return dm_fail(DM_ERR_VALUE, "temperature must be a finite number >= 0, got %g", (double)p->temperature);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return dm_fail(DM_ERR_VALUE, "top_p must be in (0, 1], got %g", (double)p->top_p);
    if (p->repetition_penalty != 1.0f) {
        for (int64_t i = 0; i < n_hist; i++) {
            int64_t id = history[i];
            if (id < 0 || id >= V)
                return dm_fail(DM_ERR_INDEX, "history id %lld outside the vocabulary", (long long)id);
        }
        /* Each distinct id once: mark then apply (HF gathers, then scatters). */
        unsigned char *seen = dm_calloc((size_t)V, 1, "repetition mask");
        if (!seen) return DM_ERR_NOMEM;
        for (int64_t i = 0; i < n_hist; i++) seen[history[i]] = 1;
        for (int64_t i = 0; i < V; i++)
            if (seen[i]) logits[i] = logits[i] < 0 ? logits[i] * p->repetition_penalty
                                                   : logits[i] / p->repetition_penalty;
        dm_free(seen);
    }
    if (!p->do_sample || p->temperature == 0.0f) {
        *token = argmax(logits, V);
        return DM_OK;
    }
    if (p->temperature != 1.0f) {
        for (int64_t i = 0; i < V; i++) logits[i] /= p->temperature;
        /* A temperature so small that the top logit overflows is the greedy limit
         * (softmax would be inf - inf = NaN). */
        int64_t top = argmax(logits, V);
        if (logits[top] == INFINITY) {
            *token = top;
            return DM_OK;
        }
    }
    if (p->top_k > 0 && p->top_k < V) {
        float *tmp = dm_alloc((size_t)V, sizeof(float), "top-k scratch");
        if (!tmp) return DM_ERR_NOMEM;
        memcpy(tmp, logits, (size_t)V * sizeof(float));
        qsort(tmp, (size_t)V, sizeof(float), cmp_desc);
        float kth = tmp[p->top_k - 1];
        dm_free(tmp);
        for (int64_t i = 0; i < V; i++)
            if (logits[i] < kth) logits[i] = -INFINITY;
    }
    if (p->top_p < 1.0f) DM_TRY(top_p_filter(logits, V, p->top_p));
    float mx = logits[argmax(logits, V)];
    double z = 0;
    for (int64_t i = 0; i < V; i++) z += exp((double)logits[i] - mx);
    double u = dm_rng_uniform(rng) * z, acc = 0;
    int64_t last = 0;
    for (int64_t i = 0; i < V; i++) {
        if (logits[i] == -INFINITY) continue;
        last = i;
        acc += exp((double)logits[i] - mx);
        if (u < acc) {
            *token = i;
            return DM_OK;
        }
    }
    *token = last; /* rounding at the very top of the range */
    return DM_OK;
}
