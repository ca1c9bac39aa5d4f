"""The model's output grammar (notes section 6) and the RLE text of label maps.

What the model writes:

- semantic segmentation: ``The target categories include <ref>sky</ref><ref>road</ref>,
  numbered sequentially starting from 0[, without the background class].<mask>RLE</mask>``
- referring / core target: ``The results are 0 for <ref><BG></ref> and 1 for
  <ref><FG></ref>.<mask>RLE</mask>``
- depth: ``This is the <depth>.<mask>RLE</mask>`` (bins 1..1000, 0 = invalid)
- grounding: ``<box><x_155><y_154><x_221><y_206></box>``; detection:
  ``<ref>class</ref><box>..</box><box>..</box>...``
- polygon referring segmentation: ``<ins><poly><x_..><y_..>...</poly></ins>``

Malformed text raises :class:`ParseError` (a ``ValueError``) naming what is wrong;
"nothing there" (no ``<ref>``, no ``<box>``) is an empty list, not an error.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import numpy as np

from . import _core

__all__ = [
    "ParseError", "rle_encode", "rle_decode", "RefSpan", "parse_refs", "parse_mask",
    "parse_boxes", "parse_detections", "parse_polygons", "replace_mask",
]

# The official RLE parser's pattern; rle_decode is equivalent to findall over it (C).
RLE_PATTERN = r"\(\s*(\d+)\s*,\s*(\d+)\s*\)"


class ParseError(ValueError):
    """The model's text does not follow the expected grammar."""


def rle_encode(arr) -> str:
    """Run-length text of an integer map: ``(value,count)`` pairs over the row-major
    flattened array, exactly as the model writes it (no spaces). Values must be
    non-negative integers that fit int32 (bool is 0/1)."""
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        a = a.astype(np.int32)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"rle_encode: expected an integer or bool array, got dtype {a.dtype}")
    if a.size and a.dtype != np.int32:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > np.iinfo(np.int32).max:
            raise ValueError(f"rle_encode: values must lie in [0, 2^31-1], got [{lo}, {hi}]")
    return _core.rle_encode(np.ascontiguousarray(a, dtype=np.int32))


def rle_decode(text, shape) -> np.ndarray:
    """Parse RLE text into an int32 array of ``shape``.

    Pairs are read like the official ``re.findall(r"\\(\\s*(\\d+)\\s*,\\s*(\\d+)\\s*\\)")``
    (text between pairs is ignored; digits/whitespace are ASCII). The counts must
    add up to exactly ``prod(shape)`` and values must fit int32, else ValueError."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(operator.index(s) for s in shape)  # "12" and 2.5 are not shapes
    except TypeError:
        raise TypeError(f"rle_decode: shape must be an int or a tuple of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"rle_decode: negative dimension in shape {shape}")
    n = 1
    for s in shape:
        n *= s
    if n > 2**40:
        raise ValueError(f"rle_decode: shape {shape} is too large")
    if not isinstance(text, (str, bytes)):
        raise TypeError(f"rle_decode: text must be str or bytes, got {type(text).__name__}")
    return _core.rle_decode(text, n).reshape(shape)


@dataclass(frozen=True)
class RefSpan:
    """One ``<ref>name</ref>``: the name as text, the token ids the model wrote between
    the tags (None when only text was available), and the character span of the name."""

    name: str
    ids: tuple | None
    start: int
    end: int


_REF = re.compile(r"<ref>(.*?)</ref>", re.S)
_MASK = re.compile(r"<mask>(.*?)(?:</mask>|$)", re.S)
_BOX = re.compile(r"<box>(.*?)</box>", re.S)
_COORD = re.compile(r"<([xy])_(\d+)>")
_POLY = re.compile(r"<poly>(.*?)</poly>", re.S)
_INS = re.compile(r"<ins>(.*?)</ins>", re.S)


def parse_refs(text: str, ids=None, tokenizer=None) -> list[RefSpan]:
    """Every ``<ref>..</ref>`` in order. With the generated ``ids`` and the tokenizer,
    each span also carries the exact ids written between the ``<ref>`` and ``</ref>``
    tokens (the ids dense decoding averages over, notes 7). An unclosed ``<ref>`` is a
    ParseError. An empty name is kept (callers decide)."""
    opened = text.count("<ref>")
    spans = [RefSpan(m.group(1), None, m.start(1), m.end(1)) for m in _REF.finditer(text)]
    if opened != len(spans) or text.count("</ref>") != len(spans):
        raise ParseError(f"unbalanced <ref> tags in model text: {text[:200]!r}")
    if ids is None or tokenizer is None:
        return spans
    open_id, close_id = tokenizer.token_to_id("<ref>"), tokenizer.token_to_id("</ref>")
    if open_id is None or close_id is None:
        raise ParseError("the tokenizer has no <ref> / </ref> tokens")
    groups, cur = [], None
    for t in (int(i) for i in ids):
        if t == open_id:
            if cur is not None:
                raise ParseError("nested <ref> in generated ids")
            cur = []
        elif t == close_id:
            if cur is None:
                raise ParseError("</ref> without <ref> in generated ids")
            groups.append(tuple(cur))
            cur = None
        elif cur is not None:
            cur.append(t)
    if cur is not None or len(groups) != len(spans):
        raise ParseError(f"the generated ids hold {len(groups)} complete <ref> groups but the text "
                         f"has {len(spans)}")
    return [RefSpan(s.name, g, s.start, s.end) for s, g in zip(spans, groups)]


def parse_mask(text: str) -> str | None:
    """The RLE text after ``<mask>`` (up to ``</mask>`` or the end of the text, since
    generation may stop at the token limit); None when there is no ``<mask>``."""
    m = _MASK.search(text)
    return None if m is None else m.group(1)


def _box_from(inner: str) -> tuple:
    coords = _COORD.findall(inner)
    rest = _COORD.sub("", inner).strip()
    if len(coords) != 4 or [c for c, _ in coords] != ["x", "y", "x", "y"] or rest:
        raise ParseError(f"unparsable box <box>{inner}</box>: expected <x_..><y_..><x_..><y_..>")
    x0, y0, x1, y1 = (int(v) for _, v in coords)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def parse_boxes(text: str) -> list[tuple]:
    """All ``<box>`` in order as (x0, y0, x1, y1) pixel tuples (corners sorted).
    A box that is not exactly four coordinates x,y,x,y, or an unclosed ``<box>``,
    raises ParseError."""
    boxes = [_box_from(m.group(1)) for m in _BOX.finditer(text)]
    if text.count("<box>") != len(boxes):
        raise ParseError(f"unclosed <box> in model text: {text[:200]!r}")
    return boxes


def parse_detections(text: str) -> list[tuple[str, list[tuple]]]:
    """``<ref>class</ref><box>..</box>...`` -> [(class, [boxes...]), ...] in order;
    boxes before any ``<ref>`` are ignored (no class to give them)."""
    parse_refs(text)  # balance check
    out = []
    refs = list(_REF.finditer(text))
    for i, m in enumerate(refs):
        end = refs[i + 1].start() if i + 1 < len(refs) else len(text)
        out.append((m.group(1).strip(), parse_boxes(text[m.end():end])))
    return out


def parse_polygons(text: str) -> list[list[np.ndarray]]:
    """``<ins><poly><x_..><y_..>...</poly></ins>`` -> one list per instance of int32
    [N, 2] (x, y) vertex arrays. A polygon with an odd coordinate count, a y before
    an x, or fewer than 3 vertices raises ParseError."""
    out = []
    for ins in _INS.finditer(text):
        polys = []
        for p in _POLY.finditer(ins.group(1)):
            coords = _COORD.findall(p.group(1))
            axes = [c for c, _ in coords]
            if len(coords) % 2 or axes != ["x", "y"] * (len(coords) // 2) or len(coords) < 6:
                raise ParseError(f"unparsable polygon <poly>{p.group(1)[:120]}</poly>")
            polys.append(np.array([int(v) for _, v in coords], np.int32).reshape(-1, 2))
        out.append(polys)
    return out


def replace_mask(text: str, rle: str) -> str:
    """The text with the ``<mask>..</mask>`` content replaced by ``rle`` (appended as
    ``<mask>rle</mask>`` when the text has none)."""
    m = _MASK.search(text)
    if m is None:
        return f"{text}<mask>{rle}</mask>"
    return text[:m.start()] + f"<mask>{rle}</mask>" + text[m.end():]
