"""Every op's backward (csrc/ops, csrc/backend) against torch.autograd.

The references run torch.autograd in float64 on the very f32 inputs our ops get,
so the reference is (for our purposes) exact and the difference is our f32
rounding alone. Tolerance: max abs diff <= 1e-5 x max|ref| (the issue's bar)
unless a test states otherwise; the sizes are small (reductions of <= a few
hundred terms) so f32 rounding stays well inside it, while a wrong formula, sign,
mask or index is off by O(1). Random upstream gradients dy stand in for dL/dy:
autograd of sum(y * dy) gives exactly the vector-Jacobian product we compute.
"""
import numpy as np
import pytest
import torch

import densemllm
from densemllm import _core

TOL = 1e-5


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def check(got, ref, what, tol=TOL, scale_floor=0.0):
    """max|got - ref| <= tol x max(max|ref|, scale_floor); scale_floor stands in for
    max|ref| where the exact gradient is 0 by cancellation (see its callers)."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = float(np.abs(got.astype(np.float64) - ref).max())
    bound = tol * max(float(np.abs(ref).max()), scale_floor)
    assert err <= bound, f"{what}: max abs diff {err:.3g} > {bound:.3g} ({tol:g} x max|ref|)"


def t64(a, grad=True):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def vjp(y, dy, *inputs):
    """Gradients of sum(y * dy) wrt inputs (float64 autograd)."""
    return torch.autograd.grad((y * torch.from_numpy(dy).double()).sum(), inputs)


def to_bf16_bits(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(h):
    return (h.astype(np.uint32) << 16).view(np.float32)


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    n = densemllm.get_num_threads()
    yield
    densemllm.set_num_threads(n)


# ---------------------------------------------------------------- linear


BACKENDS = ["openblas", "onednn"]


def linear_ref(x, w, b, dy):
    xt, wt, bt = t64(x), t64(w), t64(b)
    return vjp(xt @ wt.T + bt, dy, xt, wt, bt)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (37, 29, 53), (130, 67, 96)])
def test_linear_backward_matches_autograd(backend, M, N, K):
    rng = np.random.default_rng(M * 1000 + N)
    x, w, b, dy = rand(rng, M, K), rand(rng, N, K), rand(rng, N), rand(rng, M, N)
    gx, gw, gb = linear_ref(x, w, b, dy)
    dx, dw, db = _core.op_linear_backward(dy, x, w, backend)
    check(dx, gx, "dx")
    check(dw, gw, "dw")
    check(db, gb, "db")
    # the separate products, overwrite mode
    check(_core.op_matmul_dx(dy, w, backend), gx, "dm_matmul_dx")
    check(_core.op_matmul_dw(dy, x, backend), gw, "dm_matmul_dw")
    check(_core.op_bias_grad(dy), gb, "dm_bias_grad")
    # no input gradient / no bias
    dx2, dw2, db2 = _core.op_linear_backward(dy, x, w, backend, need_dx=False, need_db=False)
    assert dx2 is None and db2 is None
    check(dw2, gw, "dw without dx")


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_products_accumulate_and_take_strided_rows(backend):
    rng = np.random.default_rng(7)
    M, N, K = 45, 38, 27
    x_wide, dy_wide, w = rand(rng, M, K + 9), rand(rng, M, N + 5), rand(rng, N, K)
    x, dy = x_wide[:, 3:3 + K], dy_wide[:, 5:5 + N]  # column slices: row strides K+9, N+5
    _, gw, gb = linear_ref(x, w, np.zeros(N, np.float32), dy)
    gx = linear_ref(x, w, np.zeros(N, np.float32), dy)[0]
    dx0 = rand(rng, M, K + 4)
    dx_view = dx0[:, 2:2 + K]
    before = dx0.copy()
    out = _core.op_matmul_dx(dy, w, backend, dx=dx_view)
    assert out is dx_view
    check(dx0[:, 2:2 + K], before[:, 2:2 + K] + gx.numpy(), "dx += (strided)")
    assert np.array_equal(dx0[:, :2], before[:, :2]) and np.array_equal(dx0[:, 2 + K:], before[:, 2 + K:])
    dw0 = rand(rng, N, K)
    ref_dw = dw0.astype(np.float64) + gw.numpy()
    _core.op_matmul_dw(dy, x, backend, dw=dw0)
    check(dw0, ref_dw, "dw +=")
    db0 = rand(rng, N)
    ref_db = db0.astype(np.float64) + gb.numpy()
    _core.op_bias_grad(dy, db=db0)
    check(db0, ref_db, "db +=")


def test_linear_backends_agree():
    rng = np.random.default_rng(3)
    M, N, K = 300, 200, 150
    x, w, dy = rand(rng, M, K), rand(rng, N, K), rand(rng, M, N)
    a = _core.op_linear_backward(dy, x, w, "openblas")
    b = _core.op_linear_backward(dy, x, w, "onednn")
    for name, u, v in zip(("dx", "dw", "db"), a, b):
        check(u, v.astype(np.float64), f"onednn vs openblas {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_dx_bf16_weight(backend):
    """A bf16 W: OpenBLAS widens it (f32 dy), oneDNN meets it with bf16-rounded dy
    (the precision of the bf16 forward); each against its exact f64 product."""
    rng = np.random.default_rng(11)
    M, N, K = 33, 70, 41
    dy, w = rand(rng, M, N), rand(rng, N, K)
    wb = to_bf16_bits(w)
    dy_used = from_bf16_bits(to_bf16_bits(dy)) if backend == "onednn" else dy
    ref = dy_used.astype(np.float64) @ from_bf16_bits(wb).astype(np.float64)
    check(_core.op_matmul_dx(dy, wb, backend, bf16=True), ref, "dx bf16 W")


def test_linear_rejects_bad_shapes():
    x, w, dy = np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32), np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="dy"):
        _core.op_linear_backward(dy, x, w, "openblas")
    with pytest.raises(ValueError, match="backend"):
        _core.op_matmul_dw(dy, x, "cuda")


# ---------------------------------------------------------------- norms


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,d", [(1, 1), (13, 67), (70, 130)])
def test_layernorm_backward_matches_autograd(n, d, bias):
    rng = np.random.default_rng(n + d)
    x, w, b, dy = rand(rng, n, d, scale=3.0) + 1.5, rand(rng, d), rand(rng, d), rand(rng, n, d)
    eps = 1e-6
    out, mean, rstd = _core.op_layernorm_forward(x, w, b if bias else None, eps)
    xt, wt, bt = t64(x), t64(w), t64(b)
    y = torch.nn.functional.layer_norm(xt, (d,), wt, bt if bias else None, eps)
    check(out, y, "forward")
    check(mean, xt.mean(-1), "saved mean")
    check(rstd, 1 / torch.sqrt(xt.var(-1, unbiased=False) + eps), "saved rstd")
    grads = vjp(y, dy, xt, wt, bt) if bias else vjp(y, dy, xt, wt) + (None,)
    dx, dw, db = _core.op_layernorm_backward(dy, x, mean, rstd, w, bias)
    if d > 1:  # d = 1: dx is exactly 0 in both, fine, but the relative bound is 0
        check(dx, grads[0], "dx")
    else:
        assert np.abs(dx).max() <= 1e-6
    check(dw, grads[1], "dw")
    if bias:
        check(db, grads[2], "db")
    else:
        assert db is None
    # accumulate into an existing dx
    dx0 = rand(rng, n, d)
    ref = dx0.astype(np.float64) + dx
    _core.op_layernorm_backward(dy, x, mean, rstd, w, bias, dx=dx0)
    assert np.abs(dx0 - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("n,d", [(1, 3), (13, 67), (70, 130)])
def test_rmsnorm_backward_matches_autograd(n, d):
    rng = np.random.default_rng(n * d)
    x, w, dy = rand(rng, n, d, scale=2.0), rand(rng, d), rand(rng, n, d)
    eps = 1e-6
    out, rstd = _core.op_rmsnorm_forward(x, w, eps)
    xt, wt = t64(x), t64(w)
    r = torch.rsqrt((xt * xt).mean(-1, keepdim=True) + eps)
    y = xt * r * wt
    check(out, y, "forward")
    check(rstd, r[:, 0], "saved rstd")
    gx, gw = vjp(y, dy, xt, wt)
    dx, dw = _core.op_rmsnorm_backward(dy, x, rstd, w)
    check(dx, gx, "dx")
    check(dw, gw, "dw")
    dx0 = rand(rng, n, d)
    ref = dx0.astype(np.float64) + dx
    _core.op_rmsnorm_backward(dy, x, rstd, w, dx=dx0)
    assert np.abs(dx0 - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max())


def test_norm_param_grads_do_not_depend_on_threads(threads):
    rng = np.random.default_rng(5)
    x, w, b, dy = rand(rng, 300, 200), rand(rng, 200), rand(rng, 200), rand(rng, 300, 200)
    out, mean, rstd = _core.op_layernorm_forward(x, w, b, 1e-5)
    res = []
    for t in (1, 2):
        densemllm.set_num_threads(t)
        res.append(_core.op_layernorm_backward(dy, x, mean, rstd, w, True))
    for u, v in zip(res[0], res[1]):
        assert np.array_equal(u, v)


# ---------------------------------------------------------------- activations


@pytest.mark.parametrize("kind", ["gelu_tanh", "gelu"])
def test_gelu_backward_matches_autograd(kind):
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-9, 9, 1001, dtype=np.float32), rand(rng, 999),
                        np.array([-100, -30, 30, 100], np.float32)])  # saturated ends
    dy = rand(rng, x.size)
    xt = t64(x)
    y = torch.nn.functional.gelu(xt, approximate="tanh" if kind == "gelu_tanh" else "none")
    (gx,) = vjp(y, dy, xt)
    dx = _core.op_activation_backward(kind, dy, x)
    check(dx, gx, f"{kind} dx")
    dx0 = rand(rng, x.size)
    ref = dx0.astype(np.float64) + gx.numpy()
    _core.op_activation_backward(kind, dy, x, dx=dx0)
    check(dx0, ref, f"{kind} dx +=")


def test_swiglu_backward_matches_autograd():
    rng = np.random.default_rng(2)
    n = 1000 + 13  # a scalar tail after the AVX-512 blocks
    g, u, dy = rand(rng, n, scale=3.0), rand(rng, n), rand(rng, n)
    g[:200] = np.linspace(-100, 100, 200)  # saturated sigmoid both ways
    gt, ut = t64(g), t64(u)
    y = torch.nn.functional.silu(gt) * ut
    check(_core.op_swiglu_forward(g, u), y, "forward")
    gg, gu = vjp(y, dy, gt, ut)
    dg, du = _core.op_swiglu_backward(dy, g, u)
    check(dg, gg, "dgate")
    check(du, gu, "dup")
    dg0, du0 = rand(rng, n), rand(rng, n)
    ref_g, ref_u = dg0.astype(np.float64) + gg.numpy(), du0.astype(np.float64) + gu.numpy()
    _core.op_swiglu_backward(dy, g, u, dgate=dg0, dup=du0)
    check(dg0, ref_g, "dgate +=")
    check(du0, ref_u, "dup +=")


# ---------------------------------------------------------------- rope


def rope1d_torch(x, inv_freq, attn_factor, offset, dim, pos0, interleave):
    """transformers' apply_rotary_pos_emb(_interleave) on the slice [offset, offset+dim)."""
    T = x.shape[0]
    pos = torch.arange(pos0, pos0 + T, dtype=torch.float64)
    freqs = pos[:, None] * torch.tensor(inv_freq, dtype=torch.float64)[None, :]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = (emb.cos() * attn_factor)[:, None, :], (emb.sin() * attn_factor)[:, None, :]
    r = x[..., offset:offset + dim]
    if interleave:  # [x0, x1, x2, x3..] -> [x0, x2, ..| x1, x3, ..]
        r = r.reshape(*r.shape[:-1], dim // 2, 2).transpose(-1, -2).reshape(*r.shape)
    half = dim // 2
    rot = torch.cat([-r[..., half:], r[..., :half]], -1)
    y = r * cos + rot * sin
    return torch.cat([x[..., :offset], y, x[..., offset + dim:]], -1)


@pytest.mark.parametrize("interleave", [True, False])
def test_rope1d_backward_matches_autograd(interleave):
    rng = np.random.default_rng(4)
    T, H, W, offset, dim, pos0 = 21, 3, 40, 8, 16, 5  # MLA: rope slice after the nope part
    x, dy = rand(rng, T, H, W), rand(rng, T, H, W)
    inv_freq = (1.0 / 10000.0 ** (np.arange(0, dim, 2) / dim)).astype(np.float32)
    af = 1.25  # a YaRN-style attention factor scales cos and sin
    xt = t64(x)
    y = rope1d_torch(xt, inv_freq, af, offset, dim, pos0, interleave)
    check(_core.op_rope1d(x, inv_freq, af, offset, pos0, interleave, False), y, "forward")
    (gx,) = vjp(y, dy, xt)
    check(_core.op_rope1d(dy, inv_freq, af, offset, pos0, interleave, True), gx, "dx")


def test_rope2d_backward_matches_autograd():
    rng = np.random.default_rng(6)
    N, H, hd, theta = 30, 2, 24, 10000.0
    x, dy = rand(rng, N, H, hd), rand(rng, N, H, hd)
    rows = rng.integers(0, 64, N).astype(np.int32)
    cols = rng.integers(0, 64, N).astype(np.int32)
    half, nq = hd // 2, hd // 4
    # angles in float32 like transformers' vision rotary embedding (and our tables);
    # the rotation itself in float64
    inv = (1.0 / theta ** (torch.arange(nq, dtype=torch.float64) * 2 / half)).float()
    ang = torch.cat([torch.from_numpy(rows).float()[:, None] * inv, torch.from_numpy(cols).float()[:, None] * inv], -1)
    emb = torch.cat([ang, ang], -1).double()[:, None, :]
    xt = t64(x)
    y = xt * emb.cos() + torch.cat([-xt[..., half:], xt[..., :half]], -1) * emb.sin()
    check(_core.op_rope2d(x, rows, cols, theta, False), y, "forward")
    (gx,) = vjp(y, dy, xt)
    check(_core.op_rope2d(dy, rows, cols, theta, True), gx, "dx")


# ---------------------------------------------------------------- embedding


def test_embedding_backward_scatter_adds_deterministically(threads):
    rng = np.random.default_rng(8)
    V, D, T = 11, 70, 200
    E = rand(rng, V, D)
    ids = rng.integers(0, V, T).astype(np.int64)
    ids[::17] = -1  # spliced positions: no table gradient
    dy = rand(rng, T, D)
    out = _core.op_embedding_forward(E, ids)
    keep = ids >= 0
    assert np.array_equal(out[keep], E[ids[keep]]) and not out[~keep].any()
    Et = t64(E)
    y = Et[torch.from_numpy(np.where(keep, ids, 0))] * torch.from_numpy(keep[:, None].astype(np.float64))
    (gE,) = vjp(y, dy, Et)
    res = []
    for t in (1, 2):
        densemllm.set_num_threads(t)
        res.append(_core.op_embedding_backward(dy, ids, V))
    check(res[0], gE, "dE")
    assert np.array_equal(res[0], res[1]), "thread count changed the bits"
    dE0 = rand(rng, V, D)
    ref = dE0.astype(np.float64) + gE.numpy()
    _core.op_embedding_backward(dy, ids, V, dE=dE0)
    check(dE0, ref, "dE +=")
    with pytest.raises(IndexError, match="token id 11"):
        _core.op_embedding_backward(dy, np.full(T, 11, np.int64), V)


def test_patch_embedding_is_linear_backward():
    """The patch embedding is a Linear over flattened patches: its gradient is
    dm_linear_backward without dx (no gradient to the pixels)."""
    rng = np.random.default_rng(9)
    N, PD, D = 20, 3 * 2 * 14 * 14, 32
    patches, w, b, dy = rand(rng, N, PD), rand(rng, D, PD, scale=0.02), rand(rng, D), rand(rng, N, D)
    _, gw, gb = linear_ref(patches, w, b, dy)
    dx, dw, db = _core.op_linear_backward(dy, patches, w, "onednn", need_dx=False)
    assert dx is None
    check(dw, gw, "patch dw")
    check(db, gb, "patch db")


# ---------------------------------------------------------------- attention


def attention_torch(q, k, v, scale, causal=False, segments=None):
    """Softmax attention from the definition (float64, explicit mask): out and lse."""
    tq, h, _ = q.shape
    tk, hkv, _ = k.shape
    rep = h // hkv
    kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # head h uses kv head h // rep
    s = torch.einsum("ihd,jhd->hij", q, kr) * scale
    mask = torch.ones(tq, tk, dtype=torch.bool)
    if causal:
        mask &= torch.arange(tk)[None, :] <= torch.arange(tq)[:, None] + (tk - tq)
    if segments is not None:
        seg = torch.bucketize(torch.arange(tk), torch.tensor(segments[1:]), right=True)
        mask &= seg[:, None] == seg[None, :]
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)  # [h, tq]
    return torch.einsum("hij,jhd->ihd", torch.softmax(s, -1), vr), lse.T


ATTN_CASES = [
    # tq, tk, h, hkv, dk, dv, causal, segments
    (1, 1, 1, 1, 8, 8, False, None),
    (37, 37, 4, 4, 24, 24, False, None),  # one partial block
    (130, 130, 3, 1, 16, 24, False, None),  # multi-query, Dk != Dv, 3 blocks
    (70, 200, 4, 2, 40, 32, True, None),  # GQA, causal with Tq < Tk
    (129, 129, 2, 2, 20, 20, True, None),  # causal prefill over block edges
    (150, 150, 4, 4, 16, 16, False, [0, 64, 128, 150]),  # vision windows, a partial last window
    (100, 100, 2, 2, 12, 20, False, [0, 7, 40, 41, 100]),  # odd windows incl. a 1-token one
    (90, 90, 4, 2, 36, 28, True, [0, 50, 90]),  # segments and causal together, GQA
    (3, 300, 4, 4, 48, 40, True, None),  # a few queries over a long cache
]


@pytest.mark.parametrize("tq,tk,h,hkv,dk,dv,causal,segments", ATTN_CASES)
def test_attention_backward_matches_autograd(tq, tk, h, hkv, dk, dv, causal, segments):
    rng = np.random.default_rng(tq * 7 + tk + dk)
    q, k, v = rand(rng, tq, h, dk), rand(rng, tk, hkv, dk), rand(rng, tk, hkv, dv)
    dy = rand(rng, tq, h, dv)
    scale = 1.3 / np.sqrt(dk)  # not the default: the scale must enter dq and dk
    seg = None if segments is None else np.array(segments, np.int64)
    out, lse = _core.op_attention_forward(q, k, v, scale, causal=causal, segments=seg)
    qt, kt, vt = t64(q), t64(k), t64(v)
    ref, ref_lse = attention_torch(qt, kt, vt, scale, causal, segments)
    check(out, ref, "forward out")
    check(lse, ref_lse, "saved lse")
    gq, gk, gv = vjp(ref, dy, qt, kt, vt)
    dq, dk_, dv_ = _core.op_attention_backward(dy, q, k, v, out, lse, scale, causal=causal, segments=seg)
    # One key: P = 1, so dS = dP - D = 0 exactly and dq = dk = 0 by cancellation;
    # ours is the f32 rounding of that difference, so bound it relative to the size
    # of the terms that cancel (scale x |k| x |dO.v|), not relative to 0.
    floor = scale * np.abs(k).max() * np.abs((dy * v).sum(-1)).max() if tk == 1 else 0.0
    check(dq, gq, "dq", scale_floor=floor)
    check(dk_, gk, "dk", scale_floor=floor)
    check(dv_, gv, "dv")


@pytest.mark.parametrize("causal,segments,hkv", [(False, [0, 64, 150, 200], 2), (True, None, 4)])
def test_attention_backward_same_bits_for_any_thread_count(threads, causal, segments, hkv):
    """Also across the two schedules: with few (kv head, segment) items per thread the
    kernel switches from the fused pass to two passes (here at 4 threads for the first
    case, at 3 for the second); both sum the same terms in the same order."""
    rng = np.random.default_rng(12)
    tq, h, dk, dv = 200, 4, 32, 24
    q, k, v, dy = rand(rng, tq, h, dk), rand(rng, tq, hkv, dk), rand(rng, tq, hkv, dv), rand(rng, tq, h, dv)
    seg = None if segments is None else np.array(segments, np.int64)
    res = []
    for t in (1, 2, 3, 4, 8):
        densemllm.set_num_threads(t)
        out, lse = _core.op_attention_forward(q, k, v, 0.2, causal=causal, segments=seg)
        res.append(_core.op_attention_backward(dy, q, k, v, out, lse, 0.2, causal=causal, segments=seg))
    for r in res[1:]:
        for u, w in zip(res[0], r):
            assert np.array_equal(u, w)


def test_attention_backward_rejects_bad_arguments():
    q = np.zeros((4, 2, 8), np.float32)
    k = np.zeros((4, 2, 8), np.float32)
    v = np.zeros((4, 2, 8), np.float32)
    out, lse = _core.op_attention_forward(q, k, v, 0.5)
    with pytest.raises(ValueError, match="lse"):
        _core.op_attention_backward(out, q, k, v, out, lse[:2].copy(), 0.5)
    with pytest.raises(ValueError, match="segments"):
        _core.op_attention_backward(out, q, k, v, out, lse, 0.5, segments=np.array([0, 3], np.int64))


def test_concurrent_python_threads_match_serial():
    """The backwards keep no shared state: calls from several Python threads at once
    (the GIL is released) give the serial results, bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(13)
    jobs = []
    for i in range(4):
        tq, h, d = 70 + 9 * i, 2, 16
        q, k, v, dy = rand(rng, tq, h, d), rand(rng, tq, h, d), rand(rng, tq, h, d), rand(rng, tq, h, d)
        x, w, g = rand(rng, 50 + i, 33), rand(rng, 21, 33), rand(rng, 50 + i, 21)
        jobs.append((q, k, v, dy, x, w, g))

    def run(job):
        q, k, v, dy, x, w, g = job
        out, lse = _core.op_attention_forward(q, k, v, 0.25, causal=True)
        return (*_core.op_attention_backward(dy, q, k, v, out, lse, 0.25, causal=True),
                *_core.op_linear_backward(g, x, w, "onednn"), *_core.op_linear_backward(g, x, w, "openblas"))

    serial = [run(j) for j in jobs]
    with ThreadPoolExecutor(4) as ex:
        for _ in range(3):
            for got, ref in zip(ex.map(run, jobs), serial):
                for u, v in zip(got, ref):
                    assert np.array_equal(u, v)


def test_attention_backward_without_queries_gives_zero_key_gradients():
    rng = np.random.default_rng(14)
    q, k, v = np.zeros((0, 2, 8), np.float32), rand(rng, 5, 1, 8), rand(rng, 5, 1, 4)
    out, lse = _core.op_attention_forward(q, k, v, 0.5, causal=True)
    assert out.shape == (0, 2, 4) and lse.shape == (0, 2)
    dq, dk, dv = _core.op_attention_backward(out, q, k, v, out, lse, 0.5, causal=True)
    assert dq.shape == (0, 2, 8) and not dk.any() and not dv.any()
