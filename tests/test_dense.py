"""Dense decoding math in C against an independent NumPy re-derivation (and torch's
F.interpolate for the resampling), on random hidden states / logits."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densemllm import _core


def bf16_round(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(h):
    return (h.astype(np.uint32) << 16).view(np.float32)


def np_bilinear(x, oh, ow):
    """Half-pixel-centre bilinear resize of x[h, w, C] written from the formula."""
    h, w, _ = x.shape

    def taps(n_in, n_out):
        s = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(s).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    y0, y1, ly = taps(h, oh)
    x0, x1, lx = taps(w, ow)
    x = x.astype(np.float64)
    top = x[y0][:, x0] * (1 - lx)[None, :, None] + x[y0][:, x1] * lx[None, :, None]
    bot = x[y1][:, x0] * (1 - lx)[None, :, None] + x[y1][:, x1] * lx[None, :, None]
    return top * (1 - ly)[:, None, None] + bot * ly[:, None, None]


def torch_bilinear(x, oh, ow):
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    return F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False)[0].numpy().transpose(1, 2, 0)


def classes(rng, K, vocab):
    """CSR class -> ids with 1..3 ids per class, sharing some ids across classes."""
    lens = rng.integers(1, 4, K)
    ids = rng.integers(0, vocab, lens.sum())
    ids[-1] = ids[0]  # a shared sub-word
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), ids.astype(np.int64)


def np_class_logits(hidden, head, offsets, ids):
    z = hidden.astype(np.float64) @ head.astype(np.float64).T
    return np.stack([z[:, ids[offsets[k]:offsets[k + 1]]].mean(1) for k in range(len(offsets) - 1)], 1)


@pytest.mark.parametrize("backend", ["onednn", "openblas"])
def test_class_logits_f32_head(backend):
    rng = np.random.default_rng(1)
    T, D, V, K = 37, 48, 300, 9
    hidden = rng.standard_normal((T, D), dtype=np.float32)
    head = rng.standard_normal((V, D), dtype=np.float32)
    off, ids = classes(rng, K, V)
    out = _core.dense_class_logits(hidden, head, off, ids, backend=backend)
    ref = np_class_logits(hidden, head, off, ids)
    # f32 dot products over D=48 terms of unit-variance values: |err| << 1e-4.
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", ["onednn", "openblas"])
def test_class_logits_bf16_head_in_place(backend):
    rng = np.random.default_rng(2)
    T, D, V, K = 20, 64, 500, 6
    hidden = rng.standard_normal((T, D), dtype=np.float32)
    head = bf16_round(rng.standard_normal((V, D), dtype=np.float32))
    off, ids = classes(rng, K, V)
    out = _core.dense_class_logits(hidden, head, off, ids, bf16=True, backend=backend)
    ref = np_class_logits(hidden, from_bf16(head), off, ids)
    # oneDNN rounds the activations to bf16 (rel. 2^-9 per term, ~sqrt(D)*|x||w| 2^-9 in
    # the sum); OpenBLAS widens the weights and stays f32. Bound: 8 * 2^-9 * sqrt(64).
    tol = 8 * 2.0**-9 * np.sqrt(D) if backend == "onednn" else 1e-4
    assert np.abs(out - ref).max() <= tol


def test_class_logits_bad_inputs():
    h = np.zeros((4, 8), np.float32)
    head = np.zeros((10, 8), np.float32)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        _core.dense_class_logits(h, head, np.array([0, 1], np.int64), np.array([10], np.int64))
    with pytest.raises(IndexError):
        _core.dense_class_logits(h, head, np.array([0, 1], np.int64), np.array([-1], np.int64))
    with pytest.raises(ValueError, match="no token ids"):
        _core.dense_class_logits(h, head, np.array([0, 1, 1], np.int64), np.array([3], np.int64))
    with pytest.raises(ValueError, match="offsets"):
        _core.dense_class_logits(h, head, np.array([0, 2], np.int64), np.array([3], np.int64))
    with pytest.raises(ValueError, match="head must be"):
        _core.dense_class_logits(h, np.zeros((10, 7), np.float32), np.array([0, 1], np.int64),
                                 np.array([3], np.int64))
    with pytest.raises(TypeError):
        _core.dense_class_logits(h.astype(np.float64), head, np.array([0, 1], np.int64),
                                 np.array([3], np.int64))


@pytest.mark.parametrize("hw,out", [((3, 5), (12, 20)), ((4, 4), (7, 13)), ((1, 1), (5, 3)),
                                    ((6, 9), (4, 5)), ((5, 7), (5, 7))])
def test_upsample_bilinear_matches_torch_and_numpy(hw, out):
    rng = np.random.default_rng(hw[0] * 10 + out[1])
    x = rng.standard_normal((*hw, 4), dtype=np.float32)
    got = _core.dense_upsample_bilinear(x, out)
    # float32 interpolation of unit values: a few ulps.
    np.testing.assert_allclose(got, torch_bilinear(x, *out), atol=2e-6)
    np.testing.assert_allclose(got, np_bilinear(x, *out), atol=2e-6)


@pytest.mark.parametrize("h,w,K,oh,ow", [(6, 8, 7, 37, 53), (5, 7, 12, 200, 280), (3, 2, 40, 96, 64)])
def test_upsample_argmax_plain_and_background(h, w, K, oh, ow):
    """Large factors exercise the run bisection (the C code skips interior pixels whose
    run ends agree); the reference evaluates every pixel."""
    rng = np.random.default_rng(3 + K)
    z = (3 * rng.standard_normal((h, w, K))).astype(np.float32)
    up = np_bilinear(z, oh, ow)
    top2 = np.sort(up, -1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-4  # skip float near-ties
    assert clear.mean() > 0.98
    lab = _core.dense_upsample_argmax(z, (oh, ow))
    assert lab.dtype == np.int32 and lab.shape == (oh, ow)
    np.testing.assert_array_equal(lab[clear], up.argmax(-1)[clear])
    # background mode: scores [0.5, sigmoid(0.25 z_k)], argmax, label 0 = background
    z2 = (z - np.median(z.max(-1))).astype(np.float32)  # the background wins about half the tokens
    up2 = np_bilinear(z2, oh, ow)
    sc = np.concatenate([np.full((oh, ow, 1), 0.5), 1 / (1 + np.exp(-0.25 * up2))], -1)
    srt = np.sort(sc, -1)
    clear2 = (srt[..., -1] - srt[..., -2]) > 1e-5
    lab2 = _core.dense_upsample_argmax(z2, (oh, ow), background=True)
    ref2 = sc.argmax(-1)
    assert (ref2 == 0).any() and (ref2 > 0).any()
    np.testing.assert_array_equal(lab2[clear2], ref2[clear2])
    with pytest.raises(ValueError, match="bg_score"):
        _core.dense_upsample_argmax(z2, (oh, ow), background=True, bg_score=1.0)


def test_scores_softmax_and_background():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((5, 6, 11), dtype=np.float32)
    p = _core.dense_scores(z, temperature=0.2)
    e = np.exp((z - z.max(-1, keepdims=True)) / 0.2)
    np.testing.assert_allclose(p, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    b = _core.dense_scores(z, background=True)
    assert b.shape == (5, 6, 12)
    np.testing.assert_array_equal(b[..., 0], 0.5)
    np.testing.assert_allclose(b[..., 1:], 1 / (1 + np.exp(-0.25 * z.astype(np.float64))), rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        _core.dense_scores(z, temperature=0.0)


@pytest.mark.parametrize("mode,dmin,dmax", [("linear", 0.0, 10.0), ("linear", 0.05, 120.0),
                                            ("log", 0.5, 100.0)])
def test_depth_dequantize(mode, dmin, dmax):
    bins = np.array([0, 1, 500.5, 1000, 1200, np.nan, 0.4], np.float32)
    d = _core.dense_depth_dequantize(bins, mode, dmin, dmax, scale=1.0)
    f = (np.minimum(bins[1:5].astype(np.float64), 1000) - 1) / 999
    ref = dmin + (dmax - dmin) * f if mode == "linear" else dmin * (dmax / dmin) ** f
    np.testing.assert_allclose(d[1:5], ref, rtol=1e-6)
    assert d[1] == pytest.approx(dmin) and d[3] == pytest.approx(dmax)
    assert np.isnan(d[[0, 5, 6]]).all()
    d2 = _core.dense_depth_dequantize(bins, mode, dmin, dmax, scale=0.5)
    np.testing.assert_allclose(d2[1:5], d[1:5] * 0.5, rtol=1e-6)
    with pytest.raises(ValueError):
        _core.dense_depth_dequantize(bins, "cubic", dmin, dmax)
    with pytest.raises(ValueError):
        _core.dense_depth_dequantize(bins, mode, dmax, dmin)


def test_depth_pipeline_numpy_rederivation():
    """hidden -> logits of <custom_1..1000> -> x2 bilinear -> argmax + 1 -> resize -> metres."""
    rng = np.random.default_rng(5)
    gh2, gw2, D, nb = 3, 4, 32, 1000
    hidden = rng.standard_normal((gh2 * gw2, D), dtype=np.float32)
    head = rng.standard_normal((nb + 5, D), dtype=np.float32)
    ids = np.arange(5, 5 + nb, dtype=np.int64)  # one id per bin
    z = _core.dense_class_logits(hidden, head, np.arange(nb + 1, dtype=np.int64), ids,
                                 backend="openblas")
    zr = z.reshape(gh2, gw2, nb)
    bins = _core.dense_upsample_argmax(zr, (2 * gh2, 2 * gw2)) + 1
    up = np_bilinear((hidden.astype(np.float64) @ head[5:].T.astype(np.float64)).reshape(gh2, gw2, nb),
                     2 * gh2, 2 * gw2)
    np.testing.assert_array_equal(bins, up.argmax(-1) + 1)
    H, W = 50, 70
    fb = _core.dense_upsample_bilinear(bins.astype(np.float32)[..., None], (H, W))[..., 0]
    depth = _core.dense_depth_dequantize(fb, "linear", 0.0, 10.0)
    ref = (np_bilinear(bins[..., None].astype(np.float64), H, W)[..., 0] - 1) / 999 * 10.0
    np.testing.assert_allclose(depth, ref, rtol=1e-5, atol=1e-5)


def test_resize_bad_sizes():
    x = np.zeros((2, 2, 1), np.float32)
    for size in [(0, 3), (3, -1), "ab", (1, 2, 3)]:
        with pytest.raises((ValueError, TypeError)):
            _core.dense_upsample_bilinear(x, size)
    with pytest.raises(ValueError):
        _core.dense_upsample_argmax(np.zeros((0, 2, 1), np.float32), (3, 3))
