"""Depth estimation (notes 7): ``<custom_1>..<custom_1000>`` logits of the vision tokens,
x2 bilinear upsampling, argmax -> bins, bilinear resize to the image, dequantisation."""
from __future__ import annotations

import numpy as np

from .. import _core
from ..data import tables as scene_tables
from ..results import DepthResult
from .common import check_task_keywords, grid_logits, merged_px, over_images, resize_rgb, run_turn, timed, to_rgb

NBINS = 1000
# dataset -> (quantisation, min metres, max metres) onto bins 1..1000 (paper App. D.3)
RANGES = {
    "NYUv2": ("linear", 0.0, 10.0),
    "Cityscapes": ("linear", 0.0, 80.0),
    "DDAD": ("linear", 0.05, 120.0),
    None: ("log", 0.5, 100.0),  # open world, focal length normalised to 2000 px
    # the procedural scenes the default model is trained on (densemllm.data.tables)
    scene_tables.DEPTH_DATASET: ("linear", scene_tables.DEPTH_MIN_M, scene_tables.DEPTH_MAX_M),
}
FOCAL_PX = 2000.0
OPEN_PROMPT = "Estimate the depth."
DATASET_PROMPT = "Please estimate the depth of this image from the {} dataset."  # goes before the image


def _dataset(name):
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"dataset must be None or a name, got {name!r}")
    for k in RANGES:
        if k is not None and k.lower() == name.strip().lower():
            return k
    names = ", ".join(repr(k) for k in RANGES if k is not None)
    raise ValueError(f"unknown depth dataset {name!r}; use None (open world) or one of {names}")


def bin_ids(model):
    ids = [model.tokenizer.token_to_id(f"<custom_{b}>") for b in range(1, NBINS + 1)]
    if any(i is None for i in ids):
        raise ValueError("this tokenizer lacks the depth tokens <custom_1>..<custom_1000>")
    vocab = model.config.text.vocab_size
    if any(not 0 <= i < vocab for i in ids):
        raise ValueError("depth token ids lie outside the model vocabulary")
    return [(int(i),) for i in ids]


@over_images
def depth(model, image, dataset=None, focal_length=None, *, prompt=None, max_new_tokens=32,
          **gen) -> DepthResult:
    """Metric depth (float32 [H, W] metres, NaN invalid) from one prefill.

    ``dataset`` ("NYUv2" | "Cityscapes" | "DDAD"): the dataset prompt goes before the
    image and bins dequantise linearly over that dataset's range. ``dataset=None``:
    open world, log-uniform 0.5-100 m. The model assumes a 2000 px focal length: with
    ``focal_length`` (pixels, of this image) the image is resized by 2000/f first and
    the depth is corrected by the remaining ratio f_eff/2000 (f_eff = f times the
    preprocessed/original size ratio, geometric mean of both axes), so the result is
    metric; without it the open-world depth is relative (``metric=False``). A list of
    images gives a list of results."""
    check_task_keywords("depth", gen)
    ds = _dataset(dataset)
    mode, dmin, dmax = RANGES[ds]
    rgb = to_rgb(image)
    H, W = rgb.shape[:2]
    if focal_length is not None:
        if ds is not None:
            raise ValueError("focal_length applies to open-world depth (dataset=None) only")
        if not (isinstance(focal_length, (int, float)) and np.isfinite(focal_length) and focal_length > 0):
            raise ValueError(f"focal_length must be a positive number of pixels, got {focal_length!r}")
        s = FOCAL_PX / float(focal_length)
        model_rgb = resize_rgb(rgb, (max(1, round(H * s)), max(1, round(W * s))))
    else:
        model_rgb = rgb
    groups = bin_ids(model)
    if prompt is None:
        prompt = DATASET_PROMPT.format(ds) if ds else OPEN_PROMPT
    turn = run_turn(model, model_rgb, prompt, image_first=ds is None, max_new_tokens=max_new_tokens, **gen)
    gh2, gw2 = turn.grid
    corr = 1.0
    if focal_length is not None:
        px = merged_px(model)  # the preprocessed size is the token grid times this
        f_eff = float(focal_length) * np.sqrt((gh2 * px / H) * (gw2 * px / W))
        corr = f_eff / FOCAL_PX
    timings = dict(turn.timings)
    with timed(timings, "dense"):
        z = grid_logits(turn, groups)
        bins = _core.dense_upsample_argmax(z, (2 * gh2, 2 * gw2)) + 1
        fb = _core.dense_upsample_bilinear(bins.astype(np.float32)[..., None], (H, W))[..., 0]
        d = _core.dense_depth_dequantize(np.ascontiguousarray(fb), mode, dmin, dmax, NBINS, corr)
    return DepthResult(d, bins.astype(np.int32), turn.text, ds,
                       metric=ds is not None or focal_length is not None, timings=timings, image=rgb)
