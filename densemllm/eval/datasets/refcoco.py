"""RefCOCO / RefCOCO+ / RefCOCOg in the `refer` toolkit layout: ``refs(<split_by>).p``
(read with the restricted unpickler) + ``instances.json``; one sample per sentence,
ground truth = the referred annotation's mask (COCO polygons / RLE)."""
from __future__ import annotations

import json

import numpy as np

from .base import DatasetError, Sample
from .coco_mask import segmentation_to_mask
from .safe_pickle import load_plain_pickle

MAX_JSON_BYTES = 4 << 30


def split_and_by(table: dict, split: str):
    """``"val"`` -> (val, the table's split_by); ``"google:val"`` -> (val, google)."""
    if ":" in split:
        by, s = split.split(":", 1)
        return s, by
    return split, table["split_by"]


def list_refcoco(table: dict, root, split: str) -> list:
    split, by = split_and_by(table, split)
    lay = table["layout"]
    fmt = dict(dataset=table["folder"], split_by=by)
    refs_path = root / lay["refs_file"].format(**fmt)
    inst_path = root / lay["instances"].format(**fmt)
    if not (root / table["folder"]).is_dir():
        raise FileNotFoundError(f"missing folder {root / table['folder']} ({table['name']} annotations)")
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list):
        raise DatasetError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    if not inst_path.is_file():
        raise FileNotFoundError(f"missing file {inst_path}")
    if inst_path.stat().st_size > MAX_JSON_BYTES:
        raise DatasetError(f"{inst_path} is larger than {MAX_JSON_BYTES} bytes")
    try:
        inst = json.loads(inst_path.read_text(encoding="utf-8"))
        images = {int(im["id"]): im for im in inst["images"]}
        anns = {int(a["id"]): a for a in inst["annotations"]}
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{inst_path}: not a COCO instances file with images and annotations ({e})") from e
    image_dir = next((root / d for d in lay["image_dirs"] if (root / d).is_dir()), None)
    if image_dir is None:
        raise FileNotFoundError(f"no COCO train2014 image folder under {root}: looked for "
                                f"{', '.join(lay['image_dirs'])}")
    out = []
    for r in refs:
        try:
            if r["split"] != split:
                continue
            ref_id, ann_id, image_id = int(r["ref_id"]), int(r["ann_id"]), int(r["image_id"])
            sents = r["sentences"]
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{refs_path}: a ref lacks split/ref_id/ann_id/image_id/sentences ({e})") from e
        if ann_id not in anns:
            raise DatasetError(f"{refs_path}: ref {ref_id} names annotation {ann_id}, absent from {inst_path}")
        if image_id not in images:
            raise DatasetError(f"{refs_path}: ref {ref_id} names image {image_id}, absent from {inst_path}")
        im = images[image_id]
        # the image's own file name (the ref's file_name carries an _<ann_id> suffix)
        name = im.get("file_name") or lay["image_name"].format(image_id=image_id)
        for s in sents:
            sent_id = int(s["sent_id"])
            out.append(Sample(
                f"{ref_id}-{sent_id}", image_dir / name, None,
                {"expression": str(s["sent"]), "ref_id": ref_id, "sent_id": sent_id, "ann_id": ann_id,
                 "image_id": image_id, "category_id": int(r.get("category_id", 0))},
                annotation=(anns[ann_id]["segmentation"], int(im["height"]), int(im["width"]), str(inst_path))))
    if not out:
        raise DatasetError(f"{refs_path}: no refs in split {split!r}")
    return out


def load_refcoco_target(table: dict, sample: Sample, image_hw) -> np.ndarray:
    seg, h, w, src = sample.annotation
    if (h, w) != tuple(image_hw):
        raise DatasetError(f"{sample.image} is {image_hw[1]}x{image_hw[0]} (WxH) but {src} says {w}x{h} "
                           f"for image {sample.meta['image_id']}")
    try:
        return segmentation_to_mask(seg, h, w)
    except ValueError as e:
        raise DatasetError(f"{src}: annotation {sample.meta['ann_id']}: {e}") from e
