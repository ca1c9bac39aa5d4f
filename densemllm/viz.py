"""Pictures of the task results (Pillow): label overlays with a legend, depth colour maps
with a scale bar, referring masks with their box."""
from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["palette", "overlay_labels", "colorize_depth", "overlay_mask"]

# viridis-like anchors (dark purple -> teal -> yellow), interpolated linearly
_CMAP = np.array([[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
                  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]],
                 np.float64)


def palette(n: int) -> np.ndarray:
    """n distinct uint8 RGB colours (label 0 first), deterministic (golden-ratio hues)."""
    cols = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.25 * ((i // 3) % 2)
        cols.append([round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)])
    return np.array(cols, np.uint8).reshape(n, 3)


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def overlay_labels(rgb, labels, class_names, alpha=0.5, background_label=None):
    """The image blended with one colour per label, and a legend of the labels present
    on the right. ``background_label`` (e.g. 0) is left unpainted."""
    from PIL import Image, ImageDraw

    rgb = np.asarray(rgb, np.uint8)
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {rgb.shape[:2]} differ in size")
    n = max(len(class_names), int(labels.max(initial=0)) + 1)
    pal = palette(n)
    col = pal[np.clip(labels, 0, n - 1)].astype(np.float64)
    out = rgb.astype(np.float64) * (1 - alpha) + col * alpha
    if background_label is not None:
        bg = labels == background_label
        out[bg] = rgb[bg]
    img = Image.fromarray(np.round(out).astype(np.uint8))
    present = [int(v) for v in np.unique(labels)]
    font, row = _font(), 16
    names = [class_names[v] if v < len(class_names) else str(v) for v in present]
    width = 24 + max((int(ImageDraw.Draw(img).textlength(f"{v}: {s}", font=font)) for v, s in zip(present, names)),
                     default=0)
    canvas = Image.new("RGB", (img.width + width + 8, max(img.height, row * len(present) + 8)), "white")
    canvas.paste(img, (0, 0))
    d = ImageDraw.Draw(canvas)
    for i, (v, s) in enumerate(zip(present, names)):
        y = 4 + i * row
        d.rectangle([img.width + 6, y, img.width + 18, y + 12], fill=tuple(int(c) for c in pal[v]), outline="black")
        d.text((img.width + 24, y), f"{v}: {s}", fill="black", font=font)
    return canvas


def _cmap(t):
    t = np.clip(t, 0.0, 1.0) * (len(_CMAP) - 1)
    i = np.minimum(t.astype(np.int64), len(_CMAP) - 2)
    f = (t - i)[..., None]
    return np.round(_CMAP[i] * (1 - f) + _CMAP[i + 1] * f).astype(np.uint8)


def colorize_depth(depth, vmin=None, vmax=None, unit="m"):
    """Depth as colours (near = dark, far = bright; NaN = black) with a vertical scale
    bar labelled in ``unit`` on the right."""
    from PIL import Image, ImageDraw

    d = np.asarray(depth, np.float64)
    ok = np.isfinite(d)
    lo = float(np.min(d[ok])) if vmin is None and ok.any() else float(vmin or 0.0)
    hi = float(np.max(d[ok])) if vmax is None and ok.any() else float(vmax if vmax is not None else 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    rgb = _cmap((np.where(ok, d, lo) - lo) / (hi - lo))
    rgb[~ok] = 0
    img = Image.fromarray(rgb)
    H = img.height
    bar_h = max(H, 120)
    canvas = Image.new("RGB", (img.width + 90, bar_h), "white")
    canvas.paste(img, (0, 0))
    ramp = _cmap(np.linspace(1, 0, bar_h - 20))[:, None].repeat(16, 1)
    canvas.paste(Image.fromarray(ramp), (img.width + 8, 10))
    dr, font = ImageDraw.Draw(canvas), _font()
    for k in range(5):
        y = 10 + round(k * (bar_h - 21) / 4)
        v = hi - k * (hi - lo) / 4
        dr.line([img.width + 24, y, img.width + 28, y], fill="black")
        dr.text((img.width + 31, y - 6), f"{v:.2f} {unit}", fill="black", font=font)
    return canvas


def overlay_mask(rgb, mask, box=None, colour=(255, 0, 0), alpha=0.5):
    """The image with ``mask`` tinted and the grounding ``box`` outlined."""
    from PIL import Image, ImageDraw

    rgb = np.asarray(rgb, np.uint8)
    out = rgb.astype(np.float64)
    m = np.asarray(mask, bool)
    out[m] = out[m] * (1 - alpha) + np.array(colour) * alpha
    img = Image.fromarray(np.round(out).astype(np.uint8))
    if box is not None:
        ImageDraw.Draw(img).rectangle(list(box), outline=(0, 255, 0), width=2)
    return img
