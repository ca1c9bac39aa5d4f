"""The language model side of a :class:`densemllm.model.Model`: forward, prefill, generate, chat.

The work happens in C (``_core.LanguageModel`` / ``_core.Session``, csrc/model/);
this module turns configs, prompts and images into the arrays the core takes and
runs the token loop. Semantics follow Hugging Face ``generate`` (notes section 5).
"""
from __future__ import annotations

import math
import numbers
import operator
import secrets

import numpy as np

from . import _core

__all__ = ["Session", "forward", "prefill", "generate", "chat", "lm_config_dict", "language_model"]

# Official decoding defaults (notes section 5).
DEFAULT_TEMPERATURE = 0.1
DEFAULT_TOP_P = 0.001
DEFAULT_REPETITION_PENALTY = 1.05
DEFAULT_SYSTEM = "You are a helpful assistant."

# The generation keywords chat() and the dense tasks pass on (Session.generate_ids' and
# Session.generate's options).
GEN_KEYWORDS = frozenset(("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
                          "do_sample", "seed", "eos_token_id", "stop", "stream"))


def check_gen_keywords(public_name, kw, allowed=GEN_KEYWORDS):
    """TypeError naming the public function for a keyword it does not take."""
    bad = sorted(set(kw) - set(allowed))
    if bad:
        raise TypeError(f"{public_name}() got an unexpected keyword argument {bad[0]!r} "
                        f"(generation options: {', '.join(sorted(allowed))})")


def lm_config_dict(config, shapes_only=False):
    """The flat dict `_core.LanguageModel` takes, from a :class:`densemllm.config.ModelConfig`.

    shapes_only: leave out the rope scaling (what the weight shapes do not depend on)."""
    t = config.text
    d = {
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "q_lora_rank": t.q_lora_rank or 0,
        "kv_lora_rank": t.kv_lora_rank,
        "qk_nope_head_dim": t.qk_nope_head_dim,
        "qk_rope_head_dim": t.qk_rope_head_dim,
        "v_head_dim": t.v_head_dim,
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": float(t.rms_norm_eps),
        "rope_interleave": int(bool(t.rope_interleave)),
        "attention_bias": int(bool(t.attention_bias)),
        "tie_word_embeddings": int(bool(t.tie_word_embeddings)),
        "image_token_id": int(config.image_token_id),
        "rope_theta": float(t.rope_theta),
    }
    rs = t.rope_scaling
    if rs and not shapes_only:  # config.py admits only yarn here (ROPE_TYPES)
        d["rope_yarn"] = 1
        d["rope_factor"] = float(rs["factor"])
        d["rope_original_max_position_embeddings"] = float(rs["original_max_position_embeddings"])
        # 0 stands for "absent" in the core (transformers' defaults then apply).
        for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor"):
            v = rs.get(key)
            d["rope_" + key] = float(v) if v else 0.0
        d["rope_truncate"] = int(bool(rs.get("truncate", True)))
    return d


def language_model(model):
    """The model's `_core.LanguageModel`, built on first use (weights stay in the mmap)."""
    lm = getattr(model, "_lm", None)
    if lm is None:
        lm = _core.LanguageModel(model._checkpoint, lm_config_dict(model.config), backend=model.backend)
        model._lm = lm
    return lm


def _ids_array(ids, what="input_ids"):
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{what}: expected token ids, got a string (use a prompt argument instead)")
    a = np.asarray(ids)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D sequence of token ids (or shape [1, T]), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{what}: empty input, at least one token id is needed")
    if a.dtype.kind not in "iu":
        if a.dtype == object or a.dtype.kind == "b":
            raise TypeError(f"{what}: token ids must be integers, got dtype {a.dtype}")
        raise TypeError(f"{what}: token ids must be integers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _vision(model, image, image_embeds):
    """(embeddings float32 [n, hidden], grid or None) from an image or given embeddings."""
    if image is not None and image_embeds is not None:
        raise ValueError("give either image or image_embeds, not both")
    if image_embeds is not None:
        e = np.ascontiguousarray(image_embeds, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != model.config.text.hidden_size:
            raise ValueError(f"image_embeds: expected float32 [n, {model.config.text.hidden_size}], got shape {e.shape}")
        return e, None
    if image is None:
        return None, None
    # preprocess once; the encoder takes the preprocessed patches and grid
    pre = model.preprocess(image)
    m = model.config.vision.spatial_merge_size
    e = np.ascontiguousarray(model.encode_image(pre), dtype=np.float32)
    return e, (pre.grid[0] // m, pre.grid[1] // m)


def _prompt_ids(model, prompt_or_ids, n_vision):
    """Token ids of a prompt string or id sequence, with the image pad expanded."""
    if isinstance(prompt_or_ids, str):
        ids = model.tokenizer.encode(prompt_or_ids)
    else:
        ids = list(_ids_array(prompt_or_ids))
    if n_vision:
        pad = model.config.image_token_id
        count = sum(1 for i in ids if i == pad)
        if count == 1 and n_vision != 1:
            ids = model.tokenizer.expand_image_pads(ids, n_vision)
        # any other mismatch is reported by the core (ValueError)
    return _ids_array(ids)


def forward(model, input_ids, image=None, output="logits", *, image_embeds=None):
    """Logits float32 [T, vocab] (output="logits") or final normalised hidden states
    [T, hidden] (output="hidden") of the whole sequence. ``image_embeds`` (float32
    [n, hidden]) replaces ``image`` with precomputed vision embeddings; either way
    the ids must hold exactly n image-pad tokens (a single pad is expanded)."""
    if output not in ("logits", "hidden"):
        raise ValueError(f"output must be 'logits' or 'hidden', got {output!r}")
    emb, grid = _vision(model, image, image_embeds)
    ids = _prompt_ids(model, input_ids, 0 if emb is None else emb.shape[0])
    sess = _core.Session(language_model(model))
    return sess.extend(ids, emb, grid, output)


class Session:
    """A prefilled sequence: its KV cache, the ids so far, and the image's vision
    tokens' final hidden states (for dense decoding). ``core`` is the
    ``_core.Session`` the C dense decoder reads (``dm_py_session``)."""

    def __init__(self, model, core, ids, last_logits, prompt_len):
        self.model = model
        self.core = core
        self.ids = list(int(i) for i in ids)
        self.prompt_len = prompt_len
        self._last_logits = last_logits

    @property
    def vision_grid(self):
        """(grid_h, grid_w) of the merged vision tokens, or None."""
        return self.core.vision_grid

    @property
    def position(self):
        return self.core.position

    def vision_hidden(self):
        """Final-normalised hidden states of the vision tokens, float32 [n, hidden]."""
        return self.core.vision_hidden()

    @property
    def text(self):
        """Decoded text generated so far (after the prompt)."""
        return self.model.tokenizer.decode_answer(self.ids[self.prompt_len:])

    def extend(self, ids):
        """Append ids (already chosen) and return the logits of the last one."""
        a = _ids_array(ids)
        self._last_logits = self.core.extend(a, None, None, "last")
        self.ids.extend(int(i) for i in a)
        return self._last_logits.copy()

    def generate_ids(self, max_new_tokens=256, *, temperature=DEFAULT_TEMPERATURE, top_k=None,
                     top_p=DEFAULT_TOP_P, repetition_penalty=DEFAULT_REPETITION_PENALTY, do_sample=True,
                     seed=None, eos_token_id=None):
        """Iterator over new token ids (eos ends it and is not yielded). Ids the
        tokenizer does not know (head rows past its vocabulary: padding) are never chosen."""
        g = _check_gen(max_new_tokens, temperature, top_k, top_p, repetition_penalty, do_sample, seed)
        eos = _eos_set(self.model, eos_token_id)
        rng = _core.rng_state(secrets.randbits(64) if g["seed"] is None else g["seed"])
        max_pos = self.model.config.text.max_position_embeddings
        known = self.model.tokenizer.vocab_size
        for _ in range(g["max_new_tokens"]):
            if self._last_logits is None:
                raise RuntimeError("session has no logits to continue from")
            logits = self._last_logits.copy()
            logits[known:] = -np.inf
            tok = _core.sample(logits, np.asarray(self.ids, dtype=np.int64), rng, g["do_sample"], g["temperature"],
                               g["top_k"], g["top_p"], g["repetition_penalty"])
            if tok in eos:
                return
            if self.core.position >= max_pos:
                return  # the sequence is full: stop like a length limit
            self._last_logits = self.core.extend(np.array([tok], dtype=np.int64), None, None, "last")
            self.ids.append(tok)
            yield tok

    def generate(self, max_new_tokens=256, *, stop=None, stream=False, **kw):
        """Generate from here; returns the new text (or an iterator of text pieces
        with stream=True). ``stop``: a string or list of strings that end
        generation (not included in the text)."""
        # validate now, not at the first next() of a stream
        _check_gen(max_new_tokens, **{k: v for k, v in kw.items() if k != "eos_token_id"})
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of them")
        pieces = self._stream(max_new_tokens, stops, kw)
        return pieces if stream else "".join(pieces)

    def _stream(self, max_new_tokens, stops, kw):
        hold = max((len(s) for s in stops), default=1) - 1
        tok = self.model.tokenizer
        new_ids, emitted = [], 0
        for t in self.generate_ids(max_new_tokens, **kw):
            new_ids.append(t)
            text = tok.decode_answer(new_ids)
            cut = _find_stop(text, stops)
            if cut is not None:
                if cut > emitted:
                    yield text[emitted:cut]
                return
            if text.endswith("\ufffd"):
                continue  # an incomplete UTF-8 sequence: wait for its next byte
            safe = len(text) - hold
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        text = tok.decode_answer(new_ids)
        if len(text) > emitted:
            yield text[emitted:]


def _find_stop(text, stops):
    cuts = [text.find(s) for s in stops]
    cuts = [c for c in cuts if c >= 0]
    return min(cuts) if cuts else None


def _eos_set(model, eos_token_id):
    if eos_token_id is None:
        return set(model.config.eos_token_id)
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return set(int(e) for e in eos_token_id)


def _gen_int(name, v, lo, hi):
    """A Python or NumPy integer in [lo, hi] (bool, float and str rejected: 1.5 is not truncated)."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got the bool {v!r}")
    try:
        i = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}") from None
    if not lo <= i <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {i}")
    return i


def _gen_real(name, v, ok, bound):
    """A finite real (NaN and inf rejected: `t < 0` is False for NaN) for which ok(x) holds."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number {bound}, got {type(v).__name__} {v!r}")
    x = float(v)
    if not math.isfinite(x) or not ok(x):
        raise ValueError(f"{name} must be a finite number {bound}, got {v!r}")
    return x


def _check_gen(max_new_tokens=256, temperature=DEFAULT_TEMPERATURE, top_k=None, top_p=DEFAULT_TOP_P,
               repetition_penalty=DEFAULT_REPETITION_PENALTY, do_sample=True, seed=None):
    """The one validation of the generation arguments: returns them as the plain
    Python values the core takes (so the core only ever sees checked values)."""
    if not isinstance(do_sample, (bool, np.bool_)):
        raise TypeError(f"do_sample must be a bool, got {type(do_sample).__name__} {do_sample!r}")
    return dict(
        max_new_tokens=_gen_int("max_new_tokens", max_new_tokens, 0, 2**31 - 1),
        temperature=_gen_real("temperature", temperature, lambda x: x >= 0, ">= 0 (0: greedy)"),
        top_k=0 if top_k is None else _gen_int("top_k", top_k, 0, 2**63 - 1),
        top_p=_gen_real("top_p", top_p, lambda x: 0 < x <= 1, "in (0, 1]"),
        repetition_penalty=_gen_real("repetition_penalty", repetition_penalty, lambda x: x > 0, "> 0"),
        do_sample=bool(do_sample),
        seed=None if seed is None else _gen_int("seed", seed, 0, 2**64 - 1),
    )


def prefill(model, prompt_or_ids, image=None, *, image_embeds=None):
    """Run the prompt (a string or ids; an image's pad is expanded) and return a
    :class:`Session` ready to generate, holding the vision tokens' hidden states."""
    emb, grid = _vision(model, image, image_embeds)
    return _prefill(model, prompt_or_ids, emb, grid)


def _prefill(model, prompt_or_ids, emb, grid):
    ids = _prompt_ids(model, prompt_or_ids, 0 if emb is None else emb.shape[0])
    core = _core.Session(language_model(model))
    last = core.extend(ids, emb, grid, "last")
    return Session(model, core, ids, last, len(ids))


def generate(model, prompt_or_ids, image=None, *, image_embeds=None, max_new_tokens=256,
             temperature=DEFAULT_TEMPERATURE, top_k=None, top_p=DEFAULT_TOP_P,
             repetition_penalty=DEFAULT_REPETITION_PENALTY, do_sample=True, stop=None, seed=None,
             stream=False, eos_token_id=None):
    """Generate text after a prompt (string or ids). HF semantics: repetition
    penalty, then temperature / top-k / top-p when sampling; greedy when
    do_sample is False or temperature is 0. Defaults are the official ones
    (temperature 0.1, top_p 0.001, repetition_penalty 1.05: effectively greedy).
    Returns the text, or an iterator of text pieces with stream=True."""
    _check_gen(max_new_tokens, temperature, top_k, top_p, repetition_penalty, do_sample, seed)
    sess = prefill(model, prompt_or_ids, image, image_embeds=image_embeds)
    return sess.generate(max_new_tokens, stop=stop, stream=stream, temperature=temperature, top_k=top_k,
                         top_p=top_p, repetition_penalty=repetition_penalty, do_sample=do_sample, seed=seed,
                         eos_token_id=eos_token_id)


def chat_ids(model, image, text, system=DEFAULT_SYSTEM, n_vision=0):
    """Prompt ids of one user turn (image first, then text) with the checkpoint's template."""
    content = ([{"type": "image"}] if n_vision else []) + [{"type": "text", "text": text}]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    prompt = model.tokenizer.chat_prompt(messages, add_generation_prompt=True)
    ids = model.tokenizer.encode(prompt)
    if n_vision:
        ids = model.tokenizer.expand_image_pads(ids, n_vision)
    return ids


def chat(model, image, text, system=DEFAULT_SYSTEM, *, image_embeds=None, **gen):
    """One chat turn: renders the checkpoint's template (system, then the user's
    image and text), expands the image pads, generates, returns the text."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    check_gen_keywords("chat", gen)
    from .image import is_image_list

    if is_image_list(image):
        raise TypeError("chat(): one image per turn, got a list; call chat() once per image")
    model.tokenizer.check_user_text(text, "text")
    model.tokenizer.check_user_text(system, "system")
    _check_gen(**{k: v for k, v in gen.items() if k not in ("stop", "stream", "eos_token_id")})
    emb, grid = _vision(model, image, image_embeds)
    ids = chat_ids(model, image, text, system, 0 if emb is None else emb.shape[0])
    sess = _prefill(model, ids, emb, grid)
    max_new_tokens = gen.pop("max_new_tokens", 256)
    return sess.generate(max_new_tokens, **gen)
