#include "ops/resize.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "core/alloc.h"

static inline double aa_triangle(double x) {
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

dm_status resize_axis_init(dm_resize_axis *ax, int64_t n_in, int64_t n_out) {
    memset(ax, 0, sizeof *ax);
    if (n_in <= 0 || n_out <= 0)
        return dm_fail(DM_ERR_VALUE, "resize: sizes must be positive (in %lld, out %lld)",
                       (long long)n_in, (long long)n_out);
    /* Double arithmetic in PyTorch's order: scale = in / out; support = scale when
     * shrinking, else 1; center = scale * (i + 0.5); taps start at
     * trunc(center - support + 0.5). */
    const double scale = (double)n_in / (double)n_out;
    const double support = scale >= 1.0 ? scale : 1.0;
    const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    const int64_t taps = (int64_t)ceil(support) * 2 + 1;
    ax->n_out = n_out;
    ax->taps = taps;
    ax->start = dm_alloc((size_t)n_out, sizeof(int64_t), "resize taps");
    ax->size = dm_alloc((size_t)n_out, sizeof(int64_t), "resize taps");
    ax->w = dm_calloc((size_t)n_out * (size_t)taps, sizeof(int16_t), "resize weights");
    double *wf = dm_calloc((size_t)n_out * (size_t)taps, sizeof(double), "resize weights");
    if (!ax->start || !ax->size || !ax->w || !wf) {
        dm_free(wf);
        resize_axis_free(ax);
        return DM_ERR_NOMEM;
    }
    double wt_max = 0.0;
    for (int64_t i = 0; i < n_out; i++) {
        const double center = scale * ((double)i + 0.5);
        int64_t lo = (int64_t)(center - support + 0.5);
        if (lo < 0) lo = 0;
        int64_t hi = (int64_t)(center + support + 0.5);
        if (hi > n_in) hi = n_in;
        int64_t size = hi - lo;
        if (size > taps) size = taps;
        if (size < 0) size = 0;
        double *w = wf + i * taps, total = 0.0;
        for (int64_t j = 0; j < size; j++) {
            w[j] = aa_triangle(((double)(j + lo) - center + 0.5) * invscale);
            total += w[j];
        }
        if (total != 0.0)
            for (int64_t j = 0; j < size; j++) {
                w[j] /= total;
                if (w[j] > wt_max) wt_max = w[j];
            }
        ax->start[i] = lo;
        ax->size[i] = size;
    }
    /* The most bits (<= 22) for which the largest weight still fits int16. */
    int p;
    for (p = 0; p < 22; p++)
        if ((int)(0.5 + wt_max * (double)(1 << (p + 1))) >= (1 << 15)) break;
    ax->precision = p;
    for (int64_t k = 0; k < n_out * taps; k++) {
        const double v = wf[k] * (double)(1 << p);
        ax->w[k] = (int16_t)(v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v));
    }
    dm_free(wf);
    return DM_OK;
}

void resize_axis_free(dm_resize_axis *ax) {
    dm_free(ax->start);
    dm_free(ax->size);
    dm_free(ax->w);
    memset(ax, 0, sizeof *ax);
}

/* One output value: taps of `ax` for output `o` over `s` (byte stride `sa` along the
 * axis), PyTorch's fixed-point sum: (acc + 2^(p-1)) >> p, clamped to 0..255. */
static inline uint8_t tap_sum(const dm_resize_axis *ax, int64_t o, const uint8_t *s, int64_t sa) {
    const int16_t *w = ax->w + o * ax->taps;
    const int64_t n = ax->size[o];
    int acc = ax->precision > 0 ? 1 << (ax->precision - 1) : 0;
    for (int64_t t = 0; t < n; t++) acc += (int)s[t * sa] * (int)w[t];
    acc >>= ax->precision;
    return (uint8_t)(acc < 0 ? 0 : acc > 255 ? 255 : acc);
}

static inline uint8_t clamp_shift(int acc, int p) {
    acc >>= p;
    return (uint8_t)(acc < 0 ? 0 : acc > 255 ? 255 : acc);
}

/* Horizontal pass: dst [H][OW][C] contiguous from src rows (strides sh, sw, sc). */
static void pass_horizontal(uint8_t *dst, const uint8_t *src, const dm_resize_axis *ax, int64_t H,
                            int64_t C, int64_t sh, int64_t sw, int64_t sc) {
    const int64_t OW = ax->n_out;
    const int p = ax->precision, rnd = p > 0 ? 1 << (p - 1) : 0;
#pragma omp parallel for schedule(static)
    for (int64_t y = 0; y < H; y++)
        for (int64_t ox = 0; ox < OW; ox++) {
            const uint8_t *s = src + y * sh + ax->start[ox] * sw;
            uint8_t *d = dst + (y * OW + ox) * C;
            if (C == 3) { /* RGB: the three sums in one pass over the taps */
                const int16_t *w = ax->w + ox * ax->taps;
                int a0 = rnd, a1 = rnd, a2 = rnd;
                for (int64_t t = 0; t < ax->size[ox]; t++) {
                    const uint8_t *q = s + t * sw;
                    a0 += (int)q[0] * w[t];
                    a1 += (int)q[sc] * w[t];
                    a2 += (int)q[2 * sc] * w[t];
                }
                d[0] = clamp_shift(a0, p);
                d[1] = clamp_shift(a1, p);
                d[2] = clamp_shift(a2, p);
            } else {
                for (int64_t c = 0; c < C; c++) d[c] = tap_sum(ax, ox, s + c * sc, sw);
            }
        }
}

/* Vertical pass: dst [OH][W][C] contiguous from src (strides sh, sw, sc). Contiguous
 * rows (the intermediate) are summed a whole row per tap into int32 accumulators. */
static dm_status pass_vertical(uint8_t *dst, const uint8_t *src, const dm_resize_axis *ay, int64_t W,
                               int64_t C, int64_t sh, int64_t sw, int64_t sc) {
    const int64_t OH = ay->n_out, n = W * C;
    const int p = ay->precision, rnd = p > 0 ? 1 << (p - 1) : 0;
    if (sw != C || sc != 1) {
#pragma omp parallel for schedule(static)
        for (int64_t oy = 0; oy < OH; oy++) {
            const uint8_t *row = src + ay->start[oy] * sh;
            for (int64_t x = 0; x < W; x++)
                for (int64_t c = 0; c < C; c++) dst[(oy * W + x) * C + c] = tap_sum(ay, oy, row + x * sw + c * sc, sh);
        }
        return DM_OK;
    }
    const int nt = omp_get_max_threads();
    int32_t *accs = dm_alloc((size_t)nt * (size_t)n, sizeof(int32_t), "resize accumulators");
    if (!accs) return DM_ERR_NOMEM;
#pragma omp parallel num_threads(nt)
    {
        int32_t *acc = accs + (size_t)omp_get_thread_num() * (size_t)n;
#pragma omp for schedule(static)
        for (int64_t oy = 0; oy < OH; oy++) {
            const int16_t *w = ay->w + oy * ay->taps;
            for (int64_t i = 0; i < n; i++) acc[i] = rnd;
            for (int64_t t = 0; t < ay->size[oy]; t++) {
                const uint8_t *row = src + (ay->start[oy] + t) * sh;
                const int32_t wt = w[t];
#pragma omp simd
                for (int64_t i = 0; i < n; i++) acc[i] += (int32_t)row[i] * wt;
            }
            uint8_t *d = dst + oy * n;
            for (int64_t i = 0; i < n; i++) d[i] = clamp_shift(acc[i], p);
        }
    }
    dm_free(accs);
    return DM_OK;
}

dm_status resize_bilinear_aa_u8(uint8_t *out, const uint8_t *in, int64_t H, int64_t W, int64_t C,
                                int64_t stride_h, int64_t stride_w, int64_t stride_c, int64_t OH,
                                int64_t OW) {
    if (H <= 0 || W <= 0 || C <= 0 || OH <= 0 || OW <= 0)
        return dm_fail(DM_ERR_VALUE, "resize: empty image (%lld x %lld x %lld -> %lld x %lld)",
                       (long long)H, (long long)W, (long long)C, (long long)OH, (long long)OW);
    const int horizontal = OW != W, vertical = OH != H;
    if (!horizontal && !vertical) { /* PyTorch copies: the identity weights would too */
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++)
                for (int64_t c = 0; c < C; c++)
                    out[(y * W + x) * C + c] = in[y * stride_h + x * stride_w + c * stride_c];
        return DM_OK;
    }
    dm_resize_axis ax = {0}, ay = {0};
    uint8_t *tmp = NULL;
    dm_status st = DM_OK;
    if (horizontal) {
        st = resize_axis_init(&ax, W, OW);
        if (st != DM_OK) goto done;
        /* horizontal first, into `out` when it is the only pass */
        uint8_t *dst = out;
        if (vertical) {
            tmp = dm_alloc((size_t)H * (size_t)OW, (size_t)C, "resize intermediate");
            if (!tmp) {
                st = DM_ERR_NOMEM;
                goto done;
            }
            dst = tmp;
        }
        pass_horizontal(dst, in, &ax, H, C, stride_h, stride_w, stride_c);
    }
    if (vertical) {
        st = resize_axis_init(&ay, H, OH);
        if (st != DM_OK) goto done;
        const uint8_t *src = horizontal ? tmp : in;
        const int64_t sh = horizontal ? OW * C : stride_h, sw = horizontal ? C : stride_w,
                      sc = horizontal ? 1 : stride_c;
        st = pass_vertical(out, src, &ay, OW, C, sh, sw, sc);
    }
done:
    dm_free(tmp);
    resize_axis_free(&ax);
    resize_axis_free(&ay);
    return st;
}
