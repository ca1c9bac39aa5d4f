"""Vision tower + merger: densemllm (C) against a PyTorch reference, same run.

Youtu-VL-sized layers (hidden 1152, 16 heads of 72, ffn 4304, patch 16, window
256 px, merger to 2560) at reduced depth (4 layers, the last one global), on
512x512 and 1024x1024 images, in bf16 and f32, both sides with the same thread
count. The PyTorch reference runs the same weights in the same precision (bf16:
bf16 weights and activations, oneDNN/AMX underneath; f32: f32), with SDPA per
window (all windows are full at these sizes, so they are batched) and SDPA over
the whole image on the global layer.

    .venv/bin/python benchmarks/vision.py [--threads N] [--sizes 512,1024]
                                          [--dtypes bf16,f32] [--repeat 3] [--cpu-time]

Prints ms per image (best of --repeat, the two sides interleaved, after one
warm-up each), achieved GFLOP/s
(matmul + attention FLOPs, 2 per multiply-add) and the ratio torch/densemllm
(> 1: densemllm faster).
"""
import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import densemllm
import densemllm.vision
from densemllm.testing import make_checkpoint

VISION = dict(hidden_size=1152, num_attention_heads=16, intermediate_size=4304, num_hidden_layers=4,
              patch_size=16, window_size=256, fullatt_block_indexes=[3])
LLM_HIDDEN = 2560


def flops(cfg, gh, gw):
    D, F_, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    N = gh * gw
    win = (cfg["window_size"] // 32) ** 2 * 4  # patches per full window
    f = 2 * N * 768 * D
    for i in range(L):
        f += 2 * N * (4 * D * D + 2 * D * F_)
        s = N if i in cfg["fullatt_block_indexes"] else min(win, N)
        f += 4 * N * s * D  # QK^T and PV
    M = N // 4
    f += 2 * M * (4 * D * 4 * D + 4 * D * LLM_HIDDEN)
    return f


class TorchTower:
    """The tower written for speed in PyTorch (window order, batched SDPA)."""

    def __init__(self, w, cfg, dtype):
        def g(name, merger=False):
            for p in (("merger.",) if merger else ("siglip2.vision_model.",)):
                if p + name in w:
                    return w[p + name].to(dtype).contiguous()
            raise KeyError(name)

        self.cfg, self.dtype = cfg, dtype
        self.pe = (g("embeddings.patch_embedding.weight"), g("embeddings.patch_embedding.bias"))
        self.layers = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layers.{i}."
            lin = lambda n: (g(p + n + ".weight"), g(p + n + ".bias"))
            qkv_w = torch.cat([g(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
            qkv_b = torch.cat([g(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
            self.layers.append(dict(ln1=lin("layer_norm1"), ln2=lin("layer_norm2"), qkv=(qkv_w, qkv_b),
                                    o=lin("self_attn.out_proj"), fc1=lin("mlp.fc1"), fc2=lin("mlp.fc2")))
        self.post = (g("post_layernorm.weight"), g("post_layernorm.bias"))
        self.ln_q = g("ln_q.weight", True)
        self.m0 = (g("mlp.0.weight", True), g("mlp.0.bias", True))
        self.m2 = (g("mlp.2.weight", True), g("mlp.2.bias", True))

    @torch.inference_mode()
    def __call__(self, patches, gh, gw):
        cfg = self.cfg
        D, H = cfg["hidden_size"], cfg["num_attention_heads"]
        hd = D // H
        mh, mw, win = gh // 2, gw // 2, cfg["window_size"] // 32
        assert mh % win == 0 and mw % win == 0, "benchmark sizes use whole windows"
        # window order of the merged tokens, and each patch's grid position
        idx = torch.arange(mh * mw).reshape(mh // win, win, mw // win, win).permute(0, 2, 1, 3).reshape(-1)
        order = (idx[:, None] * 4 + torch.arange(4)).reshape(-1)
        rows = ((idx // mw)[:, None] * 2 + torch.tensor([0, 0, 1, 1])).reshape(-1).float()
        cols = ((idx % mw)[:, None] * 2 + torch.tensor([0, 1, 0, 1])).reshape(-1).float()
        d = hd // 2
        f = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
        ang = torch.cat([rows[:, None] * f, cols[:, None] * f], 1)
        ang = torch.cat([ang, ang], 1)[:, None, :]
        cos, sin = ang.cos().to(self.dtype), ang.sin().to(self.dtype)

        def rope(x):
            x1, x2 = x[..., :d], x[..., d:]
            return x * cos + torch.cat([-x2, x1], -1) * sin

        x = F.linear(patches[order].to(self.dtype), *self.pe)
        n = x.shape[0]
        nw, wl = n // (win * win * 4), win * win * 4
        for i, l in enumerate(self.layers):
            h = F.layer_norm(x, (D,), *l["ln1"], cfg["layer_norm_eps"])
            q, k, v = F.linear(h, *l["qkv"]).view(n, 3, H, hd).unbind(1)
            q, k = rope(q), rope(k)
            if i in cfg["fullatt_block_indexes"]:
                a = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                                   v.transpose(0, 1)[None])[0].transpose(0, 1)
            else:
                t = lambda z: z.view(nw, wl, H, hd).transpose(1, 2)
                a = F.scaled_dot_product_attention(t(q), t(k), t(v)).transpose(1, 2)
            x = x + F.linear(a.reshape(n, D), *l["o"])
            h = F.layer_norm(x, (D,), *l["ln2"], cfg["layer_norm_eps"])
            x = x + F.linear(F.gelu(F.linear(h, *l["fc1"]), approximate="tanh"), *l["fc2"])
        x = F.layer_norm(x, (D,), *self.post, cfg["layer_norm_eps"])
        xf = x.float()
        x = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(self.dtype) * self.ln_q
        x = F.gelu(F.linear(x.reshape(n // 4, 4 * D), *self.m0))
        y = F.linear(x, *self.m2).float()
        out = torch.empty_like(y)
        out[idx] = y
        return out


CLOCK = time.perf_counter


def timeit_pair(fa, fb, repeat):
    """Best wall time of each, runs interleaved (a, b, a, b, ...) after one warm-up
    each, so that load from other processes on a shared machine hits both alike;
    the minimum is the least disturbed run."""
    fa()
    fb()  # warm-up (oneDNN primitive creation, first-touch page faults)
    ta, tb = [], []
    for _ in range(repeat):
        for f, ts in ((fa, ta), (fb, tb)):
            t = CLOCK()
            f()
            ts.append(CLOCK() - t)
    return min(ta), min(tb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--dtypes", default="bf16,f32")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process CPU clock (use with --threads 1 on a shared machine: "
                         "other jobs' load then does not count)")
    args = ap.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    threads = args.threads or torch.get_num_threads()
    densemllm.set_num_threads(threads)
    torch.set_num_threads(threads)
    info = densemllm.build_info()
    print(f"clock: {'process CPU time' if args.cpu_time else 'wall'}; threads {threads}; oneDNN {info['onednn']} ISA: {info['onednn_isa']}; torch {torch.__version__}")
    print(f"{'dtype':5} {'image':>9} {'patches':>7} {'densemllm ms':>12} {'GFLOP/s':>8} "
          f"{'torch ms':>9} {'GFLOP/s':>8} {'torch/ours':>10} {'max rel diff':>12}")
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        for dt in args.dtypes.split(","):
            path = make_checkpoint(Path(tmp) / dt, dtype=dt, vision=VISION, hidden_size=LLM_HIDDEN,
                                   num_hidden_layers=1, intermediate_size=128)
            model = densemllm.load(path)
            cfg = densemllm.vision.vision_config_dict(model.config)
            ref = TorchTower(load_file(str(path / "model.safetensors")), cfg,
                             torch.bfloat16 if dt == "bf16" else torch.float32)
            for size in [int(s) for s in args.sizes.split(",")]:
                rng = np.random.default_rng(size)
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pre = model.preprocess(img)
                gh, gw = pre.grid
                tp = torch.from_numpy(pre.patches)
                ours = densemllm.vision.encode_patches(model, pre.patches, gh, gw)
                theirs = ref(tp, gh, gw).numpy()
                diff = np.abs(ours - theirs).max() / np.abs(theirs).max()
                t_ours, t_ref = timeit_pair(lambda: densemllm.vision.encode_patches(model, pre.patches, gh, gw),
                                            lambda: ref(tp, gh, gw), args.repeat)
                fl = flops(cfg, gh, gw)
                print(f"{dt:5} {size:>4}x{size:<4} {gh * gw:>7} {t_ours * 1e3:>12.1f} {fl / t_ours / 1e9:>8.1f} "
                      f"{t_ref * 1e3:>9.1f} {fl / t_ref / 1e9:>8.1f} {t_ref / t_ours:>10.2f} {diff:>12.2e}",
                      flush=True)
            del model, ref


if __name__ == "__main__":
    main()
