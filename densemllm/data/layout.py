"""The procedural scenes on disk, in an mmsegmentation-style layout, and back.

```
ROOT/
  images/SPLIT/NAME.png        RGB uint8
  annotations/SPLIT/NAME.png   class indices (mode L, tables.CLASSES order, 255 = ignore)
  depth/SPLIT/NAME.png         uint16 millimetres (mode I;16), 0 = invalid
  instances/SPLIT/NAME.png     object ids (mode L), 0 = layout
  referring/SPLIT.json         [{"image", "expression", "object_id", "box", "query"}, ...]
  meta/SPLIT.json              {"dataset", "classes", "palette", ..., "scenes": [scene_dict, ...]}
```
Every file is written to a temporary name in its folder and renamed, so an interrupted
write never leaves a truncated file under its final name.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._atomic import atomic_open
from . import tables as T
from .scenes import Camera, Referring, Scene, SceneObject, heldout_scene, scene_dict

__all__ = ["write_split", "write_heldout", "read_split", "read_scene", "read_referring", "scene_names", "depth_to_mm",
           "DIRS"]

DIRS = ("images", "annotations", "depth", "instances")
MAX_DEPTH_MM = 65535


def _atomic(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb", fsync=False) as f:
        write(f)


def _png(path, array, mode=None):
    from PIL import Image

    im = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    _atomic(path, lambda f: im.save(f, format="PNG"))


def _json(path, obj):
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode("utf-8")))


def depth_to_mm(depth) -> np.ndarray:
    """uint16 millimetres of a metre depth map (0 / NaN / negative -> 0 = invalid)."""
    d = np.nan_to_num(np.asarray(depth, np.float64), nan=0.0)
    mm = np.round(np.where(d > 0, d, 0.0) * T.DEPTH_PNG_SCALE)
    if mm.max(initial=0) > MAX_DEPTH_MM:
        raise ValueError(f"depth {mm.max() / T.DEPTH_PNG_SCALE:.3f} m exceeds the PNG range "
                         f"({MAX_DEPTH_MM / T.DEPTH_PNG_SCALE} m)")
    return mm.astype(np.uint16)


def write_split(root, scenes, split="val"):
    """Write ``scenes`` (an iterable of :class:`Scene`) under ``root`` for ``split``;
    returns the list of image names."""
    root = Path(root)
    metas, refs = [], []
    for s in scenes:
        n = s.name
        _png(root / "images" / split / f"{n}.png", s.image)
        _png(root / "annotations" / split / f"{n}.png", s.labels, "L")
        _png(root / "depth" / split / f"{n}.png", depth_to_mm(s.depth).astype(np.uint16))
        _png(root / "instances" / split / f"{n}.png", s.instances, "L")
        metas.append(scene_dict(s))
        for r in s.referring:
            refs.append({"image": n, "expression": r.text, "object_id": r.object_id,
                         "box": list(s.object(r.object_id).box), "query": r.query})
    _json(root / "referring" / f"{split}.json", refs)
    _json(root / "meta" / f"{split}.json", {
        "dataset": "scenes", "classes": list(T.CLASSES), "palette": [list(p) for p in T.PALETTE],
        "ignore_index": T.IGNORE_INDEX, "reduce_zero_label": T.REDUCE_ZERO_LABEL,
        "depth_png_scale": T.DEPTH_PNG_SCALE, "depth_range_m": [T.DEPTH_MIN_M, T.DEPTH_MAX_M],
        "depth_dataset": T.DEPTH_DATASET, "scenes": metas})
    return [m["name"] for m in metas]


def write_heldout(root, n=200, *, size=None, seed=None):
    """Write the fixed held-out split (``n`` scenes, split name "val") under ``root``."""
    kw = {} if seed is None else {"seed": seed}
    return write_split(root, (heldout_scene(i, size=size, **kw) for i in range(int(n))), "val")


def _meta(root, split):
    p = Path(root) / "meta" / f"{split}.json"
    if not p.is_file():
        raise FileNotFoundError(f"no scenes split {split!r} under {root}: {p} is missing")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if meta.get("dataset") != "scenes" or list(meta.get("classes", ())) != list(T.CLASSES):
        raise ValueError(f"{p}: not a scenes split of this version (classes {meta.get('classes')!r}, "
                         f"expected {list(T.CLASSES)})")
    return meta


def scene_names(root, split="val"):
    return [m["name"] for m in _meta(root, split)["scenes"]]


def _read_png(path, shape=None):
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    with Image.open(path) as im:
        a = np.asarray(im)
    if shape is not None and a.shape[:2] != tuple(shape):
        raise ValueError(f"{path}: size {a.shape[:2]} differs from the scene's {tuple(shape)}")
    return a


def read_scene(root, split, meta) -> Scene:
    root = Path(root)
    n = meta["name"]
    shape = tuple(meta["size"])
    image = _read_png(root / "images" / split / f"{n}.png", shape)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{root / 'images' / split / n}.png: expected RGB uint8, got {image.shape} {image.dtype}")
    labels = _read_png(root / "annotations" / split / f"{n}.png", shape).astype(np.uint8)
    bad = (labels >= len(T.CLASSES)) & (labels != T.IGNORE_INDEX)
    if bad.any():
        raise ValueError(f"{root / 'annotations' / split / n}.png: label {int(labels[bad][0])} is neither a class "
                         f"index (< {len(T.CLASSES)}) nor the ignore index {T.IGNORE_INDEX}")
    depth = _read_png(root / "depth" / split / f"{n}.png", shape).astype(np.float32) / np.float32(T.DEPTH_PNG_SCALE)
    instances = _read_png(root / "instances" / split / f"{n}.png", shape).astype(np.uint8)
    objs = [SceneObject(**{**o, "box": tuple(o["box"]) if o["box"] else None,
                           "centroid": tuple(o["centroid"]) if o["centroid"] else None}) for o in meta["objects"]]
    refs = [Referring(r["text"], r["object_id"], r["query"]) for r in meta["referring"]]
    return Scene(image, labels, depth, instances, objs, refs, Camera(**meta["camera"]), meta["split"],
                 meta["seed"], meta["index"])


def read_split(root, split="val", limit=None):
    """Iterate the :class:`Scene` records of a written split (depth at millimetre precision)."""
    metas = _meta(root, split)["scenes"]
    if limit is not None:
        metas = metas[:int(limit)]
    for m in metas:
        yield read_scene(root, split, m)


def read_referring(root, split="val"):
    p = Path(root) / "referring" / f"{split}.json"
    if not p.is_file():
        raise FileNotFoundError(f"missing file {p}")
    return json.loads(p.read_text(encoding="utf-8"))
