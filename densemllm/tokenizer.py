"""Tokenizer and chat prompts of a checkpoint.

``tokenizer.json`` is read with the ``tokenizers`` library. Chat prompts are
rendered from the checkpoint's own Jinja template, looked up in the order the
official processor (transformers' ``ProcessorMixin``, 5.x) resolves it:
``processor_config.json`` ``chat_template``, ``chat_template.json``
(``{"chat_template": ...}``), ``chat_template.jinja``, then the tokenizer's own
``tokenizer_config.json`` ``chat_template`` (a string, or a list of named templates of
which "default" is used). The template runs in jinja2's immutable sandbox with the
variables Hugging Face passes (``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token``, ``tools``, ``raise_exception``, ``strftime_now``).

Fallback when the checkpoint has no template (:data:`FALLBACK_CHAT_TEMPLATE`): the
Youtu-VL rendering (notes section 5), i.e. for every message
``<|begin_of_text|>{role}\\n{content}<|end_of_text|>\\n``, an image item rendered as
``<|vision_start|><|image_pad|><|vision_end|>``, text items verbatim, and
``<|begin_of_text|>assistant\\n`` at the end when ``add_generation_prompt``. No system
message is added (the tasks and ``chat`` pass "You are a helpful assistant.", as the
official demo does).

Answers are decoded with :meth:`Tokenizer.decode_answer`: the output-grammar tokens
(``<ref>``, ``</ref>``, ``<mask>``, ``<box>``, ``<x_N>``, ``<y_N>``, ``<FG>``, ``<BG>``,
``<OTHERS>``, ``<depth>``, ``<custom_N>``, ``<ins>``, ``<poly>``...) are recognised by
their ids in this tokenizer's vocabulary and always kept, whether or not the tokenizer
marks them special; other special tokens are dropped. User text (class names,
expressions, task prompts, chat text) must not contain the text of a control token
(``<|image_pad|>``, ``<|vision_start|>``, ``<|end_of_text|>``... every special token that
is not an output-grammar token): :meth:`Tokenizer.check_user_text` rejects it with a
ValueError naming the argument, because the tokenizer would read it as the control
token and silently change the prompt's structure.
"""
from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from pathlib import Path

import tokenizers

from ._core import CheckpointError

__all__ = ["Tokenizer", "FALLBACK_CHAT_TEMPLATE", "SPECIAL_TOKENS", "GRAMMAR_TOKEN", "resolve_token_ids"]

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

# The tokens of the model's output grammar (notes section 6), by their text.
GRAMMAR_TOKEN = re.compile(r"</?(?:ref|mask|box|ins|poly)>|<(?:x|y|custom)_\d+>|<(?:OTHERS|BG|FG|depth)>")

FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|begin_of_text|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|end_of_text|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|begin_of_text|>assistant\\n' -}}{%- endif -%}"
)


def _token_str(v):
    """tokenizer_config.json writes special tokens as str or {"content": str, ...}."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _read_text(f):
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{f}: not valid UTF-8 text ({e})") from None


def _json_template(f):
    try:
        d = json.loads(_read_text(f))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    t = d.get("chat_template") if isinstance(d, dict) else None
    if isinstance(t, list):  # [{"name": ..., "template": ...}, ...]: the "default" one
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    if t is not None and not isinstance(t, str):
        raise CheckpointError(f"{f}: 'chat_template' must be a string, got {type(t).__name__}")
    return t or None


def _find_template(path, tok_cfg):
    """(template, source file name) in the official processor's order, or (None, None)."""
    f = path / "processor_config.json"
    if f.is_file():
        t = _json_template(f)
        if t:
            return t, f.name
    f = path / "chat_template.json"
    if f.is_file():
        t = _json_template(f)
        if t is None:
            raise CheckpointError(f"{f}: expected a JSON object with a 'chat_template' string")
        return t, f.name
    f = path / "chat_template.jinja"
    if f.is_file():
        return _read_text(f), f.name
    t = tok_cfg.get("chat_template")
    if isinstance(t, list):
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    if isinstance(t, str) and t:
        return t, "tokenizer_config.json"
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
        self._grammar = None

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
                tok_cfg = json.loads(_read_text(tc))
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

    # -- output grammar and user text ----------------------------------------
    def _grammar_tables(self):
        if self._grammar is None:
            grammar, control = {}, []
            for i, t in self._tok.get_added_tokens_decoder().items():
                if GRAMMAR_TOKEN.fullmatch(t.content):
                    grammar[int(i)] = t.content
                elif t.special:
                    control.append(t.content)
            self._grammar = (grammar, tuple(sorted(control, key=len, reverse=True)))
        return self._grammar

    @property
    def grammar_ids(self):
        """{id: text} of the output-grammar tokens in this vocabulary (added tokens)."""
        return dict(self._grammar_tables()[0])

    @property
    def control_tokens(self):
        """Texts of the special tokens that are not output grammar (<|image_pad|>, ...)."""
        return self._grammar_tables()[1]

    def decode_answer(self, ids):
        """The text of generated ids: special tokens dropped except the output-grammar
        tokens, which are found by id and kept verbatim (so a tokenizer that marks
        <ref>, <box>, <x_N> ... special parses the same as one that does not)."""
        grammar = self._grammar_tables()[0]
        out, run = [], []
        for i in (int(i) for i in ids):
            if i in grammar:
                if run:
                    out.append(self.decode(run, skip_special_tokens=True))
                    run = []
                out.append(grammar[i])
            else:
                run.append(i)
        if run:
            out.append(self.decode(run, skip_special_tokens=True))
        return "".join(out)

    def check_user_text(self, text, what):
        """ValueError naming `what` when `text` holds a control token's text (it would be
        read as that token, not as text); returns `text`."""
        if isinstance(text, str):
            for t in self.control_tokens:
                if t in text:
                    raise ValueError(f"{what} {text[:80]!r} contains the special token {t!r}, which the tokenizer "
                                     "would read as a control token of the prompt, not as text; remove it")
        return text

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


def resolve_token_ids(config, tokenizer):
    """`config` with the special-token ids config.json leaves out taken from the
    tokenizer (one source of truth: no built-in ids). Ids config.json gives are kept
    (the loader checks they agree with the tokenizer)."""
    by_token = {"image_token_id": IMAGE_PAD, "video_token_id": VIDEO_PAD,
                "vision_start_token_id": VISION_START, "vision_end_token_id": VISION_END}
    changes = {}
    for field, token in by_token.items():
        if getattr(config, field) is None:
            changes[field] = tokenizer.token_to_id(token)
    if config.bos_token_id is None and tokenizer.bos_token:
        changes["bos_token_id"] = tokenizer.token_to_id(tokenizer.bos_token)
    if not config.eos_token_id and tokenizer.eos_token and tokenizer.token_to_id(tokenizer.eos_token) is not None:
        changes["eos_token_id"] = (tokenizer.token_to_id(tokenizer.eos_token),)
    return dataclasses.replace(config, **changes) if changes else config
