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
from dataclasses import dataclass
from pathlib import Path

from ._core import CheckpointError

__all__ = ["TextConfig", "VisionConfig", "ModelConfig", "CheckpointError"]

# Special token ids config.json omits stay None here; the loader takes them from the
# checkpoint's tokenizer (tokenizer.resolve_token_ids): no built-in ids.


def _err(where, msg):
    return CheckpointError(f"{where}: {msg}" if where else msg)


def _int(d, key, default, where, *, minimum=1, optional=False):
    v = d.get(key, default)
    if v is None and optional:
        return None
    # bool is an int subclass; a config saying "hidden_size": true is broken.
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise _err(where, f"{key} must be an integer, got {v!r}")
    if v < minimum:
        raise _err(where, f"{key} must be >= {minimum}, got {v}")
    return v


def _float(d, key, default, where, *, positive=True):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _err(where, f"{key} must be a number, got {v!r}")
    v = float(v)
    if positive and not v > 0:
        raise _err(where, f"{key} must be > 0, got {v}")
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
    theta = _float({"rope_theta": theta}, "rope_theta", None, where)
    if not scaling:
        return theta, None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if not isinstance(rope_type, str):
        raise _err(where, f"rope type must be a string, got {rope_type!r}")
    if rope_type == "default" and scaling.get("factor") in (None, 1, 1.0):
        return theta, None
    out = {k: v for k, v in scaling.items() if k != "type"}
    out["rope_type"] = rope_type
    out["factor"] = _float(scaling, "factor", 1.0, where)
    out["original_max_position_embeddings"] = _int(
        scaling, "original_max_position_embeddings", max_pos, where)
    out["beta_fast"] = _float(scaling, "beta_fast", 32.0, where)
    out["beta_slow"] = _float(scaling, "beta_slow", 1.0, where)
    for k in ("mscale", "mscale_all_dim"):
        v = scaling.get(k)
        out[k] = None if v is None else _float(scaling, k, None, where, positive=False)
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
        max_pos = _int(d, "max_position_embeddings", dflt.max_position_embeddings, where)
        theta, scaling = _normalise_rope(d, max_pos, where)
        heads = _int(d, "num_attention_heads", dflt.num_attention_heads, where)
        kv_heads = d.get("num_key_value_heads")
        kv_heads = heads if kv_heads is None else _int(d, "num_key_value_heads", None, where)
        if heads % kv_heads:
            raise _err(where, f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})")
        cfg = cls(
            vocab_size=_int(d, "vocab_size", dflt.vocab_size, where),
            hidden_size=_int(d, "hidden_size", dflt.hidden_size, where),
            intermediate_size=_int(d, "intermediate_size", dflt.intermediate_size, where),
            num_hidden_layers=_int(d, "num_hidden_layers", dflt.num_hidden_layers, where, minimum=0),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            q_lora_rank=_int(d, "q_lora_rank", dflt.q_lora_rank, where, optional=True),
            kv_lora_rank=_int(d, "kv_lora_rank", dflt.kv_lora_rank, where),
            qk_nope_head_dim=_int(d, "qk_nope_head_dim", dflt.qk_nope_head_dim, where, minimum=0),
            qk_rope_head_dim=_int(d, "qk_rope_head_dim", dflt.qk_rope_head_dim, where),
            v_head_dim=_int(d, "v_head_dim", dflt.v_head_dim, where),
            rms_norm_eps=_float(d, "rms_norm_eps", dflt.rms_norm_eps, where),
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
        layers = _int(d, "num_hidden_layers", dflt.num_hidden_layers, where, minimum=0)
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
            hidden_size=_int(d, "hidden_size", dflt.hidden_size, where),
            num_attention_heads=_int(d, "num_attention_heads", dflt.num_attention_heads, where),
            intermediate_size=_int(d, "intermediate_size", dflt.intermediate_size, where),
            num_hidden_layers=layers,
            patch_size=_int(d, "patch_size", dflt.patch_size, where),
            num_channels=_int(d, "num_channels", dflt.num_channels, where),
            layer_norm_eps=_float(d, "layer_norm_eps", dflt.layer_norm_eps, where),
            hidden_act=_str(d, "hidden_act", dflt.hidden_act, where),
            spatial_merge_size=_int(d, "spatial_merge_size", dflt.spatial_merge_size, where),
            out_hidden_size=_int(d, "out_hidden_size", out_hidden_default, where),
            window_size=_int(d, "window_size", dflt.window_size, where),
            fullatt_block_indexes=fa,
        )
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
