/* Fully connected CRF refinement (Kraehenbuehl & Koltun, NeurIPS 2011) by mean-field
 * inference, with the message passing done on a permutohedral lattice (Adams, Baek &
 * Davis, Eurographics 2010) so each iteration is linear in the pixels.
 *
 * Semantics follow pydensecrf / densecrf v2 (DenseCRF2D with addPairwiseGaussian and
 * addPairwiseBilateral, PottsCompatibility, DIAG_KERNEL, NORMALIZE_SYMMETRIC) so that its
 * parameters mean the same here (docs/crf.md):
 *   unary      U_i(l) = -log(clip(p_i(l), clip_min, 1))  (pydensecrf.utils.unary_from_softmax)
 *   Gaussian   k_g(i, j) = exp(-|p_i - p_j|^2 / (2 sxy_g^2))                 p = (x, y)
 *   bilateral  k_b(i, j) = exp(-|p_i - p_j|^2 / (2 sxy_b^2) - |I_i - I_j|^2 / (2 srgb^2))
 *   Q_0 = softmax(-U); each iteration, for every pixel i and label l,
 *   Q_i(l) <- softmax_l(-U_i(l) + sum_k compat_k * n_k(i) * sum_j k_k(i, j) n_k(j) Q_j(l))
 *   with the symmetric normalisation n_k(i) = 1 / sqrt(sum_j k_k(i, j)).
 * Sums over j include j = i (the lattice filters every pixel with itself, as densecrf's
 * does). Potts with weight w rewards agreeing labels by w * message, which equals the
 * penalty w * [l_i != l_j] up to a per-pixel constant (Q sums to 1), so Q is the same.
 * The lattice gives the Gaussian sums approximately (its blur is a 3-tap binomial along the
 * d + 1 lattice directions, one sample per standard deviation); the error against the exact
 * sums is measured in tests/test_crf.py.
 *
 * Work per iteration: O(N (d + 1) C) splat and slice plus O(M (d + 1) C) blur (M lattice
 * vertices <= N (d + 1)), in parallel over vertices and pixels with the project's thread
 * count; no atomics, so results do not depend on the thread count. Memory: the output Q
 * (N x C), one vertex buffer per kernel plus one shared (M x C each) and 16 (d + 1) bytes
 * per pixel per kernel for the lattice. */
#ifndef DM_DENSE_CRF_H
#define DM_DENSE_CRF_H

#include <stdint.h>

#include "core/status.h"

/* Bounds (the binding reports them; one source of truth). */
#define CRF_MAX_PIXELS ((int64_t)1 << 28)  /* lattice indices are int32: N (d + 1) < 2^31 */
#define CRF_MAX_CLASSES 65536
#define CRF_MAX_ITERATIONS 1000
#define CRF_MAX_COMPAT 1e6f
#define CRF_MAX_FEATURE 1e6f /* largest scaled feature (x / sxy, 255 / srgb): keys stay in int32 */

typedef struct {
    float sxy_gaussian;     /* position std-dev of the Gaussian kernel, pixels (> 0) */
    float compat_gaussian;  /* its Potts weight (>= 0; 0 switches the kernel off) */
    float sxy_bilateral;    /* position std-dev of the bilateral kernel, pixels (> 0) */
    float srgb;             /* colour std-dev of the bilateral kernel, 0..255 units (> 0) */
    float compat_bilateral; /* its Potts weight (>= 0; 0 switches the kernel off) */
    int32_t iterations;     /* mean-field iterations, 0..CRF_MAX_ITERATIONS */
    float clip;             /* probabilities are clipped to [clip, 1] before the log; (0, 1) */
} crf_params;

/* q_out[h, w, C] = the mean-field marginals after p->iterations iterations.
 * image: uint8 RGB [h, w, 3] (only read when compat_bilateral > 0); probs: f32 [h, w, C],
 * each entry in [0, 1] (rows need not sum to 1: the unary is scale-free per pixel).
 * Fails (no output promised) on bad sizes, parameters or NaN / out-of-range probabilities. */
dm_status crf_inference(float *q_out, const float *probs, const uint8_t *image, int64_t h, int64_t w,
                        int64_t C, const crf_params *p);

/* The lattice filter alone, for tests: out[n, C] = sum_j K(i, j) in[j, :] (approximate
 * Gaussian with unit std-dev over the given features f[n, d], d in 1..CRF_MAX_DIM,
 * including j = i; no normalisation). */
#define CRF_MAX_DIM 5
dm_status crf_lattice_filter(float *out, const float *in, const float *features, int64_t n, int d,
                             int64_t C);

#endif
