"""The matmul backends against NumPy and against each other."""
import numpy as np
import pytest

import densemllm
from densemllm import _core


def to_bf16_bits(a):
    """Round-to-nearest-even f32 -> bf16 bit patterns (what PyTorch does)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(h):
    return (h.astype(np.uint32) << 16).view(np.float32)


def test_build_info_reports_libraries():
    info = densemllm.build_info()
    assert info["onednn"].startswith("3.")
    assert "OpenBLAS" in info["openblas"]
    assert info["threads"] >= 1
    assert info["onednn_isa"]


@pytest.mark.parametrize("backend", ["onednn", "openblas"])
@pytest.mark.parametrize("shape", [(1, 7, 5), (33, 65, 17), (128, 96, 256)])
def test_matmul_f32_matches_numpy(backend, shape):
    M, N, K = shape
    rng = np.random.default_rng(M * N + K)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    out = _core.matmul(x, w, b, backend=backend)
    # f32 accumulation over K terms: error grows ~sqrt(K) * eps * |x||w|.
    assert np.abs(out - ref).max() <= 1e-5 * np.sqrt(K) * np.abs(ref).max()
    acc = out.copy()
    _core.matmul(x, w, backend=backend, out=acc)
    np.testing.assert_allclose(acc, out + (ref - b), rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_matmul_bf16_backends_agree():
    rng = np.random.default_rng(0)
    M, N, K = 40, 72, 300
    x = from_bf16_bits(to_bf16_bits(rng.standard_normal((M, K), dtype=np.float32)))
    w = to_bf16_bits(rng.standard_normal((N, K), dtype=np.float32))
    b = to_bf16_bits(rng.standard_normal(N, dtype=np.float32))
    ref = x.astype(np.float64) @ from_bf16_bits(w).T.astype(np.float64) + from_bf16_bits(b)
    for backend in ("onednn", "openblas"):
        out = _core.matmul(x, w, b, bf16=True, backend=backend)
        # inputs are exactly representable in bf16, accumulation is f32
        assert np.abs(out - ref).max() <= 1e-5 * np.sqrt(K) * np.abs(ref).max(), backend


def test_matmul_rejects_bad_arguments():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="dtype"):
        _core.matmul(x.astype(np.float64), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="columns"):
        _core.matmul(x, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        _core.matmul(np.zeros((3, 2), np.float32).T, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="backend"):
        _core.matmul(x, np.zeros((4, 3), np.float32), backend="cuda")
    with pytest.raises(ValueError, match="bias"):
        _core.matmul(x, np.zeros((4, 3), np.float32), np.zeros(5, np.float32))
