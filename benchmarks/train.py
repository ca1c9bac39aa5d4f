"""One training step (forward + backward of every parameter), densemllm (C) against
PyTorch eager (autograd, SDPA), same weights, same inputs, same threads, same run.

Model (a Youtu-VL-shaped miniature, ~55M parameters, f32):
  vision: hidden 384, 6 heads of 64, ffn 1536, 8 layers (3 and 7 global, the others
          windowed 128 px = 4x4 merged tokens), patch 16, gelu-tanh; merger 1536 -> 512
  text:   hidden 512, 8 layers, 8 heads, MLA q_lora 384, kv_lora 128, nope 32, rope 16,
          v 32, SwiGLU 1408, vocab 32000, tied head
Input: a 512x512 image (1024 patches -> 256 vision tokens) in a chat prompt + 64 text
tokens; loss = text cross-entropy on the 64 text tokens + NTP-M (k=32, full vocabulary)
on the 256 vision tokens.
PyTorch side: the vision tower written for speed (window order, batched SDPA per
window, SDPA on global layers) + transformers' YoutuForCausalLM (attn_implementation
"sdpa") fed inputs_embeds, NTP-M vectorised (top-k on detached logits).

    .venv/bin/python benchmarks/train.py [--threads N] [--repeat 3] [--cpu-time]
    .venv/bin/python benchmarks/train.py --ntpm-memory   # vocab 283386, 1024 vision tokens
    .venv/bin/python benchmarks/train.py --full-step     # + the optimizer: a whole training step

--full-step: forward + backward + global-norm clipping (1.0) + AdamW, ours (TrainableModel +
densemllm.train.optim.AdamW in C) against the PyTorch loop (the same step + clip_grad_norm_
+ torch.optim.AdamW, default single-tensor CPU path), same data, same threads.

Step time: best of --repeat, the two sides interleaved (ours, torch, ours, ...) after
one warm-up each, so load from other processes hits both alike. Peak memory: each side
in a fresh subprocess, VmHWM after one step minus VmRSS after loading (model, inputs).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VISION = dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536, num_hidden_layers=8, patch_size=16,
              window_size=128, fullatt_block_indexes=[3, 7], hidden_act="gelu_pytorch_tanh")
TEXT = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
            num_key_value_heads=8, q_lora_rank=384, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16,
            v_head_dim=32, vocab_size=32000, tie_word_embeddings=True)
N_TEXT, K = 64, 32


CLOCK = time.perf_counter


def reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a peak measures what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def sample(tokenizer, image_token_id, n_vis, vocab, seed=0):
    """(ids, labels, vision targets): chat prompt with the image, N_TEXT answer tokens."""
    rng = np.random.default_rng(seed)
    prompt = tokenizer.chat_prompt([{"role": "user", "content": [{"type": "image"},
                                                                 {"type": "text", "text": "Segment the road."}]}])
    p_ids = tokenizer.expand_image_pads(tokenizer.encode(prompt), n_vis)
    answer = [int(x) for x in rng.integers(0, tokenizer.vocab_size, N_TEXT)]
    ids = p_ids + answer
    labels = [-100] * len(p_ids) + answer
    targets = [rng.choice(vocab, size=int(rng.integers(1, 4)), replace=False) for _ in range(n_vis)]
    return ids, labels, targets


# ---------------------------------------------------------------- PyTorch side


class TorchModel:
    """Vision tower + merger (f32, window order, SDPA) and YoutuForCausalLM (sdpa), all
    parameters leaves with gradients."""

    def __init__(self, path):
        import torch
        from safetensors.torch import load_file

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_llm import hf_config  # the config mapping the parity tests use

        from transformers import YoutuForCausalLM

        cfg = json.loads((path / "config.json").read_text())
        self.cfg, self.vcfg = cfg, cfg["vision_config"]
        w = load_file(str(path / "model.safetensors"))
        self.v = {n: t.float().clone().requires_grad_(True) for n, t in w.items()
                  if not n.startswith(("model.", "lm_head."))}
        hc = hf_config(cfg)
        hc._attn_implementation = "sdpa"
        torch.manual_seed(0)
        self.lm = YoutuForCausalLM(hc)
        self.lm.load_state_dict({k: v for k, v in w.items() if k.startswith(("model.", "lm_head."))}, strict=False)
        self.lm.tie_weights()
        self.lm.train()

    def params(self):
        return list(self.v.values()) + list(self.lm.parameters())

    def tower(self, patches, gh, gw):
        import torch
        import torch.nn.functional as F

        c = self.vcfg
        g = lambda n: self.v["siglip2.vision_model." + n]
        gm = lambda n: self.v["merger." + n]
        D, H = c["hidden_size"], c["num_attention_heads"]
        hd = D // H
        mh, mw, win = gh // 2, gw // 2, c["window_size"] // 32
        idx = torch.arange(mh * mw).reshape(mh // win, win, mw // win, win).permute(0, 2, 1, 3).reshape(-1)
        order = (idx[:, None] * 4 + torch.arange(4)).reshape(-1)
        rows = ((idx // mw)[:, None] * 2 + torch.tensor([0, 0, 1, 1])).reshape(-1).float()
        cols = ((idx % mw)[:, None] * 2 + torch.tensor([0, 1, 0, 1])).reshape(-1).float()
        d = hd // 2
        f = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
        ang = torch.cat([rows[:, None] * f, cols[:, None] * f], 1)
        ang = torch.cat([ang, ang], 1)[:, None, :]
        cos, sin = ang.cos(), ang.sin()

        def rope(x):
            return x * cos + torch.cat([-x[..., d:], x[..., :d]], -1) * sin

        x = F.linear(patches[order], g("embeddings.patch_embedding.weight"), g("embeddings.patch_embedding.bias"))
        n = x.shape[0]
        nw, wl = n // (win * win * 4), win * win * 4
        for i in range(c["num_hidden_layers"]):
            p = f"encoder.layers.{i}."
            lin = lambda t, nm: F.linear(t, g(p + nm + ".weight"), g(p + nm + ".bias"))
            h = F.layer_norm(x, (D,), g(p + "layer_norm1.weight"), g(p + "layer_norm1.bias"), 1e-6)
            q = rope(lin(h, "self_attn.q_proj").view(n, H, hd))
            k = rope(lin(h, "self_attn.k_proj").view(n, H, hd))
            v = lin(h, "self_attn.v_proj").view(n, H, hd)
            if i in c["fullatt_block_indexes"]:
                a = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                                   v.transpose(0, 1)[None])[0].transpose(0, 1)
            else:
                t = lambda z: z.reshape(nw, wl, H, hd).transpose(1, 2)
                a = F.scaled_dot_product_attention(t(q), t(k), t(v)).transpose(1, 2)
            x = x + lin(a.reshape(n, D), "self_attn.out_proj")
            h = F.layer_norm(x, (D,), g(p + "layer_norm2.weight"), g(p + "layer_norm2.bias"), 1e-6)
            x = x + lin(F.gelu(lin(h, "mlp.fc1"), approximate="tanh"), "mlp.fc2")
        x = F.layer_norm(x, (D,), g("post_layernorm.weight"), g("post_layernorm.bias"), 1e-6)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * gm("ln_q.weight")
        x = F.gelu(F.linear(x.reshape(n // 4, 4 * D), gm("mlp.0.weight"), gm("mlp.0.bias")))
        y = F.linear(x, gm("mlp.2.weight"), gm("mlp.2.bias"))
        return torch.zeros_like(y).index_copy(0, idx, y)  # back to the row-major merged grid

    def step(self, patches, grid, ids, labels, pos_mask):
        import torch
        import torch.nn.functional as F

        for p in self.params():
            p.grad = None
        vis = self.tower(patches, *grid)
        t = torch.tensor([ids])
        mask = t[0] == self.cfg["image_token_id"]
        emb = self.lm.model.embed_tokens(t).clone()
        emb[0, mask] = vis
        h = self.lm.model(inputs_embeds=emb).last_hidden_state[0]
        # text CE on the shifted labels (only the counted rows go through the head)
        lab = torch.tensor(labels[1:] + [-100])
        keep = lab != -100
        text = F.cross_entropy(self.lm.lm_head(h[keep]), lab[keep])
        # NTP-M: mean over tokens of mean positive BCE + mean of the top-k negatives
        Z = self.lm.lm_head(h[mask])
        neg = Z.detach().masked_fill(pos_mask, float("-inf"))
        top = neg.topk(K, dim=1).indices
        pos = (F.softplus(-Z) * pos_mask).sum(1) / pos_mask.sum(1)
        vision = (pos + F.softplus(Z.gather(1, top)).mean(1)).mean()
        loss = text + vision
        loss.backward()
        return float(loss.detach())


# ---------------------------------------------------------------- runs


def setup(path, threads):
    import densemllm
    from densemllm.train import TrainableModel

    densemllm.set_num_threads(threads)
    tm = TrainableModel(path)
    img = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    pre = tm.model.preprocess(img)
    n_vis = (pre.grid[0] // 2) * (pre.grid[1] // 2)
    ids, labels, targets = sample(tm.tokenizer, tm.config.image_token_id, n_vis, tm.config.text.vocab_size)
    return tm, pre, ids, labels, targets


def ours_step(tm, pre, ids, labels, targets):
    tm.zero_grad()
    return tm.forward_backward(ids, image=pre, labels=labels, vision_targets=targets, k=K).loss


def torch_setup(path, threads, pre, targets, vocab):
    import torch

    torch.set_num_threads(threads)
    ref = TorchModel(path)
    pos_mask = torch.zeros(len(targets), vocab, dtype=torch.bool)
    for i, t in enumerate(targets):
        pos_mask[i, torch.as_tensor(t)] = True
    return ref, torch.from_numpy(pre.patches), pos_mask


def full_optimizers(tm, ref):
    """AdamW on both sides (lr 1e-5, no decay, clipping at 1.0): ours over the parameter table."""
    import torch

    from densemllm.train.optim import AdamW

    opt = AdamW(tm.params(), max_grad_norm=1.0, tied=bool(tm.config.text.tie_word_embeddings))
    topt = torch.optim.AdamW(ref.params(), lr=1e-5, weight_decay=0.0) if ref is not None else None
    return opt, topt


def ours_full(tm, opt, pre, ids, labels, targets):
    loss = ours_step(tm, pre, ids, labels, targets)
    opt.step(tm.grads(), 1e-5)
    return loss


def torch_full(ref, topt, tp, grid, ids, labels, pm):
    import torch

    loss = ref.step(tp, grid, ids, labels, pm)
    torch.nn.utils.clip_grad_norm_(ref.params(), 1.0)
    topt.step()
    return loss


def child(side, path, threads):
    """One side in a fresh process: VmHWM after a step minus VmRSS after loading."""
    tm, pre, ids, labels, targets = setup(path, threads)
    if side in ("torch-full", "ours-full"):
        if side == "torch-full":
            ref, tp, pm = torch_setup(path, threads, pre, targets, tm.config.text.vocab_size)
            _, topt = full_optimizers(tm, ref)
            del tm
            import gc
            gc.collect()
            reset_peak()
            base = rss("VmRSS")
            torch_full(ref, topt, tp, pre.grid, ids, labels, pm)
        else:
            opt, _ = full_optimizers(tm, None)
            reset_peak()
            base = rss("VmRSS")
            ours_full(tm, opt, pre, ids, labels, targets)
        print(json.dumps({"peak_growth": rss("VmHWM") - base, "base": base}))
        return
    if side == "torch":
        ref, tp, pm = torch_setup(path, threads, pre, targets, tm.config.text.vocab_size)
        del tm
        import gc
        gc.collect()
        reset_peak()
        base = rss("VmRSS")
        ref.step(tp, pre.grid, ids, labels, pm)
    else:
        reset_peak()
        base = rss("VmRSS")
        ours_step(tm, pre, ids, labels, targets)
    print(json.dumps({"peak_growth": rss("VmHWM") - base, "base": base}))


def measure_child(side, path, threads):
    r = subprocess.run([sys.executable, __file__, "--child", side, "--path", str(path), "--threads", str(threads)],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main_compare(args):
    import torch

    import densemllm
    from densemllm.testing import make_checkpoint

    threads = args.threads or os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(Path(tmp) / "ck", dtype="f32", vision=VISION, **TEXT)
        tm, pre, ids, labels, targets = setup(path, threads)
        ref, tp, pm = torch_setup(path, threads, pre, targets, tm.config.text.vocab_size)
        info = densemllm.build_info()
        print(f"clock: {'process CPU time' if CLOCK is time.process_time else 'wall'}; threads {threads}; oneDNN {info['onednn']} [{info['onednn_isa']}]; torch {torch.__version__}")
        print(f"parameters {tm.num_parameters / 1e6:.1f}M; tokens {len(ids)} (vision {len(targets)}, "
              f"text targets {N_TEXT})")
        # agreement first: loss and gradients of both sides
        l_ours = ours_step(tm, pre, ids, labels, targets)
        l_ref = ref.step(tp, pre.grid, ids, labels, pm)
        g = tm.grads()
        worst = 0.0
        for n, p in list(ref.v.items()) + list(ref.lm.named_parameters()):
            r = p.grad.numpy()
            worst = max(worst, float(np.abs(g[n] - r).max() / np.abs(r).max()))
        print(f"loss ours {l_ours:.6f} torch {l_ref:.6f}; worst per-tensor gradient max|diff|/max|ref| {worst:.2e}")
        t_ours, t_ref = [], []
        for _ in range(args.repeat):
            for f, ts in ((lambda: ours_step(tm, pre, ids, labels, targets), t_ours),
                          (lambda: ref.step(tp, pre.grid, ids, labels, pm), t_ref)):
                t0 = CLOCK()
                f()
                ts.append(CLOCK() - t0)
        print("step s ours  " + " ".join(f"{t:.3f}" for t in t_ours))
        print("step s torch " + " ".join(f"{t:.3f}" for t in t_ref))
        print(f"best: ours {min(t_ours):.3f} s, torch {min(t_ref):.3f} s, torch/ours {min(t_ref) / min(t_ours):.2f}; "
              f"median ratio {np.median(t_ref) / np.median(t_ours):.2f}")
        print(f"stated saved activations (ours): store {tm.activation_bytes(len(ids), pre.grid) / 2**20:.1f} MiB, "
              f"checkpointing {tm.activation_bytes(len(ids), pre.grid, True) / 2**20:.1f} MiB")
        del tm, ref
        m_ours = measure_child("ours", path, threads)
        m_ref = measure_child("torch", path, threads)
        print(f"peak memory growth of a step: ours {m_ours['peak_growth'] / 2**20:.0f} MiB "
              f"(on {m_ours['base'] / 2**20:.0f} MiB loaded), torch {m_ref['peak_growth'] / 2**20:.0f} MiB "
              f"(on {m_ref['base'] / 2**20:.0f} MiB loaded)")


def main_full_step(args):
    """Whole training steps (forward, backward, clipping, AdamW) on both sides."""
    import torch

    import densemllm
    from densemllm.testing import make_checkpoint

    threads = args.threads or os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(Path(tmp) / "ck", dtype="f32", vision=VISION, **TEXT)
        tm, pre, ids, labels, targets = setup(path, threads)
        ref, tp, pm = torch_setup(path, threads, pre, targets, tm.config.text.vocab_size)
        opt, topt = full_optimizers(tm, ref)
        info = densemllm.build_info()
        print(f"full step (forward + backward + clip 1.0 + AdamW); clock: "
              f"{'process CPU time' if CLOCK is time.process_time else 'wall'}; threads {threads}; "
              f"oneDNN {info['onednn']} [{info['onednn_isa']}]; torch {torch.__version__}")
        print(f"parameters {tm.num_parameters / 1e6:.1f}M; tokens {len(ids)} (vision {len(targets)}, "
              f"text targets {N_TEXT})")
        # agreement: one full step from the same weights. Adam's first step moves every
        # weight by about lr x sign(g), so it is compared as a fraction of lr; weights whose
        # gradient is ~0 on both sides may move either way (at most 2 lr apart).
        before = {n: a.copy() for n, a in tm.params().items()}
        ours_full(tm, opt, pre, ids, labels, targets)
        torch_full(ref, topt, tp, pre.grid, ids, labels, pm)
        P = tm.params()
        diffs = np.concatenate([np.abs((P[n] - before[n]) - (p.detach().numpy() - before[n])).ravel()
                                for n, p in list(ref.v.items()) + list(ref.lm.named_parameters())]) / 1e-5
        print(f"one full step from the same weights: update difference / lr: median {np.median(diffs):.1e}, "
              f"99.9th percentile {np.quantile(diffs, 0.999):.1e}, max {diffs.max():.2f}")
        t_ours, t_ref = [], []
        for _ in range(args.repeat):
            for f, ts in ((lambda: ours_full(tm, opt, pre, ids, labels, targets), t_ours),
                          (lambda: torch_full(ref, topt, tp, pre.grid, ids, labels, pm), t_ref)):
                t0 = CLOCK()
                f()
                ts.append(CLOCK() - t0)
        # the optimizer alone, same gradients
        g = tm.grads()
        o_ours, o_ref = [], []
        for _ in range(args.repeat):
            t0 = CLOCK()
            opt.step(g, 1e-5)
            o_ours.append(CLOCK() - t0)
            t0 = CLOCK()
            torch.nn.utils.clip_grad_norm_(ref.params(), 1.0)
            topt.step()
            o_ref.append(CLOCK() - t0)
        print("full step s ours  " + " ".join(f"{t:.3f}" for t in t_ours))
        print("full step s torch " + " ".join(f"{t:.3f}" for t in t_ref))
        print(f"best: ours {min(t_ours):.3f} s, torch {min(t_ref):.3f} s, torch/ours {min(t_ref) / min(t_ours):.2f}; "
              f"median ratio {np.median(t_ref) / np.median(t_ours):.2f}")
        print(f"clip + AdamW alone: ours {min(o_ours) * 1e3:.1f} ms, torch {min(o_ref) * 1e3:.1f} ms, "
              f"torch/ours {min(o_ref) / min(o_ours):.2f}")
        del tm, ref, opt, topt
        m_ours = measure_child("ours-full", path, threads)
        m_ref = measure_child("torch-full", path, threads)
        print(f"peak memory growth of a full step (incl. AdamW state): ours {m_ours['peak_growth'] / 2**20:.0f} MiB "
              f"(on {m_ours['base'] / 2**20:.0f} MiB loaded), torch {m_ref['peak_growth'] / 2**20:.0f} MiB "
              f"(on {m_ref['base'] / 2**20:.0f} MiB loaded)")


def main_ntpm_memory(args):
    """NTP-M path at the real vocabulary: 1024 vision tokens x 283386 ids."""
    import densemllm
    from densemllm.testing import make_checkpoint
    from densemllm.train import TrainableModel

    densemllm.set_num_threads(args.threads or os.cpu_count())
    V = 283386
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(Path(tmp) / "v", dtype="bf16", vocab_size=V, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=1, vision=dict(num_hidden_layers=1, fullatt_block_indexes=[0]))
        tm = TrainableModel(path)
        img = np.random.default_rng(2).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
        pre = tm.model.preprocess(img)
        n_vis = (pre.grid[0] // 2) * (pre.grid[1] // 2)
        rng = np.random.default_rng(3)
        targets = [rng.choice(V, 2, replace=False) for _ in range(n_vis)]
        ids = tm.tokenizer.expand_image_pads(tm.tokenizer.encode("<|vision_start|><|image_pad|><|vision_end|>"),
                                             n_vis)
        tm.forward_backward(ids[:4])  # warm-up: thread pools, allocator
        reset_peak()
        base = rss("VmRSS")
        out = tm.forward_backward(ids, image=pre, vision_targets=targets, k=K)
        growth = rss("VmHWM") - base
        full = n_vis * V * 4
        print(f"vocab {V}, vision tokens {n_vis}, hidden 64, NTP-M k={K} full vocabulary")
        print(f"[tokens, vocab] f32 would be {full / 2**20:.0f} MiB; loss-head budget "
              f"{64} MiB (DM_HEAD_CHUNK_BYTES); head workspace reported {out.head_workspace / 2**20:.1f} MiB")
        print(f"saved activations {out.act_bytes / 2**20:.1f} MiB; measured peak RSS growth of the step "
              f"{growth / 2**20:.1f} MiB (baseline {base / 2**20:.0f} MiB incl. f32 masters + grads)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ntpm-memory", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process CPU clock (with --threads 1 on a shared machine: other jobs' "
                         "load then does not count)")
    ap.add_argument("--full-step", action="store_true", help="forward + backward + clipping + AdamW")
    ap.add_argument("--child", choices=["ours", "torch", "ours-full", "torch-full"])
    ap.add_argument("--path")
    args = ap.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.child:
        child(args.child, Path(args.path), args.threads)
    elif args.ntpm_memory:
        main_ntpm_memory(args)
    elif args.full_step:
        main_full_step(args)
    else:
        main_compare(args)


if __name__ == "__main__":
    main()
