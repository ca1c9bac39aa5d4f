"""AdamW with global-norm clipping, parameter groups and the warmup + cosine schedule.

The arithmetic is in C (csrc/train/adamw.c); this module keeps the moments (NumPy f32
arrays, so checkpoints save them as they are) and decides, from a tensor's checkpoint
name, which part of the model it belongs to and whether it decays. Definitions:
docs/training.md, "Trainer".
"""
import operator
import re

import numpy as np

from .. import _core

#: Parts of the model that can be frozen.
COMPONENTS = ("vision", "merger", "llm", "embeddings", "head")

_EMBED = "model.embed_tokens.weight"
_HEAD = "lm_head.weight"


def components_of(name, tied=False):
    """The parts of the model (a subset of COMPONENTS) that tensor `name` belongs to.
    A tied head's matrix (model.embed_tokens.weight) is both "embeddings" and "head"."""
    if name.startswith("merger.") or name.startswith("vision_model.merger."):
        return {"merger"}
    if name.startswith("siglip2.vision_model.") or name.startswith("vision_model."):
        return {"vision"}
    if name == _EMBED:
        return {"embeddings", "head"} if tied else {"embeddings"}
    if name == _HEAD:
        return {"head"}
    if name.startswith("model."):
        return {"llm"}
    raise ValueError(f"{name!r} is not a tensor name of this architecture (vision_model., merger., model., lm_head.)")


_NORM = re.compile(r"(norm|^ln_)")


def decays_by_default(name):
    """Weight decay applies to matrices of linear layers (and the patch embedding, a
    Linear), not to norms, biases or the token embedding (also when tied)."""
    if name.endswith(".bias") or name == _EMBED:
        return False
    module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
    return not _NORM.search(module)


class LRSchedule:
    """Linear warmup to `lr`, then cosine to `min_lr` (csrc/train/adamw.h, dm_lr_at):
    step s (0-based) < warmup: lr * (s + 1) / warmup; after: min_lr + (lr - min_lr) *
    (1 + cos(pi * p)) / 2 with p = min(1, (s - warmup + 1) / (total_steps - warmup)).
    Paper defaults: SFT lr 2e-5 -> min_lr 2e-6; task fine-tuning lr 1e-4, cosine."""

    def __init__(self, lr, total_steps, warmup=0, min_lr=0.0):
        self.lr, self.min_lr = float(lr), float(min_lr)
        self.total_steps, self.warmup = operator.index(total_steps), operator.index(warmup)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if self.total_steps < self.warmup:
            raise ValueError(f"total_steps ({total_steps}) must be >= warmup ({warmup})")
        _core.lr_at(self.lr, self.min_lr, self.warmup, self.total_steps, 0)  # the C check: every bound

    def __call__(self, step):
        return _core.lr_at(self.lr, self.min_lr, self.warmup, self.total_steps, operator.index(step))

    def state_dict(self):
        return {"lr": self.lr, "min_lr": self.min_lr, "total_steps": self.total_steps, "warmup": self.warmup}


class AdamW:
    """AdamW over named f32 tensors (updated in place), torch.optim.AdamW's update with
    clip_grad_norm_ before it.

    params: dict name -> f32 ndarray (the trainable model's master weights, by
        checkpoint name). freeze: parts of COMPONENTS to leave untouched (and out of
        the clipping norm). weight_decay applies to the tensors `decay(name)` says
        (default decays_by_default). tied: the head shares the embedding matrix.
    """

    def __init__(self, params, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, max_grad_norm=1.0, freeze=(),
                 tied=False, decay=decays_by_default):
        unknown = [f for f in freeze if f not in COMPONENTS]
        if unknown:
            raise ValueError(f"freeze: unknown part(s) {unknown}; choose from {COMPONENTS}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if max_grad_norm is not None and not max_grad_norm >= 0:
            raise ValueError(f"max_grad_norm must be >= 0 or None, got {max_grad_norm}")
        self.names = list(params)
        for n in self.names:
            p = params[n]
            if not isinstance(p, np.ndarray) or p.dtype != np.float32 or not p.flags.c_contiguous:
                raise TypeError(f"params[{n!r}]: expected a C-contiguous float32 array")
        self.params = params
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        self.max_grad_norm = float(max_grad_norm or 0.0)
        self.freeze = tuple(freeze)
        self.frozen = np.array([bool(components_of(n, tied) & set(freeze)) for n in self.names], np.uint8)
        self.weight_decay = np.array([weight_decay if decay(n) else 0.0 for n in self.names], np.float64)
        self.lr_scale = np.ones(len(self.names), np.float64)
        self.m = {n: np.zeros_like(params[n]) for n in self.names}
        self.v = {n: np.zeros_like(params[n]) for n in self.names}
        self.step_count = 0

    def trainable(self):
        return [n for n, f in zip(self.names, self.frozen) if not f]

    def step(self, grads, lr, grad_scale=1.0, threads=None):
        """One update with gradients `grads` (dict name -> array) times grad_scale (e.g.
        1 / micro-batches). Returns the global gradient norm before clipping."""
        missing = [n for n in self.names if n not in grads]
        if missing:
            raise KeyError(f"grads: no gradient for {missing[:3]}{'...' if len(missing) > 3 else ''}")
        self.step_count += 1
        try:
            return _core.adamw_step([self.params[n] for n in self.names], [grads[n] for n in self.names],
                                    [self.m[n] for n in self.names], [self.v[n] for n in self.names],
                                    self.weight_decay, self.lr_scale, self.frozen, step=self.step_count,
                                    lr=float(lr), beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                                    max_grad_norm=self.max_grad_norm, grad_scale=float(grad_scale),
                                    threads=0 if threads is None else operator.index(threads))
        except Exception:
            self.step_count -= 1  # nothing was updated
            raise

    def state_dict(self):
        """Arrays (moments, by 'm.NAME' / 'v.NAME') and plain settings."""
        arrays = {f"m.{n}": self.m[n] for n in self.names}
        arrays.update({f"v.{n}": self.v[n] for n in self.names})
        meta = {"step": self.step_count, "betas": list(self.betas), "eps": self.eps,
                "max_grad_norm": self.max_grad_norm, "freeze": list(self.freeze), "names": self.names,
                "weight_decay": self.weight_decay.tolist()}
        return arrays, meta

    def load_state_dict(self, arrays, meta):
        if list(meta["names"]) != self.names:
            raise ValueError("optimizer state: its tensor names differ from this model's")
        for n in self.names:
            for kind, store in (("m", self.m), ("v", self.v)):
                a = arrays[f"{kind}.{n}"]
                if a.shape != store[n].shape:
                    raise ValueError(f"optimizer state: {kind}.{n} has shape {a.shape}, expected {store[n].shape}")
                store[n][...] = a
        self.step_count = int(meta["step"])
