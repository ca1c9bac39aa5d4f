"""The trainer: samples -> forward + backward (C) -> AdamW (C), with the paper's recipe
as the default, checkpoints that resume bit for bit, JSONL logs and loss curves.

    from densemllm.train import Trainer, Sample
    from densemllm.train.targets import Segmentation
    tr = Trainer("ckpt/", lr=1e-4, warmup=10, total_steps=500, freeze=["vision"])
    tr.fit(dataset, eval_every=50, log="run/log.jsonl")   # dataset: a sequence of Samples
    tr.save("run/final")                                   # densemllm.load("run/final") works
    tr = Trainer.resume("run/final")                       # continues exactly

Definitions (losses, schedule, groups, accumulation): docs/training.md, "Trainer".
"""
from __future__ import annotations

import json
import math
import operator
import time
from pathlib import Path

import numpy as np

from ..losses import VARIANTS
from . import checkpoint as ck
from .optim import COMPONENTS, AdamW, LRSchedule
from .samples import Batches, EncodedSample, Sample, encode

__all__ = ["Trainer", "plot_losses", "PAPER_DEFAULTS"]

#: The paper's recipes (Sec. 4 / App.): supervised fine-tuning peak 2e-5 decaying to
#: 2e-6; task fine-tuning AdamW lr 1e-4 with a cosine schedule; NTP-M with k = 32.
PAPER_DEFAULTS = {
    "sft": {"lr": 2e-5, "min_lr": 2e-6, "loss": "ntpm", "k": 32},
    "finetune": {"lr": 1e-4, "min_lr": 0.0, "loss": "ntpm", "k": 32},
}

_HPARAMS = ("lr", "warmup", "total_steps", "min_lr", "freeze", "loss", "k", "text_weight", "vision_weight",
            "weight_decay", "max_grad_norm", "betas", "eps", "seed", "batch_size", "checkpointing",
            "max_num_patches", "gamma", "alpha", "ohem_ratio")


def _number(v, what, lo=None, strict=False):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    if lo is not None and (v <= lo if strict else v < lo):
        raise ValueError(f"{what} must be {'>' if strict else '>='} {lo}, got {v!r}")
    return float(v)


class Trainer:
    """Train a checkpoint (directory in the Hugging Face layout) with NTP-M on vision
    tokens and cross-entropy on answer tokens.

    lr: peak learning rate (> 0); warmup: linear warmup steps; total_steps: length of
    the cosine schedule (>= warmup); min_lr: its end (default lr / 10, the paper's SFT
    ratio 2e-5 -> 2e-6). freeze: parts among COMPONENTS ("vision", "merger", "llm",
    "embeddings", "head"). loss: the vision loss variant (densemllm.losses.VARIANTS;
    "ntpm" = the paper's), k: its top-k negatives. Step loss = text_weight x (mean CE
    over the step's answer tokens) + vision_weight x (mean NTP-M over the step's active
    vision tokens). batch_size: samples per step, accumulated (each its own forward +
    backward; gradients add; the means run over the whole step). weight_decay (on
    linear-layer matrices only), max_grad_norm (global clipping; None = off), betas,
    eps: AdamW. seed: the data order. backend, threads, checkpointing (activation
    recomputation): as TrainableModel.
    """

    def __init__(self, model_dir, lr=1e-4, warmup=0, total_steps=1000, min_lr=None, freeze=(), loss="ntpm", k=32,
                 text_weight=1.0, vision_weight=1.0, weight_decay=0.0, max_grad_norm=1.0, betas=(0.9, 0.999),
                 eps=1e-8, seed=0, batch_size=1, backend=None, threads=None, checkpointing=False,
                 max_num_patches=None, gamma=2.0, alpha=0.25, ohem_ratio=3.0):
        # every argument is checked before the model is loaded
        lr = _number(lr, "lr", 0, strict=True)
        for name, v in (("warmup", warmup), ("total_steps", total_steps), ("k", k), ("batch_size", batch_size),
                        ("seed", seed)):
            try:
                operator.index(v)
            except TypeError:
                raise TypeError(f"{name} must be an integer, got {v!r}") from None
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if warmup < 0 or total_steps < warmup:
            raise ValueError(f"total_steps ({total_steps}) must be >= warmup ({warmup}) >= 0")
        min_lr = lr / 10 if min_lr is None else _number(min_lr, "min_lr", 0)
        if min_lr > lr:
            raise ValueError(f"min_lr ({min_lr}) must be <= lr ({lr})")
        if isinstance(freeze, str):
            freeze = [freeze]
        bad = [f for f in freeze if f not in COMPONENTS]
        if bad:
            raise ValueError(f"freeze: unknown part(s) {bad}; choose from {COMPONENTS}")
        if loss not in VARIANTS:
            raise ValueError(f"loss must be one of {VARIANTS}, got {loss!r}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        text_weight = _number(text_weight, "text_weight", 0)
        vision_weight = _number(vision_weight, "vision_weight", 0)
        if text_weight == 0 and vision_weight == 0:
            raise ValueError("text_weight and vision_weight are both 0: nothing to train")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        weight_decay = _number(weight_decay, "weight_decay", 0)
        if max_grad_norm is not None:
            max_grad_norm = _number(max_grad_norm, "max_grad_norm", 0)

        from .trainable import TrainableModel

        self.model_dir = Path(model_dir)
        self.hparams = dict(lr=lr, warmup=int(warmup), total_steps=int(total_steps), min_lr=min_lr,
                            freeze=list(freeze), loss=loss, k=int(k), text_weight=text_weight,
                            vision_weight=vision_weight, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                            betas=[float(betas[0]), float(betas[1])], eps=float(eps), seed=int(seed),
                            batch_size=int(batch_size), checkpointing=bool(checkpointing),
                            max_num_patches=max_num_patches, gamma=float(gamma), alpha=float(alpha),
                            ohem_ratio=float(ohem_ratio))
        self.schedule = LRSchedule(lr, total_steps, warmup, min_lr)
        self.tm = TrainableModel(self.model_dir, backend=backend, threads=threads, checkpointing=checkpointing)
        self.config = self.tm.config
        self.tokenizer = self.tm.tokenizer
        self.threads = threads
        self.config_dict = ck.config_dict_of(self.model_dir)
        self.optimizer = AdamW(self.tm.params(), weight_decay=weight_decay, betas=betas, eps=eps,
                               max_grad_norm=max_grad_norm, freeze=freeze,
                               tied=bool(self.config.text.tie_word_embeddings))
        self.step_count = 0
        self.batches = None
        self._data_state = None
        self.history = []

    # ---- one step ----
    def encode(self, sample):
        """A Sample as the exact ids / labels / targets a step trains on."""
        return encode(self.tm, sample, self.hparams["max_num_patches"])

    def _active(self, e):
        if e.targets is None:
            return 0
        t = e.targets
        ok = np.array([len(t.valid_sets[s]) > 0 for s in t.token_set])
        if self.hparams["loss"] == "ntp_ce":
            ok &= t.labels >= 0
        return int(ok.sum())

    def step(self, batch):
        """One optimizer step on a batch (a Sample, an EncodedSample, or a list of them,
        accumulated). Returns stats: step, loss, text_loss, vision_loss, grad_norm, lr,
        tokens, tokens_per_s, seconds."""
        if isinstance(batch, (Sample, EncodedSample)):
            batch = [batch]
        if not batch:
            raise ValueError("step(): the batch is empty")
        t0 = time.perf_counter()
        enc = [b if isinstance(b, EncodedSample) else self.encode(b) for b in batch]
        hp = self.hparams
        tw, vw = hp["text_weight"], hp["vision_weight"]
        n_text = sum(e.n_text for e in enc) if tw > 0 else 0
        n_vis = sum(self._active(e) for e in enc) if vw > 0 else 0
        if n_text == 0 and n_vis == 0:
            raise ValueError("step(): the batch has no answer tokens and no dense targets with the given weights")
        self.tm.zero_grad()
        tot = {"loss": 0.0, "text_loss": 0.0, "vision_loss": 0.0}
        got_text = got_vis = tokens = 0
        for e in enc:
            use_text = n_text > 0 and e.n_text > 0
            use_vis = n_vis > 0 and e.targets is not None and self._active(e) > 0
            if not (use_text or use_vis):
                continue
            kw = {}
            if use_vis:
                t = e.targets
                kw.update(vision_targets=t.positives, vision_valid=t.valid_per_token(),
                          vision_reduction=n_vis / vw)
                if hp["loss"] == "ntp_ce":
                    kw["vision_labels"] = t.labels
            out = self.tm.forward_backward(
                e.input_ids, image=e.pre, labels=e.labels if use_text else None, k=hp["k"], loss=hp["loss"],
                text_reduction=(n_text / tw) if use_text else "mean", gamma=hp["gamma"], alpha=hp["alpha"],
                ohem_ratio=hp["ohem_ratio"], **kw)
            for key in tot:
                tot[key] += getattr(out, key)
            got_text += out.n_text
            got_vis += out.n_vision if use_vis else 0
            tokens += len(e.input_ids)
        if got_text != n_text or got_vis != n_vis:
            raise RuntimeError(f"the model counted {got_text} text / {got_vis} vision targets, the trainer "
                               f"{n_text} / {n_vis}: the step's loss normalisation would be wrong")
        lr = self.schedule(self.step_count)
        norm = self.optimizer.step(self.tm.grads(), lr, threads=self.threads)
        self.step_count += 1
        dt = time.perf_counter() - t0
        stats = dict(step=self.step_count, loss=tot["loss"], text_loss=tot["text_loss"],
                     vision_loss=tot["vision_loss"], grad_norm=norm, lr=lr, tokens=tokens,
                     tokens_per_s=tokens / dt if dt > 0 else float("inf"), seconds=dt, samples=len(enc))
        self.history.append(stats)
        return stats

    # ---- many steps ----
    def fit(self, dataset, steps=None, eval_every=None, eval_fn=None, log=None, progress=True, save_every=None,
            save_dir=None, plot=None):
        """Train `steps` steps (default: to total_steps) on batches drawn from `dataset`
        (a sequence of Samples; seeded order, reshuffled every epoch). eval_fn(trainer)
        -> dict runs every `eval_every` steps and at the end; its results join the log.
        log: a JSONL path (one line per step / eval); plot: a PNG path for the loss
        curve (needs matplotlib: pip install densemllm[plot]); save_every + save_dir:
        periodic checkpoints (save_dir/step-N). Returns the list of step stats."""
        if steps is None:
            steps = self.hparams["total_steps"] - self.step_count
        steps = operator.index(steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if eval_every is not None and (operator.index(eval_every) < 1 or eval_fn is None):
            raise ValueError("eval_every needs an eval_fn and must be >= 1")
        if save_every is not None and (operator.index(save_every) < 1 or save_dir is None):
            raise ValueError("save_every needs a save_dir and must be >= 1")
        if self.batches is None or self.batches.dataset is not dataset:
            self.batches = Batches(dataset, self.hparams["batch_size"], self.hparams["seed"])
            if self._data_state is not None:
                self.batches.restore(self._data_state)
                self._data_state = None
        records = []
        log_path = Path(log) if log is not None else None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            if log_path.exists():
                records = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="train", unit="step")
        out = []

        def flush():
            if log_path is not None:
                ck.atomic_write(log_path, "".join(json.dumps(r) + "\n" for r in records))

        try:
            for i in range(steps):
                st = self.step(self.batches.next())
                out.append(st)
                records.append({"kind": "step", **st})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{st['loss']:.4g}", lr=f"{st['lr']:.2e}")
                last = i == steps - 1
                if eval_fn is not None and eval_every is not None and (st["step"] % eval_every == 0 or last):
                    records.append({"kind": "eval", "step": st["step"], **eval_fn(self)})
                if save_every is not None and st["step"] % save_every == 0:
                    self.save(Path(save_dir) / f"step-{st['step']}")
                if (i + 1) % 10 == 0 or last:
                    flush()
        finally:
            if bar is not None:
                bar.close()
            flush()
        if plot is not None:
            plot_losses(records, plot)
        return out

    # ---- checkpoints ----
    def save(self, out_dir, dtype="f32"):
        """A checkpoint in the Hugging Face layout (densemllm.load / transformers read
        it) plus the optimizer and trainer state. dtype "f32" (exact resume) or "bf16"
        (export; resuming from it is not exact and is refused)."""
        arrays, meta = self.optimizer.state_dict()
        data = self.batches.state() if self.batches is not None else self._data_state
        state = {"step": self.step_count, "hparams": self.hparams, "optimizer": meta,
                 "schedule": self.schedule.state_dict(), "data": data, "dtype": dtype,
                 "source": str(self.model_dir)}
        return ck.save_checkpoint(out_dir, self.model_dir, self.tm.params(), self.config_dict, dtype=dtype,
                                  optimizer=arrays, state=state)

    @classmethod
    def resume(cls, ckpt_dir, model_dir=None, backend=None, threads=None):
        """A Trainer continuing from `ckpt_dir` exactly where save() left it: the f32
        weights, AdamW moments, step, schedule and data order. model_dir, when given,
        must be the model this run trains (ValueError if the checkpoint belongs to
        another one)."""
        st = ck.read_state(ckpt_dir)
        if st.get("dtype") != "f32":
            raise ValueError(f"{ckpt_dir} was saved as {st.get('dtype')}; only f32 checkpoints resume exactly")
        if model_dir is not None:
            cfg = ck.config_dict_of(model_dir)
            from .trainable import TrainableModel  # shapes of the other model, from its own table

            other = TrainableModel(model_dir, backend=backend, threads=threads)
            fp = ck.fingerprint(cfg, {n: a.shape for n, a in other.params().items()})
            if fp != st["fingerprint"]:
                raise ValueError(f"resume directory {ckpt_dir} holds the state of another model than {model_dir} "
                                 f"(config or tensor shapes differ)")
        hp = dict(st["hparams"])
        tr = cls(ckpt_dir, backend=backend, threads=threads, **hp)
        fp = ck.fingerprint(tr.config_dict, {n: a.shape for n, a in tr.tm.params().items()})
        if fp != st["fingerprint"]:
            raise ValueError(f"{ckpt_dir}: trainer_state.json belongs to another model than its weights")
        tr.optimizer.load_state_dict(ck.load_optimizer_arrays(ckpt_dir), st["optimizer"])
        tr.step_count = int(st["step"])
        tr._data_state = st["data"]
        return tr


def plot_losses(records, png_path):
    """Loss curves (total, text, vision per step; eval values if any) as a PNG.
    records: the JSONL log's records (or its path). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting loss curves needs matplotlib: pip install 'densemllm[plot]'") from None
    if isinstance(records, (str, Path)):
        records = [json.loads(x) for x in Path(records).read_text().splitlines() if x.strip()]
    steps = [r for r in records if r.get("kind") == "step"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r["step"] for r in steps]
    for key in ("loss", "text_loss", "vision_loss"):
        ax.plot(x, [r[key] for r in steps], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    import os

    os.replace(tmp, png_path)
    return png_path


# ---- `densemllm train CONFIG` ----
class JsonlSamples:
    """Samples from a JSON-lines file, read lazily (one line = one Sample):
    {"image": "a.png", "prompt": "...", "answer": "...", "dense": {...}} with dense one of
    {"type": "segmentation", "label_map": "a.png" | "a.npy", "classes": [...], "ignore_index": 255,
     "prompt_classes": [...]}, {"type": "depth", "depth": "d.npy", "dataset": "NYUv2", "rule": "median"},
    {"type": "referring", "mask": "m.png" | "m.npy"}. Paths are relative to the file."""

    def __init__(self, path):
        self.path = Path(path)
        lines = [x for x in self.path.read_text(encoding="utf-8").splitlines() if x.strip()]
        self.rows = []
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{n}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{self.path}:{n}: expected an object with a 'prompt' string")
            self.rows.append(row)
        if not self.rows:
            raise ValueError(f"{self.path}: no samples")

    def __len__(self):
        return len(self.rows)

    def _array(self, name):
        p = self.path.parent / name
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        from PIL import Image

        with Image.open(p) as im:
            return np.asarray(im)

    def __getitem__(self, i):
        from .targets import Depth, Referring, Segmentation

        row = self.rows[i]
        dense = row.get("dense")
        spec = None
        if dense is not None:
            kind = dense.get("type")
            if kind == "segmentation":
                spec = Segmentation(self._array(dense["label_map"]), dense["classes"], dense.get("ignore_index", 255),
                                    dense.get("prompt_classes"))
            elif kind == "depth":
                spec = Depth(self._array(dense["depth"]), dense.get("dataset", "NYUv2"), dense.get("rule", "median"))
            elif kind == "referring":
                spec = Referring(self._array(dense["mask"]))
            else:
                raise ValueError(f"{self.path}: sample {i}: dense.type must be segmentation, depth or referring, "
                                 f"got {kind!r}")
        image = str(self.path.parent / row["image"]) if row.get("image") else None
        return Sample(image, row["prompt"], row.get("answer", ""), dense=spec,
                      image_first=bool(row.get("image_first", True)))


def read_config(path):
    """A training config from JSON (.json) or YAML (.yaml / .yml; needs pyyaml)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: YAML configs need pyyaml: pip install 'densemllm[yaml]' (or use JSON)") from None
        cfg = yaml.safe_load(text)
    else:
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    known = {"model", "data", "out", "trainer", "steps", "eval_every", "save_every", "resume", "threads",
             "backend", "plot", "save_dtype"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    for key in ("model", "data", "out"):
        if not isinstance(cfg.get(key), str):
            raise ValueError(f"{path}: '{key}' (a path) is required")
    base = path.parent
    for key in ("model", "data", "out"):
        cfg[key] = str(base / cfg[key])
    return cfg


def run_config(path, progress=True):
    """`densemllm train CONFIG`: train, log to OUT/log.jsonl, save OUT/final (and
    OUT/step-N every save_every steps), plot OUT/loss.png when matplotlib is there.
    resume: true continues from OUT/final when it exists."""
    cfg = read_config(path)
    out = Path(cfg["out"])
    data = JsonlSamples(cfg["data"])
    final = out / "final"
    if cfg.get("resume") and (final / ck.STATE).is_file():
        tr = Trainer.resume(final, model_dir=cfg["model"], backend=cfg.get("backend"), threads=cfg.get("threads"))
    else:
        tr = Trainer(cfg["model"], backend=cfg.get("backend"), threads=cfg.get("threads"), **cfg.get("trainer", {}))
    plot = None
    if cfg.get("plot", True):
        try:
            import matplotlib  # noqa: F401

            plot = out / "loss.png"
        except ImportError:
            print("densemllm train: matplotlib is not installed, no loss.png (pip install 'densemllm[plot]')")
    stats = tr.fit(data, steps=cfg.get("steps"), log=out / "log.jsonl", progress=progress,
                   save_every=cfg.get("save_every"), save_dir=out if cfg.get("save_every") else None, plot=plot)
    tr.save(final, dtype=cfg.get("save_dtype", "f32"))
    if stats:
        print(f"densemllm train: {len(stats)} steps, loss {stats[0]['loss']:.4g} -> {stats[-1]['loss']:.4g}; "
              f"checkpoint {final}")
    return tr
