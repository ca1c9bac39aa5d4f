"""Loading a sharded bf16 checkpoint copies no weight data: the resident set of a
fresh process grows by far less than the file size during load(), by about one
tensor when that tensor is read, and (the control that shows the measurement can
see copies) by about twice the file size when dtype="f32" asks for copies."""
import json
import subprocess
import sys

import pytest

from densemllm.testing import make_checkpoint

PROBE = r"""
import json, sys
import numpy as np

def mem():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out

def reset_peak():
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

import densemllm
path, dtype, name, preload = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
reset_peak()
before = mem()
m = densemllm.load(path, dtype=dtype, preload=preload)
loaded = mem()
reset_peak()
a = m._checkpoint.get(name)
int(a.max())  # reads every page of the tensor, no converted copy
touched = mem()
print(json.dumps({"before": before, "loaded": loaded, "touched": touched, "nbytes": a.nbytes,
                  "files": len(m._checkpoint.files())}))
"""

MB = 2 ** 20


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    # ~240 MB of bf16 in 4 shards: a real layout with larger dimensions.
    return make_checkpoint(tmp_path_factory.mktemp("big"), shards=4, hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, q_lora_rank=512,
                           kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64)


def probe(path, dtype, name, preload=False):
    r = subprocess.run([sys.executable, "-c", PROBE, str(path), dtype, name, "1" if preload else "0"],
                       capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.rss
def test_load_is_zero_copy(big):
    size = sum(f.stat().st_size for f in big.glob("*.safetensors"))
    assert size > 200 * MB
    name = "model.layers.3.mlp.down_proj.weight"  # 1024 x 4096 bf16 = 8 MB
    r = probe(big, "auto", name)
    assert r["files"] == 4 and r["nbytes"] == 8 * MB
    grow_load = r["loaded"]["VmHWM"] - r["before"]["VmRSS"]
    grow_touch = r["touched"]["VmHWM"] - r["loaded"]["VmRSS"]
    print(f"file {size / MB:.0f} MB; peak RSS growth during load {grow_load / MB:.1f} MB; "
          f"reading one {r['nbytes'] / MB:.0f} MB tensor adds {grow_touch / MB:.1f} MB")
    # Headers, config and tokenizer only: a copy of the weights would be >= 240 MB.
    # 10% of the file leaves room for allocator noise without admitting any copy.
    assert grow_load < 0.1 * size
    # Reading a tensor maps in its pages (file-backed, counted in RSS) and nothing
    # more: between 90% of it (the pages really come from the mapping) and one
    # tensor + 4 MB of slack (numpy's reduction buffers, page granularity).
    assert 0.9 * r["nbytes"] < grow_touch < r["nbytes"] + 4 * MB


def test_f32_copies_are_visible(big):
    """Control: with dtype='f32' the same measurement sees the owned copies (~2x the file)."""
    size = sum(f.stat().st_size for f in big.glob("*.safetensors"))
    r = probe(big, "f32", "model.norm.weight")
    grow = r["loaded"]["VmRSS"] - r["before"]["VmRSS"]
    print(f"dtype='f32': RSS grows by {grow / MB:.0f} MB for a {size / MB:.0f} MB bf16 file")
    assert grow > 1.8 * size


@pytest.mark.rss
def test_preload_maps_the_weights_without_copying(big):
    """load(preload=True): every mapped weight page is resident when load returns
    (RSS grows by the file, >= 90% of it), and still no copy (< file + 10%);
    reading a tensor afterwards adds nothing (its pages are mapped already)."""
    size = sum(f.stat().st_size for f in big.glob("*.safetensors"))
    r = probe(big, "auto", "model.layers.3.mlp.down_proj.weight", preload=True)
    grow_load = r["loaded"]["VmRSS"] - r["before"]["VmRSS"]
    grow_touch = r["touched"]["VmHWM"] - r["loaded"]["VmRSS"]
    print(f"preload: RSS grows by {grow_load / MB:.0f} MB for a {size / MB:.0f} MB file; "
          f"reading a tensor then adds {grow_touch / MB:.1f} MB")
    assert 0.9 * size < grow_load < 1.1 * size
    assert grow_touch < 4 * MB
