"""Miniature copies of the real dataset layouts, written from random labels, for tests
and demos (nothing is downloaded). Each ``make_*`` writes under ``root`` with the naming
quirks of the real layout and returns ``{sample id: expected ground truth}`` (labels
after the table's reduction; depth in metres, 0 invalid; referring masks)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from .datasets import tables

__all__ = ["make_ade20k", "make_coco_stuff164k", "make_pascal_context59", "make_voc20", "make_cityscapes",
           "make_nyuv2", "make_cityscapes_depth", "make_ddad", "make_refcoco", "write_png", "write_seg_layout"]


def write_png(path, array, mode=None, palette=None):
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(array)
    if a.dtype == np.uint16:
        im = Image.fromarray(a.astype(np.uint16))  # 16-bit greyscale ('I;16')
    elif palette is not None:  # indices stored as they are, colours in the palette (VOC)
        im = Image.frombytes("P", (a.shape[1], a.shape[0]), np.ascontiguousarray(a, np.uint8).tobytes())
        im.putpalette(palette)
    else:
        im = Image.fromarray(a, mode)
    im.save(path)
    return path


def _image(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_image(path, rgb):
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(rgb).save(path)


def _raw_labels(rng, h, w, n_classes, reduce_zero, ignore=255, p_ignore=0.1):
    """Raw file values: 0..C (0 = background) with reduce_zero_label, else 0..C-1; some 255."""
    raw = rng.integers(0, n_classes + 1 if reduce_zero else n_classes, (h, w))
    raw[rng.random((h, w)) < p_ignore] = ignore
    return raw.astype(np.uint8)


def _expected(raw, reduce_zero, ignore=255):
    e = raw.astype(np.int64)
    if reduce_zero:
        e = np.where(raw == 0, ignore, np.where(raw == ignore, ignore, e - 1))
    return e


def write_seg_layout(root, table, split, ids, *, size=(40, 56), seed=0, n_classes=None, palette_png=False,
                     split_ids=None):
    """Write an mmseg-style layout for ``table`` (images + label maps, split file if the
    table has one) and return {id: expected labels}. Reusable for any "seg_dir" table."""
    rng = np.random.default_rng(seed)
    lay = table["layout"]
    root = Path(root)
    n = n_classes or len(table["classes"])
    red = bool(table.get("reduce_zero_label"))
    out = {}
    for k, i in enumerate(ids):
        h, w = size[0] + 8 * (k % 2), size[1]  # sizes vary between images
        _save_image(root / lay["img_dir"].format(split=split) / (i + lay["img_suffix"]), _image(rng, h, w))
        raw = _raw_labels(rng, h, w, n, red)
        pal = None
        if palette_png:
            pal = [v for c in range(256) for v in ((c * 37) % 256, (c * 91) % 256, (c * 53) % 256)]
        write_png(root / lay["ann_dir"].format(split=split) / (i + lay["seg_suffix"]), raw, "L", pal)
        out[i] = _expected(raw, red)
    if lay.get("split_file"):
        p = root / lay["split_file"].format(split=split)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("\n".join(split_ids if split_ids is not None else ids) + "\n")
    return out


def make_ade20k(root, n=3, seed=0):
    base = Path(root) / "ADEChallengeData2016"
    ids = [f"ADE_val_{k + 1:08d}" for k in range(n)]
    gt = write_seg_layout(base, tables.ADE20K, "validation", ids, seed=seed)
    # the training split sits beside it; hidden files are not images
    write_seg_layout(base, tables.ADE20K, "training", ["ADE_train_00000001"], seed=seed + 1)
    (base / "images" / "validation" / ".DS_Store").write_bytes(b"\0")
    return gt


def make_coco_stuff164k(root, n=3, seed=0):
    base = Path(root)
    ids = [f"{139 + 146 * k:012d}" for k in range(n)]
    gt = write_seg_layout(base, tables.COCO_STUFF164K, "val2017", ids, seed=seed)
    # the raw-label PNG beside each *_labelTrainIds.png must not be read
    for i in ids:
        write_png(base / "annotations" / "val2017" / f"{i}.png", np.full((4, 4), 200, np.uint8), "L")
    return gt


def make_pascal_context59(root, n=3, seed=0):
    base = Path(root) / "VOCdevkit" / "VOC2010"
    ids = [f"2008_{2 + k * 5:06d}" for k in range(n)]
    gt = write_seg_layout(base, tables.PASCAL_CONTEXT59, "val", ids, seed=seed)
    # JPEGImages holds every VOC2010 image; only the split file's are evaluated
    _save_image(base / "JPEGImages" / "2007_000027.jpg", _image(np.random.default_rng(9), 32, 32))
    return gt


def make_voc20(root, n=3, seed=0):
    base = Path(root) / "VOCdevkit" / "VOC2012"
    ids = [f"2007_{33 + 10 * k:06d}" for k in range(n)]
    gt = write_seg_layout(base, tables.VOC20, "val", ids, seed=seed, palette_png=True)  # VOC labels are 'P' PNGs
    return gt


def make_cityscapes(root, seed=0):
    base = Path(root) / "cityscapes"
    ids = ["frankfurt/frankfurt_000000_000294", "frankfurt/frankfurt_000000_000576", "lindau/lindau_000000_000019"]
    gt = write_seg_layout(base, tables.CITYSCAPES, "val", ids, seed=seed, size=(48, 64))
    for i in ids:  # the other gtFine files beside the trainIds
        d = base / "gtFine" / "val"
        write_png(d / f"{i}_gtFine_labelIds.png", np.full((4, 4), 33, np.uint8), "L")
        write_png(d / f"{i}_gtFine_color.png", np.zeros((4, 4, 3), np.uint8), "RGB")
        (d / f"{i}_gtFine_polygons.json").write_text("{}")
    return gt


def make_nyuv2(root, seed=0):
    rng = np.random.default_rng(seed)
    base = Path(root) / "nyu"
    out = {}
    for k, i in enumerate(["bathroom_0001", "living_room_0002", "study_room_0003"]):
        h, w = 480, 640  # the NYU crop [45:471, 41:601] needs the real size
        _save_image(base / "images" / "test" / f"{i}.jpg", _image(rng, h, w))
        mm = rng.integers(300, 9800, (h, w)).astype(np.uint16)
        mm[rng.random((h, w)) < 0.05] = 0
        write_png(base / "annotations" / "test" / f"{i}.png", mm)
        out[i] = mm.astype(np.float32) * np.float32(1e-3)
    _save_image(base / "images" / "train" / "kitchen_0001.jpg", _image(rng, 8, 8))
    return out


def make_cityscapes_depth(root, seed=0):
    rng = np.random.default_rng(seed)
    base = Path(root) / "cityscapes"
    out = {}
    for k, i in enumerate(["munster/munster_000000_000019", "munster/munster_000001_000019"]):
        h, w = 64, 128
        _save_image(base / "leftImg8bit" / "val" / f"{i}_leftImg8bit.png", _image(rng, h, w))
        p = rng.integers(256 * 2, 256 * 90, (h, w)).astype(np.uint16)
        p[rng.random((h, w)) < 0.05] = 0
        p[0, :3] = 1  # disparity (1 - 1) / 256 = 0: invalid
        write_png(base / "disparity" / "val" / f"{i}_disparity.png", p)
        baseline, fx = 0.209313 + 0.001 * k, 2262.52 - k
        cam = {"extrinsic": {"baseline": baseline, "pitch": 0.038, "roll": 0.0, "x": 1.7, "y": 0.1, "yaw": -0.0195,
                             "z": 1.22}, "intrinsic": {"fx": fx, "fy": 2265.3, "u0": 1096.98, "v0": 513.137}}
        cp = base / "camera" / "val" / f"{i}_camera.json"
        cp.parent.mkdir(parents=True, exist_ok=True)
        cp.write_text(json.dumps(cam))
        disp = (p.astype(np.float64) - 1) / 256
        d = np.zeros((h, w), np.float32)
        ok = (p > 0) & (disp > 0)
        d[ok] = (baseline * fx / disp[ok]).astype(np.float32)
        out[i] = d
    return out


def make_ddad(root, seed=0):
    rng = np.random.default_rng(seed)
    base = Path(root) / "ddad" / "val"
    out = {}
    h, w = 48, 80
    _save_image(base / "rgb" / "000150_CAMERA_01.png", _image(rng, h, w))
    d = rng.uniform(0.5, 150.0, (h, w)).astype(np.float32)
    d[rng.random((h, w)) < 0.3] = 0
    (base / "depth").mkdir(parents=True, exist_ok=True)
    np.save(base / "depth" / "000150_CAMERA_01.npy", d)
    out["000150_CAMERA_01"] = d
    _save_image(base / "rgb" / "000151_CAMERA_05.jpg", _image(rng, h, w))
    q = rng.integers(0, 120 * 256, (h, w)).astype(np.uint16)
    write_png(base / "depth" / "000151_CAMERA_05.png", q)
    out["000151_CAMERA_05"] = q.astype(np.float32) * np.float32(1 / 256)
    return out


def rle_counts(mask) -> list:
    """COCO's uncompressed RLE of a mask: run lengths over the column-major pixels,
    alternating 0-runs and 1-runs, starting with a (possibly empty) 0-run."""
    flat = np.asarray(mask, bool).T.ravel().astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] == 1 else runs


def make_refcoco(root, dataset="refcoco", split_by="unc", seed=0, protocol=2):
    """refs(<split_by>).p (a plain pickle, as the refer toolkit's), instances.json with
    a polygon, a multi-polygon and an uncompressed-RLE (crowd) annotation, and the
    train2014 images. Returns {sample id: mask} for the 'val' split (masks from
    densemllm's own COCO decoder; tests compare it with pycocotools)."""
    from .datasets.coco_mask import segmentation_to_mask

    rng = np.random.default_rng(seed)
    base = Path(root)
    imgdir = base / "images" / "mscoco" / "images" / "train2014"
    images, anns, refs = [], [], []
    specs = [  # (image id, h, w, segmentation, split, sentences)
        (9, 48, 64, [[4.5, 6.0, 40.2, 8.1, 35.0, 40.7, 8.0, 30.3]], "val", ["the left thing", "thing on the left"]),
        (25, 40, 56, [[2, 2, 20, 2, 20, 20, 2, 20], [30.5, 5, 50, 5, 50, 30.2]], "val", ["two parts"]),
        (30, 40, 56, None, "val", ["the crowd"]),
        (42, 40, 56, [[1, 1, 10, 1, 10, 10]], "train", ["a training ref"]),
    ]
    for k, (iid, h, w, seg, split, sents) in enumerate(specs):
        name = f"COCO_train2014_{iid:012d}.jpg"
        _save_image(imgdir / name, _image(rng, h, w))
        images.append({"id": iid, "file_name": name, "height": h, "width": w})
        if seg is None:
            m = np.zeros((h, w), np.uint8)
            m[10:30, 5:40] = 1
            seg = {"size": [h, w], "counts": rle_counts(m)}
        ann_id = 1000 + k
        anns.append({"id": ann_id, "image_id": iid, "category_id": 1, "segmentation": seg, "area": 1.0,
                     "bbox": [0, 0, 1, 1], "iscrowd": int(isinstance(seg, dict))})
        refs.append({"image_id": iid, "split": split, "sentences": [
            {"tokens": s.split(), "raw": s.upper(), "sent_id": 50 * k + j, "sent": s} for j, s in enumerate(sents)],
            "file_name": f"COCO_train2014_{iid:012d}_{ann_id}.jpg", "category_id": 1, "ann_id": ann_id,
            "sent_ids": [50 * k + j for j in range(len(sents))], "ref_id": 7 + k})
    d = base / dataset
    d.mkdir(parents=True, exist_ok=True)
    (d / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=protocol))
    (d / "instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                  "categories": [{"id": 1, "name": "thing"}]}))
    out = {}
    for k, (iid, h, w, seg, split, sents) in enumerate(specs):
        if split != "val":
            continue
        mask = segmentation_to_mask(anns[k]["segmentation"], h, w, backend="numpy")
        for j in range(len(sents)):
            out[f"{7 + k}-{50 * k + j}"] = mask
    return out


class OraclePredictor:
    """A picklable predictor that answers from the ground truth (for tests of the
    metric loop, workers and resumption; never a real prediction). ``perturb=True``
    makes a deterministic, imperfect answer (every third row wrong / depth x1.3 / the
    mask shifted), so equality of two runs is not trivially 100 == 100. ``log``: a file
    that gets one line per call (the sample id), written after the answer is made."""

    def __init__(self, dataset, data_root, split=None, perturb=False, log=None, delay=0.0):
        self.args = (dataset, str(data_root), split)
        self.perturb, self.log, self.delay = perturb, log, float(delay)
        self._ds = None
        self.name = f"oracle-{dataset}{'-perturbed' if perturb else ''}"

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_ds"] = None
        return d

    def __call__(self, image, sample):
        import time

        from .datasets import get_dataset

        if self._ds is None:
            self._ds = get_dataset(*self.args)
            self._by_id = {s.id: s for s in self._ds}
        _, gt = self._ds.load(self._by_id[sample["id"]])
        if self.delay:
            time.sleep(self.delay)
        if self._ds.task == "segment":
            pred = gt.astype(np.int32)
            if self.perturb:
                pred[::3] = (pred[::3] + 1) % len(self._ds.classes)
        elif self._ds.task == "depth":
            pred = np.where(gt > 0, gt, 1.0).astype(np.float32)
            if self.perturb:
                pred[::3] *= np.float32(1.3)
        else:
            pred = gt.astype(bool)
            if self.perturb:
                pred = np.roll(pred, 3, axis=1)
        if self.log:
            with open(self.log, "a") as f:
                f.write(sample["id"] + "\n")
        return pred
