"""Finding, opening and checking the weight files of a checkpoint directory.

``open_checkpoint(dir)`` -> ``_core.Checkpoint`` over ``model.safetensors`` or the
shards named by ``model.safetensors.index.json`` (mmap'd and validated in C).
``check_weights(ckpt, config)`` compares the tensors with what the config implies
and raises one :class:`CheckpointError` listing every missing, unexpected,
mis-shaped or non-float tensor by name.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ._core import Checkpoint, CheckpointError

__all__ = [
    "VISION_PREFIXES", "MERGER_PREFIXES", "find_weight_files", "open_checkpoint",
    "expected_weights", "check_weights", "CheckpointError",
]

# Prefix alternatives seen in public loaders (notes section 1), first = released layout.
VISION_PREFIXES = ("siglip2.vision_model.", "vision_model.")
MERGER_PREFIXES = ("merger.", "vision_model.merger.")
FLOAT_DTYPES = ("BF16", "F16", "F32")

# SigLIP2 leftovers the architecture does not use (no learned position embedding)
# and buffers some exporters save; present or not, they are ignored.
_IGNORED = re.compile(
    r"^(siglip2\.vision_model\.|vision_model\.)(embeddings\.position_embedding\..*|.*position_ids)$"
    r"|(^|\.)rotary_emb\.inv_freq$"
)


def find_weight_files(path):
    """List the safetensors files of a checkpoint directory (or a single file)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index}: not valid JSON ({e})") from None
        wm = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise CheckpointError(f"{index}: missing or malformed 'weight_map'")
        files = []
        for shard in wm.values():
            if shard not in files:
                files.append(shard)
        for shard in files:
            if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
                raise CheckpointError(f"{index}: shard name {shard!r} is not a plain file name")
        missing = [s for s in files if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that do not exist in {path}: {', '.join(missing)}")
        return [path / s for s in files]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def open_checkpoint(path):
    """Open (mmap + validate) the weights of a checkpoint directory."""
    path = Path(path)
    files = find_weight_files(path)
    ckpt = Checkpoint([str(f) for f in files])
    index = path / "model.safetensors.index.json"
    if path.is_dir() and index.is_file():
        # The index must agree with the files: a name it places in one shard but
        # found elsewhere (or nowhere) means the index and shards are mismatched.
        wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        wrong = []
        for name, shard in wm.items():
            if name not in ckpt:
                wrong.append(f"{name} (listed in {shard}, not found)")
            elif Path(ckpt.info(name)[2]).name != shard:
                wrong.append(f"{name} (listed in {shard}, found in {Path(ckpt.info(name)[2]).name})")
        if wrong:
            raise CheckpointError(f"{index} does not match the shards: " + "; ".join(wrong[:20])
                                  + (f"; and {len(wrong) - 20} more" if len(wrong) > 20 else ""))
    return ckpt


def expected_weights(config):
    """[(alternative full names, shape)] of every tensor the config requires.

    The list comes from the C parameter table (csrc/model/params.h: the model
    builders enumerate their weights there), so names and shapes are defined once."""
    from . import _core
    from .llm import lm_config_dict
    from .vision import vision_config_dict

    specs = _core.param_specs(vision_config_dict(config), lm_config_dict(config, shapes_only=True))
    return [(tuple(p + name for p in prefixes), tuple(shape)) for prefixes, name, shape in specs]


def check_weights(ckpt, config, where=""):
    """Raise one CheckpointError listing every problem, or return the resolved
    {canonical name: actual name} map (canonical = first alternative)."""
    names = set(ckpt.names())
    used = set()
    missing, misshaped, badtype = [], [], []
    resolved = {}
    for alts, shape in expected_weights(config):
        found = [n for n in alts if n in names]
        if not found:
            missing.append(f"{alts[0]} {list(shape)}" + (f" (or {', '.join(alts[1:])})" if len(alts) > 1 else ""))
            continue
        # Two prefix variants of the same weight would make the choice ambiguous.
        used.update(found)
        if len(found) > 1:
            misshaped.append(f"{found[0]}: also present as {', '.join(found[1:])} (ambiguous)")
            continue
        name = found[0]
        dtype, got, _ = ckpt.info(name)
        if tuple(got) != shape:
            misshaped.append(f"{name}: expected {list(shape)}, got {list(got)}")
        if dtype not in FLOAT_DTYPES:
            badtype.append(f"{name}: {dtype}")
        resolved[alts[0]] = name
    unexpected = []
    for n in sorted(names - used):
        if _IGNORED.search(n):
            continue
        if n == "lm_head.weight" and config.text.tie_word_embeddings:
            # Tied checkpoints sometimes still store the head; it must at least fit.
            dtype, got, _ = ckpt.info(n)
            if tuple(got) != (config.text.vocab_size, config.text.hidden_size):
                misshaped.append(f"{n}: expected {[config.text.vocab_size, config.text.hidden_size]}, got {list(got)}")
            continue
        unexpected.append(n)
    if missing or unexpected or misshaped or badtype:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped),
                             ("not a float dtype (BF16/F16/F32)", badtype)):
            if items:
                shown = items[:30] + ([f"... and {len(items) - 30} more"] if len(items) > 30 else [])
                parts.append(f"{len(items)} {title}:\n  " + "\n  ".join(shown))
        head = f"checkpoint {where} does not match its config.json" if where else \
            "checkpoint does not match its config.json"
        raise CheckpointError(head + "\n" + "\n".join(parts))
    return resolved


# The spellings of the two compute dtypes that torch / transformers users type.
DTYPE_ALIASES = {"bfloat16": "bf16", "float32": "f32"}


def _resolve_dtype(ckpt, dtype):
    """Convert `ckpt` in place as `dtype` asks and return the model dtype name."""
    floats = {ckpt.info(n)[0] for n in ckpt.names()} & set(FLOAT_DTYPES)
    if dtype == "auto":
        # Keep the file's own type when it is uniform; anything else (F16, mixed)
        # becomes bf16, the type every matmul backend takes as is.
        if floats <= {"BF16"}:
            return "bf16"
        if floats == {"F32"}:
            return "f32"
        dtype = "bf16"
    if dtype == "bf16":
        if floats - {"BF16"}:
            ckpt.narrow_bf16()
        return "bf16"
    if dtype == "f32":
        if floats - {"F32"}:
            ckpt.widen_f32()
        return "f32"
    raise ValueError(f"dtype must be 'auto', 'bf16' or 'f32', got {dtype!r}")


# The LLM weights dtype="int8" quantizes: every linear layer but kv_b (which the
# absorbed decode reads per head, bf16), and the embedding / LM head.
_INT8_WEIGHT = re.compile(r"model\.(embed_tokens\.weight|layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|q_proj|"
                          r"kv_a_proj_with_mqa|o_proj)|mlp\.(gate_proj|up_proj|down_proj))\.weight)|lm_head\.weight")


def int8_weight_names(resolved):
    """Checkpoint names of the weights dtype="int8" quantizes (from check_weights' map)."""
    return sorted(actual for canonical, actual in resolved.items() if _INT8_WEIGHT.fullmatch(canonical))


def load(path=None, dtype="auto", threads=None, backend=None, preload=False):
    """Load a checkpoint directory and return a :class:`densemllm.Model`.

    ``path=None`` loads the small default model embedded in the package (trained on
    the procedural scenes of :mod:`densemllm.data`, docs/default-model.md); a build
    without its trained weights raises ``DefaultModelMissing`` (a FileNotFoundError).

    The weights are memory-mapped (not read into memory) and validated: file
    structure in C, then every tensor against config.json. ``dtype``: "auto" keeps
    the file's type (bf16 for the released model; F16 or mixed files become bf16),
    "bf16" converts f32/f16 files to owned bf16 copies, "f32" makes owned float32
    copies (2x the memory of a bf16 file). "int8" quantizes the language model's
    linear weights and its embedding / LM head at load (symmetric, one scale per
    output row; activations quantized per token in prefill-sized products, kept
    f32 in decode steps), half the bytes per decode step; the vision tower and
    kv_b stay bf16. Inference only. ``threads``: thread count for all heavy
    work (None: leave as is). ``backend``: "onednn" (default) or "openblas"; the
    environment variable DENSEMLLM_BACKEND sets the default. ``preload=True``
    faults the mapped weights in now (read from disk if the page cache lost them,
    page tables filled), so the first call runs as fast as later ones; without it
    pages are mapped on first use.
    """
    import os

    from . import _core
    from .config import ModelConfig
    from .model import Model
    from .tokenizer import Tokenizer, resolve_token_ids

    dtype = DTYPE_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype in ("f16", "float16", "half"):
        raise ValueError(f"dtype={dtype!r}: float16 is not a compute dtype here; f16 weights run as bf16 "
                         "(dtype='auto' or 'bf16') or as f32 (dtype='f32')")
    if dtype not in ("auto", "bf16", "f32", "int8"):
        raise ValueError(f"dtype must be 'auto', 'bf16' ('bfloat16'), 'f32' ('float32') or 'int8', got {dtype!r}")
    if backend is None:
        backend = os.environ.get("DENSEMLLM_BACKEND") or "onednn"
    if backend not in ("onednn", "openblas"):
        raise ValueError(f"backend must be 'onednn' or 'openblas', got {backend!r}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be a non-negative int or None, got {threads!r}")
        _core.set_num_threads(threads)
    if path is None:
        from .data.default_model import default_model_dir

        path = default_model_dir()
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a checkpoint directory" if path.exists() else "not found"
        raise FileNotFoundError(f"checkpoint directory {what}: {path}")
    config = ModelConfig.from_file(path / "config.json")
    tokenizer = Tokenizer.from_dir(path, config)
    config = resolve_token_ids(config, tokenizer)  # ids config.json omits, from the tokenizer
    # Everything an image prompt needs, checked now rather than at the first image.
    for token, key in (("<|image_pad|>", "image_token_id"), ("<|vision_start|>", "vision_start_token_id"),
                       ("<|vision_end|>", "vision_end_token_id")):
        tid = tokenizer.token_to_id(token)
        if tid is None:
            raise CheckpointError(f"{path}: tokenizer.json has no {token} token (image prompts need it)")
        if tid != getattr(config, key):
            raise CheckpointError(f"{path}: config.json {key} {getattr(config, key)} but tokenizer.json "
                                  f"has {token} = {tid}")
    if tokenizer.vocab_size > config.text.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but vocab_size is "
                              f"{config.text.vocab_size}")
    ckpt = open_checkpoint(path)
    resolved = check_weights(ckpt, config, str(path))
    if dtype == "int8":
        # quantized first (from the file's own values), the rest then as bf16
        ckpt.quantize_int8(int8_weight_names(resolved))
        _resolve_dtype(ckpt, "bf16")
        model_dtype = "int8"
    else:
        model_dtype = _resolve_dtype(ckpt, dtype)
    if preload:
        ckpt.preload()
    return Model(path, config, tokenizer, ckpt, model_dtype, backend, _core.get_num_threads())
