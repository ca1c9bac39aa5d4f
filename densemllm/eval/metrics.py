"""Metrics kept apart from the model, as mmsegmentation's: ``image_stats(pred, gt)`` per
image (sufficient statistics, stored), ``reduce(list of stats)`` at the end.

- :class:`SegMetric` = mmseg ``IoUMetric`` (mIoU): per image the class histograms of
  intersection, union, prediction and label over the pixels whose label is not the
  ignore index (predictions outside 0..C-1, e.g. 255 = "no prediction", count in no
  class histogram, so they are simply wrong); at the end aAcc = sum I / sum label,
  IoU = I / U and Acc = I / label per class (NaN where 0/0, excluded from the means),
  mIoU / mAcc = nanmean; all in percent. mmseg rounds to 2 decimals for display; these
  values are unrounded. Per-class entries ``IoU.<name>`` / ``Acc.<name>``.
- :class:`DepthMetric` = mmseg ``DepthMetric``: evaluated pixels are gt in
  (min_depth_eval, max_depth_eval) inside the dataset crop; per image d1, d2, d3 (share
  with max(gt/pred, pred/gt) < 1.25, 1.25^2, 1.25^3), abs_rel, sq_rel, rmse, rmse_log,
  log10, silog (sqrt(mean(dl^2) - 0.5 mean(dl)^2), dl = log pred - log gt); the split
  value is the mean over images (fractions, not percent, as mmseg). Stored per image:
  the pixel count and the sums these are made of (float64), so the reduction is exact.
  ``pred_clip=(lo, hi)`` clamps predictions first (the BTS / AdaBins / Monocular-Depth-
  Estimation-Toolbox convention; linear bins put bin 1 at 0 m, where log and ratios are
  undefined); None = mmseg's formulas untouched. An image with no evaluated pixel is
  left out of the mean (mmseg would turn the whole result into NaN) and counted in
  ``images_without_valid_depth``.
- :class:`ReferMetric`: per sample intersection and union of the boolean masks;
  cIoU = sum I / sum U, gIoU = mean of I / U (1.0 where both masks are empty), as fractions.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["SegMetric", "DepthMetric", "ReferMetric", "eval_mask"]


def _same_shape(pred, gt, what):
    if pred.shape != gt.shape:
        raise ValueError(f"{what}: prediction shape {pred.shape} differs from the ground truth {gt.shape}")


class SegMetric:
    kind = "segment"
    primary = "mIoU"

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names=None):
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")

    def image_stats(self, pred, gt) -> dict:
        pred, gt = np.asarray(pred), np.asarray(gt)
        _same_shape(pred, gt, "segmentation")
        if not np.issubdtype(pred.dtype, np.integer):
            raise TypeError(f"segmentation predictions must be integer labels, got {pred.dtype}")
        C = self.num_classes
        keep = gt != self.ignore_index
        p = pred[keep].astype(np.int64)
        g = gt[keep].astype(np.int64)
        inside_p = (p >= 0) & (p < C)
        inside_g = (g >= 0) & (g < C)
        hit = inside_p & (p == g)
        area_intersect = np.bincount(p[hit], minlength=C)[:C]
        area_pred = np.bincount(p[inside_p], minlength=C)[:C]
        area_label = np.bincount(g[inside_g], minlength=C)[:C]
        return {"area_intersect": area_intersect, "area_union": area_pred + area_label - area_intersect,
                "area_pred_label": area_pred, "area_label": area_label}

    def image_score(self, stats) -> float:
        """mIoU of one image (for picking the worst images)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = stats["area_intersect"] / stats["area_union"]
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def totals(self, stats_list):
        C = self.num_classes
        tot = {k: np.zeros(C, np.int64) for k in ("area_intersect", "area_union", "area_pred_label", "area_label")}
        for s in stats_list:
            for k in tot:
                a = np.asarray(s[k], dtype=np.int64)
                if a.shape != (C,):
                    raise ValueError(f"stored statistic {k} has shape {a.shape}, expected ({C},)")
                tot[k] += a
        return tot

    def reduce(self, stats_list) -> dict:
        t = self.totals(stats_list)
        inter, union, label = (t[k].astype(np.float64) for k in ("area_intersect", "area_union", "area_label"))
        with np.errstate(invalid="ignore", divide="ignore"):
            all_acc = inter.sum() / label.sum()
            iou = inter / union
            acc = inter / label
        out = {"aAcc": float(all_acc * 100), "mIoU": _nanmean(iou) * 100, "mAcc": _nanmean(acc) * 100}
        for name, v in zip(self.class_names, iou):
            out[f"IoU.{name}"] = float(v * 100)
        for name, v in zip(self.class_names, acc):
            out[f"Acc.{name}"] = float(v * 100)
        return out

    def per_class(self, metrics: dict) -> list:
        return [{"class": n, "IoU": metrics[f"IoU.{n}"], "Acc": metrics[f"Acc.{n}"]} for n in self.class_names]


def _nanmean(a) -> float:
    a = np.asarray(a, np.float64)
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else float("nan")


def eval_mask(gt, min_depth=0.0, max_depth=math.inf, crop=None) -> np.ndarray:
    """Pixels DepthMetric evaluates: min < gt < max, inside the dataset crop.
    ``crop``: None; {"kind": "nyu", "rows": (r0, r1), "cols": (c0, c1)} (mmseg's
    nyu_crop [45:471, 41:601]); {"kind": "border", "left_frac": f, "bottom_frac": g}
    (the left f of the width and the bottom g of the height are left out)."""
    gt = np.asarray(gt)
    valid = (gt > min_depth) & (gt < max_depth)
    if crop is None:
        return valid
    m = np.zeros_like(valid)
    if crop["kind"] == "nyu":
        (r0, r1), (c0, c1) = crop["rows"], crop["cols"]
        m[r0:r1, c0:c1] = True
    elif crop["kind"] == "border":
        h, w = gt.shape
        left = int(round(w * float(crop.get("left_frac", 0.0))))
        bottom = int(round(h * float(crop.get("bottom_frac", 0.0))))
        m[: h - bottom, left:] = True
    else:
        raise ValueError(f"unknown depth crop kind {crop.get('kind')!r}")
    return valid & m


DEPTH_KEYS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
_SUMS = ("c1", "c2", "c3", "abs_rel", "sq_rel", "sq", "sq_log", "log10", "dlog")


class DepthMetric:
    kind = "depth"
    primary = "d1"

    def __init__(self, min_depth_eval=0.0, max_depth_eval=math.inf, crop=None, pred_clip=None):
        self.min_depth_eval = float(min_depth_eval)
        self.max_depth_eval = float(max_depth_eval)
        self.crop = crop
        if pred_clip is not None:
            lo, hi = float(pred_clip[0]), float(pred_clip[1])
            if not (0 < lo < hi):
                raise ValueError(f"pred_clip must be (lo, hi) with 0 < lo < hi, got {pred_clip!r}")
            pred_clip = (lo, hi)
        self.pred_clip = pred_clip

    def image_stats(self, pred, gt) -> dict:
        pred, gt = np.asarray(pred), np.asarray(gt)
        _same_shape(pred, gt, "depth")
        m = eval_mask(gt, self.min_depth_eval, self.max_depth_eval, self.crop)
        g = gt[m].astype(np.float64)
        p = pred[m].astype(np.float64)
        if self.pred_clip is not None:
            p = np.clip(np.nan_to_num(p, nan=self.pred_clip[0]), *self.pred_clip)
        out = {"n": np.int64(g.size)}
        if g.size == 0:
            out.update({k: 0.0 for k in _SUMS})
            return out
        with np.errstate(divide="ignore", invalid="ignore"):
            thresh = np.maximum(g / p, p / g)
            diff = p - g
            dlog = np.log(p) - np.log(g)
            out.update(c1=np.sum(thresh < 1.25), c2=np.sum(thresh < 1.25 ** 2), c3=np.sum(thresh < 1.25 ** 3),
                       abs_rel=np.sum(np.abs(diff) / g), sq_rel=np.sum(diff ** 2 / g), sq=np.sum(diff ** 2),
                       sq_log=np.sum(dlog ** 2), log10=np.sum(np.abs(np.log10(p) - np.log10(g))), dlog=np.sum(dlog))
        return {k: (np.int64(v) if k in ("n", "c1", "c2", "c3") else float(v)) for k, v in out.items()}

    @staticmethod
    def image_metrics(s) -> dict:
        n = float(s["n"])
        mean = {k: float(s[k]) / n for k in _SUMS}
        return {"d1": mean["c1"], "d2": mean["c2"], "d3": mean["c3"], "abs_rel": mean["abs_rel"],
                "sq_rel": mean["sq_rel"], "rmse": math.sqrt(mean["sq"]) if mean["sq"] >= 0 else float("nan"),
                "rmse_log": math.sqrt(mean["sq_log"]) if mean["sq_log"] >= 0 else float("nan"),
                "log10": mean["log10"], "silog": _sqrt(mean["sq_log"] - 0.5 * mean["dlog"] ** 2)}

    def image_score(self, stats) -> float:
        return self.image_metrics(stats)["d1"] if int(stats["n"]) else float("nan")

    def reduce(self, stats_list) -> dict:
        per = [self.image_metrics(s) for s in stats_list if int(s["n"]) > 0]
        skipped = sum(1 for s in stats_list if int(s["n"]) == 0)
        if not per:
            out = {k: float("nan") for k in DEPTH_KEYS}
        else:  # mmseg: sum(per-image values) / number of images, in order
            out = {k: sum(m[k] for m in per) / len(per) for k in DEPTH_KEYS}
        out["images_without_valid_depth"] = skipped
        return out


def _sqrt(x):
    return math.sqrt(x) if x >= 0 else float("nan")


class ReferMetric:
    kind = "refer"
    primary = "cIoU"

    def image_stats(self, pred, gt) -> dict:
        pred, gt = np.asarray(pred), np.asarray(gt)
        _same_shape(pred, gt, "referring mask")
        if pred.dtype != bool:
            raise TypeError(f"referring predictions must be bool masks, got {pred.dtype}")
        gt = gt.astype(bool)
        return {"intersection": np.int64(np.count_nonzero(pred & gt)), "union": np.int64(np.count_nonzero(pred | gt))}

    @staticmethod
    def image_score(s) -> float:
        u = int(s["union"])
        return int(s["intersection"]) / u if u else 1.0

    def reduce(self, stats_list) -> dict:
        stats_list = list(stats_list)
        inter = sum(int(s["intersection"]) for s in stats_list)
        union = sum(int(s["union"]) for s in stats_list)
        ious = [self.image_score(s) for s in stats_list]
        return {"cIoU": inter / union if union else float("nan"),
                "gIoU": sum(ious) / len(ious) if ious else float("nan")}
