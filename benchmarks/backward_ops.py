"""Op backward passes (csrc/ops, csrc/backend): densemllm (C) against PyTorch autograd, same run.

Shapes of the Youtu-VL vision tower (1024 patches, hidden 1152 = 16 heads x 72,
ffn 4304, 64-token windows) and of the MLA decoder's expanded attention (1088
tokens, 16 heads, q/k 192 = nope 128 + rope 64, v 128, causal). f32 throughout.
Each case times forward + backward of one op on both sides:

- attention: ours attention_forward (saving lse) + attention_backward; PyTorch
  scaled_dot_product_attention + autograd (windows as a boolean block mask, the
  way SDPA takes them; causal through is_causal);
- linear: the two transposed products dX = dY W, dW = dY^T X and db (ours on
  oneDNN and on OpenBLAS) against torch's two matmuls + sum;
- layernorm: ours saving forward + backward; torch forward + autograd;
- gelu-tanh: the backward alone on both sides.

    .venv/bin/python benchmarks/backward_ops.py [--threads N] [--repeat 5] [--cpu-time]

Rounds alternate (densemllm, PyTorch) after a warm-up, so both see the same machine
load; prints best and median wall time per case and the ratio torch/ours (> 1:
ours faster). --cpu-time reports the process's CPU time (all threads) instead:
on a machine shared with other jobs it counts work rather than waiting; run it
with OMP_WAIT_POLICY=passive so that idle OpenMP threads of either side do not
spin (their spinning would count as CPU time).
"""
import argparse
import statistics
import time

import numpy as np
import torch

import densemllm
from densemllm import _core


CLOCK = time.perf_counter


def timed(f):
    t = CLOCK()
    f()
    return CLOCK() - t


def attention_case(rng, T, H, Dk, Dv, causal, window):
    q, k, v, dy = (rng.standard_normal((T, H, d), dtype=np.float32) for d in (Dk, Dk, Dv, Dv))
    scale = Dk ** -0.5
    seg = None if window is None else np.array(list(range(0, T, window)) + [T], np.int64)

    def ours():
        out, lse = _core.op_attention_forward(q, k, v, scale, causal=causal, segments=seg)
        _core.op_attention_backward(dy, q, k, v, out, lse, scale, causal=causal, segments=seg)

    qt, kt, vt = (torch.from_numpy(a).transpose(0, 1).contiguous().requires_grad_() for a in (q, k, v))
    g = torch.from_numpy(dy).transpose(0, 1).contiguous()
    mask = None
    if seg is not None:
        ids = torch.bucketize(torch.arange(T), torch.from_numpy(seg[1:]), right=True)
        mask = ids[:, None] == ids[None, :]

    def ref():
        o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=causal, scale=scale)
        torch.autograd.grad(o, (qt, kt, vt), g)

    return ours, ref


def linear_case(rng, M, N, K, backend):
    x, w, dy = (rng.standard_normal(s, dtype=np.float32) for s in ((M, K), (N, K), (M, N)))
    X, W, DY = (torch.from_numpy(a) for a in (x, w, dy))

    def ours():
        _core.op_linear_backward(dy, x, w, backend)

    def ref():
        DY @ W, DY.T @ X, DY.sum(0)

    return ours, ref


def layernorm_case(rng, n, d):
    x, dy = rng.standard_normal((n, d), dtype=np.float32), rng.standard_normal((n, d), dtype=np.float32)
    w, b = rng.standard_normal(d, dtype=np.float32), rng.standard_normal(d, dtype=np.float32)
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    g = torch.from_numpy(dy)

    def ours():
        _, mean, rstd = _core.op_layernorm_forward(x, w, b, 1e-6)
        _core.op_layernorm_backward(dy, x, mean, rstd, w, True)

    def ref():
        y = torch.nn.functional.layer_norm(xt, (d,), wt, bt, 1e-6)
        torch.autograd.grad(y, (xt, wt, bt), g)

    return ours, ref


def gelu_case(rng, n):
    """Backward only on both sides (torch: one graph kept, autograd.grad with retain_graph)."""
    x, dy = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    xt, g = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)
    y = torch.nn.functional.gelu(xt, approximate="tanh")

    def ours():
        _core.op_activation_backward("gelu_tanh", dy, x)

    def ref():
        torch.autograd.grad(y, xt, g, retain_graph=True)

    return ours, ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="threads for both sides (0: all cores)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    densemllm.set_num_threads(args.threads)
    nt = densemllm.get_num_threads()
    torch.set_num_threads(nt)
    rng = np.random.default_rng(0)
    cases = [
        ("attention vision full 1024x16x72", attention_case(rng, 1024, 16, 72, 72, False, None)),
        ("attention vision windows of 64", attention_case(rng, 1024, 16, 72, 72, False, 64)),
        ("attention MLA causal 1088x16 (192/128)", attention_case(rng, 1088, 16, 192, 128, True, None)),
        ("linear 1024x1152->4304 onednn", linear_case(rng, 1024, 4304, 1152, "onednn")),
        ("linear 1024x1152->4304 openblas", linear_case(rng, 1024, 4304, 1152, "openblas")),
        ("layernorm 1024x1152", layernorm_case(rng, 1024, 1152)),
        ("gelu-tanh backward 1024x4304", gelu_case(rng, 1024 * 4304)),
    ]
    unit = "CPU" if args.cpu_time else "wall"
    print(f"threads {nt}; {args.repeat} rounds after a warm-up; {unit} ms best / median")
    print(f"{'case':42s} {'densemllm':>17s} {'pytorch':>17s} {'torch/ours':>10s}")
    for name, (ours, ref) in cases:
        ours(), ref()
        to, tr = [], []
        for _ in range(args.repeat):
            to.append(timed(ours))
            tr.append(timed(ref))
        bo, br = min(to), min(tr)
        print(f"{name:42s} {bo * 1e3:8.1f} / {statistics.median(to) * 1e3:6.1f} "
              f"{br * 1e3:8.1f} / {statistics.median(tr) * 1e3:6.1f} {br / bo:10.2f}")


if __name__ == "__main__":
    main()
