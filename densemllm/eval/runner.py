"""``evaluate``: dataset -> predictor -> per-image statistics in the store -> report.

The driver (this process) reads every image and its ground truth, hands the image and a
sample dict (id, dataset, split, meta; never the ground truth) to a predictor, checks
the prediction, computes the image's sufficient statistics and stores them atomically.
Predictors run in-process (workers=1), in N spawned processes (workers=N), or as N Ray
actors (backend="ray" / ray_address=...), each loading the model once. The final
metrics are reduced from the store in dataset order, so 1 process, N processes, N Ray
workers and a killed-then-resumed run all give the same numbers."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import datasets as _ds
from .protocols import default_protocol, metric_for
from .store import Store, atomic_write, key_hash, slug

__all__ = ["evaluate", "Report", "PredictorSpec"]

DEFAULT_OUT = "densemllm-eval"


@dataclass
class Report:
    dataset: str
    split: str
    model: str
    protocol: dict
    n_images: int
    metrics: dict
    paper: dict = field(default_factory=dict)
    per_class: list | None = None
    primary: str = ""
    evaluated_now: int = 0
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("dataset", "split", "model", "protocol", "n_images", "metrics",
                                              "paper", "per_class", "primary", "evaluated_now", "files")}

    def summary(self) -> str:
        v = self.metrics.get(self.primary, float("nan"))
        p = self.paper.get(self.primary)
        return (f"{self.dataset} {self.split}: {self.primary} {v:.4f} over {self.n_images} images"
                + (f" (paper {p})" if p is not None else ""))

    def to_markdown(self) -> str:
        L = [f"# {self.dataset} ({self.split})", "",
             f"- model: `{self.model}`", f"- images: {self.n_images}",
             f"- protocol: `{json.dumps(_short(self.protocol), sort_keys=True, default=str)}`", "",
             "| metric | ours | paper (DenseMLLM-4B) |", "| --- | --- | --- |"]
        for k, v in self.metrics.items():
            if "." in k:
                continue
            p = self.paper.get(k)
            L.append(f"| {k} | {_fmt(v)} | {'' if p is None else p} |")
        if self.per_class:
            L += ["", "## Per class", "", "| class | IoU | Acc |", "| --- | --- | --- |"]
            L += [f"| {r['class']} | {_fmt(r['IoU'])} | {_fmt(r['Acc'])} |" for r in self.per_class]
        worst = self.files.get("worst") or []
        if worst:
            L += ["", "## Worst images", ""] + [f"- `{w['id']}` ({_fmt(w['score'])}): ![]({w['png']})" for w in worst]
        return "\n".join(L) + "\n"


def _short(protocol: dict) -> dict:
    p = dict(protocol)
    if len(p.get("prompts", ())) > 1:
        p["prompts"] = f"{len(p['prompts'])} templates (paper D.1 open-world list)"
    return p


def _fmt(v):
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return str(v)


@dataclass
class PredictorSpec:
    """What a worker needs to build its predictor once: a checkpoint path (+ load
    arguments) and the protocol, or a picklable predictor callable."""

    protocol: object
    table: dict
    model_path: str | None = None
    load_kwargs: dict = field(default_factory=dict)
    predictor: object = None

    def build(self):
        if self.model_path is None:
            return self.predictor
        import densemllm

        return self.protocol.predictor(densemllm.load(self.model_path, **self.load_kwargs), self.table)


def _is_model(x) -> bool:
    from ..model import Model

    return isinstance(x, Model)


def _model_key(model_path) -> str:
    p = Path(model_path)
    h = hashlib.sha256()
    cfg = p / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for f in sorted(p.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return f"{p.resolve().name}-{h.hexdigest()[:10]}"


def _callable_key(f) -> str:
    """Qualified name plus a hash of the code, so two different lambdas do not share
    results (closures over different data still would: name them with model_name=)."""
    code = getattr(f, "__code__", None) or getattr(getattr(type(f), "__call__", None), "__code__", None)
    h = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:8] if code else "nocode"
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__qualname__)}-{h}"


def _sample_dict(ds, s) -> dict:
    return {"id": s.id, "dataset": ds.name, "split": ds.split, "image_path": str(s.image), "meta": dict(s.meta)}


def _check_prediction(task, pred, gt, sid):
    if not isinstance(pred, np.ndarray):
        pred = np.asarray(pred)
    if pred.shape != gt.shape:
        raise ValueError(f"image {sid!r}: the prediction has shape {pred.shape}, the ground truth {gt.shape}")
    if task == "segment" and not np.issubdtype(pred.dtype, np.integer):
        raise TypeError(f"image {sid!r}: a segmentation prediction must hold integer class indices, got {pred.dtype}")
    if task == "depth" and not np.issubdtype(pred.dtype, np.floating):
        raise TypeError(f"image {sid!r}: a depth prediction must be float metres, got {pred.dtype}")
    if task == "refer" and pred.dtype != bool:
        raise TypeError(f"image {sid!r}: a referring prediction must be a bool mask, got {pred.dtype}")
    return pred


def evaluate(model_or_predictor, dataset: str, data_root=None, split=None, protocol=None, limit=None,
             workers=1, resume=True, out=None, *, backend=None, ray_address=None, model_name=None, worst=0,
             progress=True, load_kwargs=None) -> Report:
    """Evaluate a model (a loaded :class:`densemllm.Model` or a checkpoint directory) or
    any predictor callable ``(image uint8 [H, W, 3], sample dict) -> prediction`` on
    ``dataset`` (a registry name) under ``data_root``.

    ``protocol=None``: the paper's (``densemllm.eval.protocols.PROTOCOLS``); ``limit``:
    the first N samples; ``workers``: predictor processes (each loads the model once);
    ``backend``: "serial" | "processes" | "ray" (default: serial for 1 worker,
    processes for more, ray when ``ray_address`` is given); ``resume``: skip images
    already in the store under ``out`` (False: start this key afresh); ``worst``: write
    pictures of the N worst images (predictions are then stored too).
    Returns a :class:`Report`; ``report.json`` / ``report.md`` are written under ``out``."""
    table = _ds.table_of(dataset)
    ds = _ds.get_dataset(table["name"], data_root, split)
    protocol = default_protocol(table) if protocol is None else protocol
    if getattr(protocol, "task", None) != table["task"]:
        raise ValueError(f"protocol {type(protocol).__name__} is for {getattr(protocol, 'task', '?')}, but "
                         f"{table['name']} is a {table['task']} dataset")
    metric = metric_for(table, protocol)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    samples = list(ds)[:limit] if limit is not None else list(ds)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not isinstance(worst, int) or worst < 0:
        raise ValueError(f"worst must be a non-negative int, got {worst!r}")
    if backend is None:
        backend = "ray" if ray_address else ("processes" if workers > 1 else "serial")
    if backend not in ("serial", "processes", "ray"):
        raise ValueError(f"backend must be 'serial', 'processes' or 'ray', got {backend!r}")

    # the predictor (or how workers build it) and the model's store key
    model_obj, spec = None, None
    if isinstance(model_or_predictor, (str, os.PathLike)):
        mpath = str(model_or_predictor)
        spec = PredictorSpec(protocol, table, model_path=mpath, load_kwargs=dict(load_kwargs or {}))
        key = model_name or f"{_model_key(mpath)}-{spec.load_kwargs.get('dtype', 'auto')}"
    elif _is_model(model_or_predictor):
        model_obj = model_or_predictor
        kw = {"dtype": model_obj.dtype, "backend": model_obj.backend}
        kw.update(load_kwargs or {})
        spec = PredictorSpec(protocol, table, model_path=str(model_obj.path), load_kwargs=kw)
        key = model_name or f"{_model_key(model_obj.path)}-{model_obj.dtype}"
    elif callable(model_or_predictor):
        spec = PredictorSpec(protocol, table, predictor=model_or_predictor)
        key = model_name or getattr(model_or_predictor, "name", None) or _callable_key(model_or_predictor)
    else:
        raise TypeError(f"model_or_predictor must be a densemllm.Model, a checkpoint directory or a callable, "
                        f"got {type(model_or_predictor).__name__}")

    out = Path(DEFAULT_OUT if out is None else out)
    store = Store(out, str(key), table["name"], ds.split, protocol.to_dict())
    if not resume:
        store.clear()
    # what an earlier run stored counts as it is (one file per image: never twice)
    stats_by_id = {s.id: store.get(s.id) for s in samples if store.has(s.id)}
    todo = [s for s in samples if s.id not in stats_by_id]
    evaluated = 0
    bar = _bar(progress, len(samples), len(stats_by_id), table["name"])
    t_last = 0.0
    try:
        for s, gt, pred in _run(backend, spec, model_obj, ds, todo, workers, ray_address):
            pred = _check_prediction(table["task"], pred, gt, s.id)
            st = metric.image_stats(pred, gt)
            store.put(s.id, st, pred if worst else None)
            stats_by_id[s.id] = st
            evaluated += 1
            if bar is not None:
                bar.update(1)
                now = time.monotonic()
                if now - t_last > 1.0:  # the running metric over what is stored so far
                    t_last = now
                    value = metric.reduce(list(stats_by_id.values()))[metric.primary]
                    bar.set_postfix({metric.primary: f"{value:.4g}"})
    finally:
        if bar is not None:
            bar.close()

    all_stats = [stats_by_id[s.id] for s in samples]  # dataset order: the same sums however they were made
    metrics = metric.reduce(all_stats)
    base_split = ds.split.split(":", 1)[-1]
    report = Report(table["name"], ds.split, str(key), protocol.to_dict(), len(samples), metrics,
                    dict(table.get("paper", {}).get(base_split, {})),
                    metric.per_class(metrics) if hasattr(metric, "per_class") else None, metric.primary, evaluated)
    rdir = out / "reports" / slug(str(key)) / f"{table['name']}-{slug(ds.split, 16)}-{key_hash(protocol.to_dict())}"
    rdir.mkdir(parents=True, exist_ok=True)
    if worst:
        report.files["worst"] = _write_worst(ds, samples, store, metric, all_stats, worst, rdir / "worst")
    report.files["json"] = str(rdir / "report.json")
    report.files["markdown"] = str(rdir / "report.md")
    atomic_write(rdir / "report.json", json.dumps(_jsonable(report.to_dict()), indent=2).encode())
    atomic_write(rdir / "report.md", report.to_markdown().encode())
    return report


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if f == f and abs(f) != float("inf") else str(f)
    return o


def _bar(progress, total, initial, name):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"eval {name}", unit="img", file=sys.stderr)


def _loaded(ds, todo):
    for s in todo:
        img, gt = ds.load(s)
        yield s, img, gt


def _run(backend, spec, model_obj, ds, todo, workers, ray_address):
    if not todo:
        return iter(())
    if backend == "serial":
        predict = spec.protocol.predictor(model_obj, spec.table) if model_obj is not None else spec.build()
        return ((s, gt, predict(img, _sample_dict(ds, s))) for s, img, gt in _loaded(ds, todo))
    if backend == "processes":
        return _run_processes(spec, ds, todo, workers)
    from .distributed import run_ray

    return run_ray(spec, ds, _loaded(ds, todo), workers, ray_address, _sample_dict)


# ---- local worker processes ----
_WORKER_PREDICT = None


def _worker_init(spec, threads):
    global _WORKER_PREDICT
    if spec.model_path is not None and threads:
        spec.load_kwargs.setdefault("threads", threads)
    _WORKER_PREDICT = spec.build()


def _worker_call(image, sample):
    return _WORKER_PREDICT(image, sample)


def _run_processes(spec, ds, todo, workers):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    items = _loaded(ds, todo)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(spec, threads)) as ex:
        pending = {}
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * workers:
                try:
                    s, img, gt = next(items)
                except StopIteration:
                    exhausted = True
                    break
                pending[ex.submit(_worker_call, img, _sample_dict(ds, s))] = (s, gt)
            if not pending:
                return
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in done:
                s, gt = pending.pop(f)
                yield s, gt, f.result()


def _write_worst(ds, samples, store, metric, all_stats, k, folder):
    from PIL import Image

    scores = [metric.image_score(st) for st in all_stats]
    order = sorted(range(len(samples)), key=lambda i: (scores[i] != scores[i], scores[i]))[:k]
    out = []
    for i in order:
        s = samples[i]
        _, pred = store.get(s.id, with_prediction=True)
        if pred is None:
            continue
        img, gt = ds.load(s)
        pic = _picture(ds, img, gt, pred)
        folder.mkdir(parents=True, exist_ok=True)
        p = folder / (slug(s.id) + ".png")
        import io

        buf = io.BytesIO()
        Image.fromarray(pic).save(buf, format="PNG")
        atomic_write(p, buf.getvalue())
        out.append({"id": s.id, "score": scores[i], "png": str(p)})
    return out


def _picture(ds, img, gt, pred):
    """[image | ground truth | prediction] side by side."""
    from .. import viz

    if ds.task == "segment":
        pal = np.zeros((max(256, len(ds.palette) + 1), 3), np.uint8)
        pal[: len(ds.palette)] = np.asarray(ds.palette, np.uint8)
        paint = lambda lab: pal[np.clip(lab, 0, len(pal) - 1)]  # noqa: E731 (ignore / no prediction: black)
        panels = [img, paint(gt), paint(pred)]
    elif ds.task == "depth":
        gtn = np.where(gt > 0, gt, np.nan).astype(np.float32)
        ok = np.isfinite(gtn)
        lo, hi = (float(gtn[ok].min()), float(gtn[ok].max())) if ok.any() else (0.0, 1.0)
        h, w = img.shape[:2]
        panels = [img] + [np.asarray(viz.colorize_depth(d, lo, hi).crop((0, 0, w, h)))
                          for d in (gtn, pred.astype(np.float32))]
    else:
        panels = [img, np.where(gt[..., None], 255, 0).astype(np.uint8).repeat(3, 2),
                  np.where(pred[..., None], 255, 0).astype(np.uint8).repeat(3, 2)]
    return np.concatenate([np.asarray(p, np.uint8)[..., :3] for p in panels], axis=1)
