"""The small default model: the real Youtu-VL architecture (windowed ViT with global
layers, 2D RoPE, 2x2 merger, MLA decoder with q_lora) sized to train on 2 CPU cores on
the procedural scenes, its tokenizer, its training init and where the package keeps it.

Package data: ``densemllm/models/default/`` holds config.json, tokenizer.json,
tokenizer_config.json and generation_config.json (written by
:func:`write_package_files`, deterministic) and, once trained, ``model.safetensors``:
that one file turns the embedded model on (:func:`trained_weights`). Without it
``densemllm.load()`` says so and ``densemllm demo`` runs RANDOM weights of the same
architecture, labelled as such. Every special-token id comes from the tokenizer and the
config; none is the real model's.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np

__all__ = ["TEXT", "VISION", "DEFAULT_DIR", "WEIGHTS", "tokenizer_json", "train_init", "make_default_checkpoint",
           "write_package_files", "trained_weights", "default_model_dir", "DefaultModelMissing", "heldout_metrics",
           "training_record", "HELDOUT"]

# patch 8 px, 2x2 merge -> one vision token per 16x16 px; windows of 64 px = 4x4 merged
# tokens; layers 2 and 5 attend globally (as Youtu-VL's fullatt_block_indexes).
VISION = dict(
    hidden_size=128, num_attention_heads=4, intermediate_size=512, num_hidden_layers=6, patch_size=8,
    num_channels=3, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", spatial_merge_size=2,
    window_size=64, fullatt_block_indexes=[2, 5],
)
# MLA decoder: q_lora 128, kv_lora 64, nope 32 + rope 16 per head, v 32, 8 heads.
TEXT = dict(
    hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
    q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    rms_norm_eps=1e-6, max_position_embeddings=2048, rope_theta=10000.0, rope_scaling=None,
    rope_interleave=True, attention_bias=False, hidden_act="silu", tie_word_embeddings=True,
)
BPE_VOCAB = 1024  # byte-level BPE merges (the special and task tokens come on top)

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "models" / "default"
WEIGHTS = "model.safetensors"
HELDOUT = "heldout.json"  # the shipped weights' held-out metrics (written by train_default.install)
PACKAGE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


class DefaultModelMissing(FileNotFoundError):
    """The package holds no trained default-model weights."""


@functools.lru_cache(maxsize=1)
def tokenizer_json() -> str:
    """tokenizer.json of the default model: byte-level BPE trained on the scenes' prompts
    and answers plus the generic test corpus, with every special token of the notes."""
    from .. import testing
    from .prompts import corpus_lines

    corpus = "\n".join([*testing._CORPUS.splitlines(), *corpus_lines()])
    return testing.build_tokenizer_json(corpus, BPE_VOCAB)


# Output projections of residual branches start smaller (GPT-2: std / sqrt(2 * layers)),
# so the residual stream's variance does not grow with depth at init.
_RESIDUAL_OUT = ("self_attn.out_proj.weight", "mlp.fc2.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight")
_NORM_WEIGHTS = ("norm.weight", "layer_norm1.weight", "layer_norm2.weight", "ln_q.weight", "layernorm.weight")


def train_init(rng, name, shape, dtype=None, std=0.02):
    """Training init: norms 1, biases 0, linears and embeddings N(0, std), residual output
    projections N(0, std / sqrt(2 * layers of their stack))."""
    if name.endswith(_NORM_WEIGHTS):
        return np.ones(shape, np.float32)
    if name.endswith(".bias"):
        return np.zeros(shape, np.float32)
    s = std
    if name.endswith(_RESIDUAL_OUT):
        layers = TEXT["num_hidden_layers"] if name.startswith("model.") else VISION["num_hidden_layers"]
        s = std / np.sqrt(2 * layers)
    return (s * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def make_default_checkpoint(dir, *, seed=0, dtype="f32"):
    """Write the default architecture with freshly initialised (UNTRAINED) weights
    (:func:`train_init`) into ``dir``: the start of training, and the demo's stand-in
    when no weights ship. The config, tokenizer and chat template are the package's
    own files (the default model's one source of truth)."""
    from ..checkpoint import expected_weights
    from ..config import ModelConfig
    from ..testing import _encode, _save_safetensors

    if dtype not in ("bf16", "f32"):
        raise ValueError(f"dtype must be 'bf16' or 'f32', got {dtype!r}")
    missing = [f for f in PACKAGE_FILES if not (DEFAULT_DIR / f).is_file()]
    if missing:
        raise FileNotFoundError(f"the default model's package files are missing from {DEFAULT_DIR}: {missing} "
                                "(regenerate them with densemllm.data.default_model.write_package_files())")
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in PACKAGE_FILES:
        shutil.copyfile(DEFAULT_DIR / f, out / f)
    config = ModelConfig.from_file(out / "config.json")
    rng = np.random.default_rng(seed)
    tensors = {alts[0]: _encode(train_init(rng, alts[0], shape), dtype) for alts, shape in expected_weights(config)}
    tmp = out / (WEIGHTS + ".tmp")
    _save_safetensors(tmp, tensors, {"format": "pt", "densemllm_init": f"train_init seed {seed}"})
    tmp.replace(out / WEIGHTS)
    return out


def write_package_files(dest=DEFAULT_DIR):
    """(Re)build the default model's config and tokenizer files (VISION, TEXT, the scene
    tokenizer, the chat template of densemllm.testing) into ``dest``; the weights are
    left alone. Only for regenerating the package data: a trained model keeps the files
    it was trained with."""
    import tempfile

    from ..testing import make_checkpoint

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ck = make_checkpoint(Path(tmp) / "ck", vision=dict(VISION), tokenizer_json=tokenizer_json(), **TEXT)
        for f in PACKAGE_FILES:
            shutil.copyfile(ck / f, dest / (f + ".tmp"))
            (dest / (f + ".tmp")).replace(dest / f)
    return dest


def trained_weights(dir=DEFAULT_DIR):
    """Path of the shipped trained weights, or None when the package has none."""
    p = Path(dir) / WEIGHTS
    return p if p.is_file() else None


def default_model_dir():
    """The embedded default model's directory; DefaultModelMissing when its trained
    weights are not in this build."""
    if trained_weights() is None:
        raise DefaultModelMissing(
            f"this build of densemllm holds no trained default model ({DEFAULT_DIR / WEIGHTS} is missing). "
            "Train it with `python examples/train_default_model.py` (docs/default-model.md), or pass a "
            "checkpoint directory to densemllm.load(PATH).")
    return DEFAULT_DIR


def heldout_metrics(dir=DEFAULT_DIR) -> dict:
    """The held-out metrics recorded when the weights in ``dir`` were installed
    ({dataset: {metric: value}}, plus "n_scenes"); empty when there are none."""
    p = Path(dir) / HELDOUT
    if trained_weights(dir) is None or not p.is_file():
        return {}
    return json.loads(p.read_text(encoding="utf-8"))


def training_record(dir=DEFAULT_DIR) -> dict:
    """The training facts stored in a default-model checkpoint's safetensors metadata
    (the shipped one by default; empty if none)."""
    p = trained_weights(dir)
    if p is None:
        return {}
    with open(p, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= 100_000_000:
            raise ValueError(f"{p}: implausible safetensors header length {n}")
        header = json.loads(f.read(n))
    meta = header.get("__metadata__", {})
    try:
        return json.loads(meta.get("densemllm_training", "{}"))
    except json.JSONDecodeError:
        return {}
