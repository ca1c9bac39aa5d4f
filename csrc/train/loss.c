/* Loss heads fused with the LM head (contract: train/loss.h; docs/training.md,
 * "Loss heads"). Design notes:
 * - The logits of a chunk of rows come from the inference matmul (dm_matmul, any
 *   weight dtype). The backward products dH += G W and dW += G^T h are f32 sgemm
 *   (OpenBLAS) with the loss scale folded into alpha; a non-f32 W is widened a
 *   bounded panel at a time, as the OpenBLAS forward does.
 * - Cross-entropy keeps whole rows when DM_HEAD_MIN_ROWS of them fit the budget
 *   (one pass: logits -> softmax - onehot in place -> two products); otherwise it
 *   streams the vocabulary twice (online logsumexp, then the gradient chunk by chunk).
 * - NTP-M reuses the kernel of train/ntpm.c on each chunk. ntpm / ohem take their
 *   gradient in sparse form (|P| + k entries per token), so dH and dW touch only
 *   those head rows. With valid id sets, a chunk's logits are computed over the
 *   sorted union of its tokens' sets only (the head rows are gathered), ids
 *   remapped to that compact space; sorting keeps the kernel's lower-id tie-break.
 * - Everything is summed in a fixed order (rows, then chunks), so results do not
 *   depend on the thread count. */
#include "train/loss.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/dtype.h"
#include "core/threads.h"
#include "ops/vmath.h"

#define PANEL_BYTES ((int64_t)8 << 20) /* widened non-f32 weight rows per product */

/* Scratch with its size counted into the call's workspace figure. */
typedef struct {
    int64_t now, peak;
} ws_count;

static void *ws_alloc(ws_count *c, int64_t n, size_t size, const char *what) {
    void *p = dm_alloc((size_t)(n > 0 ? n : 1), size, what);
    if (p) {
        c->now += (n > 0 ? n : 1) * (int64_t)size;
        if (c->now > c->peak) c->peak = c->now;
    }
    return p;
}

static dm_status check_head(const dm_head *hd, int64_t *V) {
    if (!hd || !hd->w) return dm_fail(DM_ERR_VALUE, "head: missing arguments");
    const dm_tensor *w = hd->w;
    if (w->ndim != 2) return dm_fail(DM_ERR_VALUE, "head: weight must be 2-D [V, H], got %d-D", w->ndim);
    if (w->dtype != DM_F32 && w->dtype != DM_BF16 && w->dtype != DM_F16)
        return dm_fail(DM_ERR_TYPE, "head: weight dtype %s is not a float type", dm_dtype_name(w->dtype));
    if (hd->T < 0 || hd->H < 1 || hd->H > INT_MAX)
        return dm_fail(DM_ERR_VALUE, "head: need T >= 0 and 1 <= H < 2^31, got T=%lld H=%lld",
                       (long long)hd->T, (long long)hd->H);
    if (w->shape[1] != hd->H)
        return dm_fail(DM_ERR_VALUE, "head: weight is [%lld, %lld] but the hidden size is %lld",
                       (long long)w->shape[0], (long long)w->shape[1], (long long)hd->H);
    if (w->shape[0] < 1 || w->shape[0] > INT32_MAX)
        return dm_fail(DM_ERR_VALUE, "head: vocabulary size %lld outside [1, 2^31)", (long long)w->shape[0]);
    if (hd->T > 0 && !hd->h) return dm_fail(DM_ERR_VALUE, "head: hidden states missing");
    if (!w->data) return dm_fail(DM_ERR_VALUE, "head: weight data missing");
    *V = w->shape[0];
    return DM_OK;
}

static int64_t budget_of(const dm_head *hd) { return hd->chunk_bytes > 0 ? hd->chunk_bytes : DM_HEAD_CHUNK_BYTES; }

/* A view of rows [v0, v0 + n) of a 2-D weight. */
static dm_tensor rows_view(const dm_tensor *w, int64_t v0, int64_t n) {
    dm_tensor t = *w;
    t.data = (const char *)w->data + (size_t)v0 * (size_t)w->shape[1] * dm_dtype_size(w->dtype);
    t.shape[0] = n;
    return t;
}

/* dhc[tc, H] += alpha * G[tc, n] (row stride ldg) . W[v0 : v0 + n, :] */
static dm_status gw_acc(float *dhc, const float *G, int64_t ldg, int64_t tc, const dm_tensor *w, int64_t v0,
                        int64_t n, float alpha, ws_count *ws) {
    const int64_t H = w->shape[1];
    if (tc == 0 || n == 0) return DM_OK;
    if (w->dtype == DM_F32) {
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)tc, (int)H, (int)n, alpha, G, (int)ldg,
                          (const float *)w->data + v0 * H, (int)H, 1.0f, dhc, (int)H);
        return DM_OK;
    }
    int64_t prow = PANEL_BYTES / (int64_t)sizeof(float) / H;
    if (prow < 16) prow = 16;
    if (prow > n) prow = n;
    float *panel = ws_alloc(ws, prow * H, sizeof(float), "head weight panel");
    if (!panel) return DM_ERR_NOMEM;
    const size_t esz = dm_dtype_size(w->dtype);
    for (int64_t p0 = 0; p0 < n; p0 += prow) {
        int64_t pn = n - p0 < prow ? n - p0 : prow;
        const char *src = (const char *)w->data + (size_t)(v0 + p0) * (size_t)H * esz;
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < pn; r++) dm_to_f32_n(panel + r * H, src + (size_t)r * (size_t)H * esz, w->dtype, (size_t)H);
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)tc, (int)H, (int)pn, alpha, G + p0,
                          (int)ldg, panel, (int)H, 1.0f, dhc, (int)H);
    }
    dm_free(panel);
    ws->now -= prow * H * (int64_t)sizeof(float);
    return DM_OK;
}

/* dw[n, H] += alpha * G[tc, n]^T (row stride ldg) . hc[tc, H] */
static void gth_acc(float *dw, const float *G, int64_t ldg, int64_t tc, int64_t n, const float *hc, int64_t H,
                    float alpha, float beta) {
    if (tc == 0 || n == 0) return;
    scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)H, (int)tc, alpha, G, (int)ldg, hc,
                      (int)H, beta, dw, (int)H);
}

static void gather_rows(float *dst, const float *h, const int64_t *rows, int64_t i0, int64_t n, int64_t H) {
#pragma omp parallel for schedule(static) if (n * H > 65536)
    for (int64_t j = 0; j < n; j++) {
        int64_t r = rows ? rows[i0 + j] : i0 + j;
        memcpy(dst + j * H, h + r * H, (size_t)H * sizeof(float));
    }
}

/* dh[row] += dhc[j] for the chunk's rows, in order (rows may repeat). */
static void scatter_add_rows(float *dh, const float *dhc, const int64_t *rows, int64_t i0, int64_t n, int64_t H) {
    for (int64_t j = 0; j < n; j++) {
        float *d = dh + (rows ? rows[i0 + j] : i0 + j) * H;
        const float *s = dhc + j * H;
        for (int64_t c = 0; c < H; c++) d[c] += s[c];
    }
}

/* Max of z[0..n) and whether all entries are finite. */
static int row_max_finite(const float *z, int64_t n, float *max) {
    float m = -INFINITY;
    int ok = 1;
    for (int64_t v = 0; v < n; v++) {
        float x = z[v];
        ok &= isfinite(x) != 0;
        m = x > m ? x : m;
    }
    *max = m;
    return ok;
}

/* sum_v e^(z[v] - m) in double; with store, z[v] := e^(z[v] - m) * f (f32). */
static double row_sumexp(float *z, int64_t n, float m, int store, float f) {
    double acc = 0;
    int64_t v = 0;
#if defined(__AVX512F__)
    const __m512 mv = _mm512_set1_ps(m), fv = _mm512_set1_ps(f);
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (; v + 16 <= n; v += 16) {
        __m512 e = dm_exp16(_mm512_sub_ps(_mm512_loadu_ps(z + v), mv));
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(e), 1))));
        if (store) _mm512_storeu_ps(z + v, _mm512_mul_ps(e, fv));
    }
    acc = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#endif
    for (; v < n; v++) {
        float e = expf(z[v] - m);
        acc += e;
        if (store) z[v] = e * f;
    }
    return acc;
}

/* ------------------------------------------------------------------------ */
/* (a) cross-entropy                                                        */

dm_status dm_head_ce(const dm_head *hd, const int64_t *targets, int64_t ignore_index, double weight,
                     double denom_in, double *loss, int64_t *n_counted, int64_t *workspace_bytes) {
    int64_t V;
    DM_TRY(check_head(hd, &V));
    const int64_t T = hd->T, H = hd->H;
    if (T > 0 && !targets) return dm_fail(DM_ERR_VALUE, "head ce: targets missing");
    if (!isfinite(weight)) return dm_fail(DM_ERR_VALUE, "head ce: weight must be finite, got %g", weight);
    if (!isfinite(denom_in)) return dm_fail(DM_ERR_VALUE, "head ce: denom must be finite, got %g", denom_in);
    int64_t n = 0;
    for (int64_t t = 0; t < T; t++) {
        if (targets[t] == ignore_index) continue;
        if (targets[t] < 0 || targets[t] >= V)
            return dm_fail(DM_ERR_VALUE,
                           "head ce: target %lld of row %lld is out of range [0, %lld) (ignore_index is %lld)",
                           (long long)targets[t], (long long)t, (long long)V, (long long)ignore_index);
        n++;
    }
    if (loss) *loss = 0;
    if (n_counted) *n_counted = n;
    if (workspace_bytes) *workspace_bytes = 0;
    if (n == 0) return DM_OK;
    dm_threads_enter();
    const double denom = denom_in > 0 ? denom_in : (double)n;
    const float alpha = (float)(weight / denom);
    const int want_grad = hd->dh || hd->dw;

    /* Chunk shape: whole rows when DM_HEAD_MIN_ROWS fit; else DM_HEAD_MIN_ROWS rows
     * and as many vocabulary columns as fit. h / dh rows of the chunk count too. */
    const int64_t budget = budget_of(hd);
    int64_t Tc, Vc;
    int64_t fit = budget / (V * 4 + 8 * H);
    if (fit >= DM_HEAD_MIN_ROWS) {
        Tc = fit;
        Vc = V;
    } else {
        Tc = DM_HEAD_MIN_ROWS;
        Vc = (budget - Tc * 8 * H) / (Tc * 4);
        if (Vc < 16) Vc = 16;
        if (Vc > V) Vc = V;
    }
    if (Tc > n) Tc = n;

    ws_count ws = {0, 0};
    dm_status st = DM_OK;
    int64_t *idx = ws_alloc(&ws, n, sizeof(int64_t), "head ce rows");
    float *z = ws_alloc(&ws, Tc * Vc, sizeof(float), "head ce logits");
    float *hc = ws_alloc(&ws, Tc * H, sizeof(float), "head ce hidden chunk");
    float *dhc = ws_alloc(&ws, Tc * H, sizeof(float), "head ce dh chunk");
    double *rl = ws_alloc(&ws, Tc, sizeof(double), "head ce row losses");
    float *rm = ws_alloc(&ws, Tc, sizeof(float), "head ce row max");
    double *rs = ws_alloc(&ws, Tc, sizeof(double), "head ce row sums");
    float *rt = ws_alloc(&ws, Tc, sizeof(float), "head ce target logits");
    if (!idx || !z || !hc || !dhc || !rl || !rm || !rs || !rt) {
        st = DM_ERR_NOMEM;
        goto out;
    }
    n = 0;
    for (int64_t t = 0; t < T; t++)
        if (targets[t] != ignore_index) idx[n++] = t;

    double total = 0;
    for (int64_t c0 = 0; c0 < n; c0 += Tc) {
        const int64_t tc = n - c0 < Tc ? n - c0 : Tc;
        gather_rows(hc, hd->h, idx, c0, tc, H);
        int bad = 0;
        if (Vc == V) {
            if ((st = dm_matmul(hd->backend, z, hc, hd->w, NULL, tc, 0)) != DM_OK) goto out;
#pragma omp parallel for schedule(static) reduction(| : bad)
            for (int64_t j = 0; j < tc; j++) {
                float *zr = z + j * V;
                const int64_t tg = targets[idx[c0 + j]];
                float m;
                if (!row_max_finite(zr, V, &m)) { bad |= 1; rl[j] = 0; continue; }
                const float zt = zr[tg];
                double se = row_sumexp(zr, V, m, 0, 0);
                double lse = (double)m + log(se);
                rl[j] = lse - (double)zt;
                if (want_grad) {
                    /* softmax in place, then the target entry as p - 1 without cancellation */
                    row_sumexp(zr, V, (float)lse, 1, 1.0f);
                    zr[tg] = (float)expm1((double)zt - lse);
                }
            }
            if (bad) { st = dm_fail(DM_ERR_VALUE, "head ce: non-finite logits in rows %lld..%lld", (long long)idx[c0], (long long)idx[c0 + tc - 1]); goto out; }
            if (want_grad) {
                if (hd->dh) {
                    memset(dhc, 0, (size_t)(tc * H) * sizeof(float));
                    if ((st = gw_acc(dhc, z, V, tc, hd->w, 0, V, alpha, &ws)) != DM_OK) goto out;
                    scatter_add_rows(hd->dh, dhc, idx, c0, tc, H);
                }
                if (hd->dw) gth_acc(hd->dw, z, V, tc, V, hc, H, alpha, 1.0f);
            }
        } else {
            /* pass 1: online logsumexp over vocabulary chunks */
            for (int64_t j = 0; j < tc; j++) { rm[j] = -INFINITY; rs[j] = 0; }
            for (int64_t v0 = 0; v0 < V; v0 += Vc) {
                const int64_t vn = V - v0 < Vc ? V - v0 : Vc;
                dm_tensor wv = rows_view(hd->w, v0, vn);
                if ((st = dm_matmul(hd->backend, z, hc, &wv, NULL, tc, 0)) != DM_OK) goto out;
#pragma omp parallel for schedule(static) reduction(| : bad)
                for (int64_t j = 0; j < tc; j++) {
                    float *zr = z + j * vn;
                    const int64_t tg = targets[idx[c0 + j]];
                    float m;
                    if (!row_max_finite(zr, vn, &m)) { bad |= 1; continue; }
                    if (tg >= v0 && tg < v0 + vn) rt[j] = zr[tg - v0];
                    float mm = m > rm[j] ? m : rm[j];
                    rs[j] = rs[j] * exp((double)rm[j] - mm) + row_sumexp(zr, vn, mm, 0, 0);
                    rm[j] = mm;
                }
                if (bad) { st = dm_fail(DM_ERR_VALUE, "head ce: non-finite logits in rows %lld..%lld", (long long)idx[c0], (long long)idx[c0 + tc - 1]); goto out; }
            }
            for (int64_t j = 0; j < tc; j++) {
                double lse = (double)rm[j] + log(rs[j]);
                rl[j] = lse - (double)rt[j];
                rs[j] = lse; /* keep the logsumexp for pass 2 */
            }
            /* pass 2: recompute each chunk's logits, push the gradient through it */
            if (want_grad) {
                if (hd->dh) memset(dhc, 0, (size_t)(tc * H) * sizeof(float));
                for (int64_t v0 = 0; v0 < V; v0 += Vc) {
                    const int64_t vn = V - v0 < Vc ? V - v0 : Vc;
                    dm_tensor wv = rows_view(hd->w, v0, vn);
                    if ((st = dm_matmul(hd->backend, z, hc, &wv, NULL, tc, 0)) != DM_OK) goto out;
#pragma omp parallel for schedule(static)
                    for (int64_t j = 0; j < tc; j++) {
                        float *zr = z + j * vn;
                        const int64_t tg = targets[idx[c0 + j]];
                        row_sumexp(zr, vn, (float)rs[j], 1, 1.0f);
                        if (tg >= v0 && tg < v0 + vn) zr[tg - v0] = (float)expm1((double)rt[j] - rs[j]);
                    }
                    if (hd->dh && (st = gw_acc(dhc, z, vn, tc, hd->w, v0, vn, alpha, &ws)) != DM_OK) goto out;
                    if (hd->dw) gth_acc(hd->dw + v0 * H, z, vn, tc, vn, hc, H, alpha, 1.0f);
                }
                if (hd->dh) scatter_add_rows(hd->dh, dhc, idx, c0, tc, H);
            }
        }
        for (int64_t j = 0; j < tc; j++) total += rl[j];
    }
    if (loss) *loss = weight * total / denom;
out:
    if (workspace_bytes) *workspace_bytes = ws.peak;
    dm_free(idx);
    dm_free(z);
    dm_free(hc);
    dm_free(dhc);
    dm_free(rl);
    dm_free(rm);
    dm_free(rs);
    dm_free(rt);
    return st;
}

/* ------------------------------------------------------------------------ */
/* (b) NTP-M                                                                */

typedef struct {
    int32_t id;   /* head row (full vocabulary id) */
    int32_t tok;  /* row of the chunk */
    float val;
} grad_entry;

static int cmp_entry(const void *pa, const void *pb) {
    const grad_entry *a = pa, *b = pb;
    if (a->id != b->id) return a->id < b->id ? -1 : 1;
    return (a->tok > b->tok) - (a->tok < b->tok);
}

static int cmp_i32(const void *pa, const void *pb) {
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return (a > b) - (a < b);
}

/* Sparse chunk gradient -> dhc (rows of the chunk) and dw. `wrows` gives the head
 * row of a kernel id (NULL: identity), wf the f32 weight rows in the kernel's id
 * space when gathered (NULL: read w). */
static dm_status sparse_apply(const dm_head *hd, const ntpm_sparse_grad *sg, int64_t tc, const float *hc,
                              float *dhc, const int32_t *wrows, const float *wf, float alpha, grad_entry *ent,
                              float *rowbuf, int nt) {
    const int64_t H = hd->H;
    const dm_tensor *w = hd->w;
    if (dhc) {
        memset(dhc, 0, (size_t)(tc * H) * sizeof(float));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t j = 0; j < tc; j++) {
            float *d = dhc + j * H;
            float *buf = rowbuf + (int64_t)omp_get_thread_num() * H;
            for (int64_t e = 0; e < sg->count[j]; e++) {
                int32_t id = sg->ids[j * sg->stride + e];
                float g = sg->vals[j * sg->stride + e] * alpha;
                const float *wr;
                if (wf) wr = wf + (int64_t)id * H;
                else if (w->dtype == DM_F32) wr = (const float *)w->data + (int64_t)id * H;
                else {
                    dm_tensor_row_f32(w, id, buf);
                    wr = buf;
                }
                for (int64_t c = 0; c < H; c++) d[c] += g * wr[c];
            }
        }
    }
    if (hd->dw) {
        int64_t ne = 0;
        for (int64_t j = 0; j < tc; j++)
            for (int64_t e = 0; e < sg->count[j]; e++) {
                int32_t id = sg->ids[j * sg->stride + e];
                ent[ne].id = wrows ? wrows[id] : id;
                ent[ne].tok = (int32_t)j;
                ent[ne].val = sg->vals[j * sg->stride + e] * alpha;
                ne++;
            }
        qsort(ent, (size_t)ne, sizeof *ent, cmp_entry);
        /* runs of one id: parallel over runs, in-run order fixed */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
        for (int64_t e = 0; e < ne; e++) {
            if (e > 0 && ent[e - 1].id == ent[e].id) continue;
            float *d = hd->dw + (int64_t)ent[e].id * H;
            for (int64_t f = e; f < ne && ent[f].id == ent[e].id; f++) {
                const float *x = hc + (int64_t)ent[f].tok * H;
                const float g = ent[f].val;
                for (int64_t c = 0; c < H; c++) d[c] += g * x[c];
            }
        }
    }
    return DM_OK;
}

dm_status dm_head_ntpm(const dm_head *hd, const dm_head_ntpm_args *a, double weight, double denom_in,
                       double *loss, int64_t *n_active, int64_t *workspace_bytes) {
    int64_t V;
    DM_TRY(check_head(hd, &V));
    if (!a) return dm_fail(DM_ERR_VALUE, "head ntpm: missing arguments");
    const int64_t L = a->L, H = hd->H;
    if (L < 0) return dm_fail(DM_ERR_VALUE, "head ntpm: L must be >= 0, got %lld", (long long)L);
    if (!isfinite(weight)) return dm_fail(DM_ERR_VALUE, "head ntpm: weight must be finite, got %g", weight);
    if (!isfinite(denom_in)) return dm_fail(DM_ERR_VALUE, "head ntpm: denom must be finite, got %g", denom_in);
    if (a->rows)
        for (int64_t i = 0; i < L; i++)
            if (a->rows[i] < 0 || a->rows[i] >= hd->T)
                return dm_fail(DM_ERR_VALUE, "head ntpm: row %lld of vision token %lld is out of range [0, %lld)",
                               (long long)a->rows[i], (long long)i, (long long)hd->T);
    if (!a->rows && L > hd->T)
        return dm_fail(DM_ERR_VALUE, "head ntpm: %lld vision tokens but only %lld rows of h", (long long)L,
                       (long long)hd->T);
    if (a->n_sets < 0) return dm_fail(DM_ERR_VALUE, "head ntpm: n_sets must be >= 0, got %lld", (long long)a->n_sets);
    const int has_sets = a->n_sets > 0;
    if (!has_sets && (a->valid_offsets || a->token_set))
        return dm_fail(DM_ERR_VALUE, "head ntpm: valid sets given with n_sets = 0");
    if (has_sets && !a->token_set && a->n_sets != L)
        return dm_fail(DM_ERR_VALUE, "head ntpm: %lld valid sets for %lld tokens need token_set", (long long)a->n_sets,
                       (long long)L);

    /* The whole problem in the full vocabulary's ids: validates everything before
     * any gradient is touched, and counts the active tokens for the mean. */
    ntpm_args fa;
    memset(&fa, 0, sizeof fa);
    fa.L = L;
    fa.V = V;
    fa.pos_offsets = a->pos_offsets;
    fa.pos_ids = a->pos_ids;
    fa.n_pos = a->n_pos;
    if (has_sets) {
        fa.valid_offsets = a->valid_offsets;
        fa.valid_ids = a->valid_ids;
        fa.n_valid = a->n_valid;
        fa.valid_set = a->token_set;
        fa.n_sets = a->n_sets;
    }
    fa.labels = a->labels;
    fa.k = a->k;
    fa.gamma = a->gamma;
    fa.alpha = a->alpha;
    fa.ohem_ratio = a->ohem_ratio;
    fa.variant = a->variant;
    fa.reduction = NTPM_REDUCE_SUM;
    fa.threads = hd->threads;
    int64_t active = 0;
    DM_TRY(ntpm_count_active(&fa, &active));
    if (loss) *loss = 0;
    if (n_active) *n_active = active;
    if (workspace_bytes) *workspace_bytes = 0;
    if (active == 0 || L == 0) return DM_OK;
    const double denom = denom_in == 0 ? (double)active : denom_in < 0 ? 1.0 : denom_in;
    const float alpha = (float)(weight / denom);
    const int sparse = a->variant == NTPM_VARIANT_NTPM || a->variant == NTPM_VARIANT_OHEM;
    const int want_grad = hd->dh || hd->dw;
    const int64_t bpl = sparse || !want_grad ? 4 : 8; /* logits (+ dense gradient) bytes per entry */
    dm_threads_enter();
    const int nt = hd->threads > 0 ? hd->threads : dm_get_num_threads();

    int64_t stride = 0;
    if (sparse && want_grad) DM_TRY(ntpm_sparse_stride(&fa, &stride));

    const int64_t budget = budget_of(hd);
    int64_t Tfull = budget / (V * bpl + 8 * H);
    if (Tfull < DM_HEAD_MIN_ROWS) Tfull = DM_HEAD_MIN_ROWS;
    if (Tfull > L) Tfull = L;
    /* The most rows a chunk can have (compact chunks can be longer than full ones). */
    int64_t Tmax = has_sets ? L : Tfull;

    ws_count ws = {0, 0};
    dm_status st = DM_OK;
    /* Kernel scratch (train/ntpm.c): per thread [V] marks + [V] negatives list (+ bf16 row). */
    const int64_t kernel_ws = (int64_t)nt * V * (1 + 4) + L * 8;
    float *z = NULL, *G = NULL, *hc = NULL, *dhc = NULL, *wf = NULL, *rowbuf = NULL, *sv = NULL;
    int32_t *si = NULL, *map = NULL, *uni = NULL;
    int64_t *sc = NULL, *loc_off = NULL, *loc_ids = NULL, *loc_set = NULL, *loc_lab = NULL, *set_loc = NULL,
            *loc_voff = NULL, *loc_vids = NULL;
    grad_entry *ent = NULL;
    int64_t zcap = 0, wcap = 0, vcap = 0, hcap = 0;

    if (!(loc_off = ws_alloc(&ws, Tmax + 1, sizeof(int64_t), "head ntpm offsets")) ||
        !(loc_set = ws_alloc(&ws, Tmax, sizeof(int64_t), "head ntpm sets")) ||
        (a->labels && !(loc_lab = ws_alloc(&ws, Tmax, sizeof(int64_t), "head ntpm labels"))) ||
        !(rowbuf = ws_alloc(&ws, (int64_t)nt * H, sizeof(float), "head ntpm row buffer"))) {
        st = DM_ERR_NOMEM;
        goto out;
    }
    if (has_sets) {
        if (!(map = ws_alloc(&ws, V, sizeof(int32_t), "head ntpm id map")) ||
            !(set_loc = ws_alloc(&ws, a->n_sets, sizeof(int64_t), "head ntpm set map")) ||
            !(uni = ws_alloc(&ws, V, sizeof(int32_t), "head ntpm union")) ||
            !(loc_ids = ws_alloc(&ws, a->n_pos, sizeof(int64_t), "head ntpm positives"))) {
            st = DM_ERR_NOMEM;
            goto out;
        }
        for (int64_t v = 0; v < V; v++) map[v] = -1;
        for (int64_t s = 0; s < a->n_sets; s++) set_loc[s] = -1;
    }

    double total = 0;
    int64_t i0 = 0;
    while (i0 < L) {
        /* --- choose the chunk: compact (union of its sets) or full vocabulary --- */
        int64_t tc = 0, nu = 0;
        int compact = 0;
        if (has_sets) {
            /* grow while rows x union (+ gathered weight rows) fit the budget */
            int64_t prev = -1;
            while (i0 + tc < L) {
                int64_t s = a->token_set ? a->token_set[i0 + tc] : i0 + tc;
                int64_t add = 0;
                if (s != prev && set_loc[s] == -1)
                    for (int64_t j = a->valid_offsets[s]; j < a->valid_offsets[s + 1]; j++) add += map[a->valid_ids[j]] == -1;
                int64_t u2 = nu + add, t2 = tc + 1;
                int64_t need = t2 * (u2 * bpl + 8 * H) + u2 * H * 4;
                if (need > budget) break; /* with tc == 0: even this token's set does not fit compactly */
                if (s != prev && set_loc[s] == -1) {
                    for (int64_t j = a->valid_offsets[s]; j < a->valid_offsets[s + 1]; j++) {
                        int64_t v = a->valid_ids[j];
                        if (map[v] == -1) { map[v] = -2; uni[nu++] = (int32_t)v; }
                    }
                    set_loc[s] = -2; /* in the union; numbered below */
                }
                prev = s;
                tc++;
            }
            compact = tc > 0;
            if (!compact) { /* the token's set is too large: this chunk over the full vocabulary */
                tc = Tfull;
                if (tc > L - i0) tc = L - i0;
            }
        } else {
            tc = L - i0 < Tfull ? L - i0 : Tfull;
        }
        const int64_t Vk = compact ? nu : V; /* the kernel's vocabulary */

        /* --- buffers for this chunk (grown on demand) --- */
        if (tc * Vk > zcap) {
            dm_free(z); dm_free(G);
            ws.now -= zcap * bpl;
            zcap = tc * Vk;
            z = ws_alloc(&ws, zcap, sizeof(float), "head ntpm logits");
            G = (!sparse && want_grad) ? ws_alloc(&ws, zcap, sizeof(float), "head ntpm gradient") : NULL;
            if (!z || (!sparse && want_grad && !G)) { st = DM_ERR_NOMEM; goto out; }
        }
        if (tc > hcap) {
            dm_free(hc); dm_free(dhc); dm_free(si); dm_free(sv); dm_free(sc); dm_free(ent);
            ws.now -= hcap * (8 * H + 8 + stride * (4 + 4 + (int64_t)sizeof(grad_entry)));
            hcap = tc;
            hc = ws_alloc(&ws, hcap * H, sizeof(float), "head ntpm hidden chunk");
            dhc = ws_alloc(&ws, hcap * H, sizeof(float), "head ntpm dh chunk");
            si = ws_alloc(&ws, hcap * (stride > 0 ? stride : 1), sizeof(int32_t), "head ntpm sparse ids");
            sv = ws_alloc(&ws, hcap * (stride > 0 ? stride : 1), sizeof(float), "head ntpm sparse values");
            sc = ws_alloc(&ws, hcap, sizeof(int64_t), "head ntpm sparse counts");
            ent = ws_alloc(&ws, hcap * (stride > 0 ? stride : 1), sizeof(grad_entry), "head ntpm entries");
            if (!hc || !dhc || !si || !sv || !sc || !ent) { st = DM_ERR_NOMEM; goto out; }
        }
        gather_rows(hc, hd->h, a->rows, i0, tc, H);

        /* --- the chunk's kernel arguments --- */
        ntpm_args ca = fa;
        ca.L = tc;
        ca.V = Vk;
        ca.logits = z;
        ca.labels = a->labels ? loc_lab : NULL;
        const int64_t p0 = a->pos_offsets[i0];
        if (compact) {
            /* number the union in id order; remap this chunk's sets, positives, labels */
            qsort(uni, (size_t)nu, sizeof *uni, cmp_i32);
            for (int64_t u = 0; u < nu; u++) map[uni[u]] = (int32_t)u;
            if (nu > wcap) {
                dm_free(wf);
                ws.now -= wcap * H * 4;
                wcap = nu;
                if (!(wf = ws_alloc(&ws, wcap * H, sizeof(float), "head ntpm gathered rows"))) { st = DM_ERR_NOMEM; goto out; }
            }
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int64_t u = 0; u < nu; u++) dm_tensor_row_f32(hd->w, uni[u], wf + u * H);
            /* local sets, in order of first use */
            int64_t nls = 0, nlv = 0;
            for (int64_t j = 0; j < tc; j++) {
                int64_t s = a->token_set ? a->token_set[i0 + j] : i0 + j;
                if (set_loc[s] < 0) { set_loc[s] = nls++; nlv += a->valid_offsets[s + 1] - a->valid_offsets[s]; }
                loc_set[j] = set_loc[s];
            }
            if (nlv > vcap || !loc_voff) {
                dm_free(loc_vids); dm_free(loc_voff);
                ws.now -= vcap * 8 + (vcap + 1) * 8;
                vcap = nlv > tc ? nlv : tc;
                loc_vids = ws_alloc(&ws, vcap, sizeof(int64_t), "head ntpm local valid ids");
                loc_voff = ws_alloc(&ws, vcap + 1, sizeof(int64_t), "head ntpm local valid offsets");
                if (!loc_vids || !loc_voff) { st = DM_ERR_NOMEM; goto out; }
            }
            /* sets are listed in local order: walk the chunk again */
            int64_t ls = 0, lv = 0;
            loc_voff[0] = 0;
            for (int64_t j = 0; j < tc; j++) {
                if (loc_set[j] != ls) continue;
                int64_t s = a->token_set ? a->token_set[i0 + j] : i0 + j;
                for (int64_t q = a->valid_offsets[s]; q < a->valid_offsets[s + 1]; q++) loc_vids[lv++] = map[a->valid_ids[q]];
                loc_voff[++ls] = lv;
                if (ls == nls) break;
            }
            loc_off[0] = 0;
            int64_t np = 0;
            for (int64_t j = 0; j < tc; j++) {
                for (int64_t q = a->pos_offsets[i0 + j]; q < a->pos_offsets[i0 + j + 1]; q++) {
                    int32_t m = map[a->pos_ids[q]];
                    if (m >= 0) loc_ids[np++] = m; /* outside the union = outside the token's set */
                }
                loc_off[j + 1] = np;
                if (a->labels) {
                    int64_t lb = a->labels[i0 + j];
                    if (lb >= 0 && map[lb] < 0) {
                        st = dm_fail(DM_ERR_VALUE, "head ntpm: label %lld of token %lld is not one of its valid ids",
                                     (long long)lb, (long long)(i0 + j));
                        goto out;
                    }
                    loc_lab[j] = lb >= 0 ? map[lb] : -1;
                }
            }
            ca.pos_offsets = loc_off;
            ca.pos_ids = loc_ids;
            ca.n_pos = np;
            ca.valid_offsets = loc_voff;
            ca.valid_ids = loc_vids;
            ca.n_valid = lv;
            ca.valid_set = loc_set;
            ca.n_sets = nls;
            dm_tensor wt = {wf, DM_F32, 2, {nu, H}};
            if ((st = dm_matmul(hd->backend, z, hc, &wt, NULL, tc, 0)) != DM_OK) goto out;
        } else {
            for (int64_t j = 0; j <= tc; j++) loc_off[j] = a->pos_offsets[i0 + j] - p0;
            ca.pos_offsets = loc_off;
            ca.pos_ids = a->pos_ids + p0;
            ca.n_pos = loc_off[tc];
            if (has_sets) {
                for (int64_t j = 0; j < tc; j++) loc_set[j] = a->token_set ? a->token_set[i0 + j] : i0 + j;
                ca.valid_set = loc_set;
            }
            if (a->labels)
                for (int64_t j = 0; j < tc; j++) loc_lab[j] = a->labels[i0 + j];
            if ((st = dm_matmul(hd->backend, z, hc, hd->w, NULL, tc, 0)) != DM_OK) goto out;
        }

        /* --- loss and gradient of the chunk --- */
        double cl = 0;
        ntpm_sparse_grad sg = {stride, si, sv, sc};
        if ((st = ntpm_forward_backward(&ca, &cl, NULL, (!sparse && want_grad) ? G : NULL, 0,
                                        (sparse && want_grad) ? &sg : NULL, NULL)) != DM_OK) {
            dm_fail_context(st, "head ntpm (vision tokens %lld..%lld): ", (long long)i0, (long long)(i0 + tc - 1));
            goto out;
        }
        total += cl;
        if (want_grad) {
            if (sparse) {
                sparse_apply(hd, &sg, tc, hc, hd->dh ? dhc : NULL, compact ? uni : NULL, compact ? wf : NULL, alpha,
                             ent, rowbuf, nt);
            } else {
                if (hd->dh) {
                    memset(dhc, 0, (size_t)(tc * H) * sizeof(float));
                    if (compact) {
                        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)tc, (int)H, (int)nu, alpha, G,
                                          (int)nu, wf, (int)H, 1.0f, dhc, (int)H);
                    } else if ((st = gw_acc(dhc, G, V, tc, hd->w, 0, V, alpha, &ws)) != DM_OK) {
                        goto out;
                    }
                }
                if (hd->dw) {
                    if (compact) { /* G^T h into the gathered rows' buffer, then added to their head rows */
                        gth_acc(wf, G, nu, tc, nu, hc, H, alpha, 0.0f);
#pragma omp parallel for num_threads(nt) schedule(static)
                        for (int64_t u = 0; u < nu; u++) {
                            float *d = hd->dw + (int64_t)uni[u] * H;
                            const float *s = wf + u * H;
                            for (int64_t c = 0; c < H; c++) d[c] += s[c];
                        }
                    } else {
                        gth_acc(hd->dw, G, V, tc, V, hc, H, alpha, 1.0f);
                    }
                }
            }
            if (hd->dh) scatter_add_rows(hd->dh, dhc, a->rows, i0, tc, H);
        }
        if (compact) { /* clear the id and set maps through the same lists */
            for (int64_t u = 0; u < nu; u++) map[uni[u]] = -1;
            for (int64_t j = 0; j < tc; j++) set_loc[a->token_set ? a->token_set[i0 + j] : i0 + j] = -1;
        }
        i0 += tc;
    }
    if (loss) *loss = weight * total / denom;
out:
    if (workspace_bytes) *workspace_bytes = ws.peak + kernel_ws;
    dm_free(z); dm_free(G); dm_free(hc); dm_free(dhc); dm_free(wf); dm_free(rowbuf); dm_free(sv);
    dm_free(si); dm_free(map); dm_free(uni); dm_free(sc); dm_free(loc_off); dm_free(loc_ids); dm_free(loc_set);
    dm_free(loc_lab); dm_free(set_loc); dm_free(loc_voff); dm_free(loc_vids); dm_free(ent);
    return st;
}
