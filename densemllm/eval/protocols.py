"""The paper's benchmark protocols (notes section 8, paper Appendix D), one object per
benchmark. A protocol turns a loaded model into a *predictor*: a callable
``(image uint8 [H, W, 3], sample dict) -> prediction`` in the dataset's terms
(segmentation labels in the dataset's class indices, depth in metres at the image size,
a bool referring mask). Predictors of other models plug into the same runner.

Segmentation (:class:`SegProtocol`): per image (and per crop) the dataset's class names
are shuffled by a RNG seeded with (protocol seed, image id), so every run, resume and
worker writes the same prompt for the same image. The keyword is the shuffled names
joined by ", " plus ", without the background class" (background=False), placed into
a template: ``Segment: {keyword}.`` for COCO-Stuff, Context59, VOC20 and Cityscapes;
ADE20K samples the template from the paper's open-world list (D.1), which contains the
fixed form too. Input scale x4 (ADE20K), x3 (COCO-Stuff, Context59, VOC20), x2 with 2x2
non-overlapping crops merged back (Cityscapes). ``crf=True`` by default: the paper
applies a temperature-0.2 softmax and DenseCRF to every segmentation benchmark
evaluated without background; the flag is passed to ``model.segment`` as is.

Label mapping (:func:`map_labels`): ``model.segment`` labels index the model's own
``<ref>`` list (``result.class_names``). Each name is looked up in the dataset's class
list (exact, then case-insensitive, after stripping); a name the dataset does not have,
and the ``<OTHERS>`` background channel, map to the dataset's "no prediction" value,
its ignore index (255). Such pixels belong to no class: they count as wrong wherever
the ground truth has a class, and never as a false positive.

Depth (:class:`DepthProtocol`): the dataset prompt before the image ("Please estimate
the depth of this image from the NYUv2 dataset."), input x3 for NYUv2 and x1 for
Cityscapes / DDAD; the model's bin grid (x2 of the token grid) is resized bilinearly to
the ORIGINAL image size and dequantised linearly over the dataset range (NYUv2 0-10 m,
Cityscapes 0-80 m, DDAD 0.05-120 m; ``densemllm.tasks.depth.RANGES``).

Referring (:class:`ReferProtocol`): ``model.refer`` (grounding, box drawn in a random
colour seeded per sample, 1.2x crop, short side 1280, "Segment the core target.").
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

__all__ = ["SegProtocol", "DepthProtocol", "ReferProtocol", "PROTOCOLS", "default_protocol",
           "register_protocol", "map_labels", "sample_rng", "OPEN_WORLD_SEG_PROMPTS", "FIXED_SEG_PROMPT"]

FIXED_SEG_PROMPT = "Segment: {keyword}."
WITHOUT_BACKGROUND = ", without the background class"
OTHERS = "<OTHERS>"

# Paper Appendix D.1, "Semantic Segmentation for the Open World", verbatim (its typo
# "seamntic" and its two duplicates kept; one garbled line, `{keyword}." }.`, read as
# `{keyword}.`). ADE20K samples its prompt from this list.
OPEN_WORLD_SEG_PROMPTS = (
    'Please perform segmentation for the following classes: {keyword}.',
    'Can you identify and segment these objects: {keyword}?',
    "I'm looking for {keyword}. Please segment them in the image.",
    'Segment the image based on these keywords: {keyword}.',
    'Mark the regions corresponding to: {keyword} in the image.',
    'Identify the boundaries of these objects: {keyword}.',
    'Please label and segment the following categories: {keyword}.',
    'Show me the segmentation mask for: {keyword}.',
    'Create segmentation maps for these items: {keyword}.',
    'Locate and segment the following objects: {keyword}.',
    'Segment the image to highlight: {keyword}.',
    'Distinguish and segment these classes: {keyword}.',
    'Please provide segmentation for objects: {keyword}.',
    'Identify and separate the following elements: {keyword}.',
    'Generate segmentation for the specified classes: {keyword}.',
    'Semantic segmentation for {keyword}.',
    'Perform semantic segmentation for {keyword}.',
    'Run seamntic segmentation: {keyword}.',
    'Segment: {keyword}.',
    'Semantic segmentation: {keyword}.',
    'Find {keyword} and segment.',
    'Segment these: {keyword}.',
    'Segment {keyword}.',
    'Segment {keyword}.',
    'Segment and label {keyword}.',
    'Please segment {keyword}.',
    'Could you please segment objects classified as: {keyword}?',
    'Provide a detailed segmentation of the following: {keyword}.',
    'Perform pixel-level segmentation for: {keyword}.',
    'Mark and segment the specified classes: {keyword}.',
    'Generate a segmented output focusing on: {keyword}.',
    'Show segmentation results highlighting: {keyword}.',
    'Can you segment and annotate the following keywords: {keyword}?',
    'Provide segmentation masks specifically for: {keyword}.',
    'Please segment any visible {keyword} in the image.',
    'Produce a segmentation mask isolating {keyword}.',
    'Segment and highlight the regions occupied by {keyword}.',
    'Perform semantic segmentation targeting: {keyword}.',
    'Segment and classify the following entities: {keyword}.',
    'Mark the presence and segment the {keyword} in the image.',
    'Generate masks that segment the {keyword} clearly.',
    'Create a detailed segmentation for the objects: {keyword}.',
    'Generate segmentation annotations for: {keyword}.',
    'Provide a detailed semantic segmentation of the following categories: {keyword}.',
    'Perform pixel-level semantic segmentation for: {keyword}.',
    'Create precise semantic segmentation boundaries around these classes: {keyword}.',
    'Generate a semantic segmentation output focusing on: {keyword}.',
    'Segment {keyword} in the image.',
    'Show semantic segmentation for {keyword}.',
    'Find and segment {keyword}.',
    'Please segment {keyword}.',
    'Segment {keyword} categories.',
    'Show {keyword} segmentation.',
    'Classify and segment {keyword}.',
    'Generate segmentation annotations for: {keyword}.',
)


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, sample id): same prompt on every run."""
    h = hashlib.sha256(f"{int(seed)}:{sample_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def _norm(name: str) -> str:
    return name.strip()


def map_labels(result, dataset_classes, no_prediction: int = 255) -> np.ndarray:
    """int32 labels in the dataset's class indices from a SegmentResult (see module doc)."""
    exact = {_norm(c): i for i, c in enumerate(dataset_classes)}
    folded = {}
    for i, c in enumerate(dataset_classes):
        folded.setdefault(_norm(c).lower(), i)
    lut = np.full(len(result.class_names), no_prediction, np.int32)
    for k, name in enumerate(result.class_names):
        n = _norm(name)
        if n == OTHERS:
            continue
        if n in exact:
            lut[k] = exact[n]
        elif n.lower() in folded:
            lut[k] = folded[n.lower()]
    labels = np.asarray(result.labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(lut)):
        raise ValueError(f"segment labels span {int(labels.min())}..{int(labels.max())} but the result names "
                         f"{len(lut)} classes")
    return lut[labels]


def _tiles(h, w, rows, cols):
    ys = [round(i * h / rows) for i in range(rows + 1)]
    xs = [round(j * w / cols) for j in range(cols + 1)]
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(rows) for j in range(cols)]


class _Protocol:
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kind"] = type(self).__name__
        return d

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SegProtocol(_Protocol):
    dataset: str
    scale: float = 1.0
    prompts: tuple = (FIXED_SEG_PROMPT,)
    crops: tuple = (1, 1)
    background: bool = False
    crf: bool = True
    seed: int = 0
    max_new_tokens: int = 1024
    task = "segment"

    def prompt(self, classes, rng):
        """(prompt text, shuffled class names) for one model call."""
        names = [_norm(classes[i]) for i in rng.permutation(len(classes))]
        template = self.prompts[int(rng.integers(len(self.prompts)))] if len(self.prompts) > 1 else self.prompts[0]
        keyword = ", ".join(names) + ("" if self.background else WITHOUT_BACKGROUND)
        return template.format(keyword=keyword), names

    def predictor(self, model, table):
        classes, ignore = list(table["classes"]), int(table.get("ignore_index", 255))
        rows, cols = self.crops

        def predict(image, sample):
            rng = sample_rng(self.seed, sample["id"])
            h, w = image.shape[:2]
            out = np.full((h, w), ignore, np.int32)
            for y0, y1, x0, x1 in _tiles(h, w, rows, cols):
                text, names = self.prompt(classes, rng)
                r = model.segment(np.ascontiguousarray(image[y0:y1, x0:x1]), names, background=self.background,
                                  crf=self.crf, scale=self.scale, prompt=text, max_new_tokens=self.max_new_tokens)
                out[y0:y1, x0:x1] = map_labels(r, classes, ignore)
            return out

        return predict


@dataclass(frozen=True)
class DepthProtocol(_Protocol):
    dataset: str
    prompt_dataset: str = "NYUv2"
    scale: float = 1.0
    clip_predictions: bool = True
    max_new_tokens: int = 32
    task = "depth"

    def depth_range(self):
        from ..tasks.depth import RANGES

        return RANGES[self.prompt_dataset]

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["range"] = list(self.depth_range())
        return d

    def predictor(self, model, table):
        from .. import _core
        from ..tasks.common import scaled
        from ..tasks.depth import NBINS

        mode, lo, hi = self.depth_range()

        def predict(image, sample):
            h, w = image.shape[:2]
            r = model.depth(scaled(image, self.scale), dataset=self.prompt_dataset,
                            max_new_tokens=self.max_new_tokens)
            if r.depth.shape == (h, w):
                return r.depth
            # the bin grid straight to the original size (no second resampling)
            fb = _core.dense_upsample_bilinear(np.ascontiguousarray(r.bins, np.float32)[..., None], (h, w))[..., 0]
            return _core.dense_depth_dequantize(np.ascontiguousarray(fb), mode, lo, hi, NBINS, 1.0)

        return predict


@dataclass(frozen=True)
class ReferProtocol(_Protocol):
    dataset: str
    crop_short_side: int = 1280
    seed: int = 0
    max_new_tokens: int = 64
    task = "refer"

    def predictor(self, model, table):
        def predict(image, sample):
            rng = sample_rng(self.seed, sample["id"])
            r = model.refer(image, sample["meta"]["expression"], crop_short_side=self.crop_short_side,
                            seed=int(rng.integers(2 ** 31)), max_new_tokens=self.max_new_tokens)
            return r.mask

        return predict


PROTOCOLS = {
    "ade20k": SegProtocol("ade20k", scale=4.0, prompts=OPEN_WORLD_SEG_PROMPTS),
    "coco_stuff164k": SegProtocol("coco_stuff164k", scale=3.0),
    "pascal_context59": SegProtocol("pascal_context59", scale=3.0),
    "voc20": SegProtocol("voc20", scale=3.0),
    "cityscapes": SegProtocol("cityscapes", scale=2.0, crops=(2, 2)),
    "nyuv2": DepthProtocol("nyuv2", "NYUv2", scale=3.0),
    "cityscapes_depth": DepthProtocol("cityscapes_depth", "Cityscapes", scale=1.0),
    "ddad": DepthProtocol("ddad", "DDAD", scale=1.0),
    "refcoco": ReferProtocol("refcoco"),
    "refcoco+": ReferProtocol("refcoco+"),
    "refcocog": ReferProtocol("refcocog"),
}


def register_protocol(protocol, *, replace=False):
    if protocol.dataset in PROTOCOLS and not replace:
        raise ValueError(f"a protocol for {protocol.dataset!r} is already registered (replace=True to override)")
    PROTOCOLS[protocol.dataset] = protocol
    return protocol


def default_protocol(table: dict):
    """The paper's protocol of a dataset; a dataset registered without one gets the
    plain form of its task (x1, fixed prompt)."""
    p = PROTOCOLS.get(table["name"])
    if p is not None:
        return p
    return {"segment": SegProtocol, "depth": DepthProtocol, "refer": ReferProtocol}[table["task"]](table["name"])


def metric_for(table: dict, protocol):
    from .metrics import DepthMetric, ReferMetric, SegMetric

    if table["task"] == "segment":
        return SegMetric(len(table["classes"]), int(table.get("ignore_index", 255)), table["classes"])
    if table["task"] == "depth":
        lo, hi = float(table.get("min_depth_eval", 0.0)), float(table.get("max_depth_eval", np.inf))
        clip = (max(lo, 1e-3), hi) if getattr(protocol, "clip_predictions", False) and np.isfinite(hi) else None
        return DepthMetric(lo, hi, table.get("eval_crop"), pred_clip=clip)
    return ReferMetric()
