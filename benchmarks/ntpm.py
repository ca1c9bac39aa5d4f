"""NTP-M loss + gradient: densemllm (C) against a vectorised PyTorch implementation of
the same formula (Eq. 5, k relevant negatives), in the same run.

Setup (issue 6): L=4096 vision tokens, V=128256 vocabulary, 1-4 positives per token,
k=32, all ids valid, float32 logits, reduction="sum", gradient wanted.

Each implementation runs in its own subprocess (same inputs from the same seed):
  time   : wall time of one loss+gradient call, best of --repeat calls
  memory : growth of the process's peak RSS (VmHWM in /proc/self/status) over the RSS
           after the inputs exist; the peak is reset (write "5" to /proc/self/clear_refs)
           before each call, so the number is the call's own peak extra memory. The
           [L, V] float32 logits and gradient are 2.10 GB each.
The PyTorch version is the strongest simple vectorisation we know: one topk of k+4
over the logits (no [L, V] copy), positives removed from those candidates, one gather
of the |P|+k selected logits, softplus terms, autograd for the gradient (which
materialises one dense [L, V] gradient). torch and densemllm use the same threads.

Usage: .venv/bin/python benchmarks/ntpm.py [--L 4096] [--V 128256] [--k 32] [--threads N]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's densemllm


def make_inputs(L, V, seed=0):
    rng = np.random.default_rng(seed)
    z = np.empty((L, V), np.float32)
    for i in range(0, L, 256):  # row chunks: no float64 temporaries of the full size
        z[i:i + 256] = rng.standard_normal((min(256, L - i), V), dtype=np.float32) * 3
    npos = rng.integers(1, 5, L)
    pos = [rng.choice(V, n, replace=False) for n in npos]
    return z, pos


def rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_ours(z, pos, k, threads, grad=True, out=None):
    import densemllm

    def call():
        return densemllm.ntpm_loss(z, pos, k=k, threads=threads, grad=grad, out=out)
    return call


def run_torch(z, pos, k, threads):
    import torch

    torch.set_num_threads(threads)
    L, V = z.shape
    maxp = max(len(p) for p in pos)
    pad = np.full((L, maxp), -1, np.int64)
    w = np.zeros((L, maxp), np.float32)
    for i, p in enumerate(pos):
        pad[i, :len(p)] = p
        w[i, :len(p)] = 1.0 / len(p)
    pos_pad, pos_w = torch.from_numpy(pad), torch.from_numpy(w)

    def call():
        zt = torch.from_numpy(z).requires_grad_(True)  # shares the logits' memory
        with torch.no_grad():
            cand = torch.topk(zt, k + maxp, dim=1).indices            # [L, k+maxp]
            is_pos = (cand[:, :, None] == pos_pad[:, None, :]).any(-1)
            first = torch.argsort(is_pos.to(torch.int8), dim=1, stable=True)[:, :k]
            neg = torch.gather(cand, 1, first)                        # top-k non-positives
        sel = torch.cat([pos_pad.clamp(min=0), neg], dim=1)
        zs = zt.gather(1, sel)
        lp = torch.nn.functional.softplus(-zs[:, :maxp]) * pos_w       # -log p, padded slots weigh 0
        ln = torch.nn.functional.softplus(zs[:, maxp:]) / k            # -log(1-p)
        loss = lp.sum() + ln.sum()
        loss.backward()
        return float(loss.detach()), zt.grad
    return call


def child(impl, L, V, k, threads, repeat):
    z, pos = make_inputs(L, V)
    if impl == "torch":
        call = run_torch(z, pos, k, threads)
    elif impl == "ours_out":  # one gradient buffer reused across calls (a training loop)
        call = run_ours(z, pos, k, threads, out=np.empty_like(z))
    else:
        call = run_ours(z, pos, k, threads, grad="sparse" if impl == "ours_sparse" else True)
    times, growth = [], []
    for _ in range(repeat):
        base = rss_kb("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        loss, grad = call()
        times.append(time.perf_counter() - t0)
        growth.append(rss_kb("VmHWM") - base)
        if isinstance(grad, tuple):  # CSR (offsets, ids, values)
            nnz = int(grad[0][64])
        else:
            nnz = int(np.count_nonzero(np.asarray(grad)[:64]))  # sanity: sparse gradient rows
        del grad
    floor = []
    for _ in range(repeat if impl == "ours" else 0):  # reading the logits once (NumPy sum)
        t0 = time.perf_counter()
        z.sum()
        floor.append(time.perf_counter() - t0)
    print(json.dumps(dict(impl=impl, loss=loss, time_s=min(times), times=times, peak_growth_mb=max(growth) / 1024,
                          nnz_first64=nnz, read_floor_s=min(floor) if floor else None)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--V", type=int, default=128256)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", choices=["ours", "ours_out", "ours_sparse", "torch"])
    a = ap.parse_args()
    if a.child:
        child(a.child, a.L, a.V, a.k, a.threads, a.repeat)
        return
    import densemllm
    import torch

    res = {}
    impls = ("ours", "torch", "ours_out", "ours_sparse")
    for impl in impls:
        out = subprocess.run([sys.executable, __file__, "--child", impl, "--L", str(a.L), "--V", str(a.V), "--k",
                              str(a.k), "--threads", str(a.threads), "--repeat", str(a.repeat)],
                             check=True, capture_output=True, text=True)
        res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    buf_mb = a.L * a.V * 4 / 2**20
    isa = densemllm.build_info().get("onednn_isa", "?")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, oneDNN ISA {isa}; "
          f"threads={a.threads}; torch {torch.__version__}")
    print(f"L={a.L} V={a.V} k={a.k}, 1-4 positives/token, f32 logits, grad; one [L,V] f32 buffer = {buf_mb:.0f} MiB")
    for impl in impls:
        r = res[impl]
        print(f"{impl:11s}: {r['time_s'] * 1e3:8.1f} ms (best of {len(r['times'])}: "
              f"{', '.join(f'{t * 1e3:.0f}' for t in r['times'])})  peak extra memory {r['peak_growth_mb']:8.1f} MiB"
              f"  loss {r['loss']:.6f}  nnz(grad[:64]) {r['nnz_first64']}")
    print("(ours: dense f32 [L, V] gradient like torch, fresh per call; ours_out: the same into one reused out= "
          "buffer; ours_sparse: grad='sparse', the same gradient as CSR)")
    print(f"memory-read floor: numpy sum over the logits {res['ours']['read_floor_s'] * 1e3:.1f} ms (best of "
          f"{a.repeat}, 1 thread)")
    rel = abs(res["ours"]["loss"] - res["torch"]["loss"]) / abs(res["torch"]["loss"])
    print(f"speedup torch/ours: {res['torch']['time_s'] / res['ours']['time_s']:.2f}x; "
          f"memory ours/torch: {res['ours']['peak_growth_mb'] / res['torch']['peak_growth_mb']:.2f}; "
          f"loss rel. diff {rel:.2e}")


if __name__ == "__main__":
    main()
