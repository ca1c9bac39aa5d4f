"""The mmsegmentation folder layout: ``img_dir/<id><img_suffix>`` beside
``ann_dir/<id><seg_suffix>``, all files (recursively: Cityscapes' city folders) or the
ids of a split file; labels as mmseg's LoadAnnotations reads them."""
from __future__ import annotations

import numpy as np

from .base import DatasetError, Sample, list_with_suffix, need_dir, read_index_png, read_split_file


def list_seg_dir(table: dict, root, split: str) -> list:
    lay = table["layout"]
    img_dir = need_dir(root / lay["img_dir"].format(split=split), f"{table['name']} images, split {split!r}")
    ann_dir = need_dir(root / lay["ann_dir"].format(split=split), f"{table['name']} labels, split {split!r}")
    if lay.get("split_file"):
        ids = read_split_file(root / lay["split_file"].format(split=split))
    else:
        ids = list_with_suffix(img_dir, lay["img_suffix"])
        if not ids:
            raise DatasetError(f"no '*{lay['img_suffix']}' images under {img_dir}")
    samples = []
    for i in ids:
        img = img_dir / (i + lay["img_suffix"])
        ann = ann_dir / (i + lay["seg_suffix"])
        if not img.is_file():
            raise FileNotFoundError(f"missing image {img} (listed for {table['name']} {split})")
        if not ann.is_file():
            raise FileNotFoundError(f"missing label map {ann} for image {img}")
        samples.append(Sample(i, img, ann))
    return samples


def reduce_zero_label(labels: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """mmseg's reduce_zero_label: 0 -> ignore, k -> k - 1 (and ignore stays ignore)."""
    out = labels.astype(np.int64)
    zero = out == 0
    out -= 1
    out[zero] = ignore_index
    out[labels == ignore_index] = ignore_index
    return out


def load_seg_target(table: dict, sample: Sample, image_hw) -> np.ndarray:
    raw = read_index_png(sample.target)
    if raw.shape != tuple(image_hw):
        raise DatasetError(f"label map {sample.target} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image "
                           f"{sample.image} is {image_hw[1]}x{image_hw[0]}")
    ignore = int(table.get("ignore_index", 255))
    labels = reduce_zero_label(raw, ignore) if table.get("reduce_zero_label") else raw.astype(np.int64)
    check_label_values(table, labels, sample.target)
    return labels


def check_label_values(table: dict, labels: np.ndarray, path) -> None:
    """Every label must be a class of the table or the ignore index: a value beyond the
    class list means the table (or the file) is not the dataset's."""
    n = len(table["classes"])
    ignore = int(table.get("ignore_index", 255))
    vals = np.unique(labels)
    bad = vals[((vals < 0) | (vals >= n)) & (vals != ignore)]
    if bad.size:
        raw = bad + 1 if table.get("reduce_zero_label") else bad
        raise DatasetError(
            f"label map {path} holds values {raw[:8].tolist()} that are neither one of the {n} classes of "
            f"the {table['name']!r} table (0..{n - 1}{' after reduce_zero_label' if table.get('reduce_zero_label') else ''}) "
            f"nor the ignore index {ignore}: the class table does not match this dataset")
