/* NTP-M loss and ablation losses: value + gradient, one token per OpenMP task.
 * Definitions: docs/ntpm.md. Design notes:
 * - Targets stay sparse. A per-thread [V] byte array marks the current token's
 *   positives (and, for per-token valid sets, its valid ids) and is cleared again
 *   through the same id lists: O(V) per token, no allocation or [V] clearing per token.
 * - Top-k negatives: a bounded heap of size k whose root is the current worst kept
 *   id. Scanning ids in increasing order, a later id with a logit equal to the
 *   root's loses the tie (lower id wins), so once the heap is full a 64-wide block
 *   is skipped unless some logit is > the root (or NaN): one vector compare per
 *   element and no sort of V.
 * - NTP-M / OHEM math is in double (it only runs on the |P| + k selected terms), the
 *   full-scan ablations use float32 exp/log1p per id (sp_sig_f; 16 ids at a time with
 *   libmvec on AVX-512 when the valid set is a whole row); token losses are summed in
 *   double in token order, so results do not depend on threads. */
#include "train/ntpm.h"

const char *const ntpm_variant_names[NTPM_VARIANT_COUNT] = {
    "ntpm", "bce", "individual", "balanced", "focal", "ohem", "ntp_ce",
};

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/dtype.h"
#include "core/threads.h"

enum { MARK_POS = 1, MARK_VALID = 2, MARK_SEEN = 4 };

/* softplus(x) = log(1 + e^x); -log(sigmoid(x)) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x). */
static inline double softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

static inline double sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

/* The full-scan variants evaluate every valid id: there the math is float32 with one
 * expf and one log1pf per id (a few ulps, far inside the 1e-5 contract; sums stay
 * double). For x: e = exp(-|x|), l = log1p(e), d = 1 + e, so softplus(+-x) =
 * max(+-x, 0) + l, sigmoid(x) = (x >= 0 ? 1 : e) / d, sigmoid(-x) = (x >= 0 ? e : 1) / d. */
typedef struct {
    float sp_pos, sp_neg;   /* softplus(x), softplus(-x) */
    float sig_pos, sig_neg; /* sigmoid(x), sigmoid(-x) */
} sp_sig;

static inline sp_sig sp_sig_f(float x) {
    float e = expf(-fabsf(x)), l = log1pf(e), d = 1.0f + e;
    sp_sig r;
    r.sp_pos = fmaxf(x, 0.0f) + l;
    r.sp_neg = fmaxf(-x, 0.0f) + l;
    r.sig_pos = (x >= 0 ? 1.0f : e) / d;
    r.sig_neg = (x >= 0 ? e : 1.0f) / d;
    return r;
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* The full-scan variants over a whole row (all ids valid, or a shared mask), 16 ids at
 * a time with glibc's libmvec (linked through -lm; <= 4 ulp, GLIBC 2.22): the same
 * formulas as sp_sig_f, log1p(e) by Kahan's log(u) * e / (u - 1), u = 1 + e. */
#define NTPM_VEC 1
__m512 _ZGVeN16v_expf(__m512);
__m512 _ZGVeN16v_logf(__m512);
__m512 _ZGVeN16vv_powf(__m512, __m512);

typedef struct {
    __m512 sp_pos, sig_pos, sig_neg;
} sp_sig16;

static inline sp_sig16 sp_sig_v(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    __m512 e = _ZGVeN16v_expf(_mm512_sub_ps(zero, _mm512_abs_ps(x)));
    __m512 u = _mm512_add_ps(one, e), um1 = _mm512_sub_ps(u, one);
    __m512 l = _mm512_div_ps(_mm512_mul_ps(_ZGVeN16v_logf(u), e), um1);
    l = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(um1, zero, _CMP_EQ_OQ), l, e); /* e below ulp(1) */
    __mmask16 nonneg = _mm512_cmp_ps_mask(x, zero, _CMP_GE_OQ);
    sp_sig16 r;
    r.sp_pos = _mm512_add_ps(_mm512_max_ps(x, zero), l);
    r.sig_pos = _mm512_div_ps(_mm512_mask_blend_ps(nonneg, e, one), u);
    r.sig_neg = _mm512_div_ps(_mm512_mask_blend_ps(nonneg, one, e), u);
    return r;
}

static inline double hsum_pd(__m512 v) { /* 16 floats summed in double */
    __m256 hi = _mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(v), 1));
    __m512d s = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(hi));
    return _mm512_reduce_add_pd(s);
}

/* Lanes v..v+15 that are inside V and valid under `mask` (NULL: all valid). */
static inline __mmask16 valid_lanes(const uint8_t *mask, int64_t v, int64_t V) {
    __mmask16 m = v + 16 <= V ? (__mmask16)0xFFFF : (__mmask16)((1u << (V - v)) - 1);
    if (mask) {
        __m128i vm = _mm_maskz_loadu_epi8(m, mask + v);
        m &= _mm_test_epi8_mask(vm, vm);
    }
    return m;
}

/* Lanes of ids v .. v+15 that are valid negatives (not positive, in the mask, < V). */
static inline __mmask16 neg_lanes(const uint8_t *mask, const uint8_t *marks, int64_t v, int64_t V) {
    __mmask16 m = valid_lanes(mask, v, V);
    __m128i mk = _mm_maskz_loadu_epi8(m, marks + v);
    m &= ~_mm_test_epi8_mask(mk, _mm_set1_epi8(MARK_POS));
    return m;
}

/* Sum of softplus(z) over the valid negatives of a row; g[v] = w * sigmoid(z) there.
 * Returns -1, or the first NaN id. */
static int64_t row_neg_sigmoid(const float *z, int64_t V, const uint8_t *mask, const uint8_t *marks, float *g,
                               float w, double *sum) {
    double acc = 0;
    const __m512 wv = _mm512_set1_ps(w);
    for (int64_t v = 0; v < V; v += 16) {
        __mmask16 m = neg_lanes(mask, marks, v, V);
        __m512 x = _mm512_maskz_loadu_ps(m, z + v);
        __mmask16 bad = _mm512_mask_cmp_ps_mask(m, x, x, _CMP_UNORD_Q);
        if (bad) return v + __builtin_ctz(bad);
        sp_sig16 r = sp_sig_v(x);
        acc += hsum_pd(_mm512_maskz_mov_ps(m, r.sp_pos));
        if (g) _mm512_mask_storeu_ps(g + v, m, _mm512_mul_ps(r.sig_pos, wv));
    }
    *sum = acc;
    return -1;
}

/* Focal over the valid negatives of a row (p_t = sigmoid(-z), q = sigmoid(z)): sum of
 * at q^gamma softplus(z); g[v] = gs * at q^gamma (gamma sigmoid(-z) softplus(z) + q). */
static int64_t row_neg_focal(const float *z, int64_t V, const uint8_t *mask, const uint8_t *marks, float *g,
                             float gamma, float at, float gs, double *sum) {
    double acc = 0;
    const __m512 gmv = _mm512_set1_ps(gamma), atv = _mm512_set1_ps(at), gsv = _mm512_set1_ps(gs);
    for (int64_t v = 0; v < V; v += 16) {
        __mmask16 m = neg_lanes(mask, marks, v, V);
        __m512 x = _mm512_maskz_loadu_ps(m, z + v);
        __mmask16 bad = _mm512_mask_cmp_ps_mask(m, x, x, _CMP_UNORD_Q);
        if (bad) return v + __builtin_ctz(bad);
        sp_sig16 r = sp_sig_v(x);
        __m512 qg = _mm512_mul_ps(atv, _ZGVeN16vv_powf(r.sig_pos, gmv));
        acc += hsum_pd(_mm512_maskz_mov_ps(m, _mm512_mul_ps(qg, r.sp_pos)));
        if (g) {
            /* p_t log p_t -> 0 as p_t -> 0 (z = +inf) */
            __mmask16 pz = _mm512_cmp_ps_mask(r.sig_neg, _mm512_setzero_ps(), _CMP_GT_OQ);
            __m512 ptlog = _mm512_maskz_mul_ps(pz, r.sig_neg, r.sp_pos);
            __m512 gv = _mm512_mul_ps(qg, _mm512_fmadd_ps(gmv, ptlog, r.sig_pos));
            _mm512_mask_storeu_ps(g + v, m, _mm512_mul_ps(gv, gsv));
        }
    }
    *sum = acc;
    return -1;
}

__m512d _ZGVeN8v_exp(__m512d);

/* ntp_ce over a whole row: max and sum of e^(z - max) over the valid ids (positives
 * included) in double, e^(z - max) parked in g. Returns -1, or the first NaN id. */
static int64_t row_softmax(const float *z, int64_t V, const uint8_t *mask, float *g, double *max,
                           double *sum) {
    __m512 mv = _mm512_set1_ps(-INFINITY);
    for (int64_t v = 0; v < V; v += 16) {
        __mmask16 m = valid_lanes(mask, v, V);
        __m512 x = _mm512_maskz_loadu_ps(m, z + v);
        __mmask16 bad = _mm512_mask_cmp_ps_mask(m, x, x, _CMP_UNORD_Q);
        if (bad) return v + __builtin_ctz(bad);
        mv = _mm512_mask_max_ps(mv, m, mv, x);
    }
    const double mx = (double)_mm512_reduce_max_ps(mv);
    const __m512d mxv = _mm512_set1_pd(mx);
    __m512d acc = _mm512_setzero_pd();
    for (int64_t v = 0; v < V; v += 16) {
        __mmask16 m = valid_lanes(mask, v, V);
        __m512 x = _mm512_maskz_loadu_ps(m, z + v);
        __m256 hi = _mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(x), 1));
        __m512d e0 = _mm512_maskz_mov_pd((__mmask8)m,
                                         _ZGVeN8v_exp(_mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(x)), mxv)));
        __m512d e1 = _mm512_maskz_mov_pd((__mmask8)(m >> 8), _ZGVeN8v_exp(_mm512_sub_pd(_mm512_cvtps_pd(hi), mxv)));
        acc = _mm512_add_pd(acc, _mm512_add_pd(e0, e1));
        if (g) {
            __m512 ef = _mm512_castsi512_ps(_mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_castps_si256(_mm512_cvtpd_ps(e0))),
                _mm256_castps_si256(_mm512_cvtpd_ps(e1)), 1));
            _mm512_mask_storeu_ps(g + v, m, ef);
        }
    }
    *max = mx;
    *sum = _mm512_reduce_add_pd(acc);
    return -1;
}

/* g[v] *= f over the valid ids of a row. */
static void row_scale(float *g, int64_t V, const uint8_t *mask, float f) {
    const __m512 fv = _mm512_set1_ps(f);
    for (int64_t v = 0; v < V; v += 16) {
        __mmask16 m = valid_lanes(mask, v, V);
        _mm512_mask_storeu_ps(g + v, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + v), fv));
    }
}
#else
#define NTPM_VEC 0
#endif

/* Zero a gradient row with streaming stores: a row (0.5 MB at V = 128256) is written
 * once and read later by someone else, so fetching its old contents into the cache
 * (what ordinary stores do) would double the memory traffic. */
static void zero_row(float *g, int64_t n) {
#if defined(__AVX512F__)
    int64_t j = 0;
    for (; j < n && ((uintptr_t)(g + j) & 63); j++) g[j] = 0;
    const __m512 zero = _mm512_setzero_ps();
    for (; j + 16 <= n; j += 16) _mm512_stream_ps(g + j, zero);
    for (; j < n; j++) g[j] = 0;
    _mm_sfence(); /* order the streamed zeros before the row's ordinary stores */
#else
    memset(g, 0, (size_t)n * sizeof(float));
#endif
}

/* Heap order: "a is worse than b" = smaller logit, or equal logit and larger id. */
static inline int worse(float za, int32_t ia, float zb, int32_t ib) {
    return za < zb || (za == zb && ia > ib);
}

static void heap_push(float *hz, int32_t *hid, int64_t *n, float z, int32_t id) {
    int64_t i = (*n)++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!worse(z, id, hz[p], hid[p])) break;
        hz[i] = hz[p];
        hid[i] = hid[p];
        i = p;
    }
    hz[i] = z;
    hid[i] = id;
}

/* Replace the root (worst kept) by (z, id) and restore the heap. */
static void heap_replace_root(float *hz, int32_t *hid, int64_t n, float z, int32_t id) {
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && worse(hz[c + 1], hid[c + 1], hz[c], hid[c])) c++;
        if (!worse(hz[c], hid[c], z, id)) break;
        hz[i] = hz[c];
        hid[i] = hid[c];
        i = c;
    }
    hz[i] = z;
    hid[i] = id;
}

/* Offer (z, id) to a heap of capacity cap, ids in any order. */
static inline void heap_offer(float *hz, int32_t *hid, int64_t *n, int64_t cap, float z, int32_t id) {
    if (*n < cap) heap_push(hz, hid, n, z, id);
    else if (cap > 0 && worse(hz[0], hid[0], z, id)) heap_replace_root(hz, hid, *n, z, id);
}

typedef struct {
    uint8_t *marks;  /* [V], all zero between tokens */
    float *row;      /* [V] f32 copy of a bf16 row, or NULL */
    int32_t *neg;    /* [V] the token's valid negatives, or NULL if not needed */
    int32_t *pos;    /* [max positives per token] deduplicated valid positives */
    float *hz;       /* [heap capacity] */
    int32_t *hid;
} scratch;

typedef struct {
    atomic_int failed;
    int64_t token;  /* lowest failing token; message below */
    char msg[256];
} errbox;

static void err_record(errbox *e, int64_t token, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void err_record(errbox *e, int64_t token, const char *fmt, ...) {
#pragma omp critical(ntpm_err)
    {
        if (!atomic_load(&e->failed) || token < e->token) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(e->msg, sizeof e->msg, fmt, ap);
            va_end(ap);
            e->token = token;
            atomic_store(&e->failed, 1);
        }
    }
}

/* Top-k of the valid non-positive ids of a full row (all valid, or a shared mask),
 * scanning in id order. Returns the heap size, or -1 with *nan_at set. */
static int64_t scan_topk_row(const float *z, int64_t V, const uint8_t *mask, const uint8_t *marks,
                             int64_t cap, float *hz, int32_t *hid, int64_t *nan_at) {
    int64_t n = 0, v = 0;
    if (cap <= 0) return 0;
    for (; v < V && n < cap; v++) { /* fill: every valid negative enters */
        if ((mask && !mask[v]) || (marks[v] & MARK_POS)) continue;
        if (z[v] != z[v]) { *nan_at = v; return -1; }
        heap_push(hz, hid, &n, z[v], (int32_t)v);
    }
    float thr = hz[0];
    while (v < V) {
        int64_t end = v + 64 <= V ? v + 64 : V;
        if (end - v == 64) {
            /* !(x <= thr) is true for x > thr and for NaN: one compare per element. */
            int hit = 0;
            for (int j = 0; j < 64; j++) hit |= !(z[v + j] <= thr);
            if (!hit) { v = end; continue; }
        }
        for (; v < end; v++) {
            float x = z[v];
            if (x <= thr) continue;
            if ((mask && !mask[v]) || (marks[v] & MARK_POS)) continue;
            if (x != x) { *nan_at = v; return -1; }
            heap_replace_root(hz, hid, n, x, (int32_t)v);
            thr = hz[0];
        }
    }
    return n;
}

typedef struct {
    const ntpm_args *a;
    int64_t mask_count;  /* valid ids in the shared mask */
    double scale;        /* 1 or 1 / n_active */
} ctx;

/* Sort the first n (id, value) pairs by id (shell sort: n is |P| + k, small). */
static void sort_pairs(int32_t *id, float *val, int64_t n) {
    static const int64_t gaps[] = {701, 301, 132, 57, 23, 10, 4, 1};
    for (int gi = 0; gi < 8; gi++) {
        int64_t gap = gaps[gi];
        for (int64_t i = gap; i < n; i++) {
            int32_t ti = id[i];
            float tv = val[i];
            int64_t j = i;
            for (; j >= gap && id[j - gap] > ti; j -= gap) {
                id[j] = id[j - gap];
                val[j] = val[j - gap];
            }
            id[j] = ti;
            val[j] = tv;
        }
    }
}

/* One token: returns its loss (0 when masked); writes its gradient row (scaled by
 * c->scale) into g when g is not NULL (g is all zeros on entry), and for ntpm/ohem
 * its nonzero entries, ids ascending, into sid, sval (count in scount) when sid is not NULL. */
static double token_loss_grad(const ctx *c, scratch *s, int64_t i, const float *z, float *g,
                              int32_t *sid, float *sval, int64_t *scount, errbox *err) {
    const ntpm_args *a = c->a;
    const int64_t V = a->V;
    const int per_token = a->valid_offsets != NULL;
    const int64_t set = a->valid_set ? a->valid_set[i] : i;
    const int64_t *vids = per_token ? a->valid_ids + a->valid_offsets[set] : NULL;
    const int64_t nv = per_token ? a->valid_offsets[set + 1] - a->valid_offsets[set] : 0;
    const int64_t *pids = a->pos_ids + a->pos_offsets[i];
    const int64_t npl = a->pos_offsets[i + 1] - a->pos_offsets[i];
    double loss = 0;
    if (scount) *scount = 0;

    /* Valid set M_i and positives P_i = valid ids with y = 1 (deduplicated). */
    int64_t nM;
    if (per_token) {
        nM = 0;
        for (int64_t j = 0; j < nv; j++)
            if (!(s->marks[vids[j]] & MARK_VALID)) { s->marks[vids[j]] |= MARK_VALID; nM++; }
    } else {
        nM = a->valid_mask ? c->mask_count : V;
    }
    int64_t np = 0;
    for (int64_t j = 0; j < npl; j++) {
        int64_t v = pids[j];
        int valid = per_token ? (s->marks[v] & MARK_VALID) : (!a->valid_mask || a->valid_mask[v]);
        if (!valid || (s->marks[v] & MARK_POS)) continue;
        s->marks[v] |= MARK_POS;
        s->pos[np++] = (int32_t)v;
        if (z[v] != z[v]) {
            err_record(err, i, "logits: NaN at token %lld, id %lld", (long long)i, (long long)v);
            goto done;
        }
    }
    const int64_t nC = nM - np; /* valid negatives (candidates) */
    if (nM == 0) goto done;     /* wholly invalid token: masked */

    /* The valid negatives as a list, for variants that use them all or when the
     * valid set is a per-token list (ids in no particular order). */
    const int row_path = NTPM_VEC && !per_token &&
                         (a->variant == NTPM_VARIANT_BCE || a->variant == NTPM_VARIANT_INDIVIDUAL ||
                          a->variant == NTPM_VARIANT_BALANCED || a->variant == NTPM_VARIANT_FOCAL ||
                          a->variant == NTPM_VARIANT_NTP_CE);
    const int needs_list = !row_path && (per_token || (a->variant != NTPM_VARIANT_NTPM && a->variant != NTPM_VARIANT_OHEM));
    int64_t nneg = 0;
    if (needs_list) {
        if (per_token) {
            for (int64_t j = 0; j < nv; j++) {
                int64_t v = vids[j];
                if (s->marks[v] & (MARK_POS | MARK_SEEN)) continue;
                s->marks[v] |= MARK_SEEN;
                s->neg[nneg++] = (int32_t)v;
            }
        } else {
            for (int64_t v = 0; v < V; v++)
                if ((!a->valid_mask || a->valid_mask[v]) && !(s->marks[v] & MARK_POS)) s->neg[nneg++] = (int32_t)v;
        }
        if (a->variant != NTPM_VARIANT_NTPM && a->variant != NTPM_VARIANT_OHEM)
            for (int64_t j = 0; j < nneg; j++)
                if (z[s->neg[j]] != z[s->neg[j]]) {
                    err_record(err, i, "logits: NaN at token %lld, id %d", (long long)i, s->neg[j]);
                    goto done;
                }
    }

    const double sc = c->scale;
    switch (a->variant) {
    case NTPM_VARIANT_NTPM:
    case NTPM_VARIANT_OHEM: {
        int64_t cap;
        if (a->variant == NTPM_VARIANT_NTPM) {
            cap = a->k < nC ? a->k : nC;
        } else {
            double want = ceil(a->ohem_ratio * (double)(np > 0 ? np : 1));
            cap = want < (double)nC ? (int64_t)want : nC;
        }
        int64_t nsel = 0;
        if (per_token) {
            for (int64_t j = 0; j < nneg; j++) {
                float x = z[s->neg[j]];
                if (x != x) {
                    err_record(err, i, "logits: NaN at token %lld, id %d", (long long)i, s->neg[j]);
                    goto done;
                }
                heap_offer(s->hz, s->hid, &nsel, cap, x, s->neg[j]);
            }
        } else {
            int64_t nan_at = -1;
            nsel = scan_topk_row(z, V, a->valid_mask, s->marks, cap, s->hz, s->hid, &nan_at);
            if (nsel < 0) {
                err_record(err, i, "logits: NaN at token %lld, id %lld", (long long)i, (long long)nan_at);
                goto done;
            }
        }
        double pos_div, neg_div;
        if (a->variant == NTPM_VARIANT_NTPM) {
            pos_div = (double)np;
            neg_div = (double)nsel;
        } else {
            pos_div = neg_div = (double)(np + nsel);
        }
        double lp = 0, ln = 0;
        for (int64_t j = 0; j < np; j++) {
            double x = z[s->pos[j]];
            float gv = (float)(-sigmoid(-x) / pos_div * sc);
            lp += softplus(-x);
            if (g) g[s->pos[j]] = gv;
            if (sid) { sid[j] = s->pos[j]; sval[j] = gv; }
        }
        for (int64_t j = 0; j < nsel; j++) {
            double x = z[s->hid[j]];
            float gv = (float)(sigmoid(x) / neg_div * sc);
            ln += softplus(x);
            if (g) g[s->hid[j]] = gv;
            if (sid) { sid[np + j] = s->hid[j]; sval[np + j] = gv; }
        }
        if (sid) {
            sort_pairs(sid, sval, np + nsel);
            *scount = np + nsel;
        }
        loss = (np ? lp / pos_div : 0) + (nsel ? ln / neg_div : 0);
        break;
    }
    case NTPM_VARIANT_BCE:
    case NTPM_VARIANT_INDIVIDUAL:
    case NTPM_VARIANT_BALANCED: {
        double wp, wn; /* loss = wp * sum_P softplus(-z) + wn * sum_C softplus(z) */
        if (a->variant == NTPM_VARIANT_BCE) {
            wp = wn = 1.0 / (double)nM;
        } else if (a->variant == NTPM_VARIANT_INDIVIDUAL) {
            wp = np ? 1.0 / (double)np : 0;
            wn = nC ? 1.0 / (double)nC : 0;
        } else { /* HED: beta = |C| / |M| weights the positives, 1 - beta the negatives */
            wp = (double)nC / (double)nM / (double)nM;
            wn = (double)np / (double)nM / (double)nM;
        }
        double lp = 0, ln = 0;
        for (int64_t j = 0; j < np; j++) {
            double x = z[s->pos[j]];
            lp += softplus(-x);
            if (g) g[s->pos[j]] = (float)(-sigmoid(-x) * wp * sc);
        }
        const float gwn = (float)(wn * sc);
#if NTPM_VEC
        if (row_path) {
            int64_t nan_at = row_neg_sigmoid(z, V, a->valid_mask, s->marks, g, gwn, &ln);
            if (nan_at >= 0) {
                err_record(err, i, "logits: NaN at token %lld, id %lld", (long long)i, (long long)nan_at);
                goto done;
            }
        }
#endif
        for (int64_t j = 0; j < nneg; j++) {
            sp_sig r = sp_sig_f(z[s->neg[j]]);
            ln += r.sp_pos;
            if (g) g[s->neg[j]] = r.sig_pos * gwn;
        }
        loss = wp * lp + wn * ln;
        break;
    }
    case NTPM_VARIANT_FOCAL: {
        /* FL = -alpha_t (1 - p_t)^gamma log p_t with p_t = sigmoid(s z), s = +1 for a
         * positive, -1 for a negative; dFL/dz = s alpha_t (gamma p_t q^gamma log p_t - q^(gamma+1)),
         * q = 1 - p_t = sigmoid(-s z) (no q^(gamma-1), so finite at q = 0). */
        const float gm = (float)a->gamma;
        const double inv = 1.0 / (double)nM;
        double sum = 0;
#if NTPM_VEC
        if (row_path) {
            float at = a->alpha < 0 ? 1.0f : (float)(1.0 - a->alpha);
            int64_t nan_at = row_neg_focal(z, V, a->valid_mask, s->marks, g, gm, at, (float)(inv * sc), &sum);
            if (nan_at >= 0) {
                err_record(err, i, "logits: NaN at token %lld, id %lld", (long long)i, (long long)nan_at);
                goto done;
            }
        }
#endif
        for (int64_t j = 0; j < np + nneg; j++) {
            int is_pos = j < np;
            int32_t v = is_pos ? s->pos[j] : s->neg[j - np];
            float sg = is_pos ? 1.0f : -1.0f;
            float at = a->alpha < 0 ? 1.0f : (float)(is_pos ? a->alpha : 1.0 - a->alpha);
            sp_sig r = sp_sig_f(sg * z[v]); /* of x = s z: p_t = sig_pos, q = sig_neg */
            float logp = -r.sp_neg, q = r.sig_neg, pt = r.sig_pos;
            float qg = powf(q, gm);
            sum += (double)(-at * qg * logp);
            float ptlog = pt > 0 ? pt * logp : 0.0f; /* p log p -> 0 as p -> 0 (z = +-inf) */
            if (g) g[v] = (float)((double)(sg * at * (gm * ptlog * qg - qg * q)) * inv * sc);
        }
        loss = sum * inv;
        break;
    }
    case NTPM_VARIANT_NTP_CE: {
        int64_t label = -1;
        if (a->labels) {
            label = a->labels[i];
            if (label >= 0) {
                int valid = per_token ? (s->marks[label] & MARK_VALID) : (!a->valid_mask || a->valid_mask[label]);
                if (!valid) {
                    err_record(err, i, "labels: label %lld of token %lld is not one of its valid ids",
                               (long long)label, (long long)i);
                    goto done;
                }
                if (z[label] != z[label]) {
                    err_record(err, i, "logits: NaN at token %lld, id %lld", (long long)i, (long long)label);
                    goto done;
                }
            }
        } else if (np > 0) {
            label = s->pos[0];
        }
        if (label < 0) goto done; /* no label: masked */
        /* one exp per id: e^(z - m) is summed and, with a gradient, parked in g and
         * scaled by 1 / sum afterwards */
        double m = -INFINITY, se = 0;
#if NTPM_VEC
        if (row_path) {
            int64_t nan_at = row_softmax(z, V, a->valid_mask, g, &m, &se);
            if (nan_at >= 0) {
                err_record(err, i, "logits: NaN at token %lld, id %lld", (long long)i, (long long)nan_at);
                goto done;
            }
        }
#endif
        if (!row_path) {
            for (int64_t j = 0; j < np; j++) m = fmax(m, z[s->pos[j]]);
            for (int64_t j = 0; j < nneg; j++) m = fmax(m, z[s->neg[j]]);
            for (int64_t j = 0; j < np + nneg; j++) {
                int32_t v = j < np ? s->pos[j] : s->neg[j - np];
                double e = exp((double)z[v] - m);
                se += e;
                if (g) g[v] = (float)e;
            }
        }
        double lse = m + log(se);
        loss = lse - (double)z[label];
        if (g) {
            const float f = (float)(sc / se);
#if NTPM_VEC
            if (row_path) row_scale(g, V, a->valid_mask, f);
#endif
            if (!row_path)
                for (int64_t j = 0; j < np + nneg; j++) {
                    int32_t v = j < np ? s->pos[j] : s->neg[j - np];
                    g[v] *= f;
                }
            /* p_label - 1 without cancellation */
            g[label] = (float)(expm1((double)z[label] - lse) * sc);
        }
        break;
    }
    default:
        break;
    }

done:
    for (int64_t j = 0; j < npl; j++) s->marks[pids[j]] = 0;
    for (int64_t j = 0; j < nv; j++) s->marks[vids[j]] = 0;
    return loss;
}

/* Sequential checks of sizes, offsets and ids; counts what the scratch needs. */
static dm_status validate(const ntpm_args *a, int need_logits, int64_t *mask_count, int64_t *max_pos) {
    if (a->L < 0 || a->V < 1 || a->V > INT32_MAX)
        return dm_fail(DM_ERR_VALUE, "ntpm: need L >= 0 and 1 <= V < 2^31, got L=%lld V=%lld",
                       (long long)a->L, (long long)a->V);
    if (need_logits && (a->logits == NULL) == (a->logits_bf16 == NULL))
        return dm_fail(DM_ERR_VALUE, "ntpm: give exactly one of f32 or bf16 logits");
    if ((unsigned)a->variant >= NTPM_VARIANT_COUNT)
        return dm_fail(DM_ERR_VALUE, "ntpm: unknown variant %d", (int)a->variant);
    if (a->reduction != NTPM_REDUCE_SUM && a->reduction != NTPM_REDUCE_MEAN && a->reduction != NTPM_REDUCE_NONE)
        return dm_fail(DM_ERR_VALUE, "ntpm: unknown reduction %d", (int)a->reduction);
    if (a->k < 0) return dm_fail(DM_ERR_VALUE, "ntpm: k must be >= 0, got %lld", (long long)a->k);
    if (!(a->gamma >= 0) || isinf(a->gamma))
        return dm_fail(DM_ERR_VALUE, "ntpm: gamma must be finite and >= 0, got %g", a->gamma);
    if (!(a->alpha <= 1) || isnan(a->alpha))
        return dm_fail(DM_ERR_VALUE, "ntpm: alpha must be <= 1 (negative disables it), got %g", a->alpha);
    if (!(a->ohem_ratio > 0) || isinf(a->ohem_ratio))
        return dm_fail(DM_ERR_VALUE, "ntpm: ohem_ratio must be finite and > 0, got %g", a->ohem_ratio);
    if (a->valid_mask && a->valid_offsets)
        return dm_fail(DM_ERR_VALUE, "ntpm: give a shared valid mask or per-token valid sets, not both");
    const int64_t n_sets = a->valid_set || a->n_sets ? a->n_sets : a->L;
    if (a->valid_offsets && n_sets < 0)
        return dm_fail(DM_ERR_VALUE, "ntpm: n_sets must be >= 0, got %lld", (long long)n_sets);
    if (a->valid_set) {
        if (!a->valid_offsets) return dm_fail(DM_ERR_VALUE, "ntpm: valid_set needs valid sets");
        for (int64_t i = 0; i < a->L; i++)
            if (a->valid_set[i] < 0 || a->valid_set[i] >= n_sets)
                return dm_fail(DM_ERR_VALUE, "ntpm: valid set %lld of token %lld is out of range [0, %lld)",
                               (long long)a->valid_set[i], (long long)i, (long long)n_sets);
    } else if (a->valid_offsets && n_sets != a->L) {
        return dm_fail(DM_ERR_VALUE, "ntpm: %lld valid sets for %lld tokens need a token -> set map",
                       (long long)n_sets, (long long)a->L);
    }

    const struct { const char *name; const int64_t *off, *ids; int64_t n, rows; } lists[2] = {
        {"positives", a->pos_offsets, a->pos_ids, a->n_pos, a->L},
        {"valid", a->valid_offsets, a->valid_ids, a->n_valid, n_sets},
    };
    *max_pos = 0;
    for (int l = 0; l < 2; l++) {
        const int64_t *off = lists[l].off;
        if (!off) {
            if (l == 0) return dm_fail(DM_ERR_VALUE, "ntpm: positives are required");
            continue;
        }
        if (lists[l].n < 0 || (lists[l].n > 0 && !lists[l].ids))
            return dm_fail(DM_ERR_VALUE, "ntpm: %s: bad id array", lists[l].name);
        const int64_t rows = lists[l].rows;
        if (off[0] != 0 || off[rows] != lists[l].n)
            return dm_fail(DM_ERR_VALUE, "ntpm: %s offsets must start at 0 and end at %lld (the number of ids), got %lld..%lld",
                           lists[l].name, (long long)lists[l].n, (long long)off[0], (long long)off[rows]);
        for (int64_t i = 0; i < rows; i++) {
            if (off[i + 1] < off[i])
                return dm_fail(DM_ERR_VALUE, "ntpm: %s offsets decrease at token %lld", lists[l].name, (long long)i);
            if (l == 0 && off[i + 1] - off[i] > *max_pos) *max_pos = off[i + 1] - off[i];
        }
        for (int64_t j = 0; j < lists[l].n; j++) {
            int64_t v = lists[l].ids[j];
            if (v < 0 || v >= a->V) {
                int64_t tok = 0;
                while (off[tok + 1] <= j) tok++;
                return dm_fail(DM_ERR_VALUE, "ntpm: %s id %lld of %s %lld is out of range [0, %lld)",
                               lists[l].name, (long long)v, l == 1 && a->valid_set ? "set" : "token",
                               (long long)tok, (long long)a->V);
            }
        }
    }
    if (a->labels && a->variant == NTPM_VARIANT_NTP_CE)
        for (int64_t i = 0; i < a->L; i++)
            if (a->labels[i] < -1 || a->labels[i] >= a->V)
                return dm_fail(DM_ERR_VALUE, "ntpm: label %lld of token %lld is out of range [0, %lld) (or -1 to ignore)",
                               (long long)a->labels[i], (long long)i, (long long)a->V);
    *mask_count = 0;
    if (a->valid_mask)
        for (int64_t v = 0; v < a->V; v++) *mask_count += a->valid_mask[v] != 0;
    return DM_OK;
}

/* Whether token i is active (not masked); `marks` is a zeroed [V] scratch. */
static int token_active(const ntpm_args *a, int64_t mask_count, int64_t i, uint8_t *marks) {
    const int per_token = a->valid_offsets != NULL;
    const int64_t set = a->valid_set ? a->valid_set[i] : i;
    int64_t nv = per_token ? a->valid_offsets[set + 1] - a->valid_offsets[set] : 0;
    if (per_token ? nv == 0 : (a->valid_mask && mask_count == 0)) return 0;
    if (a->variant != NTPM_VARIANT_NTP_CE) return 1;
    if (a->labels) return a->labels[i] >= 0;
    /* ntp_ce without labels: active iff some positive is valid */
    const int64_t *p = a->pos_ids + a->pos_offsets[i];
    int64_t npl = a->pos_offsets[i + 1] - a->pos_offsets[i];
    int found = 0;
    if (!per_token) {
        for (int64_t j = 0; j < npl && !found; j++) found = !a->valid_mask || a->valid_mask[p[j]];
        return found;
    }
    const int64_t *vids = a->valid_ids + a->valid_offsets[set];
    for (int64_t j = 0; j < nv; j++) marks[vids[j]] = 1;
    for (int64_t j = 0; j < npl && !found; j++) found = marks[p[j]];
    for (int64_t j = 0; j < nv; j++) marks[vids[j]] = 0;
    return found;
}

/* Heap capacity: the most negatives any token can keep. */
static int64_t heap_capacity(const ntpm_args *a, int64_t max_pos) {
    if (a->variant == NTPM_VARIANT_NTPM) return a->k < a->V ? a->k : a->V;
    if (a->variant == NTPM_VARIANT_OHEM) {
        double want = ceil(a->ohem_ratio * (double)(max_pos > 0 ? max_pos : 1));
        return want < (double)a->V ? (int64_t)want : a->V;
    }
    return 0;
}

dm_status ntpm_count_active(const ntpm_args *a, int64_t *n_active) {
    int64_t mask_count = 0, max_pos = 0;
    DM_TRY(validate(a, 0, &mask_count, &max_pos));
    uint8_t *marks = NULL;
    if (a->variant == NTPM_VARIANT_NTP_CE && !a->labels && a->valid_offsets &&
        !(marks = dm_calloc((size_t)a->V, 1, "ntpm marks")))
        return DM_ERR_NOMEM;
    int64_t active = 0;
    for (int64_t i = 0; i < a->L; i++) active += token_active(a, mask_count, i, marks);
    dm_free(marks);
    *n_active = active;
    return DM_OK;
}

dm_status ntpm_sparse_stride(const ntpm_args *a, int64_t *stride) {
    int64_t mask_count = 0, max_pos = 0;
    DM_TRY(validate(a, 0, &mask_count, &max_pos));
    if (a->variant != NTPM_VARIANT_NTPM && a->variant != NTPM_VARIANT_OHEM)
        return dm_fail(DM_ERR_VALUE, "ntpm: a sparse gradient is only available for variants ntpm and ohem");
    int64_t st = max_pos + heap_capacity(a, max_pos);
    *stride = st < a->V ? st : a->V;
    return DM_OK;
}

dm_status ntpm_forward_backward(const ntpm_args *a, double *loss, float *token_loss, float *grad,
                                int grad_zeroed, const ntpm_sparse_grad *sparse, int64_t *n_active) {
    int64_t mask_count = 0, max_pos = 0;
    DM_TRY(validate(a, 1, &mask_count, &max_pos));
    const int64_t L = a->L, V = a->V;
    if (sparse) {
        int64_t need = 0;
        DM_TRY(ntpm_sparse_stride(a, &need));
        if (sparse->stride < need || !sparse->ids || !sparse->vals || !sparse->count)
            return dm_fail(DM_ERR_VALUE, "ntpm: sparse gradient needs a stride of at least %lld, got %lld",
                           (long long)need, (long long)sparse->stride);
    }
    dm_threads_enter();
    int nt = a->threads > 0 ? a->threads : dm_get_num_threads();
    if (nt > L) nt = L > 0 ? (int)L : 1;

    int64_t cap = heap_capacity(a, max_pos);
    const int needs_list = a->valid_offsets || (a->variant != NTPM_VARIANT_NTPM && a->variant != NTPM_VARIANT_OHEM);
    /* (the vector row path of bce/individual/balanced/focal needs no list; allocating
     * it anyway keeps one rule) */

    dm_status st = DM_OK;
    double *tl = NULL;
    scratch *sc = dm_calloc((size_t)nt, sizeof(scratch), "ntpm scratch");
    if (!sc) return DM_ERR_NOMEM;
    tl = dm_alloc((size_t)(L > 0 ? L : 1), sizeof(double), "ntpm token losses");
    if (!tl) { st = DM_ERR_NOMEM; goto out; }
    for (int t = 0; t < nt; t++) {
        scratch *s = &sc[t];
        s->marks = dm_calloc((size_t)V, 1, "ntpm marks");
        s->pos = dm_alloc((size_t)(max_pos > 0 ? max_pos : 1), sizeof(int32_t), "ntpm positives");
        s->hz = dm_alloc((size_t)(cap > 0 ? cap : 1), sizeof(float), "ntpm heap");
        s->hid = dm_alloc((size_t)(cap > 0 ? cap : 1), sizeof(int32_t), "ntpm heap");
        if (!s->marks || !s->pos || !s->hz || !s->hid) { st = DM_ERR_NOMEM; goto out; }
        if (a->logits_bf16 && !(s->row = dm_alloc((size_t)V, sizeof(float), "ntpm bf16 row"))) { st = DM_ERR_NOMEM; goto out; }
        if (needs_list && !(s->neg = dm_alloc((size_t)V, sizeof(int32_t), "ntpm negatives"))) { st = DM_ERR_NOMEM; goto out; }
    }

    int64_t active = 0;
    for (int64_t i = 0; i < L; i++) active += token_active(a, mask_count, i, sc[0].marks);
    ctx c = {a, mask_count, 1.0};
    if (a->reduction == NTPM_REDUCE_MEAN && active > 0) c.scale = 1.0 / (double)active;

    errbox err = {0};
    err.token = -1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i = 0; i < L; i++) {
        scratch *s = &sc[omp_get_thread_num()];
        tl[i] = 0;
        if (sparse) sparse->count[i] = 0;
        float *g = grad ? grad + i * V : NULL;
        if (g && !grad_zeroed) zero_row(g, V);
        if (atomic_load(&err.failed)) continue;
        const float *z = a->logits ? a->logits + i * V : s->row;
        if (!a->logits) dm_bf16_to_f32_n(s->row, a->logits_bf16 + i * V, (size_t)V);
        tl[i] = token_loss_grad(&c, s, i, z, g, sparse ? sparse->ids + i * sparse->stride : NULL,
                                sparse ? sparse->vals + i * sparse->stride : NULL,
                                sparse ? sparse->count + i : NULL, &err);
    }
    if (atomic_load(&err.failed)) {
        st = dm_fail(DM_ERR_VALUE, "ntpm: %s", err.msg);
        goto out;
    }
    double total = 0;
    for (int64_t i = 0; i < L; i++) total += tl[i];
    if (a->reduction == NTPM_REDUCE_MEAN) total = active > 0 ? total / (double)active : 0.0;
    if (loss) *loss = total;
    if (token_loss)
        for (int64_t i = 0; i < L; i++) token_loss[i] = (float)tl[i];
    if (n_active) *n_active = active;

out:
    for (int t = 0; t < nt; t++) {
        dm_free(sc[t].marks);
        dm_free(sc[t].row);
        dm_free(sc[t].neg);
        dm_free(sc[t].pos);
        dm_free(sc[t].hz);
        dm_free(sc[t].hid);
    }
    dm_free(sc);
    dm_free(tl);
    return st;
}
