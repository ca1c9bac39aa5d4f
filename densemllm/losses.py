"""NTP-M, the multi-label next-token loss for vision tokens (paper Sec. 3.2), and the
ablation losses of the paper's Tables 3-4. The work is done in C (csrc/train/ntpm.c);
this module only turns the user's sparse targets into CSR arrays. Exact definitions,
tie-break and edge cases: docs/ntpm.md."""
import operator

import numpy as np

from . import _core

VARIANTS = ("ntpm", "bce", "individual", "balanced", "focal", "ohem", "ntp_ce")
REDUCTIONS = ("sum", "mean", "none")


def _id_array(a, what):
    """A 1-D int64 array of ids from an integer array or sequence (no float/bool ids)."""
    arr = np.asarray(a)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what}: ids must be integers, got dtype {arr.dtype}")
    if arr.ndim == 0:  # one id
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D list of ids, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _csr(obj, L, what):
    """(offsets [L+1], ids) int64 from a list of L id arrays or an (offsets, ids) tuple."""
    if isinstance(obj, tuple):
        if len(obj) != 2:
            raise ValueError(f"{what}: a CSR tuple is (offsets, ids), got {len(obj)} items")
        offsets = _id_array(obj[0], f"{what} offsets")
        if len(offsets) != L + 1:
            raise ValueError(f"{what}: offsets must have L + 1 = {L + 1} entries, got {len(offsets)}")
        return offsets, _id_array(obj[1], f"{what} ids")
    if isinstance(obj, np.ndarray) and obj.ndim in (1, 2):  # [L] one id or [L, n] n ids per token
        if obj.shape[0] != L:
            raise ValueError(f"{what}: expected {L} rows (one per token), got shape {obj.shape}")
        ids = _id_array(obj.reshape(-1), f"{what}")
        n = 1 if obj.ndim == 1 else obj.shape[1]
        return np.arange(L + 1, dtype=np.int64) * n, ids
    if isinstance(obj, np.ndarray) or not hasattr(obj, "__len__"):
        raise TypeError(f"{what}: expected a list of {L} id arrays, an [L] / [L, n] integer array or an "
                        f"(offsets, ids) tuple, got {type(obj).__name__}")
    if len(obj) != L:
        raise ValueError(f"{what}: expected {L} id lists (one per token), got {len(obj)}")
    parts = [_id_array(p, f"{what}[{i}]") for i, p in enumerate(obj)]
    offsets = np.zeros(L + 1, dtype=np.int64)
    if L:
        np.cumsum([len(p) for p in parts], out=offsets[1:])
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return offsets, np.ascontiguousarray(ids, dtype=np.int64)


def ntpm_loss(logits, positives, valid=None, k=32, reduction="sum", variant="ntpm", gamma=2.0,
              alpha=0.25, ohem_ratio=3.0, labels=None, bf16=False, threads=None, grad=True, out=None):
    """NTP-M loss (or an ablation variant) of vision-token logits, and its gradient.

    logits: float32 [L, V] C-contiguous array (or the bf16 bit patterns as uint16
        with bf16=True). Never copied.
    positives: the multi-hot targets, sparse: a list of L integer id arrays, an
        integer array [L] (one id per token) or [L, n] (n ids per token), or a CSR
        tuple (offsets int [L+1], ids int) (a tuple is always read as CSR). Duplicates count once; ids outside the
        token's valid set are dropped (P_i is a subset of M_i).
    valid: None (all ids valid), a bool/uint8 [V] mask shared by all tokens, or a
        list of L id arrays / CSR tuple (per-token valid sets). Tokens with an empty
        valid set are masked: loss 0, gradient 0, not counted by reduction="mean".
    k: number of relevant negatives (top-k valid negatives by logit, lower id first
        among equal logits); with fewer candidates all of them, averaged over their
        number. variant: one of VARIANTS (see docs/ntpm.md). gamma, alpha: focal.
        ohem_ratio: hardest ceil(ratio * max(|P_i|, 1)) negatives per token for "ohem".
        labels: "ntp_ce" only, int [L] (-1 = ignore); default the first valid positive.
    reduction: "sum" (default, Eq. 5), "mean" over active tokens, or "none".
    threads: thread count for this call (default: densemllm.get_num_threads()).
    grad: True (dense), False (skip it), or "sparse" (ntpm / ohem only: the same
        gradient as CSR, no [L, V] buffer). out: optional float32 [L, V] buffer for
        the dense gradient (zeroed and filled).

    Returns (loss, grad): loss is a float (an f32 [L] array of token losses for
    reduction="none"), grad the f32 [L, V] gradient of the (summed for "none") loss,
    zero outside the selected terms; None with grad=False; with grad="sparse" a tuple
    (offsets int64 [L+1], ids int64, values float32): token i's nonzero gradient
    entries are ids/values[offsets[i]:offsets[i+1]], ids ascending.
    """
    if not isinstance(logits, np.ndarray):
        raise TypeError(f"logits: expected a numpy.ndarray, got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"logits: expected a 2-D [L, V] array, got shape {logits.shape}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an integer, got {type(k).__name__}") from None
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if threads is None:
        threads = 0
    else:
        threads = operator.index(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
    L, V = logits.shape
    pos_offsets, pos_ids = _csr(positives, L, "positives")
    mask = valid_offsets = valid_ids = None
    if valid is not None:
        if isinstance(valid, np.ndarray):
            if valid.ndim != 1 or valid.dtype not in (np.bool_, np.uint8):
                raise TypeError(f"valid: an array must be a bool/uint8 [V] mask, got dtype {valid.dtype} "
                                f"shape {valid.shape} (per-token sets: a list of id arrays or a CSR tuple)")
            if valid.shape[0] != V:
                raise ValueError(f"valid: the mask must have length V={V}, got {valid.shape[0]}")
            mask = np.ascontiguousarray(valid, dtype=np.uint8)
        else:
            valid_offsets, valid_ids = _csr(valid, L, "valid")
    if grad not in (True, False, "sparse"):
        raise ValueError(f"grad must be True, False or 'sparse', got {grad!r}")
    if grad == "sparse" and variant not in ("ntpm", "ohem"):
        raise ValueError(f"grad='sparse' is only available for variants 'ntpm' and 'ohem', not {variant!r}")
    if labels is not None:
        if variant != "ntp_ce":
            raise ValueError("labels only apply to variant='ntp_ce'")
        labels = np.asarray(labels)
        if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels: expected integers, got dtype {labels.dtype}")
        if labels.shape != (L,):
            raise ValueError(f"labels: expected shape ({L},), got {labels.shape}")
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    loss, token_losses, g, _ = _core.ntpm_loss(
        logits, pos_offsets, pos_ids, valid_mask=mask, valid_offsets=valid_offsets, valid_ids=valid_ids,
        labels=labels, k=k, variant=variant, reduction=reduction, gamma=float(gamma), alpha=float(alpha),
        ohem_ratio=float(ohem_ratio), bf16=bool(bf16), threads=threads,
        grad="sparse" if grad == "sparse" else bool(grad), out=out)
    if grad == "sparse":  # padded [L, S] rows -> CSR
        ids, vals, count = g
        keep = np.arange(ids.shape[1]) < count[:, None]
        offsets = np.zeros(L + 1, dtype=np.int64)
        np.cumsum(count, out=offsets[1:])
        g = (offsets, ids[keep].astype(np.int64), vals[keep])
    return (token_losses if reduction == "none" else loss), g


def _f32_2d(a, what):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array, got shape {a.shape}")
    return a


def _head_common(h, w, dh, dw, backend, chunk_bytes, threads):
    _f32_2d(h, "h")
    _f32_2d(w, "w")
    if h.dtype != np.float32:
        raise TypeError(f"h: expected float32, got {h.dtype}")
    if w.dtype not in (np.float32, np.uint16):
        raise TypeError(f"w: expected float32 (or uint16 bf16 bit patterns), got {w.dtype}")
    if chunk_bytes is None:
        chunk_bytes = 0
    chunk_bytes = operator.index(chunk_bytes)
    if chunk_bytes < 0:
        raise ValueError(f"chunk_bytes must be >= 0 (0 = the default budget), got {chunk_bytes}")
    threads = 0 if threads is None else operator.index(threads)
    if threads < 0:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return dict(dh=dh, dw=dw, bf16=w.dtype == np.uint16, backend=backend, chunk_bytes=chunk_bytes,
                threads=threads)


def head_ce_loss(h, w, targets, ignore_index=-100, weight=1.0, denom=None, dh=None, dw=None,
                 backend="onednn", chunk_bytes=None, threads=None):
    """Next-token cross-entropy fused with the LM head (csrc/train/loss.c, dm_head_ce).

    h: f32 [T, H] final normalised hidden states; w: the head [V, H] (f32, or bf16 bit
    patterns as uint16). targets: int [T], the id row t predicts (shift Hugging Face
    labels yourself: targets[t] = labels[t + 1]); ignore_index rows are skipped.
    loss = weight * sum of the counted rows' CE / denom (denom None: their number).
    dh [T, H] / dw [V, H] f32 arrays, when given, are ADDED to (gradient accumulation;
    a tied head passes the embedding gradient as dw). No [T, V] buffer above
    chunk_bytes (default 64 MiB) is allocated.
    Returns (loss, n_counted, workspace_bytes)."""
    kw = _head_common(h, w, dh, dw, backend, chunk_bytes, threads)
    targets = np.asarray(targets)
    if targets.dtype == np.bool_ or not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets: expected integers, got dtype {targets.dtype}")
    if targets.shape != (h.shape[0],):
        raise ValueError(f"targets: expected shape ({h.shape[0]},) (one per row of h), got {targets.shape}")
    d = 0.0 if denom is None else float(denom)
    if denom is not None and not d > 0:
        raise ValueError(f"denom must be > 0 (or None for the counted rows), got {denom}")
    return _core.head_ce(h, w, np.ascontiguousarray(targets, dtype=np.int64), ignore_index=int(ignore_index),
                         weight=float(weight), denom=d, **kw)


def head_ntpm_loss(h, w, positives, rows=None, valid=None, token_set=None, k=32, variant="ntpm",
                   labels=None, gamma=2.0, alpha=0.25, ohem_ratio=3.0, weight=1.0, reduction="mean",
                   dh=None, dw=None, backend="onednn", chunk_bytes=None, threads=None):
    """NTP-M (or an ablation variant) on vision rows, fused with the LM head
    (csrc/train/loss.c, dm_head_ntpm). Definitions: docs/ntpm.md.

    rows: int [L] rows of h that are vision tokens (None: rows 0..L-1, L = len(positives)).
    positives: per-token positive ids, as for ntpm_loss (list of arrays, [L] / [L, n]
    array, or CSR tuple). valid: None (the whole vocabulary), or valid id sets (a list
    of arrays or a CSR tuple); with token_set (int [L]) token i uses set token_set[i]
    (e.g. one set per sample), else set i. Only the head rows of valid ids are multiplied.
    reduction: "mean" over active tokens, "sum" (the paper's Eq. 5), or a number (the
    denominator, e.g. the active tokens of all micro-batches of a step).
    Returns (loss, n_active, workspace_bytes); dh / dw are added to as in head_ce_loss."""
    kw = _head_common(h, w, dh, dw, backend, chunk_bytes, threads)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if rows is not None:
        rows = np.asarray(rows)
        if rows.dtype == np.bool_ or not np.issubdtype(rows.dtype, np.integer) or rows.ndim != 1:
            raise TypeError(f"rows: expected a 1-D integer array, got dtype {rows.dtype} shape {rows.shape}")
        L = rows.shape[0]
        rows = np.ascontiguousarray(rows, dtype=np.int64)
    else:
        L = positives[0].shape[0] - 1 if isinstance(positives, tuple) else len(positives)
    pos_offsets, pos_ids = _csr(positives, L, "positives")
    vo = vi = None
    if valid is not None:
        if token_set is not None:
            token_set = np.asarray(token_set)
            if token_set.shape != (L,) or not np.issubdtype(token_set.dtype, np.integer):
                raise ValueError(f"token_set: expected {L} integer set indices, got shape {token_set.shape}")
            token_set = np.ascontiguousarray(token_set, dtype=np.int64)
            n_sets = (valid[0].shape[0] - 1) if isinstance(valid, tuple) else len(valid)
        else:
            n_sets = L
        vo, vi = _csr(valid, n_sets, "valid")
    elif token_set is not None:
        raise ValueError("token_set needs valid")
    if labels is not None:
        if variant != "ntp_ce":
            raise ValueError("labels only apply to variant='ntp_ce'")
        labels = np.asarray(labels)
        if labels.shape != (L,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected {L} integer labels, got shape {labels.shape}")
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    if reduction == "mean":
        denom = 0.0
    elif reduction == "sum":
        denom = -1.0
    elif isinstance(reduction, (int, float)) and not isinstance(reduction, bool) and reduction > 0:
        denom = float(reduction)
    else:
        raise ValueError(f"reduction must be 'mean', 'sum' or a positive denominator, got {reduction!r}")
    return _core.head_ntpm(h, w, pos_offsets, pos_ids, rows=rows, valid_offsets=vo, valid_ids=vi,
                           token_set=token_set, labels=labels, k=k, variant=variant, gamma=float(gamma),
                           alpha=float(alpha), ohem_ratio=float(ohem_ratio), weight=float(weight), denom=denom,
                           **kw)


__all__ = ["ntpm_loss", "head_ce_loss", "head_ntpm_loss", "VARIANTS", "REDUCTIONS"]
