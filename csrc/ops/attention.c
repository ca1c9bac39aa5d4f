/* Streaming attention: see attention.h.
 *
 * Per work item (one query block of <= BQ rows inside one segment, one head):
 *   for each key block of BK keys: transpose K block to [Dk][BK] (so QK^T is a
 *   broadcast-FMA over 64 contiguous keys), S = Q K^T, online-softmax update of
 *   the running max m, sum l and accumulator acc[BQ][Dv], acc += P V.
 * The AVX-512 path register-blocks 4 query rows; other CPUs get plain loops. */
#include "ops/attention.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "core/alloc.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include "ops/vmath.h"
#endif
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define DM_ATTN_BF16 1 /* bf16 products: vdpbf16ps, and AMX tiles where present */
#include <stdatomic.h>
#endif
#if defined(DM_ATTN_BF16) && defined(__AMX_BF16__) && defined(__AMX_TILE__) && defined(__linux__)
#define DM_ATTN_AMX 1
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define BQ 64
#define BK 64

typedef struct {
    int64_t q0, q1;   /* query rows [q0, q1) */
    int64_t k0, k1;   /* segment's key range */
} attn_item;

#if defined(__AVX512F__)

/* S[r][0..BK) = q_r . kT[:, j] for 4 rows (rows beyond nq reuse row 0). */
static void qk_block(float *S, const float *const *qrow, const float *kT, int Dk) {
    __m512 c[4][4];
    for (int r = 0; r < 4; r++)
        for (int x = 0; x < 4; x++) c[r][x] = _mm512_setzero_ps();
    for (int d = 0; d < Dk; d++) {
        const float *kd = kT + (int64_t)d * BK;
        __m512 k0 = _mm512_load_ps(kd), k1 = _mm512_load_ps(kd + 16);
        __m512 k2 = _mm512_load_ps(kd + 32), k3 = _mm512_load_ps(kd + 48);
        for (int r = 0; r < 4; r++) {
            __m512 b = _mm512_set1_ps(qrow[r][d]);
            c[r][0] = _mm512_fmadd_ps(b, k0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(b, k1, c[r][1]);
            c[r][2] = _mm512_fmadd_ps(b, k2, c[r][2]);
            c[r][3] = _mm512_fmadd_ps(b, k3, c[r][3]);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int x = 0; x < 4; x++) _mm512_store_ps(S + r * BK + 16 * x, c[r][x]);
}

/* acc[r][c0 .. c0+16*NV) += sum_j P[r][j] v_j[...] for 4 rows, NV = 4 or 5
 * vectors. Written with named accumulators: with an array gcc keeps a copy on
 * the stack and stores it every iteration (measured: 2.3x slower). */
#define LD(x) _mm512_maskz_loadu_ps(mk[x], vj + 16 * (x))
#define ACC_LD(r, x) _mm512_maskz_loadu_ps(mk[x], acc + (int64_t)(r) * Dv + c0 + 16 * (x))
#define ACC_ST(r, x, a) _mm512_mask_storeu_ps(acc + (int64_t)(r) * Dv + c0 + 16 * (x), mk[x], a)
#define FMA_ROW(r, b)                          \
    do {                                       \
        a##r##0 = _mm512_fmadd_ps(b, v0, a##r##0); \
        a##r##1 = _mm512_fmadd_ps(b, v1, a##r##1); \
        a##r##2 = _mm512_fmadd_ps(b, v2, a##r##2); \
        a##r##3 = _mm512_fmadd_ps(b, v3, a##r##3); \
        if (NV5) a##r##4 = _mm512_fmadd_ps(b, v4, a##r##4); \
    } while (0)
#define DEF_ROW(r) __m512 a##r##0 = ACC_LD(r, 0), a##r##1 = ACC_LD(r, 1), a##r##2 = ACC_LD(r, 2), \
                          a##r##3 = ACC_LD(r, 3), a##r##4 = NV5 ? ACC_LD(r, 4) : _mm512_setzero_ps()
#define ST_ROW(r)                 \
    do {                          \
        ACC_ST(r, 0, a##r##0);    \
        ACC_ST(r, 1, a##r##1);    \
        ACC_ST(r, 2, a##r##2);    \
        ACC_ST(r, 3, a##r##3);    \
        if (NV5) ACC_ST(r, 4, a##r##4); \
    } while (0)
#define DM_PV_TILE(NAME, NV5_)                                                                     \
    static void NAME(float *acc, const float *P, const float *v, int64_t vs, int nk, int Dv,      \
                     int c0, const __mmask16 *mk) {                                               \
        const int NV5 = NV5_;                                                                      \
        DEF_ROW(0);                                                                                \
        DEF_ROW(1);                                                                                \
        DEF_ROW(2);                                                                                \
        DEF_ROW(3);                                                                                \
        for (int j = 0; j < nk; j++) {                                                             \
            const float *vj = v + (int64_t)j * vs + c0;                                            \
            __m512 v0 = LD(0), v1 = LD(1), v2 = LD(2), v3 = LD(3);                                 \
            __m512 v4 = NV5 ? LD(4) : _mm512_setzero_ps();                                         \
            (void)v4;                                                                              \
            FMA_ROW(0, _mm512_set1_ps(P[j]));                                                      \
            FMA_ROW(1, _mm512_set1_ps(P[BK + j]));                                                 \
            FMA_ROW(2, _mm512_set1_ps(P[2 * BK + j]));                                             \
            FMA_ROW(3, _mm512_set1_ps(P[3 * BK + j]));                                             \
        }                                                                                          \
        ST_ROW(0);                                                                                 \
        ST_ROW(1);                                                                                 \
        ST_ROW(2);                                                                                 \
        ST_ROW(3);                                                                                 \
    }
DM_PV_TILE(pv_tile_4, 0)
DM_PV_TILE(pv_tile_5, 1)
#undef DM_PV_TILE
#undef DEF_ROW
#undef ST_ROW
#undef FMA_ROW
#undef ACC_LD
#undef ACC_ST
#undef LD

/* acc[r][:] += sum_j P[r][j] v_j[:] for 4 rows; Dv in chunks of 64 or 80
 * columns (Dv = 72: one 80-wide chunk; Dv = 128: two 64-wide chunks). */
static void pv_block(float *acc, const float *P, const float *v, int64_t vs, int nk, int Dv) {
    for (int c0 = 0; c0 < Dv;) {
        int rem = Dv - c0;
        int w = (rem <= 64 || rem % 64 == 0) ? 64 : 80;
        __mmask16 mk[5];
        for (int x = 0; x < 5; x++) {
            int r = rem - 16 * x;
            mk[x] = r >= 16 ? 0xffff : r <= 0 ? 0 : (__mmask16)((1u << r) - 1);
        }
        if (w == 64)
            pv_tile_4(acc, P, v, vs, nk, Dv, c0, mk);
        else
            pv_tile_5(acc, P, v, vs, nk, Dv, c0, mk);
        c0 += w;
    }
}
#endif

/* Online-softmax update of one row: s[0..BK) raw scores, only entries in
 * [lo, hi) are visible. Overwrites s with the probabilities (0 for masked),
 * returns the factor the old accumulator must be multiplied by. */
static inline float softmax_row(float *s, int lo, int hi, float scale, float *m, float *l) {
    float mx = -INFINITY;
#if defined(__AVX512F__)
    __mmask16 mks[BK / 16];
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    for (int x = 0; x < BK / 16; x++) {
        int j = 16 * x;
        uint32_t bits = 0xffffu;
        if (hi - j < 16) bits = hi - j <= 0 ? 0 : (bits >> (16 - (hi - j)));
        if (lo > j) bits &= lo - j >= 16 ? 0 : (0xffffu << (lo - j));
        mks[x] = (__mmask16)bits;
        vmx = _mm512_mask_max_ps(vmx, mks[x], vmx, _mm512_load_ps(s + j));
    }
    mx = _mm512_reduce_max_ps(vmx) * scale; /* scale > 0 keeps the argmax */
    if (scale <= 0.0f) {
        mx = -INFINITY;
        for (int j = lo; j < hi; j++) mx = fmaxf(mx, s[j] * scale);
    }
#else
    for (int j = lo; j < hi; j++) mx = fmaxf(mx, s[j] * scale);
#endif
    float m_new = fmaxf(*m, mx);
    if (m_new == -INFINITY) { /* nothing visible yet in this row */
        memset(s, 0, BK * sizeof(float));
        return 1.0f;
    }
    /* the max rarely moves after the first blocks: skip the exp then (exactly 1) */
    float corr = m_new > *m ? expf(*m - m_new) : 1.0f; /* 0 when *m = -inf */
    float sum = 0.0f;
#if defined(__AVX512F__)
    __m512 vs = _mm512_set1_ps(scale), vm = _mm512_set1_ps(m_new), acc = _mm512_setzero_ps();
    for (int x = 0; x < BK / 16; x++) {
        __m512 xx = _mm512_fmsub_ps(_mm512_load_ps(s + 16 * x), vs, vm);
        __m512 p = _mm512_maskz_mov_ps(mks[x], dm_exp16(xx));
        _mm512_store_ps(s + 16 * x, p);
        acc = _mm512_add_ps(acc, p);
    }
    sum = _mm512_reduce_add_ps(acc);
#else
    for (int j = 0; j < BK; j++) {
        float p = (j >= lo && j < hi) ? expf(s[j] * scale - m_new) : 0.0f;
        s[j] = p;
        sum += p;
    }
#endif
    *l = *l * corr + sum;
    *m = m_new;
    return corr;
}

/* One online-softmax step for a query row over key block [kb, kb+nk): limit the
 * visible keys (segment start jlo, causal end: the row sees keys < q_end), turn its
 * scores into probabilities in place and rescale its output accumulator. */
static inline void softmax_block_row(float *s, float *acc_row, int dv, const dm_attn_args *a,
                                     int64_t q_end, int64_t kb, int64_t khi, int nk, int jlo,
                                     float *m, float *l) {
    int64_t lim = khi;
    if (a->causal && q_end < lim) lim = q_end;
    int64_t valid = lim - kb;
    if (valid > nk) valid = nk;
    if (valid < jlo) valid = jlo;
    float corr = softmax_row(s, jlo, (int)valid, a->scale, m, l);
    if (corr != 1.0f) {
#pragma omp simd
        for (int c = 0; c < dv; c++) acc_row[c] *= corr;
    }
}

/* Copy key block [kb, kb+nk) of kv head g to kT[Dk][BK], zero-padded. */
static void transpose_block(float *kT, const float *k, int64_t ks, int g, int Dk, int64_t kb, int nk) {
    const float *kbase = k + (int64_t)g * Dk;
    for (int d = 0; d < Dk; d++) {
        float *row = kT + (int64_t)d * BK;
        for (int j = 0; j < nk; j++) row[j] = kbase[(kb + j) * ks + d];
        for (int j = nk; j < BK; j++) row[j] = 0.0f;
    }
}

static void attend_item(float *out, const float *q, const float *k, const float *v,
                        const dm_attn_args *a, int64_t qs, int64_t ks, int64_t vs, int64_t os,
                        const attn_item *it, int h, const float *kT_all, const float *vP,
                        int64_t nb, float *S, float *kT, float *acc, float *mrow, float *lrow) {
    const int Dk = a->Dk, Dv = a->Dv;
    const int g = h / (a->H / a->Hkv);
    const int64_t nq = it->q1 - it->q0;
    const int64_t shift = a->Tk - a->Tq; /* absolute position of query 0 */
    /* Keys this block needs: up to the last row's limit. */
    int64_t khi = it->k1;
    if (a->causal && shift + it->q1 < khi) khi = shift + it->q1;
    for (int64_t i = 0; i < nq; i++) {
        mrow[i] = -INFINITY;
        lrow[i] = 0.0f;
    }
    memset(acc, 0, (size_t)BQ * Dv * sizeof(float));
    const float *vbase = v + (int64_t)g * Dv;
    const float *qbase = q + (int64_t)h * Dk;

    /* With a pre-transposed K, blocks sit on multiples of BK and the keys before
     * the segment start are masked; otherwise blocks start at the segment. */
    int64_t kstart = kT_all ? it->k0 / BK * BK : it->k0;
    for (int64_t kb = kstart; kb < khi; kb += BK) {
        int nk = (int)(khi - kb < BK ? khi - kb : BK);
        int jlo = it->k0 > kb ? (int)(it->k0 - kb) : 0;
        if (kT_all)
            kT = (float *)kT_all + ((int64_t)g * nb + kb / BK) * (int64_t)Dk * BK;
        else
            transpose_block(kT, k, ks, g, Dk, kb, nk);
        for (int64_t i = 0; i < nq; i += 4) {
#if defined(__AVX512F__)
            const float *qrow[4];
            for (int r = 0; r < 4; r++) {
                int64_t ii = i + r < nq ? i + r : i;
                qrow[r] = qbase + (it->q0 + ii) * qs;
            }
            qk_block(S + i * BK, qrow, kT, Dk);
#else
            for (int64_t r = i; r < i + 4 && r < nq; r++) {
                const float *qr = qbase + (it->q0 + r) * qs;
                float *sr = S + r * BK;
                for (int j = 0; j < BK; j++) sr[j] = 0.0f;
                for (int d = 0; d < Dk; d++) {
                    const float qd = qr[d];
                    const float *kd = kT + (int64_t)d * BK;
#pragma omp simd
                    for (int j = 0; j < BK; j++) sr[j] += qd * kd[j];
                }
            }
#endif
        }
        for (int64_t i = 0; i < nq; i++)
            softmax_block_row(S + i * BK, acc + i * Dv, Dv, a, shift + it->q0 + i + 1, kb, khi, nk, jlo,
                              &mrow[i], &lrow[i]);
        /* packed V block (rows of Dv, contiguous) when available */
        const float *vblk = vP ? vP + (((int64_t)g * nb + kb / BK) * BK + jlo) * Dv : vbase + (kb + jlo) * vs;
        const int64_t vstr = vP ? Dv : vs;
        for (int64_t i = 0; i < nq; i += 4) {
#if defined(__AVX512F__)
            if (nq - i >= 4) {
                pv_block(acc + i * Dv, S + i * BK + jlo, vblk, vstr, nk - jlo, Dv);
                continue;
            }
#endif
            for (int64_t r = i; r < i + 4 && r < nq; r++) {
                float *ar = acc + r * Dv;
                const float *pr = S + r * BK + jlo;
                for (int j = 0; j < nk - jlo; j++) {
                    const float p = pr[j];
                    const float *vj = vblk + (int64_t)j * vstr;
#pragma omp simd
                    for (int c = 0; c < Dv; c++) ar[c] += p * vj[c];
                }
            }
        }
    }
    for (int64_t i = 0; i < nq; i++) {
        float inv = 1.0f / lrow[i];
        float *o = out + (it->q0 + i) * os + (int64_t)h * Dv;
        const float *ar = acc + i * Dv;
#pragma omp simd
        for (int c = 0; c < Dv; c++) o[c] = ar[c] * inv;
        if (a->lse) a->lse[(it->q0 + i) * a->H + h] = mrow[i] + logf(lrow[i]);
    }
}

/* Two buffers carved from the caller's workspace when it is large enough, else
 * allocated (then *owned = 1 and the caller frees both). */
static int take_two(const dm_attn_args *a, size_t bytes1, size_t bytes2, void **p1, void **p2, int *owned,
                    const char *what) {
    const size_t b1 = (bytes1 + 63) / 64 * 64, b2 = (bytes2 + 63) / 64 * 64;
    uintptr_t base = (uintptr_t)a->workspace, aligned = (base + 63) / 64 * 64;
    if (a->workspace && a->workspace_bytes >= (aligned - base) + b1 + b2) {
        *p1 = (void *)aligned;
        *p2 = (void *)(aligned + b1);
        *owned = 0;
        return 1;
    }
    *p1 = dm_alloc(b1, 1, what);
    *p2 = *p1 ? dm_alloc(b2, 1, what) : NULL;
    *owned = 1;
    if (!*p2) {
        dm_free(*p1);
        *p1 = NULL;
        return 0;
    }
    return 1;
}

size_t attention_workspace_bytes(const dm_attn_args *a) {
    const int64_t nb = (a->Tk + BK - 1) / BK;
    const size_t f32 = (size_t)a->Hkv * nb * BK * ((size_t)a->Dk + a->Dv) * sizeof(float);
    const size_t DkP = (a->Dk + 31) / 32 * 32, DvP = (a->Dv + 15) / 16 * 16;
    const size_t b16 = (size_t)a->Hkv * nb * BK * (DkP + DvP) * sizeof(uint16_t);
    return (f32 > b16 ? f32 : b16) + 3 * 64;
}

/* ---------------- bf16 products (AMX tiles or AVX512-BF16) ----------------
 * Per item: Q rows -> bf16 [BQ][DkP] (DkP = Dk rounded up to 32), S = Q K^T with
 * K in bf16 pairs [DkP/2][BK][2], f32 online softmax as in the f32 path, P ->
 * bf16 [BQ][BK], acc[BQ][DvP] += P V with V in bf16 pairs [BK/2][DvP][2]
 * (DvP = Dv rounded up to 16). K and V are packed once per call. The same packs
 * feed AMX (16x16 f32 tiles: A = 16 rows x 32 dims, B = the pairs) and, without
 * AMX, vdpbf16ps (a broadcast pair of q or P against 16 pairs of K or V). */
#if defined(DM_ATTN_AMX)
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;
static int amx_ok;
static void amx_request(void) {
    /* Linux hands out the AMX tile state only on request (ARCH_REQ_XCOMP_PERM,
     * XFEATURE_XTILEDATA); oneDNN asks too, asking again is harmless. */
    amx_ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg;

static void amx_config(void) {
    amx_cfg c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        c.rows[t] = 16;
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
}
#endif

#if defined(DM_ATTN_BF16)
static atomic_int amx_allowed = 1;

/* row of n f32 -> bf16 into dst[0..npad) (zeros past n) */
static void row_to_bf16(uint16_t *dst, const float *src, int n, int npad) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i)));
        i += 16;
    }
    for (; i < npad; i++) dst[i] = 0;
}

/* Q rows of an item -> bf16 (rows past nq zero); running max / sum reset. */
static void item_start(const float *q, const dm_attn_args *a, int64_t qs, const attn_item *it, int h, int DkP,
                       int DvP, float *acc, float *mrow, float *lrow, uint16_t *qB, uint16_t *P16) {
    const int64_t nq = it->q1 - it->q0;
    for (int64_t i = 0; i < BQ; i++) {
        if (i < nq)
            row_to_bf16(qB + i * DkP, q + (it->q0 + i) * qs + (int64_t)h * a->Dk, a->Dk, DkP);
        else
            memset(qB + i * DkP, 0, (size_t)DkP * sizeof(uint16_t));
    }
    for (int64_t i = 0; i < nq; i++) {
        mrow[i] = -INFINITY;
        lrow[i] = 0.0f;
    }
    memset(acc, 0, (size_t)BQ * DvP * sizeof(float));
    memset(P16, 0, (size_t)BQ * BK * sizeof(uint16_t)); /* rows >= nq stay zero */
}

static void item_finish(float *out, const dm_attn_args *a, int64_t os, const attn_item *it, int h, int DvP,
                        const float *acc, const float *lrow) {
    for (int64_t i = 0; i < it->q1 - it->q0; i++) {
        float inv = 1.0f / lrow[i];
        float *o = out + (it->q0 + i) * os + (int64_t)h * a->Dv;
        const float *ar = acc + i * DvP;
#pragma omp simd
        for (int c = 0; c < a->Dv; c++) o[c] = ar[c] * inv;
    }
}

/* One item with vdpbf16ps: 4 query rows x 64 keys (16 accumulators) per step of
 * two dims for S, 4 rows x 64 columns per step of two keys for P V. */
static void attend_item_dp(float *out, const float *q, const dm_attn_args *a, int64_t qs, int64_t os,
                           const attn_item *it, int h, const uint16_t *kB, const uint16_t *vB, int64_t nb,
                           int DkP, int DvP, float *S, float *acc, float *mrow, float *lrow, uint16_t *qB,
                           uint16_t *P16) {
    const int g = h / (a->H / a->Hkv);
    const int64_t nq = it->q1 - it->q0, shift = a->Tk - a->Tq;
    int64_t khi = it->k1;
    if (a->causal && shift + it->q1 < khi) khi = shift + it->q1;
    item_start(q, a, qs, it, h, DkP, DvP, acc, mrow, lrow, qB, P16);
    const int nr4 = (int)((nq + 3) / 4) * 4; /* rows computed (qB / P16 rows past nq are zero) */
    for (int64_t kb = it->k0 / BK * BK; kb < khi; kb += BK) {
        int nk = (int)(khi - kb < BK ? khi - kb : BK);
        int jlo = it->k0 > kb ? (int)(it->k0 - kb) : 0;
        const uint32_t *kp = (const uint32_t *)(kB + ((int64_t)g * nb + kb / BK) * (int64_t)DkP * BK);
        const uint32_t *vp = (const uint32_t *)(vB + ((int64_t)g * nb + kb / BK) * (int64_t)BK * DvP);
        for (int r0 = 0; r0 < nr4; r0 += 4) {
            __m512 c[4][4];
            for (int i = 0; i < 4; i++)
                for (int x = 0; x < 4; x++) c[i][x] = _mm512_setzero_ps();
            const uint32_t *qr = (const uint32_t *)(qB + (int64_t)r0 * DkP);
            for (int dp = 0; dp < DkP / 2; dp++) {
                __m512bh kv[4];
                for (int x = 0; x < 4; x++) kv[x] = (__m512bh)_mm512_loadu_si512(kp + (int64_t)dp * BK + 16 * x);
                for (int i = 0; i < 4; i++) {
                    const __m512bh qv = (__m512bh)_mm512_set1_epi32((int)qr[(int64_t)i * (DkP / 2) + dp]);
                    for (int x = 0; x < 4; x++) c[i][x] = _mm512_dpbf16_ps(c[i][x], qv, kv[x]);
                }
            }
            for (int i = 0; i < 4; i++)
                for (int x = 0; x < 4; x++) _mm512_store_ps(S + (int64_t)(r0 + i) * BK + 16 * x, c[i][x]);
        }
        for (int64_t i = 0; i < nq; i++) {
            softmax_block_row(S + i * BK, acc + i * DvP, DvP, a, shift + it->q0 + i + 1, kb, khi, nk, jlo,
                              &mrow[i], &lrow[i]);
            row_to_bf16(P16 + i * BK, S + i * BK, BK, BK);
        }
        for (int c0 = 0; c0 < DvP; c0 += 64) {
            const int nv = DvP - c0 >= 64 ? 4 : (DvP - c0) / 16;
            for (int r0 = 0; r0 < nr4; r0 += 4) {
                __m512 o[4][4];
                for (int i = 0; i < 4; i++)
                    for (int x = 0; x < nv; x++) o[i][x] = _mm512_loadu_ps(acc + (int64_t)(r0 + i) * DvP + c0 + 16 * x);
                const uint32_t *pr = (const uint32_t *)(P16 + (int64_t)r0 * BK);
                for (int jp = 0; jp < BK / 2; jp++) {
                    __m512bh vv[4];
                    for (int x = 0; x < nv; x++) vv[x] = (__m512bh)_mm512_loadu_si512(vp + (int64_t)jp * DvP + c0 + 16 * x);
                    for (int i = 0; i < 4; i++) {
                        const __m512bh pv = (__m512bh)_mm512_set1_epi32((int)pr[(int64_t)i * (BK / 2) + jp]);
                        for (int x = 0; x < nv; x++) o[i][x] = _mm512_dpbf16_ps(o[i][x], pv, vv[x]);
                    }
                }
                for (int i = 0; i < 4; i++)
                    for (int x = 0; x < nv; x++) _mm512_storeu_ps(acc + (int64_t)(r0 + i) * DvP + c0 + 16 * x, o[i][x]);
            }
        }
    }
    item_finish(out, a, os, it, h, DvP, acc, lrow);
}
#endif

#if defined(DM_ATTN_AMX)
static void attend_item_amx(float *out, const float *q, const dm_attn_args *a, int64_t qs, int64_t os,
                            const attn_item *it, int h, const uint16_t *kB, const uint16_t *vB, int64_t nb,
                            int DkP, int DvP, float *S, float *acc, float *mrow, float *lrow, uint16_t *qB,
                            uint16_t *P16) {
    const int g = h / (a->H / a->Hkv);
    const int64_t nq = it->q1 - it->q0;
    const int64_t shift = a->Tk - a->Tq;
    int64_t khi = it->k1;
    if (a->causal && shift + it->q1 < khi) khi = shift + it->q1;
    item_start(q, a, qs, it, h, DkP, DvP, acc, mrow, lrow, qB, P16);
    const int nrb = (int)((nq + 15) / 16);              /* 16-row blocks in use */
    for (int64_t kb = it->k0 / BK * BK; kb < khi; kb += BK) {
        int nk = (int)(khi - kb < BK ? khi - kb : BK);
        int jlo = it->k0 > kb ? (int)(it->k0 - kb) : 0;
        const uint16_t *kblk = kB + ((int64_t)g * nb + kb / BK) * (int64_t)DkP * BK;
        const uint16_t *vblk = vB + ((int64_t)g * nb + kb / BK) * (int64_t)BK * DvP;
        for (int rb = 0; rb < nrb; rb++) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int dc = 0; dc < DkP / 32; dc++) {
                _tile_loadd(4, qB + (int64_t)rb * 16 * DkP + dc * 32, DkP * 2);
                const uint16_t *kd = kblk + (int64_t)dc * 16 * BK * 2;
                _tile_loadd(5, kd, BK * 4);
                _tile_dpbf16ps(0, 4, 5);
                _tile_loadd(6, kd + 32, BK * 4);
                _tile_dpbf16ps(1, 4, 6);
                _tile_loadd(7, kd + 64, BK * 4);
                _tile_dpbf16ps(2, 4, 7);
                _tile_loadd(5, kd + 96, BK * 4);
                _tile_dpbf16ps(3, 4, 5);
            }
            float *Sr = S + (int64_t)rb * 16 * BK;
            _tile_stored(0, Sr, BK * 4);
            _tile_stored(1, Sr + 16, BK * 4);
            _tile_stored(2, Sr + 32, BK * 4);
            _tile_stored(3, Sr + 48, BK * 4);
        }
        for (int64_t i = 0; i < nq; i++) {
            softmax_block_row(S + i * BK, acc + i * DvP, DvP, a, shift + it->q0 + i + 1, kb, khi, nk, jlo,
                              &mrow[i], &lrow[i]);
            row_to_bf16(P16 + i * BK, S + i * BK, BK, BK);
        }
        /* acc += P V: per 16-row block, P's two 32-key halves stay in tiles 4 and 6
         * while up to 4 column tiles of acc accumulate in tiles 0-3 (independent
         * accumulators keep the tile unit busy; one at a time serialises on it). */
        const int nct = DvP / 16;
        for (int rb = 0; rb < nrb; rb++) {
            _tile_loadd(4, P16 + (int64_t)rb * 16 * BK, BK * 2);
            _tile_loadd(6, P16 + (int64_t)rb * 16 * BK + 32, BK * 2);
            float *Crow = acc + (int64_t)rb * 16 * DvP;
            const uint16_t *v0 = vblk, *v1 = vblk + (int64_t)16 * DvP * 2;
#define PV_TILE(t, ct)                                          \
    do {                                                        \
        _tile_loadd(5, v0 + (int64_t)(ct) * 32, DvP * 4);       \
        _tile_dpbf16ps(t, 4, 5);                                \
        _tile_loadd(7, v1 + (int64_t)(ct) * 32, DvP * 4);       \
        _tile_dpbf16ps(t, 6, 7);                                \
    } while (0)
            int ct = 0;
            for (; ct + 4 <= nct; ct += 4) {
                _tile_loadd(0, Crow + ct * 16, DvP * 4);
                _tile_loadd(1, Crow + ct * 16 + 16, DvP * 4);
                _tile_loadd(2, Crow + ct * 16 + 32, DvP * 4);
                _tile_loadd(3, Crow + ct * 16 + 48, DvP * 4);
                PV_TILE(0, ct);
                PV_TILE(1, ct + 1);
                PV_TILE(2, ct + 2);
                PV_TILE(3, ct + 3);
                _tile_stored(0, Crow + ct * 16, DvP * 4);
                _tile_stored(1, Crow + ct * 16 + 16, DvP * 4);
                _tile_stored(2, Crow + ct * 16 + 32, DvP * 4);
                _tile_stored(3, Crow + ct * 16 + 48, DvP * 4);
            }
            for (; ct < nct; ct++) {
                _tile_loadd(0, Crow + ct * 16, DvP * 4);
                PV_TILE(0, ct);
                _tile_stored(0, Crow + ct * 16, DvP * 4);
            }
#undef PV_TILE
        }
    }
    item_finish(out, a, os, it, h, DvP, acc, lrow);
}
#endif

#if defined(DM_ATTN_BF16)
static dm_status attention_bf16(float *out, const float *q, const float *k, const float *v, const dm_attn_args *a,
                                int64_t qs, int64_t ks, int64_t vs, int64_t os, const attn_item *items,
                                int64_t n_items, int nt, int use_amx) {
    const int DkP = (a->Dk + 31) / 32 * 32, DvP = (a->Dv + 15) / 16 * 16;
    const int64_t nb = (a->Tk + BK - 1) / BK;
    const size_t kblk = (size_t)DkP * BK, vblk = (size_t)BK * DvP; /* bf16 elements per block */
    void *p1, *p2;
    int owned;
    if (!take_two(a, (size_t)a->Hkv * nb * kblk * sizeof(uint16_t), (size_t)a->Hkv * nb * vblk * sizeof(uint16_t),
                  &p1, &p2, &owned, "attention bf16 K/V"))
        return DM_ERR_NOMEM;
    uint16_t *kB = p1, *vB = p2;
    size_t per = (size_t)BQ * BK + (size_t)BQ * DvP + 2 * BQ + ((size_t)BQ * DkP + (size_t)BQ * BK) / 2 +
                 (size_t)(DkP > DvP ? DkP : DvP) + 32;
    per = (per + 15) / 16 * 16;
    float *scratch = dm_alloc((size_t)nt * per, sizeof(float), "attention scratch");
    if (!scratch) {
        if (owned) {
            dm_free(kB);
            dm_free(vB);
        }
        return DM_ERR_NOMEM;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t w = 0; w < a->Hkv * nb; w++) {
        const int64_t b = w % nb;
        const int g = (int)(w / nb);
        const int nk = (int)(a->Tk - b * BK < BK ? a->Tk - b * BK : BK);
        uint32_t *kd = (uint32_t *)(kB + w * kblk); /* [DkP/2][BK] pairs */
        uint16_t *vd = vB + w * vblk;                /* [BK/2][DvP][2] */
        uint16_t row[1][1024 + 32];
        for (int j = 0; j < BK; j++) {
            if (j < nk)
                row_to_bf16(row[0], k + (b * BK + j) * ks + (int64_t)g * a->Dk, a->Dk, DkP);
            else
                memset(row[0], 0, (size_t)DkP * sizeof(uint16_t));
            const uint32_t *r32 = (const uint32_t *)row[0];
            for (int dp = 0; dp < DkP / 2; dp++) kd[(int64_t)dp * BK + j] = r32[dp];
        }
        /* V rows 2jp and 2jp+1 -> interleaved bf16 pairs: one cvtne2ps (row 2jp in
         * the low half) and one word permute per 16 columns */
        const __m512i ilv = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                             22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        for (int jp = 0; jp < BK / 2; jp++) {
            const int j0 = 2 * jp, j1 = 2 * jp + 1;
            const float *r0 = j0 < nk ? v + (b * BK + j0) * vs + (int64_t)g * a->Dv : NULL;
            const float *r1 = j1 < nk ? v + (b * BK + j1) * vs + (int64_t)g * a->Dv : NULL;
            uint16_t *dst = vd + (int64_t)jp * DvP * 2;
            for (int c = 0; c < DvP; c += 16) {
                int rem = a->Dv - c;
                __mmask16 m = rem >= 16 ? 0xffff : rem <= 0 ? 0 : (__mmask16)((1u << rem) - 1);
                __m512 x0 = r0 ? _mm512_maskz_loadu_ps(m, r0 + c) : _mm512_setzero_ps();
                __m512 x1 = r1 ? _mm512_maskz_loadu_ps(m, r1 + c) : _mm512_setzero_ps();
                __m512i pk = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
                _mm512_storeu_si512(dst + 2 * c, _mm512_permutexvar_epi16(ilv, pk));
            }
        }
    }
    const int64_t total = n_items * a->H;
#pragma omp parallel num_threads(nt)
    {
        float *S = scratch + (size_t)omp_get_thread_num() * per;
        float *acc = S + BQ * BK;
        float *mrow = acc + (size_t)BQ * DvP;
        float *lrow = mrow + BQ;
        uint16_t *qB = (uint16_t *)(lrow + BQ);
        uint16_t *P16 = qB + (size_t)BQ * DkP;
#if defined(DM_ATTN_AMX)
        if (use_amx) {
            amx_config();
#pragma omp for schedule(dynamic, 1)
            for (int64_t w = 0; w < total; w++)
                attend_item_amx(out, q, a, qs, os, &items[w % n_items], (int)(w / n_items), kB, vB, nb, DkP, DvP,
                                S, acc, mrow, lrow, qB, P16);
            _tile_release();
        } else
#endif
        {
            (void)use_amx;
#pragma omp for schedule(dynamic, 1)
            for (int64_t w = 0; w < total; w++)
                attend_item_dp(out, q, a, qs, os, &items[w % n_items], (int)(w / n_items), kB, vB, nb, DkP, DvP,
                               S, acc, mrow, lrow, qB, P16);
        }
    }
    dm_free(scratch);
    if (owned) {
        dm_free(vB);
        dm_free(kB);
    }
    return DM_OK;
}
#endif

static int amx_usable(void) {
#if defined(DM_ATTN_AMX)
    pthread_once(&amx_once, amx_request);
    return amx_ok && atomic_load(&amx_allowed);
#else
    return 0;
#endif
}

int attention_bf16_available(void) {
#if defined(DM_ATTN_BF16)
    return 1;
#else
    return 0;
#endif
}

const char *attention_bf16_kernel(void) {
    if (!attention_bf16_available()) return "none";
    return amx_usable() ? "amx" : "avx512_bf16";
}

void attention_set_amx(int on) {
#if defined(DM_ATTN_BF16)
    atomic_store(&amx_allowed, on ? 1 : 0);
#else
    (void)on;
#endif
}

/* Validate the arguments shared by the forward and the backward; resolves the
 * row strides (st = q, k, v, out) and the segment count. */
static dm_status attn_check(const dm_attn_args *a, int64_t st[4], int64_t *n_seg_out) {
    if (a->Tq < 0 || a->Tk < 0 || a->H <= 0 || a->Hkv <= 0 || a->Dk <= 0 || a->Dv <= 0)
        return dm_fail(DM_ERR_VALUE, "attention: bad sizes Tq=%lld Tk=%lld H=%d Hkv=%d Dk=%d Dv=%d",
                       (long long)a->Tq, (long long)a->Tk, a->H, a->Hkv, a->Dk, a->Dv);
    if (a->H % a->Hkv != 0)
        return dm_fail(DM_ERR_VALUE, "attention: %d query heads not a multiple of %d kv heads", a->H,
                       a->Hkv);
    if (a->causal && a->Tq > a->Tk)
        return dm_fail(DM_ERR_VALUE, "attention: causal needs Tq <= Tk (got %lld > %lld)",
                       (long long)a->Tq, (long long)a->Tk);
    if (a->Tq > 0 && a->Tk == 0)
        return dm_fail(DM_ERR_VALUE, "attention: no keys for %lld queries", (long long)a->Tq);
    st[0] = a->q_stride ? a->q_stride : (int64_t)a->H * a->Dk;
    st[1] = a->k_stride ? a->k_stride : (int64_t)a->Hkv * a->Dk;
    st[2] = a->v_stride ? a->v_stride : (int64_t)a->Hkv * a->Dv;
    st[3] = a->out_stride ? a->out_stride : (int64_t)a->H * a->Dv;
    if (st[0] < (int64_t)a->H * a->Dk || st[1] < (int64_t)a->Hkv * a->Dk || st[2] < (int64_t)a->Hkv * a->Dv ||
        st[3] < (int64_t)a->H * a->Dv)
        return dm_fail(DM_ERR_VALUE, "attention: row stride smaller than the row");
    int64_t n_seg = (a->segments && a->n_seg > 0) ? a->n_seg : 1;
    if (a->segments && a->n_seg > 0) {
        if (a->Tq != a->Tk)
            return dm_fail(DM_ERR_VALUE, "attention: segments need Tq == Tk (got %lld, %lld)",
                           (long long)a->Tq, (long long)a->Tk);
        if (a->segments[0] != 0 || a->segments[n_seg] != a->Tk)
            return dm_fail(DM_ERR_VALUE, "attention: segments must run from 0 to Tk=%lld",
                           (long long)a->Tk);
        for (int64_t s = 0; s < n_seg; s++)
            if (a->segments[s + 1] <= a->segments[s])
                return dm_fail(DM_ERR_VALUE, "attention: segment boundaries must increase (at %lld)",
                               (long long)s);
    }
    *n_seg_out = n_seg;
    return DM_OK;
}

dm_status attention_forward(float *out, const float *q, const float *k, const float *v,
                            const dm_attn_args *a) {
    if (!out || !q || !k || !v || !a) return dm_fail(DM_ERR_VALUE, "attention: NULL pointer");
    int64_t strides[4] = {0, 0, 0, 0}, n_seg = 1;
    DM_TRY(attn_check(a, strides, &n_seg));
    if (a->Tq == 0) return DM_OK;
    const int64_t qs = strides[0], ks = strides[1], vs = strides[2], os = strides[3];

    /* Work items: query blocks that never cross a segment boundary. */
    int64_t n_items = 0;
    for (int64_t s = 0; s < n_seg; s++) {
        int64_t lo = a->segments && a->n_seg > 0 ? a->segments[s] : 0;
        int64_t hi = a->segments && a->n_seg > 0 ? a->segments[s + 1] : a->Tq;
        n_items += (hi - lo + BQ - 1) / BQ;
    }
    attn_item *items = dm_alloc((size_t)n_items, sizeof(attn_item), "attention work list");
    if (!items) return DM_ERR_NOMEM;
    n_items = 0;
    for (int64_t s = 0; s < n_seg; s++) {
        int has = a->segments && a->n_seg > 0;
        int64_t lo = has ? a->segments[s] : 0, hi = has ? a->segments[s + 1] : a->Tq;
        int64_t klo = has ? lo : 0, khi = has ? hi : a->Tk;
        for (int64_t r = lo; r < hi; r += BQ) {
            items[n_items].q0 = r;
            items[n_items].q1 = r + BQ < hi ? r + BQ : hi;
            items[n_items].k0 = klo;
            items[n_items].k1 = khi;
            n_items++;
        }
    }

    int nt = omp_get_max_threads();
#if defined(DM_ATTN_BF16)
    if (a->bf16 && !a->lse && a->Dk <= 1024 && a->Dv <= 1024) {
        dm_status st = attention_bf16(out, q, k, v, a, qs, ks, vs, os, items, n_items, nt, amx_usable());
        dm_free(items);
        return st;
    }
#endif
    size_t per = (size_t)BQ * BK + (size_t)a->Dk * BK + (size_t)BQ * a->Dv + 2 * BQ;
    per = (per + 15) / 16 * 16; /* keep every thread's buffers 64-byte aligned */
    float *scratch = dm_alloc((size_t)nt * per, sizeof(float), "attention scratch");
    if (!scratch) {
        dm_free(items);
        return DM_ERR_NOMEM;
    }
    /* Several query blocks share each key block: transpose K once, up front
     * (memory = one copy of K). A single query block (decoding) transposes on the fly. */
    float *kT_all = NULL, *vP = NULL;
    int packs_owned = 0;
    const int64_t nb = (a->Tk + BK - 1) / BK;
    if (n_items > 1 || a->Tq > BQ) {
        /* V is packed too: per (kv head, block) BK contiguous rows of Dv, so the
         * PV loop streams one compact block instead of rows H*Dv apart. */
        void *p1, *p2;
        if (!take_two(a, (size_t)a->Hkv * nb * a->Dk * BK * sizeof(float),
                      (size_t)a->Hkv * nb * a->Dv * BK * sizeof(float), &p1, &p2, &packs_owned,
                      "attention K/V packs")) {
            dm_free(scratch);
            dm_free(items);
            return DM_ERR_NOMEM;
        }
        kT_all = p1;
        vP = p2;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t w = 0; w < a->Hkv * nb; w++) {
            int64_t b = w % nb;
            int g = (int)(w / nb);
            int nk = (int)(a->Tk - b * BK < BK ? a->Tk - b * BK : BK);
            transpose_block(kT_all + w * (int64_t)a->Dk * BK, k, ks, g, a->Dk, b * BK, nk);
            float *dst = vP + w * (int64_t)a->Dv * BK;
            for (int j = 0; j < nk; j++)
                memcpy(dst + (int64_t)j * a->Dv, v + (b * BK + j) * vs + (int64_t)g * a->Dv,
                       (size_t)a->Dv * sizeof(float));
        }
    }
    const int64_t total = n_items * a->H;
#pragma omp parallel num_threads(nt)
    {
        float *S = scratch + (size_t)omp_get_thread_num() * per;
        float *kT = S + BQ * BK;
        float *acc = kT + (size_t)a->Dk * BK;
        float *mrow = acc + (size_t)BQ * a->Dv;
        float *lrow = mrow + BQ;
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < total; w++)
            /* head-major: consecutive items of a thread share one head's K/V in cache */
            attend_item(out, q, k, v, a, qs, ks, vs, os, &items[w % n_items], (int)(w / n_items), kT_all,
                        vP, nb, S, kT, acc, mrow, lrow);
    }
    if (packs_owned) {
        dm_free(vP);
        dm_free(kT_all);
    }
    dm_free(scratch);
    dm_free(items);
    return DM_OK;
}

/* ---------------- backward (FlashAttention-2 style, f32) ----------------
 * D_i = dout_i . out_i per (row, head). Two passes recompute the score blocks
 * from q, k and the saved lse (P = exp(scale s - lse), exact softmax, no running
 * max needed):
 *   pass A, one item per (kv head g, key block inside one segment): loop over the
 *     query heads of g and the query blocks that see the block; dV += P^T dO,
 *     dK += dS^T Q; the item owns its rows of dk / dv.
 *   pass B, one item per (head, query block) as in the forward: dQ += dS K over
 *     the visible key blocks; the item owns its rows of dq.
 * Every output element is written by one thread and summed in a fixed order. */

typedef struct {
    int64_t j0, j1; /* key rows [j0, j1), within one segment */
    int64_t i0, i1; /* the segment's query range */
} kv_item;

/* S[r][0..BK) = a_r . bT[:, j] for r < nr (rows nr..BQ-1 not written);
 * bT is [D][BK], a rows at a0 + r*as (D contiguous floats each). */
static void block_products(float *S, const float *a0, int64_t as, int64_t nr, const float *bT, int D) {
    for (int64_t r = 0; r < nr; r += 4) {
#if defined(__AVX512F__)
        const float *rows[4];
        for (int x = 0; x < 4; x++) rows[x] = a0 + (r + x < nr ? r + x : r) * as;
        if (r + 4 <= nr) {
            qk_block(S + r * BK, rows, bT, D);
        } else { /* keep rows >= nr of S untouched: compute into a temporary */
            float tmp[4 * BK] __attribute__((aligned(64)));
            qk_block(tmp, rows, bT, D);
            memcpy(S + r * BK, tmp, (size_t)(nr - r) * BK * sizeof(float));
        }
#else
        for (int64_t x = r; x < r + 4 && x < nr; x++) {
            const float *ar = a0 + x * as;
            float *sr = S + x * BK;
            for (int j = 0; j < BK; j++) sr[j] = 0.0f;
            for (int d = 0; d < D; d++) {
                const float ad = ar[d];
                const float *bd = bT + (int64_t)d * BK;
#pragma omp simd
                for (int j = 0; j < BK; j++) sr[j] += ad * bd[j];
            }
        }
#endif
    }
}

/* acc[r][0..D) += sum_{j < nj} W[r][j] b_j for r < nr (W rows BK apart, b rows bs
 * apart); acc rows D apart, rows up to nr rounded up to 4 must exist (the extra
 * rows of W must be zero). */
static void block_accumulate(float *acc, const float *W, int64_t nr, const float *b, int64_t bs, int nj, int D) {
    for (int64_t r = 0; r < nr; r += 4) {
#if defined(__AVX512F__)
        pv_block(acc + r * D, W + r * BK, b, bs, nj, D);
#else
        for (int64_t x = r; x < r + 4; x++) {
            float *ar = acc + x * D;
            const float *wr = W + x * BK;
            for (int j = 0; j < nj; j++) {
                const float w = wr[j];
                const float *bj = b + (int64_t)j * bs;
#pragma omp simd
                for (int c = 0; c < D; c++) ar[c] += w * bj[c];
            }
        }
#endif
    }
}

/* Row r of the probabilities and of dS: P = exp(scale s - lse) on keys [0, vis),
 * 0 elsewhere; dS = P (dP - Di). s and dp hold the raw scores and dO.V^T. */
static inline void grad_row(float *s, float *dp, int vis, float scale, float lse, float Di) {
#if defined(__AVX512F__)
    const __m512 vs = _mm512_set1_ps(scale), vl = _mm512_set1_ps(lse), vd = _mm512_set1_ps(Di);
    for (int x = 0; x < BK / 16; x++) {
        int j = 16 * x;
        __mmask16 m = vis - j >= 16 ? 0xffff : vis - j <= 0 ? 0 : (__mmask16)((1u << (vis - j)) - 1);
        __m512 p = _mm512_maskz_mov_ps(m, dm_exp16(_mm512_fmsub_ps(_mm512_load_ps(s + j), vs, vl)));
        _mm512_store_ps(s + j, p);
        _mm512_store_ps(dp + j, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_load_ps(dp + j), vd)));
    }
#else
    for (int j = 0; j < BK; j++) {
        float p = j < vis ? expf(s[j] * scale - lse) : 0.0f;
        s[j] = p;
        dp[j] = p * (dp[j] - Di);
    }
#endif
}

/* dst[c][r] = src[r][c] for a BK x BK block (rows / columns past the used ones are zero in src). */
static void transpose_sq(float *dst, const float *src) {
    for (int r = 0; r < BK; r++)
        for (int c = 0; c < BK; c++) dst[(int64_t)c * BK + r] = src[(int64_t)r * BK + c];
}

typedef struct {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v, *lse, *D;
    int64_t qs, ks, vs, os;
    const dm_attn_args *a;
    /* K and V of every (kv head g, key block item b) transposed once, up front:
     * kTp + (g * n_kv + b) * Dk * BK is [Dk][BK], vTp likewise [Dv][BK] */
    const float *kTp, *vTp;
    int64_t n_kv;
} bwd_ctx;

/* Visible keys of a key block starting at kb (nk keys) for query i: causal rows
 * see keys <= shift + i. */
static inline int visible_keys(const dm_attn_args *a, int64_t i, int64_t kb, int nk) {
    if (!a->causal) return nk;
    int64_t lim = (a->Tk - a->Tq) + i + 1 - kb;
    return lim < 0 ? 0 : lim > nk ? nk : (int)lim;
}

/* Pass A's item: key block b (= *it) of kv head g. With dQa (fused mode, see
 * attention_backward) it also adds dQ += dS K for the queries of the segment into
 * dQa[hh][i - it->i0][Dk] (rows it->i1 - it->i0 + 4 per head): the same sums in the
 * same order as pass B, so both modes give identical bits. */
static void bwd_kv_item(const bwd_ctx *c, const kv_item *it, int64_t b, int g, float *S, float *dP, float *PT,
                        float *dST, float *dKa, float *dVa, float *dQa) {
    const dm_attn_args *a = c->a;
    const int Dk = a->Dk, Dv = a->Dv, rep = a->H / a->Hkv;
    const int nk = (int)(it->j1 - it->j0);
    const int64_t shift = a->Tk - a->Tq;
    const float *kT = c->kTp + ((int64_t)g * c->n_kv + b) * Dk * BK;
    const float *vT = c->vTp + ((int64_t)g * c->n_kv + b) * Dv * BK;
    memset(dKa, 0, (size_t)BK * Dk * sizeof(float));
    memset(dVa, 0, (size_t)BK * Dv * sizeof(float));
    int64_t ilo = it->i0;
    if (a->causal && it->j0 - shift > ilo) ilo = it->j0 - shift; /* earlier queries see none of it */
    for (int hh = 0; hh < rep; hh++) {
        const int h = g * rep + hh;
        const float *qh = c->q + (int64_t)h * Dk, *oh = c->dout + (int64_t)h * Dv;
        for (int64_t i0 = ilo; i0 < it->i1; i0 += BQ) {
            const int64_t nq = it->i1 - i0 < BQ ? it->i1 - i0 : BQ;
            block_products(S, qh + i0 * c->qs, c->qs, nq, kT, Dk);
            block_products(dP, oh + i0 * c->os, c->os, nq, vT, Dv);
            for (int64_t r = 0; r < nq; r++) {
                const int64_t i = i0 + r;
                grad_row(S + r * BK, dP + r * BK, visible_keys(a, i, it->j0, nk), a->scale,
                         c->lse[i * a->H + h], c->D[i * a->H + h]);
            }
            if (nq < BQ) { /* unused rows must not contribute */
                memset(S + nq * BK, 0, (size_t)(BQ - nq) * BK * sizeof(float));
                memset(dP + nq * BK, 0, (size_t)(BQ - nq) * BK * sizeof(float));
            }
            transpose_sq(PT, S);
            transpose_sq(dST, dP);
            /* dV[j] += sum_r P[r][j] dO_r, dK[j] += sum_r dS[r][j] q_r */
            block_accumulate(dVa, PT, nk, oh + i0 * c->os, c->os, (int)nq, Dv);
            block_accumulate(dKa, dST, nk, qh + i0 * c->qs, c->qs, (int)nq, Dk);
            if (dQa) /* dS rows >= nq are zero: the padded rows of dQa stay unchanged */
                block_accumulate(dQa + ((int64_t)hh * (it->i1 - it->i0 + 4) + (i0 - it->i0)) * Dk, dP, nq,
                                 c->k + it->j0 * c->ks + (int64_t)g * Dk, c->ks, nk, Dk);
        }
    }
    for (int j = 0; j < nk; j++) {
        float *dkr = c->dk + (it->j0 + j) * c->ks + (int64_t)g * Dk;
        float *dvr = c->dv + (it->j0 + j) * c->vs + (int64_t)g * Dv;
        const float *ka = dKa + (int64_t)j * Dk, *va = dVa + (int64_t)j * Dv;
        for (int x = 0; x < Dk; x++) dkr[x] = a->scale * ka[x];
        memcpy(dvr, va, (size_t)Dv * sizeof(float));
    }
}

/* first_kv: index of the kv item holding key it->k0 (the segment's first block). */
static void bwd_q_item(const bwd_ctx *c, const attn_item *it, int64_t first_kv, int h, float *S, float *dP,
                       float *dQa) {
    const dm_attn_args *a = c->a;
    const int Dk = a->Dk, Dv = a->Dv, g = h / (a->H / a->Hkv);
    const int64_t nq = it->q1 - it->q0, shift = a->Tk - a->Tq;
    int64_t khi = it->k1;
    if (a->causal && shift + it->q1 < khi) khi = shift + it->q1;
    const float *qh = c->q + (int64_t)h * Dk + it->q0 * c->qs, *oh = c->dout + (int64_t)h * Dv + it->q0 * c->os;
    memset(dQa, 0, (size_t)BQ * Dk * sizeof(float));
    for (int64_t kb = it->k0; kb < khi; kb += BK) {
        const int nk = (int)(khi - kb < BK ? khi - kb : BK);
        const int64_t b = first_kv + (kb - it->k0) / BK;
        const float *kT = c->kTp + ((int64_t)g * c->n_kv + b) * Dk * BK;
        const float *vT = c->vTp + ((int64_t)g * c->n_kv + b) * Dv * BK;
        block_products(S, qh, c->qs, nq, kT, Dk);
        block_products(dP, oh, c->os, nq, vT, Dv);
        for (int64_t r = 0; r < nq; r++) {
            const int64_t i = it->q0 + r;
            grad_row(S + r * BK, dP + r * BK, visible_keys(a, i, kb, nk), a->scale, c->lse[i * a->H + h],
                     c->D[i * a->H + h]);
        }
        if (nq % 4) memset(dP + nq * BK, 0, (size_t)(4 - nq % 4) * BK * sizeof(float));
        /* dQ[r] += sum_j dS[r][j] k_j */
        block_accumulate(dQa, dP, nq, c->k + kb * c->ks + (int64_t)g * Dk, c->ks, nk, Dk);
    }
    for (int64_t r = 0; r < nq; r++) {
        float *dqr = c->dq + (it->q0 + r) * c->qs + (int64_t)h * Dk;
        const float *qa = dQa + r * Dk;
        for (int x = 0; x < Dk; x++) dqr[x] = a->scale * qa[x];
    }
}

/* 64-key blocks of all segments (the backward's key work items). */
static int64_t backward_key_blocks(const dm_attn_args *a) {
    if (!(a->segments && a->n_seg > 0)) return (a->Tk + BK - 1) / BK;
    int64_t n = 0;
    for (int64_t s = 0; s < a->n_seg; s++) {
        const int64_t len = a->segments[s + 1] - a->segments[s];
        if (len <= 0) return 0;
        n += (len + BK - 1) / BK;
    }
    return n;
}

/* take_two's need for the packs: both buffers rounded to 64 bytes, plus alignment. */
size_t attention_backward_workspace_bytes(const dm_attn_args *a) {
    const size_t blocks = (size_t)backward_key_blocks(a) * (size_t)a->Hkv;
    const size_t b1 = (blocks * (size_t)a->Dk * BK * sizeof(float) + 63) / 64 * 64;
    const size_t b2 = (blocks * (size_t)a->Dv * BK * sizeof(float) + 63) / 64 * 64;
    return b1 + b2 + 64;
}

dm_status attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                             const float *k, const float *v, const float *out, const float *lse,
                             const dm_attn_args *a) {
    if (!dq || !dk || !dv || !dout || !q || !k || !v || !out || !lse || !a)
        return dm_fail(DM_ERR_VALUE, "attention backward: NULL pointer");
    int64_t st[4] = {0, 0, 0, 0}, n_seg = 1;
    DM_TRY(attn_check(a, st, &n_seg));
    if (a->Tq == 0) { /* no queries: the keys get no gradient */
        for (int64_t j = 0; j < a->Tk; j++) {
            memset(dk + j * st[1], 0, (size_t)a->Hkv * a->Dk * sizeof(float));
            memset(dv + j * st[2], 0, (size_t)a->Hkv * a->Dv * sizeof(float));
        }
        return DM_OK;
    }
    const int has_seg = a->segments && a->n_seg > 0;
    int64_t n_q = 0, n_kv = 0;
    for (int64_t s = 0; s < n_seg; s++) {
        const int64_t qlo = has_seg ? a->segments[s] : 0, qhi = has_seg ? a->segments[s + 1] : a->Tq;
        const int64_t klo = has_seg ? a->segments[s] : 0, khi = has_seg ? a->segments[s + 1] : a->Tk;
        n_q += (qhi - qlo + BQ - 1) / BQ;
        n_kv += (khi - klo + BK - 1) / BK;
    }
    attn_item *qitems = dm_alloc((size_t)n_q, sizeof(attn_item), "attention backward query blocks");
    int64_t *qfirst = qitems ? dm_alloc((size_t)(n_q + n_seg + 1), sizeof(int64_t), "attention backward block map")
                             : NULL;
    int64_t *sfirst = qfirst ? qfirst + n_q : NULL; /* first kv item of each segment, n_seg + 1 entries */
    kv_item *kitems = qfirst ? dm_alloc((size_t)n_kv, sizeof(kv_item), "attention backward key blocks") : NULL;
    float *D = kitems ? dm_alloc((size_t)(a->Tq * a->H), sizeof(float), "attention backward D") : NULL;
    const int nt = omp_get_max_threads();
    const size_t blk = (size_t)BK * BK, dk_b = ((size_t)BK * a->Dk + 15) / 16 * 16,
                 dv_b = ((size_t)BK * a->Dv + 15) / 16 * 16;
    /* per thread: S, dP, PT, dST, dK acc, dV acc (pass B: S, dP and dK acc as dQ acc) */
    const size_t per = dk_b + dv_b + 4 * blk;
    float *scratch = D ? dm_alloc((size_t)nt * per, sizeof(float), "attention backward scratch") : NULL;
    void *p1 = NULL, *p2 = NULL;
    int packs_owned = 0;
    if (!scratch || !take_two(a, (size_t)a->Hkv * n_kv * (size_t)a->Dk * BK * sizeof(float),
                              (size_t)a->Hkv * n_kv * (size_t)a->Dv * BK * sizeof(float), &p1, &p2, &packs_owned,
                              "attention backward K/V packs")) {
        dm_free(scratch);
        dm_free(D);
        dm_free(kitems);
        dm_free(qfirst);
        dm_free(qitems);
        return DM_ERR_NOMEM;
    }
    n_q = n_kv = 0;
    for (int64_t s = 0; s < n_seg; s++) {
        const int64_t qlo = has_seg ? a->segments[s] : 0, qhi = has_seg ? a->segments[s + 1] : a->Tq;
        const int64_t klo = has_seg ? a->segments[s] : 0, khi = has_seg ? a->segments[s + 1] : a->Tk;
        sfirst[s] = n_kv;
        for (int64_t r = qlo; r < qhi; r += BQ) {
            qfirst[n_q] = n_kv;
            qitems[n_q++] = (attn_item){r, r + BQ < qhi ? r + BQ : qhi, klo, khi};
        }
        for (int64_t j = klo; j < khi; j += BK)
            kitems[n_kv++] = (kv_item){j, j + BK < khi ? j + BK : khi, qlo, qhi};
    }
    sfirst[n_seg] = n_kv;
    float *kTp = p1, *vTp = p2;
    bwd_ctx c = {dq, dk, dv, dout, q, k, v, lse, D, st[0], st[1], st[2], st[3], a, kTp, vTp, n_kv};
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t w = 0; w < a->Hkv * n_kv; w++) {
        const kv_item *it = &kitems[w % n_kv];
        const int g = (int)(w / n_kv);
        const int nk = (int)(it->j1 - it->j0);
        transpose_block(kTp + w * (int64_t)a->Dk * BK, k, st[1], g, a->Dk, it->j0, nk);
        transpose_block(vTp + w * (int64_t)a->Dv * BK, v, st[2], g, a->Dv, it->j0, nk);
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < a->Tq; i++)
        for (int h = 0; h < a->H; h++) {
            const float *g = dout + i * st[3] + (int64_t)h * a->Dv, *o = out + i * st[3] + (int64_t)h * a->Dv;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int x = 0; x < a->Dv; x++) acc += g[x] * o[x];
            D[i * a->H + h] = acc;
        }
    /* Fused mode: one item per (kv head, segment) runs pass A over the segment's key
     * blocks in order and accumulates dQ on the way (5 block products per block pair
     * instead of 7). Chosen when there are enough such items to keep the threads busy
     * and their dQ accumulators are small; it sums exactly what the two passes sum,
     * in the same order, so the choice (which depends on the thread count) never
     * changes the result. */
    const int rep = a->H / a->Hkv;
    int64_t max_seg = 0;
    for (int64_t s = 0; s < n_seg; s++) {
        const int64_t len = has_seg ? a->segments[s + 1] - a->segments[s] : a->Tq;
        if (len > max_seg) max_seg = len;
    }
    const size_t dq_acc = (size_t)rep * (size_t)(max_seg + 4) * (size_t)a->Dk;
    const int fused = a->Hkv * n_seg >= 2 * (int64_t)nt && dq_acc * sizeof(float) <= ((size_t)16 << 20);
    float *dq_scratch = fused ? dm_alloc((size_t)nt * dq_acc, sizeof(float), "attention backward dq") : NULL;
    if (fused && !dq_scratch) dm_clear_error(); /* no room for the fused schedule: two passes, same result */
    const int64_t total_kv = n_kv * a->Hkv, total_q = n_q * a->H;
#pragma omp parallel num_threads(nt)
    {
        float *S = scratch + (size_t)omp_get_thread_num() * per;
        float *dP = S + blk, *PT = dP + blk, *dST = PT + blk, *dKa = dST + blk, *dVa = dKa + dk_b;
        if (dq_scratch) {
            float *dQa = dq_scratch + (size_t)omp_get_thread_num() * dq_acc;
#pragma omp for schedule(dynamic, 1)
            for (int64_t w = 0; w < a->Hkv * n_seg; w++) {
                const int64_t sg = w % n_seg;
                const int g = (int)(w / n_seg);
                const int64_t b0 = sfirst[sg], b1 = sfirst[sg + 1];
                const int64_t i0 = kitems[b0].i0, i1 = kitems[b0].i1;
                memset(dQa, 0, (size_t)rep * (size_t)(i1 - i0 + 4) * a->Dk * sizeof(float));
                for (int64_t b = b0; b < b1; b++)
                    bwd_kv_item(&c, &kitems[b], b, g, S, dP, PT, dST, dKa, dVa, dQa);
                for (int hh = 0; hh < rep; hh++)
                    for (int64_t i = i0; i < i1; i++) {
                        float *dqr = dq + i * st[0] + (int64_t)(g * rep + hh) * a->Dk;
                        const float *qa = dQa + ((int64_t)hh * (i1 - i0 + 4) + (i - i0)) * a->Dk;
                        for (int x = 0; x < a->Dk; x++) dqr[x] = a->scale * qa[x];
                    }
            }
        } else {
#pragma omp for schedule(dynamic, 1)
            for (int64_t w = 0; w < total_kv; w++)
                bwd_kv_item(&c, &kitems[w % n_kv], w % n_kv, (int)(w / n_kv), S, dP, PT, dST, dKa, dVa, NULL);
#pragma omp for schedule(dynamic, 1)
            for (int64_t w = 0; w < total_q; w++)
                bwd_q_item(&c, &qitems[w % n_q], qfirst[w % n_q], (int)(w / n_q), S, dP, dKa);
        }
    }
    dm_free(dq_scratch);
    if (packs_owned) {
        dm_free(p2);
        dm_free(p1);
    }
    dm_free(scratch);
    dm_free(qfirst);
    dm_free(D);
    dm_free(kitems);
    dm_free(qitems);
    return DM_OK;
}
