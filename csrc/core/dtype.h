/* Element types of tensors and the conversions between them. */
#ifndef DM_CORE_DTYPE_H
#define DM_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DM_F32 = 0,
    DM_BF16,
    DM_F16,
    DM_F64,
    DM_I8,
    DM_U8,
    DM_I16,
    DM_U16,
    DM_I32,
    DM_U32,
    DM_I64,
    DM_U64,
    DM_BOOL,
    DM_DTYPE_COUNT
} dm_dtype;

size_t dm_dtype_size(dm_dtype t);
const char *dm_dtype_name(dm_dtype t);          /* safetensors spelling: "BF16" */
int dm_dtype_from_name(const char *name, size_t len, dm_dtype *out); /* 1 if known */

static inline float dm_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

/* Round to nearest even, NaN kept quiet (the rounding PyTorch uses). */
static inline uint16_t dm_f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + rounding) >> 16);
}

float dm_f16_to_f32(uint16_t h);

/* Bulk conversions (vectorised, single-threaded; callers parallelise). */
void dm_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void dm_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);
void dm_f16_to_f32_n(float *dst, const uint16_t *src, size_t n);

/* Convert n elements of a float-kind dtype (F32, BF16, F16) to f32. */
int dm_to_f32_n(float *dst, const void *src, dm_dtype t, size_t n);

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
/* 16 weights at p (bf16 widened exactly by a shift, or f32) as f32; the masked
 * form reads only the lanes of mk (zeros elsewhere). For kernels that read bf16
 * or f32 weight rows in place. */
static inline __m512 dm_load16_f32(const void *p, int is_bf16) {
    if (is_bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
    return _mm512_loadu_ps((const float *)p);
}
static inline __m512 dm_load16_f32_mask(const void *p, int is_bf16, __mmask16 mk) {
    if (is_bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, p)), 16));
    return _mm512_maskz_loadu_ps(mk, (const float *)p);
}
#endif

#endif
