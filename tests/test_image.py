"""Image preprocessing: resize parity with torch, target size, patch order, and
the handling of bad inputs (densemllm/image.py, csrc/ops/resize.c)."""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densemllm import _core
from densemllm.image import to_rgb_array


def torch_resize(img, oh, ow):
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    r = F.interpolate(t, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)
    return r[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    "h,w,oh,ow",
    [
        (37, 53, 64, 96),  # up, odd sizes
        (300, 200, 64, 32),  # down by ~5x
        (17, 1000, 32, 320),  # extreme aspect ratio, down in x, up in y
        (1000, 7, 96, 32),  # extreme portrait
        (5, 5, 64, 64),  # tiny -> large
        (641, 479, 224, 160),  # odd, down
        (64, 64, 64, 64),  # identity
    ],
)
def test_resize_matches_torch(h, w, oh, ow):
    rng = np.random.default_rng(h * w)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = _core.resize_bilinear_aa(img, oh, ow)
    ref = torch_resize(img, oh, ow)
    # Issue bound: 1/255 in [0, 1] pixel units. (Both are f32 sums of the same
    # normalised weights; observed ~1e-5 in 0..255 units.)
    assert np.abs(out - ref).max() / 255.0 <= 1 / 255


def test_resize_strided_and_broadcast_inputs():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 120, 4), dtype=np.uint8)
    view = img[::-1, ::2, 2::-1]  # negative and non-unit strides, BGR order
    ref = torch_resize(view, 40, 32)
    assert np.abs(_core.resize_bilinear_aa(view, 40, 32) - ref).max() <= 1e-3
    gray = np.broadcast_to(img[:, :, :1], (90, 120, 3))
    assert np.abs(_core.resize_bilinear_aa(gray, 33, 47) - torch_resize(gray, 33, 47)).max() <= 1e-3


def ref_target(h, w, maxp, patch=16, merge=2):
    unit, k = patch * merge, 0
    while True:
        s = 1.0 - 0.02 * k
        th, tw = max(unit, math.ceil(h * s / unit) * unit), max(unit, math.ceil(w * s / unit) * unit)
        if (th // patch) * (tw // patch) <= maxp:
            return th, tw
        k += 1


@pytest.mark.parametrize("h,w,maxp", [(500, 500, 36864), (1, 1, 36864), (3000, 4000, 36864),
                                      (1080, 1920, 4096), (20000, 20000, 36864), (7, 3000, 256)])
def test_target_size(h, w, maxp):
    oh, ow = _core.vision_target_size(h, w, maxp)
    assert (oh, ow) == ref_target(h, w, maxp)
    assert oh % 32 == 0 and ow % 32 == 0 and (oh // 16) * (ow // 16) <= maxp


def test_target_size_extreme_aspect_terminates():
    oh, ow = _core.vision_target_size(1, 10**7, 36864)
    assert oh == 32 and (oh // 16) * (ow // 16) <= 36864
    with pytest.raises(ValueError):
        _core.vision_target_size(10, 10, 3)  # cannot hold one merged token
    with pytest.raises(ValueError):
        _core.vision_target_size(0, 10, 36864)


def test_patch_order():
    # An image whose pixel values encode position: check the merge-block order.
    h, w = 64, 96
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[..., 0] = yy
    img[..., 1] = xx
    img[..., 2] = 7
    patches, (gh, gw), size = _core.preprocess(img, 36864)
    assert (gh, gw) == (4, 6) and size == (64, 96) and patches.shape == (24, 768)
    px = (patches.reshape(24, 16, 16, 3) + 1) / 2 * 255  # undo normalisation
    for t in range(24):
        b, i = divmod(t, 4)
        prow, pcol = (b // 3) * 2 + i // 2, (b % 3) * 2 + i % 2
        np.testing.assert_allclose(px[t, :, :, 0], yy[prow * 16:(prow + 1) * 16, pcol * 16:(pcol + 1) * 16], atol=1e-3)
        np.testing.assert_allclose(px[t, :, :, 1], xx[prow * 16:(prow + 1) * 16, pcol * 16:(pcol + 1) * 16], atol=1e-3)
        np.testing.assert_allclose(px[t, :, :, 2], 7, atol=1e-3)


def test_inputs_accepted(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(to_rgb_array(rgba), rgb)
    gray = rgb[:, :, 0]
    assert np.array_equal(to_rgb_array(gray), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(to_rgb_array(Image.fromarray(rgb)), rgb)
    assert np.array_equal(to_rgb_array(Image.fromarray(rgba)), rgb)
    assert np.array_equal(to_rgb_array(Image.fromarray(gray)), np.repeat(gray[:, :, None], 3, axis=2))
    p = tmp_path / "x.png"
    Image.fromarray(rgb).save(p)
    assert np.array_equal(to_rgb_array(p), rgb)
    assert np.array_equal(to_rgb_array(str(p)), rgb)


def test_bad_images():
    from PIL import Image

    with pytest.raises(TypeError):
        to_rgb_array(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(TypeError):
        to_rgb_array(np.zeros((10, 10, 3), np.uint16))
    with pytest.raises(TypeError):
        to_rgb_array([[1, 2], [3, 4]])
    with pytest.raises(ValueError):
        to_rgb_array(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        to_rgb_array(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ValueError):
        to_rgb_array(np.zeros((2, 10, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        to_rgb_array(Image.fromarray(np.zeros((8, 8), np.uint16)))  # 16-bit PIL image
    with pytest.raises(FileNotFoundError):
        to_rgb_array("/nonexistent/image.png")
    with pytest.raises(TypeError):
        _core.preprocess(np.zeros((4, 4, 3), np.float32), 36864)
    with pytest.raises(ValueError):
        _core.preprocess(np.zeros((4, 0, 3), np.uint8), 36864)


def test_tiny_and_huge_images():
    one = np.full((1, 1, 3), 200, np.uint8)
    patches, grid, size = _core.preprocess(to_rgb_array(one), 36864)
    assert grid == (2, 2) and size == (32, 32)
    np.testing.assert_allclose(patches, 200 / 255 * 2 - 1, atol=1e-6)  # constant image stays constant
    # 20000 x 20000: a zero-stride broadcast view (1.2 GB if it were real) shrinks
    # under max_num_patches; rows are streamed, nothing full-size is allocated.
    huge = np.broadcast_to(np.array([10, 20, 30], np.uint8), (20000, 20000, 3))
    patches, grid, size = _core.preprocess(to_rgb_array(huge), 1024)
    assert grid[0] * grid[1] <= 1024 and size == (grid[0] * 16, grid[1] * 16)
    assert np.isfinite(patches).all()
    expect = np.broadcast_to((np.array([10, 20, 30]) / 255 - 0.5) / 0.5, (patches.size // 3, 3))
    np.testing.assert_allclose(patches.reshape(-1, 3), expect, atol=1e-5)
