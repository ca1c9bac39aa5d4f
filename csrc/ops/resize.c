#include "ops/resize.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "core/alloc.h"

static inline float aa_triangle(float x) {
    x = fabsf(x);
    return x < 1.0f ? 1.0f - x : 0.0f;
}

dm_status resize_axis_init(dm_resize_axis *ax, int64_t n_in, int64_t n_out) {
    memset(ax, 0, sizeof *ax);
    if (n_in <= 0 || n_out <= 0)
        return dm_fail(DM_ERR_VALUE, "resize: sizes must be positive (in %lld, out %lld)",
                       (long long)n_in, (long long)n_out);
    /* f32 arithmetic in PyTorch's order (scale = in / out, support = scale when
     * shrinking, else 1; center = scale * (i + 0.5); taps start at
     * trunc(center - support + 0.5)). */
    const float scale = (float)n_in / (float)n_out;
    const float support = scale >= 1.0f ? scale : 1.0f;
    const float invscale = scale >= 1.0f ? 1.0f / scale : 1.0f;
    const int64_t taps = (int64_t)ceilf(support) * 2 + 1;
    ax->n_out = n_out;
    ax->taps = taps;
    ax->start = dm_alloc((size_t)n_out, sizeof(int64_t), "resize taps");
    ax->size = dm_alloc((size_t)n_out, sizeof(int64_t), "resize taps");
    ax->w = dm_calloc((size_t)n_out * (size_t)taps, sizeof(float), "resize weights");
    if (!ax->start || !ax->size || !ax->w) {
        resize_axis_free(ax);
        return DM_ERR_NOMEM;
    }
    for (int64_t i = 0; i < n_out; i++) {
        const float center = scale * ((float)i + 0.5f);
        int64_t lo = (int64_t)(center - support + 0.5f);
        if (lo < 0) lo = 0;
        int64_t hi = (int64_t)(center + support + 0.5f);
        if (hi > n_in) hi = n_in;
        int64_t size = hi - lo;
        if (size > taps) size = taps;
        if (size < 0) size = 0;
        float *w = ax->w + i * taps, total = 0.0f;
        for (int64_t j = 0; j < size; j++) {
            w[j] = aa_triangle(((float)(j + lo) - center + 0.5f) * invscale);
            total += w[j];
        }
        if (total != 0.0f)
            for (int64_t j = 0; j < size; j++) w[j] /= total;
        ax->start[i] = lo;
        ax->size[i] = size;
    }
    return DM_OK;
}

void resize_axis_free(dm_resize_axis *ax) {
    dm_free(ax->start);
    dm_free(ax->size);
    dm_free(ax->w);
    memset(ax, 0, sizeof *ax);
}

dm_status resize_bilinear_aa_u8(float *out, const uint8_t *in, int64_t H, int64_t W, int64_t C,
                                int64_t stride_h, int64_t stride_w, int64_t stride_c, int64_t OH,
                                int64_t OW, float mul, float add) {
    if (H <= 0 || W <= 0 || C <= 0 || OH <= 0 || OW <= 0)
        return dm_fail(DM_ERR_VALUE, "resize: empty image (%lld x %lld x %lld -> %lld x %lld)",
                       (long long)H, (long long)W, (long long)C, (long long)OH, (long long)OW);
    dm_resize_axis ay, ax;
    DM_TRY(resize_axis_init(&ay, H, OH));
    dm_status st = resize_axis_init(&ax, W, OW);
    if (st != DM_OK) {
        resize_axis_free(&ay);
        return st;
    }
    int nt = omp_get_max_threads();
    float *rows = dm_alloc((size_t)nt * (size_t)W, (size_t)C * sizeof(float), "resize row buffer");
    if (!rows) {
        resize_axis_free(&ay);
        resize_axis_free(&ax);
        return DM_ERR_NOMEM;
    }
    /* Vertical taps first into one f32 row (streams the input once per tap),
     * then horizontal taps. The sum is the same bilinear form as PyTorch's
     * horizontal-then-vertical passes; only f32 rounding order differs. */
#pragma omp parallel num_threads(nt)
    {
        float *row = rows + (size_t)omp_get_thread_num() * (size_t)W * (size_t)C;
#pragma omp for schedule(static)
        for (int64_t oy = 0; oy < OH; oy++) {
            const float *wy = ay.w + oy * ay.taps;
            memset(row, 0, (size_t)W * (size_t)C * sizeof(float));
            for (int64_t t = 0; t < ay.size[oy]; t++) {
                const uint8_t *src = in + (ay.start[oy] + t) * stride_h;
                const float w = wy[t];
                if (stride_c == 1 && stride_w == C) {
#pragma omp simd
                    for (int64_t i = 0; i < W * C; i++) row[i] += w * (float)src[i];
                } else {
                    for (int64_t x = 0; x < W; x++)
                        for (int64_t c = 0; c < C; c++)
                            row[x * C + c] += w * (float)src[x * stride_w + c * stride_c];
                }
            }
            float *o = out + oy * OW * C;
            for (int64_t ox = 0; ox < OW; ox++) {
                const float *wx = ax.w + ox * ax.taps;
                const float *r = row + ax.start[ox] * C;
                for (int64_t c = 0; c < C; c++) {
                    float s = 0.0f;
                    for (int64_t t = 0; t < ax.size[ox]; t++) s += wx[t] * r[t * C + c];
                    o[ox * C + c] = s * mul + add;
                }
            }
        }
    }
    dm_free(rows);
    resize_axis_free(&ay);
    resize_axis_free(&ax);
    return DM_OK;
}
