/* Small-M products over bf16 / f32 weight rows (see gemv.h). */
#include "backend/gemv.h"

#include <stdatomic.h>
#include <string.h>

#include "core/alloc.h"
#include "core/quant.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define DM_GEMV_AVX512 1
#endif

static atomic_int gemv_on = 1;

void dm_gemv_set_enabled(int on) { atomic_store(&gemv_on, on ? 1 : 0); }
int dm_gemv_enabled(void) { return atomic_load(&gemv_on); }

int dm_gemv_applies(dm_backend backend, const dm_tensor *w, int64_t M) {
    (void)backend;
    return atomic_load(&gemv_on) && M >= 1 && M <= DM_GEMV_MAX_M &&
           (w->dtype == DM_BF16 || w->dtype == DM_F32 || (w->dtype == DM_I8 && w->row_scale));
}

#ifdef DM_GEMV_AVX512
/* kind: W_F32, W_BF16 or W_I8 (int8 values; the row scale is applied to the sum) */
enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2 };

static inline __m512 load_w(const void *w, int kind, int64_t k) {
    if (kind == W_I8)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)w + k))));
    return dm_load16_f32((const char *)w + (size_t)k * (kind == W_BF16 ? 2 : 4), kind == W_BF16);
}

static inline __m512 load_w_tail(const void *w, int kind, int64_t k, __mmask16 mk) {
    if (kind == W_I8)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, (const int8_t *)w + k)));
    return dm_load16_f32_mask((const char *)w + (size_t)k * (kind == W_BF16 ? 2 : 4), kind == W_BF16, mk);
}

/* One weight row against M activation rows; two accumulator sets hide FMA latency. */
static inline __attribute__((always_inline)) void row_dot(const void *wr, int kind, const float *x,
                                                          int64_t K, const int M, float *res) {
    __m512 a0[DM_GEMV_MAX_M], a1[DM_GEMV_MAX_M];
    for (int m = 0; m < M; m++) a0[m] = a1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 w0 = load_w(wr, kind, k), w1 = load_w(wr, kind, k + 16);
        for (int m = 0; m < M; m++) {
            a0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * K + k), a0[m]);
            a1[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + m * K + k + 16), a1[m]);
        }
    }
    for (; k < K; k += 16) {
        int64_t left = K - k;
        __mmask16 mk = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 w0 = load_w_tail(wr, kind, k, mk);
        for (int m = 0; m < M; m++) a0[m] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk, x + m * K + k), a0[m]);
    }
    for (int m = 0; m < M; m++) res[m] = _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m]));
}

/* M = 1, GEMV_R weight rows at once: that many concurrent memory streams per thread
 * (more requests in flight than one sequential stream: 1.5x the bandwidth
 * here) and one x load per GEMV_R FMAs. */
#define GEMV_R 8
/* int8 rows at M = 1 against x quantized to int16 (x16 = round(x / sx), one scale
 * for the row: relative rounding 2^-16 of max|x|, far below the weights' int8
 * rounding): vpmovsxbw + vpmaddwd give 32 products per two uops (widening to f32
 * took four per 16 and made the loop compute-bound). int32 partial sums are moved
 * to f32 every 256 elements: 256 * 32767 * 127 < 2^31, no overflow. */
#define I8_BLOCK 256
static inline void rows_dot1_i8(const char *w0, size_t row_bytes, const int16_t *x16, int64_t K, float *res) {
    const int8_t *w[GEMV_R];
    __m512 a[GEMV_R];
    for (int r = 0; r < GEMV_R; r++) {
        w[r] = (const int8_t *)(w0 + (size_t)r * row_bytes);
        a[r] = _mm512_setzero_ps();
    }
    for (int64_t kb = 0; kb < K; kb += I8_BLOCK) {
        const int64_t ke = K - kb < I8_BLOCK ? K : kb + I8_BLOCK;
        __m512i acc[GEMV_R];
        for (int r = 0; r < GEMV_R; r++) acc[r] = _mm512_setzero_si512();
        int64_t k = kb;
        for (; k + 32 <= ke; k += 32) {
            const __m512i xv = _mm512_loadu_si512(x16 + k);
            for (int r = 0; r < GEMV_R; r++) {
                const __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w[r] + k)));
                acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(wv, xv));
            }
        }
        if (k < ke) {
            const __mmask32 mk = (__mmask32)((1ull << (ke - k)) - 1);
            const __m512i xv = _mm512_maskz_loadu_epi16(mk, x16 + k);
            for (int r = 0; r < GEMV_R; r++) {
                const __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mk, w[r] + k));
                acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(wv, xv));
            }
        }
        for (int r = 0; r < GEMV_R; r++) a[r] = _mm512_add_ps(a[r], _mm512_cvtepi32_ps(acc[r]));
    }
    for (int r = 0; r < GEMV_R; r++) res[r] = _mm512_reduce_add_ps(a[r]);
}

static inline void rows_dot1(const char *w0, size_t row_bytes, int kind, const float *x, int64_t K,
                              float *res) {
    const void *w[GEMV_R];
    __m512 a[GEMV_R];
    for (int r = 0; r < GEMV_R; r++) {
        w[r] = w0 + (size_t)r * row_bytes;
        a[r] = _mm512_setzero_ps();
    }
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv = _mm512_loadu_ps(x + k);
        for (int r = 0; r < GEMV_R; r++) a[r] = _mm512_fmadd_ps(load_w(w[r], kind, k), xv, a[r]);
    }
    if (k < K) {
        __mmask16 mk = (__mmask16)((1u << (K - k)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(mk, x + k);
        for (int r = 0; r < GEMV_R; r++) a[r] = _mm512_fmadd_ps(load_w_tail(w[r], kind, k, mk), xv, a[r]);
    }
    for (int r = 0; r < GEMV_R; r++) res[r] = _mm512_reduce_add_ps(a[r]);
}
#define DM_GEMV_ROWS 1
#else
enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2 };
static inline void row_dot(const void *wr, int kind, const float *x, int64_t K, const int M, float *res) {
    for (int m = 0; m < M; m++) {
        float acc = 0;
        const float *xm = x + m * K;
        if (kind == W_I8) {
            const int8_t *w = wr;
            for (int64_t k = 0; k < K; k++) acc += (float)w[k] * xm[k];
        } else if (kind == W_BF16) {
            const uint16_t *w = wr;
            for (int64_t k = 0; k < K; k++) acc += dm_bf16_to_f32(w[k]) * xm[k];
        } else {
            const float *w = wr;
            for (int64_t k = 0; k < K; k++) acc += w[k] * xm[k];
        }
        res[m] = acc;
    }
}
#endif

#define GEMV_CASE(MM)                                                                      \
    case MM: {                                                                              \
        _Pragma("omp parallel for schedule(static) if (N * K > 32768)")                    \
        for (int64_t n = 0; n < N; n++) {                                                   \
            float res[DM_GEMV_MAX_M];                                                       \
            row_dot(wb + (size_t)n * (size_t)K * esz, kind, x, K, MM, res);              \
            for (int m = 0; m < MM; m++) {                                                  \
                float v = res[m] * (rs ? rs[n] : 1.0f) + (bias_f ? bias_f[n] : 0.0f);        \
                out[m * N + n] = accumulate ? out[m * N + n] + v : v;                       \
            }                                                                               \
        }                                                                                   \
    } break;

dm_status dm_gemv(float *out, const float *x, const dm_tensor *w, const dm_tensor *bias, int64_t M,
                  int accumulate) {
    const int64_t N = w->shape[0], K = w->shape[1];
    if (M < 1 || M > DM_GEMV_MAX_M) return dm_fail(DM_ERR_VALUE, "gemv: M=%lld outside 1..%d", (long long)M, DM_GEMV_MAX_M);
    if (w->dtype != DM_BF16 && w->dtype != DM_F32 && !(w->dtype == DM_I8 && w->row_scale))
        return dm_fail(DM_ERR_TYPE, "gemv: weight dtype %s (bf16, f32 or scaled int8 expected)",
                       dm_dtype_name(w->dtype));
    const int kind = w->dtype == DM_BF16 ? W_BF16 : w->dtype == DM_I8 ? W_I8 : W_F32;
    const float *rs = w->dtype == DM_I8 ? w->row_scale : NULL;
    const size_t esz = dm_dtype_size(w->dtype);
    const char *wb = w->data;
    float bias_stack[1024];
    float *bias_f = NULL, *bias_heap = NULL;
    if (bias) {
        if (N <= 1024) {
            bias_f = bias_stack;
        } else {
            bias_f = bias_heap = dm_alloc((size_t)N, sizeof(float), "gemv bias");
            if (!bias_f) return DM_ERR_NOMEM;
        }
        dm_status s = dm_tensor_to_f32(bias, bias_f);
        if (s != DM_OK) {
            dm_free(bias_heap);
            return s;
        }
    }
#ifdef DM_GEMV_ROWS
    if (M == 1) {
        const int64_t N4 = N / GEMV_R;
        const size_t rb = (size_t)K * esz;
        int16_t x16_stack[16384], *x16 = NULL, *x16_heap = NULL; /* no allocation per decode step */
        float sx = 1.0f;
        if (kind == W_I8) {
            x16 = K <= 16384 ? x16_stack : (x16_heap = dm_alloc((size_t)K, sizeof(int16_t), "gemv int16 activations"));
            if (!x16) {
                dm_free(bias_heap);
                return DM_ERR_NOMEM;
            }
            sx = dm_quant_scale(dm_absmax(x, K), 32767.0f);
            dm_quantize_i16(x16, x, K, 1.0f / sx);
        }
        #pragma omp parallel for schedule(static) if (N * K > 32768)
        for (int64_t q = 0; q < N4; q++) {
            float res[GEMV_R];
            if (x16)
                rows_dot1_i8(wb + (size_t)(GEMV_R * q) * rb, rb, x16, K, res);
            else
                rows_dot1(wb + (size_t)(GEMV_R * q) * rb, rb, kind, x, K, res);
            for (int r = 0; r < GEMV_R; r++) {
                int64_t n = GEMV_R * q + r;
                float v = res[r] * (rs ? rs[n] * sx : 1.0f) + (bias_f ? bias_f[n] : 0.0f);
                out[n] = accumulate ? out[n] + v : v;
            }
        }
        for (int64_t n = GEMV_R * N4; n < N; n++) {
            float res[1];
            row_dot(wb + (size_t)n * rb, kind, x, K, 1, res);
            float v = res[0] * (rs ? rs[n] : 1.0f) + (bias_f ? bias_f[n] : 0.0f);
            out[n] = accumulate ? out[n] + v : v;
        }
        dm_free(x16_heap);
        dm_free(bias_heap);
        return DM_OK;
    }
#endif
    switch ((int)M) {
        GEMV_CASE(1)
        GEMV_CASE(2)
        GEMV_CASE(3)
        GEMV_CASE(4)
    }
    dm_free(bias_heap);
    return DM_OK;
}
