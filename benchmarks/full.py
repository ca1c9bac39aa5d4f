"""Full-size Youtu-VL-4B performance against the machine's limits, transformers and llama.cpp (issue 16).

    .venv/bin/python benchmarks/full.py [--cache DIR] [--threads 2] [--contexts 283,794,1536,4096]
        [--decode 8] [--rounds 1] [--skip-hf] [--skip-llamacpp] [--llamacpp DIR] [--json OUT]

1. A full-size random bf16 checkpoint with the real config (40 LLM + 27 vision layers,
   vocab 283386, tied head) and a tokenizer with the real special-token ids (vision
   start/end 128262/128263, image pad 128264), written once into --cache, streamed one
   chunk at a time (memory stays at one chunk), 4 shards + index.
2. Each measurement runs in its own subprocess, one model in memory at a time (the
   24 GiB machine holds one 10.6 GB model, not two):
   - machine: bf16 and f32 matmul peak (ours and torch's oneDNN, 2048^3 and the MLP
     shape), read bandwidth (our GEMV streaming a 1 GiB bf16 matrix, and a NumPy sum);
   - ours: load (+ preload), encode_image 512^2 / 1024^2, prefill and decode at each
     context, segment(512^2, the 150 ADE20K classes, 8 generated tokens) with its
     breakdown, depth(512^2), peak RSS;
   - transformers (YoutuForCausalLM, bf16, SDPA, same weights): prefill and decode at
     each context; rounds alternate ours / transformers;
   - llama.cpp (the sources vendored by llama-cpp-python 0.3.36, built once with cmake
     into --llamacpp, its own converter to GGUF bf16 and Q8_0 plus the vision projector):
     llama-bench prefill and decode at each depth, llama-mtmd-cli image encoding.
3. Floors: compute floor = FLOPs / best measured bf16 matmul rate; decode floor = bytes
   read per token (every LLM weight, the 283386-row tied head, one embedding row, the
   latent KV cache) / best read bandwidth (ours or llama.cpp's achieved rate).
Prints the CPU model and ISA, the tables, and writes --json.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TEXT = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=40, num_attention_heads=32,
            num_key_value_heads=32, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
            qk_rope_head_dim=64, v_head_dim=128, rope_theta=5e5, max_position_embeddings=32768,
            tie_word_embeddings=True, vocab_size=283386)
VISION = dict(hidden_size=1152, num_attention_heads=16, intermediate_size=4304, num_hidden_layers=27,
              patch_size=16, window_size=256, fullatt_block_indexes=[7, 15, 23, 26], spatial_merge_size=2)
REAL_IDS = {"<|vision_start|>": 128262, "<|vision_end|>": 128263, "<|image_pad|>": 128264,
            "<|video_pad|>": 128265}
SHARDS = 4
CHUNK = 1 << 24  # elements generated at a time while writing


# ---------------------------------------------------------------- checkpoint

def tokenizer_json():
    """Byte-level BPE (trained on prompt text and the ADE20K names, so a class name is
    ~1-2 tokens as with the real tokenizer) whose special tokens sit at the real ids:
    unused filler entries pad the vocabulary up to 128262."""
    sys.path.insert(0, str(HERE))
    from dense import ADE150
    from densemllm.testing import _CORPUS, build_tokenizer_json

    corpus = _CORPUS + "\n" + "\n".join(", ".join(ADE150[i:i + 10]) for i in range(0, 150, 10))
    tok = json.loads(build_tokenizer_json(corpus, 4096))
    vocab = tok["model"]["vocab"]
    added = sorted(tok["added_tokens"], key=lambda t: t["id"])
    for t in added:
        vocab.pop(t["content"], None)
    n = len(vocab)
    first = min(REAL_IDS.values())
    for i in range(n, first):
        vocab[f"<|unused_{i}|>"] = i
    nxt = first + len(REAL_IDS)
    for t in added:
        if t["content"] in REAL_IDS:
            t["id"] = REAL_IDS[t["content"]]
        else:
            t["id"], nxt = nxt, nxt + 1
        vocab[t["content"]] = t["id"]
    tok["added_tokens"] = sorted(added, key=lambda t: t["id"])
    return json.dumps(tok)


def write_checkpoint(out: Path):
    """The full-size checkpoint in `out` (skipped when its config matches)."""
    import numpy as np

    from densemllm.config import ModelConfig
    from densemllm._atomic import atomic_open, atomic_write
    from densemllm.checkpoint import expected_weights
    from densemllm.testing import make_checkpoint

    done = out / "complete.json"
    want = {"text": TEXT, "vision": VISION, "ids": REAL_IDS, "shards": SHARDS}
    out.mkdir(parents=True, exist_ok=True)
    # what llama.cpp's converter reads for the vision projector (the released file's values)
    atomic_write(out / "preprocessor_config.json", json.dumps({
        "image_processor_type": "Siglip2ImageProcessorFast", "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "patch_size": 16, "merge_size": 2, "max_num_patches": 36864}, indent=1))
    if done.exists() and json.loads(done.read_text()) == want:
        return out
    tok = tokenizer_json()
    # config, tokenizer and templates from the test builder at toy width, then real sizes
    small = make_checkpoint(out / "small", tokenizer_json=tok, hidden_size=8, intermediate_size=8,
                            num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, q_lora_rank=8,
                            kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                            vocab_size=TEXT["vocab_size"], vision=dict(hidden_size=8, num_attention_heads=1,
                                                          intermediate_size=8, num_hidden_layers=1,
                                                          fullatt_block_indexes=[0]))
    cfg = json.loads((small / "config.json").read_text())
    cfg.update(TEXT)
    cfg["vision_config"].update(VISION)
    cfg["vision_config"]["out_hidden_size"] = TEXT["hidden_size"]
    cfg["torch_dtype"] = "bfloat16"
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        atomic_write(out / f, (small / f).read_text())
    specs = [(alts[0], tuple(shape)) for alts, shape in expected_weights(ModelConfig.from_dict(cfg))]
    groups = np.array_split(np.arange(len(specs)), SHARDS)
    rng = np.random.default_rng(0)
    weight_map, total = {}, 0
    for k, g in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{SHARDS:05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for i in g:
            name, shape = specs[i]
            nbytes = 2 * int(np.prod(shape))
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
            weight_map[name] = fname
        total += off
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        t0 = time.perf_counter()
        with atomic_open(out / fname, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for i in g:
                name, shape = specs[i]
                n = int(np.prod(shape))
                norm = name.endswith(("norm.weight", "layer_norm1.weight", "layer_norm2.weight", "ln_q.weight"))
                for s in range(0, n, CHUNK):
                    a = rng.standard_normal(min(CHUNK, n - s), dtype=np.float32)
                    a *= 0.02
                    if norm:
                        a += 1.0
                    f.write((a.view(np.uint32) >> 16).astype("<u2").tobytes())
        print(f"  wrote {fname}: {off / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s", flush=True)
    atomic_write(out / "model.safetensors.index.json",
                 json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    atomic_write(out / "config.json", json.dumps(cfg, indent=2))
    atomic_write(done, json.dumps(want))
    return out


# ---------------------------------------------------------------- floors

def llm_matmul_params(t):
    D, H, I = t["hidden_size"], t["num_attention_heads"], t["intermediate_size"]
    qk = t["qk_nope_head_dim"] + t["qk_rope_head_dim"]
    C, R, V = t["kv_lora_rank"], t["qk_rope_head_dim"], t["v_head_dim"]
    per = (D * t["q_lora_rank"] + t["q_lora_rank"] * H * qk + D * (C + R) + C * H * (t["qk_nope_head_dim"] + V)
           + H * V * D + 3 * D * I)
    return per * t["num_hidden_layers"]


def prefill_flops(t, T):
    """Matmuls of T tokens (kv_b over the T latents included), causal attention, the head at one row."""
    H, qk, V = t["num_attention_heads"], t["qk_nope_head_dim"] + t["qk_rope_head_dim"], t["v_head_dim"]
    attn = 2 * H * (qk + V) * T * (T + 1) / 2 * t["num_hidden_layers"]
    return 2 * T * llm_matmul_params(t) + attn + 2 * t["vocab_size"] * t["hidden_size"]


def decode_bytes(t, ctx):
    """bf16 weights read per token (head = the tied embedding, read whole) + the f32 latent cache."""
    head = t["vocab_size"] * t["hidden_size"] * 2
    kv = ctx * t["num_hidden_layers"] * (t["kv_lora_rank"] + t["qk_rope_head_dim"]) * 4
    return llm_matmul_params(t) * 2 + head + t["hidden_size"] * 2 + kv


def decode_bytes_int8(t, ctx):
    """Bytes per token with dtype="int8": int8 linear weights and head, kv_b bf16, the f32 cache."""
    C, H = t["kv_lora_rank"], t["num_attention_heads"]
    kv_b = C * H * (t["qk_nope_head_dim"] + t["v_head_dim"]) * t["num_hidden_layers"]
    head = t["vocab_size"] * t["hidden_size"]
    kv = ctx * t["num_hidden_layers"] * (C + t["qk_rope_head_dim"]) * 4
    return (llm_matmul_params(t) - kv_b) + 2 * kv_b + head + kv


def vision_flops(side):
    sys.path.insert(0, str(HERE))
    from vision import flops

    g = side // 16
    return flops(dict(VISION), g, g)


# ---------------------------------------------------------------- stages (subprocesses)

def rss_peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def stage_machine(args):
    import numpy as np
    import torch

    import densemllm
    from densemllm import _core

    densemllm.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    res = {}

    def best(fn, n=5):
        fn()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    for M, N, K in ((2048, 2048, 2048), (794, 9728, 2560)):
        x = rng.standard_normal((M, K), dtype=np.float32)
        w32 = (0.02 * rng.standard_normal((N, K))).astype(np.float32)
        wb = (w32.view(np.uint32) >> 16).astype(np.uint16)
        f = 2 * M * N * K
        res[f"ours bf16 {M}x{N}x{K}"] = f / best(lambda: _core.matmul(x, wb, bf16=True))
        res[f"ours f32 {M}x{N}x{K}"] = f / best(lambda: _core.matmul(x, w32))
        xt, wt = torch.from_numpy(x).bfloat16(), torch.from_numpy(w32).bfloat16()
        res[f"torch bf16 {M}x{N}x{K}"] = f / best(lambda: xt @ wt.T)
        xt32, wt32 = torch.from_numpy(x), torch.from_numpy(w32)
        res[f"torch f32 {M}x{N}x{K}"] = f / best(lambda: xt32 @ wt32.T)
    # read bandwidth: our GEMV over a 1 GiB bf16 matrix (the decode kernel), NumPy's sum over 1 GiB f32
    N, K = 131072, 4096
    w = rng.integers(0x3c00, 0x3c80, (N, K), dtype=np.uint16)
    x = rng.standard_normal((1, K), dtype=np.float32)
    res["read GB/s ours gemv"] = w.nbytes / best(lambda: _core.matmul(x, w, bf16=True), 7) / 1e9
    del w
    a = np.ones(2**28, np.float32)
    res["read GB/s numpy sum"] = a.nbytes / best(lambda: a.sum(), 5) / 1e9
    return res


def stage_ours(args):
    import numpy as np

    import densemllm
    from densemllm import _core

    sys.path.insert(0, str(HERE))
    from dense import ADE150

    rng = np.random.default_rng(0)
    res = {"dtype": args.dtype}
    t = time.perf_counter()
    model = densemllm.load(args.ckpt, threads=args.threads, dtype=args.dtype)
    res["load s"] = time.perf_counter() - t  # int8: includes quantizing the LLM weights
    t = time.perf_counter()
    res["preload bytes"] = model._checkpoint.preload()
    res["preload s"] = time.perf_counter() - t
    specials = set(REAL_IDS.values())
    ref_file = Path(args.cache) / f"bf16-reference-{'-'.join(map(str, args.contexts))}.npz"
    ref = np.load(ref_file) if args.dtype == "int8" and ref_file.exists() else None
    first = {}
    for side in (512, 1024) if args.dtype != "int8" else ():  # the vision tower stays bf16 with int8
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        ts = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            model.encode_image(img)
            ts.append(time.perf_counter() - t)
        res[f"encode {side} s"] = ts
    for ctx in args.contexts:
        ids = np.random.default_rng(ctx).integers(0, 128000, ctx)  # the same prompt in every stage
        ids = np.where(np.isin(ids, list(specials)), 5, ids)
        pre, dec = [], []
        for rep in range(args.repeat):
            t = time.perf_counter()
            sess = model.prefill(ids)
            pre.append(time.perf_counter() - t)
            last = sess._last_logits.copy()
            tok = int(np.argmax(last))
            toks = [tok]
            t = time.perf_counter()
            for _ in range(args.decode):
                tok = int(np.argmax(sess.extend([tok]))) % 128000
                toks.append(tok)
            dec.append((time.perf_counter() - t) / args.decode)
            if rep == 0:
                first[f"logits{ctx}"], first[f"tokens{ctx}"] = last, np.array(toks)
        res[f"prefill {ctx} s"] = pre
        res[f"decode {ctx} s/token"] = dec
        if ref is not None:  # agreement with the bf16 model on the same prompt
            want = ref[f"logits{ctx}"]
            res[f"int8 vs bf16 logits rel err {ctx}"] = float(np.abs(first[f"logits{ctx}"] - want).max()
                                                          / np.abs(want).max())
            res[f"int8 vs bf16 greedy tokens equal {ctx}"] = int(np.sum(np.cumprod(
                first[f"tokens{ctx}"] == ref[f"tokens{ctx}"])))
        del sess
    if args.dtype == "bf16":
        np.savez(ref_file, **first)
    img = np.random.default_rng(512).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    segs = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        r = model.segment(img, ADE150, max_new_tokens=8)
        wall = time.perf_counter() - t
        segs.append(dict(r.timings, wall=wall))
    res["segment"] = segs
    t = time.perf_counter()
    enc = model.encode_image(img)
    res["segment vision s"] = time.perf_counter() - t
    prompt = llm_prompt_tokens(model, ADE150)
    res["segment prompt tokens"] = prompt
    res["segment generated tokens"] = 8
    dps = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        d = model.depth(img, max_new_tokens=8)
        dps.append(dict(d.timings, wall=time.perf_counter() - t))
    res["depth"] = dps
    del enc
    res["peak RSS bytes"] = rss_peak()
    res["weights bytes"] = sum(f.stat().st_size for f in Path(args.ckpt).glob("*.safetensors"))
    res["attention bf16 (AMX)"] = bool(_core.attention_bf16_available())
    return res


def llm_prompt_tokens(model, classes):
    """Tokens of the segment prompt with a 512^2 image (vision tokens included)."""
    from densemllm.tasks.common import render_prompt
    from densemllm.tasks.segment import default_prompt

    text = render_prompt(model, default_prompt(list(classes), False))
    ids = model.tokenizer.encode(text)
    pads = 256  # 512^2 -> 32x32 patches -> 16x16 merged tokens
    return len(ids) - 1 + pads


def stage_hf(args):
    import numpy as np
    import torch
    from transformers import DynamicCache

    sys.path.insert(0, str(HERE))
    from llm import hf_model

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    m = hf_model(Path(args.ckpt), torch.bfloat16)
    hc = m.config
    res = {"load s": time.perf_counter() - t}
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for ctx in args.contexts:
            ids = torch.from_numpy(rng.integers(0, 128000, ctx))[None]
            pre, dec = [], []
            for _ in range(args.repeat):
                cache = DynamicCache(config=hc)
                t = time.perf_counter()
                out = m(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                pre.append(time.perf_counter() - t)
                tok = out.logits[0, -1].argmax()
                t = time.perf_counter()
                for _ in range(args.decode):
                    out = m(input_ids=tok.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
                    tok = out.logits[0, -1].argmax()
                dec.append((time.perf_counter() - t) / args.decode)
            res[f"prefill {ctx} s"] = pre
            res[f"decode {ctx} s/token"] = dec
    res["peak RSS bytes"] = rss_peak()
    return res


# ---------------------------------------------------------------- llama.cpp

LLAMA_SDIST = "llama_cpp_python-0.3.36"
PRE_PATCH = r"""
import sys
sys.path.insert(0, sys.argv.pop(1))
sys.path.insert(0, sys.argv.pop(1))
import conversion.base as base
# The converter identifies the pre-tokenizer by hashing the tokenization of a test
# string; this benchmark's tokenizer is a small byte-level BPE with the real ids, not
# the released one, so name the released model's pre-tokenizer ("youtu") directly.
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "youtu"
import runpy
script = sys.argv.pop(1)
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
"""


def llamacpp_paths(args):
    src = Path(args.llamacpp) / LLAMA_SDIST / "vendor" / "llama.cpp"
    return src, src / "build" / "bin"


def llamacpp_build(args, log):
    """The vendored llama.cpp: sources from the llama-cpp-python sdist (fetched from PyPI
    once), llama-bench and llama-mtmd-cli built with cmake (native ISA)."""
    src, bindir = llamacpp_paths(args)
    if (bindir / "llama-bench").exists() and (bindir / "llama-mtmd-cli").exists():
        return src, bindir
    root = Path(args.llamacpp)
    root.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", "llama-cpp-python==0.3.36", "-d", str(root)], check=True)
        subprocess.run(["tar", "xzf", str(next(root.glob("llama_cpp_python-0.3.36.tar.gz"))), "-C", str(root)],
                       check=True)
    with open(log, "a") as lf:
        subprocess.run(["cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
                        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
                       cwd=src, check=True, stdout=lf, stderr=lf)
        subprocess.run(["cmake", "--build", "build", "-j", str(os.cpu_count()), "--target", "llama-bench",
                        "llama-mtmd-cli"], cwd=src, check=True, stdout=lf, stderr=lf)
    return src, bindir


def llamacpp_convert(args, src, log):
    """GGUF bf16 and Q8_0 of the LLM, and the vision projector, with llama.cpp's converter."""
    out = Path(args.cache) / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    files = {"bf16": out / "model-bf16.gguf", "q8_0": out / "model-q8_0.gguf", "mmproj": out / "mmproj-bf16.gguf"}
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    patch = Path(args.cache) / "convert_patched.py"
    patch.write_text(PRE_PATCH)
    for kind, path in files.items():
        if path.exists():
            continue
        extra = ["--mmproj", "--outtype", "bf16"] if kind == "mmproj" else ["--outtype", kind]
        t = time.perf_counter()
        tmp = path.with_suffix(".tmp.gguf")
        with open(log, "a") as lf:
            subprocess.run([sys.executable, str(patch), str(src / "gguf-py"), str(src), str(src / "convert_hf_to_gguf.py"),
                            str(args.ckpt), "--outfile", str(tmp), *extra], env=env, check=True, stdout=lf,
                           stderr=lf)
        if kind == "mmproj" and not tmp.exists():  # the converter prefixes mmproj outputs
            cand = sorted(out.glob("*mmproj*.tmp.gguf")) or sorted(out.glob("mmproj*"))
            tmp = cand[0]
        tmp.rename(path)
        print(f"  converted {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return files


def stage_llamacpp(args):
    """llama-bench prefill / decode and mtmd image encoding. Every llama-bench result
    is kept in CACHE/llamacpp-results.json as it arrives (a run that stops keeps what
    it measured; delete the file to measure again). Decode at a depth first fills the
    context (llama-bench -d), which at 4096 tokens costs minutes per run: the contexts
    are --llamacpp-contexts."""
    log = Path(args.cache) / "llamacpp.log"
    src, bindir = llamacpp_build(args, log)
    files = llamacpp_convert(args, src, log)
    store = Path(args.cache) / "llamacpp-results.json"
    res = json.loads(store.read_text()) if store.exists() else {}
    ctxs = [int(c) for c in args.llamacpp_contexts.split(",")]

    def save():
        from densemllm._atomic import atomic_write
        atomic_write(store, json.dumps(res, indent=1))

    for kind in ("bf16", "q8_0"):
        def bench(extra, repack):
            cmd = [str(bindir / "llama-bench"), "-m", str(files[kind]), "-t", str(args.threads), "-r",
                   str(args.repeat), "-o", "json", "--no-warmup", "--repack", str(repack), *extra]
            r = subprocess.run(cmd, capture_output=True, text=True)
            return json.loads(r.stdout) if r.returncode == 0 else None

        # repacked weights (llama.cpp's default) first; this build aborts on them for Q8_0
        # of this model (GGML_ASSERT in the scheduler, SIGILL with k_b/v_b kept bf16), so
        # fall back to the plain layout and say so
        repack = res.get(f"{kind} repack", 1)
        for c in ctxs:
            if f"{kind} prefill {c} tok/s" in res:
                continue
            rows = bench(["-p", str(c), "-n", "0"], repack)
            if rows is None and repack == 1:
                res[f"{kind} repack=1 failed"], repack = True, 0
                rows = bench(["-p", str(c), "-n", "0"], repack)
            if rows is None:
                res[f"{kind} error"] = "llama-bench failed with and without --repack"
                break
            res[f"{kind} repack"] = repack
            res[f"{kind} prefill {c} tok/s"] = rows[0]["avg_ts"]
            save()
        for c in ctxs:
            if f"{kind} decode {c} tok/s" in res or f"{kind} error" in res:
                continue
            rows = bench(["-p", "0", "-n", str(max(args.decode, 8)), "-d", str(c)], repack)
            if rows:
                res[f"{kind} decode {c} tok/s"] = rows[0]["avg_ts"]
                save()
    import numpy as np
    from PIL import Image

    for side in (512, 1024):
        img = Path(args.cache) / f"image{side}.png"
        Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(img)
        cmd = [str(bindir / "llama-mtmd-cli"), "-m", str(files["bf16"]), "--mmproj", str(files["mmproj"]),
               "--image", str(img), "-p", "Describe.", "-n", "1", "-t", str(args.threads), "--no-warmup", "--jinja"]
        if f"encode {side} s" in res:
            continue
        ms = []
        for _ in range(args.repeat):
            r = subprocess.run(cmd, capture_output=True, text=True)
            text = r.stdout + r.stderr
            # mtmd-cli logs the vision encoder's time ("mtmd batch encoding done in N ms";
            # older builds: "image slice encoded in N ms")
            got = [float(line.split(" in ")[-1].split("ms")[0]) for line in text.splitlines()
                   if "encoding done in" in line or "slice encoded in" in line]
            if r.returncode != 0 or not got:
                res[f"encode {side} error"] = text[-2000:]
                break
            ms.append(sum(got) / 1e3)
        if ms:
            res[f"encode {side} s"] = ms
            save()
    return res


STAGES = {"machine": stage_machine, "ours": stage_ours, "hf": stage_hf, "llamacpp": stage_llamacpp}


def run_stage(name, args, dtype="bf16"):
    cmd = [sys.executable, __file__, "--stage", name, "--ckpt", str(args.ckpt), "--threads", str(args.threads),
           "--dtype", dtype, "--llamacpp-contexts", args.llamacpp_contexts,
           "--depth", args.depth,
           "--contexts", ",".join(map(str, args.contexts)), "--decode", str(args.decode), "--repeat",
           str(args.repeat), "--cache", str(args.cache), "--llamacpp", str(args.llamacpp)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"  stage {name} FAILED (exit {r.returncode}):\n{r.stderr[-3000:]}", flush=True)
        return {"error": r.stderr[-3000:]}
    print(f"  stage {name}: {time.perf_counter() - t:.0f} s", flush=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report

def cpu_line():
    model, flags = platform.processor(), set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, ISA: {' '.join(isa)}"


def report(res, args):
    best = lambda v: min(v) if isinstance(v, list) else v  # noqa: E731
    t = TEXT
    mach = res.get("machine", {})
    peak = max([v for k, v in mach.items() if "bf16" in k and "x" in k] or [float("nan")])
    bw_ours = mach.get("read GB/s ours gemv", float("nan"))
    lines = [f"CPU: {cpu_line()}", f"threads: {args.threads}", ""]
    lines.append("machine: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" if "GB/s" not in k else f"{k} {v:.1f}"
                                         for k, v in mach.items() if k != "error"))
    rounds = res.get("rounds", [])
    ours = [r.get("ours", {}) for r in rounds]
    hf = [r.get("hf", {}) for r in rounds]
    lc = res.get("llamacpp", {})
    # best achieved read rate: ours GEMV or llama.cpp decode (bytes / time)
    bw_lc = 0.0
    for ctx in args.contexts:
        ts = lc.get(f"bf16 decode {ctx} tok/s")
        if ts:
            bw_lc = max(bw_lc, decode_bytes(t, ctx) * ts / 1e9)
    bw = max(bw_ours, bw_lc)
    lines.append(f"read bandwidth limit: {bw:.1f} GB/s (ours GEMV {bw_ours:.1f}, llama.cpp bf16 decode "
                 f"{bw_lc:.1f}); bf16 matmul peak {peak / 1e9:.0f} GFLOP/s")

    def pick(rows, key):
        vals = [best(r[key]) for r in rows if key in r]
        return min(vals) if vals else None

    lines += ["", "| measured | densemllm | floor | fraction of limit | transformers | llama.cpp bf16 | llama.cpp Q8_0 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for side in (512, 1024):
        o = pick(ours, f"encode {side} s")
        fl = vision_flops(side) / peak
        lce = lc.get(f"encode {side} s")
        lines.append(f"| encode_image {side}^2 ({vision_flops(side) / 1e12:.2f} TFLOP) | {fmt(o, 's')} | "
                     f"{fl:.2f} s | {pct(fl, o)} | | {fmt(best(lce) if lce else None, 's')} | |")
    for ctx in args.contexts:
        o, h = pick(ours, f"prefill {ctx} s"), pick(hf, f"prefill {ctx} s")
        fl = prefill_flops(t, ctx) / peak
        lb, lq = lc.get(f"bf16 prefill {ctx} tok/s"), lc.get(f"q8_0 prefill {ctx} tok/s")
        lines.append(f"| prefill {ctx} tokens | {fmt(o, 's')} | {fl:.2f} s | {pct(fl, o)} | {fmt(h, 's')} | "
                     f"{fmt(ctx / lb if lb else None, 's')} | {fmt(ctx / lq if lq else None, 's')} |")
    for ctx in args.contexts:
        o, h = pick(ours, f"decode {ctx} s/token"), pick(hf, f"decode {ctx} s/token")
        fl = decode_bytes(t, ctx) / (bw * 1e9)
        lb, lq = lc.get(f"bf16 decode {ctx} tok/s"), lc.get(f"q8_0 decode {ctx} tok/s")
        lines.append(f"| decode at context {ctx} ({decode_bytes(t, ctx) / 1e9:.2f} GB/token) | {fmt(o, 'ms')} | "
                     f"{fl * 1e3:.0f} ms | {pct(fl, o)} | {fmt(h, 'ms')} | {fmt(1 / lb if lb else None, 'ms')} | "
                     f"{fmt(1 / lq if lq else None, 'ms')} |")
    segs = [s for r in ours for s in r.get("segment", [])]
    if segs:
        sb = min(segs, key=lambda s: s["wall"])
        o0 = ours[0]
        n_pre = o0["segment prompt tokens"]
        floor = (vision_flops(512) + prefill_flops(t, n_pre)) / peak + 8 * decode_bytes(t, n_pre) / (bw * 1e9)
        lines.append(f"| segment 512^2, 150 classes ({n_pre} prompt tokens incl. 256 vision, 8 generated) | "
                     f"{sb['wall']:.2f} s (prefill incl. vision {sb['prefill']:.2f}, generate {sb['generate']:.2f}, "
                     f"dense {sb.get('dense', 0):.2f}) | {floor:.2f} s | {pct(floor, sb['wall'])} | | | |")
    dps = [s for r in ours for s in r.get("depth", [])]
    if dps:
        db = min(dps, key=lambda s: s["wall"])
        lines.append(f"| depth 512^2 (8 generated) | {db['wall']:.2f} s (prefill {db['prefill']:.2f}, generate "
                     f"{db['generate']:.2f}) | | | | | |")
    q8 = [r.get("ours int8", {}) for r in rounds if r.get("ours int8")]
    if q8:
        lines += ["", "| int8 (dtype=\"int8\") | densemllm int8 | vs our bf16 | floor | fraction | llama.cpp Q8_0 | "
                      "int8 vs bf16 agreement |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for ctx in args.contexts:
            o8, ob = pick(q8, f"prefill {ctx} s"), pick(ours, f"prefill {ctx} s")
            lq = lc.get(f"q8_0 prefill {ctx} tok/s")
            rel = q8[0].get(f"int8 vs bf16 logits rel err {ctx}")
            agree = f"last-position logits rel err {rel:.3f}" if rel is not None else ""
            lines.append(f"| prefill {ctx} tokens | {fmt(o8, 's')} | {ob / o8:.2f}x | | | "
                         f"{fmt(ctx / lq if lq else None, 's')} | {agree} |" if o8 and ob else f"| prefill {ctx} | - |")
        for ctx in args.contexts:
            o8, ob = pick(q8, f"decode {ctx} s/token"), pick(ours, f"decode {ctx} s/token")
            fl = decode_bytes_int8(t, ctx) / (bw * 1e9)
            lq = lc.get(f"q8_0 decode {ctx} tok/s")
            eq = q8[0].get(f"int8 vs bf16 greedy tokens equal {ctx}")
            lines.append(f"| decode at context {ctx} ({decode_bytes_int8(t, ctx) / 1e9:.2f} GB/token) | "
                         f"{fmt(o8, 'ms')} | {ob / o8:.2f}x | {fl * 1e3:.0f} ms | {pct(fl, o8)} | "
                         f"{fmt(1 / lq if lq else None, 'ms')} | "
                         f"{'' if eq is None else f'first {eq} of {args.decode + 1} greedy tokens equal'} |"
                         if o8 and ob else f"| decode {ctx} | - |")
        segs8 = [x for r in q8 for x in r.get("segment", [])]
        if segs8:
            sb8 = min(segs8, key=lambda x: x["wall"])
            lines.append(f"| segment 512^2, 150 classes | {sb8['wall']:.2f} s | | | | | |")
        lines.append(f"int8 load (quantizing) {q8[0]['load s']:.1f} s, peak RSS {q8[0]['peak RSS bytes'] / 2**30:.2f} "
                     f"GiB")
    if ours and "peak RSS bytes" in ours[0]:
        o0 = ours[0]
        lines.append("")
        lines.append(f"peak RSS ours {o0['peak RSS bytes'] / 2**30:.2f} GiB = {o0['peak RSS bytes'] / o0['weights bytes']:.2f}x "
                     f"the weights ({o0['weights bytes'] / 2**30:.2f} GiB); load {o0['load s']:.2f} s, preload "
                     f"{o0['preload s']:.1f} s; transformers peak RSS "
                     f"{hf[0].get('peak RSS bytes', 0) / 2**30:.2f} GiB" if hf else "")
    for k, v in lc.items():
        if "error" in k:
            lines.append(f"llama.cpp {k}: {v[-400:]}")
    lines += ["", "acceptance (issue 16), from the numbers above:"]

    def check(what, ok):
        lines.append(f"  [{'not measured' if ok is None else 'PASS' if ok else 'FAIL'}] {what}")

    def all_or_none(vals):
        vals = list(vals)
        return None if not vals or any(v is None for v in vals) else all(vals)

    dec = {c: pick(ours, f"decode {c} s/token") for c in args.contexts}
    lc_ctx = [c for c in args.contexts if lc.get(f"bf16 decode {c} tok/s")]
    check(f"decode faster than llama.cpp bf16 at every context llama.cpp measured ({lc_ctx})",
          all_or_none(None if dec[c] is None else dec[c] < 1 / lc[f"bf16 decode {c} tok/s"] for c in lc_ctx))
    check("decode >= 90% of the read-bandwidth floor up to context 1536, >= 85% at 4096",
          all_or_none(None if dec[c] is None else decode_bytes(t, c) / (bw * 1e9) / dec[c] >= (0.9 if c <= 1536 else 0.85)
                      for c in args.contexts))
    p794 = pick(ours, "prefill 794 s")
    check("prefill 794 tokens >= 90% of the bf16 matmul peak",
          None if p794 is None else prefill_flops(t, 794) / peak / p794 >= 0.9)
    check("vision >= 85% of the bf16 matmul peak at 512^2 and 1024^2",
          all_or_none(None if pick(ours, f"encode {sd} s") is None else
                      vision_flops(sd) / peak / pick(ours, f"encode {sd} s") >= 0.85 for sd in (512, 1024)))
    if segs:
        check("segment(512^2, 150 classes) within 1.15x of its floor", sb["wall"] <= 1.15 * floor)
    else:
        check("segment(512^2, 150 classes) within 1.15x of its floor", None)
    if hf:
        check("faster than transformers for prefill and decode at every context",
              all_or_none(None if pick(ours, f"{k} {c} {u}") is None or pick(hf, f"{k} {c} {u}") is None else
                          pick(ours, f"{k} {c} {u}") < pick(hf, f"{k} {c} {u}")
                          for c in args.contexts for k, u in (("prefill", "s"), ("decode", "s/token"))))
    if q8:
        p8 = {c: pick(q8, f"prefill {c} s") for c in args.contexts}
        d8 = {c: pick(q8, f"decode {c} s/token") for c in args.contexts}
        check("int8 prefill >= 1.6x faster than bf16 (every context)",
              all_or_none(None if p8[c] is None else pick(ours, f"prefill {c} s") / p8[c] >= 1.6 for c in args.contexts))
        check("int8 decode >= 1.7x faster than bf16 (every context)",
              all_or_none(None if d8[c] is None else dec[c] / d8[c] >= 1.7 for c in args.contexts))
        q_ctx = [c for c in args.contexts if lc.get(f"q8_0 decode {c} tok/s")]
        check(f"int8 decode faster than llama.cpp Q8_0 at every context llama.cpp measured ({q_ctx})",
              all_or_none(None if d8[c] is None else d8[c] < 1 / lc[f"q8_0 decode {c} tok/s"] for c in q_ctx))
    return "\n".join(lines)


def fmt(v, unit):
    if v is None:
        return "-"
    return f"{v * 1e3:.0f} ms" if unit == "ms" else f"{v:.2f} s"


def pct(floor, t):
    return f"{100 * floor / t:.0f}%" if t else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=sorted(STAGES))
    ap.add_argument("--ckpt")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "densemllm-bench"))
    ap.add_argument("--llamacpp", default=None, help="where llama.cpp is fetched and built (default: CACHE/llamacpp)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contexts", default="283,794,1536,4096")
    ap.add_argument("--decode", type=int, default=8, help="decode steps timed per context")
    ap.add_argument("--repeat", type=int, default=1, help="calls per measurement (best is reported)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating ours / transformers rounds")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--llamacpp-contexts", default="283,794,1536",
                    help="llama.cpp prefill and decode contexts (each decode depth is filled first)")
    ap.add_argument("--report", help="print the tables of a saved --json file (same --depth) and exit")
    ap.add_argument("--json", default=str(HERE / "full.json"))
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "int8"], help="(stage ours)")
    ap.add_argument("--depth", default="40,27", help="LLM,vision layers (fewer: a quick check of the script)")
    args = ap.parse_args()
    TEXT["num_hidden_layers"], VISION["num_hidden_layers"] = (int(x) for x in args.depth.split(","))
    VISION["fullatt_block_indexes"] = [i for i in (7, 15, 23, 26) if i < VISION["num_hidden_layers"]] or [
        VISION["num_hidden_layers"] - 1]
    args.contexts = [int(c) for c in str(args.contexts).split(",")]
    args.llamacpp = args.llamacpp or str(Path(args.cache) / "llamacpp")
    if args.stage:
        print(json.dumps(STAGES[args.stage](args)))
        return
    if args.report:  # the tables again from a saved --json file
        saved = json.loads(Path(args.report).read_text())
        args.contexts = saved["contexts"]
        print(report(saved, args))
        return
    print(f"CPU: {cpu_line()}", flush=True)
    t0 = time.perf_counter()
    args.ckpt = write_checkpoint(Path(args.cache) / "youtu-vl-4b-random")
    print(f"checkpoint ready: {args.ckpt} ({time.perf_counter() - t0:.0f} s)", flush=True)
    res = {"cpu": cpu_line(), "threads": args.threads, "contexts": args.contexts, "machine": run_stage("machine", args),
           "rounds": []}
    for _ in range(args.rounds):
        rnd = {"ours": run_stage("ours", args)}
        if not args.skip_hf:
            rnd["hf"] = run_stage("hf", args)
        if not args.skip_int8:
            rnd["ours int8"] = run_stage("ours", args, dtype="int8")
        res["rounds"].append(rnd)
    if not args.skip_llamacpp:
        res["llamacpp"] = run_stage("llamacpp", args)
    from densemllm._atomic import atomic_write

    atomic_write(Path(args.json), json.dumps(res, indent=1))
    print(report(res, args))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
