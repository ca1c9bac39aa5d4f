"""Training the default model on the procedural scenes: NTP-M on the vision tokens
(segmentation classes, depth bins, FG/BG) and next-token cross-entropy on the text
answers of the real prompt formats (densemllm.data.prompts), with the package's own
training engine (``densemllm.train.TrainableModel``: forward + backward in C; AdamW,
clipping and the warmup + cosine schedule of ``densemllm.train.optim``).

``train(out_dir, steps=..., seed=...)`` is reproducible: the scenes, the task mix, the
prompts' class order and the init all come from ``seed``. The script
examples/train_default_model.py drives it; examples/ablate_default_model.py runs the
loss ablations with it. docs/default-model.md records the runs.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import atomic_path, atomic_write
from . import default_model as dm
from . import tables as T
from .prompts import DEFAULT_CROP_SHORT_SIDE, TASKS, scene_examples
from .scenes import DEFAULT_SIZE, train_stream

__all__ = ["Recipe", "example_stream", "vision_targets", "train", "save_checkpoint", "install", "evaluate_heldout"]

IGNORE = -100


@dataclass
class Recipe:
    """Everything a run depends on (stored in the checkpoint's metadata)."""
    seed: int = 0
    steps: int = 2000
    batch: int = 8                  # examples per optimizer step (gradients summed, scaled by 1/batch)
    lr: float = 2e-3                # AdamW peak (a 5.7 M model from scratch; the paper fine-tunes at 1e-4)
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    loss: str = "ntpm"              # densemllm.losses.VARIANTS
    k: int = 32
    valid: str = "task"             # vision valid set: "task" (the task's ids) or "vocab" (every id, as the ablations)
    mix: dict = field(default_factory=lambda: {"segment": 0.35, "depth": 0.2, "core": 0.2, "ground": 0.25})
    size: int = DEFAULT_SIZE[0]     # scene side in pixels
    crop_short_side: int = DEFAULT_CROP_SHORT_SIDE
    time_limit_s: float | None = None  # stop early (reported) when the wall time is spent


def example_stream(recipe: Recipe):
    """Infinite iterator of training examples: scene i of the seed's training stream,
    one task drawn by the recipe's mix (grounding and core target need a referring
    expression; a scene without one gives a segmentation example instead)."""
    tasks = list(recipe.mix)
    p = np.array([recipe.mix[t] for t in tasks], np.float64)
    if set(tasks) - set(TASKS) or not (p > 0).all():
        raise ValueError(f"mix must map tasks of {TASKS} to positive weights, got {recipe.mix}")
    p /= p.sum()
    rng = np.random.default_rng([17, recipe.seed])
    for scene in train_stream(recipe.seed, size=recipe.size):
        t = tasks[int(rng.choice(len(tasks), p=p))]
        ex = scene_examples(scene, rng, (t,), crop_short_side=recipe.crop_short_side)
        yield ex[0] if ex else scene_examples(scene, rng, ("segment",))[0]


def _resize_nearest(a, h, w):
    from ..tasks.refer import nearest

    return a if a.shape == (h, w) else nearest(a, h, w)


def _regions(a, gh2, gw2):
    """[gh2 * gw2, r * r] view of a map already at the model's input size, one row per
    merged token (row-major), r = the token's pixel size."""
    H, W = a.shape
    r = H // gh2
    return a.reshape(gh2, r, gw2, r).transpose(0, 2, 1, 3).reshape(gh2 * gw2, r * r)


def vision_targets(model, example, size_hw, grid):
    """(positives per vision token, the sample's valid ids, single labels) of an example
    for the model's input size ``size_hw`` and patch grid ``grid``:
    - segment: every prompted class present in the token's region (multi-label), valid =
      the prompted classes' ids, single label = the class covering most of the region;
    - depth: the ``<custom_N>`` bin of the region's median valid depth (N = 1 +
      round(999 d / 10 m), the exact inverse of the linear dequantisation), none on sky;
    - core: ``<FG>`` and/or ``<BG>`` as the region holds them.
    None for examples without vision targets (grounding)."""
    tok = model.tokenizer
    H, W = size_hw
    m = model.config.vision.spatial_merge_size
    gh2, gw2 = grid[0] // m, grid[1] // m
    if example.task == "segment":
        ids = []
        for n in example.classes:
            t = tok.encode(n)
            if len(t) != 1:
                raise ValueError(f"class {n!r} is {len(t)} tokens; the scenes' tokenizer keeps each class one token")
            ids.append(t[0])
        lut = np.full(256, -1, np.int64)
        lut[:len(ids)] = ids
        reg = _regions(lut[_resize_nearest(example.labels, H, W)], gh2, gw2)
        pos = [np.unique(r[r >= 0]) for r in reg]
        single = np.array([np.bincount(r[r >= 0]).argmax() if (r >= 0).any() else -1 for r in reg], np.int64)
        return pos, np.array(sorted(set(ids)), np.int64), single
    if example.task == "depth":
        bins = [tok.token_to_id(f"<custom_{b}>") for b in range(1, 1001)]
        d = _resize_nearest(example.depth, H, W)
        reg = _regions(d, gh2, gw2)
        pos, single = [], np.full(len(reg), -1, np.int64)
        span = T.DEPTH_MAX_M - T.DEPTH_MIN_M
        for i, r in enumerate(reg):
            v = r[r > 0]
            if v.size:
                b = int(np.clip(1 + np.round(999 * (np.median(v) - T.DEPTH_MIN_M) / span), 1, 1000))
                pos.append(np.array([bins[b - 1]], np.int64))
                single[i] = bins[b - 1]
            else:
                pos.append(np.zeros(0, np.int64))
        return pos, np.array(bins, np.int64), single
    if example.task == "core":
        bg, fg = tok.token_to_id("<BG>"), tok.token_to_id("<FG>")
        reg = _regions(_resize_nearest(example.mask.astype(np.uint8), H, W), gh2, gw2)
        pos = [np.array([i for i, has in ((bg, (r == 0).any()), (fg, (r == 1).any())) if has], np.int64) for r in reg]
        single = np.where(reg.mean(1) >= 0.5, fg, bg).astype(np.int64)
        return pos, np.array(sorted((bg, fg)), np.int64), single
    return None


def sample_arrays(model, example):
    """(input_ids, labels, preprocessed image, vision targets) of one example: the chat
    prompt as inference renders it, the answer appended (text loss on the answer only;
    a grounding answer ends with the end-of-text id, the others stop at ``<mask>`` as
    inference does)."""
    from ..tasks.common import render_prompt

    prompt = model.tokenizer.encode(render_prompt(model, example.prompt, image_first=example.image_first))
    answer = model.tokenizer.encode(example.answer)
    if example.task == "ground":
        answer = answer + [int(model.config.eos_token_id[0])]
    ids = prompt + answer
    labels = [IGNORE] * len(prompt) + answer
    pre = model.preprocess(example.image)
    return ids, labels, pre, vision_targets(model, example, pre.size, pre.grid)


def save_checkpoint(tm, out_dir, record, dtype="bf16"):
    """The trainable model's master weights as a checkpoint directory: the package's
    config and tokenizer files + ``model.safetensors`` (``dtype``) whose metadata holds
    ``record`` (JSON). Written to temporary names, then renamed."""
    import shutil

    from ..testing import _encode, _save_safetensors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in dm.PACKAGE_FILES:
        shutil.copyfile(dm.DEFAULT_DIR / f, out / (f + ".tmp"))
        (out / (f + ".tmp")).replace(out / f)
    params = tm.params()
    tensors = {n: _encode(np.asarray(a), dtype) for n, a in params.items()}
    tmp = out / (dm.WEIGHTS + ".tmp")
    _save_safetensors(tmp, tensors, {"format": "pt", "densemllm_training": json.dumps(record)})
    tmp.replace(out / dm.WEIGHTS)
    return out


def install(checkpoint_dir, heldout=None, dest=None):
    """Copy a trained checkpoint's weights into the package (densemllm/models/default/,
    or ``dest``): the one file that turns the embedded default model on. Its config must
    be the package's. ``heldout``: its held-out metrics ({dataset: metrics}, as
    :func:`evaluate_heldout` returns, plus "n_scenes"), stored beside the weights
    (default_model.HELDOUT) so the demo can say how good the model is; any previous
    metrics file is removed with the old weights."""
    import shutil

    src = Path(checkpoint_dir)
    dest = Path(dest) if dest is not None else dm.DEFAULT_DIR
    if json.loads((src / "config.json").read_text()) != json.loads((dest / "config.json").read_text()):
        raise ValueError(f"{src}/config.json is not the default model's config; refusing to install")
    (dest / dm.HELDOUT).unlink(missing_ok=True)
    with atomic_path(dest / dm.WEIGHTS) as tmp:
        shutil.copyfile(src / dm.WEIGHTS, tmp)
    if heldout is not None:
        atomic_write(dest / dm.HELDOUT, json.dumps(heldout, indent=1, sort_keys=True))
    return dest / dm.WEIGHTS


def train(out_dir, recipe: Recipe | None = None, *, threads=1, log=print, log_every=20, save_every=200):
    """Train from ``train_init`` with ``recipe``; returns (checkpoint dir, record).

    The checkpoint is ``out_dir/model`` (bf16; also written every ``save_every`` steps,
    atomically, so an interrupted run leaves its latest state) and ``out_dir/log.jsonl``
    holds one line per logged step (losses, grad norm, lr, seconds). ``threads``: 1 by
    default: on a shared 2-core machine one thread ran a step 10-20x faster than two
    (OpenMP barriers under oversubscription; measured, docs/default-model.md)."""
    from ..train import TrainableModel
    from ..train.optim import AdamW, LRSchedule

    recipe = recipe or Recipe()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    init = dm.make_default_checkpoint(out / "init", seed=recipe.seed, dtype="f32")
    tm = TrainableModel(init, threads=threads)
    opt = AdamW(tm.params(), weight_decay=recipe.weight_decay, max_grad_norm=recipe.max_grad_norm,
                tied=tm.config.text.tie_word_embeddings)
    sched = LRSchedule(recipe.lr, recipe.steps, recipe.warmup, recipe.min_lr)
    stream = example_stream(recipe)
    t0 = time.perf_counter()
    logf = open(out / "log.jsonl", "w", encoding="utf-8")
    acc = {"loss": 0.0, "text": 0.0, "vision": 0.0, "n": 0}
    step = 0
    try:
        for step in range(recipe.steps):
            tm.zero_grad()
            for _ in range(recipe.batch):
                ex = next(stream)
                ids, labels, pre, vt = sample_arrays(tm.model, ex)
                kw = {}
                if vt is not None:
                    pos, valid, single = vt
                    kw = dict(vision_targets=pos, vision_valid=valid if recipe.valid == "task" else None, k=recipe.k,
                              loss=recipe.loss)
                    if recipe.loss == "ntp_ce":
                        kw["vision_labels"] = single
                r = tm.forward_backward(ids, image=pre, labels=labels, **kw)
                acc["loss"] += r.loss
                acc["text"] += r.text_loss
                acc["vision"] += r.vision_loss
                acc["n"] += 1
            lr = sched(step)
            gnorm = opt.step(tm.grads(), lr, grad_scale=1.0 / recipe.batch)
            elapsed = time.perf_counter() - t0
            if (step + 1) % log_every == 0 or step == 0:
                n = max(acc["n"], 1)
                row = {"step": step + 1, "loss": acc["loss"] / n, "text_loss": acc["text"] / n,
                       "vision_loss": acc["vision"] / n, "grad_norm": float(gnorm), "lr": lr, "seconds": elapsed}
                logf.write(json.dumps(row) + "\n")
                logf.flush()
                log(f"step {step + 1}/{recipe.steps}  loss {row['loss']:.4f} (text {row['text_loss']:.4f}, "
                    f"vision {row['vision_loss']:.4f})  |g| {gnorm:.3f}  lr {lr:.2e}  {elapsed:.0f}s")
                acc = {"loss": 0.0, "text": 0.0, "vision": 0.0, "n": 0}
            if save_every and (step + 1) % save_every == 0 and step + 1 < recipe.steps:
                rec = {"recipe": asdict(recipe), "steps": step + 1, "seed": recipe.seed, "seconds": elapsed,
                       "partial": True}
                save_checkpoint(tm, out / "model", rec)  # the latest state, for an interrupted run
                save_checkpoint(tm, out / f"model-step{step + 1}", rec)  # kept: runs compare at equal steps
            if recipe.time_limit_s is not None and elapsed > recipe.time_limit_s:
                log(f"time limit {recipe.time_limit_s:.0f}s reached after {step + 1} steps")
                break
    finally:
        logf.close()
    record = {"recipe": asdict(recipe), "steps": step + 1, "seconds": time.perf_counter() - t0,
              "seed": recipe.seed, "examples": (step + 1) * recipe.batch}
    ck = save_checkpoint(tm, out / "model", record)
    atomic_write(out / "record.json", json.dumps(record, indent=1))
    return ck, record


def evaluate_heldout(model_dir, data_root, *, n=None, datasets=("scenes", "scenes_depth", "scenes_refer"),
                     out=None, progress=False, threads=1):
    """The held-out metrics through densemllm.eval (the first ``n`` samples of each
    dataset; all when None). Returns {dataset: metrics dict}."""
    from .. import eval as E

    res = {}
    for name in datasets:
        r = E.evaluate(str(model_dir), name, data_root=data_root, limit=n, out=out or Path(model_dir) / "eval",
                       progress=progress, load_kwargs={"threads": threads})
        res[name] = {k: v for k, v in r.metrics.items() if "." not in k}
    return res
