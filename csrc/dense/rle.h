/* Run-length text of an integer map, exactly as the model writes it after <mask>:
 * concatenated "(value,count)" pairs over the row-major flattened map.
 *
 * Decoding follows the official parser, Python's
 *   re.findall(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", text)
 * scanned left to right: anything between pairs that does not form a pair is
 * ignored (findall skips it). Digits and whitespace are the ASCII ones; Python's
 * str \s also matches \x1c-\x1f, which we accept too, so ASCII text parses
 * identically. Non-ASCII bytes are never digits or spaces here (Python would also
 * accept Unicode digits such as U+0663): stricter, and the model never writes them.
 * Where the official code reshapes and fails on a length mismatch, we fail too:
 * the counts must add up to exactly n, and every value must fit int32. */
#ifndef DM_DENSE_RLE_H
#define DM_DENSE_RLE_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* Length in bytes (no terminator) of the RLE text of map[0..n). Values must be
 * >= 0 (the official grammar has no sign). */
dm_status rle_encoded_length(const int32_t *map, int64_t n, size_t *len);

/* Write the text into out[0..cap); cap must be >= rle_encoded_length. */
dm_status rle_encode(const int32_t *map, int64_t n, char *out, size_t cap, size_t *len);

/* Parse text[0..len) into out[0..n). Fails (DM_ERR_VALUE) on a value above
 * INT32_MAX, a count overflowing, or counts not summing to exactly n; out is never
 * written past n. *pairs (may be NULL) receives the number of pairs read. */
dm_status rle_decode(const char *text, size_t len, int32_t *out, int64_t n, int64_t *pairs);

#endif
