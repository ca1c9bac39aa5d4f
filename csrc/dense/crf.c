#include "dense/crf.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/threads.h"
#include "ops/vmath.h"

/* ---- vertex hash table ------------------------------------------------------
 * A lattice vertex is a point of the (d+1)-dimensional lattice on the plane sum = 0; its
 * first d coordinates are the key (the last is minus their sum). Open addressing with
 * linear probing; the slot array is kept at most half full. Insertion is sequential; lookups
 * after the build are read-only and may run in parallel. */
typedef struct {
    int d;
    int32_t count, cap; /* vertices stored, key capacity (vertices) */
    int32_t *keys;      /* [cap][d] */
    int32_t *slots;     /* vertex index or -1 */
    uint64_t mask;      /* slots - 1 (a power of two) */
} vtable;

static uint64_t key_hash(const int32_t *k, int d) {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < d; i++) {
        h ^= (uint32_t)k[i];
        h *= 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
    }
    return h;
}

static inline int key_eq(const int32_t *a, const int32_t *b, int d) {
    for (int i = 0; i < d; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static dm_status vtable_init(vtable *t, int d, int64_t expect) {
    memset(t, 0, sizeof *t);
    t->d = d;
    uint64_t slots = 1024;
    while ((int64_t)slots < 2 * expect) slots <<= 1;
    t->cap = (int32_t)(slots / 2);
    t->mask = slots - 1;
    t->keys = malloc((size_t)t->cap * d * sizeof(int32_t));
    t->slots = malloc(slots * sizeof(int32_t));
    if (!t->keys || !t->slots) {
        free(t->keys);
        free(t->slots);
        t->keys = NULL;
        t->slots = NULL;
        return dm_fail(DM_ERR_NOMEM, "crf: cannot allocate the lattice hash table (%llu slots)",
                       (unsigned long long)slots);
    }
    memset(t->slots, 0xff, slots * sizeof(int32_t));
    return DM_OK;
}

static void vtable_free(vtable *t) {
    free(t->keys);
    free(t->slots);
    t->keys = NULL;
    t->slots = NULL;
}

/* Index of `key`, or -1 when absent. */
static int32_t vtable_find(const vtable *t, const int32_t *key) {
    const int d = t->d;
    for (uint64_t s = key_hash(key, d) & t->mask;; s = (s + 1) & t->mask) {
        int32_t v = t->slots[s];
        if (v < 0) return -1;
        if (key_eq(t->keys + (int64_t)v * d, key, d)) return v;
    }
}

static dm_status vtable_grow(vtable *t) {
    if (t->cap > INT32_MAX / 2) return dm_fail(DM_ERR_VALUE, "crf: lattice exceeds 2^30 vertices");
    int32_t cap = t->cap * 2;
    uint64_t slots = (uint64_t)cap * 2;
    int32_t *keys = realloc(t->keys, (size_t)cap * t->d * sizeof(int32_t));
    if (!keys) return dm_fail(DM_ERR_NOMEM, "crf: cannot grow the lattice to %d vertices", cap);
    t->keys = keys;
    int32_t *ns = malloc(slots * sizeof(int32_t));
    if (!ns) return dm_fail(DM_ERR_NOMEM, "crf: cannot grow the lattice hash table");
    memset(ns, 0xff, slots * sizeof(int32_t));
    for (int32_t v = 0; v < t->count; v++) {
        uint64_t s = key_hash(t->keys + (int64_t)v * t->d, t->d) & (slots - 1);
        while (ns[s] >= 0) s = (s + 1) & (slots - 1);
        ns[s] = v;
    }
    free(t->slots);
    t->slots = ns;
    t->cap = cap;
    t->mask = slots - 1;
    return DM_OK;
}

/* Index of `key`, inserting it when absent; -1 on allocation failure (message set). */
static int32_t vtable_insert(vtable *t, const int32_t *key) {
    const int d = t->d;
    uint64_t s = key_hash(key, d) & t->mask;
    for (;; s = (s + 1) & t->mask) {
        int32_t v = t->slots[s];
        if (v < 0) break;
        if (key_eq(t->keys + (int64_t)v * d, key, d)) return v;
    }
    if (t->count == t->cap) {
        if (vtable_grow(t) != DM_OK) return -1;
        s = key_hash(key, d) & t->mask;
        while (t->slots[s] >= 0) s = (s + 1) & t->mask;
    }
    int32_t v = t->count++;
    memcpy(t->keys + (int64_t)v * d, key, d * sizeof(int32_t));
    t->slots[s] = v;
    return v;
}

/* ---- the permutohedral lattice (Adams et al. 2010, Sec. 3-4) ---------------- */

typedef struct {
    const float *explicit_f; /* [n][d] features, or NULL: positions (+ colours) of an image */
    int64_t w;
    const uint8_t *image; /* [n][3] when d == 5 */
    float sxy, srgb;
    int d;
} feature_src;

static void feature_of(const feature_src *s, int64_t i, float *f) {
    if (s->explicit_f) {
        memcpy(f, s->explicit_f + i * s->d, (size_t)s->d * sizeof(float));
        return;
    }
    /* the same expressions as densecrf's DenseCRF2D (x = column, y = row) */
    f[0] = (float)(i % s->w) / s->sxy;
    f[1] = (float)(i / s->w) / s->sxy;
    if (s->d == 5)
        for (int c = 0; c < 3; c++) f[2 + c] = (float)s->image[i * 3 + c] / s->srgb;
}

typedef struct {
    int d;
    int64_t n;
    int32_t m;            /* vertices; row m of every value buffer is zero (absent neighbour) */
    int32_t *offset;      /* [n][d+1] vertex of each corner of the pixel's enclosing simplex */
    float *slice_w;       /* [n][d+1] its barycentric weight (x alpha x norm x compat once folded) */
    int32_t *splat_start; /* [m+1] the same pairs grouped by vertex (CSR, pixels ascending) */
    int32_t *splat_pixel; /* [n (d+1)] */
    float *splat_w;       /* [n (d+1)] barycentric weight (x norm once folded) */
    int32_t *blur;        /* [d+1][m][2] the two neighbours of each vertex along each direction */
} lattice;

static void lattice_free(lattice *L) {
    dm_free(L->offset);
    dm_free(L->slice_w);
    dm_free(L->splat_start);
    dm_free(L->splat_pixel);
    dm_free(L->splat_w);
    dm_free(L->blur);
    memset(L, 0, sizeof *L);
}

/* The enclosing simplex of one feature vector: the d+1 vertex keys [d+1][d] and the
 * barycentric weights [d+1]. Elevation onto the plane sum = 0 with E of p. 5, scaled so
 * the 3-tap blur gives a unit std-dev Gaussian (p. 6); the nearest remainder-0 point by
 * rounding, the simplex by sorting the differences (p. 7), weights p. 10. */
static void embed(const float *f, int d, const double *scale, int32_t *keys, float *bary) {
    double el[CRF_MAX_DIM + 1], rem[CRF_MAX_DIM + 1], b[CRF_MAX_DIM + 2];
    int rank[CRF_MAX_DIM + 1];
    const double dp1 = d + 1, inv_dp1 = 1.0 / dp1;
    double sm = 0;
    for (int j = d; j > 0; j--) {
        double cf = (double)f[j - 1] * scale[j - 1];
        el[j] = sm - j * cf;
        sm += cf;
    }
    el[0] = sm;
    int sum = 0;
    for (int i = 0; i <= d; i++) {
        double v = el[i] * inv_dp1, down = floor(v), up = down + 1;
        double r = (up * dp1 - el[i] < el[i] - down * dp1) ? up : down; /* ties go down */
        rem[i] = r * dp1;
        sum += (int)r;
        rank[i] = 0;
    }
    for (int i = 0; i < d; i++)
        for (int j = i + 1; j <= d; j++) {
            if (el[i] - rem[i] < el[j] - rem[j]) rank[i]++;
            else rank[j]++;
        }
    for (int i = 0; i <= d; i++) { /* back onto the plane: |sum| <= (d+1)/2, one wrap suffices */
        rank[i] += sum;
        if (rank[i] < 0) {
            rank[i] += d + 1;
            rem[i] += dp1;
        } else if (rank[i] > d) {
            rank[i] -= d + 1;
            rem[i] -= dp1;
        }
    }
    for (int i = 0; i <= d + 1; i++) b[i] = 0;
    for (int i = 0; i <= d; i++) {
        double v = (el[i] - rem[i]) * inv_dp1;
        b[d - rank[i]] += v;
        b[d - rank[i] + 1] -= v;
    }
    b[0] += 1.0 + b[d + 1];
    for (int r = 0; r <= d; r++) {
        for (int i = 0; i < d; i++)
            keys[r * d + i] = (int32_t)rem[i] + (rank[i] <= d - r ? r : r - (d + 1));
        bary[r] = (float)b[r];
    }
}

#define EMBED_BLOCK 16384 /* pixels embedded in parallel before their sequential insertion */

static dm_status lattice_build(lattice *L, const feature_src *src, int64_t n) {
    const int d = src->d, dp1 = d + 1;
    memset(L, 0, sizeof *L);
    L->d = d;
    L->n = n;
    double scale[CRF_MAX_DIM];
    const double inv_std = sqrt(2.0 / 3.0) * dp1;
    for (int i = 0; i < d; i++) scale[i] = inv_std / sqrt((double)(i + 1) * (i + 2));

    L->offset = dm_alloc((size_t)n * dp1, sizeof(int32_t), "crf lattice offsets");
    L->slice_w = dm_alloc((size_t)n * dp1, sizeof(float), "crf lattice weights");
    int32_t *keys = dm_alloc((size_t)EMBED_BLOCK * dp1 * d, sizeof(int32_t), "crf lattice keys");
    vtable t = {0};
    dm_status st = (L->offset && L->slice_w && keys) ? vtable_init(&t, d, 4096) : DM_ERR_NOMEM; /* grows; M is often << N */
    for (int64_t i0 = 0; st == DM_OK && i0 < n; i0 += EMBED_BLOCK) {
        int64_t nb = n - i0 < EMBED_BLOCK ? n - i0 : EMBED_BLOCK;
#pragma omp parallel for schedule(dynamic, 512)
        for (int64_t k = 0; k < nb; k++) {
            float f[CRF_MAX_DIM];
            feature_of(src, i0 + k, f);
            embed(f, d, scale, keys + k * dp1 * d, L->slice_w + (i0 + k) * dp1);
        }
        for (int64_t k = 0; k < nb * dp1; k++) {
            int32_t v = vtable_insert(&t, keys + k * d);
            if (v < 0) { st = DM_ERR_NOMEM; break; }
            L->offset[i0 * dp1 + k] = v;
        }
    }
    dm_free(keys);
    if (st != DM_OK) goto fail;
    const int32_t m = t.count;
    L->m = m;

    /* neighbours along direction j: key -/+ 1 in every coordinate, -/+ (-(d+1)) in j's
     * (the implicit last coordinate when j == d) */
    L->blur = dm_alloc((size_t)dp1 * m * 2, sizeof(int32_t), "crf lattice neighbours");
    if (!L->blur) { st = DM_ERR_NOMEM; goto fail; }
#pragma omp parallel for schedule(dynamic, 1024)
    for (int32_t v = 0; v < m; v++) {
        const int32_t *key = t.keys + (int64_t)v * d;
        int32_t n1[CRF_MAX_DIM], n2[CRF_MAX_DIM];
        for (int j = 0; j <= d; j++) {
            for (int k = 0; k < d; k++) {
                n1[k] = key[k] - 1;
                n2[k] = key[k] + 1;
            }
            if (j < d) {
                n1[j] = key[j] + d;
                n2[j] = key[j] - d;
            }
            int32_t a = vtable_find(&t, n1), b = vtable_find(&t, n2);
            L->blur[((int64_t)j * m + v) * 2 + 0] = a < 0 ? m : a;
            L->blur[((int64_t)j * m + v) * 2 + 1] = b < 0 ? m : b;
        }
    }
    vtable_free(&t);

    /* group the (pixel, weight) pairs by vertex so the splat is a parallel gather */
    L->splat_start = dm_calloc((size_t)m + 1, sizeof(int32_t), "crf splat index");
    L->splat_pixel = dm_alloc((size_t)n * dp1, sizeof(int32_t), "crf splat pixels");
    L->splat_w = dm_alloc((size_t)n * dp1, sizeof(float), "crf splat weights");
    int32_t *cursor = dm_alloc((size_t)m + 1, sizeof(int32_t), "crf splat cursor");
    if (!L->splat_start || !L->splat_pixel || !L->splat_w || !cursor) {
        dm_free(cursor);
        st = DM_ERR_NOMEM;
        goto fail;
    }
    for (int64_t e = 0; e < n * dp1; e++) L->splat_start[L->offset[e] + 1]++;
    for (int32_t v = 0; v < m; v++) L->splat_start[v + 1] += L->splat_start[v];
    memcpy(cursor, L->splat_start, (size_t)(m + 1) * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++)
        for (int r = 0; r < dp1; r++) {
            int32_t pos = cursor[L->offset[i * dp1 + r]]++;
            L->splat_pixel[pos] = (int32_t)i;
            L->splat_w[pos] = L->slice_w[i * dp1 + r];
        }
    dm_free(cursor);
    return DM_OK;
fail:
    vtable_free(&t);
    lattice_free(L);
    return st;
}

/* out[0, C) (+)= sum_e w[e] * base[idx[e] * C + (0, C)]: the gather-accumulate that splat
 * and slice are made of. AVX-512: up to 64 columns at a time held in registers over all e,
 * masked at the tail (masked-off lanes are never loaded). */
#if defined(__AVX512F__)
static inline __attribute__((always_inline)) void gather_acc_regs(const int NB, float *restrict out,
                                                                  const float *restrict base, int64_t C,
                                                                  int64_t c0, const int32_t *idx,
                                                                  const float *w, int64_t n, int accumulate) {
    __mmask16 m[4];
    __m512 acc[4];
    for (int k = 0; k < NB; k++) {
        int64_t rem = C - c0 - 16 * k;
        m[k] = rem >= 16 ? (__mmask16)0xFFFF : rem > 0 ? (__mmask16)((1u << rem) - 1) : 0;
        acc[k] = accumulate ? _mm512_maskz_loadu_ps(m[k], out + c0 + 16 * k) : _mm512_setzero_ps();
    }
    for (int64_t e = 0; e < n; e++) {
        const float *x = base + (int64_t)idx[e] * C + c0;
        const __m512 wv = _mm512_set1_ps(w[e]);
        for (int k = 0; k < NB; k++) acc[k] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m[k], x + 16 * k), acc[k]);
    }
    for (int k = 0; k < NB; k++) _mm512_mask_storeu_ps(out + c0 + 16 * k, m[k], acc[k]);
}
#endif

static void gather_acc(float *restrict out, const float *restrict base, int64_t C, const int32_t *idx,
                       const float *w, int64_t n, int accumulate) {
#if defined(__AVX512F__)
    for (int64_t c0 = 0; c0 < C; c0 += 64) {
        int64_t left = C - c0;
        if (left > 48) gather_acc_regs(4, out, base, C, c0, idx, w, n, accumulate);
        else if (left > 32) gather_acc_regs(3, out, base, C, c0, idx, w, n, accumulate);
        else if (left > 16) gather_acc_regs(2, out, base, C, c0, idx, w, n, accumulate);
        else gather_acc_regs(1, out, base, C, c0, idx, w, n, accumulate);
    }
#else
    if (!accumulate)
        for (int64_t c = 0; c < C; c++) out[c] = 0;
    for (int64_t e = 0; e < n; e++) {
        const float *x = base + (int64_t)idx[e] * C;
        const float we = w[e];
        for (int64_t c = 0; c < C; c++) out[c] += we * x[c];
    }
#endif
}

/* vals[v, :] = sum over the pixels i of vertex v of splat_w * in[i, :] (rows < m). */
static void lattice_splat(const lattice *L, const float *in, float *vals, int64_t C) {
#pragma omp parallel for schedule(dynamic, 256)
    for (int32_t v = 0; v < L->m; v++) {
        const int32_t e0 = L->splat_start[v];
        gather_acc(vals + (int64_t)v * C, in, C, L->splat_pixel + e0, L->splat_w + e0,
                   L->splat_start[v + 1] - e0, 0);
    }
}

/* d+1 passes of new[v] = old[v] + (old[n1] + old[n2]) / 2 between `a` (holding the splat)
 * and `b`; returns the buffer holding the result (`a` after an even number of passes). */
static float *lattice_blur(const lattice *L, float *a, float *b, int64_t C) {
    const int32_t m = L->m;
    memset(a + (int64_t)m * C, 0, (size_t)C * sizeof(float));
    memset(b + (int64_t)m * C, 0, (size_t)C * sizeof(float));
    for (int j = 0; j <= L->d; j++) {
        const int32_t *nb = L->blur + (int64_t)j * m * 2;
#pragma omp parallel for schedule(dynamic, 1024)
        for (int32_t v = 0; v < m; v++) {
            const float *restrict o = a + (int64_t)v * C, *restrict p = a + (int64_t)nb[2 * v] * C,
                                  *restrict q = a + (int64_t)nb[2 * v + 1] * C;
            float *restrict out = b + (int64_t)v * C;
            for (int64_t c = 0; c < C; c++) out[c] = o[c] + 0.5f * (p[c] + q[c]);
        }
        float *s = a;
        a = b;
        b = s;
    }
    return a;
}

/* The "magic" slice scale of densecrf (1 / (1 + 2^-d)); it cancels in the symmetric
 * normalisation but keeps crf_lattice_filter comparable to the exact Gaussian sums. */
static float slice_alpha(int d) { return (float)(1.0 / (1.0 + pow(2.0, -d))); }

/* Filter `in` [n, C] with the unfolded weights into out [n, C]; work buffers from the caller
 * ((m + 1) C floats each). */
static void lattice_filter_raw(const lattice *L, float *out, const float *in, float *va, float *vb,
                               int64_t C) {
    const int dp1 = L->d + 1;
    const float alpha = slice_alpha(L->d);
    float *res = va;
    if (dp1 % 2) { /* odd pass count: splat into vb so the result lands in va */
        lattice_splat(L, in, vb, C);
        res = lattice_blur(L, vb, va, C);
    } else {
        lattice_splat(L, in, va, C);
        res = lattice_blur(L, va, vb, C);
    }
#pragma omp parallel for schedule(dynamic, 1024)
    for (int64_t i = 0; i < L->n; i++) {
        float w[CRF_MAX_DIM + 1];
        for (int r = 0; r < dp1; r++) w[r] = alpha * L->slice_w[i * dp1 + r];
        gather_acc(out + i * C, res, C, L->offset + i * dp1, w, dp1, 0);
    }
}

dm_status crf_lattice_filter(float *out, const float *in, const float *features, int64_t n, int d,
                             int64_t C) {
    if (n < 1 || n > CRF_MAX_PIXELS || d < 1 || d > CRF_MAX_DIM || C < 1 || C > CRF_MAX_CLASSES)
        return dm_fail(DM_ERR_VALUE, "crf filter: need 1 <= n <= %lld, 1 <= d <= %d, 1 <= C <= %d; got n=%lld d=%d C=%lld",
                       (long long)CRF_MAX_PIXELS, CRF_MAX_DIM, CRF_MAX_CLASSES, (long long)n, d, (long long)C);
    for (int64_t i = 0; i < n * d; i++)
        if (!(fabsf(features[i]) <= CRF_MAX_FEATURE))
            return dm_fail(DM_ERR_VALUE, "crf filter: features[%lld, %d] = %g: must be finite with |f| <= %g",
                           (long long)(i / d), (int)(i % d), (double)features[i], (double)CRF_MAX_FEATURE);
    dm_threads_enter();
    feature_src src = {.explicit_f = features, .d = d};
    lattice L;
    DM_TRY(lattice_build(&L, &src, n));
    float *va = dm_alloc(((size_t)L.m + 1) * C, sizeof(float), "crf lattice values");
    float *vb = dm_alloc(((size_t)L.m + 1) * C, sizeof(float), "crf lattice values");
    dm_status st = (va && vb) ? DM_OK : DM_ERR_NOMEM;
    if (st == DM_OK) lattice_filter_raw(&L, out, in, va, vb, C);
    dm_free(va);
    dm_free(vb);
    lattice_free(&L);
    return st;
}

/* ---- mean-field inference ----------------------------------------------------- */

/* q[c] = clip(p[c]) exp(a[c] - max a) / sum: softmax(log clip(p) + a), i.e. softmax of
 * -unary + messages, without a log per entry and without overflow (both factors <= 1;
 * the max-message class keeps a factor >= clip, so the sum is > 0). */
static void pixel_update(float *restrict q, const float *restrict p, const float *restrict a, int64_t C,
                         float clip) {
#if defined(__AVX512F__)
    const __m512 vlo = _mm512_set1_ps(clip), vhi = _mm512_set1_ps(1.0f);
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    for (int64_t c = 0; c < C; c += 16) {
        __mmask16 k = C - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c)) - 1);
        vmx = _mm512_mask_max_ps(vmx, k, vmx, _mm512_maskz_loadu_ps(k, a + c));
    }
    vmx = _mm512_set1_ps(_mm512_reduce_max_ps(vmx));
    __m512 vs = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 16) {
        __mmask16 k = C - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c)) - 1);
        __m512 pv = _mm512_min_ps(_mm512_max_ps(_mm512_maskz_loadu_ps(k, p + c), vlo), vhi);
        __m512 r = _mm512_maskz_mul_ps(k, pv, dm_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, a + c), vmx)));
        _mm512_mask_storeu_ps(q + c, k, r);
        vs = _mm512_add_ps(vs, r);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vs));
    for (int64_t c = 0; c < C; c += 16) {
        __mmask16 k = C - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c)) - 1);
        _mm512_mask_storeu_ps(q + c, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, q + c), inv));
    }
#else
    float mx = a[0], s = 0;
    for (int64_t c = 1; c < C; c++) mx = a[c] > mx ? a[c] : mx;
    for (int64_t c = 0; c < C; c++) {
        float pc = p[c] < clip ? clip : (p[c] > 1.0f ? 1.0f : p[c]);
        q[c] = pc * expf(a[c] - mx);
        s += q[c];
    }
    const float inv = 1.0f / s;
    for (int64_t c = 0; c < C; c++) q[c] *= inv;
#endif
}

#if defined(__AVX512F__)
/* Slice every kernel's messages into pixel i and update Q_i with the NB * 16 >= C columns
 * held in registers (no store and reload of the messages between the two steps: masked
 * stores do not forward to loads). NB is a constant at each call site. */
static inline __attribute__((always_inline)) void slice_update_regs(const int NB, float *restrict q,
                                                                    const float *restrict p, int64_t C,
                                                                    const lattice *L, float *const *vals,
                                                                    int nk, int64_t i, float clip) {
    __m512 acc[16];
    __mmask16 m[16];
    for (int k = 0; k < NB; k++) {
        int64_t rem = C - 16 * k;
        m[k] = rem >= 16 ? (__mmask16)0xFFFF : rem > 0 ? (__mmask16)((1u << rem) - 1) : 0;
        acc[k] = _mm512_setzero_ps();
    }
    for (int kk = 0; kk < nk; kk++) {
        const int dp1 = L[kk].d + 1;
        const int32_t *off = L[kk].offset + i * dp1;
        const float *w = L[kk].slice_w + i * dp1;
        for (int r = 0; r < dp1; r++) {
            const float *x = vals[kk] + (int64_t)off[r] * C;
            const __m512 wv = _mm512_set1_ps(w[r]);
            for (int k = 0; k < NB; k++) acc[k] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m[k], x + 16 * k), acc[k]);
        }
    }
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int k = 0; k < NB; k++) mx = _mm512_mask_max_ps(mx, m[k], mx, acc[k]);
    mx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    const __m512 lo = _mm512_set1_ps(clip), hi = _mm512_set1_ps(1.0f);
    __m512 sum = _mm512_setzero_ps();
    for (int k = 0; k < NB; k++) {
        __m512 pv = _mm512_min_ps(_mm512_max_ps(_mm512_maskz_loadu_ps(m[k], p + 16 * k), lo), hi);
        acc[k] = _mm512_maskz_mul_ps(m[k], pv, dm_exp16(_mm512_sub_ps(acc[k], mx)));
        sum = _mm512_add_ps(sum, acc[k]);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int k = 0; k < NB; k++) _mm512_mask_storeu_ps(q + 16 * k, m[k], _mm512_mul_ps(acc[k], inv));
}
#endif

/* Registers per pixel for the fused slice + update (0: C too large, use the buffer path). */
static int fused_blocks(int64_t C) {
#if defined(__AVX512F__)
    static const int nbs[] = {2, 4, 8, 12, 16};
    for (int j = 0; j < 5; j++)
        if (C <= 16 * nbs[j]) return nbs[j];
#endif
    (void)C;
    return 0;
}

static dm_status check_params(const crf_params *p, int64_t h, int64_t w, int64_t C) {
    if (h < 1 || w < 1 || h > CRF_MAX_PIXELS / w)
        return dm_fail(DM_ERR_VALUE, "crf: image size %lld x %lld: need h, w >= 1 and h * w <= %lld pixels",
                       (long long)h, (long long)w, (long long)CRF_MAX_PIXELS);
    if (C < 1 || C > CRF_MAX_CLASSES)
        return dm_fail(DM_ERR_VALUE, "crf: %lld classes: need 1 <= classes <= %d", (long long)C,
                       CRF_MAX_CLASSES);
    if (p->iterations < 0 || p->iterations > CRF_MAX_ITERATIONS)
        return dm_fail(DM_ERR_VALUE, "crf: iterations = %d: need 0 <= iterations <= %d", (int)p->iterations,
                       CRF_MAX_ITERATIONS);
    if (!(p->clip > 0.0f && p->clip < 1.0f))
        return dm_fail(DM_ERR_VALUE, "crf: clip = %g: need 0 < clip < 1", (double)p->clip);
    const struct { const char *name; float v; } compat[2] = {{"compat_gaussian", p->compat_gaussian},
                                                            {"compat_bilateral", p->compat_bilateral}};
    for (int k = 0; k < 2; k++)
        if (!(compat[k].v >= 0.0f && compat[k].v <= CRF_MAX_COMPAT))
            return dm_fail(DM_ERR_VALUE, "crf: %s = %g: need 0 <= %s <= %g", compat[k].name, (double)compat[k].v,
                           compat[k].name, (double)CRF_MAX_COMPAT);
    /* scaled features must stay small enough for int32 lattice keys */
    const double extent = (double)(h > w ? h : w) - 1;
    const struct { const char *name; float v; double range; int used; } sd[3] = {
        {"sxy_gaussian", p->sxy_gaussian, extent, p->compat_gaussian > 0},
        {"sxy_bilateral", p->sxy_bilateral, extent, p->compat_bilateral > 0},
        {"srgb", p->srgb, 255.0, p->compat_bilateral > 0},
    };
    for (int k = 0; k < 3; k++) {
        if (!(sd[k].v > 0.0f && isfinite(sd[k].v)))
            return dm_fail(DM_ERR_VALUE, "crf: %s = %g: need a finite value > 0", sd[k].name, (double)sd[k].v);
        if (sd[k].used && sd[k].range / sd[k].v > CRF_MAX_FEATURE)
            return dm_fail(DM_ERR_VALUE, "crf: %s = %g is too small: %g / %s must be <= %g", sd[k].name,
                           (double)sd[k].v, sd[k].range, sd[k].name, (double)CRF_MAX_FEATURE);
    }
    return DM_OK;
}

dm_status crf_inference(float *q_out, const float *probs, const uint8_t *image, int64_t h, int64_t w,
                        int64_t C, const crf_params *p) {
    DM_TRY(check_params(p, h, w, C));
    const int64_t n = h * w;
    if (p->compat_bilateral > 0 && !image) return dm_fail(DM_ERR_VALUE, "crf: the bilateral kernel needs an image");
    dm_threads_enter();

    int64_t bad = INT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : bad)
    for (int64_t e = 0; e < n * C; e++)
        if (!(probs[e] >= 0.0f && probs[e] <= 1.0f) && e < bad) bad = e;
    if (bad != INT64_MAX)
        return dm_fail(DM_ERR_VALUE, "crf: probs[%lld, %lld, %lld] = %g: probabilities must lie in [0, 1]",
                       (long long)(bad / C / w), (long long)(bad / C % w), (long long)(bad % C),
                       (double)probs[bad]);

    /* Q_0 = softmax(-unary) */
    {
        float *zero = dm_calloc((size_t)C, sizeof(float), "crf scratch"); /* no messages yet */
        if (!zero) return DM_ERR_NOMEM;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) pixel_update(q_out + i * C, probs + i * C, zero, C, p->clip);
        dm_free(zero);
    }
    int nk = 0;
    float compat[2];
    feature_src src[2];
    if (p->compat_gaussian > 0) {
        src[nk] = (feature_src){.w = w, .sxy = p->sxy_gaussian, .d = 2};
        compat[nk++] = p->compat_gaussian;
    }
    if (p->compat_bilateral > 0) {
        src[nk] = (feature_src){.w = w, .image = image, .sxy = p->sxy_bilateral, .srgb = p->srgb, .d = 5};
        compat[nk++] = p->compat_bilateral;
    }
    if (nk == 0 || p->iterations == 0) return DM_OK;

    lattice L[2];
    memset(L, 0, sizeof L);
    float *vals[2] = {NULL, NULL}, *scratch = NULL, *acc = NULL, *norm = NULL;
    dm_status st = DM_OK;
    int32_t max_m = 0;
    for (int k = 0; k < nk && st == DM_OK; k++) {
        st = lattice_build(&L[k], &src[k], n);
        if (st == DM_OK && L[k].m > max_m) max_m = L[k].m;
    }
    if (st != DM_OK) goto done;

    /* symmetric normalisation: n(i) = 1 / sqrt(sum_j k(i, j)), the filter of ones; then fold
     * n into the splat weights and alpha * n * compat into the slice weights */
    norm = dm_alloc((size_t)n, sizeof(float), "crf normalisation");
    float *ones = dm_alloc((size_t)n, sizeof(float), "crf normalisation");
    float *va = dm_alloc((size_t)max_m + 1, sizeof(float), "crf normalisation");
    float *vb = dm_alloc((size_t)max_m + 1, sizeof(float), "crf normalisation");
    if (!norm || !ones || !va || !vb) st = DM_ERR_NOMEM;
    for (int k = 0; k < nk && st == DM_OK; k++) {
        const int dp1 = L[k].d + 1;
        for (int64_t i = 0; i < n; i++) ones[i] = 1.0f;
        lattice_filter_raw(&L[k], norm, ones, va, vb, 1);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) norm[i] = (float)(1.0 / sqrt((double)norm[i] + 1e-20));
        const float fold = slice_alpha(L[k].d) * compat[k];
#pragma omp parallel for schedule(static)
        for (int64_t e = 0; e < n * dp1; e++) {
            L[k].splat_w[e] *= norm[L[k].splat_pixel[e]];
            L[k].slice_w[e] *= fold * norm[e / dp1];
        }
    }
    dm_free(ones);
    dm_free(va);
    dm_free(vb);
    if (st != DM_OK) goto done;

    for (int k = 0; k < nk; k++) {
        vals[k] = dm_alloc(((size_t)L[k].m + 1) * C, sizeof(float), "crf lattice values");
        if (!vals[k]) { st = DM_ERR_NOMEM; goto done; }
    }
    scratch = dm_alloc(((size_t)max_m + 1) * C, sizeof(float), "crf lattice values");
    acc = dm_alloc((size_t)omp_get_max_threads() * C, sizeof(float), "crf scratch");
    if (!scratch || !acc) { st = DM_ERR_NOMEM; goto done; }

    for (int it = 0; it < p->iterations; it++) {
        /* message passing from the current Q; the result of kernel k ends in vals[k] */
        for (int k = 0; k < nk; k++) {
            if ((L[k].d + 1) % 2) {
                lattice_splat(&L[k], q_out, scratch, C);
                lattice_blur(&L[k], scratch, vals[k], C);
            } else {
                lattice_splat(&L[k], q_out, vals[k], C);
                lattice_blur(&L[k], vals[k], scratch, C);
            }
        }
        /* slice every kernel's messages into Q's pixel and update it in place */
        const int nb = fused_blocks(C);
#pragma omp parallel
        {
            float *a = acc + (int64_t)omp_get_thread_num() * C;
#pragma omp for schedule(dynamic, 512)
            for (int64_t i = 0; i < n; i++) {
                float *qi = q_out + i * C;
                const float *pi = probs + i * C;
                switch (nb) {
#if defined(__AVX512F__)
                case 2: slice_update_regs(2, qi, pi, C, L, vals, nk, i, p->clip); break;
                case 4: slice_update_regs(4, qi, pi, C, L, vals, nk, i, p->clip); break;
                case 8: slice_update_regs(8, qi, pi, C, L, vals, nk, i, p->clip); break;
                case 12: slice_update_regs(12, qi, pi, C, L, vals, nk, i, p->clip); break;
                case 16: slice_update_regs(16, qi, pi, C, L, vals, nk, i, p->clip); break;
#endif
                default:
                    for (int k = 0; k < nk; k++) {
                        const int dp1 = L[k].d + 1;
                        gather_acc(a, vals[k], C, L[k].offset + i * dp1, L[k].slice_w + i * dp1, dp1, k > 0);
                    }
                    pixel_update(qi, pi, a, C, p->clip);
                }
            }
        }
    }
done:
    for (int k = 0; k < 2; k++) {
        lattice_free(&L[k]);
        dm_free(vals[k]);
    }
    dm_free(scratch);
    dm_free(acc);
    dm_free(norm);
    return st;
}
