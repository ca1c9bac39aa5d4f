/* Rotary position embeddings (1D part: language model). See rope.h. */
#include "ops/rope.h"

#include <math.h>
#include <stdlib.h>

static double yarn_get_mscale(double scale, double mscale) {
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

static double yarn_correction_dim(double n_rot, int dim, double base, double max_pos) {
    return (dim * log(max_pos / (n_rot * 2.0 * M_PI))) / (2.0 * log(base));
}

dm_status rope1d_init(const dm_rope1d_params *p, int dim, float *inv_freq, float *attn_factor) {
    if (dim <= 0 || dim % 2)
        return dm_fail(DM_ERR_VALUE, "rope: rotary dim must be even and positive, got %d", dim);
    if (dim > 1024) /* rope1d_forward keeps per-token tables on the stack */
        return dm_fail(DM_ERR_VALUE, "rope: rotary dim %d exceeds the supported 1024", dim);
    if (!(p->theta > 0))
        return dm_fail(DM_ERR_VALUE, "rope: rope_theta must be positive, got %g", p->theta);
    int half = dim / 2;
    if (!p->yarn) {
        /* float32 arithmetic like torch: 1 / base ** (arange(0, dim, 2) / dim) */
        for (int i = 0; i < half; i++) {
            float e = (float)(2 * i) / (float)dim;
            inv_freq[i] = (float)(1.0 / (double)powf((float)p->theta, e));
        }
        *attn_factor = 1.0f;
        return DM_OK;
    }
    if (!(p->factor > 0) || !(p->original_max_pos > 0))
        return dm_fail(DM_ERR_VALUE, "rope: yarn needs factor > 0 and original_max_position_embeddings > 0");
    double beta_fast = p->beta_fast ? p->beta_fast : 32.0;
    double beta_slow = p->beta_slow ? p->beta_slow : 1.0;
    double low = yarn_correction_dim(beta_fast, dim, p->theta, p->original_max_pos);
    double high = yarn_correction_dim(beta_slow, dim, p->theta, p->original_max_pos);
    if (p->truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001; /* transformers: avoid a zero-width ramp */
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)dim;
        float pos_freq = powf((float)p->theta, e);
        float extrap = 1.0f / pos_freq;
        float interp = 1.0f / ((float)p->factor * pos_freq);
        float ramp = (float)(((float)i - (float)low) / (float)(high - low));
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float ef = 1.0f - ramp; /* share of extrapolation (high frequencies kept) */
        inv_freq[i] = interp * (1.0f - ef) + extrap * ef;
    }
    double af = p->attention_factor;
    if (!af) {
        if (p->mscale && p->mscale_all_dim)
            af = yarn_get_mscale(p->factor, p->mscale) / yarn_get_mscale(p->factor, p->mscale_all_dim);
        else
            af = yarn_get_mscale(p->factor, 1.0);
    }
    *attn_factor = (float)af;
    return DM_OK;
}

float rope1d_softmax_scale(const dm_rope1d_params *p, int qk_head_dim) {
    double s = pow((double)qk_head_dim, -0.5);
    if (p->yarn && p->mscale_all_dim) {
        double m = yarn_get_mscale(p->factor, p->mscale_all_dim);
        s *= m * m;
    }
    return (float)s;
}

/* cos/sin of token position pos in float32 like torch (freq = float(pos) *
 * inv_freq), times the attention factor. */
static inline void rope1d_angles(float *cs, float *sn, int64_t pos, int half, const float *inv_freq,
                                 float attn_factor) {
    const float p = (float)pos;
    for (int i = 0; i < half; i++) {
        float f = p * inv_freq[i];
        cs[i] = (float)cos((double)f) * attn_factor;
        sn[i] = (float)sin((double)f) * attn_factor;
    }
}

void rope1d_forward(float *x, int64_t T, int64_t n_heads, int64_t row_stride, int64_t head_stride,
                    int dim, int64_t pos0, const float *inv_freq, float attn_factor, int interleave) {
    const int half = dim / 2;
    #pragma omp parallel for schedule(static) if (T * n_heads > 64)
    for (int64_t t = 0; t < T; t++) {
        float cs[512], sn[512];
        float buf[1024];
        rope1d_angles(cs, sn, pos0 + t, half, inv_freq, attn_factor);
        for (int64_t h = 0; h < n_heads; h++) {
            float *v = x + t * row_stride + h * head_stride;
            if (interleave) {
                for (int i = 0; i < half; i++) {
                    float a = v[2 * i], b = v[2 * i + 1];
                    buf[i] = a * cs[i] - b * sn[i];
                    buf[half + i] = b * cs[i] + a * sn[i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float a = v[i], b = v[half + i];
                    buf[i] = a * cs[i] - b * sn[i];
                    buf[half + i] = b * cs[i] + a * sn[i];
                }
            }
            for (int i = 0; i < dim; i++) v[i] = buf[i];
        }
    }
}

void rope1d_backward(float *dx, int64_t T, int64_t n_heads, int64_t row_stride, int64_t head_stride,
                     int dim, int64_t pos0, const float *inv_freq, float attn_factor, int interleave) {
    const int half = dim / 2;
    #pragma omp parallel for schedule(static) if (T * n_heads > 64)
    for (int64_t t = 0; t < T; t++) {
        float cs[512], sn[512];
        float buf[1024];
        rope1d_angles(cs, sn, pos0 + t, half, inv_freq, attn_factor);
        for (int64_t h = 0; h < n_heads; h++) {
            float *v = dx + t * row_stride + h * head_stride;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[half + i]; /* dy of the rotated pair */
                float da = a * cs[i] + b * sn[i], db = b * cs[i] - a * sn[i];
                if (interleave) {
                    buf[2 * i] = da;
                    buf[2 * i + 1] = db;
                } else {
                    buf[i] = da;
                    buf[half + i] = db;
                }
            }
            for (int i = 0; i < dim; i++) v[i] = buf[i];
        }
    }
}

/* ---- 2D rope (vision) ---- */

void rope2d_tables(float *cos_t, float *sin_t, const int32_t *rows, const int32_t *cols, int64_t n,
                   int head_dim, float theta) {
    const int half = head_dim / 2, nq = head_dim / 4;
    float inv_freq[512];
    /* f32 like transformers: 1 / theta^(2j/half); head_dim <= 2048 checked by callers */
    for (int j = 0; j < nq && j < 512; j++)
        inv_freq[j] = (float)(1.0 / pow((double)theta, (double)(2 * j) / (double)half));
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int j = 0; j < nq; j++) {
            float a = (float)rows[t] * inv_freq[j], b = (float)cols[t] * inv_freq[j];
            c[j] = cosf(a);
            s[j] = sinf(a);
            c[nq + j] = cosf(b);
            s[nq + j] = sinf(b);
        }
    }
}

void rope2d_forward(float *x, int64_t n, int64_t n_heads, int64_t row_stride, int head_dim,
                    const float *cos_t, const float *sin_t) {
    const int half = head_dim / 2;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *v = x + t * row_stride + h * head_dim;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

void rope2d_backward(float *dx, int64_t n, int64_t n_heads, int64_t row_stride, int head_dim,
                     const float *cos_t, const float *sin_t) {
    const int half = head_dim / 2;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *v = dx + t * row_stride + h * head_dim;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float g1 = v[i], g2 = v[i + half];
                v[i] = g1 * c[i] + g2 * s[i];
                v[i + half] = g2 * c[i] - g1 * s[i];
            }
        }
    }
}
