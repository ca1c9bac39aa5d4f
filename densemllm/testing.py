"""Tiny random checkpoints in the real Youtu-VL layout, for tests and demos.

``make_checkpoint(dir)`` writes config.json (with vision_config), safetensors
weights under the released names (``siglip2.vision_model.``, ``merger.``,
``model.``), optionally sharded with ``model.safetensors.index.json``, a byte-level
BPE ``tokenizer.json`` holding every special token of the notes,
``tokenizer_config.json`` with a chat template (the Youtu-VL format by default;
``chat_template="chatml"`` writes ChatML, ``None`` none so the loader's fallback
applies), and ``generation_config.json``. ``grammar_special=True`` registers the
output-grammar tokens (``<ref>``, ``<box>``, ``<x_N>``, ``<custom_N>``...) as *special*
tokens, as some real tokenizers do (the tasks must give the same results).
The weights are random (N(0, 0.02), norm weights near 1): outputs are meaningless.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from ._atomic import atomic_open, atomic_write
from .checkpoint import expected_weights
from .config import ModelConfig
from .tokenizer import FALLBACK_CHAT_TEMPLATE

# ChatML (Qwen style), the format of hand-made checkpoints: tests of the template lookup
# use it as a template that differs from the Youtu fallback.
CHATML_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
CHAT_TEMPLATES = {"youtu": FALLBACK_CHAT_TEMPLATE, "chatml": CHATML_CHAT_TEMPLATE}

__all__ = ["make_checkpoint", "TEXT_DEFAULTS", "VISION_DEFAULTS", "special_token_list", "CHATML_CHAT_TEMPLATE"]
__all__ += ["build_tokenizer_json"]

TEXT_DEFAULTS = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
    qk_rope_head_dim=8, v_head_dim=16, rms_norm_eps=1e-6, max_position_embeddings=4096,
    rope_theta=10000.0, rope_scaling=None, rope_interleave=True, attention_bias=False,
    hidden_act="silu", tie_word_embeddings=True,
)

# window 64 px = 2x2 merged tokens of 2x2 patches of 16 px; layer 1 global.
VISION_DEFAULTS = dict(
    hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2, patch_size=16,
    num_channels=3, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", spatial_merge_size=2,
    window_size=64, fullatt_block_indexes=[1],
)

BOS, EOS, IM_START, IM_END = "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"

_CORPUS = """The quick brown fox jumps over the lazy dog. Segment the core target.
Please estimate the depth of this image from the NYUv2 dataset. Segment all objects in this image.
The target categories include sky, road, person, car, building, tree, grass, wall, floor, ceiling,
numbered sequentially starting from 0, without the background class. The results are 0 for and 1 for.
This is the depth. Detect every objects that belongs to the following categories: a cat, a dog.
You are a helpful assistant. What is in the picture? Describe the image in detail, please.
0123456789 (0,12)(1,4)(2,30) hello world, user, assistant, system."""


def special_token_list():
    """(structural special tokens, task tokens) written into the tiny tokenizer."""
    special = [BOS, EOS, IM_START, IM_END, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
    task = ["<ref>", "</ref>", "<mask>", "</mask>", "<box>", "</box>", "<OTHERS>", "<BG>", "<FG>", "<depth>",
            "<ins>", "</ins>", "<poly>", "</poly>"]
    task += [f"<custom_{i}>" for i in range(1001)]
    task += [f"<x_{i}>" for i in range(1024)]
    task += [f"<y_{i}>" for i in range(1024)]
    return special, task


@functools.lru_cache(maxsize=4)
def _tokenizer_json(corpus=_CORPUS, vocab_size=512, grammar_special=False):
    """tokenizer.json text: byte-level BPE of ``vocab_size`` trained on ``corpus`` (lines)
    plus every special token of the notes (special_token_list); ``grammar_special``
    registers the output-grammar tokens as special tokens (same ids either way)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    special, task = special_token_list()
    # Structural tokens are "special" (dropped by skip_special_tokens); the task
    # tokens the model writes in its answers (<ref>, <x_N>, <custom_N>, ...) are
    # plain added tokens, or special ones with grammar_special (same ids either way).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=grammar_special, normalized=False) for t in task])
    return tok.to_str()


build_tokenizer_json = _tokenizer_json  # public name (densemllm.data.default_model builds its own)


def _encode(a, dtype):
    """(safetensors dtype, shape, little-endian bytes) of f32 array `a` stored as `dtype`.

    bf16 uses round-to-nearest-even, the rounding torch's .to(torch.bfloat16) does."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "f32":
        return "F32", a.shape, a.astype("<f4").tobytes()
    if dtype == "f16":
        return "F16", a.shape, a.astype("<f2").tobytes()
    u = a.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return "BF16", a.shape, bits.tobytes()


def _save_safetensors(path, tensors, metadata):
    """Write {name: (dtype, shape, bytes)} as a safetensors file.

    NumPy has no bfloat16, so safetensors.numpy cannot write BF16 and safetensors.torch
    would make torch a runtime dependency (the demo runs without it). The container is
    a u64 header length, a JSON header padded to 8 bytes, then the data; transformers'
    own loader reads these files in tests/test_load.py. Written to a temporary name and
    renamed, so a model that has the old file mapped keeps its weights."""
    header, offset = {"__metadata__": dict(metadata)}, 0
    for name, (dt, shape, data) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, _, data in tensors.values():
            f.write(data)


def _tensor(rng, name, shape, dtype):
    if name.endswith(("norm.weight", "layer_norm1.weight", "layer_norm2.weight", "ln_q.weight")):
        a = 1.0 + 0.02 * rng.standard_normal(shape, dtype=np.float32)
    else:
        a = 0.02 * rng.standard_normal(shape, dtype=np.float32)
    return a.astype(np.float32, copy=False)


def make_checkpoint(dir, *, seed=0, dtype="bf16", shards=1, vision=None, chat_template="youtu",
                    grammar_special=False, tokenizer_json=None, init=None, **text_overrides):
    """Write a tiny random checkpoint into `dir` (created) and return its Path.

    ``vision``: dict of vision_config overrides. Other keyword arguments override
    top-level (text) config fields, e.g. ``q_lora_rank=None``,
    ``tie_word_embeddings=False``, ``rope_parameters={...}`` (replaces
    rope_theta/rope_scaling: the newer schema). ``dtype``: "bf16", "f16" or "f32".
    ``chat_template``: "youtu" (default), "chatml" or None (no template written).
    ``grammar_special``: register the output-grammar tokens as special tokens.
    ``tokenizer_json``: tokenizer.json text to use instead of the tiny default
    (e.g. ``_tokenizer_json(corpus, vocab_size)``). ``init``: ``f(rng, name, shape, dtype)
    -> float32 array`` replacing the N(0, 0.02) weights (e.g. a training init).
    """
    if chat_template is not None and chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"chat_template must be 'youtu', 'chatml' or None, got {chat_template!r}")
    if dtype not in ("bf16", "f16", "f32"):
        raise ValueError(f"dtype must be 'bf16', 'f16' or 'f32', got {dtype!r}")
    shards = int(shards)
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)

    if tokenizer_json is not None and grammar_special:
        raise ValueError("grammar_special applies to the built-in tokenizer, not to tokenizer_json")
    tok_json = _tokenizer_json(grammar_special=bool(grammar_special)) if tokenizer_json is None else tokenizer_json
    vocab = json.loads(tok_json)
    ids = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    n_vocab = len(vocab["model"]["vocab"]) + len(vocab["added_tokens"])

    cfg = dict(TEXT_DEFAULTS)
    cfg["vocab_size"] = n_vocab
    if "rope_parameters" in text_overrides:
        cfg.pop("rope_theta")
        cfg.pop("rope_scaling")
    cfg.update(text_overrides)
    if cfg["vocab_size"] < n_vocab:
        raise ValueError(f"vocab_size {cfg['vocab_size']} is smaller than the tokenizer ({n_vocab})")
    vcfg = dict(VISION_DEFAULTS)
    vcfg["out_hidden_size"] = cfg["hidden_size"]
    vcfg.update(vision or {})
    # Youtu-VL ends a turn with <|end_of_text|>; ChatML with <|im_end|>
    eos_ids = [ids[EOS], ids[IM_END]] if chat_template == "chatml" else [ids[EOS]]
    cfg.update(
        architectures=["YoutuVLForConditionalGeneration"], model_type="youtu_vl",
        vision_config=vcfg, torch_dtype={"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids[BOS], eos_token_id=eos_ids, pad_token_id=ids[EOS],
    )
    config = ModelConfig.from_dict(cfg)

    rng = np.random.default_rng(seed)
    tensors = {}
    for alts, shape in expected_weights(config):
        name = alts[0]
        a = (init or _tensor)(rng, name, shape, dtype)
        if name == "model.embed_tokens.weight":
            # nn.Embedding(padding_idx=pad) keeps that row at zero, and transformers
            # re-zeroes it on load: do the same so parity tests compare like with like.
            a[cfg["pad_token_id"]] = 0.0
        tensors[name] = _encode(a, dtype)

    names = list(tensors)
    meta = {"format": "pt"}
    if shards == 1:
        _save_safetensors(out / "model.safetensors", tensors, meta)
    else:
        groups = np.array_split(np.arange(len(names)), shards)
        weight_map, total = {}, 0
        for k, g in enumerate(groups):
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = {names[i]: tensors[names[i]] for i in g}
            _save_safetensors(out / fname, part, meta)
            for n, (_, _, data) in part.items():
                weight_map[n] = fname
                total += len(data)
        atomic_write(out / "model.safetensors.index.json",
                     json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    atomic_write(out / "config.json", json.dumps(cfg, indent=2))
    atomic_write(out / "tokenizer.json", tok_json)
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS,
               "eos_token": IM_END if chat_template == "chatml" else EOS,
               "pad_token": EOS, "model_max_length": cfg["max_position_embeddings"]}
    if chat_template is not None:
        tok_cfg["chat_template"] = CHAT_TEMPLATES[chat_template]
    atomic_write(out / "tokenizer_config.json", json.dumps(tok_cfg, indent=2))
    atomic_write(out / "generation_config.json", json.dumps({
        "bos_token_id": ids[BOS], "eos_token_id": eos_ids, "pad_token_id": ids[EOS],
        "do_sample": True, "temperature": 0.1, "top_p": 0.001, "repetition_penalty": 1.05,
    }, indent=2))
    return out
