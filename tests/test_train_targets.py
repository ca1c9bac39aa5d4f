"""Dense targets (densemllm/train/targets.py): known answers per the issue's acceptance.

The tiny checkpoint's vision tokens cover 32 x 32 px (patch 16, merge 2), so a 64 x 64
image is a 2 x 2 token grid with no resize, and token (r, c) covers rows 32r..32r+31,
columns 32c..32c+31. Class ids, <custom_N>, <FG>, <BG> come from the tokenizer.
"""
import numpy as np
import pytest
from PIL import Image

import densemllm
from densemllm.testing import make_checkpoint
from densemllm.train.targets import (Depth, Referring, Segmentation, bins_to_depth, build, depth_to_bins,
                                     resize_nearest)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return densemllm.load(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "m", dtype="f32"))


def ids(model, name):
    return model.tokenizer.encode(name)


def test_two_classes_across_a_token_boundary(model):
    lm = np.zeros((64, 64), np.int64)
    lm[:, 40:] = 1  # class 0 in columns 0..39, class 1 in 40..63
    t = build(model, Segmentation(lm, ["sky", "road"]), (64, 64), (64, 64))
    sky, road = ids(model, "sky"), ids(model, "road")
    assert t.grid == (2, 2)
    assert t.positives[0].tolist() == sorted(set(sky))                 # token (0, 0): columns 0..31
    assert t.positives[1].tolist() == sorted(set(sky) | set(road))     # token (0, 1): 32..39 sky, 40..63 road
    assert t.labels[1] == road[0]                                       # single-label: road covers 24 of 32 columns
    assert t.labels[0] == sky[0]
    assert t.valid_sets[t.token_set[0]].tolist() == sorted(set(sky) | set(road))


def test_multi_token_class_has_all_its_subword_ids(model):
    name = "quick brown fox"
    sub = ids(model, name)
    assert len(sub) > 1  # a multi-token name in this tokenizer
    lm = np.zeros((64, 64), np.int64)
    t = build(model, Segmentation(lm, [name]), (64, 64), (64, 64))
    assert all(p.tolist() == sorted(set(sub)) for p in t.positives)


def test_ignored_region_gives_no_positive_and_is_masked(model):
    lm = np.zeros((64, 64), np.int64)
    lm[32:, :] = 255   # bottom row of tokens wholly ignored
    lm[:32, 60:] = 255  # part of token (0, 1) ignored: the rest still counts
    t = build(model, Segmentation(lm, ["sky"]), (64, 64), (64, 64))
    n = len(set(ids(model, "sky")))
    assert [len(p) for p in t.positives] == [n, n, 0, 0]
    assert t.valid_sets[t.token_set[2]].size == 0 and t.valid_sets[t.token_set[3]].size == 0
    assert (t.labels[2:] == -1).all()


def test_label_map_resized_like_the_image_with_pillow_nearest(model):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)
    size = model.preprocess(img).size
    assert size != (45, 70)  # the model sees a resized image
    lm = rng.integers(0, 3, (45, 70)).astype(np.uint8)
    ref = np.asarray(Image.fromarray(lm).resize((size[1], size[0]), Image.NEAREST))
    np.testing.assert_array_equal(resize_nearest(lm, size), ref)
    t = build(model, Segmentation(lm, ["sky", "road", "car"]), img.shape[:2], size)
    assert t.grid == (size[0] // 32, size[1] // 32) and t.n_tokens == t.grid[0] * t.grid[1]


def test_depth_ramp_gives_the_expected_bins(model):
    # NYUv2: linear 0..10 m onto bins 1..1000; token (r, c) constant at 1.0 + 2.5 (2r + c)
    d = np.zeros((64, 64))
    for r in range(2):
        for c in range(2):
            d[32 * r:32 * r + 32, 32 * c:32 * c + 32] = 1.0 + 2.5 * (2 * r + c)
    t = build(model, Depth(d, "NYUv2"), (64, 64), (64, 64))
    # 1 + round(d / 10 * 999): 1.0 -> 101, 3.5 -> 351 (349.65), 6.0 -> 600 (599.4), 8.5 -> 850 (849.15)
    want = [101, 351, 600, 850]
    got = [int(model.tokenizer.id_to_token(p[0])[len("<custom_"):-1]) for p in t.positives]
    assert got == want
    # a ramp along x (column 0 is 0 m = invalid): token (0, 0)'s bin is that of the median
    # of its valid pixels, column 16 (2.5 m -> 1 + round(249.75) = 251)
    x = np.tile(np.arange(64) * (10.0 / 64), (64, 1))
    t = build(model, Depth(x, "NYUv2"), (64, 64), (64, 64))
    assert model.tokenizer.id_to_token(t.positives[0][0]) == "<custom_251>"
    assert model.tokenizer.id_to_token(t.positives[1][0]) == f"<custom_{1 + round(47.5 * 10 / 64 / 10 * 999)}>"
    t = build(model, Depth(x, "NYUv2", rule="present"), (64, 64), (64, 64))
    assert len(t.positives[0]) == 31 and len(t.positives[1]) == 32  # distinct column depths, ~15.6 bins apart


@pytest.mark.parametrize("dataset", ["NYUv2", "Cityscapes", "DDAD", None])
def test_decode_encode_within_one_bin(dataset):
    from densemllm.tasks.depth import RANGES

    mode, lo, hi = RANGES[dataset]
    rng = np.random.default_rng(1)
    d = rng.uniform(max(lo, 1e-3), hi, 20000)
    d[:5] = [lo if lo > 0 else 1e-3, hi, (lo + hi) / 2, 0.0, np.nan]
    b = depth_to_bins(d, dataset)
    assert b[3] == 0 and b[4] == 0  # invalid
    back = bins_to_depth(b[:3].tolist() + b[5:].tolist(), dataset)
    ok = np.r_[d[:3], d[5:]]
    if mode == "linear":
        width = (hi - lo) / 999
        assert np.abs(back - ok).max() <= width * 0.5 + 1e-4 * hi
    else:
        ratio = (hi / lo) ** (1 / 999)
        assert (np.maximum(back / ok, ok / back)).max() <= ratio ** 0.5 * (1 + 1e-5)


def test_referring_fg_bg(model):
    m = np.zeros((64, 64), bool)
    m[:, :48] = True
    t = build(model, Referring(m), (64, 64), (64, 64))
    fg, bg = model.tokenizer.token_to_id("<FG>"), model.tokenizer.token_to_id("<BG>")
    assert t.positives[0].tolist() == [fg]
    assert t.positives[1].tolist() == sorted([fg, bg])  # 16 FG + 16 BG columns
    assert t.labels.tolist() == [fg, bg, fg, bg]  # tie -> <BG>
    assert t.valid_sets[0].tolist() == sorted([fg, bg])


def test_bad_input(model):
    lm = np.zeros((64, 64), np.int64)
    with pytest.raises(ValueError, match=r"label_map: its size 60x64 \(WxH\) differs from the image's 64x64"):
        build(model, Segmentation(np.zeros((64, 60), np.int64), ["sky"]), (64, 64), (64, 64))
    with pytest.raises(ValueError, match=r"prompt_classes: unknown class name\(s\) \['zebra'\]"):
        build(model, Segmentation(lm, ["sky", "road"], prompt_classes=["sky", "zebra"]), (64, 64), (64, 64))
    with pytest.raises(ValueError, match=r"values \[7\] are neither class values"):
        build(model, Segmentation(lm + 7, ["sky"]), (64, 64), (64, 64))
    with pytest.raises(ValueError, match="no valid pixel"):
        build(model, Depth(np.zeros((64, 64)), "NYUv2"), (64, 64), (64, 64))
    with pytest.raises(ValueError, match="unknown depth dataset"):
        build(model, Depth(np.ones((64, 64)), "KITTI"), (64, 64), (64, 64))
    with pytest.raises(ValueError, match="binary mask"):
        build(model, Referring(np.full((64, 64), 3)), (64, 64), (64, 64))
