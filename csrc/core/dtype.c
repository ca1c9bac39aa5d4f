#include "core/dtype.h"

#include <string.h>

static const struct { const char *name; size_t size; } dm_dtypes[DM_DTYPE_COUNT] = {
    [DM_F32] = {"F32", 4},  [DM_BF16] = {"BF16", 2}, [DM_F16] = {"F16", 2},
    [DM_F64] = {"F64", 8},  [DM_I8] = {"I8", 1},     [DM_U8] = {"U8", 1},
    [DM_I16] = {"I16", 2},  [DM_U16] = {"U16", 2},   [DM_I32] = {"I32", 4},
    [DM_U32] = {"U32", 4},  [DM_I64] = {"I64", 8},   [DM_U64] = {"U64", 8},
    [DM_BOOL] = {"BOOL", 1},
};

size_t dm_dtype_size(dm_dtype t) { return (unsigned)t < DM_DTYPE_COUNT ? dm_dtypes[t].size : 0; }

const char *dm_dtype_name(dm_dtype t) {
    return (unsigned)t < DM_DTYPE_COUNT ? dm_dtypes[t].name : "?";
}

int dm_dtype_from_name(const char *name, size_t len, dm_dtype *out) {
    for (int t = 0; t < DM_DTYPE_COUNT; t++) {
        if (strlen(dm_dtypes[t].name) == len && memcmp(dm_dtypes[t].name, name, len) == 0) {
            *out = (dm_dtype)t;
            return 1;
        }
    }
    return 0;
}

float dm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    union { uint32_t u; float f; } v = { bits };
    return v.f;
}

void dm_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n) {
    #pragma omp simd
    for (size_t i = 0; i < n; i++) dst[i] = dm_bf16_to_f32(src[i]);
}

void dm_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n) {
    #pragma omp simd
    for (size_t i = 0; i < n; i++) dst[i] = dm_f32_to_bf16(src[i]);
}

void dm_f16_to_f32_n(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = dm_f16_to_f32(src[i]);
}

int dm_to_f32_n(float *dst, const void *src, dm_dtype t, size_t n) {
    switch (t) {
    case DM_F32: memcpy(dst, src, n * sizeof(float)); return 1;
    case DM_BF16: dm_bf16_to_f32_n(dst, (const uint16_t *)src, n); return 1;
    case DM_F16: dm_f16_to_f32_n(dst, (const uint16_t *)src, n); return 1;
    default: return 0;
    }
}
