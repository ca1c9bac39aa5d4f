"""densemllm.eval.metrics against mmsegmentation's formulas.

Three references: (1) an independent re-implementation of mmseg's IoUMetric /
DepthMetric formulas written here (torch.histc histograms as in
IoUMetric.intersect_and_union; the DepthMetric expressions in float64 NumPy);
(2) mmsegmentation's own static methods when mmseg imports (tested here with
mmsegmentation 1.2.2 + mmengine 0.10.7 + mmcv-lite 2.1.0); (3) hand-computed answers.
Tolerance 1e-12: our statistics are exact integers / float64 sums, the references
float64, so only summation order differs. mmseg's own d1/d2/d3 cast the count to
float32 before dividing (``torch.sum(...).float() / len``), so those three are compared
to mmseg's own function at float32 resolution (rel 1e-7)."""
import math

import numpy as np
import pytest
import torch

from densemllm.eval.metrics import DepthMetric, ReferMetric, SegMetric, eval_mask

try:
    from mmseg.evaluation.metrics import DepthMetric as MMDepth
    from mmseg.evaluation.metrics import IoUMetric as MMIoU
except Exception:  # noqa: BLE001 - any import failure means "not available here"
    MMIoU = MMDepth = None


# ---- reference (1): mmseg's formulas, re-implemented ----
def ref_intersect_and_union(pred, label, C, ignore):
    pred, label = torch.from_numpy(pred.astype(np.float64)), torch.from_numpy(label.astype(np.float64))
    mask = label != ignore
    pred, label = pred[mask], label[mask]
    inter = pred[pred == label]
    hist = lambda t: torch.histc(t, bins=C, min=0, max=C - 1).double()  # noqa: E731
    ai, ap, al = hist(inter), hist(pred), hist(label)
    return ai, ap + al - ai, ap, al


def ref_seg_metrics(preds, labels, C, ignore=255):
    tot = [torch.zeros(C, dtype=torch.float64) for _ in range(4)]
    for p, g in zip(preds, labels):
        for t, v in zip(tot, ref_intersect_and_union(p, g, C, ignore)):
            t += v
    ai, au, ap, al = tot
    iou, acc = (ai / au).numpy(), (ai / al).numpy()
    return {"aAcc": float(ai.sum() / al.sum()) * 100, "mIoU": float(np.nanmean(iou)) * 100,
            "mAcc": float(np.nanmean(acc)) * 100, "IoU": iou * 100, "Acc": acc * 100}


def ref_depth_image(gt, pred):
    thresh = np.maximum(gt / pred, pred / gt)
    diff, dlog = pred - gt, np.log(pred) - np.log(gt)
    return {"d1": np.mean(thresh < 1.25), "d2": np.mean(thresh < 1.25 ** 2), "d3": np.mean(thresh < 1.25 ** 3),
            "abs_rel": np.mean(np.abs(diff) / gt), "sq_rel": np.mean(diff ** 2 / gt),
            "rmse": np.sqrt(np.mean(diff ** 2)), "rmse_log": np.sqrt(np.mean(dlog ** 2)),
            "log10": np.mean(np.abs(np.log10(pred) - np.log10(gt))),
            "silog": np.sqrt(np.mean(dlog ** 2) - 0.5 * np.mean(dlog) ** 2)}


def random_seg(rng, C, n=6, ignore=255):
    preds, labels = [], []
    for k in range(n):
        h, w = 17 + k, 23
        g = rng.integers(0, C, (h, w))
        g[rng.random((h, w)) < 0.15] = ignore
        p = np.where(rng.random((h, w)) < 0.6, g, rng.integers(0, C, (h, w)))
        p[rng.random((h, w)) < 0.05] = ignore  # "no prediction"
        if k == 2:
            g[:] = ignore  # an all-ignored image
        preds.append(p.astype(np.int32))
        labels.append(g)
    return preds, labels


@pytest.mark.parametrize("C", [3, 19, 150])
def test_seg_equals_mmseg_formulas_on_random_predictions(C):
    rng = np.random.default_rng(C)
    preds, labels = random_seg(rng, C)
    m = SegMetric(C, 255, [f"c{i}" for i in range(C)])
    stats = [m.image_stats(p, g) for p, g in zip(preds, labels)]
    got = m.reduce(stats)
    ref = ref_seg_metrics(preds, labels, C)
    for k in ("aAcc", "mIoU", "mAcc"):
        assert abs(got[k] - ref[k]) <= 1e-12, (k, got[k], ref[k])
    for i in range(C):
        for k in ("IoU", "Acc"):
            a, b = got[f"{k}.c{i}"], ref[k][i]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12
    # the per-image statistics are mmseg's histograms exactly
    for st, p, g in zip(stats, preds, labels):
        ai, au, ap, al = ref_intersect_and_union(p, g, C, 255)
        for key, r in zip(("area_intersect", "area_union", "area_pred_label", "area_label"), (ai, au, ap, al)):
            np.testing.assert_array_equal(st[key], r.numpy().astype(np.int64))


@pytest.mark.skipif(MMIoU is None, reason="mmsegmentation does not import here")
@pytest.mark.parametrize("C", [5, 150])
def test_seg_equals_mmseg_own_functions(C):
    rng = np.random.default_rng(7 + C)
    preds, labels = random_seg(rng, C)
    m = SegMetric(C)
    stats = [m.image_stats(p, g) for p, g in zip(preds, labels)]
    for st, p, g in zip(stats, preds, labels):
        mm = MMIoU.intersect_and_union(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(g), C, 255)
        for key, r in zip(("area_intersect", "area_union", "area_pred_label", "area_label"), mm):
            np.testing.assert_array_equal(st[key], r.numpy().astype(np.int64))
    tot = m.totals(stats)
    mm = MMIoU.total_area_to_metrics(*(torch.from_numpy(tot[k].astype(np.float64)) for k in
                                       ("area_intersect", "area_union", "area_pred_label", "area_label")), ["mIoU"])
    got = m.reduce(stats)
    assert abs(got["aAcc"] - mm["aAcc"] * 100) <= 1e-12
    assert abs(got["mIoU"] - np.nanmean(mm["IoU"]) * 100) <= 1e-12
    assert abs(got["mAcc"] - np.nanmean(mm["Acc"]) * 100) <= 1e-12


def test_seg_known_answers():
    m = SegMetric(4, 255, ["a", "b", "c", "d"])
    gt = np.array([[0, 0, 1], [1, 255, 1]])
    perfect = m.reduce([m.image_stats(gt.copy(), gt)])
    assert perfect["aAcc"] == perfect["mIoU"] == perfect["mAcc"] == 100.0
    assert math.isnan(perfect["IoU.c"]) and math.isnan(perfect["IoU.d"])  # absent from both: NaN, excluded
    # all wrong: no pixel right
    wrong = m.reduce([m.image_stats(np.where(gt == 255, 0, 1 - np.minimum(gt, 1)), gt)])
    assert wrong["aAcc"] == wrong["mIoU"] == wrong["mAcc"] == 0.0
    # by hand: pred [[0, 2, 1], [1, 3, 255]] -> I = (1, 2, 0, 0); pred area = (1, 2, 1, 0) (the pixel under
    # the ignored label does not count, 255 = no prediction is in no class); label area = (2, 3, 0, 0);
    # U = (2, 3, 1, 0): IoU = (1/2, 2/3, 0, NaN); Acc = (1/2, 2/3, NaN, NaN); aAcc = 3/5.
    r = m.reduce([m.image_stats(np.array([[0, 2, 1], [1, 3, 255]]), gt)])
    assert r["aAcc"] == pytest.approx(60.0, abs=1e-12)
    assert r["mIoU"] == pytest.approx((0.5 + 2 / 3 + 0) / 3 * 100, abs=1e-12)
    assert r["mAcc"] == pytest.approx((0.5 + 2 / 3) / 2 * 100, abs=1e-12)
    assert r["IoU.c"] == 0.0 and math.isnan(r["IoU.d"]) and math.isnan(r["Acc.c"])
    # an all-ignored image adds nothing; only ignored images: NaN everywhere
    allign = m.image_stats(np.zeros((2, 2), np.int32), np.full((2, 2), 255))
    r2 = m.reduce([m.image_stats(np.array([[0, 2, 1], [1, 3, 255]]), gt), allign])
    assert r2 == pytest.approx(r, nan_ok=True)
    assert all(math.isnan(v) for v in m.reduce([allign]).values())
    with pytest.raises(ValueError, match="shape"):
        m.image_stats(np.zeros((2, 2), np.int32), gt)
    with pytest.raises(TypeError, match="integer"):
        m.image_stats(gt.astype(np.float32), gt)


def random_depth(rng, n=5):
    out = []
    for k in range(n):
        gt = rng.uniform(0.2, 12.0, (30, 40))
        gt[rng.random(gt.shape) < 0.2] = 0
        pred = gt * rng.uniform(0.6, 1.6, gt.shape) + 0.01
        out.append((pred, gt))
    return out


def test_depth_equals_mmseg_formulas_on_random_predictions():
    rng = np.random.default_rng(3)
    data = random_depth(rng)
    crop = {"kind": "border", "left_frac": 0.1, "bottom_frac": 0.25}
    for lo, hi, cr in ((0.0, math.inf, None), (1e-3, 10.0, crop)):
        m = DepthMetric(lo, hi, cr)
        got = m.reduce([m.image_stats(p, g) for p, g in data])
        per = []
        for p, g in data:
            valid = (g > lo) & (g < hi)
            if cr is not None:
                keep = np.zeros_like(valid)
                keep[: 30 - round(30 * 0.25), round(40 * 0.1):] = True
                valid &= keep
            per.append(ref_depth_image(g[valid], p[valid]))
        for k in per[0]:
            want = sum(d[k] for d in per) / len(per)
            assert abs(got[k] - want) <= 1e-12 * max(1.0, abs(want)), (k, got[k], want)
        assert got["images_without_valid_depth"] == 0


@pytest.mark.skipif(MMDepth is None, reason="mmsegmentation does not import here")
def test_depth_equals_mmseg_own_functions():
    rng = np.random.default_rng(5)
    data = random_depth(rng)
    m = DepthMetric(0.0, 10.0)
    got = m.reduce([m.image_stats(p, g) for p, g in data])
    per = []
    for p, g in data:
        valid = (g > 0) & (g < 10)
        per.append(MMDepth._calc_all_metrics(torch.from_numpy(g[valid]), torch.from_numpy(p[valid])))
    for k in per[0]:
        want = sum(d[k] for d in per) / len(per)
        tol = 1e-7 if k in ("d1", "d2", "d3") else 1e-12
        assert abs(got[k] - want) <= tol * max(1.0, abs(want)), (k, got[k], want)
    # mmseg's nyu_crop mask is ours
    mm = MMDepth(crop_type="nyu_crop", max_depth_eval=10.0)
    g = rng.uniform(0, 12, (480, 640))
    crop = {"kind": "nyu", "rows": (45, 471), "cols": (41, 601)}
    np.testing.assert_array_equal(eval_mask(g, 0.0, 10.0, crop), mm._get_eval_mask(torch.from_numpy(g)).numpy())


def test_depth_known_answers():
    m = DepthMetric()
    gt = np.array([[1.0, 2.0, 4.0, 0.0]])  # the 0 is invalid
    pred = np.array([[1.0, 2.0, 2.0, 7.0]])
    r = m.reduce([m.image_stats(pred, gt)])
    assert r["d1"] == pytest.approx(2 / 3, abs=1e-15) and r["d3"] == pytest.approx(2 / 3, abs=1e-15)
    assert r["abs_rel"] == pytest.approx((2 / 4) / 3, abs=1e-15)
    assert r["sq_rel"] == pytest.approx((4 / 4) / 3, abs=1e-15)
    assert r["rmse"] == pytest.approx(math.sqrt(4 / 3), abs=1e-15)
    l2 = math.log(2)
    assert r["rmse_log"] == pytest.approx(math.sqrt(l2 ** 2 / 3), abs=1e-15)
    assert r["log10"] == pytest.approx(math.log10(2) / 3, abs=1e-15)
    assert r["silog"] == pytest.approx(math.sqrt(l2 ** 2 / 3 - 0.5 * (l2 / 3) ** 2), abs=1e-15)
    perfect = m.reduce([m.image_stats(gt.copy(), gt)])
    assert perfect["d1"] == 1.0 and perfect["abs_rel"] == 0.0 and perfect["rmse"] == 0.0
    # the mean is over images: a second image with d1 = 0 halves it; an all-invalid image is left out
    img2 = m.image_stats(np.array([[10.0]]), np.array([[1.0]]))
    empty = m.image_stats(np.array([[1.0]]), np.array([[0.0]]))
    r2 = m.reduce([m.image_stats(pred, gt), img2, empty])
    assert r2["d1"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-15) and r2["images_without_valid_depth"] == 1
    # caps and clipping: pred 0 (bin 1 of a 0-10 m range) is clamped to 1e-3 before logs
    c = DepthMetric(1e-3, 10.0, pred_clip=(1e-3, 10.0))
    rc = c.reduce([c.image_stats(np.array([[0.0, 20.0]]), np.array([[0.5, 20.0]]))])  # gt 20 > cap: dropped
    assert rc["abs_rel"] == pytest.approx(abs(1e-3 - 0.5) / 0.5, abs=1e-15) and rc["d1"] == 0.0


def test_refer_known_answers():
    m = ReferMetric()
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 px
    b = np.zeros((4, 4), bool)
    b[1:3] = True  # 8 px, 4 shared
    s = [m.image_stats(a, b), m.image_stats(a, a), m.image_stats(np.zeros((4, 4), bool), np.zeros((4, 4), bool))]
    r = m.reduce(s)
    assert r["cIoU"] == pytest.approx((4 + 8) / (12 + 8), abs=1e-15)
    assert r["gIoU"] == pytest.approx((4 / 12 + 1 + 1) / 3, abs=1e-15)
    assert m.reduce([m.image_stats(a, a)]) == {"cIoU": 1.0, "gIoU": 1.0}
    assert m.reduce([m.image_stats(~a, a)]) == {"cIoU": 0.0, "gIoU": 0.0}
    with pytest.raises(TypeError, match="bool"):
        m.image_stats(a.astype(np.uint8), a)
