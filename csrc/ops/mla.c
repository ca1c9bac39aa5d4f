/* Absorbed MLA attention for decode (see mla.h).
 *
 * The AVX-512 path register-blocks 4 query rows x 4 keys for the scores and
 * 4 rows x 64 latent columns for the value sum, reading each cached row once
 * per key block for all rows; other CPUs get plain loops. */
#include "ops/mla.h"

#include <math.h>
#include <string.h>

#include "core/alloc.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include "ops/vmath.h"
#define DM_MLA_AVX512 1
#endif

#define KB DM_MLA_KEY_BLOCK

#ifdef DM_MLA_AVX512
static inline __mmask16 lanes(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}
#endif

static dm_status mla_check(const dm_tensor *kv_b, const dm_mla_args *a) {
    if (a->T < 1 || a->Tk < a->T || a->H < 1 || a->hpg < 1 || a->H % a->hpg || a->C < 1 || a->R < 0 || a->nope < 0 ||
        a->vdim < 1)
        return dm_fail(DM_ERR_VALUE, "mla: invalid sizes (T=%lld Tk=%lld H=%d hpg=%d C=%d R=%d)", (long long)a->T,
                       (long long)a->Tk, a->H, a->hpg, a->C, a->R);
    if (kv_b) {
        const int64_t G = a->H / a->hpg;
        if (kv_b->ndim != 2 || kv_b->shape[0] != G * (a->nope + a->vdim) || kv_b->shape[1] != a->C)
            return dm_fail(DM_ERR_VALUE, "mla: kv_b shape [%lld, %lld], expected [%lld, %d]", (long long)kv_b->shape[0],
                           (long long)kv_b->shape[1], (long long)(G * (a->nope + a->vdim)), a->C);
        if (kv_b->dtype != DM_F32 && kv_b->dtype != DM_BF16)
            return dm_fail(DM_ERR_TYPE, "mla: kv_b dtype %s (f32 or bf16 expected)", dm_dtype_name(kv_b->dtype));
    }
    return DM_OK;
}

/* ---- q absorption: qa[t,h,:C] = sum_d q[t,h,d] W_UK[g][d,:] ---- */

#define QCHUNK 256 /* latent columns per work item: 16 zmm accumulators */

dm_status mla_absorb_q_forward(float *qa, const float *q, const dm_tensor *kv_b, const dm_mla_args *a) {
    DM_TRY(mla_check(kv_b, a));
    const int64_t H = a->H, C = a->C, R = a->R, nope = a->nope, nv = a->nope + a->vdim, qk = nope + R, D = C + R;
    const int is_bf16 = kv_b->dtype == DM_BF16;
    const size_t esz = is_bf16 ? 2 : 4;
    const int64_t chunks = (C + QCHUNK - 1) / QCHUNK, items = a->T * H * chunks;
    #pragma omp parallel for schedule(static) if (items * nope * QCHUNK > 65536)
    for (int64_t it = 0; it < items; it++) {
        const int64_t th = it / chunks, c0 = (it % chunks) * QCHUNK, h = th % H;
        const int64_t cn = C - c0 < QCHUNK ? C - c0 : QCHUNK;
        const float *qh = q + th * qk;
        float *dst = qa + th * D;
        const char *wg = (const char *)kv_b->data + (size_t)((h / a->hpg) * nv * C) * esz;
#ifdef DM_MLA_AVX512
        __m512 acc[QCHUNK / 16];
        __mmask16 mk[QCHUNK / 16];
        const int nvec = (int)((cn + 15) / 16);
        for (int v = 0; v < QCHUNK / 16; v++) {
            acc[v] = _mm512_setzero_ps();
            mk[v] = v < nvec ? lanes(cn - 16 * v) : 0;
        }
        for (int64_t d = 0; d < nope; d++) {
            const __m512 qd = _mm512_set1_ps(qh[d]);
            const char *wr = wg + (size_t)(d * C + c0) * esz;
            if (cn == QCHUNK) {
                for (int v = 0; v < QCHUNK / 16; v++)
                    acc[v] = _mm512_fmadd_ps(qd, dm_load16_f32(wr + (size_t)(16 * v) * esz, is_bf16), acc[v]);
            } else {
                for (int v = 0; v < nvec; v++)
                    acc[v] = _mm512_fmadd_ps(qd, dm_load16_f32_mask(wr + (size_t)(16 * v) * esz, is_bf16, mk[v]),
                                             acc[v]);
            }
        }
        for (int v = 0; v < nvec; v++) _mm512_mask_storeu_ps(dst + c0 + 16 * v, mk[v], acc[v]);
#else
        for (int64_t c = 0; c < cn; c++) dst[c0 + c] = 0;
        for (int64_t d = 0; d < nope; d++) {
            const float qd = qh[d];
            const char *wr = wg + (size_t)(d * C + c0) * esz;
            for (int64_t c = 0; c < cn; c++)
                dst[c0 + c] += qd * (is_bf16 ? dm_bf16_to_f32(((const uint16_t *)wr)[c]) : ((const float *)wr)[c]);
        }
#endif
        if (c0 == 0) memcpy(dst + C, qh + nope, (size_t)R * sizeof(float));
    }
    return DM_OK;
}

/* ---- latent attention ---- */

/* Per key block: acc [n][C], m [n], l [n], S [n][KB] (floats). */
static int64_t block_floats(int64_t n, int64_t C) { return n * (C + 2 + KB); }

size_t mla_latent_attention_workspace_bytes(const dm_mla_args *a) {
    const int64_t n = a->T * a->H, blocks = (a->Tk + KB - 1) / KB;
    return (size_t)(blocks * block_floats(n, a->C)) * sizeof(float);
}

#ifdef DM_MLA_AVX512
/* S[r][j] = qa_r . c_j for rows r0..r0+3 and keys j0..j0+3 (clamped duplicates
 * are computed but not stored). */
static inline void scores_4x4(float *S, const float *qa, const float *kc, int64_t D, int64_t n, int64_t r0,
                              int64_t nk, int64_t j0) {
    const float *qr[4], *kr[4];
    for (int i = 0; i < 4; i++) {
        qr[i] = qa + (r0 + i < n ? r0 + i : r0) * D;
        kr[i] = kc + (j0 + i < nk ? j0 + i : j0) * D;
    }
    __m512 c[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) c[i][j] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
        const __mmask16 mk = lanes(D - d);
        __m512 kv[4];
        for (int j = 0; j < 4; j++) kv[j] = _mm512_maskz_loadu_ps(mk, kr[j] + d);
        for (int i = 0; i < 4; i++) {
            const __m512 qv = _mm512_maskz_loadu_ps(mk, qr[i] + d);
            for (int j = 0; j < 4; j++) c[i][j] = _mm512_fmadd_ps(qv, kv[j], c[i][j]);
        }
    }
    for (int i = 0; i < 4 && r0 + i < n; i++)
        for (int j = 0; j < 4 && j0 + j < nk; j++) S[(r0 + i) * KB + j0 + j] = _mm512_reduce_add_ps(c[i][j]);
}

/* acc[r][c0..c0+64) = sum_j P[r][j] latent_j[c0..] for rows r0..r0+3. */
static inline void values_4x64(float *acc, const float *P, const float *kc, int64_t D, int64_t C, int64_t n,
                               int64_t r0, int64_t nk, int64_t c0) {
    __mmask16 mk[4];
    for (int v = 0; v < 4; v++) mk[v] = c0 + 16 * v < C ? lanes(C - c0 - 16 * v) : 0;
    const int nr = n - r0 < 4 ? (int)(n - r0) : 4;
    __m512 o[4][4];
    for (int i = 0; i < 4; i++)
        for (int v = 0; v < 4; v++) o[i][v] = _mm512_setzero_ps();
    for (int64_t j = 0; j < nk; j++) {
        const float *row = kc + j * D + c0;
        __m512 x[4];
        for (int v = 0; v < 4; v++) x[v] = _mm512_maskz_loadu_ps(mk[v], row + 16 * v);
        for (int i = 0; i < nr; i++) {
            const __m512 p = _mm512_set1_ps(P[(r0 + i) * KB + j]);
            for (int v = 0; v < 4; v++) o[i][v] = _mm512_fmadd_ps(p, x[v], o[i][v]);
        }
    }
    for (int i = 0; i < nr; i++)
        for (int v = 0; v < 4; v++) _mm512_mask_storeu_ps(acc + (r0 + i) * C + c0 + 16 * v, mk[v], o[i][v]);
}
#endif

/* One key block: partial softmax state of every row. */
static void latent_block(float *blk, const float *qa, const float *cache, const dm_mla_args *a, int64_t b) {
    const int64_t n = a->T * a->H, C = a->C, D = C + a->R, kb = b * KB;
    const int64_t nk = a->Tk - kb < KB ? a->Tk - kb : KB;
    float *acc = blk, *m = acc + n * C, *l = m + n, *S = l + n;
    const float *kc = cache + kb * D;
#ifdef DM_MLA_AVX512
    for (int64_t r0 = 0; r0 < n; r0 += 4)
        for (int64_t j0 = 0; j0 < nk; j0 += 4) scores_4x4(S, qa, kc, D, n, r0, nk, j0);
#else
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < nk; j++) {
            float s = 0;
            for (int64_t d = 0; d < D; d++) s += qa[r * D + d] * kc[j * D + d];
            S[r * KB + j] = s;
        }
#endif
    for (int64_t r = 0; r < n; r++) {
        const int64_t t = r / a->H, limit = a->Tk - a->T + t + 1; /* keys < limit visible */
        int64_t vis = limit - kb;
        vis = vis < 0 ? 0 : vis > nk ? nk : vis;
        float *s = S + r * KB, mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < vis; j++) mx = fmaxf(mx, s[j] * a->scale);
        int64_t j = 0;
#ifdef DM_MLA_AVX512
        const __m512 vs = _mm512_set1_ps(a->scale), vm = _mm512_set1_ps(mx);
        __m512 vsum = _mm512_setzero_ps();
        for (; vis > 0 && j < nk; j += 16) {
            const __mmask16 mk = lanes(nk - j), mv = j < vis ? lanes(vis - j) : 0;
            __m512 p = _mm512_maskz_mov_ps(mv, dm_exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mk, s + j), vs, vm)));
            _mm512_mask_storeu_ps(s + j, mk, p);
            vsum = _mm512_add_ps(vsum, p);
        }
        sum = _mm512_reduce_add_ps(vsum);
#endif
        for (; j < nk; j++) {
            const float p = j < vis ? expf(s[j] * a->scale - mx) : 0.0f;
            s[j] = p;
            sum += p;
        }
        m[r] = mx;
        l[r] = sum;
    }
#ifdef DM_MLA_AVX512
    for (int64_t c0 = 0; c0 < C; c0 += 64)
        for (int64_t r0 = 0; r0 < n; r0 += 4) values_4x64(acc, S, kc, D, C, n, r0, nk, c0);
#else
    for (int64_t r = 0; r < n; r++) {
        float *o = acc + r * C;
        for (int64_t c = 0; c < C; c++) o[c] = 0;
        for (int64_t j = 0; j < nk; j++) {
            const float p = S[r * KB + j];
            for (int64_t c = 0; c < C; c++) o[c] += p * kc[j * D + c];
        }
    }
#endif
}

dm_status mla_latent_attention_forward(float *lo, const float *qa, const float *cache, const dm_mla_args *a,
                                       void *workspace, size_t workspace_bytes) {
    DM_TRY(mla_check(NULL, a));
    const int64_t n = a->T * a->H, C = a->C, blocks = (a->Tk + KB - 1) / KB, bf = block_floats(n, C);
    if (n > DM_MLA_MAX_ROWS)
        return dm_fail(DM_ERR_VALUE, "mla: %lld query rows exceed %d per call", (long long)n, DM_MLA_MAX_ROWS);
    const size_t need = mla_latent_attention_workspace_bytes(a);
    float *ws = workspace && workspace_bytes >= need ? workspace : dm_alloc(need / sizeof(float), sizeof(float),
                                                                            "mla attention workspace");
    if (!ws) return DM_ERR_NOMEM;
    #pragma omp parallel for schedule(dynamic, 1) if (blocks > 1)
    for (int64_t b = 0; b < blocks; b++) latent_block(ws + b * bf, qa, cache, a, b);
    /* merge the blocks' states in block order (independent of the thread count) */
    #pragma omp parallel for schedule(static) if (n * C * blocks > 65536)
    for (int64_t r = 0; r < n; r++) {
        float M = -INFINITY;
        for (int64_t b = 0; b < blocks; b++) M = fmaxf(M, ws[b * bf + n * C + r]);
        float *o = lo + r * C, den = 0;
        for (int64_t c = 0; c < C; c++) o[c] = 0;
        for (int64_t b = 0; b < blocks; b++) {
            const float *blk = ws + b * bf, mb = blk[n * C + r];
            if (mb == -INFINITY) continue;
            const float w = expf(mb - M), *acc = blk + r * C;
            den += w * blk[n * C + n + r];
            #pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] += w * acc[c];
        }
        const float inv = 1.0f / den;
        #pragma omp simd
        for (int64_t c = 0; c < C; c++) o[c] *= inv;
    }
    if (ws != workspace) dm_free(ws);
    return DM_OK;
}

/* ---- output: out[t,h,j] = W_UV[g][j,:] . lo[t,h] ---- */

#define OROWS 8 /* weight rows per work item: concurrent memory streams */

dm_status mla_absorb_out_forward(float *out, const float *lo, const dm_tensor *kv_b, const dm_mla_args *a) {
    DM_TRY(mla_check(kv_b, a));
    const int64_t H = a->H, C = a->C, nv = a->nope + a->vdim, V = a->vdim;
    const int is_bf16 = kv_b->dtype == DM_BF16;
    const size_t esz = is_bf16 ? 2 : 4;
    const int64_t groups = (V + OROWS - 1) / OROWS, items = a->T * H * groups;
    #pragma omp parallel for schedule(static) if (items * OROWS * C > 65536)
    for (int64_t it = 0; it < items; it++) {
        const int64_t th = it / groups, j0 = (it % groups) * OROWS, h = th % H;
        const int nr = V - j0 < OROWS ? (int)(V - j0) : OROWS;
        const float *x = lo + th * C;
        const char *w0 = (const char *)kv_b->data + (size_t)(((h / a->hpg) * nv + a->nope + j0) * C) * esz;
        float *o = out + th * V + j0;
#ifdef DM_MLA_AVX512
        __m512 acc[OROWS];
        for (int r = 0; r < OROWS; r++) acc[r] = _mm512_setzero_ps();
        for (int64_t c = 0; c < C; c += 16) {
            const __mmask16 mk = lanes(C - c);
            const __m512 xv = _mm512_maskz_loadu_ps(mk, x + c);
            for (int r = 0; r < nr; r++)
                acc[r] = _mm512_fmadd_ps(dm_load16_f32_mask(w0 + (size_t)(r * C + c) * esz, is_bf16, mk), xv, acc[r]);
        }
        for (int r = 0; r < nr; r++) o[r] = _mm512_reduce_add_ps(acc[r]);
#else
        for (int r = 0; r < nr; r++) {
            const char *wr = w0 + (size_t)(r * C) * esz;
            float s = 0;
            for (int64_t c = 0; c < C; c++)
                s += x[c] * (is_bf16 ? dm_bf16_to_f32(((const uint16_t *)wr)[c]) : ((const float *)wr)[c]);
            o[r] = s;
        }
#endif
    }
    return DM_OK;
}
