#include "dense/rle.h"

#include <limits.h>
#include <stdio.h>

static int digits_u64(uint64_t v) {
    int d = 1;
    while (v >= 10) { v /= 10; d++; }
    return d;
}

/* Walk the runs of map; for each call emit(value, count). Sequential by nature:
 * a run can span any number of elements. */
dm_status rle_encoded_length(const int32_t *map, int64_t n, size_t *len) {
    if (n < 0) return dm_fail(DM_ERR_VALUE, "rle: negative length %lld", (long long)n);
    size_t total = 0;
    int64_t i = 0;
    while (i < n) {
        int32_t v = map[i];
        if (v < 0)
            return dm_fail(DM_ERR_VALUE,
                           "rle: value %d at flat index %lld is negative; the RLE grammar has "
                           "only non-negative values", v, (long long)i);
        int64_t j = i + 1;
        while (j < n && map[j] == v) j++;
        total += 3 + (size_t)digits_u64((uint64_t)v) + (size_t)digits_u64((uint64_t)(j - i));
        i = j;
    }
    *len = total;
    return DM_OK;
}

dm_status rle_encode(const int32_t *map, int64_t n, char *out, size_t cap, size_t *len) {
    size_t need;
    DM_TRY(rle_encoded_length(map, n, &need));
    if (cap < need) return dm_fail(DM_ERR_VALUE, "rle: buffer of %zu bytes, need %zu", cap, need);
    size_t pos = 0;
    int64_t i = 0;
    while (i < n) {
        int32_t v = map[i];
        int64_t j = i + 1;
        while (j < n && map[j] == v) j++;
        char tmp[48];
        int w = snprintf(tmp, sizeof tmp, "(%d,%lld)", v, (long long)(j - i));
        if (w < 0 || pos + (size_t)w > cap) return dm_fail(DM_ERR_VALUE, "rle: encoding overflow");
        for (int c = 0; c < w; c++) out[pos + (size_t)c] = tmp[c];
        pos += (size_t)w;
        i = j;
    }
    *len = pos;
    return DM_OK;
}

/* Python's str \s restricted to ASCII: \t \n \v \f \r, \x1c-\x1f and space. */
static int is_space(unsigned char c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
}
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* Try to match one pair at text[p]. On success returns 1 and sets *end, *value,
 * *count; a number too large for uint64 saturates to UINT64_MAX (the caller
 * rejects it, with the number's position, only once the pair matched). */
static int match_pair(const unsigned char *t, size_t len, size_t p, size_t *end, uint64_t *value,
                      uint64_t *count) {
    if (p >= len || t[p] != '(') return 0;
    p++;
    uint64_t nums[2];
    for (int k = 0; k < 2; k++) {
        while (p < len && is_space(t[p])) p++;
        if (p >= len || !is_digit(t[p])) return 0;
        uint64_t x = 0;
        while (p < len && is_digit(t[p])) {
            unsigned d = (unsigned)(t[p] - '0');
            x = (x > (UINT64_MAX - d) / 10) ? UINT64_MAX : x * 10 + d;
            p++;
        }
        nums[k] = x;
        while (p < len && is_space(t[p])) p++;
        if (p >= len || t[p] != (k == 0 ? ',' : ')')) return 0;
        p++;
    }
    *end = p;
    *value = nums[0];
    *count = nums[1];
    return 1;
}

dm_status rle_decode(const char *text, size_t len, int32_t *out, int64_t n, int64_t *pairs) {
    if (n < 0) return dm_fail(DM_ERR_VALUE, "rle: negative length %lld", (long long)n);
    const unsigned char *t = (const unsigned char *)text;
    int64_t filled = 0, npairs = 0;
    size_t p = 0;
    while (p < len) {
        size_t end;
        uint64_t v, c;
        if (!match_pair(t, len, p, &end, &v, &c)) {
            p++; /* findall: no match here, try the next character */
            continue;
        }
        if (v > (uint64_t)INT32_MAX)
            return dm_fail(DM_ERR_VALUE, "rle: value at byte %zu does not fit int32 (max %d)", p,
                           INT32_MAX);
        if (c > (uint64_t)(n - filled))
            return dm_fail(DM_ERR_VALUE,
                           "rle: the runs cover more than the %lld elements of the map (pair %lld at "
                           "byte %zu overflows)", (long long)n, (long long)npairs, p);
        for (uint64_t k = 0; k < c; k++) out[filled + (int64_t)k] = (int32_t)v;
        filled += (int64_t)c;
        npairs++;
        p = end;
    }
    if (filled != n)
        return dm_fail(DM_ERR_VALUE, "rle: the runs cover %lld elements but the map has %lld",
                       (long long)filled, (long long)n);
    if (pairs) *pairs = npairs;
    return DM_OK;
}
