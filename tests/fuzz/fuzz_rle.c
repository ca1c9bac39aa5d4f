/* libFuzzer harness: the RLE mask grammar (decode and encode).
 *
 * Input: 2 bytes of map length n (< 65536), then the text. A successful decode must
 * fill exactly n elements, all in [0, INT32_MAX]; re-encoding that map and decoding
 * the result must give the same map back (the round trip the tasks rely on). The
 * same bytes read as int32 values are also encoded, which must succeed exactly when
 * none is negative and whose length must match rle_encoded_length. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "dense/rle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int64_t n = (int64_t)data[0] | (int64_t)data[1] << 8;
    const char *text = (const char *)data + 2;
    size_t len = size - 2;
    int32_t *map = malloc(((size_t)n + 1) * sizeof *map);
    if (!map) abort();
    int64_t pairs = -1;
    if (rle_decode(text, len, map, n, &pairs) == DM_OK) {
        if (pairs < 0) abort();
        for (int64_t i = 0; i < n; i++)
            if (map[i] < 0) abort();
        size_t need = 0, got = 0;
        if (rle_encoded_length(map, n, &need) != DM_OK) abort();
        char *enc = malloc(need + 1);
        if (!enc || rle_encode(map, n, enc, need, &got) != DM_OK || got != need) abort();
        int32_t *back = malloc(((size_t)n + 1) * sizeof *back);
        if (!back || rle_decode(enc, got, back, n, NULL) != DM_OK) abort();
        if (n && memcmp(back, map, (size_t)n * sizeof *map) != 0) abort();
        free(back);
        free(enc);
    } else if (!dm_last_error()[0]) {
        abort();
    }
    free(map);

    int64_t m = (int64_t)(len / sizeof(int32_t));
    int32_t *vals = malloc(((size_t)m + 1) * sizeof *vals);
    if (!vals) abort();
    if (m) memcpy(vals, text, (size_t)m * sizeof *vals);
    int any_negative = 0;
    for (int64_t i = 0; i < m; i++) any_negative |= vals[i] < 0;
    size_t need = 0;
    dm_status st = rle_encoded_length(vals, m, &need);
    if ((st == DM_OK) == any_negative) abort();
    if (st == DM_OK) {
        char *enc = malloc(need + 1);
        size_t got = 0;
        if (!enc || rle_encode(vals, m, enc, need, &got) != DM_OK || got != need) abort();
        /* One byte short must be refused, never overrun. */
        if (need && rle_encode(vals, m, enc, need - 1, &got) == DM_OK) abort();
        int32_t *back = malloc(((size_t)m + 1) * sizeof *back);
        if (!back || rle_decode(enc, need, back, m, NULL) != DM_OK) abort();
        if (m && memcmp(back, vals, (size_t)m * sizeof *vals) != 0) abort();
        free(back);
        free(enc);
    }
    free(vals);
    return 0;
}
