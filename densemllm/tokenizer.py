"""Tokenizer and chat prompts of a checkpoint.

``tokenizer.json`` is read with the ``tokenizers`` library. Chat prompts are
rendered from the checkpoint's own Jinja template, looked up in this order:
``tokenizer_config.json`` ``chat_template`` (a string, or a list of named templates
of which "default" is used), ``chat_template.json`` (``{"chat_template": ...}``),
``chat_template.jinja``. The template runs in jinja2's immutable sandbox with the
variables Hugging Face passes (``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token``, ``tools``, ``raise_exception``, ``strftime_now``).

Fallback when the checkpoint has no template (:data:`FALLBACK_CHAT_TEMPLATE`):
ChatML, i.e. for every message ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, an
image item rendered as ``<|vision_start|><|image_pad|><|vision_end|>``, text items
verbatim, a default system message "You are a helpful assistant." when the first
message is not a system message, and ``<|im_start|>assistant\\n`` at the end when
``add_generation_prompt``. Youtu-VL checkpoints carry their own template, so the
fallback only matters for hand-made checkpoints.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import tokenizers

from ._core import CheckpointError

__all__ = ["Tokenizer", "FALLBACK_CHAT_TEMPLATE", "SPECIAL_TOKENS"]

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"

# Special tokens of the notes, by role; each resolves through the vocabulary.
SPECIAL_TOKENS = (
    VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD,
    "<ref>", "</ref>", "<mask>", "</mask>", "<box>", "</box>",
    "<OTHERS>", "<BG>", "<FG>", "<depth>",
)

FALLBACK_CHAT_TEMPLATE = (
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


def _token_str(v):
    """tokenizer_config.json writes special tokens as str or {"content": str, ...}."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _find_template(path, tok_cfg):
    t = tok_cfg.get("chat_template")
    if isinstance(t, list):
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    if isinstance(t, str) and t:
        return t, "tokenizer_config.json"
    f = path / "chat_template.json"
    if f.is_file():
        try:
            t = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{f}: not a JSON object with 'chat_template' ({e})") from None
        if isinstance(t, str) and t:
            return t, "chat_template.json"
    f = path / "chat_template.jinja"
    if f.is_file():
        return f.read_text(encoding="utf-8"), "chat_template.jinja"
    return None, None


class Tokenizer:
    """A checkpoint's byte-level BPE tokenizer plus its chat template.

    ``Tokenizer.from_dir(path)`` reads ``tokenizer.json``, ``tokenizer_config.json``
    and the chat template; ``chat_template_source`` says where the template came
    from ("fallback" when the checkpoint has none).
    """

    def __init__(self, tok, chat_template=None, *, bos_token=None, eos_token=None,
                 chat_template_source="given"):
        if not isinstance(tok, tokenizers.Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tok).__name__}")
        self._tok = tok
        if chat_template is None:
            chat_template, chat_template_source = FALLBACK_CHAT_TEMPLATE, "fallback"
        self.chat_template = chat_template
        self.chat_template_source = chat_template_source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = None

    @classmethod
    def from_dir(cls, path, config=None):
        path = Path(path)
        tj = path / "tokenizer.json"
        if not tj.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(tj))
        except Exception as e:  # tokenizers raises its own Exception type
            raise CheckpointError(f"{tj}: cannot be read by the tokenizers library ({e})") from None
        tok_cfg = {}
        tc = path / "tokenizer_config.json"
        if tc.is_file():
            try:
                tok_cfg = json.loads(tc.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{tc}: not valid JSON ({e})") from None
            if not isinstance(tok_cfg, dict):
                raise CheckpointError(f"{tc}: expected a JSON object")
        template, source = _find_template(path, tok_cfg)
        bos = _token_str(tok_cfg.get("bos_token"))
        eos = _token_str(tok_cfg.get("eos_token"))
        if config is not None:
            if bos is None and config.bos_token_id is not None:
                bos = tok.id_to_token(config.bos_token_id)
            if eos is None and config.eos_token_id:
                eos = tok.id_to_token(config.eos_token_id[0])
        return cls(tok, template, bos_token=bos, eos_token=eos,
                   chat_template_source=source or "fallback")

    # -- vocabulary ---------------------------------------------------------
    @property
    def vocab_size(self):
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text):
        """Token ids of `text`; no BOS or other special tokens are added."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=False):
        ids = [int(i) for i in ids]
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"decode(): ids {bad[:5]} out of range for a vocabulary of {n}")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token):
        return self._tok.token_to_id(token)

    def id_to_token(self, i):
        return self._tok.id_to_token(int(i))

    def special_id(self, token):
        """Id of a special token of the notes; KeyError naming it if the vocabulary lacks it."""
        i = self._tok.token_to_id(token)
        if i is None:
            raise KeyError(f"special token {token!r} is not in this tokenizer's vocabulary")
        return i

    @property
    def image_pad_id(self):
        return self.special_id(IMAGE_PAD)

    @property
    def vision_start_id(self):
        return self.special_id(VISION_START)

    @property
    def vision_end_id(self):
        return self.special_id(VISION_END)

    # -- prompts --------------------------------------------------------------
    def _compiled(self):
        if self._template is None:
            from jinja2 import TemplateError
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise TemplateError(message)

            def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
                return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                                  sort_keys=sort_keys)

            # The options Hugging Face renders chat templates with, so that the
            # checkpoint's template produces exactly what the model was trained on.
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            try:
                self._template = env.from_string(self.chat_template)
            except TemplateError as e:
                raise CheckpointError(f"chat template ({self.chat_template_source}) does not compile: {e}") from None
        return self._template

    def chat_prompt(self, messages, add_generation_prompt=True, **kwargs):
        """Render `messages` (Hugging Face form) with the checkpoint's chat template.

        ``[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}]``;
        content may also be a plain string. An image item renders as
        ``<|vision_start|><|image_pad|><|vision_end|>`` (one pad; see expand_image_pads).
        """
        if not isinstance(messages, (list, tuple)) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages):
            raise ValueError("messages must be a list of {'role': str, 'content': str | list} dicts")
        ctx = dict(messages=list(messages), add_generation_prompt=add_generation_prompt,
                   bos_token=self.bos_token or "", eos_token=self.eos_token or "", tools=None)
        ctx.update(kwargs)
        return self._compiled().render(**ctx)

    def expand_image_pads(self, ids, n_tokens):
        """Replace the single ``<|image_pad|>`` in `ids` by `n_tokens` copies."""
        n_tokens = int(n_tokens)
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        pad = self.image_pad_id
        ids = [int(i) for i in ids]
        where = [k for k, i in enumerate(ids) if i == pad]
        if len(where) != 1:
            raise ValueError(f"expected exactly one {IMAGE_PAD} (id {pad}) in the prompt, found {len(where)}")
        k = where[0]
        return ids[:k] + [pad] * n_tokens + ids[k + 1:]

    def __repr__(self):
        return f"Tokenizer(vocab_size={self.vocab_size}, chat_template={self.chat_template_source!r})"
