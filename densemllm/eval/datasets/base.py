"""What every reader shares: the Sample and Dataset objects, the data-root resolution and
the image / label-map loading with their checks (clear errors naming the file)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Refuse images whose header claims more pixels than this before decoding them (a
# corrupt or hostile PNG could otherwise ask for gigabytes). 2**28 px = 16k x 16k.
MAX_PIXELS = 1 << 28


class DatasetError(ValueError):
    """A dataset on disk does not match its table (wrong sizes, values, files)."""


@dataclass
class Sample:
    """One evaluation item. ``id`` is unique within its split (the store's key);
    ``image`` / ``target`` are file paths; ``meta`` is reader-specific plain data
    (e.g. the referring expression, the camera) that predictors may read;
    ``annotation`` is ground-truth data kept from predictors (a referring mask's
    polygons)."""

    id: str
    image: Path
    target: Path | None = None
    meta: dict = field(default_factory=dict)
    annotation: object = field(default=None, repr=False)


class Dataset:
    """A split of one registered dataset: ``len(ds)``, ``ds[i]`` (a Sample),
    iteration, and ``ds.load(sample) -> (image uint8 [H, W, 3], ground truth)``.

    Ground truth: segmentation -> int64 [H, W] labels in the table's class indices
    with ``ignore_index`` elsewhere; depth -> float32 [H, W] metres, 0 = invalid;
    referring -> bool [H, W] mask."""

    def __init__(self, table: dict, root: Path, split: str, samples: list, load_target):
        self.table = table
        self.name = table["name"]
        self.task = table["task"]
        self.root = root
        self.split = split
        self.samples = samples
        self._load_target = load_target
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise DatasetError(f"{self.name} {split}: duplicate sample ids {dup} under {root}")

    @property
    def classes(self) -> tuple:
        return tuple(self.table.get("classes", ()))

    @property
    def palette(self) -> tuple:
        return tuple(self.table.get("palette", ()))

    @property
    def ignore_index(self) -> int:
        return int(self.table.get("ignore_index", 255))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i) -> Sample:
        return self.samples[i]

    def __iter__(self):
        return iter(self.samples)

    def load_image(self, sample: Sample) -> np.ndarray:
        return read_rgb(sample.image)

    def load(self, sample: Sample):
        """(image uint8 [H, W, 3], ground truth at the image's size)."""
        rgb = self.load_image(sample)
        gt = self._load_target(self.table, sample, rgb.shape[:2])
        if gt.shape[:2] != rgb.shape[:2]:
            raise DatasetError(f"{sample.target}: ground truth is {gt.shape[1]}x{gt.shape[0]} (WxH) but its "
                               f"image {sample.image} is {rgb.shape[1]}x{rgb.shape[0]}")
        return rgb, gt

    def __repr__(self):
        return f"Dataset({self.name!r}, split={self.split!r}, {len(self)} samples, root={str(self.root)!r})"


def _open(path: Path):
    from PIL import Image

    if not Path(path).is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        im = Image.open(path)
    except Exception as e:  # PIL raises several types for unreadable files
        raise DatasetError(f"cannot read image {path}: {e}") from e
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise DatasetError(f"{path} claims {w}x{h} pixels, more than the {MAX_PIXELS} allowed")
    return im


def read_rgb(path: Path) -> np.ndarray:
    with _open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_index_png(path: Path) -> np.ndarray:
    """A single-channel label / depth PNG as integers, exactly as stored: 'L' and 'P'
    (palette indices, as VOC's SegmentationClass) and 16-bit 'I;16' / 'I'."""
    with _open(path) as im:
        if im.mode in ("L", "P"):
            return np.asarray(im, dtype=np.uint8).copy()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(im).astype(np.int64)
        raise DatasetError(f"{path} is a {im.mode} image; a label or depth map must be single-channel "
                           f"('L', 'P' or 16-bit), not colour-coded")


def resolve_root(table: dict, data_root) -> Path:
    """The dataset's own folder: ``data_root`` itself, or ``data_root/<root name>``
    when that exists (so both ``data/ade`` and ``data/ade/ADEChallengeData2016`` work)."""
    if data_root is None:
        raise ValueError(f"data_root is required for dataset {table['name']!r}")
    root = Path(os.fspath(data_root)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_root {root} for dataset {table['name']!r} is not a folder")
    for name in table.get("root_names", ()):
        if (root / name).is_dir():
            return root / name
    return root


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"missing folder {path} ({what})")
    return path


def list_with_suffix(folder: Path, suffix: str) -> list:
    """Sorted ids (paths relative to ``folder`` without ``suffix``, '/'-separated) of
    the files under ``folder`` (recursively) whose names end with ``suffix``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for f in filenames:
            if f.endswith(suffix) and not f.startswith("."):
                rel = Path(dirpath, f).relative_to(folder).as_posix()
                out.append(rel[: -len(suffix)])
    return sorted(out)


def read_split_file(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"missing split file {path}")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise DatasetError(f"split file {path} lists no images")
    return ids
