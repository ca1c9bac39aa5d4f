"""Issue 10 defects, each pinned by a test that failed before its fix: generation
arguments (NaN/inf/float/bool), tokenizers shorter than the head, atomic writes,
bounded sizes, configs checked at load, rle_decode shapes. (Threads:
tests/test_threads.py; Ctrl-C: tests/test_interrupt.py; fuzzing: tests/test_fuzz.py.)"""
import json
import math

import numpy as np
import pytest

import densemllm
from densemllm import _core
from densemllm.testing import make_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return densemllm.load(make_checkpoint(tmp_path_factory.mktemp("rel") / "ck"))


# ---- generation arguments (item 2) ---------------------------------------------------

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("kw,exc,name", [
    (dict(temperature=NAN), ValueError, "temperature"), (dict(temperature=INF), ValueError, "temperature"),
    (dict(top_p=NAN), ValueError, "top_p"), (dict(top_p=-INF), ValueError, "top_p"),
    (dict(repetition_penalty=NAN), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=INF), ValueError, "repetition_penalty"),
    (dict(seed=1.5), TypeError, "seed"), (dict(seed=-1), ValueError, "seed"), (dict(seed=True), TypeError, "seed"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens"), (dict(max_new_tokens=2.0), TypeError, "max_new_tokens"),
    (dict(top_k=1.5), TypeError, "top_k"), (dict(top_k=False), TypeError, "top_k"),
    (dict(temperature="0.5"), TypeError, "temperature"), (dict(temperature=True), TypeError, "temperature"),
    (dict(do_sample="no"), TypeError, "do_sample"),
])
def test_bad_generation_arguments_are_rejected(tiny, kw, exc, name):
    kw = dict(max_new_tokens=3) | kw
    with pytest.raises(exc, match=name):
        tiny.generate("hello", **kw)
    with pytest.raises(exc, match=name):  # chat and a session's stream check the same way, up front
        tiny.chat(None, "hello", **kw)
    with pytest.raises(exc, match=name):
        tiny.prefill("hello").generate(stream=True, **kw)


def test_numpy_scalars_are_accepted_like_python_ints(tiny):
    kw = dict(temperature=np.float32(0.9), top_p=np.float64(0.9))
    a = tiny.generate("hello", max_new_tokens=np.int64(4), seed=np.uint64(7), top_k=np.int32(50), **kw)
    b = tiny.generate("hello", max_new_tokens=4, seed=7, top_k=50, **kw)
    assert a == b


@pytest.mark.parametrize("kw,name", [(dict(temperature=NAN), "temperature"), (dict(top_p=NAN), "top_p"),
                                     (dict(repetition_penalty=NAN), "repetition_penalty"),
                                     (dict(repetition_penalty=INF), "repetition_penalty"),
                                     (dict(temperature=INF), "temperature")])
def test_core_sampler_rejects_nan_and_inf(kw, name):
    """The C sampler guards its own callers: NaN used to pass `t < 0` and pick the last id."""
    logits = np.linspace(0, 1, 16, dtype=np.float32)
    args = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0) | kw
    with pytest.raises(ValueError, match=name):
        _core.sample(logits, np.zeros(1, np.int64), _core.rng_state(0), **args)


def test_tiny_temperature_is_the_greedy_limit():
    logits = np.array([0.0, 3.0, 1.0], np.float32)
    for seed in range(5):
        tok = _core.sample(logits.copy(), np.zeros(0, np.int64), _core.rng_state(seed), do_sample=True,
                           temperature=1e-44, top_k=0, top_p=1.0, repetition_penalty=1.0)
        assert tok == 1


# ---- head rows past the tokenizer (item 9) ---------------------------------------------

def test_ids_the_tokenizer_does_not_know_are_never_sampled(tmp_path):
    """A head with padding rows past the tokenizer (common in released checkpoints).
    The padding rows are built to win for ANY hidden state (+-100 e_j), so without
    masking greedy decoding picks one and decode() fails."""
    from safetensors.numpy import load_file, save_file

    n_tok = densemllm.load(make_checkpoint(tmp_path / "probe")).tokenizer.vocab_size
    D = 64
    path = make_checkpoint(tmp_path / "ck", dtype="f32", tie_word_embeddings=False, vocab_size=n_tok + 2 * D)
    t = load_file(str(path / "model.safetensors"))
    t["lm_head.weight"][n_tok:] = 100 * np.concatenate([np.eye(D), -np.eye(D)]).astype(np.float32)
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    model = densemllm.load(path)
    assert model.tokenizer.vocab_size == n_tok < model.config.text.vocab_size
    assert model.forward(model.tokenizer.encode("hi"))[-1].argmax() >= n_tok  # the trap is armed
    sess = model.prefill("hello")
    greedy = list(sess.generate_ids(6, do_sample=False))
    assert len(greedy) == 6 and max(greedy) < n_tok
    for seed in range(3):
        ids = list(model.prefill("hello").generate_ids(6, temperature=1.0, top_p=1.0, seed=seed))
        assert max(ids) < n_tok
    assert isinstance(model.generate("hello", max_new_tokens=6, do_sample=False), str)
    img = np.zeros((64, 64, 3), np.uint8)
    assert model.segment(img, ["cat"], max_new_tokens=8).labels.shape == (64, 64)


# ---- atomic writes (item 3) --------------------------------------------------------------

def test_rewriting_a_checkpoint_does_not_touch_a_loaded_model(tmp_path):
    """make_checkpoint used to truncate and rewrite model.safetensors in place: a model
    mapped on it silently switched weights (same size) or died of SIGBUS (smaller)."""
    path = make_checkpoint(tmp_path / "ck", seed=0)
    model = densemllm.load(path)
    ids = model.tokenizer.encode("hello world")
    before = model.forward(ids)
    inode = (path / "model.safetensors").stat().st_ino
    make_checkpoint(tmp_path / "ck", seed=1)  # same shapes, other weights
    assert (path / "model.safetensors").stat().st_ino != inode  # a new file, renamed over the old
    np.testing.assert_array_equal(model.forward(ids), before)
    assert not np.array_equal(densemllm.load(path).forward(ids), before)  # the new file is the new model
    assert not [p.name for p in path.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_a_smaller_rewrite_cannot_kill_a_loaded_model(tmp_path):
    """The SIGBUS case, in a subprocess so that a regression fails this test instead of the run."""
    import subprocess
    import sys

    code = f"""
import numpy as np, densemllm
from densemllm.testing import make_checkpoint
p = make_checkpoint({str(tmp_path / 'ck')!r}, seed=0, num_hidden_layers=2)
m = densemllm.load(p)
ids = m.tokenizer.encode("hello")
a = m.forward(ids)
make_checkpoint(p, seed=0, num_hidden_layers=1)   # a smaller file under the same name
assert np.array_equal(m.forward(ids), a)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_atomic_helper_leaves_the_old_file_on_error_and_follows_the_umask(tmp_path):
    import os

    from densemllm._atomic import atomic_open, atomic_path, atomic_write

    target = tmp_path / "f.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    with atomic_path(tmp_path / "a.npy") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy"
        np.save(tmp, np.arange(3))  # np.save keeps a name that already ends in .npy
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "m.txt", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o640
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, b"x")


# ---- bounded sizes (item 4) and configs checked at load (item 7) ---------------------------

def edit_checkpoint(src, dst, config=None, vision=None, drop=()):
    """Copy checkpoint `src` to `dst` with config.json fields changed and tensors whose
    names start with any of `drop` removed (f32 files: safetensors.numpy reads them)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config or {})
    cfg["vision_config"].update(vision or {})
    (dst / "config.json").write_text(json.dumps(cfg))
    if drop:
        t = load_file(str(dst / "model.safetensors"))
        save_file({k: v for k, v in t.items() if not k.startswith(tuple(drop))}, str(dst / "model.safetensors"))
    return dst


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    return make_checkpoint(root / "ck", dtype="f32", num_hidden_layers=1, vision=dict(num_hidden_layers=1,
                                                                                        fullatt_block_indexes=[0]))


@pytest.mark.parametrize("config,vision,drop,needle", [
    # 0 layers whose (absent) weights match: load() accepted them and the first call failed
    (dict(num_hidden_layers=0), None, ["model.layers."], r"num_hidden_layers must be in \[1, 1024\], got 0"),
    (None, dict(num_hidden_layers=0, fullatt_block_indexes=[]), ["siglip2.vision_model.encoder.layers."],
     r"num_hidden_layers must be in \[1, 256\], got 0"),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), None, (), "rope_type 'dynamic'"),
    (dict(rope_theta=1e-300), None, (), r"rope_theta must be a finite number in \[1, 1e\+12\]"),
    (dict(rms_norm_eps=float("inf")), None, (), "rms_norm_eps must be a finite number"),
    (None, dict(hidden_act="relu"), (), "hidden_act 'relu' is not supported"),
    (None, dict(layer_norm_eps=float("nan")), (), "layer_norm_eps must be a finite number"),
    (dict(num_hidden_layers=2**63), None, (), r"num_hidden_layers must be in \[1, 1024\], got 9223372036854775808"),
    (dict(num_hidden_layers=10**6), None, (), r"num_hidden_layers must be in \[1, 1024\]"),
    (dict(vocab_size=2**40), None, (), r"vocab_size must be in \[1, 4194304\]"),
    (None, dict(num_hidden_layers=10**6), (), r"num_hidden_layers must be in \[1, 256\]"),
    (dict(bos_token_id=10**6), None, (), "bos_token_id 1000000 is outside the vocabulary"),
])
def test_load_rejects_what_used_to_fail_at_first_use(one_layer, tmp_path, config, vision, drop, needle):
    import time

    path = edit_checkpoint(one_layer, tmp_path / "ck", config, vision, drop)
    t0 = time.perf_counter()
    with pytest.raises(densemllm.CheckpointError, match=needle) as ei:
        densemllm.load(path)
    assert str(path) in str(ei.value)
    assert time.perf_counter() - t0 < 5  # 2**63 layers used to build a weight list for 40-50 s


def test_load_rejects_a_tokenizer_without_the_image_pad(one_layer, tmp_path):
    path = edit_checkpoint(one_layer, tmp_path / "ck")
    tok = json.loads((path / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|image_pad|>"]
    (path / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(densemllm.CheckpointError, match=r"no <\|image_pad\|> token"):
        densemllm.load(path)


def test_huge_scale_is_refused_before_resizing(tiny):
    img = np.zeros((64, 64, 3), np.uint8)
    for scale in (1e6, 3e4):
        with pytest.raises(ValueError, match=f"scale={scale!r} makes the 64x64 image"):
            tiny.segment(img, ["cat"], scale=scale)
        with pytest.raises(ValueError, match="scale="):
            tiny.vision_logits(img, ["cat"], scale=scale)
    for scale in (math.nan, math.inf, -1.0, 0.0, True):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            tiny.segment(img, ["cat"], scale=scale)


def test_huge_broadcast_image_is_refused_at_once(tiny):
    import time

    t0 = time.perf_counter()
    img = np.broadcast_to(np.uint8(7), (200_000, 200_000, 3))  # 120 GB that is 1 byte
    with pytest.raises(ValueError, match="pixels exceeds the limit"):
        tiny.encode_image(img)
    with pytest.raises(ValueError, match="pixels exceeds the limit"):  # the core's own boundary check
        _core.preprocess(img, 1024, 16, 2)
    assert time.perf_counter() - t0 < 5


# ---- rle_decode shapes (item 8) ------------------------------------------------------------

def test_rle_decode_rejects_strings_and_floats_as_shapes():
    from densemllm.parse import rle_decode

    assert rle_decode("(3,2)", (1, 2)).shape == (1, 2)
    assert rle_decode("(3,2)", (np.int64(2),)).tolist() == [3, 3]
    for shape in ("12", (1.0, 2.0), (2.5,), [1, "2"]):
        with pytest.raises(TypeError, match="shape must be an int or a tuple of ints"):
            rle_decode("(3,2)", shape)
