"""``densemllm demo``: the default model on a procedural scene (or a user image):
segment, depth and refer, pictures of each beside the ground truth, and the scene's
metrics printed.

The model is the embedded default model when this build ships its trained weights
(densemllm/models/default/model.safetensors, see densemllm.data.default_model);
otherwise a freshly initialised, UNTRAINED copy of the same architecture, and every
line the demo prints says so.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from . import default_model as dm
from . import tables as T
from .prompts import DEFAULT_CROP_SHORT_SIDE
from .scenes import heldout_scene

__all__ = ["run_demo", "scene_metrics", "DEMO_SCENE", "scene_labels"]

DEMO_SCENE = 7  # a held-out scene with five objects and a sky (any index works)

UNTRAINED = ("UNTRAINED: this build has no trained default model ({}), so the demo runs RANDOM "
             "weights of the default architecture; every mask, depth and box below is meaningless. "
             "It shows the whole path runs.")
OUT_OF_WORLD = ("Note: the default model only knows the procedural world it was trained on (sky, wall, "
                "ground and {} objects); on other images its answers are not meaningful.")


# The default model's aims (docs/default-model.md): (dataset, metric, label, format, aim).
AIMS = (("scenes", "mIoU", "mIoU", "{:.1f}", 80.0), ("scenes_depth", "d1", "depth delta1", "{:.3f}", 0.90),
        ("scenes_refer", "cIoU", "referring cIoU", "{:.3f}", 0.75))


def held_out_line(held):
    """One line of the shipped model's recorded held-out metrics beside its aims."""
    parts = [f"{label} {fmt.format(held[name][key])} (aim {fmt.format(aim)})"
             for name, key, label, fmt, aim in AIMS if key in held.get(name, {})]
    return f"its held-out metrics ({held.get('n_scenes', '?')} procedural scenes, densemllm eval): " + ", ".join(parts)


def scene_labels(seg):
    """A SegmentResult's labels as tables.CLASSES indices (-1 = a name outside the table)."""
    lut = np.array([T.CLASSES.index(n) if n in T.CLASSES else -1 for n in seg.class_names] + [-1], np.int64)
    return lut[np.minimum(seg.labels, len(lut) - 1)]


def scene_metrics(scene, seg, dep, ref, ref_object_id):
    """One scene's numbers: mIoU over the classes present in the ground truth or the
    prediction (per-class I/U as mmsegmentation), depth delta1 / AbsRel over valid
    pixels, and the referring mask's IoU."""
    out = {}
    gt = scene.labels.astype(np.int64)
    pred = scene_labels(seg)
    ious = {}
    for c, name in enumerate(T.CLASSES):
        g, p = gt == c, pred == c
        union = np.logical_or(g, p).sum()
        if union:
            ious[name] = float(np.logical_and(g, p).sum() / union)
    out["mIoU"] = 100.0 * float(np.mean(list(ious.values()))) if ious else float("nan")
    out["IoU"] = {k: round(100 * v, 1) for k, v in ious.items()}
    valid = (scene.depth > 0) & np.isfinite(dep.depth) & (dep.depth > 0)
    if valid.any():
        g, p = scene.depth[valid].astype(np.float64), dep.depth[valid].astype(np.float64)
        out["delta1"] = float(np.mean(np.maximum(p / g, g / p) < 1.25))
        out["abs_rel"] = float(np.mean(np.abs(p - g) / g))
    if ref is not None:
        g = scene.mask(ref_object_id)
        union = np.logical_or(g, ref.mask).sum()
        out["refer_IoU"] = float(np.logical_and(g, ref.mask).sum() / union) if union else float("nan")
    return out


def _model(out, threads, log, model=None):
    import densemllm

    if model is not None:
        rec = dm.training_record(model)
        state = (f"trained {rec.get('steps', '?')} steps, seed {rec.get('seed', '?')}" if rec
                 else "no training record in its weights")
        log(f"model: {model} ({state})")
        return densemllm.load(model, threads=threads), bool(rec)
    if dm.trained_weights() is not None:
        rec = dm.training_record()
        log(f"model: the trained default model ({dm.DEFAULT_DIR}); "
            f"trained {rec.get('steps', '?')} steps, seed {rec.get('seed', '?')} (docs/default-model.md)")
        held = dm.heldout_metrics()
        if held:
            log(held_out_line(held))
        return densemllm.load(threads=threads), True
    log(UNTRAINED.format(dm.DEFAULT_DIR / dm.WEIGHTS))
    ck = dm.make_default_checkpoint(out / "untrained-default-model", seed=0, dtype="bf16")
    return densemllm.load(ck, threads=threads), False


def run_demo(out_dir="densemllm-demo", *, threads=None, image=None, index=DEMO_SCENE, expression=None, model=None,
             log=print):
    """Run the demo; returns a dict of what it wrote and measured. ``model``: a checkpoint
    directory of the default architecture instead of the embedded model."""
    from PIL import Image

    from .. import viz
    from ..parse import ParseError
    from ..results import ReferResult
    from ..tasks.common import to_rgb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, trained = _model(out, threads, log, model)
    tag = "" if trained else " [UNTRAINED]"
    scene = None
    if image is None:
        scene = heldout_scene(int(index))
        rgb = scene.image
        ref = scene.referring[0] if scene.referring else None
        if expression is None and ref is not None:
            expression = ref.text
        log(f"image: held-out procedural scene {scene.name} ({rgb.shape[1]}x{rgb.shape[0]}), objects: "
            + ", ".join(f"{o.colour} {o.shape}" for o in scene.objects if o.area))
    else:
        rgb = to_rgb(image)
        log(OUT_OF_WORLD.format(", ".join(T.SHAPES)))
        log(f"image: {image} ({rgb.shape[1]}x{rgb.shape[0]})")
    if expression is None:
        expression = "the red circle"
    files = {}

    def save(name, picture):
        p = out / f"demo.{name}.png"
        with atomic_path(p) as tmp:
            picture.save(tmp)
        files[name] = p

    save("image", Image.fromarray(rgb))
    # trained: the classes the model names; untrained: every class (a random model names none)
    seg = model.segment(rgb, list(T.CLASSES), all_classes=not trained, max_new_tokens=64)
    with atomic_path(out / "demo.segment.npy") as tmp:
        np.save(tmp, seg.labels)
    # one colour per class of the table, the same in the prediction and the truth
    mapped = scene_labels(seg)
    save("segment", viz.overlay_labels(rgb, np.where(mapped >= 0, mapped, len(T.CLASSES)), [*T.CLASSES, "other"]))
    log(f"segment{tag}: classes {seg.class_names}; answer {seg.text[:90]!r}")
    dep = model.depth(rgb, T.DEPTH_DATASET, max_new_tokens=16)
    save("depth", viz.colorize_depth(dep.depth, vmin=T.DEPTH_MIN_M, vmax=T.DEPTH_MAX_M))
    ok = np.isfinite(dep.depth)
    log(f"depth{tag}: {np.min(dep.depth[ok]):.2f}..{np.max(dep.depth[ok]):.2f} m")
    try:
        ref = model.refer(rgb, expression, crop_short_side=DEFAULT_CROP_SHORT_SIDE, seed=0, max_new_tokens=24)
    except ParseError as e:  # the model wrote a malformed box: no mask (counted as a miss)
        log(f"refer{tag}: {expression!r} -> {e}")
        ref = ReferResult(np.zeros(rgb.shape[:2], bool), None, str(e), image=rgb)
    save("refer", ref.picture())
    log(f"refer{tag}: {expression!r} -> box {ref.box}, {int(ref.mask.sum())} mask pixels")
    metrics = {}
    if scene is not None:
        save("segment.truth", viz.overlay_labels(rgb, scene.labels, list(T.CLASSES)))
        save("depth.truth", viz.colorize_depth(np.where(scene.depth > 0, scene.depth, np.nan),
                                               vmin=T.DEPTH_MIN_M, vmax=T.DEPTH_MAX_M))
        if scene.referring:
            o = scene.object(scene.referring[0].object_id)
            save("refer.truth", viz.overlay_mask(rgb, scene.mask(o.id), o.box))
        metrics = scene_metrics(scene, seg, dep, ref, scene.referring[0].object_id if scene.referring else None)
        line = f"metrics on {scene.name}{tag}: mIoU {metrics['mIoU']:.1f}"
        if "delta1" in metrics:
            line += f", depth delta1 {metrics['delta1']:.3f}, AbsRel {metrics['abs_rel']:.3f}"
        if "refer_IoU" in metrics:
            line += f", referring IoU {metrics['refer_IoU']:.3f}"
        log(line)
        log("per-class IoU: " + ", ".join(f"{k} {v}" for k, v in metrics["IoU"].items()))
    wall = time.perf_counter() - t0
    log(f"wrote {', '.join(str(p) for p in files.values())} ({wall:.1f} s)")
    return {"trained": trained, "files": files, "metrics": metrics, "seconds": wall, "segment": seg, "depth": dep,
            "refer": ref, "scene": scene}
