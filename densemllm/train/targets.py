"""Dense targets from annotations: one target per merged vision token.

A merged vision token covers a (patch * merge)^2 pixel block of the *preprocessed*
image (32 x 32 px for Youtu-VL), row-major over the (gh/2, gw/2) grid, the order of
the image pads in the prompt and of dense decoding. Annotations come at the original
image size and are resized to the model's input exactly as the image is: same
target size (densemllm.vision.preprocess), nearest neighbour for labels (Pillow's
rule: output pixel y reads input row floor((y + 0.5) * H_in / H_out)).

Specs (what a Sample carries; no model needed to build them):
- Segmentation(label_map, classes, ignore_index=255, prompt_classes=None)
- Depth(depth, dataset="NYUv2", rule="median")
- Referring(mask)
``build(model, spec, image_size, model_size)`` turns a spec into DenseTargets (token
ids from the model's tokenizer, never hard-coded). Rules: docs/training.md, "Dense targets".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..tasks.common import class_ids
from ..tasks.depth import NBINS, RANGES, _dataset, bin_ids

__all__ = ["Segmentation", "Depth", "Referring", "DenseTargets", "build", "resize_nearest", "depth_to_bins",
           "bins_to_depth"]


@dataclass
class DenseTargets:
    """NTP-M targets of one image's L = gh2 * gw2 vision tokens.

    positives: L int64 arrays, the positive ids of each token (multi-label).
    labels: int64 [L], the single-label target (the majority class's first id; -1 =
        no label), for the ablation ``variant="ntp_ce"``.
    valid_sets: int64 arrays; token i's valid ids are valid_sets[token_set[i]] (an
        empty set masks the token: no annotation there).
    """
    kind: str
    grid: tuple
    positives: list
    labels: np.ndarray
    valid_sets: list
    token_set: np.ndarray

    @property
    def n_tokens(self):
        return len(self.positives)

    def valid_per_token(self):
        return [self.valid_sets[s] for s in self.token_set]


@dataclass
class Segmentation:
    """label_map: int [H, W] at the image's size, values = indices into ``classes``
    (or ignore_index). classes: class names (label value i -> classes[i]) or a dict
    {label value: name}. prompt_classes: the names the sample's prompt lists (default:
    every class): their ids form the valid set M_i of the paper; each must be one of
    ``classes``."""
    label_map: np.ndarray
    classes: object
    ignore_index: int = 255
    prompt_classes: object = None


@dataclass
class Depth:
    """depth: float [H, W] metres at the image's size; 0 or NaN = invalid. dataset:
    "NYUv2" | "Cityscapes" | "DDAD" (linear bins over its range) or None (open world,
    log-uniform 0.5-100 m). rule: "median" (one positive, the bin of the median valid
    depth of the token's pixels) or "present" (every bin present among them)."""
    depth: np.ndarray
    dataset: object = "NYUv2"
    rule: str = "median"


@dataclass
class Referring:
    """mask: bool / {0, 1} [H, W] at the image's size; 1 = the referred object (<FG>)."""
    mask: np.ndarray


def resize_nearest(a, size_hw):
    """Nearest-neighbour resize of a [H, W] map to size_hw (Pillow's NEAREST rule)."""
    H, W = a.shape[:2]
    h, w = int(size_hw[0]), int(size_hw[1])
    if (h, w) == (H, W):
        return a
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return a[rows[:, None], cols[None, :]]


def _blocks(a, block):
    """[H, W] -> [L, block*block] pixel blocks of the merged tokens, row-major."""
    H, W = a.shape
    gh2, gw2 = H // block, W // block
    return a.reshape(gh2, block, gw2, block).transpose(0, 2, 1, 3).reshape(gh2 * gw2, block * block)


def _check_map(a, what, image_size):
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D [H, W] map, got shape {a.shape}")
    if tuple(a.shape) != tuple(image_size):
        raise ValueError(f"{what}: its size {a.shape[1]}x{a.shape[0]} (WxH) differs from the image's "
                         f"{image_size[1]}x{image_size[0]}; annotations must be at the image's size")
    return a


def _merge_px(model):
    v = model.config.vision
    return int(v.patch_size) * int(v.spatial_merge_size)


def _grid(model_size, block):
    H, W = int(model_size[0]), int(model_size[1])
    if H % block or W % block or H < block or W < block:
        raise ValueError(f"model input size {H}x{W} is not a whole number of {block} px vision tokens")
    return H // block, W // block


# ----------------------------------------------------------------------------------
# segmentation
def _class_table(model, spec):
    classes = spec.classes
    if isinstance(classes, dict):
        table = {}
        for k, n in classes.items():
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
                raise ValueError(f"classes: label values must be integers >= 0, got {k!r}")
            table[int(k)] = n
    elif isinstance(classes, str) or not hasattr(classes, "__len__"):
        raise TypeError("classes must be a list of names (label value i -> classes[i]) or a {value: name} dict")
    else:
        table = dict(enumerate(classes))
    if not table:
        raise ValueError("classes is empty")
    for k, n in table.items():
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"classes[{k}]: expected a class name, got {n!r}")
    if spec.ignore_index in table:
        raise ValueError(f"ignore_index {spec.ignore_index} is also a class value ({table[spec.ignore_index]!r})")
    names = {k: n.strip() for k, n in table.items()}
    ids = {k: np.asarray(class_ids(model, n, "class"), np.int64) for k, n in names.items()}
    if spec.prompt_classes is None:
        keep = sorted(names)
    else:
        pc = [spec.prompt_classes] if isinstance(spec.prompt_classes, str) else list(spec.prompt_classes)
        by_name = {n: k for k, n in names.items()}
        unknown = [n for n in pc if not isinstance(n, str) or n.strip() not in by_name]
        if unknown:
            raise ValueError(f"prompt_classes: unknown class name(s) {unknown}; known: {sorted(by_name)}")
        keep = sorted(by_name[n.strip()] for n in pc)
    return names, ids, keep


def _segmentation(model, spec, image_size, model_size):
    lm = _check_map(spec.label_map, "label_map", image_size)
    if lm.dtype == np.bool_ or not np.issubdtype(lm.dtype, np.integer):
        raise TypeError(f"label_map: expected integer labels, got dtype {lm.dtype}")
    names, ids, keep = _class_table(model, spec)
    values = np.unique(lm)
    bad = [int(v) for v in values if int(v) not in names and int(v) != spec.ignore_index]
    if bad:
        raise ValueError(f"label_map: values {bad[:10]} are neither class values {sorted(names)[:10]}... nor "
                         f"ignore_index {spec.ignore_index}")
    block = _merge_px(model)
    grid = _grid(model_size, block)
    blocks = _blocks(resize_nearest(lm, model_size).astype(np.int64), block)
    L = blocks.shape[0]
    vals = sorted(names)
    vals_arr = np.asarray(vals, np.int64)
    flat = blocks.reshape(-1)
    at = np.minimum(np.searchsorted(vals_arr, flat), len(vals) - 1)
    cls = np.where(vals_arr[at] == flat, at, -1)  # ignore_index (not a class value) -> -1
    tok = np.repeat(np.arange(L), blocks.shape[1])
    m = cls >= 0
    counts = np.bincount(tok[m] * len(vals) + cls[m], minlength=L * len(vals)).reshape(L, len(vals))
    valid_ids = np.unique(np.concatenate([ids[v] for v in keep]))
    keep_set = set(keep)
    positives, labels = [], np.full(L, -1, np.int64)
    token_set = np.zeros(L, np.int64)
    for i in range(L):
        present = [vals[j] for j in np.flatnonzero(counts[i])]
        if not present:  # wholly ignored: no annotation, the token is masked
            token_set[i] = 1
            positives.append(np.zeros(0, np.int64))
            continue
        positives.append(np.unique(np.concatenate([ids[v] for v in present])))
        major = vals[int(np.argmax(counts[i]))]  # ties: the lower class value
        if major in keep_set:
            labels[i] = ids[major][0]
    return DenseTargets("segmentation", grid, positives, labels, [valid_ids, np.zeros(0, np.int64)], token_set)


# ----------------------------------------------------------------------------------
# depth
def depth_to_bins(depth, dataset="NYUv2"):
    """Bins 1..1000 of depths (metres), the exact inverse of the decoder's
    dequantisation (csrc/dense/dense.c, dense_depth_dequantize): linear
    b = 1 + round((d - dmin) / (dmax - dmin) * 999), log b = 1 + round(ln(d / dmin) /
    ln(dmax / dmin) * 999), clipped to [1, 1000]; 0 for invalid (0, negative, NaN)."""
    mode, dmin, dmax = RANGES[_dataset(dataset)]
    dmin, dmax = float(np.float32(dmin)), float(np.float32(dmax))  # the decoder takes them as float32
    d = np.asarray(depth, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0)
    if mode == "linear":
        f = (d - dmin) / (dmax - dmin)
    else:
        f = np.log(np.where(ok, d, 1.0) / dmin) / math.log(dmax / dmin)
    b = 1 + np.rint(np.where(ok, f, 0.0) * (NBINS - 1))
    return np.where(ok, np.clip(b, 1, NBINS), 0).astype(np.int64)


def bins_to_depth(bins, dataset="NYUv2"):
    """The decoder's dequantisation of bins (the C kernel the depth task uses)."""
    from .. import _core

    mode, dmin, dmax = RANGES[_dataset(dataset)]
    b = np.ascontiguousarray(bins, dtype=np.float32)
    return _core.dense_depth_dequantize(b, mode, dmin, dmax, NBINS, 1.0)


def _depth(model, spec, image_size, model_size):
    d = _check_map(spec.depth, "depth", image_size)
    if not np.issubdtype(d.dtype, np.floating):
        d = d.astype(np.float64)
    if spec.rule not in ("median", "present"):
        raise ValueError(f"Depth.rule must be 'median' or 'present', got {spec.rule!r}")
    ok = np.isfinite(d) & (d > 0)
    if not ok.any():
        raise ValueError("depth: the map has no valid pixel (all are 0, negative or NaN)")
    bid = np.asarray([g[0] for g in bin_ids(model)], np.int64)  # <custom_1>..<custom_1000>
    block = _merge_px(model)
    grid = _grid(model_size, block)
    blocks = _blocks(resize_nearest(np.where(ok, d, np.nan), model_size).astype(np.float64), block)
    L = blocks.shape[0]
    positives, labels = [], np.full(L, -1, np.int64)
    token_set = np.zeros(L, np.int64)
    for i in range(L):
        px = blocks[i][np.isfinite(blocks[i])]
        if px.size == 0:
            token_set[i] = 1
            positives.append(np.zeros(0, np.int64))
            continue
        # the median of an even count is the mean of the two middle values (np.median)
        b = int(depth_to_bins(np.median(px), spec.dataset))
        labels[i] = bid[b - 1]
        if spec.rule == "median":
            positives.append(np.array([bid[b - 1]], np.int64))
        else:
            positives.append(bid[np.unique(depth_to_bins(px, spec.dataset)) - 1])
    return DenseTargets("depth", grid, positives, labels, [np.sort(bid), np.zeros(0, np.int64)], token_set)


# ----------------------------------------------------------------------------------
# referring
def _referring(model, spec, image_size, model_size):
    m = _check_map(spec.mask, "mask", image_size)
    if m.dtype != np.bool_:
        u = np.unique(m)
        if not np.isin(u, (0, 1)).all():
            raise ValueError(f"mask: expected a binary mask (bool or 0/1), got values {u[:5].tolist()}")
    tok = model.tokenizer
    fg, bg = tok.token_to_id("<FG>"), tok.token_to_id("<BG>")
    if fg is None or bg is None:
        raise ValueError("this tokenizer lacks the <FG> / <BG> tokens")
    block = _merge_px(model)
    grid = _grid(model_size, block)
    frac = _blocks(resize_nearest(m.astype(np.uint8), model_size), block).mean(axis=1)
    L = frac.shape[0]
    positives = []
    for f in frac:
        p = ([bg] if f < 1 else []) + ([fg] if f > 0 else [])  # both where the boundary crosses the token
        positives.append(np.array(sorted(p), np.int64))
    labels = np.where(frac > 0.5, fg, bg).astype(np.int64)  # majority; a tie goes to <BG>
    return DenseTargets("referring", grid, positives, labels, [np.array(sorted((fg, bg)), np.int64)],
                        np.zeros(L, np.int64))


_BUILDERS = {Segmentation: _segmentation, Depth: _depth, Referring: _referring}


def build(model, spec, image_size, model_size) -> DenseTargets:
    """DenseTargets of `spec` for an image of image_size (H, W) that the model sees at
    model_size (H, W) (densemllm.vision.preprocess(...).size). `model` supplies the
    tokenizer and config (a densemllm.Model or TrainableModel)."""
    fn = _BUILDERS.get(type(spec))
    if fn is None:
        raise TypeError(f"dense: expected Segmentation, Depth or Referring, got {type(spec).__name__}")
    return fn(model, spec, tuple(int(s) for s in image_size), tuple(int(s) for s in model_size))
