/* Streaming (flash-attention style) multi-head attention, f32, shared by the
 * vision tower (windows / whole image) and the language model (causal, KV cache).
 *
 *   out[i, h, :] = softmax_j(scale * q[i, h, :] . k[j, g, :]) v[j, g, :],  g = h / (H / Hkv)
 *
 * Keys are visited in blocks with an online softmax, so memory is O(block) per
 * thread, never a Tq x Tk matrix. Work is split over (query block x head). */
#ifndef DM_OPS_ATTENTION_H
#define DM_OPS_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

typedef struct {
    int64_t Tq, Tk;        /* query and key token counts */
    int H, Hkv;            /* query heads, key/value heads (H % Hkv == 0) */
    int Dk, Dv;            /* head dims of q/k and of v/out */
    /* Row strides in elements between consecutive tokens; 0 means packed
     * (H*Dk for q, Hkv*Dk for k, Hkv*Dv for v, H*Dv for out). Head h of token i
     * lives at base + i*stride + h*D. */
    int64_t q_stride, k_stride, v_stride, out_stride;
    float scale;
    /* Causal: query i sits at absolute position Tk - Tq + i and sees keys
     * j <= that position (requires Tq <= Tk). */
    int causal;
    /* Optional segments: n_seg + 1 increasing boundaries, segments[0] = 0,
     * segments[n_seg] = Tk; requires Tq == Tk. A query sees only keys of its own
     * segment (vision windows). NULL / n_seg = 0: one segment. */
    const int64_t *segments;
    int64_t n_seg;
    /* bf16 products: q, k, the softmax probabilities and v are rounded to bf16
     * for QK^T and PV (f32 accumulation, f32 online softmax), the precision of a
     * bf16 model's matmuls, at several times the f32 speed. AMX tiles where the
     * CPU has them, else AVX512-BF16 (vdpbf16ps); exact f32 on CPUs with neither. */
    int bf16;
    /* Optional caller-owned workspace for the packed copies of K and V (the large
     * part of the kernel's memory); used when at least attention_workspace_bytes(a)
     * long, else the kernel allocates. Lets a model reuse warm pages across calls. */
    void *workspace;
    size_t workspace_bytes;
    /* Optional output for training: lse[i * H + h] = log sum_j exp(scale q_i.k_j)
     * over the keys row (i, h) sees (f32 [Tq, H]), what attention_backward
     * needs. NULL: not written (inference). When set, the exact f32 path runs
     * even if bf16 is asked for (training is f32). */
    float *lse;
} dm_attn_args;

/* Bytes of workspace attention_forward can use for these arguments. */
size_t attention_workspace_bytes(const dm_attn_args *a);

/* 1 when a->bf16 really runs bf16 products on this machine (for tests and benchmarks). */
int attention_bf16_available(void);
/* The kernel a->bf16 runs now: "amx", "avx512_bf16" or "none". */
const char *attention_bf16_kernel(void);
/* Process-wide switch (default on): off makes AMX machines run the AVX512-BF16
 * kernel, so tests and benchmarks can compare the two on one machine. */
void attention_set_amx(int on);

dm_status attention_forward(float *out, const float *q, const float *k, const float *v,
                            const dm_attn_args *a);

/* Bytes of workspace attention_backward can use for these arguments (its K/V
 * packs). Reads segments[0..n_seg] when set. */
size_t attention_backward_workspace_bytes(const dm_attn_args *a);

/* Backward, FlashAttention-2 style (nothing Tq x Tk is ever stored):
 * with P_ij = exp(scale q_i.k_j - lse_i) on the visible keys (0 elsewhere) and
 * D_i = sum_c dout_ic out_ic (computed here from out, per row and head),
 *   dv_j = sum_i P_ij dout_i
 *   dS_ij = P_ij (dout_i . v_j - D_i)
 *   dq_i = scale sum_j dS_ij k_j          dk_j = scale sum_i dS_ij q_i
 * summed over the H / Hkv query heads sharing a kv head for dk, dv.
 * Inputs: the forward's q, k, v, out and lse (attention_forward with a->lse
 * set, same args). dq / dk / dv are OVERWRITTEN (their [H*Dk] / [Hkv*Dk] /
 * [Hkv*Dv] part of each row) with the layouts and row strides of q / k / v;
 * dout has the layout of out; dq, dk, dv must not overlap each other or the
 * inputs. Same masking rules (segments, causal, GQA, Dk != Dv, scale) as the
 * forward. Each output element has one writer and is
 * summed in a fixed order: with enough (kv head, segment) pairs for the threads,
 * one item per pair visits its key blocks in order and owns their dk/dv and its
 * queries' dq (5 block products per block pair); otherwise a pass over (kv head,
 * key block) owns dk/dv and a pass over (head, query block) owns dq, recomputing
 * the score blocks (7 products). Both schedules add the same terms in the same
 * order: results are bit-identical for any thread count.
 * Memory: per-thread block scratch (and the fused schedule's dq accumulator, at
 * most 16 MiB), D (Tq*H floats) and one transposed copy of K and V per key block
 * (Hkv * blocks * 64 * (Dk+Dv) floats, blocks = the 64-key blocks of every
 * segment), taken from a->workspace when that holds
 * attention_backward_workspace_bytes(a), else allocated. */
dm_status attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                             const float *k, const float *v, const float *out, const float *lse,
                             const dm_attn_args *a);

#endif
