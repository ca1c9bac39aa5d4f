"""Opening a full-size Youtu-VL-4B checkpoint: time and memory of densemllm.load against
the `safetensors` package opening the same shards, in the same run.

The checkpoint has the real layout and sizes (config values of the notes, ~1000
tensors, 4 bf16 shards, ~10 GB) but is written as *sparse* files: headers are real,
the data section is a hole, so it costs no disk and no time to write. Weights are
zeros; nothing here runs the model.

Each measurement runs in a fresh subprocess:
  densemllm.load      : config + tokenizer + mmap + full C validation of all shards
                        + weight check against config.json
  _core.Checkpoint    : the C part alone (mmap + header parse + validation)
  safetensors.safe_open: the package's own open of every shard + every tensor's shape
                        (its Rust header parse and validation), the baseline
  memory              : growth of peak RSS (VmHWM, reset by writing 5 to clear_refs)

Usage: .venv/bin/python benchmarks/load.py [--repeat 3] [--dir /tmp/dm-bench-4b]
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's densemllm

from densemllm.checkpoint import expected_weights  # noqa: E402
from densemllm.config import ModelConfig  # noqa: E402
from densemllm.testing import make_checkpoint  # noqa: E402

YOUTU_VL_4B = {
    "vocab_size": 283386, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 40,
    "num_attention_heads": 32, "num_key_value_heads": 32, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768, "rope_theta": 500000.0, "rope_scaling": None, "tie_word_embeddings": True,
    "vision_config": {"hidden_size": 1152, "num_attention_heads": 16, "intermediate_size": 4304,
                      "num_hidden_layers": 27, "patch_size": 16, "spatial_merge_size": 2, "out_hidden_size": 2560,
                      "window_size": 256, "fullatt_block_indexes": [7, 15, 23, 26]},
}


def build(out, shards=4):
    out.mkdir(parents=True, exist_ok=True)
    tiny = make_checkpoint(out / "_tiny")
    tcfg = json.loads((tiny / "config.json").read_text())
    cfg = dict(YOUTU_VL_4B)
    # Token ids of the tiny tokenizer we borrow (the real tokenizer is not available).
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "bos_token_id",
              "eos_token_id", "pad_token_id"):
        cfg[k] = tcfg[k]
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / f, out / f)
    shutil.rmtree(tiny)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    tensors = [(alts[0], shape) for alts, shape in expected_weights(ModelConfig.from_dict(cfg))]
    sizes = [2 * _numel(s) for _, s in tensors]
    total = sum(sizes)
    weight_map, k, start = {}, 0, 0
    for s in range(shards):
        end, acc = k, 0
        while end < len(tensors) and (acc < total / shards or s == shards - 1):
            acc += sizes[end]
            end += 1
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for (n, shape), nb in zip(tensors[k:end], sizes[k:end]):
            header[n] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nb]}
            weight_map[n] = name
            off += nb
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(out / name, "wb") as fh:
            fh.write(struct.pack("<Q", len(h)) + h)
            fh.truncate(8 + len(h) + off)  # sparse: the data section is a hole
        k = end
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    return len(tensors), total


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])

def rss():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out

what, path = sys.argv[1], sys.argv[2]
import glob
files = sorted(glob.glob(path + "/model-*.safetensors"))
if what == "safetensors":
    from safetensors import safe_open
else:
    import densemllm
    from densemllm import _core
open("/proc/self/clear_refs", "w").write("5")
before = rss()
t = time.perf_counter()
if what == "load":
    m = densemllm.load(path)
    n = len(m._checkpoint)
elif what == "core":
    c = _core.Checkpoint(files)
    n = len(c)
else:
    handles = [safe_open(f, "numpy") for f in files]
    n = sum(len([h.get_slice(k).get_shape() for k in h.keys()]) for h in handles)
dt = time.perf_counter() - t
after = rss()
print(json.dumps({"s": dt, "n": n, "peak_growth": after["VmHWM"] - before["VmRSS"]}))
"""


def run(what, path, repeat):
    best = None
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(repeat):
        r = subprocess.run([sys.executable, "-c", PROBE, what, str(path), repo], capture_output=True, text=True,
                           check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        if best is None or res["s"] < best["s"]:
            best = res
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    from pathlib import Path

    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dm-bench-4b-"))
    try:
        n, total = build(tmp)
        print(f"Youtu-VL-4B layout: {n} tensors, {total / 1e9:.2f} GB bf16 in 4 sparse shards ({tmp})")
        print(f"{'what':<28}{'tensors':>8}{'best time':>12}{'peak RSS growth':>18}")
        for what, label in (("safetensors", "safetensors.safe_open"), ("core", "densemllm _core.Checkpoint"),
                            ("load", "densemllm.load (all checks)")):
            r = run(what, tmp, args.repeat)
            print(f"{label:<28}{r['n']:>8}{r['s'] * 1e3:>10.1f}ms{r['peak_growth'] / 2**20:>15.1f} MB")
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
