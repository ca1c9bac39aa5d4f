/* Dense decoding from vision-token logits (notes section 7, paper Sec. 3.1).
 *
 * The pipeline for one prefill: the final-RMSNorm'ed hidden states of the T vision
 * tokens (a gh2 x gw2 merged-token grid, row-major) times the LM-head rows of only
 * the ids the task needs -> per-class logits [T, K] (mean over a class's sub-word
 * ids) -> bilinear upsampling with half-pixel centres (torch F.interpolate,
 * mode="bilinear", align_corners=False, antialias=False) -> score transform ->
 * argmax. Maps are channels-last: [h, w, C] row-major.
 *
 * Order of operations (documented choice): the transform (softmax with
 * temperature, or the background sigmoid) is applied to the UPSAMPLED logits, as
 * the paper's M = argmax(I(R(Z))) composes. Softmax is monotonic per pixel, so
 * without CRF the labels equal the plain argmax; the temperature only shapes the
 * probabilities (dense_scores) that a CRF would consume.
 *
 * Background mode (`<OTHERS>`, notes 7): channel scores sigmoid(0.25 * z_k) meet a
 * constant background score 0.5; label 0 = background, label 1 + k = class k.
 * Ties go to the background (it comes first in the argmax, like torch.argmax). */
#ifndef DM_DENSE_DENSE_H
#define DM_DENSE_DENSE_H

#include <stdint.h>

#include "backend/matmul.h"
#include "core/status.h"
#include "core/tensor.h"

/* out[T, K]: out[t, k] = mean_{j in [offsets[k], offsets[k+1])} hidden[t] . head[ids[j]].
 * hidden f32 [T, D]; head a [vocab, D] view (F32/BF16/F16) used in place: only the
 * distinct requested rows are gathered (in the head's own dtype) and multiplied.
 * offsets has K+1 entries, offsets[0] = 0, non-decreasing, every class non-empty;
 * ids must lie in [0, vocab). */
dm_status dense_class_logits(dm_backend backend, float *out, const float *hidden, int64_t T,
                             int64_t D, const dm_tensor *head, const int64_t *offsets,
                             const int64_t *ids, int64_t K);

/* out[oh, ow, C] = bilinear (half-pixel centres, no antialias) resize of in[h, w, C]. */
dm_status dense_upsample_bilinear(float *out, const float *in, int64_t h, int64_t w, int64_t C,
                                  int64_t oh, int64_t ow);

/* labels[oh, ow] = argmax over the C channels of the bilinearly resized in[h, w, C],
 * without materialising the resized map (C x oh x ow floats can be gigabytes).
 * background != 0: label 0 when sigmoid(bg_scale * max_k z_k) <= bg_score, else
 * 1 + argmax (the background mode above), evaluated exactly as
 * max_k z_k > logit(bg_score) / bg_scale (needs bg_scale > 0, 0 < bg_score < 1).
 * Along an output row, pixels between the same two source columns are labelled by
 * bisection (the upper envelope of linear functions is convex), so only run ends
 * are evaluated in full; labels can differ from a per-pixel evaluation only where
 * two channels tie to within float rounding. */
dm_status dense_upsample_argmax(int32_t *labels, const float *in, int64_t h, int64_t w, int64_t C,
                                int64_t oh, int64_t ow, int background, float bg_scale,
                                float bg_score);

/* Per-row scores of z[n, C]. background == 0: out[n, C] = softmax(z / temperature).
 * background != 0: out[n, C + 1], column 0 = bg_score, column 1 + k =
 * sigmoid(bg_scale * z_k). */
dm_status dense_scores(float *out, const float *z, int64_t n, int64_t C, float temperature,
                       int background, float bg_scale, float bg_score);

typedef enum {
    DENSE_DEPTH_LINEAR = 0, /* bins 1..nbins linear onto [dmin, dmax] (datasets) */
    DENSE_DEPTH_LOG = 1,    /* bins 1..nbins log-uniform onto [dmin, dmax] (open world) */
} dense_depth_mode;

/* Metres from (possibly interpolated, fractional) bin values, n of them:
 * bin b in [1, nbins] -> dmin + (dmax - dmin) * (b - 1) / (nbins - 1) (linear) or
 * dmin * (dmax / dmin)^((b - 1) / (nbins - 1)) (log), times `scale` (the focal
 * correction). Bin 1 is dmin, bin nbins is dmax. b < 1 -> NaN (bin 0 = invalid;
 * a pixel interpolated between an invalid and a valid bin may land there too);
 * b > nbins is clamped; NaN in -> NaN out. */
dm_status dense_depth_dequantize(float *out, const float *bins, int64_t n, dense_depth_mode mode,
                                 float dmin, float dmax, int32_t nbins, float scale);

#endif
