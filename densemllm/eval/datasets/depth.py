"""Depth readers: NYUv2 (mmseg's `nyu` layout), Cityscapes (disparity + camera JSON) and
DDAD (the simple layout of tables.DDAD). Ground truth: float32 metres, 0 = invalid."""
from __future__ import annotations

import json

import numpy as np

from .base import DatasetError, Sample, list_with_suffix, need_dir, read_index_png


def list_nyu(table: dict, root, split: str) -> list:
    lay = table["layout"]
    img_dir = need_dir(root / lay["img_dir"].format(split=split), f"nyuv2 images, split {split!r}")
    ann_dir = need_dir(root / lay["ann_dir"].format(split=split), f"nyuv2 depth maps, split {split!r}")
    ids = list_with_suffix(img_dir, lay["img_suffix"])
    if not ids:
        raise DatasetError(f"no '*{lay['img_suffix']}' images under {img_dir}")
    out = []
    for i in ids:
        dep = ann_dir / (i + lay["depth_suffix"])
        if not dep.is_file():
            raise FileNotFoundError(f"missing depth map {dep} for image {img_dir / (i + lay['img_suffix'])}")
        out.append(Sample(i, img_dir / (i + lay["img_suffix"]), dep, {"scene": nyu_scene(i)}))
    return out


def nyu_scene(image_id: str) -> str:
    """The scene category in an mmseg NYU file name (``living_room_0001`` ->
    ``living_room``): everything before the character ahead of the first digit."""
    name = image_id.rsplit("/", 1)[-1]
    pos = next((k for k, c in enumerate(name) if c.isdigit()), None)
    return name[: pos - 1] if pos else name


def load_png_depth(table: dict, sample: Sample, image_hw) -> np.ndarray:
    raw = read_index_png(sample.target)
    _check_size(raw, sample, image_hw)
    # mmseg LoadDepthAnnotation: float32 file values times the rescale factor
    return raw.astype(np.float32) * np.float32(table["depth_scale"])


def _check_size(raw, sample, image_hw):
    if raw.shape[:2] != tuple(image_hw):
        raise DatasetError(f"depth map {sample.target} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image "
                           f"{sample.image} is {image_hw[1]}x{image_hw[0]}")


def list_cityscapes_depth(table: dict, root, split: str) -> list:
    lay = table["layout"]
    img_dir = need_dir(root / lay["img_dir"].format(split=split), f"cityscapes images, split {split!r}")
    disp_dir = need_dir(root / lay["disparity_dir"].format(split=split), f"cityscapes disparity, split {split!r}")
    cam_dir = need_dir(root / lay["camera_dir"].format(split=split), f"cityscapes camera files, split {split!r}")
    ids = list_with_suffix(img_dir, lay["img_suffix"])
    if not ids:
        raise DatasetError(f"no '*{lay['img_suffix']}' images under {img_dir}")
    out = []
    for i in ids:
        disp, cam = disp_dir / (i + lay["disparity_suffix"]), cam_dir / (i + lay["camera_suffix"])
        for p, what in ((disp, "disparity map"), (cam, "camera file")):
            if not p.is_file():
                raise FileNotFoundError(f"missing {what} {p} for image {img_dir / (i + lay['img_suffix'])}")
        out.append(Sample(i, img_dir / (i + lay["img_suffix"]), disp, {"camera": str(cam)}))
    return out


def read_camera(path) -> tuple:
    """(baseline metres, fx pixels) from a Cityscapes camera JSON."""
    try:
        cam = json.loads(open(path, encoding="utf-8").read())
        baseline, fx = float(cam["extrinsic"]["baseline"]), float(cam["intrinsic"]["fx"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"camera file {path}: expected extrinsic.baseline and intrinsic.fx ({e})") from e
    if not (np.isfinite(baseline) and np.isfinite(fx) and baseline > 0 and fx > 0):
        raise DatasetError(f"camera file {path}: baseline {baseline} and fx {fx} must be positive")
    return baseline, fx


def load_cityscapes_depth(table: dict, sample: Sample, image_hw) -> np.ndarray:
    """Cityscapes' disparity PNG: p > 0 -> disparity (p - 1) / 256 px; depth =
    baseline * fx / disparity; p = 0 or a zero disparity is invalid (0)."""
    raw = read_index_png(sample.target)
    _check_size(raw, sample, image_hw)
    baseline, fx = read_camera(sample.meta["camera"])
    disp = (raw.astype(np.float64) - 1.0) / 256.0
    ok = (raw > 0) & (disp > 0)
    depth = np.zeros(raw.shape, np.float32)
    depth[ok] = (baseline * fx / disp[ok]).astype(np.float32)
    return depth


def list_ddad(table: dict, root, split: str) -> list:
    lay = table["layout"]
    img_dir = need_dir(root / lay["img_dir"].format(split=split), f"ddad images, split {split!r}")
    dep_dir = need_dir(root / lay["ann_dir"].format(split=split), f"ddad depth maps, split {split!r}")
    ids = sorted({i for suf in lay["img_suffixes"] for i in list_with_suffix(img_dir, suf)})
    if not ids:
        raise DatasetError(f"no {'/'.join(lay['img_suffixes'])} images under {img_dir}")
    out = []
    for i in ids:
        imgs = [img_dir / (i + s) for s in lay["img_suffixes"] if (img_dir / (i + s)).is_file()]
        deps = [dep_dir / (i + s) for s in lay["depth_suffixes"] if (dep_dir / (i + s)).is_file()]
        if len(imgs) != 1:
            raise DatasetError(f"ddad image {i}: found {len(imgs)} files {[str(p) for p in imgs]}; expected one")
        if len(deps) != 1:
            raise FileNotFoundError(f"ddad image {imgs[0]}: expected one depth map "
                                    f"{dep_dir / i}{'|'.join(lay['depth_suffixes'])}, found {len(deps)}")
        out.append(Sample(i, imgs[0], deps[0]))
    return out


def load_ddad_depth(table: dict, sample: Sample, image_hw) -> np.ndarray:
    p = sample.target
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read depth array {p}: {e}") from e
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise DatasetError(f"depth array {p} must be a 2-D float array of metres, got {arr.dtype} {arr.shape}")
        _check_size(arr, sample, image_hw)
        d = np.array(arr, dtype=np.float32)
        d[~np.isfinite(d)] = 0
        return d
    raw = read_index_png(p)
    _check_size(raw, sample, image_hw)
    return raw.astype(np.float32) * np.float32(table["layout"]["png_depth_scale"])
