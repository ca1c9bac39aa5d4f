"""The streaming attention kernel against PyTorch (explicit softmax and SDPA).

Tolerance: the kernel is f32 throughout (online softmax with a ~1-ulp exp, f32
accumulation in a different order than PyTorch's); the reference runs in float64,
so the only error is f32 rounding over sums of <= a few hundred terms. We allow
2e-5 x max|ref| + 2e-6 absolute, i.e. the 1e-5 relative class with a factor 2 for
the summation length; a wrong mask, head mapping or softmax would be off by O(1).
"""
import numpy as np
import pytest
import torch

from densemllm import _core


def reference(q, k, v, scale, causal=False, segments=None):
    """Explicit float64 softmax attention written from the definition."""
    q = torch.from_numpy(q).double()
    k = torch.from_numpy(k).double()
    v = torch.from_numpy(v).double()
    tq, h, _ = q.shape
    tk, hkv, _ = k.shape
    rep = h // hkv
    k = k.repeat_interleave(rep, dim=1)  # head h uses kv head h // rep
    v = v.repeat_interleave(rep, dim=1)
    s = torch.einsum("ihd,jhd->hij", q, k) * scale
    mask = torch.ones(tq, tk, dtype=torch.bool)
    if causal:
        pos = torch.arange(tq)[:, None] + (tk - tq)
        mask &= torch.arange(tk)[None, :] <= pos
    if segments is not None:
        seg_id = torch.bucketize(torch.arange(tk), torch.tensor(segments[1:]), right=True)
        mask &= seg_id[:, None] == seg_id[None, :]
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hij,jhd->ihd", p, v).numpy()


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def check(out, ref):
    err = np.abs(out - ref).max()
    tol = 2e-5 * np.abs(ref).max() + 2e-6
    assert err <= tol, f"max abs err {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize(
    "tq,tk,h,hkv,dk,dv,causal",
    [
        (1, 1, 1, 1, 8, 8, False),
        (37, 37, 4, 4, 72, 72, False),  # vision head dim, not a whole block
        (130, 130, 3, 1, 16, 24, False),  # multi-query, Dk != Dv, 3 blocks
        (70, 200, 8, 2, 48, 32, True),  # GQA, causal with Tq < Tk (KV cache)
        (1, 300, 4, 4, 192, 128, True),  # decoding one token, LLM head dims
        (129, 129, 2, 2, 40, 40, True),  # causal prefill, block edges
    ],
)
def test_attention_matches_reference(tq, tk, h, hkv, dk, dv, causal):
    rng = np.random.default_rng(tq * 1000 + tk)
    # Scale 3 on q makes softmax peaky, so masking or max-tracking mistakes show.
    q, k, v = rand(rng, tq, h, dk, scale=3.0), rand(rng, tk, hkv, dk), rand(rng, tk, hkv, dv)
    scale = dk ** -0.5
    out = _core.attention(q, k, v, scale=scale, causal=causal)
    assert out.shape == (tq, h, dv) and out.dtype == np.float32
    check(out, reference(q, k, v, scale, causal))


def test_attention_matches_sdpa():
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, 90, 4, 32), rand(rng, 90, 4, 32), rand(rng, 90, 4, 32)
    out = _core.attention(q, k, v, scale=32 ** -0.5, causal=True)
    t = lambda a: torch.from_numpy(a).double().transpose(0, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True)
    check(out, ref.transpose(0, 1).numpy())


@pytest.mark.parametrize("segments", [[0, 5, 70, 71, 150], [0, 64, 128, 192], [0, 200]])
def test_attention_segments(segments):
    rng = np.random.default_rng(len(segments))
    t = segments[-1]
    q, k, v = rand(rng, t, 2, 72, scale=2.0), rand(rng, t, 2, 72), rand(rng, t, 2, 72)
    out = _core.attention(q, k, v, scale=72 ** -0.5, segments=np.array(segments))
    check(out, reference(q, k, v, 72 ** -0.5, segments=segments))
    # causal inside segments combines both masks
    out = _core.attention(q, k, v, scale=0.1, causal=True, segments=segments)
    check(out, reference(q, k, v, 0.1, causal=True, segments=segments))


def test_attention_large_scores_stable():
    # Scores of order 1e3: a softmax without max subtraction would overflow.
    rng = np.random.default_rng(3)
    q, k, v = rand(rng, 100, 2, 16, scale=30.0), rand(rng, 100, 2, 16, scale=30.0), rand(rng, 100, 2, 16)
    out = _core.attention(q, k, v, scale=1.0)
    assert np.isfinite(out).all()
    check(out, reference(q, k, v, 1.0))


def test_attention_bad_inputs():
    z = np.zeros((4, 2, 8), np.float32)
    with pytest.raises(TypeError):
        _core.attention(z.astype(np.float64), z, z, scale=1.0)
    with pytest.raises(ValueError):
        _core.attention(z, np.zeros((4, 3, 8), np.float32), np.zeros((4, 3, 8), np.float32), scale=1.0)
    with pytest.raises(ValueError):
        _core.attention(z, z[:, :, :4].copy(), z, scale=1.0)
    with pytest.raises(ValueError):
        _core.attention(z, z[:2].copy(), z[:2].copy(), scale=1.0, causal=True)
    with pytest.raises(ValueError):
        _core.attention(z, z, z, scale=1.0, segments=[0, 3, 2, 4])
    with pytest.raises(ValueError):
        _core.attention(z, z, z, scale=1.0, segments=[0, 3])
    with pytest.raises(ValueError):
        _core.attention(z, z, z[:, :, ::2], scale=1.0)  # not contiguous


def test_attention_releases_the_gil():
    import threading
    import time

    rng = np.random.default_rng(9)
    q = rand(rng, 4096, 4, 64)
    span = []

    def work():
        t0 = time.perf_counter()
        _core.attention(q, q, q, scale=0.125)
        span.extend([t0, time.perf_counter()])

    t = threading.Thread(target=work)
    stamps = []
    t.start()
    while t.is_alive():
        stamps.append(time.perf_counter())
    t.join()
    t0, t1 = span
    # Main-thread steps in the middle half of the worker's C call (~200 ms) can only
    # happen if the call released the GIL. With the GIL held there are none (the
    # interpreter's 5 ms switch interval only lets the main thread run around the
    # call's edges; checked with a GIL-holding `re` match of the same length).
    q = (t1 - t0) / 4
    inside = sum(t0 + q < s < t1 - q for s in stamps)
    assert inside > 10


def bf16_round(a):
    return torch.from_numpy(a).bfloat16().float().numpy()


@pytest.mark.parametrize(
    "tq,tk,h,hkv,dk,dv,causal,segments",
    [
        (37, 37, 4, 4, 72, 72, False, None),  # vision head dims, partial blocks
        (70, 200, 8, 2, 47, 33, True, None),  # odd head dims (zero padding), GQA, KV cache
        (1, 130, 2, 2, 192, 128, True, None),  # decoding, LLM head dims
        (150, 150, 2, 2, 72, 72, False, [0, 5, 70, 71, 150]),  # windows
        (129, 129, 2, 1, 64, 64, True, [0, 100, 129]),
    ],
)
@pytest.mark.parametrize("kernel", ["amx", "avx512_bf16"])
def test_attention_bf16_products(tq, tk, h, hkv, dk, dv, causal, segments, kernel):
    """Both bf16 kernels (AMX tiles; vdpbf16ps for CPUs without AMX) against the
    reference on bf16-rounded inputs. A kernel this CPU cannot run is skipped, so
    the summary shows it as not tested here (never as passed)."""
    _core.attention_set_amx(kernel == "amx")
    try:
        got_kernel = _core.attention_bf16_kernel()
        rng = np.random.default_rng(tq + tk + dk)
        q, k, v = rand(rng, tq, h, dk, scale=3.0), rand(rng, tk, hkv, dk), rand(rng, tk, hkv, dv)
        out = _core.attention(q, k, v, scale=dk ** -0.5, causal=causal, segments=segments, bf16=True)
    finally:
        _core.attention_set_amx(True)
    assert out.shape == (tq, h, dv)
    f32 = _core.attention(q, k, v, scale=dk ** -0.5, causal=causal, segments=segments)
    if not _core.attention_bf16_available():
        assert got_kernel == "none"
        np.testing.assert_array_equal(out, f32)  # documented fallback: exact f32
        return
    if got_kernel != kernel:
        pytest.skip(f"this CPU runs the {got_kernel} kernel, not {kernel}: {kernel} not tested here")
    # Reference on bf16-rounded q, k, v: what is left is the rounding of the
    # probabilities to bf16 for PV (relative 2^-9 each, at most 2^-9 max|v| in the
    # weighted sum, and 2^-9 |out| again through the normaliser, which uses the
    # unrounded sum): 2^-8 max|v|, allowed with a factor 2. A wrong tile layout or
    # mask gives O(max|v|).
    ref = reference(bf16_round(q), bf16_round(k), bf16_round(v), dk ** -0.5, causal, segments)
    err = np.abs(out - ref).max()
    assert err <= 2 ** -7 * np.abs(v).max(), err
    assert np.abs(out - f32).max() > 0  # it really took the bf16 path
