"""config.json of a DenseMLLM / Youtu-VL checkpoint as frozen dataclasses.

Top level = language model (field names as in Hugging Face's ``youtu`` config),
``vision_config`` = the vision tower and merger. Both RoPE schemas are accepted:
``rope_theta`` + ``rope_scaling`` (older remote-code configs) and ``rope_parameters``
(newer). Either way :attr:`TextConfig.rope_theta` is the base and
:attr:`TextConfig.rope_scaling` is ``None`` (plain RoPE) or a normalised dict with
``rope_type``, ``factor``, ``original_max_position_embeddings``, ``beta_fast``,
``beta_slow``, ``mscale``, ``mscale_all_dim`` (the last two ``None`` when the file
does not give them: DeepSeek's YaRN treats "absent" differently from any number).

Absent fields take the values of the released Youtu-VL-4B (notes, section 1).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ._core import VISION_MAX_LAYERS, CheckpointError

__all__ = ["TextConfig", "VisionConfig", "ModelConfig", "CheckpointError"]

# Special token ids config.json omits stay None here; the loader takes them from the
# checkpoint's tokenizer (tokenizer.resolve_token_ids): no built-in ids.


# The one table of config bounds (inclusive), checked when config.json is read: before
# load() builds the list of expected weights or anything is allocated, so a hostile
# or broken file fails at once with the value, the field and the bound. The C core
# receives only values that passed (its own checks are memory-safety guards for
# direct callers of _core). Upper bounds are ~10-100x the largest released models;
# VISION_MAX_LAYERS is the core's fixed per-layer table (csrc/model/vision.h).
TEXT_BOUNDS = {
    "vocab_size": (1, 1 << 22),
    "hidden_size": (1, 1 << 16),
    "intermediate_size": (1, 1 << 18),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "q_lora_rank": (1, 1 << 16),
    "kv_lora_rank": (1, 1 << 16),
    "qk_nope_head_dim": (0, 4096),
    "qk_rope_head_dim": (2, 4096),
    "v_head_dim": (1, 4096),
    "max_position_embeddings": (1, 1 << 24),
    "original_max_position_embeddings": (1, 1 << 24),
    # floats: a tiny rope_theta made every frequency inf (silent NaN logits)
    "rms_norm_eps": (1e-12, 1.0),
    "rope_theta": (1.0, 1e12),
    "factor": (1.0, 1e4),
    "beta_fast": (1e-3, 1e4),
    "beta_slow": (1e-3, 1e4),
    "mscale": (-1e3, 1e3),
    "mscale_all_dim": (-1e3, 1e3),
    "attention_factor": (1e-3, 1e3),
}
VISION_BOUNDS = {
    "hidden_size": (1, 1 << 16),
    "num_attention_heads": (1, 1024),
    "intermediate_size": (1, 1 << 18),
    "num_hidden_layers": (1, VISION_MAX_LAYERS),
    "patch_size": (1, 1024),
    "num_channels": (3, 3),  # preprocessing produces RGB
    "spatial_merge_size": (1, 64),
    "out_hidden_size": (1, 1 << 16),
    "window_size": (1, 1 << 20),
    "layer_norm_eps": (1e-12, 1.0),
}
ROPE_TYPES = ("default", "yarn")  # what csrc/ops/rope.c implements
VISION_ACTS = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu")  # csrc/python/vision.c's names


def _err(where, msg):
    return CheckpointError(f"{where}: {msg}" if where else msg)


def _int(d, key, default, where, bounds, *, optional=False):
    v = d.get(key, default)
    if v is None and optional:
        return None
    # bool is an int subclass; a config saying "hidden_size": true is broken.
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise _err(where, f"{key} must be an integer, got {v!r}")
    lo, hi = bounds[key]
    if not lo <= v <= hi:
        raise _err(where, f"{key} must be in [{lo}, {hi}], got {v}")
    return v


def _float(d, key, default, where, bounds):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _err(where, f"{key} must be a number, got {v!r}")
    v = float(v)
    lo, hi = bounds[key]
    if not (math.isfinite(v) and lo <= v <= hi):
        raise _err(where, f"{key} must be a finite number in [{lo:g}, {hi:g}], got {v!r}")
    return v


def _bool(d, key, default, where):
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise _err(where, f"{key} must be true or false, got {v!r}")
    return v


def _str(d, key, default, where):
    v = d.get(key, default)
    if not isinstance(v, str):
        raise _err(where, f"{key} must be a string, got {v!r}")
    return v


def _normalise_rope(d, max_pos, where):
    """(rope_theta, rope_scaling) from either schema."""
    params = d.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise _err(where, f"rope_parameters must be an object, got {params!r}")
        # Per-layer-type dicts ({"full_attention": {...}}) are not used by this model.
        theta = params.get("rope_theta", d.get("rope_theta", 500000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = d.get("rope_theta", 500000.0)
        scaling = d.get("rope_scaling")
        if scaling is not None and not isinstance(scaling, dict):
            raise _err(where, f"rope_scaling must be an object or null, got {scaling!r}")
        scaling = dict(scaling) if scaling else None
    theta = _float({"rope_theta": theta}, "rope_theta", None, where, TEXT_BOUNDS)
    if not scaling:
        return theta, None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if not isinstance(rope_type, str):
        raise _err(where, f"rope type must be a string, got {rope_type!r}")
    if rope_type == "default" and scaling.get("factor") in (None, 1, 1.0):
        return theta, None
    if rope_type not in ROPE_TYPES or rope_type == "default":
        raise _err(where, f"rope_type {rope_type!r} (factor {scaling.get('factor')!r}) is not supported: "
                          f"plain RoPE (default, factor 1) and yarn are")
    out = {k: v for k, v in scaling.items() if k != "type"}
    out["rope_type"] = rope_type
    out["factor"] = _float(scaling, "factor", 1.0, where, TEXT_BOUNDS)
    out["original_max_position_embeddings"] = _int(
        scaling, "original_max_position_embeddings", max_pos, where, TEXT_BOUNDS)
    out["beta_fast"] = _float(scaling, "beta_fast", 32.0, where, TEXT_BOUNDS)
    out["beta_slow"] = _float(scaling, "beta_slow", 1.0, where, TEXT_BOUNDS)
    for k in ("mscale", "mscale_all_dim"):
        v = scaling.get(k)
        out[k] = None if v is None else _float(scaling, k, None, where, TEXT_BOUNDS)
    if "attention_factor" in scaling and scaling["attention_factor"] is not None:
        out["attention_factor"] = _float(scaling, "attention_factor", None, where, TEXT_BOUNDS)
    return theta, out


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 283386
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_hidden_layers: int = 40
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    q_lora_rank: int | None = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None
    rope_interleave: bool = True
    attention_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True

    @property
    def qk_head_dim(self):
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @classmethod
    def from_dict(cls, d, where="config.json"):
        dflt = cls()
        B = TEXT_BOUNDS
        max_pos = _int(d, "max_position_embeddings", dflt.max_position_embeddings, where, B)
        theta, scaling = _normalise_rope(d, max_pos, where)
        heads = _int(d, "num_attention_heads", dflt.num_attention_heads, where, B)
        kv_heads = d.get("num_key_value_heads")
        kv_heads = heads if kv_heads is None else _int(d, "num_key_value_heads", None, where, B)
        if heads % kv_heads:
            raise _err(where, f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})")
        cfg = cls(
            vocab_size=_int(d, "vocab_size", dflt.vocab_size, where, B),
            hidden_size=_int(d, "hidden_size", dflt.hidden_size, where, B),
            intermediate_size=_int(d, "intermediate_size", dflt.intermediate_size, where, B),
            num_hidden_layers=_int(d, "num_hidden_layers", dflt.num_hidden_layers, where, B),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            q_lora_rank=_int(d, "q_lora_rank", dflt.q_lora_rank, where, B, optional=True),
            kv_lora_rank=_int(d, "kv_lora_rank", dflt.kv_lora_rank, where, B),
            qk_nope_head_dim=_int(d, "qk_nope_head_dim", dflt.qk_nope_head_dim, where, B),
            qk_rope_head_dim=_int(d, "qk_rope_head_dim", dflt.qk_rope_head_dim, where, B),
            v_head_dim=_int(d, "v_head_dim", dflt.v_head_dim, where, B),
            rms_norm_eps=_float(d, "rms_norm_eps", dflt.rms_norm_eps, where, B),
            max_position_embeddings=max_pos,
            rope_theta=theta,
            rope_scaling=scaling,
            rope_interleave=_bool(d, "rope_interleave", dflt.rope_interleave, where),
            attention_bias=_bool(d, "attention_bias", dflt.attention_bias, where),
            hidden_act=_str(d, "hidden_act", dflt.hidden_act, where),
            tie_word_embeddings=_bool(d, "tie_word_embeddings", dflt.tie_word_embeddings, where),
        )
        if cfg.qk_rope_head_dim % 2:
            raise _err(where, f"qk_rope_head_dim must be even, got {cfg.qk_rope_head_dim}")
        if cfg.hidden_act != "silu":
            raise _err(where, f"hidden_act {cfg.hidden_act!r} is not supported (the model uses 'silu')")
        return cfg


def _default_fullatt(n_layers):
    # The rule one public port uses ("every 8th layer and the last"), which gives
    # the released config's list (7, 15, 23, 26) for 27 layers.
    return tuple(sorted({i for i in range(n_layers) if (i + 1) % 8 == 0} | ({n_layers - 1} if n_layers else set())))


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1152
    num_attention_heads: int = 16
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    spatial_merge_size: int = 2
    out_hidden_size: int = 2560
    window_size: int = 256
    fullatt_block_indexes: tuple = (7, 15, 23, 26)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d, out_hidden_default, where="config.json: vision_config"):
        dflt = cls()
        B = VISION_BOUNDS
        layers = _int(d, "num_hidden_layers", dflt.num_hidden_layers, where, B)
        fa = d.get("fullatt_block_indexes")
        if fa is None:
            fa = _default_fullatt(layers)
        else:
            if not isinstance(fa, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in fa):
                raise _err(where, f"fullatt_block_indexes must be a list of integers, got {fa!r}")
            bad = [i for i in fa if not 0 <= i < layers]
            if bad:
                raise _err(where, f"fullatt_block_indexes {bad} out of range for {layers} layers")
            fa = tuple(sorted(set(fa)))
        cfg = cls(
            hidden_size=_int(d, "hidden_size", dflt.hidden_size, where, B),
            num_attention_heads=_int(d, "num_attention_heads", dflt.num_attention_heads, where, B),
            intermediate_size=_int(d, "intermediate_size", dflt.intermediate_size, where, B),
            num_hidden_layers=layers,
            patch_size=_int(d, "patch_size", dflt.patch_size, where, B),
            num_channels=_int(d, "num_channels", dflt.num_channels, where, B),
            layer_norm_eps=_float(d, "layer_norm_eps", dflt.layer_norm_eps, where, B),
            hidden_act=_str(d, "hidden_act", dflt.hidden_act, where),
            spatial_merge_size=_int(d, "spatial_merge_size", dflt.spatial_merge_size, where, B),
            out_hidden_size=_int(d, "out_hidden_size", out_hidden_default, where, B),
            window_size=_int(d, "window_size", dflt.window_size, where, B),
            fullatt_block_indexes=fa,
        )
        if cfg.hidden_act not in VISION_ACTS:
            raise _err(where, f"hidden_act {cfg.hidden_act!r} is not supported (one of {', '.join(VISION_ACTS)})")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise _err(where, f"hidden_size ({cfg.hidden_size}) is not a multiple of num_attention_heads "
                              f"({cfg.num_attention_heads})")
        if cfg.head_dim % 4:
            # 2-D RoPE splits the head into row and column halves of rotate-half pairs.
            raise _err(where, f"head_dim {cfg.head_dim} must be a multiple of 4 for the 2-D RoPE")
        unit = cfg.patch_size * cfg.spatial_merge_size
        if cfg.window_size % unit:
            raise _err(where, f"window_size ({cfg.window_size}) is not a multiple of patch_size*spatial_merge_size "
                              f"({unit})")
        return cfg


def _token_id(d, key, default, where):
    v = d.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _err(where, f"{key} must be a non-negative integer, got {v!r}")
    return v


@dataclass(frozen=True)
class ModelConfig:
    text: TextConfig
    vision: VisionConfig
    image_token_id: int | None = None
    video_token_id: int | None = None
    vision_start_token_id: int | None = None
    vision_end_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: tuple = ()
    pad_token_id: int | None = None
    raw: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d, where="config.json"):
        if not isinstance(d, dict):
            raise _err(where, f"expected a JSON object, got {type(d).__name__}")
        # Some exports nest the language model under text_config; read it from there.
        td = d.get("text_config") if isinstance(d.get("text_config"), dict) else d
        text = TextConfig.from_dict(td, where)
        vd = d.get("vision_config", {})
        if not isinstance(vd, dict):
            raise _err(where, f"vision_config must be an object, got {vd!r}")
        vision = VisionConfig.from_dict(vd, text.hidden_size, f"{where}: vision_config")
        if vision.out_hidden_size != text.hidden_size:
            raise _err(where, f"vision_config.out_hidden_size ({vision.out_hidden_size}) != hidden_size "
                              f"({text.hidden_size}): the merger output must match the LLM width")
        eos = d.get("eos_token_id", td.get("eos_token_id"))
        eos = [eos] if isinstance(eos, int) and not isinstance(eos, bool) else eos
        if eos is None:
            eos = []
        if not isinstance(eos, (list, tuple)) or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0
                                                         for e in eos):
            raise _err(where, f"eos_token_id must be an integer or a list of integers, got {eos!r}")
        cfg = cls(
            text=text,
            vision=vision,
            image_token_id=_token_id(d, "image_token_id", None, where),
            video_token_id=_token_id(d, "video_token_id", None, where),
            vision_start_token_id=_token_id(d, "vision_start_token_id", None, where),
            vision_end_token_id=_token_id(d, "vision_end_token_id", None, where),
            bos_token_id=_token_id(d, "bos_token_id", td.get("bos_token_id"), where),
            eos_token_id=tuple(eos),
            pad_token_id=_token_id(d, "pad_token_id", td.get("pad_token_id"), where),
            raw=d,
        )
        named = [(k, getattr(cfg, k)) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                 "vision_end_token_id", "bos_token_id", "pad_token_id")]
        for k, v in named + [("eos_token_id", e) for e in cfg.eos_token_id]:
            if v is not None and v >= text.vocab_size:
                raise _err(where, f"{k} {v} is outside the vocabulary (vocab_size {text.vocab_size})")
        return cfg

    @classmethod
    def from_file(cls, path):
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json: {path}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise _err(str(path), f"not valid JSON ({e})") from None
        return cls.from_dict(d, str(path))
