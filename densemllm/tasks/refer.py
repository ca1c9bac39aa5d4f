"""Referring segmentation, grounding then core target (notes 7, paper App. D.2)."""
from __future__ import annotations

import math

import numpy as np

from .. import _core
from ..parse import parse_boxes
from ..results import ReferResult
from .common import (check_image, check_task_keywords, grid_logits, merged_px, over_images, resize_rgb, run_turn,
                     timed, to_rgb)

GROUND_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {}"
CORE_PROMPT = "Segment the core target."
PAD = 1.2
MAX_CROP_ASPECT = 4.0  # long side / short side of a core-target crop at most (see crop_window)


def _colour(box_color, rng):
    if box_color is None:
        return tuple(int(c) for c in rng.integers(0, 256, 3))
    c = tuple(int(v) for v in box_color)
    if len(c) != 3 or not all(0 <= v <= 255 for v in c):
        raise ValueError(f"box_color must be an (r, g, b) of 0..255, got {box_color!r}")
    return c


def clamp_box(box, W, H):
    x0, y0, x1, y1 = box
    x0, x1 = min(max(x0, 0), W - 1), min(max(x1, 0), W - 1)
    y0, y1 = min(max(y0, 0), H - 1), min(max(y1, 0), H - 1)
    return x0, y0, x1, y1


def draw_box(rgb, box, colour):
    """1 px rectangle outline on a copy (inclusive pixel corners)."""
    out = rgb.copy()
    x0, y0, x1, y1 = box
    out[y0, x0:x1 + 1] = colour
    out[y1, x0:x1 + 1] = colour
    out[y0:y1 + 1, x0] = colour
    out[y0:y1 + 1, x1] = colour
    return out


def _widen(lo, hi, need, limit):
    """[lo, hi) grown to ``need`` pixels around its centre, shifted to fit [0, limit)."""
    if hi - lo >= need:
        return lo, hi
    need = min(need, limit)
    lo = max(0, min((lo + hi - need) // 2, limit - need))
    return lo, lo + need


def crop_window(box, W, H, pad=PAD, max_aspect=MAX_CROP_ASPECT):
    """A window ``pad`` times the box (pixel extent x1-x0+1) around its centre, clamped
    to the image: (x0, y0, x1, y1) with x1/y1 exclusive. Its short side is then widened
    (within the image) to at least 1/``max_aspect`` of its long side: a thin box (a
    weak model's answer, or a pole) would otherwise become a crop whose short-side
    resize is longer than the model's context."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1 + 1) / 2.0, (y0 + y1 + 1) / 2.0
    hw, hh = pad * (x1 - x0 + 1) / 2.0, pad * (y1 - y0 + 1) / 2.0
    a, b = max(0, int(round(cx - hw))), min(W, int(round(cx + hw)))
    c, d = max(0, int(round(cy - hh))), min(H, int(round(cy + hh)))
    b, d = max(b, a + 1), max(d, c + 1)
    a, b = _widen(a, b, math.ceil((d - c) / max_aspect), W)
    c, d = _widen(c, d, math.ceil((b - a) / max_aspect), H)
    return a, c, b, d


def nearest(labels, h, w):
    """Nearest resize with pixel-centre sampling (PIL NEAREST / cv2 INTER_NEAREST_EXACT)."""
    ih, iw = labels.shape
    ys = np.minimum(((np.arange(h) + 0.5) * ih / h).astype(np.int64), ih - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * iw / w).astype(np.int64), iw - 1)
    return labels[ys][:, xs]


def core_target(model, rgb, box, *, crop_short_side=1280, colour=(255, 0, 0), max_new_tokens=64, **gen):
    """Draw ``box``, crop 1.2x around it, resize (short side, Lanczos), ``Segment the core
    target.``, FG/BG from the vision tokens, nearest back to the crop, paste.
    Returns (full-size bool mask, crop window, crop labels, answer text, timings)."""
    H, W = rgb.shape[:2]
    drawn = draw_box(rgb, box, colour)
    cx0, cy0, cx1, cy1 = crop_window(box, W, H)
    crop = drawn[cy0:cy1, cx0:cx1]
    ch, cw = crop.shape[:2]
    s = crop_short_side / min(ch, cw)
    crop_r = resize_rgb(crop, (max(1, round(ch * s)), max(1, round(cw * s))), "lanczos")
    check_image(model, crop_r, "the resized crop")
    turn = run_turn(model, crop_r, CORE_PROMPT, max_new_tokens=max_new_tokens, **gen)
    tok = model.tokenizer  # the answer's fixed tokens, by their ids in this vocabulary
    bg, fg = tok.token_to_id("<BG>"), tok.token_to_id("<FG>")
    if bg is None or fg is None:
        raise ValueError("this tokenizer lacks the <BG> / <FG> tokens")
    timings = dict(turn.timings)
    with timed(timings, "dense"):
        # The answer format is fixed (0 = <BG>, 1 = <FG>), so the ids are too.
        z = grid_logits(turn, [(bg,), (fg,)])
        lab = _core.dense_upsample_argmax(z, crop_r.shape[:2])
        back = nearest(lab, ch, cw)
        mask = np.zeros((H, W), bool)
        mask[cy0:cy1, cx0:cx1] = back == 1
    return mask, (cx0, cy0, cx1, cy1), lab, turn.text, timings


@over_images
def refer(model, image, expression, *, crop_short_side=1280, box_color=None, seed=None,
          max_new_tokens=64, **gen) -> ReferResult:
    """Mask of the object ``expression`` describes: grounding (a box in image pixels),
    then the core-target segmentation of a 1.2x crop around it, pasted back.

    ``box_color``: the 1 px outline drawn before cropping (random, as in the paper, when
    None; ``seed`` fixes it). No box in the answer -> an empty mask and ``box=None``;
    a malformed box raises :class:`densemllm.parse.ParseError`. A list of images gives a
    list of results."""
    check_task_keywords("refer", gen)
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("expression must be a non-empty string")
    model.tokenizer.check_user_text(expression, "expression")
    px = merged_px(model)
    if not (isinstance(crop_short_side, int) and crop_short_side >= px):
        raise ValueError(f"crop_short_side must be an int >= {px} (one merged vision token), "
                         f"got {crop_short_side!r}")
    rgb = to_rgb(image)
    H, W = rgb.shape[:2]
    colour = _colour(box_color, np.random.default_rng(seed))
    turn = run_turn(model, rgb, GROUND_PROMPT.format(expression.strip()), stop_at_mask=False,
                    max_new_tokens=max_new_tokens, what="expression", **gen)
    boxes = parse_boxes(turn.text)
    timings = {"ground_" + k: v for k, v in turn.timings.items()}
    if not boxes:
        return ReferResult(np.zeros((H, W), bool), None, turn.text, timings=timings, image=rgb)
    box = clamp_box(boxes[0], W, H)
    mask, win, lab, text2, t2 = core_target(model, rgb, box, crop_short_side=crop_short_side, colour=colour,
                                            max_new_tokens=max_new_tokens, **gen)
    timings.update({"segment_" + k: v for k, v in t2.items()})
    return ReferResult(mask, box, turn.text, text2, win, lab, timings, image=rgb)
