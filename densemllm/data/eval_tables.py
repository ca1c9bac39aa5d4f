"""The procedural scenes as datasets of the evaluation harness (densemllm.eval): one
table per task over the layout :mod:`densemllm.data.layout` writes, the referring
reader, and the protocols of the small default model.

    densemllm.data.write_heldout("data/scenes")          # 200 held-out scenes
    densemllm eval --dataset scenes --data-root data/scenes        (mIoU)
    densemllm eval --dataset scenes_depth --data-root data/scenes  (delta1, AbsRel, ...)
    densemllm eval --dataset scenes_refer --data-root data/scenes  (cIoU, gIoU)

Segmentation and depth reuse the harness' mmseg readers (``seg_dir``, ``nyu``: the
layout is theirs); referring expressions come from ``referring/{split}.json`` with the
mask read from the instance PNG.
"""
from __future__ import annotations

import json

from . import tables as T
from .prompts import DEFAULT_CROP_SHORT_SIDE

__all__ = ["SCENES", "SCENES_DEPTH", "SCENES_REFER", "TABLES", "register"]

_ROOT_NAMES = ("scenes",)

SCENES = dict(
    name="scenes", task="segment", reader="seg_dir", root_names=_ROOT_NAMES,
    layout=dict(img_dir="images/{split}", ann_dir="annotations/{split}", img_suffix=".png", seg_suffix=".png",
                split_file=None),
    splits=("val",), default_split="val",
    classes=T.CLASSES, palette=T.PALETTE, ignore_index=T.IGNORE_INDEX, reduce_zero_label=T.REDUCE_ZERO_LABEL,
    paper={},
)
SCENES_DEPTH = dict(
    name="scenes_depth", task="depth", reader="nyu", root_names=_ROOT_NAMES,
    layout=dict(img_dir="images/{split}", ann_dir="depth/{split}", img_suffix=".png", depth_suffix=".png"),
    splits=("val",), default_split="val",
    depth_scale=1.0 / T.DEPTH_PNG_SCALE, min_depth_eval=1e-3, max_depth_eval=T.DEPTH_MAX_M, eval_crop=None,
    paper={},
)
SCENES_REFER = dict(
    name="scenes_refer", task="refer", reader="scenes_refer", root_names=_ROOT_NAMES,
    layout=dict(refs="referring/{split}.json", img_dir="images/{split}", inst_dir="instances/{split}",
                img_suffix=".png"),
    splits=("val",), default_split="val", paper={},
)
TABLES = (SCENES, SCENES_DEPTH, SCENES_REFER)


def list_scene_refs(table, root, split):
    from ..eval.datasets.base import DatasetError, Sample, need_dir

    lay = table["layout"]
    refs_path = root / lay["refs"].format(split=split)
    if not refs_path.is_file():
        raise FileNotFoundError(f"missing file {refs_path} (scenes referring expressions, split {split!r})")
    img_dir = need_dir(root / lay["img_dir"].format(split=split), f"scenes images, split {split!r}")
    inst_dir = need_dir(root / lay["inst_dir"].format(split=split), f"scenes instance maps, split {split!r}")
    try:
        refs = json.loads(refs_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{refs_path}: not valid JSON ({e})") from None
    out, count = [], {}
    for r in refs:
        try:
            name, expr, oid = str(r["image"]), str(r["expression"]), int(r["object_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{refs_path}: an entry lacks image/expression/object_id ({e})") from e
        img, inst = img_dir / (name + lay["img_suffix"]), inst_dir / (name + ".png")
        for p, what in ((img, "image"), (inst, "instance map")):
            if not p.is_file():
                raise FileNotFoundError(f"missing {what} {p} named by {refs_path}")
        k = count[name] = count.get(name, -1) + 1
        # the object id is ground truth: kept in `annotation`, away from predictors
        out.append(Sample(f"{name}#{k}", img, inst, {"expression": expr, "image_name": name}, annotation=oid))
    if not out:
        raise DatasetError(f"{refs_path}: no referring expressions")
    return out


def load_scene_ref_target(table, sample, image_hw):
    from ..eval.datasets.base import DatasetError, read_index_png

    inst = read_index_png(sample.target)
    if inst.shape != tuple(image_hw):
        raise DatasetError(f"instance map {sample.target} is {inst.shape[1]}x{inst.shape[0]} (WxH) but its image "
                           f"{sample.image} is {image_hw[1]}x{image_hw[0]}")
    mask = inst == int(sample.annotation)
    if not mask.any():
        raise DatasetError(f"{sample.target}: object {sample.annotation} of {sample.id} has no pixel")
    return mask


def _refer_protocol():
    import numpy as np

    from ..eval.protocols import ReferProtocol, sample_rng
    from ..parse import ParseError

    class SceneReferProtocol(ReferProtocol):
        """ReferProtocol whose answer with a malformed box (a weak model's) gives an empty
        mask, counted as a miss, instead of stopping the run."""

        def predictor(self, model, table):
            def predict(image, sample):
                rng = sample_rng(self.seed, sample["id"])
                try:
                    r = model.refer(image, sample["meta"]["expression"], crop_short_side=self.crop_short_side,
                                    seed=int(rng.integers(2 ** 31)), max_new_tokens=self.max_new_tokens)
                except ParseError:
                    return np.zeros(image.shape[:2], bool)
                return r.mask

            return predict

    # a module-level name, so worker processes can unpickle protocols holding it
    SceneReferProtocol.__module__, SceneReferProtocol.__qualname__ = __name__, "SceneReferProtocol"
    globals()["SceneReferProtocol"] = SceneReferProtocol
    return SceneReferProtocol("scenes_refer", crop_short_side=DEFAULT_CROP_SHORT_SIDE, max_new_tokens=32)


def __getattr__(name):  # SceneReferProtocol exists once densemllm.eval has registered the scenes
    if name == "SceneReferProtocol":
        import densemllm.eval  # noqa: F401  (runs register())

        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register():
    """Add the three tables, the referring reader and the default model's protocols to
    the harness' registries (idempotent)."""
    from ..eval import datasets, protocols

    datasets.READERS.setdefault("scenes_refer", (list_scene_refs, load_scene_ref_target))
    for t in TABLES:
        if t["name"] not in datasets.REGISTRY:
            datasets.register(t)
    for p in (protocols.SegProtocol("scenes", scale=1.0, crf=False, max_new_tokens=128),
              protocols.DepthProtocol("scenes_depth", prompt_dataset=T.DEPTH_DATASET, scale=1.0),
              _refer_protocol()):
        protocols.PROTOCOLS.setdefault(p.dataset, p)
