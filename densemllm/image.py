"""Image inputs for the vision tower: everything becomes a uint8 RGB array.

Accepted (anything else raises TypeError or ValueError naming what was expected):

- a path (``str`` / ``os.PathLike``) of an image file PIL can read;
- a ``PIL.Image.Image``: 8-bit modes are converted to RGB (alpha dropped, palette
  expanded, grayscale replicated). 16-bit and 32-bit integer or float modes
  ("I;16", "I", "F", ...) raise ValueError: the model was trained on 8-bit images
  and there is no unique way to map their range, so scale them yourself;
- a NumPy ``uint8`` array ``HxW`` (grayscale, replicated to 3 channels without a
  copy), ``HxWx1``, ``HxWx3`` or ``HxWx4`` (alpha dropped). Other dtypes raise
  TypeError (convert explicitly; a float array's range is ambiguous).

Arrays are passed to C as strided views: no copy, and broadcast arrays work.
Empty images raise ValueError; tiny images are upscaled to one merged token and
huge ones shrink under ``max_num_patches`` during preprocessing. uint8 input
cannot hold NaN or inf, so preprocessing output is always finite.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["to_rgb_array", "MAX_SIDE"]

# Longest side accepted (a sanity bound, far above any real photo; resizing
# streams rows, so even this never needs a full-size float copy).
MAX_SIDE = 1 << 20


def _from_pil(img):
    mode = img.mode
    if mode in ("RGB",):
        return np.asarray(img)
    if mode in ("1", "L", "P", "PA", "LA", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "La"):
        return np.asarray(img.convert("RGB"))
    raise ValueError(
        f"image: PIL mode {mode!r} is not an 8-bit image; convert it to 8-bit RGB first "
        "(e.g. scale a 16-bit image to 0..255 and use Image.fromarray(array.astype('uint8')))")


def to_rgb_array(image):
    """A uint8 ``[H, W, 3]`` array (possibly a strided view) of `image`."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        with Image.open(path) as im:
            im.load()
            return _check(_from_pil(im))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return _check(_from_pil(image))
    if not isinstance(image, np.ndarray):
        raise TypeError("image: expected a path, a PIL.Image or a numpy uint8 array (HxW, HxWx3 or HxWx4), "
                        f"got {type(image).__name__}")
    a = image
    if a.dtype != np.uint8:
        raise TypeError(f"image: expected a uint8 array, got dtype {a.dtype} "
                        "(convert explicitly, e.g. (x * 255).round().clip(0, 255).astype(np.uint8))")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"image: expected shape HxW, HxWx3 or HxWx4, got {a.shape}")
    c = a.shape[2]
    if c == 1:
        a = np.broadcast_to(a, a.shape[:2] + (3,))
    elif c == 4:
        a = a[:, :, :3]
    elif c != 3:
        raise ValueError(f"image: expected 1, 3 or 4 channels (HxWxC), got {c} (shape {image.shape})")
    return _check(a)


def _check(a):
    if a.ndim == 2:
        a = np.broadcast_to(a[:, :, None], a.shape + (3,))
    h, w = a.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"image: empty image of size {h}x{w}")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"image: {h}x{w} exceeds the maximum side {MAX_SIDE}")
    return a
