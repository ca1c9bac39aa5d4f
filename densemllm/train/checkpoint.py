"""Training checkpoints in the Hugging Face layout, with the trainer's state beside them.

A checkpoint directory holds what ``densemllm.load`` (and, for the language model,
transformers) reads: ``config.json``, ``model.safetensors`` (f32 by default, so a
resumed run continues bit for bit; bf16 for export), the tokenizer files and chat
template copied from the source model. Beside them: ``optimizer.safetensors`` (AdamW
moments) and ``trainer_state.json`` (step, schedule, hyperparameters, data and RNG
state, the SHA-256 of every file it belongs with, and the model's fingerprint).

Writes are atomic twice over: every file is written under a temporary name and
renamed, and the whole directory is assembled under a temporary name and swapped in
at the end; ``trainer_state.json``'s hashes make a mixed directory (which only a
crash between the two renames of the swap could leave, and then under a name that is
not the checkpoint's) fail loudly on resume instead of loading wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from .._atomic import atomic_write

__all__ = ["save_checkpoint", "read_state", "load_optimizer_arrays", "fingerprint", "TOKENIZER_FILES",
           "atomic_write"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.json",
                   "chat_template.jinja", "generation_config.json", "preprocessor_config.json")
STATE = "trainer_state.json"
FORMAT = 1


def _encode(a, dtype):
    """(safetensors dtype, shape, bytes) of an f32 array as F32 or BF16 (round to nearest even)."""
    from ..testing import _encode as enc

    return enc(a, {"f32": "f32", "bf16": "bf16"}[dtype])


def _safetensors_bytes(tensors, metadata):
    """The safetensors container (u64 header length, JSON header padded to 8, data)."""
    header, offset = {"__metadata__": dict(metadata)}, 0
    for name, (dt, shape, data) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return b"".join([len(raw).to_bytes(8, "little"), raw] + [d for _, _, d in tensors.values()])


def fingerprint(config_dict, shapes):
    """A hash of what makes two models the same model for a resume: the architecture
    fields of config.json and every trainable tensor's name and shape."""
    cfg = {k: v for k, v in config_dict.items() if k not in ("torch_dtype", "dtype", "transformers_version")}
    blob = json.dumps({"config": cfg, "tensors": sorted((n, list(s)) for n, s in shapes.items())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(out_dir, source_dir, params, config_dict, *, dtype="f32", optimizer=None, state=None):
    """Write a checkpoint directory.

    params: {checkpoint name: f32 array} (a tied head's lm_head is not written).
    config_dict: the model's config.json contents. source_dir: where the tokenizer files
    come from. optimizer: {name: f32 array} for optimizer.safetensors or None.
    state: a JSON-able dict for trainer_state.json (None: no trainer state)."""
    if dtype not in ("f32", "bf16"):
        raise ValueError(f"dtype must be 'f32' or 'bf16', got {dtype!r}")
    out, src = Path(out_dir), Path(source_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    tmp.mkdir()
    try:
        cfg = dict(config_dict)
        cfg["torch_dtype"] = {"f32": "float32", "bf16": "bfloat16"}[dtype]
        tied = bool(cfg.get("tie_word_embeddings", False))
        tensors = {n: _encode(a, dtype) for n, a in params.items() if not (tied and n == "lm_head.weight")}
        atomic_write(tmp / "model.safetensors", _safetensors_bytes(tensors, {"format": "pt"}))
        atomic_write(tmp / "config.json", json.dumps(cfg, indent=2))
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                atomic_write(tmp / name, (src / name).read_bytes())
        files = ["model.safetensors", "config.json"]
        if optimizer is not None:
            atomic_write(tmp / "optimizer.safetensors",
                         _safetensors_bytes({n: _encode(a, "f32") for n, a in optimizer.items()}, {"format": "np"}))
            files.append("optimizer.safetensors")
        if state is not None:
            st = dict(state)
            st["format"] = FORMAT
            st["files"] = {f: _sha256(tmp / f) for f in files}
            st["fingerprint"] = fingerprint(config_dict, {n: a.shape for n, a in params.items()})
            atomic_write(tmp / STATE, json.dumps(st, indent=1))
        # swap the finished directory in
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.{secrets.token_hex(6)}.old")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_state(ckpt_dir):
    """trainer_state.json of a checkpoint, after checking every file it names against
    its SHA-256 (ValueError naming the file that differs)."""
    d = Path(ckpt_dir)
    p = d / STATE
    if not p.is_file():
        raise FileNotFoundError(f"{d} has no {STATE}: not a trainer checkpoint (save one with Trainer.save)")
    try:
        st = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if st.get("format") != FORMAT:
        raise ValueError(f"{p}: unknown trainer state format {st.get('format')!r} (expected {FORMAT})")
    for name, digest in st["files"].items():
        f = d / name
        if not f.is_file():
            raise ValueError(f"{d}: {name} is missing; the checkpoint is incomplete")
        if _sha256(f) != digest:
            raise ValueError(f"{d}: {name} does not match trainer_state.json (an interrupted or mixed save?)")
    return st


def load_optimizer_arrays(ckpt_dir):
    """{name: f32 array} of optimizer.safetensors (written by save_checkpoint; every
    size is checked against the file before anything is read)."""
    path = Path(ckpt_dir) / "optimizer.safetensors"
    blob = path.read_bytes()
    if len(blob) < 8:
        raise ValueError(f"{path}: truncated (no header)")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise ValueError(f"{path}: header length {n} exceeds the file ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8:8 + n])
    except ValueError as e:
        raise ValueError(f"{path}: bad header ({e})") from None
    data, out = memoryview(blob)[8 + n:], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        shape = [int(x) for x in info["shape"]]
        if info["dtype"] != "F32" or not 0 <= a <= b <= len(data) or b - a != 4 * int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {name!r} has a bad dtype or extent")
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(shape).copy()
    return out


def config_dict_of(model_dir):
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))


def as_f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)
