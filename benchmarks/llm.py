"""Language model (MLA decoder): densemllm (C) against transformers' YoutuForCausalLM, same run.

Layers of the published 2B family (hidden 2048, 16 heads, q_lora 1536, kv_lora 512,
nope 128, rope 64, v 128, ffn 6144, vocab 128256, tied head) at reduced depth
(4 layers). Workload of an image prompt: prefill of 1088 tokens (1024 vision
embeddings spliced at image pads + 64 text tokens), then 64 greedy decode steps.
bf16 and f32, both sides with the same thread count; transformers uses SDPA and
its DynamicCache, computes the head for the last position only
(logits_to_keep=1), and runs under torch.inference_mode.

    .venv/bin/python benchmarks/llm.py [--threads N] [--dtypes bf16,f32] [--decode 64]
                                       [--repeat 3]

Runs alternate (densemllm, transformers) for --repeat rounds after a warm-up
round, so both see the same machine load. Prints prefill tokens/s and decode
ms/token (best and median over the rounds), the ratios transformers/densemllm
time (> 1: densemllm faster), the KV cache bytes per token of both, and decode
ms/token of densemllm with the GEMV fast path switched off (the oneDNN/OpenBLAS
GEMM at M=1) as the baseline of that optimisation.
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import densemllm
from densemllm import _core, llm
from densemllm.testing import make_checkpoint

TEXT = dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=1536,
            kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
            intermediate_size=6144, vocab_size=128256, num_hidden_layers=4, tie_word_embeddings=True,
            max_position_embeddings=4096, rope_theta=1.6e6)
N_IMAGE, N_TEXT = 1024, 64


def hf_model(path, dtype):
    """transformers' YoutuForCausalLM (SDPA) on the LLM weights of every safetensors file
    in `path`, built on the meta device and assigned the tensors (no second copy)."""
    from safetensors import safe_open
    from transformers import YoutuConfig, YoutuForCausalLM
    from transformers.models.youtu.modeling_youtu import YoutuRotaryEmbedding

    cfg = json.loads((path / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
            "v_head_dim", "rms_norm_eps", "max_position_embeddings", "rope_interleave", "attention_bias",
            "tie_word_embeddings")
    hc = YoutuConfig(**{k: cfg[k] for k in keys}, rope_parameters={"rope_type": "default",
                                                                   "rope_theta": cfg["rope_theta"]},
                     bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa")
    with torch.device("meta"):
        m = YoutuForCausalLM(hc)
    state = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                if k.startswith(("model.", "lm_head.")):
                    state[k] = sf.get_tensor(k).to(dtype)
    m.load_state_dict(state, strict=False, assign=True)
    del state
    m.tie_weights()
    m.model.rotary_emb = YoutuRotaryEmbedding(hc)  # its buffers are not in the state dict
    return m.eval()


def time_ours(model, ids, vis, n_decode):
    t0 = time.perf_counter()
    sess = model.prefill(ids, image_embeds=vis)
    t1 = time.perf_counter()
    tok = int(np.argmax(sess._last_logits))
    for _ in range(n_decode):
        tok = int(np.argmax(sess.extend([tok])))
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / n_decode, sess


def time_hf(ref, ids, vis, pad_id, n_decode):
    from transformers import DynamicCache

    with torch.inference_mode():
        t = torch.tensor(ids)[None]
        dtype = ref.model.embed_tokens.weight.dtype
        t0 = time.perf_counter()
        emb = ref.model.embed_tokens(t)
        emb[0, t[0] == pad_id] = torch.from_numpy(vis).to(dtype)
        cache = DynamicCache(config=ref.config)
        out = ref(inputs_embeds=emb, past_key_values=cache, use_cache=True, logits_to_keep=1)
        t1 = time.perf_counter()
        tok = out.logits[0, -1].argmax()
        for _ in range(n_decode):
            out = ref(input_ids=tok.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
            tok = out.logits[0, -1].argmax()
        t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / n_decode, out.past_key_values


def hf_kv_bytes(cache, n_tokens):
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            v = getattr(layer, name, None)
            if v is not None:
                total += v.numel() * v.element_size()
    return total / n_tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtypes", default="bf16,f32")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    densemllm.set_num_threads(threads)
    print(f"threads {threads}, onednn {densemllm.build_info()['onednn_isa']}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(Path(tmp) / "llm2b4", dtype="bf16", **TEXT)
        for dt in args.dtypes.split(","):
            model = densemllm.load(path, dtype=dt)
            tdt = torch.bfloat16 if dt == "bf16" else torch.float32
            pad = model.config.image_token_id
            rng = np.random.default_rng(0)
            text = rng.integers(0, 3000, N_TEXT)
            text[text == pad] = 5
            ids = np.concatenate([text[:4], np.full(N_IMAGE, pad), text[4:]]).astype(np.int64)
            vis = rng.standard_normal((N_IMAGE, TEXT["hidden_size"])).astype(np.float32)
            T = len(ids)
            ref = hf_model(path, tdt)
            # interleaved (ours, theirs) rounds so both see the same machine load;
            # round 0 is the warm-up
            ours, theirs = [], []
            for r in range(args.repeat + 1):
                ours.append(time_ours(model, ids, vis, args.decode))
                theirs.append(time_hf(ref, ids, vis, pad, args.decode))
            ours, theirs = ours[1:], theirs[1:]
            sess = ours[-1][2]
            prev = _core.set_gemv(False)
            base = [time_ours(model, ids, vis, min(args.decode, 16))[1] for _ in range(2)]
            _core.set_gemv(prev)
            hf_kv = hf_kv_bytes(theirs[-1][2], T + args.decode)
            del ref
            for stat, f in (("best", min), ("median", statistics.median)):
                op, od = f(o[0] for o in ours), f(o[1] for o in ours)
                tp, td = f(o[0] for o in theirs), f(o[1] for o in theirs)
                print(f"[{dt}] {stat:6s} prefill {T} tokens: densemllm {T / op:8.1f} tok/s ({op * 1e3:7.0f} ms), "
                      f"transformers {T / tp:8.1f} tok/s ({tp * 1e3:7.0f} ms), ratio {tp / op:.2f}x")
                print(f"[{dt}] {stat:6s} decode: densemllm {od * 1e3:7.1f} ms/token, transformers "
                      f"{td * 1e3:7.1f} ms/token, ratio {td / od:.2f}x")
            print(f"[{dt}] decode without the GEMV fast path (oneDNN/OpenBLAS at M=1): best {min(base) * 1e3:.1f} ms/token")
            print(f"[{dt}] KV cache per token: densemllm {llm.language_model(model).kv_bytes_per_token} B "
                  f"(latent+k_rot f32, {sess.core.kv_bytes / sess.position:.0f} B measured), "
                  f"transformers {hf_kv:.0f} B")
            del model


if __name__ == "__main__":
    main()
