"""COCO segmentations (polygons, uncompressed and compressed RLE) to boolean masks.

Uses ``pycocotools`` when it is installed (the ``eval`` extra) and otherwise this
module's own NumPy implementation of the same published algorithm (the COCO mask API:
polygons rasterised on a 5x upsampled boundary walk, RLE over column-major pixels,
compressed counts in its 6-bit LEB128-like text). Both give identical masks
(tests/test_eval_datasets.py compares them where pycocotools is present)."""
from __future__ import annotations

import numpy as np

MAX_PIXELS = 1 << 28


def _check_hw(h, w):
    h, w = int(h), int(w)
    if h <= 0 or w <= 0 or h * w > MAX_PIXELS:
        raise ValueError(f"mask size {w}x{h} must be positive and at most {MAX_PIXELS} pixels")
    return h, w


def decode_counts(counts, h, w) -> np.ndarray:
    """bool [h, w] from RLE run lengths (0-runs and 1-runs alternating, starting with 0,
    over the column-major pixels)."""
    h, w = _check_hw(h, w)
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim != 1 or (c < 0).any() or int(c.sum()) != h * w:
        raise ValueError(f"RLE counts must be non-negative run lengths adding up to {h}*{w} = {h * w}, "
                         f"got {c.size} runs summing to {int(c.sum()) if c.size else 0}")
    vals = (np.arange(c.size) % 2).astype(bool)
    flat = np.repeat(vals, c)
    return flat.reshape(w, h).T.copy()


def string_to_counts(s) -> list:
    """Run lengths from COCO's compressed RLE text (each count in 5-bit groups, 48-based
    chars, continuation bit 0x20, sign bit 0x10 of the last group; from the fourth count
    on, each is stored as the difference to the count two before)."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts, p, n = [], 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("compressed RLE text ends inside a count")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE text has an invalid character {s[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def polygon_counts(xy, h, w) -> list:
    """RLE run lengths of one polygon [x0, y0, x1, y1, ...] in an h x w image, by the
    COCO mask API's rule: the boundary is walked on a 5x grid, the points where it
    crosses a pixel column centre give the column's row boundaries."""
    h, w = _check_hw(h, w)
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    scale = 5.0
    x = np.trunc(scale * pts[:, 0] + 0.5).astype(np.int64)
    y = np.trunc(scale * pts[:, 1] + 0.5).astype(np.int64)
    x, y = np.append(x, x[:1]), np.append(y, y[:1])
    us, vs = [], []
    for j in range(len(pts)):
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            d = np.arange(dx + 1)
            t = dx - d if flip else d
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            d = np.arange(dy + 1)
            t = dy - d if flip else d
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u, v = np.concatenate(us), np.concatenate(vs)
    # boundary points where the walk changes column, mapped back to pixel columns
    j = np.nonzero(u[1:] != u[:-1])[0] + 1
    xd = np.where(u[j] < u[j - 1], u[j], u[j] - 1).astype(np.float64)
    xd = (xd + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = np.minimum(v[j], v[j - 1]).astype(np.float64)
    yd = (yd + 0.5) / scale - 0.5
    yd = np.ceil(np.clip(yd, 0, h))
    a = np.sort(np.append(xd[keep].astype(np.int64) * h + yd[keep].astype(np.int64), h * w))
    a = np.diff(a, prepend=0)
    out = [int(a[0])]
    i = 1
    while i < len(a):
        if a[i] > 0:
            out.append(int(a[i]))
            i += 1
        else:  # an empty run merges its neighbours
            i += 1
            if i < len(a):
                out[-1] += int(a[i])
                i += 1
    return out


def _own_mask(segmentation, h, w) -> np.ndarray:
    if isinstance(segmentation, list):
        m = np.zeros((h, w), bool)
        for poly in segmentation:
            m |= decode_counts(polygon_counts(poly, h, w), h, w)
        return m
    counts = segmentation["counts"]
    sh, sw = segmentation.get("size", (h, w))
    if (int(sh), int(sw)) != (h, w):
        raise ValueError(f"RLE size {segmentation.get('size')} differs from the image size {[h, w]}")
    if isinstance(counts, (str, bytes)):
        counts = string_to_counts(counts)
    return decode_counts(counts, h, w)


def _pycoco_mask(segmentation, h, w) -> np.ndarray:
    from pycocotools import mask as mu

    if isinstance(segmentation, list):
        rle = mu.merge(mu.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation.get("counts"), list):
        rle = mu.frPyObjects(segmentation, h, w)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mu.decode(rle).astype(bool)


def have_pycocotools() -> bool:
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError:
        return False
    return True


def segmentation_to_mask(segmentation, h, w, *, backend="auto") -> np.ndarray:
    """bool [h, w] of a COCO ``segmentation`` (list of polygons, or an RLE dict with
    list or compressed-string counts). ``backend``: "auto" | "pycocotools" | "numpy"."""
    h, w = _check_hw(h, w)
    if isinstance(segmentation, list):
        for p in segmentation:
            if not isinstance(p, (list, tuple)) or len(p) < 6 or len(p) % 2:
                raise ValueError(f"a COCO polygon must list at least 3 (x, y) points, got {str(p)[:80]}")
    elif not (isinstance(segmentation, dict) and "counts" in segmentation):
        raise ValueError(f"COCO segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}")
    if backend == "auto":
        backend = "pycocotools" if have_pycocotools() else "numpy"
    if backend == "pycocotools":
        return _pycoco_mask(segmentation, h, w)
    if backend == "numpy":
        return _own_mask(segmentation, h, w)
    raise ValueError(f"backend must be 'auto', 'pycocotools' or 'numpy', got {backend!r}")
