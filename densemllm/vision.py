"""The vision side of a :class:`densemllm.model.Model`: preprocessing and the tower.

All numeric work is in C (csrc/model/vision.c, merger.c, ops/): this module turns
inputs into a uint8 array (:mod:`densemllm.image`), builds the `_core.VisionTower`
once per model (weights stay in the mmap) and hands arrays across.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _core
from .image import is_image_list, to_rgb_array

__all__ = ["Preprocessed", "preprocess", "encode_image", "encode_patches", "vision_tower",
           "vision_config_dict", "DEFAULT_MAX_NUM_PATCHES"]

DEFAULT_MAX_NUM_PATCHES = 36864  # what the HF processor passes (notes section 2)


class Preprocessed(NamedTuple):
    """Result of :func:`preprocess`: unpacks as ``patches, (gh, gw), (H, W)``.

    patches: float32 [gh*gw, 3*p*p] in 2x2 merge-block order; grid: patch grid
    (gh, gw); size: the resized image (H, W) = (gh*p, gw*p).
    """
    patches: np.ndarray
    grid: tuple
    size: tuple

    @property
    def grid_h(self):
        return self.grid[0]

    @property
    def grid_w(self):
        return self.grid[1]


def vision_config_dict(config):
    """The flat dict `_core.VisionTower` takes, from a :class:`densemllm.config.ModelConfig`."""
    v = config.vision
    return {
        "hidden_size": v.hidden_size,
        "num_attention_heads": v.num_attention_heads,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_hidden_layers,
        "patch_size": v.patch_size,
        "num_channels": v.num_channels,
        "spatial_merge_size": v.spatial_merge_size,
        "out_hidden_size": v.out_hidden_size,
        "window_size": v.window_size,
        "layer_norm_eps": float(v.layer_norm_eps),
        "hidden_act": v.hidden_act,
        "fullatt_block_indexes": list(v.fullatt_block_indexes),
    }


def vision_tower(model):
    """The model's `_core.VisionTower`, built on first use and cached on the model."""
    tower = getattr(model, "_vision_tower", None)
    if tower is None:
        if model.config.vision.num_channels != 3:
            raise ValueError(f"vision tower expects RGB input but num_channels={model.config.vision.num_channels}")
        tower = _core.VisionTower(model._checkpoint, vision_config_dict(model.config), backend=model.backend)
        model._vision_tower = tower
    return tower


def _max_patches(max_num_patches):
    if isinstance(max_num_patches, bool) or not isinstance(max_num_patches, (int, np.integer)):
        raise TypeError(f"max_num_patches must be an int, got {type(max_num_patches).__name__}")
    return int(max_num_patches)


def preprocess(model, image, max_num_patches=DEFAULT_MAX_NUM_PATCHES):
    """The official processor's pixels, bit for bit: resize (uint8 anti-aliased bilinear,
    exactly torch's uint8 kernel; sides multiples of patch*merge, at most
    `max_num_patches` patches), rescale and normalise ((v - 127.5) / 127.5 in f32, the
    fast processor's fused form) and cut into patches; see :class:`Preprocessed`."""
    v = model.config.vision
    arr = to_rgb_array(image)
    patches, grid, size = _core.preprocess(arr, _max_patches(max_num_patches), v.patch_size, v.spatial_merge_size)
    return Preprocessed(patches, tuple(grid), tuple(size))


def encode_patches(model, patches, grid_h, grid_w):
    """The tower + merger on preprocessed patches: float32 [gh/2*gw/2, llm hidden]."""
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    return vision_tower(model).encode(patches, int(grid_h), int(grid_w))


def encode_image(model, image, max_num_patches=DEFAULT_MAX_NUM_PATCHES):
    """Vision tokens of an image (or of a :class:`Preprocessed`): float32
    [gh/2*gw/2, text.hidden_size], row-major over the merged-token grid. A list of
    images gives a list of arrays."""
    if is_image_list(image):
        return [encode_image(model, im, max_num_patches) for im in image]
    pre = image if isinstance(image, Preprocessed) else preprocess(model, image, max_num_patches)
    return encode_patches(model, pre.patches, pre.grid[0], pre.grid[1])
