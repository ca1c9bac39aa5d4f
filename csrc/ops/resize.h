/* Anti-aliased bilinear resize of uint8 images, bit-exact to PyTorch's uint8 kernel:
 * F.interpolate(uint8 NCHW, mode="bilinear", antialias=True, align_corners=False) on
 * CPU, the resize transformers' fast SigLIP2 processor runs through torchvision.
 *
 * PyTorch's algorithm (aten/src/ATen/native/cpu/UpSampleKernel.cpp, the separable
 * "aa" path): per axis a triangle filter stretched by the scale when shrinking (plain
 * bilinear when enlarging), taps and weights computed in double, normalised to sum 1,
 * then converted to int16 fixed point with the largest precision that keeps the
 * biggest weight of the axis below 2^15 (Pillow-SIMD's scheme). The horizontal pass
 * runs first (skipped when the width is unchanged), rounded to uint8 by
 * (sum + 2^(p-1)) >> p and clamped; then the vertical pass the same way (skipped when
 * the height is unchanged). All integer arithmetic after the weights: no float
 * rounding order to match. */
#ifndef DM_OPS_RESIZE_H
#define DM_OPS_RESIZE_H

#include <stdint.h>

#include "core/status.h"

/* Filter taps of one axis: output i reads inputs [start[i], start[i] + size[i]) with
 * int16 weights w[i * taps + 0..size[i]) in fixed point of `precision` bits.
 * Free with resize_axis_free. */
typedef struct {
    int64_t n_out, taps;
    int64_t *start;
    int64_t *size;
    int16_t *w;
    int precision;
} dm_resize_axis;

dm_status resize_axis_init(dm_resize_axis *ax, int64_t n_in, int64_t n_out);
void resize_axis_free(dm_resize_axis *ax);

/* out uint8 row-major [OH][OW][C] from `in` uint8 [H][W][C] with byte strides (any
 * sign: numpy views and broadcasts are read in place, never copied). Memory: one
 * uint8 [H][OW][C] intermediate when both axes change. */
dm_status resize_bilinear_aa_u8(uint8_t *out, const uint8_t *in, int64_t H, int64_t W, int64_t C,
                                int64_t stride_h, int64_t stride_w, int64_t stride_c, int64_t OH,
                                int64_t OW);

#endif
