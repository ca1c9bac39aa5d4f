"""DenseCRF (csrc/dense/crf.c, densemllm/crf.py) against an exact O(N^2) mean-field reference in
NumPy, pydensecrf2 (the original densecrf code) on the same inputs, limiting cases, a constructed
noisy segmentation, bad inputs and thread safety.

Tolerances (why they are what they are):
- The permutohedral lattice approximates the Gaussian sums; the method's error, not ours. On
  these image-like features the symmetrically normalised message (the quantity mean field uses)
  differs from the exact one by at most ~6% (position kernel, d = 2) and ~14% (bilateral, d = 5),
  ~1-2% on average (measured; asserted below at 8% / 18% max, 1.5% / 3% mean).
- A logit error delta moves a softmax probability by at most delta / 2, so pixels near a decision
  boundary may move by a few 1e-2 while confident pixels barely move: Q is compared by its mean
  absolute difference (<= 2e-3; measured <= 8e-4) and 99th percentile (<= 0.03; measured
  <= 0.011), and argmax labels must agree on >= 99% of pixels (measured >= 99.8%).
- pydensecrf2 runs the same lattice in float32 with a different summation order and exp: Q
  agrees to 1e-4 absolute (measured <= 1.3e-6 here, ~3e-5 on random probabilities).
"""
import threading

import numpy as np
import pytest

import densemllm
from densemllm import _core
from densemllm.crf import crf_grid_labels, crf_settings, dense_crf


def exact_crf(image, probs, sxy_gaussian=3.0, compat_gaussian=3.0, sxy_bilateral=80.0, srgb=13.0,
              compat_bilateral=10.0, iterations=5, clip=1e-5):
    """Mean field with exact Gaussian sums (float64, O(N^2)), the same model as densecrf:
    k(i, j) includes j = i, NORMALIZE_SYMMETRIC, Potts, unary -log(clip(p, clip, 1))."""
    H, W, C = probs.shape
    yy, xx = np.mgrid[0:H, 0:W]
    pos = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)
    mats = []
    if compat_gaussian > 0:
        mats.append((compat_gaussian, pos / sxy_gaussian))
    if compat_bilateral > 0:
        mats.append((compat_bilateral, np.concatenate([pos / sxy_bilateral,
                                                       image.reshape(-1, 3).astype(np.float64) / srgb], 1)))
    ops = []
    for w, f in mats:
        sq = (f * f).sum(1)
        K = np.exp(-0.5 * np.maximum(sq[:, None] + sq[None, :] - 2 * f @ f.T, 0))
        nrm = 1 / np.sqrt(K.sum(1))
        ops.append(w * nrm[:, None] * K * nrm[None, :])
    logp = np.log(np.clip(probs.reshape(-1, C).astype(np.float64), clip, 1))

    def softmax(a):
        e = np.exp(a - a.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    Q = softmax(logp)
    for _ in range(iterations):
        Q = softmax(logp + sum(M @ Q for M in ops))
    return Q.reshape(H, W, C)


def scene(rng, H, W, C, noise=0.5, temperature=0.2):
    """Voronoi regions with their own colours (+ pixel noise) and logits one-hot + Gaussian noise,
    softmax at the paper's temperature."""
    cy, cx = rng.integers(0, H, C), rng.integers(0, W, C)
    yy, xx = np.mgrid[0:H, 0:W]
    labels = ((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2).argmin(-1)
    palette = rng.integers(0, 256, (C, 3))
    image = np.clip(palette[labels] + rng.normal(0, 8, (H, W, 3)), 0, 255).astype(np.uint8)
    z = (np.eye(C)[labels] + rng.normal(0, noise, (H, W, C))) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    return image, (p / p.sum(-1, keepdims=True)).astype(np.float32), labels


def miou(pred, gt, C):
    ious = [((pred == c) & (gt == c)).sum() / ((pred == c) | (gt == c)).sum()
            for c in range(C) if ((pred == c) | (gt == c)).any()]
    return float(np.mean(ious))


def exact_filter(f, v):
    f = f.astype(np.float64)
    d2 = ((f[:, None] - f[None]) ** 2).sum(-1)
    return np.exp(-0.5 * d2) @ v


@pytest.mark.parametrize("kind,max_err,mean_err", [("gaussian", 0.08, 0.015), ("bilateral", 0.18, 0.03)])
def test_lattice_message_close_to_exact_gaussian(kind, max_err, mean_err):
    rng = np.random.default_rng(2)
    H, W = 24, 32
    image, _, _ = scene(rng, H, W, 5)
    yy, xx = np.mgrid[0:H, 0:W]
    pos = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)
    f = pos / 3 if kind == "gaussian" else np.concatenate([pos / 80, image.reshape(-1, 3) / 13.0], 1)
    f = np.ascontiguousarray(f, dtype=np.float32)
    v = rng.random((H * W, 3)).astype(np.float32)
    one = np.ones((H * W, 1), np.float32)
    # the symmetric normalisation removes the lattice's overall scale: compare n K (n v)
    n_lat = 1 / np.sqrt(_core.crf_lattice_filter(f, one))
    n_ex = 1 / np.sqrt(exact_filter(f, one))
    lat = n_lat * _core.crf_lattice_filter(f, np.ascontiguousarray(n_lat * v, dtype=np.float32))
    ex = n_ex * exact_filter(f, n_ex * v)
    rel = np.abs(lat - ex) / ex
    print(f"{kind}: normalised message rel err max {rel.max():.4f} mean {rel.mean():.4f}")
    assert rel.max() <= max_err and rel.mean() <= mean_err


@pytest.mark.parametrize("kw", [dict(compat_bilateral=0), dict(compat_gaussian=0), dict(),
                                dict(sxy_bilateral=10, srgb=20, iterations=3)],
                         ids=["gaussian", "bilateral", "both", "both-small-sxy"])
def test_q_matches_exact_mean_field(kw):
    for seed in range(2):
        rng = np.random.default_rng(10 + seed)
        image, p, _ = scene(rng, 28, 36, 5)
        Q = dense_crf(image, p, **kw)
        R = exact_crf(image, p, **kw)
        dq = np.abs(Q - R)
        agree = (Q.argmax(-1) == R.argmax(-1)).mean()
        print(f"{kw} seed {seed}: |dQ| mean {dq.mean():.2e} p99 {np.quantile(dq, 0.99):.2e} "
              f"max {dq.max():.3f}; labels agree {agree:.4f}")
        assert Q.dtype == np.float32 and Q.shape == p.shape
        np.testing.assert_allclose(Q.sum(-1), 1.0, atol=1e-5)
        assert dq.mean() <= 2e-3 and np.quantile(dq, 0.99) <= 0.03
        assert agree >= 0.99


def test_huge_sxy_without_bilateral_is_uniform_smoothing():
    # every pair gets weight ~1, so n(i) = 1/sqrt(N) and the message is compat * mean_j Q_j
    rng = np.random.default_rng(3)
    H, W, C = 20, 30, 4
    p = rng.dirichlet(np.ones(C), size=(H, W)).astype(np.float32)
    Q = dense_crf(None, p, sxy_gaussian=1e5, compat_gaussian=3, compat_bilateral=0, iterations=5)
    logp = np.log(np.clip(p.reshape(-1, C).astype(np.float64), 1e-5, 1))
    q = np.exp(logp) / np.exp(logp).sum(1, keepdims=True)
    for _ in range(5):
        a = logp + 3 * q.mean(0)
        q = np.exp(a - a.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
    # kernel weights are 1 - O(W / sxy) = 1 - 3e-4 on the lattice; float32 sums
    np.testing.assert_allclose(Q.reshape(-1, C), q, atol=1e-5)


def test_compat_zero_returns_the_unary():
    rng = np.random.default_rng(4)
    image, p, _ = scene(rng, 17, 23, 6, noise=2.0)
    p[0, 0] = 0  # clipped to 1e-5 for every class: uniform
    Q = dense_crf(image, p, compat_gaussian=0, compat_bilateral=0)
    want = np.clip(p, 1e-5, 1) / np.clip(p, 1e-5, 1).sum(-1, keepdims=True)
    np.testing.assert_allclose(Q, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(Q[1:].argmax(-1), p[1:].argmax(-1))
    np.testing.assert_allclose(dense_crf(image, p, iterations=0), want, rtol=1e-5, atol=1e-7)


def test_crf_cleans_salt_and_pepper_noise():
    rng = np.random.default_rng(5)
    H, W, C = 96, 128, 5
    image, _, truth = scene(rng, H, W, C)
    # uncertain unary (0.6 on the true class) with 25% of pixels confidently wrong
    p = np.full((H, W, C), 0.1 / (C - 1), np.float32)
    wrong = rng.random((H, W)) < 0.25
    lab = np.where(wrong, (truth + rng.integers(1, C, (H, W))) % C, truth)
    np.put_along_axis(p, lab[..., None], 0.6, axis=-1)
    before = miou(p.argmax(-1), truth, C)
    after = miou(dense_crf(image, p).argmax(-1), truth, C)
    print(f"salt and pepper: mIoU {before:.3f} -> {after:.3f} (+{after - before:.3f})")
    assert before < 0.65 and after - before >= 0.25


def test_agrees_with_pydensecrf():
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (test extra) not installed")
    rng = np.random.default_rng(6)
    for H, W, C, kw in [(40, 56, 5, {}), (33, 47, 19, dict(sxy_bilateral=30, srgb=20, compat_gaussian=1)),
                        (20, 24, 3, dict(compat_bilateral=0, iterations=10)),
                        # pixel noise of 4 srgb: most pixels get their own simplex, the hash
                        # table grows several times (it starts at 4096 vertices). One step:
                        # float-rounding differences (1e-5 at 4 of 16384 entries after one step)
                        # are amplified by later steps at near-tie pixels (5e-4 after five)
                        (64, 64, 4, dict(srgb=2, sxy_bilateral=5, iterations=1))]:
        image, p, _ = scene(rng, H, W, C)
        s = dict(crf_settings(), **kw)
        Q = dense_crf(image, p, **{k: s[k] for k in ("sxy_gaussian", "compat_gaussian", "sxy_bilateral",
                                                       "srgb", "compat_bilateral", "iterations")})
        d = dcrf.DenseCRF2D(W, H, C)
        U = -np.log(np.clip(p, 1e-5, 1)).transpose(2, 0, 1).reshape(C, -1)
        d.setUnaryEnergy(np.ascontiguousarray(U, dtype=np.float32))
        if s["compat_gaussian"] > 0:
            d.addPairwiseGaussian(sxy=s["sxy_gaussian"], compat=s["compat_gaussian"])
        if s["compat_bilateral"] > 0:
            d.addPairwiseBilateral(sxy=s["sxy_bilateral"], srgb=s["srgb"], rgbim=image, compat=s["compat_bilateral"])
        R = np.array(d.inference(s["iterations"])).reshape(C, H, W).transpose(1, 2, 0)
        print(f"{H}x{W}x{C} {kw}: max |Q - pydensecrf| {np.abs(Q - R).max():.2e}")
        np.testing.assert_allclose(Q, R, atol=1e-4)
        assert (Q.argmax(-1) == R.argmax(-1)).mean() >= 0.999


def test_bad_inputs_name_the_value_and_bound():
    rng = np.random.default_rng(7)
    image, p, _ = scene(rng, 8, 10, 3)
    with pytest.raises(ValueError, match=r"image is 8x11 .* probs is 8x10"):
        dense_crf(np.zeros((8, 11, 3), np.uint8), p)
    bad = p.copy()
    bad[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"probs\[2, 3, 1\] = nan"):
        dense_crf(image, bad)
    bad[2, 3, 1] = 1.5
    with pytest.raises(ValueError, match=r"probs\[2, 3, 1\] = 1.5.*\[0, 1\]"):
        dense_crf(image, bad)
    with pytest.raises(ValueError, match="zero classes"):
        dense_crf(image, np.zeros((8, 10, 0), np.float32))
    with pytest.raises(TypeError, match="dtype int64"):
        dense_crf(image, p.astype(np.int64))
    with pytest.raises(TypeError, match="uint8"):
        dense_crf(image.astype(np.float32), p)
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        dense_crf(image, p[..., 0])
    with pytest.raises(ValueError, match="needs the RGB image"):
        dense_crf(None, p)
    with pytest.raises(ValueError, match=r"compat_gaussian = -1: need 0 <= compat_gaussian"):
        dense_crf(image, p, compat_gaussian=-1)
    with pytest.raises(ValueError, match=r"sxy_bilateral = 0: need a finite value > 0"):
        dense_crf(image, p, sxy_bilateral=0)
    with pytest.raises(ValueError, match=r"srgb = 1e-07 is too small"):
        dense_crf(image, p, srgb=1e-7)
    with pytest.raises(ValueError, match=r"iterations = -1: need 0 <= iterations <= 1000"):
        dense_crf(image, p, iterations=-1)
    with pytest.raises(TypeError, match="iterations must be an integer"):
        dense_crf(image, p, iterations=2.5)
    with pytest.raises(ValueError, match="must be finite"):
        dense_crf(image, p, srgb=float("nan"))
    # the core checks too (the binding is reachable without the wrapper)
    from densemllm.crf import DEFAULTS

    with pytest.raises(ValueError, match=r"probs\[2, 3, 1\]"):
        _core.crf_inference(image, bad, **DEFAULTS)
    with pytest.raises(ValueError, match=r"expected shape \(8, 10, 3\)"):
        _core.crf_inference(image[:, :5].copy(), p, **DEFAULTS)
    with pytest.raises(TypeError, match="float32"):
        _core.crf_inference(image, p.astype(np.float64), **DEFAULTS)
    with pytest.raises(TypeError, match="pass every parameter"):
        _core.crf_inference(image, p, iterations=1)
    with pytest.raises(TypeError, match=r"unknown key\(s\) \['sxy'\]"):
        crf_settings({"sxy": 3})
    with pytest.raises(ValueError, match="temperature"):
        crf_settings({"temperature": 0})


def test_threads_and_thread_counts_give_identical_results():
    rng = np.random.default_rng(8)
    cases = [scene(rng, 40 + 3 * i, 50, 7 + 6 * i) for i in range(4)]
    serial = [dense_crf(im, p) for im, p, _ in cases]
    out = [None] * len(cases)

    def run(i):
        out[i] = dense_crf(cases[i][0], cases[i][1])

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for a, b in zip(out, serial):
        np.testing.assert_array_equal(a, b)
    n0 = densemllm.get_num_threads()
    try:
        densemllm.set_num_threads(1)
        one = dense_crf(cases[0][0], cases[0][1])
    finally:
        densemllm.set_num_threads(n0)
    np.testing.assert_array_equal(one, serial[0])  # no reductions across threads


def test_many_classes_use_the_buffer_path_too():
    # C > 256 takes the unfused slice, C = 70 the fused one with 8 registers
    rng = np.random.default_rng(9)
    for C in (70, 300):
        image, p, _ = scene(rng, 16, 20, C, noise=0.15)
        Q = dense_crf(image, p, iterations=3)
        R = exact_crf(image, p, iterations=3)
        dq = np.abs(Q - R)
        agree = (Q.argmax(-1) == R.argmax(-1)).mean()
        print(f"C={C}: |dQ| mean {dq.mean():.2e} p99 {np.quantile(dq, 0.99):.2e}; labels agree {agree:.4f}")
        assert dq.mean() <= 2e-3 and np.quantile(dq, 0.99) <= 0.03 and agree >= 0.99


def test_grid_labels_follow_the_protocol():
    # upsample -> softmax(z / 0.2) -> CRF -> argmax, as segment(crf=True) does
    rng = np.random.default_rng(10)
    z = rng.normal(size=(3, 4, 5)).astype(np.float32)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    probs = _core.dense_scores(_core.dense_upsample_bilinear(z, (48, 64)), temperature=0.2)
    want = dense_crf(image, probs).argmax(-1)
    np.testing.assert_array_equal(crf_grid_labels(image, z), want)
    off = crf_grid_labels(image, z, dict(crf_settings(), compat_gaussian=0, compat_bilateral=0))
    np.testing.assert_array_equal(off, _core.dense_upsample_argmax(z, (48, 64)))


def test_segment_crf_true(tmp_path):
    from test_tasks import band_image, build, e

    m = build(tmp_path, rows={"cat": e((0, 1.0)), "dog": e((1, 1.0))})
    img = band_image(["red", "green"])
    r = m.segment(img, ["cat", "dog"], crf=True)
    want = np.zeros((64, 64), np.int32)
    want[32:] = 1
    np.testing.assert_array_equal(r.labels, want)  # clean halves stay clean
    np.testing.assert_array_equal(r.labels, crf_grid_labels(img, r.logits))
    assert "crf" in r.timings and r.labels.dtype == np.int32
    r2 = m.segment(img, ["cat", "dog"], crf=True, crf_params={"iterations": 0, "temperature": 1.0})
    np.testing.assert_array_equal(r2.labels, want)
    with pytest.raises(ValueError, match="background"):
        m.segment(img, ["cat"], crf=True, background=True)
    with pytest.raises(ValueError, match="crf=False"):
        m.segment(img, ["cat"], crf_params={"iterations": 3})


def test_cli_crf_flag(tmp_path, monkeypatch):
    from PIL import Image
    from test_tasks import band_image, build, e

    from densemllm.cli import main

    m = build(tmp_path, rows={"cat": e((0, 1.0)), "dog": e((1, 1.0))})
    Image.fromarray(band_image(["red", "green"])).save(tmp_path / "in.png")
    monkeypatch.chdir(tmp_path)
    assert main(["segment", "--model", str(m.path), "in.png", "--classes", "cat,dog", "--crf"]) == 0
    want = np.zeros((64, 64), np.int32)
    want[32:] = 1
    np.testing.assert_array_equal(np.load(tmp_path / "in.segment.npy"), want)
    assert main(["segment", "--model", str(m.path), "in.png", "--classes", "cat", "--crf", "--background"]) == 2


def test_tiny_and_degenerate_images():
    # one pixel, one row, one column, one class: exact up to the lattice's (here tiny) error
    rng = np.random.default_rng(11)
    for H, W, C in [(1, 1, 1), (1, 1, 3), (1, 7, 2), (5, 1, 3), (3, 3, 1)]:
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        p = rng.dirichlet(np.ones(C), (H, W)).astype(np.float32)
        np.testing.assert_allclose(dense_crf(image, p), exact_crf(image, p), atol=1e-4)
