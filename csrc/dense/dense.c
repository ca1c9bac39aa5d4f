#include "dense/dense.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

/* ---- selected-vocabulary logits ------------------------------------------ */

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Index of v in the sorted unique array u[0..n) (present by construction). */
static int64_t find_sorted(const int64_t *u, int64_t n, int64_t v) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (u[mid] < v) lo = mid + 1; else hi = mid;
    }
    return lo;
}

dm_status dense_class_logits(dm_backend backend, float *out, const float *hidden, int64_t T,
                             int64_t D, const dm_tensor *head, const int64_t *offsets,
                             const int64_t *ids, int64_t K) {
    if (T < 0 || D <= 0 || K <= 0)
        return dm_fail(DM_ERR_VALUE, "dense logits: bad sizes T=%lld D=%lld K=%lld", (long long)T,
                       (long long)D, (long long)K);
    if (!head || head->ndim != 2 || head->shape[1] != D)
        return dm_fail(DM_ERR_VALUE, "dense logits: LM head must be [vocab, %lld]", (long long)D);
    if (!dm_tensor_is_weight(head))
        return dm_fail(DM_ERR_TYPE, "dense logits: LM head dtype %s is not a float type (or int8 with row scales)",
                       dm_dtype_name(head->dtype));
    int64_t vocab = head->shape[0];
    if (offsets[0] != 0) return dm_fail(DM_ERR_VALUE, "dense logits: offsets[0] must be 0");
    for (int64_t k = 0; k < K; k++)
        if (offsets[k + 1] <= offsets[k])
            return dm_fail(DM_ERR_VALUE, "dense logits: class %lld has no token ids", (long long)k);
    int64_t nid = offsets[K];
    for (int64_t j = 0; j < nid; j++)
        if (ids[j] < 0 || ids[j] >= vocab)
            return dm_fail(DM_ERR_INDEX, "dense logits: token id %lld outside the vocabulary [0, %lld)",
                           (long long)ids[j], (long long)vocab);
    if (T == 0) return DM_OK;

    /* Distinct ids only: classes often share sub-words, and each row costs T*D. */
    int64_t *uniq = dm_alloc((size_t)nid, sizeof(int64_t), "dense logits ids");
    if (!uniq) return DM_ERR_NOMEM;
    memcpy(uniq, ids, (size_t)nid * sizeof(int64_t));
    qsort(uniq, (size_t)nid, sizeof(int64_t), cmp_i64);
    int64_t U = 0;
    for (int64_t j = 0; j < nid; j++)
        if (U == 0 || uniq[U - 1] != uniq[j]) uniq[U++] = uniq[j];

    size_t es = dm_dtype_size(head->dtype), row = (size_t)D * es;
    char *rows = dm_alloc((size_t)U, row, "dense logits head rows");
    float *z = rows ? dm_alloc((size_t)T * (size_t)U, sizeof(float), "dense logits scratch") : NULL;
    int64_t *col = z ? dm_alloc((size_t)nid, sizeof(int64_t), "dense logits columns") : NULL;
    float *scales = col && head->row_scale ? dm_alloc((size_t)U, sizeof(float), "dense logits row scales") : NULL;
    if (!col || (head->row_scale && !scales)) {
        dm_free(scales); dm_free(col); dm_free(z); dm_free(rows); dm_free(uniq);
        return DM_ERR_NOMEM;
    }
    const char *src = head->data;
    #pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < U; u++) {
        memcpy(rows + (size_t)u * row, src + (size_t)uniq[u] * row, row);
        if (scales) scales[u] = head->row_scale[uniq[u]];
    }
    for (int64_t j = 0; j < nid; j++) col[j] = find_sorted(uniq, U, ids[j]);

    dm_tensor w = {.data = rows, .dtype = head->dtype, .ndim = 2, .shape = {U, D}, .row_scale = scales};
    dm_status st = dm_matmul(backend, z, hidden, &w, NULL, T, 0);
    if (st == DM_OK) {
        #pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            const float *zt = z + t * U;
            for (int64_t k = 0; k < K; k++) {
                float s = 0.0f;
                for (int64_t j = offsets[k]; j < offsets[k + 1]; j++) s += zt[col[j]];
                out[t * K + k] = s / (float)(offsets[k + 1] - offsets[k]);
            }
        }
    } else {
        dm_fail_context(st, "dense logits: ");
    }
    dm_free(scales); dm_free(col); dm_free(z); dm_free(rows); dm_free(uniq);
    return st;
}

/* ---- bilinear resampling --------------------------------------------------- */

/* Source taps along one axis, as torch computes them for align_corners=False:
 * src = (dst + 0.5) * (in / out) - 0.5, clamped at 0; the right tap is clamped to
 * the last index. Scale in float like torch's CPU kernel. */
typedef struct { int64_t i0, i1; float l0, l1; } tap;

static tap *make_taps(int64_t in, int64_t out, const char *what) {
    tap *t = dm_alloc((size_t)out, sizeof(tap), what);
    if (!t) return NULL;
    float scale = (float)in / (float)out;
    for (int64_t d = 0; d < out; d++) {
        float s = scale * ((float)d + 0.5f) - 0.5f;
        if (s < 0.0f) s = 0.0f;
        int64_t i0 = (int64_t)s;
        if (i0 > in - 1) i0 = in - 1;
        int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
        float l1 = s - (float)i0;
        if (l1 > 1.0f) l1 = 1.0f;
        t[d] = (tap){i0, i1, 1.0f - l1, l1};
    }
    return t;
}

static dm_status check_resize(int64_t h, int64_t w, int64_t C, int64_t oh, int64_t ow) {
    if (h <= 0 || w <= 0 || C <= 0 || oh <= 0 || ow <= 0)
        return dm_fail(DM_ERR_VALUE, "resize: sizes must be positive (in %lldx%lldx%lld, out %lldx%lld)",
                       (long long)h, (long long)w, (long long)C, (long long)oh, (long long)ow);
    return DM_OK;
}

/* One output pixel: v[c] = l0y*(l0x*a + l1x*b) + l1y*(l0x*c + l1x*d), torch's order. */
static inline float lerp2(const float *r0, const float *r1, const tap *tx, const tap *ty,
                          int64_t C, int64_t c) {
    float top = tx->l0 * r0[tx->i0 * C + c] + tx->l1 * r0[tx->i1 * C + c];
    float bot = tx->l0 * r1[tx->i0 * C + c] + tx->l1 * r1[tx->i1 * C + c];
    return ty->l0 * top + ty->l1 * bot;
}

dm_status dense_upsample_bilinear(float *out, const float *in, int64_t h, int64_t w, int64_t C,
                                  int64_t oh, int64_t ow) {
    DM_TRY(check_resize(h, w, C, oh, ow));
    tap *ty = make_taps(h, oh, "resize rows");
    tap *tx = ty ? make_taps(w, ow, "resize cols") : NULL;
    if (!tx) { dm_free(ty); return DM_ERR_NOMEM; }
    #pragma omp parallel for schedule(static)
    for (int64_t y = 0; y < oh; y++) {
        const float *r0 = in + ty[y].i0 * w * C, *r1 = in + ty[y].i1 * w * C;
        for (int64_t x = 0; x < ow; x++) {
            float *o = out + (y * ow + x) * C;
            for (int64_t c = 0; c < C; c++) o[c] = lerp2(r0, r1, &tx[x], &ty[y], C, c);
        }
    }
    dm_free(tx); dm_free(ty);
    return DM_OK;
}

/* Label of one output pixel from the row-blended source row: argmax over the C
 * interpolated channels (first maximum wins, like torch.argmax; all-NaN -> 0); in
 * background mode a constant line `theta` comes first and wins ties. */
static inline int32_t pixel_label(const float *row, const tap *t, int64_t C, float *v, int background,
                                  float theta) {
    const float *a = row + t->i0 * C, *b = row + t->i1 * C;
    const float l0 = t->l0, l1 = t->l1;
    float m = -INFINITY;
    #pragma omp simd reduction(max : m)
    for (int64_t c = 0; c < C; c++) {
        float x = l0 * a[c] + l1 * b[c];
        v[c] = x;
        m = x > m ? x : m;
    }
    int64_t arg = 0;
    for (int64_t c = 0; c < C; c++)
        if (v[c] == m) { arg = c; break; }
    if (background) return m > theta ? (int32_t)arg + 1 : 0;
    return (int32_t)arg;
}

/* Along one output row, pixels between the same two source columns see every channel
 * as a LINEAR function of the blend weight; the maximum of linear functions is
 * convex, so when the same line wins at both ends of a stretch it wins throughout.
 * Bisect until the ends agree: far fewer full evaluations than pixels. */
static void fill_run(int32_t *out, const float *row, const tap *tx, int64_t C, float *v, int background,
                     float theta, int64_t lo, int64_t hi, int32_t llo, int32_t lhi) {
    while (1) {
        if (llo == lhi) {
            for (int64_t x = lo; x <= hi; x++) out[x] = llo;
            return;
        }
        if (hi - lo <= 1) {
            out[lo] = llo;
            out[hi] = lhi;
            return;
        }
        int64_t mid = lo + (hi - lo) / 2;
        int32_t lm = pixel_label(row, &tx[mid], C, v, background, theta);
        fill_run(out, row, tx, C, v, background, theta, lo, mid, llo, lm);
        lo = mid;
        llo = lm;
    }
}

dm_status dense_upsample_argmax(int32_t *labels, const float *in, int64_t h, int64_t w, int64_t C,
                                int64_t oh, int64_t ow, int background, float bg_scale,
                                float bg_score) {
    DM_TRY(check_resize(h, w, C, oh, ow));
    if (C > INT32_MAX - 1) return dm_fail(DM_ERR_VALUE, "argmax: too many channels");
    if (background && !(bg_scale > 0.0f && bg_score > 0.0f && bg_score < 1.0f))
        return dm_fail(DM_ERR_VALUE, "argmax: background mode needs bg_scale > 0 and 0 < bg_score < 1 "
                       "(got %g, %g)", (double)bg_scale, (double)bg_score);
    /* sigmoid(s * z) > bg  <=>  z > logit(bg) / s (exact; no sigmoid rounding to 0.5) */
    float theta = background ? logf(bg_score / (1.0f - bg_score)) / bg_scale : 0.0f;
    tap *ty = make_taps(h, oh, "argmax rows");
    tap *tx = ty ? make_taps(w, ow, "argmax cols") : NULL;
    /* Per thread: the two source rows blended for the current output row ([w, C]),
     * then one pixel's channel vector ([C]); both contiguous so the loops vectorise. */
    int nt = omp_get_max_threads();
    size_t per = (size_t)(w + 1) * (size_t)C;
    float *scratch = tx ? dm_alloc((size_t)nt * per, sizeof(float), "argmax scratch") : NULL;
    if (!scratch) { dm_free(tx); dm_free(ty); return DM_ERR_NOMEM; }
    #pragma omp parallel for schedule(dynamic, 8)
    for (int64_t y = 0; y < oh; y++) {
        float *row = scratch + (size_t)omp_get_thread_num() * per, *v = row + (size_t)w * C;
        const float *r0 = in + ty[y].i0 * w * C, *r1 = in + ty[y].i1 * w * C;
        const float l0y = ty[y].l0, l1y = ty[y].l1;
        #pragma omp simd
        for (int64_t i = 0; i < w * C; i++) row[i] = l0y * r0[i] + l1y * r1[i];
        int32_t *out = labels + y * ow;
        for (int64_t lo = 0; lo < ow;) {
            int64_t hi = lo;
            while (hi + 1 < ow && tx[hi + 1].i0 == tx[lo].i0 && tx[hi + 1].i1 == tx[lo].i1) hi++;
            int32_t llo = pixel_label(row, &tx[lo], C, v, background, theta);
            int32_t lhi = hi > lo ? pixel_label(row, &tx[hi], C, v, background, theta) : llo;
            fill_run(out, row, tx, C, v, background, theta, lo, hi, llo, lhi);
            lo = hi + 1;
        }
    }
    dm_free(scratch); dm_free(tx); dm_free(ty);
    return DM_OK;
}

/* ---- scores ---------------------------------------------------------------- */

dm_status dense_scores(float *out, const float *z, int64_t n, int64_t C, float temperature,
                       int background, float bg_scale, float bg_score) {
    if (n < 0 || C <= 0) return dm_fail(DM_ERR_VALUE, "scores: bad sizes n=%lld C=%lld",
                                        (long long)n, (long long)C);
    if (!background && !(temperature > 0.0f) )
        return dm_fail(DM_ERR_VALUE, "scores: temperature must be > 0, got %g", (double)temperature);
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *zi = z + i * C;
        if (background) {
            float *o = out + i * (C + 1);
            o[0] = bg_score;
            for (int64_t c = 0; c < C; c++) o[1 + c] = 1.0f / (1.0f + expf(-bg_scale * zi[c]));
        } else {
            float *o = out + i * C, m = -INFINITY, s = 0.0f;
            for (int64_t c = 0; c < C; c++) m = fmaxf(m, zi[c]);
            for (int64_t c = 0; c < C; c++) { o[c] = expf((zi[c] - m) / temperature); s += o[c]; }
            for (int64_t c = 0; c < C; c++) o[c] /= s;
        }
    }
    return DM_OK;
}

/* ---- depth ----------------------------------------------------------------- */

dm_status dense_depth_dequantize(float *out, const float *bins, int64_t n, dense_depth_mode mode,
                                 float dmin, float dmax, int32_t nbins, float scale) {
    if (nbins < 2) return dm_fail(DM_ERR_VALUE, "depth: need at least 2 bins, got %d", nbins);
    if (!(dmax > dmin) || !(scale > 0.0f) || !isfinite(scale))
        return dm_fail(DM_ERR_VALUE, "depth: need dmax > dmin and a positive scale (got %g..%g, %g)",
                       (double)dmin, (double)dmax, (double)scale);
    if (mode == DENSE_DEPTH_LOG && !(dmin > 0.0f))
        return dm_fail(DM_ERR_VALUE, "depth: log-uniform bins need dmin > 0, got %g", (double)dmin);
    if (mode != DENSE_DEPTH_LINEAR && mode != DENSE_DEPTH_LOG)
        return dm_fail(DM_ERR_VALUE, "depth: unknown quantisation mode %d", (int)mode);
    double span = (double)(nbins - 1), lratio = log((double)dmax / (double)dmin);
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float b = bins[i];
        if (!(b >= 1.0f)) { out[i] = NAN; continue; } /* also NaN in */
        double f = ((double)(b > (float)nbins ? (float)nbins : b) - 1.0) / span;
        double d = mode == DENSE_DEPTH_LINEAR ? dmin + (dmax - dmin) * f : dmin * exp(lratio * f);
        out[i] = (float)(d * scale);
    }
    return DM_OK;
}
