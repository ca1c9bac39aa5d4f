/* Anti-aliased bilinear resize, numerically the algorithm of PyTorch's
 * F.interpolate(mode="bilinear", antialias=True, align_corners=False) on float
 * input (what torchvision's tensor resize uses): per axis, a triangle filter
 * stretched by the scale when shrinking (plain bilinear when enlarging),
 * weights normalised to sum 1, computed in f32 exactly as PyTorch does. */
#ifndef DM_OPS_RESIZE_H
#define DM_OPS_RESIZE_H

#include <stdint.h>

#include "core/status.h"

/* Filter taps of one axis: output i reads inputs [start[i], start[i] + size[i])
 * with weights w[i * taps + 0..size[i]). Free with resize_axis_free. */
typedef struct {
    int64_t n_out, taps;
    int64_t *start;
    int64_t *size;
    float *w;
} dm_resize_axis;

dm_status resize_axis_init(dm_resize_axis *ax, int64_t n_in, int64_t n_out);
void resize_axis_free(dm_resize_axis *ax);

/* out[oy][ox][c] = mul * sum wy wx in[y][x][c] + add, out row-major [OH][OW][C]
 * f32. `in` is uint8 with byte strides (any sign: numpy views, broadcasts), so
 * no contiguous copy of a huge input is ever made. Rows are streamed: memory is
 * one input-width row of f32 per thread. */
dm_status resize_bilinear_aa_u8(float *out, const uint8_t *in, int64_t H, int64_t W, int64_t C,
                                int64_t stride_h, int64_t stride_w, int64_t stride_c, int64_t OH,
                                int64_t OW, float mul, float add);

#endif
