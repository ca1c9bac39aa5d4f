"""Fully connected CRF refinement (DenseCRF, Kraehenbuehl & Koltun 2011) of per-pixel class
probabilities. The inference runs in C (csrc/dense/crf.c: mean field, permutohedral lattice,
GIL released, the project's thread count). Parameters and normalisation follow pydensecrf;
definitions, defaults and the choices behind them: docs/crf.md."""
from __future__ import annotations

import inspect
import math
import numbers

import numpy as np

from . import _core

# The paper's benchmark protocol (notes section 7): softmax over the classes at this
# temperature, then the CRF, then argmax.
TEMPERATURE = 0.2

__all__ = ["dense_crf", "DEFAULTS", "TEMPERATURE"]


def _number(name, value, integer=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if integer:
        if int(value) != value:
            raise TypeError(f"{name} must be an integer, got {value!r}")
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def dense_crf(image, probs, sxy_gaussian=3.0, compat_gaussian=3.0, sxy_bilateral=80.0, srgb=13.0,
              compat_bilateral=10.0, iterations=5, clip=1e-5) -> np.ndarray:
    """Mean-field marginals Q (float32 ``[H, W, C]``) of the fully connected CRF.

    ``image``: uint8 RGB ``[H, W, 3]`` (the bilateral kernel's colours; may be None when
    ``compat_bilateral == 0``). ``probs``: ``[H, W, C]`` class probabilities in [0, 1]
    (float32, or another float dtype converted to float32), e.g. a softmax; the unary is
    ``-log(clip(probs, clip, 1))`` as pydensecrf's ``unary_from_softmax``. Kernels as in
    pydensecrf's ``DenseCRF2D``: a Gaussian over positions (std-dev ``sxy_gaussian`` px,
    Potts weight ``compat_gaussian``) and a bilateral one over positions and colours
    (``sxy_bilateral`` px, ``srgb`` in 0..255 units, weight ``compat_bilateral``), both
    with NORMALIZE_SYMMETRIC; a weight of 0 switches a kernel off. ``iterations`` mean-field
    steps (0 returns softmax(-unary)). Labels: ``dense_crf(...).argmax(-1)``."""
    p = np.asarray(probs)
    if p.dtype == np.bool_ or not np.issubdtype(p.dtype, np.floating):
        raise TypeError(f"probs must be a float array (class probabilities), got dtype {p.dtype}")
    if p.ndim != 3:
        raise ValueError(f"probs must be [H, W, C] (channels last), got shape {p.shape}")
    H, W, C = p.shape
    if C < 1:
        raise ValueError(f"probs has zero classes (shape {p.shape}): need at least 1 on the last axis")
    if H < 1 or W < 1:
        raise ValueError(f"probs has an empty image axis (shape {p.shape}): need H, W >= 1")
    p = np.ascontiguousarray(p, dtype=np.float32)
    compat_bilateral = _number("compat_bilateral", compat_bilateral)
    if image is None:
        if compat_bilateral != 0:
            raise ValueError(f"image is None but compat_bilateral = {compat_bilateral} > 0: the bilateral "
                             "kernel needs the RGB image (or pass compat_bilateral=0)")
        im = None
    else:
        im = np.asarray(image)
        if im.dtype != np.uint8:
            raise TypeError(f"image must be uint8 RGB [H, W, 3] (0..255, the unit srgb is in), got dtype {im.dtype}")
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"image must be [H, W, 3] RGB, got shape {im.shape}")
        if im.shape[:2] != (H, W):
            raise ValueError(f"image is {im.shape[0]}x{im.shape[1]} (H x W) but probs is {H}x{W}: "
                             "the probabilities must be at the image's resolution")
        im = np.ascontiguousarray(im)
    # NaN / out-of-range probabilities are found (with their index) by the C core in one pass
    return _core.crf_inference(
        im, p,
        sxy_gaussian=_number("sxy_gaussian", sxy_gaussian),
        compat_gaussian=_number("compat_gaussian", compat_gaussian),
        sxy_bilateral=_number("sxy_bilateral", sxy_bilateral),
        srgb=_number("srgb", srgb),
        compat_bilateral=compat_bilateral,
        iterations=_number("iterations", iterations, integer=True),
        clip=_number("clip", clip))


# The defaults of dense_crf's signature (the one place they are written): pydensecrf's README
# example (DenseCRF2D.addPairwiseGaussian(sxy=3, compat=3), addPairwiseBilateral(sxy=80,
# srgb=13, compat=10), inference(5)), unary_from_softmax's clip; docs/crf.md says why.
DEFAULTS = {k: v.default for k, v in inspect.signature(dense_crf).parameters.items()
            if v.default is not inspect.Parameter.empty}


def crf_settings(crf_params=None) -> dict:
    """The CRF settings of the benchmark protocol: ``DEFAULTS`` plus ``temperature``
    (``TEMPERATURE``), updated from ``crf_params`` (a dict of those names; others refused
    here, before any model work)."""
    settings = dict(DEFAULTS, temperature=TEMPERATURE)
    if crf_params is None:
        return settings
    if not isinstance(crf_params, dict):
        raise TypeError(f"crf_params must be a dict, got {type(crf_params).__name__}")
    unknown = sorted(set(crf_params) - set(settings))
    if unknown:
        raise TypeError(f"crf_params: unknown key(s) {unknown}; known: {sorted(settings)}")
    settings.update(crf_params)
    for k in settings:
        settings[k] = _number(f"crf_params[{k!r}]", settings[k], integer=(k == "iterations"))
    t = settings["temperature"]
    if not t > 0:
        raise ValueError(f"crf_params['temperature'] must be > 0, got {t}")
    return settings


def crf_grid_labels(image, grid_logits, settings=None) -> np.ndarray:
    """Labels int32 ``[H, W]`` by the paper's protocol (notes 7) from class logits on the
    token grid ``[gh, gw, K]``: bilinear upsampling to the image (half-pixel centres, as
    without CRF), softmax(z / temperature) over the classes, DenseCRF, argmax."""
    s = crf_settings() if settings is None else settings
    rgb = np.asarray(image)
    z = np.ascontiguousarray(grid_logits, dtype=np.float32)
    up = _core.dense_upsample_bilinear(z, (int(rgb.shape[0]), int(rgb.shape[1])))
    probs = _core.dense_scores(up, temperature=float(s["temperature"]))
    del up
    kw = {k: s[k] for k in DEFAULTS}
    q = dense_crf(rgb, probs, **kw)
    return q.argmax(-1).astype(np.int32)
