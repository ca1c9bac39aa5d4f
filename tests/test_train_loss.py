"""Loss heads fused with the LM head (csrc/train/loss.c) against torch.autograd.

The reference builds the logits h @ W^T in float64 PyTorch and writes each loss from
its definition (docs/ntpm.md; cross-entropy by F.cross_entropy), gradients by autograd
with respect to h and W. Our side computes float32 logits (oneDNN / OpenBLAS f32) and
float32 gradient products, so the bound is the issue's: per output, max abs diff <=
1e-5 x max |reference| (losses: 1e-5 relative). Several budgets force every path:
whole rows, token chunks, vocabulary streaming (cross-entropy), compact valid-set
chunks, and sets too large to compact.
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densemllm.losses import head_ce_loss, head_ntpm_loss

TOL = 1e-5


def close(ours, ref, what):
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(np.abs(ref).max(), 1e-30)
    err = np.abs(np.asarray(ours, dtype=np.float64) - ref).max()
    assert err <= TOL * scale, f"{what}: max abs diff {err:.3g} > {TOL} x {scale:.3g}"


def rand(rng, *shape, s=1.0):
    return (rng.standard_normal(shape) * s).astype(np.float32)


# ----------------------------------------------------------------------------------
# cross-entropy
def ref_ce(h, w, targets, ignore, weight=1.0, denom=None):
    ht = torch.tensor(h, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(targets)
    keep = t != ignore
    n = int(keep.sum())
    loss = F.cross_entropy((ht @ wt.T)[keep], t[keep], reduction="sum") * weight / (denom or n)
    loss.backward()
    return loss.item(), ht.grad.numpy(), wt.grad.numpy()


@pytest.mark.parametrize("backend", ["onednn", "openblas"])
@pytest.mark.parametrize("chunk", [None, 24 * 1024, 3000])  # whole rows; token chunks; vocabulary streamed
def test_ce_matches_autograd(backend, chunk):
    rng = np.random.default_rng(1)
    T, H, V = 29, 24, 301
    h, w = rand(rng, T, H), rand(rng, V, H, s=0.5)
    targets = rng.integers(0, V, T)
    targets[[0, 5, 6, 20]] = -100
    dh = np.zeros((T, H), np.float32)
    dw = np.zeros((V, H), np.float32)
    loss, n, ws = head_ce_loss(h, w, targets, dh=dh, dw=dw, backend=backend, chunk_bytes=chunk)
    rl, rdh, rdw = ref_ce(h, w, targets, -100)
    assert n == T - 4
    assert abs(loss - rl) <= TOL * abs(rl)
    close(dh, rdh, "dh")
    close(dw, rdw, "dw")
    assert not dh[[0, 5, 6, 20]].any()  # ignored rows untouched
    if chunk:
        assert ws <= chunk + 8 * H * 8 * 4 + 4096 or chunk == 3000  # streaming keeps DM_HEAD_MIN_ROWS rows


def test_ce_weight_denom_and_accumulation():
    rng = np.random.default_rng(2)
    T, H, V = 11, 16, 97
    h, w = rand(rng, T, H), rand(rng, V, H)
    targets = rng.integers(0, V, T)
    dh0, dw0 = rand(rng, T, H), rand(rng, V, H)
    dh, dw = dh0.copy(), dw0.copy()
    loss, n, _ = head_ce_loss(h, w, targets, weight=0.7, denom=40, dh=dh, dw=dw)
    rl, rdh, rdw = ref_ce(h, w, targets, -100, weight=0.7, denom=40)
    assert abs(loss - rl) <= TOL * abs(rl)
    close(dh - dh0, rdh, "dh accumulated")
    close(dw - dw0, rdw, "dw accumulated")
    # nothing counted: loss 0, buffers untouched
    loss, n, _ = head_ce_loss(h, w, np.full(T, -100), dh=dh, dw=dw)
    assert loss == 0 and n == 0


def test_ce_tied_head_adds_to_embedding_gradient():
    """Tied head: W is the embedding; its gradient is the embedding path's + the head's."""
    rng = np.random.default_rng(3)
    T, H, V = 9, 12, 53
    ids = torch.tensor(rng.integers(0, V, T))
    E = torch.tensor(rand(rng, V, H), dtype=torch.float64, requires_grad=True)
    A = torch.tensor(rand(rng, H, H, s=0.3), dtype=torch.float64)
    targets = np.append(ids.numpy()[1:], -100)
    h = torch.tanh(E[ids] @ A)
    full = F.cross_entropy(h[:-1] @ E.T, torch.tensor(targets[:-1]), reduction="mean")
    (ref_dE,) = torch.autograd.grad(full, E)
    # ours: the head gives dh and adds its part to dE; the embedding path adds the rest
    E32 = E.detach().numpy().astype(np.float32)
    h32 = h.detach().numpy().astype(np.float32)
    dh = np.zeros_like(h32)
    dE = np.zeros_like(E32)
    head_ce_loss(h32, E32, targets, dh=dh, dw=dE)
    h2 = torch.tanh(E[ids] @ A)
    (emb_part,) = torch.autograd.grad(h2, E, grad_outputs=torch.tensor(dh, dtype=torch.float64))
    close(dE + emb_part.numpy(), ref_dE.numpy(), "tied dE")


def test_ce_bf16_weight_view():
    """A bf16 head (uint16 bit patterns) used in place: equal to the f32 head of the same values."""
    rng = np.random.default_rng(4)
    T, H, V = 7, 32, 130
    h = rand(rng, T, H)
    w32 = torch.tensor(rand(rng, V, H)).to(torch.bfloat16)
    wbits = w32.view(torch.int16).numpy().view(np.uint16).copy()
    wf = w32.float().numpy()
    targets = rng.integers(0, V, T)
    dh = np.zeros((T, H), np.float32)
    loss, _, _ = head_ce_loss(h, wbits, targets, dh=dh, backend="openblas", chunk_bytes=4 * V * 8 + 1000)
    rl, rdh, _ = ref_ce(h, wf, targets, -100)
    assert abs(loss - rl) <= TOL * abs(rl)
    close(dh, rdh, "dh (bf16 weight)")


def test_ce_bad_input():
    h = np.zeros((3, 4), np.float32)
    w = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match=r"target 10 of row 1 is out of range \[0, 10\)"):
        head_ce_loss(h, w, np.array([1, 10, 2]))
    with pytest.raises(ValueError, match="expected 4 columns"):
        head_ce_loss(h, np.zeros((10, 5), np.float32), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="targets: expected shape"):
        head_ce_loss(h, w, np.array([1, 2]))
    with pytest.raises(ValueError, match="dw: expected shape"):
        head_ce_loss(h, w, np.array([1, 2, 3]), dw=np.zeros((9, 4), np.float32))


# ----------------------------------------------------------------------------------
# NTP-M and its variants
def ref_ntpm(h, w, rows, positives, valid_rows, variant, k=32, ratio=3.0, labels=None, weight=1.0, denom="mean"):
    """float64 autograd reference; valid_rows[i] is token i's valid id list (None = all)."""
    ht = torch.tensor(h, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    V = w.shape[0]
    Z = ht[torch.tensor(rows)] @ wt.T
    losses, active = [], 0
    for i in range(len(rows)):
        z = Z[i]
        M = torch.ones(V, dtype=torch.bool) if valid_rows[i] is None else torch.zeros(V, dtype=torch.bool)
        if valid_rows[i] is not None:
            M[torch.tensor(valid_rows[i], dtype=torch.long)] = True
        if not M.any():
            continue
        y = torch.zeros(V, dtype=torch.bool)
        y[torch.tensor(positives[i], dtype=torch.long)] = True
        y &= M
        P, C = torch.nonzero(y).flatten(), torch.nonzero(M & ~y).flatten()
        if variant in ("ntpm", "ohem"):
            order = C[torch.argsort(-z.detach()[C], stable=True)]
            n = min(k, len(C)) if variant == "ntpm" else min(len(C), math.ceil(ratio * max(len(P), 1)))
            S = order[:n]
            dp, dn = (len(P), len(S)) if variant == "ntpm" else (len(P) + len(S),) * 2
            li = z.new_zeros(())
            if len(P):
                li = li + F.softplus(-z[P]).sum() / dp
            if len(S):
                li = li + F.softplus(z[S]).sum() / dn
        elif variant == "bce":
            li = (F.softplus(-z[P]).sum() + F.softplus(z[C]).sum()) / (len(P) + len(C))
        elif variant == "individual":
            li = z.new_zeros(())
            if len(P):
                li = li + F.softplus(-z[P]).mean()
            if len(C):
                li = li + F.softplus(z[C]).mean()
        elif variant == "ntp_ce":
            if labels is not None:
                lab = int(labels[i])
            else:
                cand = [v for v in positives[i] if M[v]]
                lab = cand[0] if cand else -1
            if lab < 0:
                continue
            idx = torch.nonzero(M).flatten()
            li = torch.logsumexp(z[idx], 0) - z[lab]
        else:
            raise AssertionError(variant)
        losses.append(li)
        active += 1
    d = active if denom == "mean" else 1.0 if denom == "sum" else denom
    loss = torch.stack(losses).sum() * weight / d
    loss.backward()
    return loss.item(), ht.grad.numpy(), wt.grad.numpy(), active


def make_case(seed, T=40, L=23, H=20, V=211, max_pos=4):
    rng = np.random.default_rng(seed)
    h, w = rand(rng, T, H), rand(rng, V, H, s=0.7)
    rows = rng.permutation(T)[:L]
    positives = [rng.choice(V, rng.integers(0, max_pos + 1), replace=False) for _ in range(L)]
    return rng, h, w, rows, positives


def run_ours(h, w, **kw):
    dh = np.zeros(h.shape, np.float32)
    dw = np.zeros(w.shape, np.float32)
    loss, n, ws = head_ntpm_loss(h, w, dh=dh, dw=dw, **kw)
    return loss, n, ws, dh, dw


def check(ours, ref):
    loss, n, _, dh, dw = ours
    rl, rdh, rdw, ra = ref
    assert n == ra
    assert abs(loss - rl) <= TOL * abs(rl), (loss, rl)
    close(dh, rdh, "dh")
    close(dw, rdw, "dw")


VARIANTS = ["ntpm", "bce", "individual", "ntp_ce", "ohem"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunk", [None, 20000])  # one chunk; many token chunks
def test_ntpm_full_vocabulary(variant, chunk):
    rng, h, w, rows, positives = make_case(10)
    ours = run_ours(h, w, positives=positives, rows=rows, variant=variant, k=8, chunk_bytes=chunk)
    check(ours, ref_ntpm(h, w, rows, positives, [None] * len(rows), variant, k=8))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunk", [None, 6000, 1500])  # compact union; several compact chunks; sets too big
def test_ntpm_per_token_valid_sets(variant, chunk):
    rng, h, w, rows, positives = make_case(11)
    V = w.shape[0]
    valid = [np.union1d(rng.choice(V, 30, replace=False), p[: len(p) // 2 + 1]) for p in positives]
    valid[3] = np.zeros(0, np.int64)  # a wholly invalid token is masked
    ours = run_ours(h, w, positives=positives, rows=rows, valid=valid, variant=variant, k=6, chunk_bytes=chunk)
    check(ours, ref_ntpm(h, w, rows, positives, valid, variant, k=6))


@pytest.mark.parametrize("variant", ["ntpm", "bce", "ntp_ce"])
def test_ntpm_per_sample_valid_sets(variant):
    """One valid set per sample (token_set): the paper's M_i for a dataset's class ids."""
    rng, h, w, rows, positives = make_case(12, L=30)
    V = w.shape[0]
    sets = [rng.choice(V, 40, replace=False), rng.choice(V, 25, replace=False)]
    token_set = np.array([0] * 18 + [1] * 12)
    positives = [np.append(rng.choice(sets[s], 2, replace=False), rng.integers(0, V)) for s in token_set]
    ours = run_ours(h, w, positives=positives, rows=rows, valid=sets, token_set=token_set, variant=variant, k=5,
                    chunk_bytes=9000)
    check(ours, ref_ntpm(h, w, rows, positives, [sets[s] for s in token_set], variant, k=5))


def test_ntpm_labels_sum_and_denominator():
    rng, h, w, rows, positives = make_case(13)
    labels = np.array([p[0] if len(p) else -1 for p in positives])
    ours = run_ours(h, w, positives=positives, rows=rows, variant="ntp_ce", labels=labels, reduction="sum", weight=0.5)
    check(ours, ref_ntpm(h, w, rows, positives, [None] * len(rows), "ntp_ce", labels=labels, weight=0.5, denom="sum"))
    ours = run_ours(h, w, positives=positives, rows=rows, variant="ntpm", reduction=100.0)
    check(ours, ref_ntpm(h, w, rows, positives, [None] * len(rows), "ntpm", denom=100.0))


def test_ntpm_matches_logits_kernel():
    """The fused head gives the loss of densemllm.ntpm_loss on the materialised logits."""
    import densemllm

    rng, h, w, rows, positives = make_case(14)
    logits = np.ascontiguousarray(h[rows] @ w.T, dtype=np.float32)
    for variant in ("ntpm", "bce", "ntp_ce"):
        want, _ = densemllm.ntpm_loss(logits, positives, variant=variant, reduction="sum", grad=False)
        got, _, _ = head_ntpm_loss(h, w, positives, rows=rows, variant=variant, reduction="sum")
        assert abs(got - want) <= TOL * abs(want)


def test_ntpm_bad_input():
    rng, h, w, rows, positives = make_case(15, L=3)
    with pytest.raises(ValueError, match=r"row 40 of vision token 1 is out of range \[0, 40\)"):
        head_ntpm_loss(h, w, positives, rows=np.array([0, 40, 1]))
    with pytest.raises(ValueError, match=r"positives id 999 of token 0 is out of range \[0, 211\)"):
        head_ntpm_loss(h, w, [[999], [1], [2]], rows=rows)
    with pytest.raises(ValueError, match="label 5 of token 0 is not one of its valid ids"):
        head_ntpm_loss(h, w, [[1], [1], [2]], rows=rows, valid=[[1, 2], [1, 2], [1, 2]], variant="ntp_ce",
                       labels=np.array([5, 1, 2]))
    with pytest.raises(ValueError, match="valid set 2 of token 1 is out of range"):
        head_ntpm_loss(h, w, [[1], [1], [2]], rows=rows, valid=[[1, 2], [3]], token_set=np.array([0, 2, 1]))
    dw = np.zeros(w.shape, np.float32)
    with pytest.raises(ValueError):
        head_ntpm_loss(h, w, [[999], [1], [2]], rows=rows, dw=dw)
    assert not dw.any()  # validation happens before any gradient is touched


def test_ntpm_threads_do_not_change_results():
    rng, h, w, rows, positives = make_case(16)
    a = run_ours(h, w, positives=positives, rows=rows, threads=1, chunk_bytes=20000)
    b = run_ours(h, w, positives=positives, rows=rows, threads=2, chunk_bytes=20000)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[3], b[3])
    np.testing.assert_array_equal(a[4], b[4])


MEMORY_SCRIPT = textwrap.dedent("""
    import numpy as np
    from densemllm.losses import head_ntpm_loss
    V, L, H = 283386, 1024, 16
    rng = np.random.default_rng(0)
    h = rng.standard_normal((L, H)).astype(np.float32)
    w = (rng.standard_normal((V, H)) * 0.1).astype(np.float32)
    dh = np.zeros_like(h); dw = np.zeros_like(w)
    pos = [rng.choice(V, 3, replace=False) for _ in range(L)]

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    def growth(fn):
        # peak resident set (VmHWM) reset to the current one, then the call's peak above it
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS:")
        out = fn()
        return status("VmHWM:") - base, out

    head_ntpm_loss(h[:8], w, pos[:8], dh=dh[:8], dw=dw)  # warm up the libraries' own pools
    grew, (loss, n, ws) = growth(lambda: head_ntpm_loss(h, w, pos, dh=dh, dw=dw))
    # control: the same measurement sees materialised logits of 256 tokens
    control, _ = growth(lambda: h[:256] @ w.T)
    print(grew, ws, L * V * 4, control, 256 * V * 4, flush=True)
""")


@pytest.mark.rss
def test_ntpm_memory_stays_within_the_budget():
    """Vocab 283386, 1024 vision tokens: the [L, V] f32 logits would be 1.16 GB. The
    call's peak RSS growth (VmHWM after a reset) must stay below the 64 MiB chunk
    budget plus the kernel's O(threads x V) scratch, both stated by the call as
    workspace_bytes; a control shows the measurement sees a [256, V] product."""
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    grew, ws, full, control, control_bytes = map(int, out.stdout.split())
    print(f"peak RSS growth {grew / 2**20:.1f} MiB, stated workspace {ws / 2**20:.1f} MiB, "
          f"full logits {full / 2**20:.0f} MiB; control [256, V] product: {control / 2**20:.0f} MiB")
    assert control >= 0.9 * control_bytes  # the measurement works
    assert ws <= (64 << 20) + 16 * 2**20
    assert grew <= ws + 8 * 2**20, (grew, ws)
    assert grew < full / 10


def test_concurrent_calls_equal_serial():
    """The heads release the GIL; calls from several Python threads give the serial bits."""
    from concurrent.futures import ThreadPoolExecutor

    rng, h, w, rows, positives = make_case(17)
    targets = rng.integers(0, w.shape[0], h.shape[0])

    def job(i):
        dh, dw = np.zeros(h.shape, np.float32), np.zeros(w.shape, np.float32)
        if i % 2:
            loss = head_ntpm_loss(h, w, positives, rows=rows, dh=dh, dw=dw, chunk_bytes=20000)[0]
        else:
            loss = head_ce_loss(h, w, targets, dh=dh, dw=dw, chunk_bytes=3000)[0]
        return loss, dh, dw

    serial = [job(i) for i in range(6)]
    with ThreadPoolExecutor(3) as ex:
        conc = list(ex.map(job, range(6)))
    for (a, b, c), (x, y, z) in zip(serial, conc):
        assert a == x
        np.testing.assert_array_equal(b, y)
        np.testing.assert_array_equal(c, z)
