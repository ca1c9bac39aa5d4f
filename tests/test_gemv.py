"""The small-M (decode) GEMV fast path inside dm_matmul against the oneDNN and
OpenBLAS GEMMs it replaces (switched off with _core.set_gemv(False)) and a float64
NumPy reference.

Tolerance: f32 accumulation of K products, error ~ sqrt(K) * eps * max|x||w|
(the bound test_backend uses, 1e-5 * sqrt(K) * max|ref|). The fast path keeps
activations in f32 while oneDNN rounds them to bf16 for bf16 weights; the
comparison with oneDNN therefore uses bf16-representable activations, where the
two must agree to the f32 bound."""
from __future__ import annotations

import numpy as np
import pytest

from densemllm import _core


def bf16_bits(a):
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


@pytest.fixture
def gemv_off():
    prev = _core.set_gemv(False)
    yield
    _core.set_gemv(prev)


def products(M, N, K, bf16, seed):
    rng = np.random.default_rng(seed)
    x = from_bits(bf16_bits(rng.standard_normal((M, K), dtype=np.float32)))
    w = rng.standard_normal((N, K), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    if bf16:
        w, b = bf16_bits(w), bf16_bits(b)
        wf, bf = from_bits(w).astype(np.float64), from_bits(b).astype(np.float64)
    else:
        wf, bf = w.astype(np.float64), b.astype(np.float64)
    return x, w, b, x.astype(np.float64) @ wf.T + bf


SHAPES = [(1, 7, 5), (1, 64, 32), (1, 131, 33), (1, 9, 1000), (2, 33, 100), (3, 130, 47), (4, 256, 1000), (1, 1, 1), (4, 17, 16)]


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
def test_gemv_matches_reference_and_backends(shape, bf16):
    M, N, K = shape
    x, w, b, ref = products(M, N, K, bf16, seed=M * 1000 + N + K)
    tol = 1e-5 * np.sqrt(K) * np.abs(ref).max()
    fast = _core.matmul(x, w, b, bf16=bf16)
    assert np.abs(fast - ref).max() <= tol
    # accumulate: out += x.w^T + b
    acc = np.ones((M, N), np.float32)
    _core.matmul(x, w, b, bf16=bf16, out=acc)
    assert np.abs(acc - (ref + 1)).max() <= tol + 1e-6
    for backend in ("onednn", "openblas"):
        prev = _core.set_gemv(False)
        try:
            slow = _core.matmul(x, w, b, bf16=bf16, backend=backend)
        finally:
            _core.set_gemv(prev)
        assert np.abs(fast - slow).max() <= 2 * tol, backend
    assert _core.set_gemv(True) is True  # the default is on


def test_gemv_keeps_f32_activations_for_bf16_weights():
    """Activations that are not bf16-representable are used exactly (oneDNN
    would round them): the fast path is within the f32 bound of the float64
    product, the bf16-rounding path is not necessarily."""
    rng = np.random.default_rng(5)
    M, N, K = 1, 40, 512
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = bf16_bits(rng.standard_normal((N, K), dtype=np.float32))
    ref = x.astype(np.float64) @ from_bits(w).astype(np.float64).T
    fast = _core.matmul(x, w, bf16=True)
    assert np.abs(fast - ref).max() <= 1e-5 * np.sqrt(K) * np.abs(ref).max()


def test_large_m_is_not_routed(gemv_off):
    """M > 4 goes to the GEMM backends whatever the switch says: same numbers."""
    x, w, b, ref = products(5, 20, 30, False, seed=1)
    off = _core.matmul(x, w, b)
    _core.set_gemv(True)
    on = _core.matmul(x, w, b)
    np.testing.assert_array_equal(on, off)
