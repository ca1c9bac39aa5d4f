"""Training samples: an image, a prompt, the answer and optional dense targets, turned
into the exact token sequence inference uses.

The prompt goes through the checkpoint's own chat template and the image pad is
expanded to one pad per vision token, as :func:`densemllm.tasks.common.render_prompt`
and :meth:`densemllm.Model.prefill` do at inference; the answer is the assistant turn
the same template renders after it, cut after its first end-of-turn id. The text loss
covers the answer tokens only (that end-of-turn id included, so the model learns to
stop): Hugging Face labels, -100 elsewhere.

Several samples per step are *accumulated*, not packed: each sample is its own
forward + backward, gradients add, and the losses are normalised by the step's totals
(text targets, active vision tokens) so the step's loss is the mean over all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..tasks.common import DEFAULT_SYSTEM, render_prompt
from . import targets as _targets

__all__ = ["Sample", "EncodedSample", "encode", "Batches", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@dataclass
class Sample:
    """image: anything densemllm.image.to_rgb_array takes (None: a text-only sample).
    prompt: the user text. answer: the assistant's reply (may be empty when only the
    dense targets train). dense: a targets spec (densemllm.train.targets.Segmentation
    / Depth / Referring) at the image's size, or None. image_first: the image before the
    text in the user turn (the official demo's order; dataset depth prompts put the
    text first)."""
    image: object
    prompt: str
    answer: str = ""
    dense: object = None
    system: str = DEFAULT_SYSTEM
    image_first: bool = True


@dataclass
class EncodedSample:
    input_ids: np.ndarray          # int64 [T], image pads expanded
    labels: np.ndarray             # int64 [T], Hugging Face convention (-100 = no loss)
    pre: object                    # densemllm.vision.Preprocessed or None
    targets: object = None         # DenseTargets or None
    n_text: int = 0                # text targets counted by the loss (labels[1:] != -100)
    n_vision: int = 0              # vision tokens that are not masked
    meta: dict = field(default_factory=dict)


def _answer_ids(model, sample, prompt_text):
    """Ids of the assistant turn after the generation prompt, up to its end-of-turn id."""
    tok = model.tokenizer
    items = [{"type": "image"}, {"type": "text", "text": sample.prompt}] if sample.image is not None else \
        [{"type": "text", "text": sample.prompt}]
    if sample.image is not None and not sample.image_first:
        items.reverse()
    msgs = ([{"role": "system", "content": sample.system}] if sample.system else []) + \
        [{"role": "user", "content": items}, {"role": "assistant", "content": sample.answer}]
    full = tok.chat_prompt(msgs, add_generation_prompt=False)
    if not full.startswith(prompt_text):
        raise ValueError("the chat template renders the assistant turn in a way that does not extend the "
                         "generation prompt; cannot place the answer")
    ids = tok.encode(full[len(prompt_text):])
    eos = set(int(e) for e in model.config.eos_token_id)
    for j, i in enumerate(ids):
        if i in eos:
            return ids[: j + 1]
    raise ValueError("the chat template's assistant turn has no end-of-turn token (config eos_token_id)")


def encode(model, sample: Sample, max_num_patches=None) -> EncodedSample:
    """One Sample as ids, labels, preprocessed image and dense targets. `model`: a
    densemllm.Model or TrainableModel (tokenizer, config, preprocess)."""
    if not isinstance(sample, Sample):
        raise TypeError(f"expected a densemllm.train.Sample, got {type(sample).__name__}")
    if not isinstance(sample.prompt, str) or not sample.prompt.strip():
        raise ValueError("Sample.prompt must be a non-empty string")
    if not isinstance(sample.answer, str):
        raise TypeError(f"Sample.answer must be a string, got {type(sample.answer).__name__}")
    inner = getattr(model, "model", model)  # TrainableModel wraps the inference Model
    pre = None
    kw = {} if max_num_patches is None else {"max_num_patches": max_num_patches}
    if sample.image is not None:
        from ..image import to_rgb_array

        rgb = to_rgb_array(sample.image)
        pre = inner.preprocess(rgb, **kw)
        image_size = rgb.shape[:2]
    elif sample.dense is not None:
        raise ValueError("Sample.dense needs an image")
    if sample.image is not None:
        prompt_text = render_prompt(inner, sample.prompt, image_first=sample.image_first, system=sample.system)
    else:
        msgs = ([{"role": "system", "content": sample.system}] if sample.system else []) + \
            [{"role": "user", "content": sample.prompt}]
        prompt_text = inner.tokenizer.chat_prompt(msgs, add_generation_prompt=True)
    prompt_ids = inner.tokenizer.encode(prompt_text)
    answer_ids = _answer_ids(inner, sample, prompt_text) if sample.answer else []
    m = inner.config.vision.spatial_merge_size
    n_vis = (pre.grid[0] // m) * (pre.grid[1] // m) if pre is not None else 0
    if pre is not None:
        prompt_ids = inner.tokenizer.expand_image_pads(prompt_ids, n_vis)
    ids = np.asarray(prompt_ids + answer_ids, np.int64)
    labels = np.full(len(ids), IGNORE_INDEX, np.int64)
    labels[len(prompt_ids):] = answer_ids
    limit = inner.config.text.max_position_embeddings
    if len(ids) > limit:
        raise ValueError(f"sample is {len(ids)} tokens long, more than max_position_embeddings={limit}")
    tgt = None
    n_active = 0
    if sample.dense is not None:
        tgt = _targets.build(inner, sample.dense, image_size, pre.size)
        if tgt.n_tokens != n_vis:
            raise AssertionError(f"targets cover {tgt.n_tokens} tokens, the image has {n_vis}")
        active = np.array([len(tgt.valid_sets[s]) > 0 for s in tgt.token_set])
        n_active = int(active.sum())
    return EncodedSample(ids, labels, pre, tgt, int((labels[1:] != IGNORE_INDEX).sum()), n_active,
                         {"prompt_tokens": len(prompt_ids), "answer_tokens": len(answer_ids)})


class Batches:
    """Seeded, reproducible batches of a dataset (any sequence of Samples): every epoch
    a fresh permutation from numpy's PCG64 seeded with `seed`; `state()` / `restore()`
    give the exact position (for checkpoints)."""

    def __init__(self, dataset, batch_size=1, seed=0, shuffle=True):
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), bool(shuffle)
        self.rng = np.random.default_rng(seed)
        self.epoch, self.pos, self.order = 0, 0, None

    def _new_epoch(self):
        n = len(self.dataset)
        self.order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        self.pos = 0

    def next(self):
        out = []
        while len(out) < self.batch_size:
            if self.order is None or self.pos >= len(self.order):
                if self.order is not None:
                    self.epoch += 1
                self._new_epoch()
            out.append(self.dataset[int(self.order[self.pos])])
            self.pos += 1
        return out

    def state(self):
        return {"rng": self.rng.bit_generator.state, "epoch": self.epoch, "pos": self.pos,
                "order": None if self.order is None else self.order.tolist(), "batch_size": self.batch_size,
                "shuffle": self.shuffle, "n": len(self.dataset)}

    def restore(self, st):
        if st["n"] != len(self.dataset):
            raise ValueError(f"data state is for a dataset of {st['n']} samples, this one has {len(self.dataset)}")
        self.rng.bit_generator.state = st["rng"]
        self.epoch, self.pos = st["epoch"], st["pos"]
        self.order = None if st["order"] is None else np.asarray(st["order"], np.int64)
        self.batch_size, self.shuffle = st["batch_size"], st["shuffle"]
