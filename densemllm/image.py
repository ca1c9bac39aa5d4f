"""Image inputs: the ONE function (:func:`to_rgb_array`) every entry point uses
(``encode_image``, ``preprocess``, ``forward``/``prefill``/``chat`` and every dense task).

Accepted, each becoming a uint8 ``[H, W, 3]`` RGB array:

- a path (``str`` / ``os.PathLike``) of an image file Pillow can read; the file is
  decoded like a ``PIL.Image`` below;
- a ``PIL.Image.Image`` with 8 bits per channel: ``RGB`` as is; ``L``, ``P``, ``1``,
  ``LA``, ``PA``, ``RGBA``, ``RGBX``, ``CMYK``, ``YCbCr``... through Pillow's
  ``convert("RGB")`` (alpha dropped, palette expanded, grayscale replicated), which is
  what the official processor's ``convert_rgb`` does;
- a NumPy ``uint8`` array ``HxW`` (grayscale), ``HxWx1``, ``HxWx3`` (RGB) or ``HxWx4``
  (RGBA, alpha dropped). Arrays are used as strided views: no copy, broadcasts work.

Rejected, with the exception named:

- ``TypeError``: anything else, in particular 16-bit / 32-bit / float PIL images
  (``I;16``, ``I``, ``F``...) and non-uint8 arrays (float, uint16, bool...): the model
  was trained on 8-bit images and their range is ambiguous (a float image may be
  0..1 or 0..255, a 16-bit one 0..4095 or 0..65535), so they are never clipped or
  scaled silently: convert them yourself, e.g.
  ``(x * 255).round().clip(0, 255).astype(np.uint8)``; torch tensors (use
  ``t.permute(1, 2, 0).numpy()`` for a CHW uint8 tensor); a list of images (the
  dense tasks accept a list and return a list of results; ``encode_image`` too);
- ``FileNotFoundError``: a path that does not exist; ``IsADirectoryError``: a
  directory; ``ValueError``: a file Pillow cannot decode (the message names the path);
- ``ValueError``: an empty image, a side above :data:`MAX_SIDE`, or an array whose
  shape is not one of the above.

Tiny images are upscaled to one merged token and huge ones shrink under
``max_num_patches`` during preprocessing. uint8 cannot hold NaN or inf, so the
preprocessed pixels are always finite.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["to_rgb_array", "MAX_SIDE", "is_image_list"]

# Longest side accepted (a sanity bound, far above any real photo; resizing reads the
# input in place, so even this never needs a full-size float copy).
MAX_SIDE = 1 << 20

# 8-bit PIL modes that convert("RGB") maps to RGB; every other mode is wider than 8 bits.
_PIL_8BIT = ("1", "L", "P", "PA", "LA", "La", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")


def _from_pil(img, what):
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in _PIL_8BIT:
        return np.asarray(img.convert("RGB"))
    raise TypeError(
        f"{what}: PIL mode {mode!r} is not an 8-bit image (16-bit, 32-bit and float images are "
        "not clipped or scaled silently); convert it to 8-bit first, e.g. "
        "Image.fromarray((np.asarray(img) / 65535 * 255).round().astype(np.uint8)) for 16-bit data")


def _open(path, what):
    from PIL import Image, UnidentifiedImageError

    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: {path!r} is a directory, not an image file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: image file not found: {path!r}")
    try:
        with Image.open(path) as im:
            im.load()
            return _from_pil(im, what)
    except (UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"{what}: {path!r} is not an image file Pillow can decode ({e})") from None


def is_image_list(image):
    """True for a list/tuple of images (what the tasks map over); a named tuple (such as
    vision.Preprocessed) is one item, not a list."""
    return isinstance(image, list) or (isinstance(image, tuple) and not hasattr(image, "_fields"))


def to_rgb_array(image, what="image"):
    """A uint8 ``[H, W, 3]`` RGB array (possibly a strided, read-only view) of `image`;
    see the module docstring for what is accepted. `what` names the argument in errors."""
    if isinstance(image, (str, os.PathLike)):
        return _check(_open(os.fspath(image), what), what)
    from PIL import Image

    if isinstance(image, Image.Image):
        return _check(_from_pil(image, what), what)
    if is_image_list(image):
        raise TypeError(f"{what}: got a {type(image).__name__} of {len(image)} items; pass one image (the "
                        "dense tasks and encode_image accept a list of images and return a list of results)")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what}: expected a path, a PIL.Image or a numpy uint8 array (HxW, HxWx1, HxWx3 or "
                        f"HxWx4), got {type(image).__module__}.{type(image).__name__}")
    a = image
    if a.dtype != np.uint8:
        raise TypeError(f"{what}: expected a uint8 array, got dtype {a.dtype} (never clipped or scaled "
                        "silently: convert explicitly, e.g. (x * 255).round().clip(0, 255).astype(np.uint8) "
                        "for floats in [0, 1])")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"{what}: expected shape HxW, HxWx1, HxWx3 or HxWx4, got {image.shape}")
    c = a.shape[2]
    if c == 1:
        a = np.broadcast_to(a, a.shape[:2] + (3,))
    elif c == 4:
        a = a[:, :, :3]
    elif c != 3:
        raise ValueError(f"{what}: expected 1, 3 or 4 channels (HxWxC), got {c} (shape {image.shape})")
    return _check(a, what)


def _check(a, what):
    if a.ndim == 2:
        a = np.broadcast_to(a[:, :, None], a.shape + (3,))
    h, w = a.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"{what}: empty image of size {h}x{w}")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"{what}: {h}x{w} exceeds the maximum side {MAX_SIDE}")
    return a
