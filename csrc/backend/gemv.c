/* Small-M products over bf16 / f32 weight rows (see gemv.h). */
#include "backend/gemv.h"

#include <stdatomic.h>
#include <string.h>

#include "core/alloc.h"

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
           (w->dtype == DM_BF16 || w->dtype == DM_F32);
}

#ifdef DM_GEMV_AVX512
static inline __m512 load_w(const void *w, int is_bf16, int64_t k) {
    return dm_load16_f32((const char *)w + (size_t)k * (is_bf16 ? 2 : 4), is_bf16);
}

static inline __m512 load_w_tail(const void *w, int is_bf16, int64_t k, __mmask16 mk) {
    return dm_load16_f32_mask((const char *)w + (size_t)k * (is_bf16 ? 2 : 4), is_bf16, mk);
}

/* One weight row against M activation rows; two accumulator sets hide FMA latency. */
static inline __attribute__((always_inline)) void row_dot(const void *wr, int is_bf16, const float *x,
                                                          int64_t K, const int M, float *res) {
    __m512 a0[DM_GEMV_MAX_M], a1[DM_GEMV_MAX_M];
    for (int m = 0; m < M; m++) a0[m] = a1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 w0 = load_w(wr, is_bf16, k), w1 = load_w(wr, is_bf16, k + 16);
        for (int m = 0; m < M; m++) {
            a0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * K + k), a0[m]);
            a1[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + m * K + k + 16), a1[m]);
        }
    }
    for (; k < K; k += 16) {
        int64_t left = K - k;
        __mmask16 mk = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 w0 = load_w_tail(wr, is_bf16, k, mk);
        for (int m = 0; m < M; m++) a0[m] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk, x + m * K + k), a0[m]);
    }
    for (int m = 0; m < M; m++) res[m] = _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m]));
}

/* M = 1, GEMV_R weight rows at once: that many concurrent memory streams per thread
 * (more requests in flight than one sequential stream: 1.5x the bandwidth
 * here) and one x load per GEMV_R FMAs. */
#define GEMV_R 8
static inline void rows_dot1(const char *w0, size_t row_bytes, int is_bf16, const float *x, int64_t K,
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
        for (int r = 0; r < GEMV_R; r++) a[r] = _mm512_fmadd_ps(load_w(w[r], is_bf16, k), xv, a[r]);
    }
    if (k < K) {
        __mmask16 mk = (__mmask16)((1u << (K - k)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(mk, x + k);
        for (int r = 0; r < GEMV_R; r++) a[r] = _mm512_fmadd_ps(load_w_tail(w[r], is_bf16, k, mk), xv, a[r]);
    }
    for (int r = 0; r < GEMV_R; r++) res[r] = _mm512_reduce_add_ps(a[r]);
}
#define DM_GEMV_ROWS 1
#else
static inline void row_dot(const void *wr, int is_bf16, const float *x, int64_t K, const int M, float *res) {
    for (int m = 0; m < M; m++) {
        float acc = 0;
        const float *xm = x + m * K;
        if (is_bf16) {
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
            row_dot(wb + (size_t)n * (size_t)K * esz, is_bf16, x, K, MM, res);              \
            for (int m = 0; m < MM; m++) {                                                  \
                float v = res[m] + (bias_f ? bias_f[n] : 0.0f);                             \
                out[m * N + n] = accumulate ? out[m * N + n] + v : v;                       \
            }                                                                               \
        }                                                                                   \
    } break;

dm_status dm_gemv(float *out, const float *x, const dm_tensor *w, const dm_tensor *bias, int64_t M,
                  int accumulate) {
    const int64_t N = w->shape[0], K = w->shape[1];
    if (M < 1 || M > DM_GEMV_MAX_M) return dm_fail(DM_ERR_VALUE, "gemv: M=%lld outside 1..%d", (long long)M, DM_GEMV_MAX_M);
    if (w->dtype != DM_BF16 && w->dtype != DM_F32)
        return dm_fail(DM_ERR_TYPE, "gemv: weight dtype %s (bf16 or f32 expected)", dm_dtype_name(w->dtype));
    const int is_bf16 = w->dtype == DM_BF16;
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
        #pragma omp parallel for schedule(static) if (N * K > 32768)
        for (int64_t q = 0; q < N4; q++) {
            float res[GEMV_R];
            rows_dot1(wb + (size_t)(GEMV_R * q) * rb, rb, is_bf16, x, K, res);
            for (int r = 0; r < GEMV_R; r++) {
                int64_t n = GEMV_R * q + r;
                float v = res[r] + (bias_f ? bias_f[n] : 0.0f);
                out[n] = accumulate ? out[n] + v : v;
            }
        }
        for (int64_t n = GEMV_R * N4; n < N; n++) {
            float res[1];
            row_dot(wb + (size_t)n * rb, is_bf16, x, K, 1, res);
            float v = res[0] + (bias_f ? bias_f[n] : 0.0f);
            out[n] = accumulate ? out[n] + v : v;
        }
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
