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
    """torch's uint8 kernel, the resize of the official (fast, torchvision) processor."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    assert t.dtype == torch.uint8
    r = F.interpolate(t, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)
    return r[0].permute(1, 2, 0).numpy()


def official_pixels(rgb, oh, ow):
    """float32 [3, oh, ow]: torch uint8 resize, then transformers' fused rescale + normalise
    (image_processing_backends.TorchvisionBackend.rescale_and_normalize: mean and std
    multiplied by 1 / rescale_factor as float32 tensors, then tvF.normalize, i.e.
    (x.float() - mean) / std)."""
    t = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None]
    r = F.interpolate(t, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)[0]
    mean = torch.tensor([0.5, 0.5, 0.5]) * (1.0 / (1 / 255))
    std = torch.tensor([0.5, 0.5, 0.5]) * (1.0 / (1 / 255))
    return ((r.to(torch.float32) - mean[:, None, None]) / std[:, None, None]).numpy()


RESIZE_CASES = [
    (37, 53, 64, 96),  # up, odd sizes
    (300, 200, 64, 32),  # down by ~5x
    (17, 1000, 32, 320),  # extreme aspect ratio, down in x, up in y
    (1000, 7, 96, 32),  # extreme portrait
    (5, 5, 64, 64),  # tiny -> large
    (641, 479, 224, 160),  # odd, down
    (64, 64, 64, 64),  # identity
    (1, 333, 32, 96),  # 1xN
    (333, 1, 96, 32),  # Nx1
    (64, 333, 64, 96),  # height unchanged: torch skips the vertical pass
    (333, 64, 96, 64),  # width unchanged: torch skips the horizontal pass
    (3, 5000, 32, 1024),  # 1:1600, shrink by ~5x with ~11 taps
]


@pytest.mark.parametrize("h,w,oh,ow", RESIZE_CASES)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_resize_bit_exact_to_torch_uint8(h, w, oh, ow, channels):
    rng = np.random.default_rng(h * w + channels)
    img = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    out = _core.resize_bilinear_aa(img, oh, ow)
    assert out.dtype == np.uint8 and out.shape == (oh, ow, channels)
    ref = torch_resize(img, oh, ow)
    assert np.abs(out.astype(np.int16) - ref.astype(np.int16)).max() == 0


def test_resize_strided_and_broadcast_inputs():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 120, 4), dtype=np.uint8)
    view = img[::-1, ::2, 2::-1]  # negative and non-unit strides, BGR order
    np.testing.assert_array_equal(_core.resize_bilinear_aa(view, 40, 32), torch_resize(view, 40, 32))
    gray = np.broadcast_to(img[:, :, :1], (90, 120, 3))
    np.testing.assert_array_equal(_core.resize_bilinear_aa(gray, 33, 47), torch_resize(gray, 33, 47))


def _patches_to_chw(patches, grid, size, patch=16, merge=2):
    gh, gw = grid
    x = patches.reshape(gh // merge, gw // merge, merge, merge, patch, patch, 3)
    return x.transpose(6, 0, 2, 4, 1, 3, 5).reshape(3, size[0], size[1])


@pytest.mark.parametrize("h,w,maxp", [
    (37, 53, 36864),  # up to 64x64
    (300, 200, 36864),  # up to 320x224
    (1, 333, 36864), (333, 1, 36864),  # 1xN, Nx1
    (17, 3000, 36864),  # extreme aspect ratio
    (641, 479, 256),  # the size rule shrinks the scale (steps of 0.02) and resizes down
    (1000, 999, 1024),  # rule changes scale, odd target ratio
])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_preprocess_equals_official_pixels(h, w, maxp, mode):
    """The whole preprocessing (size rule, uint8 resize, fused rescale/normalise, patch
    order) against torch directly: max abs difference 0 on the pixel values."""
    from PIL import Image

    rng = np.random.default_rng(h + w)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
    rgb = np.asarray(img.convert("RGB"))  # what the official processor's convert_rgb gives
    patches, grid, size = _core.preprocess(to_rgb_array(img), maxp, 16, 2)
    assert (size[0], size[1]) == ref_target(h, w, maxp)
    got = _patches_to_chw(patches, grid, size)
    want = official_pixels(rgb, *size)
    assert got.dtype == np.float32 and np.abs(got - want).max() == 0
    # numpy inputs of the same image (HxW, HxWx1, HxWx4) give identical patches
    if mode == "L":
        for a in (arr[..., 0], arr):
            np.testing.assert_array_equal(_core.preprocess(to_rgb_array(a), maxp, 16, 2)[0], patches)
    if mode == "RGBA":
        np.testing.assert_array_equal(_core.preprocess(to_rgb_array(arr), maxp, 16, 2)[0], patches)


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
    oh, ow = _core.vision_target_size(h, w, maxp, 16, 2)
    assert (oh, ow) == ref_target(h, w, maxp)
    assert oh % 32 == 0 and ow % 32 == 0 and (oh // 16) * (ow // 16) <= maxp


def test_target_size_extreme_aspect_terminates():
    oh, ow = _core.vision_target_size(1, 10**7, 36864, 16, 2)
    assert oh == 32 and (oh // 16) * (ow // 16) <= 36864
    with pytest.raises(ValueError):
        _core.vision_target_size(10, 10, 3, 16, 2)  # cannot hold one merged token
    with pytest.raises(ValueError):
        _core.vision_target_size(0, 10, 36864, 16, 2)


def test_patch_order():
    # An image whose pixel values encode position: check the merge-block order.
    h, w = 64, 96
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[..., 0] = yy
    img[..., 1] = xx
    img[..., 2] = 7
    patches, (gh, gw), size = _core.preprocess(img, 36864, 16, 2)
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
    with pytest.raises(TypeError, match="not an 8-bit image"):
        to_rgb_array(Image.fromarray(np.zeros((8, 8), np.uint16)))  # 16-bit PIL image: never clipped
    with pytest.raises(TypeError, match="not an 8-bit image"):
        to_rgb_array(Image.fromarray(np.zeros((8, 8), np.float32)))  # float PIL image ("F")
    with pytest.raises(FileNotFoundError):
        to_rgb_array("/nonexistent/image.png")
    with pytest.raises(TypeError):
        _core.preprocess(np.zeros((4, 4, 3), np.float32), 36864, 16, 2)
    with pytest.raises(ValueError):
        _core.preprocess(np.zeros((4, 0, 3), np.uint8), 36864, 16, 2)


def test_tiny_and_huge_images():
    one = np.full((1, 1, 3), 200, np.uint8)
    patches, grid, size = _core.preprocess(to_rgb_array(one), 36864, 16, 2)
    assert grid == (2, 2) and size == (32, 32)
    np.testing.assert_allclose(patches, 200 / 255 * 2 - 1, atol=1e-6)  # constant image stays constant
    # 16000 x 16000: a zero-stride broadcast view (768 MB if it were real) shrinks
    # under max_num_patches; rows are streamed, nothing full-size is allocated.
    # Above DM_MAX_IMAGE_PIXELS (2^28) the input is refused before any work.
    too_big = np.broadcast_to(np.array([10, 20, 30], np.uint8), (20000, 20000, 3))
    with pytest.raises(ValueError, match="exceeds the limit"):
        _core.preprocess(to_rgb_array(too_big), 1024, 16, 2)
    huge = np.broadcast_to(np.array([10, 20, 30], np.uint8), (16000, 16000, 3))
    patches, grid, size = _core.preprocess(to_rgb_array(huge), 1024, 16, 2)
    assert grid[0] * grid[1] <= 1024 and size == (grid[0] * 16, grid[1] * 16)
    assert np.isfinite(patches).all()
    expect = np.broadcast_to((np.array([10, 20, 30]) / 255 - 0.5) / 0.5, (patches.size // 3, 3))
    np.testing.assert_allclose(patches.reshape(-1, 3), expect, atol=1e-5)
