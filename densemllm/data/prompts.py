"""Training examples of the real prompt formats (notes 5-7) from procedural scenes.

Each :class:`Example` is one chat turn: the image the model sees, the user prompt (and
whether the image comes first), the assistant answer the text loss trains, and the dense
target of its vision tokens (per-pixel class labels, metric depth, or a FG mask, at the
image's own size). The prompts are the inference tasks' own (densemllm.tasks), so
training and inference see the same text and the same crop protocol:

- segmentation: ``Segment: <shuffled names>, without the background class.`` ->
  ``The target categories include <ref>a</ref><ref>b</ref>..., numbered sequentially
  starting from 0, without the background class.<mask>``; the refs are the classes
  present, in prompt order;
- depth: ``Please estimate the depth of this image from the Scenes dataset.`` (before
  the image) -> ``This is the <depth>.<mask>``;
- grounding: ``Please provide the bounding box coordinate of the region this sentence
  describes: the red circle`` -> ``<box><x_..><y_..><x_..><y_..></box>`` (inclusive
  pixel corners of the object's visible mask in the original image);
- core target: the box drawn (1 px), a 1.2x crop resized to ``crop_short_side``
  (Lanczos), ``Segment the core target.`` -> ``The results are 0 for <ref><BG></ref>
  and 1 for <ref><FG></ref>.<mask>``.
Answers stop at ``<mask>``: inference stops generating there and reads the map from the
vision tokens (the RLE after it is the dense decoding's output, not something to generate).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import tables as T
import importlib

# the modules, not the task functions densemllm.tasks re-exports under the same names
depth_task = importlib.import_module("densemllm.tasks.depth")
refer_task = importlib.import_module("densemllm.tasks.refer")
segment_task = importlib.import_module("densemllm.tasks.segment")
from ..tasks.common import resize_rgb

__all__ = ["Example", "segment_example", "depth_example", "ground_example", "core_example", "scene_examples",
           "box_text", "SEGMENT_ANSWER", "DEPTH_ANSWER", "CORE_ANSWER", "TASKS", "DEFAULT_CROP_SHORT_SIDE"]

SEGMENT_ANSWER = ("The target categories include {refs}, numbered sequentially starting from 0, "
                  "without the background class.<mask>")
DEPTH_ANSWER = "This is the <depth>.<mask>"
CORE_ANSWER = "The results are 0 for <ref><BG></ref> and 1 for <ref><FG></ref>.<mask>"
TASKS = ("segment", "depth", "ground", "core")
# The core-target crop's short side for the small default model: 128 px = 8 merged tokens,
# below the 12x12 tokens of its 192 px scenes, so crops stay in the token counts it trains
# on (the paper's 1280 is for the 4B model at x4 input).
DEFAULT_CROP_SHORT_SIDE = 128


@dataclass
class Example:
    task: str                          # one of TASKS
    image: np.ndarray                  # uint8 [H, W, 3] as the model sees it
    prompt: str
    answer: str
    image_first: bool = True
    labels: np.ndarray | None = None   # segment: uint8 [H, W] index into `classes`, IGNORE_INDEX = none
    classes: tuple | None = None       # segment: the prompted names (label i = classes[i])
    depth: np.ndarray | None = None    # depth: float32 [H, W] metres, 0 = invalid
    mask: np.ndarray | None = None     # core: bool [H, W] foreground


def segment_example(scene, rng, subset_p=0.25) -> Example:
    """All classes in a shuffled order; with probability ``subset_p`` a random subset
    (pixels of classes not asked for are then ignored: no positive)."""
    names = list(T.CLASSES)
    order = [names[i] for i in rng.permutation(len(names))]
    if rng.random() < subset_p:
        order = order[:int(rng.integers(2, len(order)))]
    present = set(scene.present_classes())
    refs = "".join(f"<ref>{n}</ref>" for n in order if n in present)
    lut = np.full(256, T.IGNORE_INDEX, np.uint8)
    for i, n in enumerate(order):
        lut[T.CLASSES.index(n)] = i
    labels = lut[scene.labels]
    return Example("segment", scene.image, segment_task.default_prompt(order, False),
                   SEGMENT_ANSWER.format(refs=refs), True, labels=labels, classes=tuple(order))


def depth_example(scene) -> Example:
    return Example("depth", scene.image, depth_task.DATASET_PROMPT.format(T.DEPTH_DATASET), DEPTH_ANSWER, False,
                   depth=scene.depth)


def box_text(box) -> str:
    x0, y0, x1, y1 = (int(v) for v in box)
    return f"<box><x_{x0}><y_{y0}><x_{x1}><y_{y1}></box>"


def ground_example(scene, referring) -> Example:
    box = scene.object(referring.object_id).box
    return Example("ground", scene.image, refer_task.GROUND_PROMPT.format(referring.text), box_text(box), True)


def core_example(scene, object_id, rng, *, crop_short_side=DEFAULT_CROP_SHORT_SIDE, jitter=0.1) -> Example:
    """The core-target step of refer() on ``object_id``: its box (each side moved by up to
    ``jitter`` of the box size, as a grounding error would), drawn in a random colour,
    the 1.2x crop resized with refer()'s own functions; the mask follows nearest."""
    H, W = scene.labels.shape
    x0, y0, x1, y1 = scene.object(object_id).box
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    d = np.round(rng.uniform(-jitter, jitter, 4) * [bw, bh, bw, bh]).astype(int)
    box = refer_task.clamp_box((x0 + d[0], y0 + d[1], max(x0 + d[0], x1 + d[2]), max(y0 + d[1], y1 + d[3])), W, H)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    drawn = refer_task.draw_box(scene.image, box, colour)
    cx0, cy0, cx1, cy1 = refer_task.crop_window(box, W, H)
    crop = drawn[cy0:cy1, cx0:cx1]
    ch, cw = crop.shape[:2]
    s = crop_short_side / min(ch, cw)
    size = (max(1, round(ch * s)), max(1, round(cw * s)))
    crop_r = resize_rgb(crop, size, "lanczos")
    mask = refer_task.nearest(scene.mask(object_id)[cy0:cy1, cx0:cx1].astype(np.uint8), *size).astype(bool)
    return Example("core", crop_r, refer_task.CORE_PROMPT, CORE_ANSWER, True, mask=mask)


def scene_examples(scene, rng, tasks=TASKS, *, crop_short_side=DEFAULT_CROP_SHORT_SIDE) -> list:
    """One example per task in ``tasks`` (grounding and core target on one of the scene's
    referring expressions; skipped when the scene has none)."""
    out = []
    ref = scene.referring[rng.integers(len(scene.referring))] if scene.referring else None
    for t in tasks:
        if t == "segment":
            out.append(segment_example(scene, rng))
        elif t == "depth":
            out.append(depth_example(scene))
        elif t == "ground" and ref is not None:
            out.append(ground_example(scene, ref))
        elif t == "core" and ref is not None:
            out.append(core_example(scene, ref.object_id, rng, crop_short_side=crop_short_side))
        elif t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected one of {TASKS}")
    return out


def corpus_lines(n_scenes=400, seed=0):
    """Prompt and answer lines of ``n_scenes`` training scenes (text only; the tokenizer's
    BPE is trained on them so class names and prompt words are few tokens)."""
    from .scenes import make_scene

    rng = np.random.default_rng([9, seed])
    lines = []
    for i in range(n_scenes):
        s = make_scene(seed, i, size=64)
        e = segment_example(s, rng)
        lines += [e.prompt, e.answer.replace("<mask>", "")]
        for r in s.referring:
            lines.append(refer_task.GROUND_PROMPT.format(r.text))
    lines += [depth_task.DATASET_PROMPT.format(T.DEPTH_DATASET), refer_task.CORE_PROMPT,
              "The results are 0 for and 1 for", "This is the", ", ".join(T.CLASSES), ", ".join(T.COLOURS)]
    return lines
