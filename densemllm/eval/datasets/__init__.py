"""Dataset readers over the standard on-disk layouts, one plain-data table per dataset.

``REGISTRY`` maps a dataset name to its table (``tables.py``); ``READERS`` maps a
table's ``reader`` to (list samples, load ground truth). Adding a dataset is one table
plus, when its layout is new, one reader entry::

    from densemllm.eval import datasets
    datasets.register(dict(name="scenes", task="segment", reader="seg_dir", ...))

``get_dataset(name, data_root, split=None) -> Dataset``.
"""
from __future__ import annotations

from . import tables
from .base import Dataset, DatasetError, Sample, resolve_root
from .depth import (list_cityscapes_depth, list_ddad, list_nyu, load_cityscapes_depth, load_ddad_depth,
                    load_png_depth)
from .refcoco import list_refcoco, load_refcoco_target
from .safe_pickle import UnsafePickleError, load_plain_pickle
from .seg import list_seg_dir, load_seg_target

__all__ = ["REGISTRY", "READERS", "register", "get_dataset", "names", "Dataset", "Sample", "DatasetError",
           "UnsafePickleError", "load_plain_pickle", "check_table"]

# reader name -> (list_samples(table, root, split), load_target(table, sample, image_hw))
READERS = {
    "seg_dir": (list_seg_dir, load_seg_target),
    "nyu": (list_nyu, load_png_depth),
    "cityscapes_depth": (list_cityscapes_depth, load_cityscapes_depth),
    "ddad": (list_ddad, load_ddad_depth),
    "refcoco": (list_refcoco, load_refcoco_target),
}

TASKS = ("segment", "depth", "refer")
REGISTRY: dict = {}


def check_table(t: dict, what=None) -> dict:
    """Validate a dataset table; errors name the table and the field."""
    what = what or f"dataset table {t.get('name', '?')!r}"
    if not isinstance(t, dict):
        raise TypeError(f"{what} must be a dict, got {type(t).__name__}")
    for k in ("name", "task", "reader", "layout", "splits", "default_split"):
        if k not in t:
            raise ValueError(f"{what}: missing field {k!r}")
    if not isinstance(t["name"], str) or not t["name"].strip():
        raise ValueError(f"{what}: name must be a non-empty string")
    if t["task"] not in TASKS:
        raise ValueError(f"{what}: task {t['task']!r} is not one of {TASKS}")
    if t["reader"] not in READERS:
        raise ValueError(f"{what}: reader {t['reader']!r} is not one of {sorted(READERS)}")
    if t["default_split"] not in t["splits"]:
        raise ValueError(f"{what}: default_split {t['default_split']!r} is not in splits {list(t['splits'])}")
    if t["task"] == "segment":
        classes, palette = t.get("classes"), t.get("palette")
        if not classes or not all(isinstance(c, str) and c.strip() == c and c for c in classes):
            raise ValueError(f"{what}: classes must be non-empty names without surrounding spaces")
        dup = sorted({c for c in classes if list(classes).count(c) > 1})
        if dup:
            raise ValueError(f"{what}: duplicate class names {dup}")
        if palette is not None and len(palette) != len(classes):
            raise ValueError(f"{what}: {len(palette)} palette colours for {len(classes)} classes")
        if palette is not None and not all(len(c) == 3 and all(0 <= int(v) <= 255 for v in c) for c in palette):
            raise ValueError(f"{what}: palette entries must be (r, g, b) of 0..255")
        ig = t.get("ignore_index", 255)
        if not isinstance(ig, int) or not 0 <= ig <= 65535 or ig < len(classes):
            raise ValueError(f"{what}: ignore_index {ig!r} must be an int >= the {len(classes)} classes")
    if t["task"] == "depth":
        lo, hi = t.get("min_depth_eval", 0.0), t.get("max_depth_eval", float("inf"))
        if not (0 <= lo < hi):
            raise ValueError(f"{what}: need 0 <= min_depth_eval < max_depth_eval, got {lo}, {hi}")
    return t


def register(table: dict, *, replace=False) -> dict:
    """Add a dataset table to the registry (validated)."""
    check_table(table)
    name = table["name"]
    if name in REGISTRY and not replace:
        raise ValueError(f"dataset {name!r} is already registered (replace=True to override)")
    REGISTRY[name] = table
    return table


for _t in tables.ALL:
    register(_t)


def names() -> list:
    return list(REGISTRY)


def table_of(name: str) -> dict:
    if not isinstance(name, str):
        raise TypeError(f"dataset must be a name, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def get_dataset(name: str, data_root, split=None) -> Dataset:
    """The samples of ``split`` (default: the table's evaluation split) under ``data_root``."""
    t = table_of(name)
    split = t["default_split"] if split is None else split
    base = split.split(":", 1)[-1] if t["reader"] == "refcoco" else split
    if base not in t["splits"]:
        raise ValueError(f"{t['name']}: unknown split {split!r}; splits: {', '.join(t['splits'])}")
    list_fn, target_fn = READERS[t["reader"]]
    root = resolve_root(t, data_root)
    return Dataset(t, root, split, list_fn(t, root, split), target_fn)
