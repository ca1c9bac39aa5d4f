"""Semantic segmentation (notes 6-7): ``Segment: a, b, ...`` -> ``<ref>`` list -> dense labels."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _core
from ..crf import crf_grid_labels, crf_settings
from ..image import MAX_SIDE
from ..results import SegmentResult
from .common import check_task_keywords, class_ids, grid_logits, over_images, refs_of, run_turn, scaled, timed, to_rgb

OTHERS = "<OTHERS>"


def default_prompt(names, background):
    """The benchmark prompt form (notes 8); background mode drops the 'without' clause."""
    joined = ", ".join(names)
    return f"Segment: {joined}." if background else f"Segment: {joined}, without the background class."


def check_scale(rgb, scale):
    """The scale= bound, checked before resizing: a finite number > 0 whose scaled image
    fits the input limits (_core.MAX_IMAGE_PIXELS, densemllm.image.MAX_SIDE per side)."""
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) \
            or not scale > 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    h, w = rgb.shape[:2]
    sh, sw = round(h * scale), round(w * scale)
    if max(sh, sw) > MAX_SIDE or sh * sw > _core.MAX_IMAGE_PIXELS:
        raise ValueError(f"scale={scale!r} makes the {w}x{h} image {sw}x{sh} pixels, above the limit of "
                         f"{_core.MAX_IMAGE_PIXELS} pixels ({MAX_SIDE} per side)")


def check_classes(model, classes):
    """Validated class names and their token ids (clear errors for bad input)."""
    if isinstance(classes, str):
        raise TypeError("classes must be a list of names, not one string (use [name])")
    if isinstance(classes, (set, frozenset)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"classes must be an ordered sequence of names (a list or tuple), got "
                        f"{type(classes).__name__}: label i is the i-th class, and a set has no order")
    names = list(classes)
    if not names:
        raise ValueError("classes is empty: name at least one class")
    if not all(isinstance(n, str) for n in names):
        raise TypeError("classes must be strings")
    stripped = [n.strip() for n in names]
    seen = set()
    for n in stripped:
        if n in seen:
            raise ValueError(f"duplicate class name {n!r}")
        seen.add(n)
    groups = [class_ids(model, n, f"classes[{i}]") for i, n in enumerate(stripped)]
    return stripped, groups


@over_images
def segment(model, image, classes, background=False, crf=False, scale=1.0, prompt=None, *,
            all_classes=False, max_new_tokens=1024, crf_params=None, **gen) -> SegmentResult:
    """Segment ``image`` into ``classes`` from one prefill.

    The model answers with the categories it finds (``<ref>`` list); labels follow that
    list (label i = i-th ``<ref>``, decoded with the ids the model wrote). When the
    answer has no ``<ref>`` (or ``all_classes=True``) every requested class is decoded
    from its tokenized name, label i = ``classes[i]``. ``background=True`` adds the
    ``<OTHERS>`` channel: label 0 = background (sigmoid(z/4) <= 0.5 for all classes).
    ``scale`` resizes the input before the model (x4 for ADE20K); labels are at the
    original image size. ``crf=True`` refines the labels as the paper's benchmarks do
    (softmax(z / 0.2), DenseCRF on the original image, argmax; docs/crf.md); ``crf_params``
    overrides its settings (``densemllm.crf.crf_settings``). A list of images gives a
    list of results."""
    check_task_keywords("segment", gen)
    if crf and background:
        raise ValueError("crf=True refines the softmax over the classes (the benchmark mode without "
                         "background); background=True scores are not a distribution: use one of them")
    crf_cfg = crf_settings(crf_params) if crf else None
    if crf_params is not None and not crf:
        raise ValueError("crf_params given but crf=False (pass crf=True to refine)")
    names, groups = check_classes(model, classes)
    rgb = to_rgb(image)
    check_scale(rgb, scale)
    H, W = rgb.shape[:2]
    text = default_prompt(names, background) if prompt is None else prompt
    try:
        turn = run_turn(model, scaled(rgb, scale), text, max_new_tokens=max_new_tokens, **gen)
    except ValueError as e:
        if "max_position_embeddings" in str(e):
            raise ValueError(f"{len(names)} classes do not fit in the model's context: {e}") from e
        raise
    refs = [] if all_classes else refs_of(model, turn)
    refs = [r for r in refs if r.ids]  # an empty <ref></ref> names nothing
    if refs:
        names, groups = [r.name for r in refs], [r.ids for r in refs]
    if background:
        keep = [i for i, n in enumerate(names) if n.strip() != OTHERS]
        names, groups = [names[i] for i in keep], [groups[i] for i in keep]
        if not names:  # only background: every pixel is background
            return SegmentResult(np.zeros((H, W), np.int32), [OTHERS], [None], turn.text, True,
                                 None, dict(turn.timings, dense=0.0), image=rgb)
    timings = dict(turn.timings)
    with timed(timings, "dense"):
        z = grid_logits(turn, groups)
        if crf_cfg is None:
            labels = _core.dense_upsample_argmax(z, (H, W), background=bool(background))
    if crf_cfg is not None:
        with timed(timings, "crf"):
            labels = crf_grid_labels(rgb, z, crf_cfg)
    if background:
        names, groups = [OTHERS] + names, [None] + list(groups)
    return SegmentResult(labels, names, [None if g is None else list(g) for g in groups], turn.text,
                         bool(background), z, timings, image=rgb)
