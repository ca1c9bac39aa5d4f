"""The trainable model: f32 master weights, forward + backward of the whole model in C.

The heavy work is ``_core.TrainableModel`` (csrc/model/trainable.c); this module turns
images, prompts and targets into the arrays it takes, with the package's own
preprocessing (:mod:`densemllm.vision`), tokenizer and image-pad expansion.
"""
from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np

from .. import _core
from ..checkpoint import check_weights, load, open_checkpoint
from ..llm import _ids_array, lm_config_dict
from ..losses import VARIANTS, _csr, _id_array
from ..vision import Preprocessed, vision_config_dict

__all__ = ["TrainableModel", "StepOutput"]

IGNORE_INDEX = -100


class StepOutput(NamedTuple):
    """What :meth:`TrainableModel.forward_backward` returns.

    loss = text_loss + vision_loss (the value the gradients are of); n_text: counted
    text targets; n_vision: active (not masked) vision tokens; act_bytes: saved
    activations of the step; head_workspace: the loss heads' largest scratch (bytes)."""
    loss: float
    text_loss: float
    vision_loss: float
    n_text: int
    n_vision: int
    act_bytes: int
    head_workspace: int


def _reduction(value, what):
    if value == "mean":
        return 0.0
    if value == "sum":
        return -1.0
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ValueError(f"{what} must be 'mean', 'sum' or a positive denominator, got {value!r}")


class TrainableModel:
    """A checkpoint loaded for training: f32 master weights (any checkpoint dtype is
    widened once) and the gradient of every parameter.

    ``backend``: "onednn" (default) or "openblas"; ``threads``: thread count for all
    heavy work (None: leave as is); ``checkpointing``: recompute each layer's
    activations in the backward instead of storing them (less memory, one more
    forward). ``model`` is the inference :class:`densemllm.Model` of the same path
    (config, tokenizer, preprocessing; its weights are the file's, not the masters)."""

    def __init__(self, path, backend=None, threads=None, checkpointing=False):
        self.model = load(path, threads=threads, backend=backend)
        self.config = self.model.config
        self.tokenizer = self.model.tokenizer
        # the masters come from the file's own values: a second, unconverted mapping
        # (the inference model may have narrowed an F16 file to bf16), closed after the copy
        ckpt = open_checkpoint(path)
        check_weights(ckpt, self.config, str(path))
        self._tm = _core.TrainableModel(ckpt, vision_config_dict(self.config), lm_config_dict(self.config),
                                        backend=self.model.backend, checkpointing=bool(checkpointing))
        del ckpt
        # transformers' embedding has padding_idx = pad_token_id: that row gets no gradient
        # from its lookups (the turn-end token of the Youtu template is often the pad token)
        pad = self.config.pad_token_id
        self._padding_idx = -1 if pad is None else int(pad)
        self._params = None
        self._grads = None

    # ---- state ----
    @property
    def checkpointing(self):
        return self._tm.checkpointing

    @checkpointing.setter
    def checkpointing(self, value):
        self._tm.checkpointing = bool(value)

    @property
    def num_parameters(self):
        return self._tm.num_parameters

    def params(self):
        """{checkpoint name: float32 NumPy view of the master weight} (writable: the
        forward reads these very buffers)."""
        if self._params is None:
            self._params = self._tm.tensors(grad=False)
        return self._params

    def grads(self):
        """{checkpoint name: float32 NumPy view of the accumulated gradient}."""
        if self._grads is None:
            self._grads = self._tm.tensors(grad=True)
        return self._grads

    def zero_grad(self):
        self._tm.zero_grad()

    def activation_bytes(self, T, grid=None, checkpointing=None):
        """Bytes of saved activations of a step with T tokens and a (gh, gw) patch grid."""
        gh, gw = grid if grid is not None else (0, 0)
        kw = {} if checkpointing is None else {"checkpointing": bool(checkpointing)}
        return self._tm.act_bytes(int(T), int(gh), int(gw), **kw)

    # ---- one step ----
    def forward_backward(self, input_ids, image=None, labels=None, vision_targets=None, vision_valid=None,
                         k=32, loss="ntpm", *, vision_reduction="mean", text_reduction="mean",
                         vision_labels=None, gamma=2.0, alpha=0.25, ohem_ratio=3.0):
        """Forward + backward of one sample; gradients ADD until :meth:`zero_grad`.

        input_ids: token ids (or a prompt string) with one ``<|image_pad|>`` (expanded to
        the image's vision tokens) or already expanded. image: anything
        :func:`densemllm.image.to_rgb_array` takes, or a :class:`densemllm.vision.Preprocessed`.
        labels: Hugging Face convention, same length as input_ids (shifted inside:
        position t predicts labels[t + 1]), -100 ignored; with a single pad expanded,
        labels are expanded with -100. None: no text loss.
        vision_targets: the positive ids of each vision token (row-major over the
        merged grid; as :func:`densemllm.ntpm_loss` positives: a list of arrays, an [L]
        or [L, n] array, or a CSR tuple). Vision token i is supervised by the labels of
        its own merged patch. None: no vision loss.
        vision_valid: None (whole vocabulary), one 1-D id array or [V] bool mask (the
        sample's valid set, shared by its tokens), or a list of L arrays / CSR tuple
        (per-token sets); with sets only those head rows are computed.
        k, loss (a variant of densemllm.losses.VARIANTS), gamma, alpha, ohem_ratio,
        vision_labels (ntp_ce): as :func:`densemllm.ntpm_loss`.
        vision_reduction: "mean" over active vision tokens (default), "sum" (paper
        Eq. 5) or a denominator; text_reduction: "mean" over counted targets or a
        denominator (for micro-batch accumulation)."""
        if loss not in VARIANTS:
            raise ValueError(f"loss must be one of {VARIANTS}, got {loss!r}")
        k = operator.index(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        vden = _reduction(vision_reduction, "vision_reduction")
        if text_reduction == "sum":
            raise ValueError("text_reduction must be 'mean' or a positive denominator, got 'sum'")
        tden = _reduction(text_reduction, "text_reduction")
        ids = self.tokenizer.encode(input_ids) if isinstance(input_ids, str) else list(_ids_array(input_ids))
        lab = None
        if labels is not None:
            lab = _ids_array(labels, "labels").tolist()
            if len(lab) != len(ids):
                raise ValueError(f"labels: expected {len(ids)} entries (the length of input_ids), got {len(lab)}")
        kw = {}
        L = 0
        if image is not None:
            pre = image if isinstance(image, Preprocessed) else self.model.preprocess(image)
            m = self.config.vision.spatial_merge_size
            L = (pre.grid[0] // m) * (pre.grid[1] // m)
            pad = self.config.image_token_id
            where = [i for i, t in enumerate(ids) if t == pad]
            if len(where) == 1 and L != 1:
                p = where[0]
                ids = ids[:p] + [pad] * L + ids[p + 1:]
                if lab is not None:
                    lab = lab[:p] + [IGNORE_INDEX] * L + lab[p + 1:]
            kw.update(patches=np.ascontiguousarray(pre.patches, dtype=np.float32), grid_h=int(pre.grid[0]),
                      grid_w=int(pre.grid[1]))
        elif vision_targets is not None:
            raise ValueError("vision_targets need an image")
        kw["input_ids"] = np.asarray(ids, dtype=np.int64)
        if lab is not None:
            kw["labels"] = np.asarray(lab, dtype=np.int64)
        if vision_targets is not None:
            kw["pos_offsets"], kw["pos_ids"] = _csr(vision_targets, L, "vision_targets")
            if vision_valid is not None:
                kw.update(self._valid_sets(vision_valid, L))
            if vision_labels is not None:
                if loss != "ntp_ce":
                    raise ValueError("vision_labels only apply to loss='ntp_ce'")
                vl = _id_array(vision_labels, "vision_labels")
                if vl.shape != (L,):
                    raise ValueError(f"vision_labels: expected {L} labels (one per vision token), got {vl.shape}")
                kw["ntp_labels"] = vl
        elif vision_valid is not None or vision_labels is not None:
            raise ValueError("vision_valid / vision_labels need vision_targets")
        r = self._tm.forward_backward(k=k, variant=VARIANTS.index(loss), gamma=float(gamma), alpha=float(alpha),
                                      ohem_ratio=float(ohem_ratio), vision_denom=vden, text_denom=tden,
                                      padding_idx=self._padding_idx, **kw)
        return StepOutput(r["loss"], r["text_loss"], r["vision_loss"], r["n_text"], r["n_vision"], r["act_bytes"],
                          r["head_workspace"])

    def _valid_sets(self, valid, L):
        V = self.config.text.vocab_size
        if isinstance(valid, np.ndarray) and valid.dtype == np.bool_:
            if valid.shape != (V,):
                raise ValueError(f"vision_valid: a mask must have shape ({V},), got {valid.shape}")
            valid = np.flatnonzero(valid)
        if isinstance(valid, np.ndarray) and valid.ndim == 1:  # one set for the whole sample
            ids = _id_array(valid, "vision_valid")
            return {"valid_offsets": np.array([0, len(ids)], dtype=np.int64), "valid_ids": ids,
                    "token_set": np.zeros(L, dtype=np.int64)}
        vo, vi = _csr(valid, L, "vision_valid")
        return {"valid_offsets": vo, "valid_ids": vi}

    def __repr__(self):
        return f"TrainableModel({str(self.model.path)!r}, parameters={self.num_parameters}, " \
               f"checkpointing={self.checkpointing})"
