"""Open-set segmentation (notes 7): categories, detection, a core-target mask per box."""
from __future__ import annotations

import numpy as np

from ..parse import parse_detections
from ..results import OpenSetResult
from .common import check_task_keywords, over_images, refs_of, run_turn, to_rgb
from .refer import _colour, clamp_box, core_target

CATEGORIES_PROMPT = "Segment all objects in this image."
DETECT_PROMPT = "Detect every objects that belongs to the following categories: {}"
NOT_CLASSES = {"<OTHERS>", "<BG>", "<FG>", ""}


@over_images
def segment_open(model, image, *, max_boxes=30, crop_short_side=1280, box_color=None, seed=None,
                 max_new_tokens=512, progress=True, **gen) -> OpenSetResult:
    """Label map of every object the model finds: label 0 = background, label i =
    ``class_names[i]``. Steps: ``Segment all objects in this image.`` -> categories
    (the ``<ref>`` names); detection over them; the ``max_boxes`` largest boxes each get
    the core-target step (refer's crop protocol); masks are painted largest first, so
    smaller objects stay on top. No categories or no boxes -> all background.
    ``progress``: a tqdm bar over the per-box prefills on stderr (False: quiet). A list
    of images gives a list of results."""
    check_task_keywords("segment_open", gen)
    if not (isinstance(max_boxes, int) and max_boxes >= 0):
        raise ValueError(f"max_boxes must be a non-negative int, got {max_boxes!r}")
    rgb = to_rgb(image)
    H, W = rgb.shape[:2]
    rng = np.random.default_rng(seed)
    turn = run_turn(model, rgb, CATEGORIES_PROMPT, max_new_tokens=max_new_tokens, **gen)
    timings = {"categories_" + k: v for k, v in turn.timings.items()}
    names = []
    for r in refs_of(model, turn):
        n = r.name.strip()
        if n not in NOT_CLASSES and n not in names:
            names.append(n)
    labels = np.zeros((H, W), np.int32)
    if not names:
        return OpenSetResult(labels, ["<BG>"], [], turn.text, "", timings, image=rgb)
    det = run_turn(model, rgb, DETECT_PROMPT.format(",".join(names)), stop_at_mask=False,
                   max_new_tokens=max_new_tokens, **gen)
    timings.update({"detect_" + k: v for k, v in det.timings.items()})
    found = []
    for cls, boxes in parse_detections(det.text):
        if cls in NOT_CLASSES:
            continue
        if cls not in names:
            names.append(cls)
        found += [(cls, clamp_box(b, W, H)) for b in boxes]
    found.sort(key=lambda cb: -(cb[1][2] - cb[1][0] + 1) * (cb[1][3] - cb[1][1] + 1))
    found = found[:max_boxes]
    from tqdm.auto import tqdm

    for cls, box in tqdm(found, desc="segment_open: masks", unit="box", disable=not progress or not found):
        mask, _, _, _, t = core_target(model, rgb, box, crop_short_side=crop_short_side,
                                       colour=_colour(box_color, rng), max_new_tokens=64, **gen)
        labels[mask] = 1 + names.index(cls)
        for k, v in t.items():
            timings["boxes_" + k] = timings.get("boxes_" + k, 0.0) + v
    return OpenSetResult(labels, ["<BG>"] + names, found, turn.text, det.text, timings, image=rgb)
