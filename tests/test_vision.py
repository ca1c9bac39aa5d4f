"""Vision tower + merger against an independent PyTorch reference written from the
notes (sections 2 and 3; tests/torch_reference.py), on tiny random checkpoints.

The reference works in the ORIGINAL patch order with a window mask ("same window"
computed from each patch's grid coordinates), not with the permutation the C code
uses, so the two formulations check each other; the reference's windowing and
2D RoPE positions are cross-checked against transformers' Qwen2.5-VL helpers.
"""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import densemllm
import densemllm.vision
from densemllm.testing import make_checkpoint
from torch_reference import ref_positions, ref_preprocess, ref_rope, ref_tower, ref_window_ids  # noqa: F401

# ---------------------------------------------------------------- helpers


def make(tmp_path, dtype="f32", backend="onednn", seed=0, **vision):
    path = make_checkpoint(tmp_path / f"ck_{dtype}_{seed}", seed=seed, dtype=dtype, vision=vision)
    model = densemllm.load(path, backend=backend)
    w = load_file(str(path / "model.safetensors"))
    cfg = dict(densemllm.vision.vision_config_dict(model.config))
    return model, w, cfg


def rel_err(out, ref):
    return np.abs(out - ref).max() / np.abs(ref).max()


# ---------------------------------------------------------------- cross-checks of the reference


@pytest.mark.parametrize("gh,gw,window", [(12, 20, 128), (20, 6, 128), (4, 4, 128), (16, 16, 64)])
def test_reference_windows_and_positions_match_transformers(gh, gw, window):
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    grid = torch.tensor([[1, gh, gw]])
    pos = get_vision_position_ids(grid, 2)
    rows, cols = ref_positions(gh, gw)
    assert torch.equal(pos[:, 0], rows) and torch.equal(pos[:, 1], cols)
    # transformers permutes merged tokens into window order and cuts windows by
    # cu_seqlens; the same-window relation it induces must equal our mask's.
    index, cu = get_vision_window_index(grid, spatial_merge_size=2, window_size=window, patch_size=16)
    n = gh * gw
    their = torch.empty(n, dtype=torch.long)
    order = (index[:, None] * 4 + torch.arange(4)).reshape(-1)  # patches in window order
    seg = torch.bucketize(torch.arange(n), cu[1:].long(), right=True)
    their[order] = seg
    ours = ref_window_ids(gh, gw, window, 16)
    assert torch.equal(their[:, None] == their[None, :], ours[:, None] == ours[None, :])


def test_reference_rope_matches_transformers():
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qv
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.vision_utils import get_vision_position_ids

    gh, gw, heads, hd = 6, 10, 3, 24
    cfg = Qwen2_5_VLVisionConfig(hidden_size=heads * hd, num_heads=heads)
    rot = qv.Qwen2_5_VLVisionRotaryEmbedding(cfg)
    pos = get_vision_position_ids(torch.tensor([[1, gh, gw]]), 2)  # (N, 2): row, col
    cos, sin = rot(torch.zeros(gh * gw, heads * hd), pos)
    q = torch.randn(gh * gw, heads, hd, dtype=torch.float64)
    theirs, _ = qv.apply_rotary_pos_emb_vision(q.float(), q.float(), cos, sin)
    rows, cols = ref_positions(gh, gw)
    ours = ref_rope(q, rows.double(), cols.double())
    assert torch.allclose(ours.float(), theirs, atol=1e-5)


# ---------------------------------------------------------------- tower parity

# f32 tolerance from the issue: max abs error <= 1e-4 x max|out|. The C side is f32
# end to end (f32 weights, f32 matmuls, f32 attention); the reference is float64.
F32_TOL = 1e-4


@pytest.mark.parametrize(
    "gh,gw,vision",
    [
        # 6x10 merged tokens with 4x4-token windows: not a whole number of windows
        (12, 20, dict(window_size=128, num_hidden_layers=3, fullatt_block_indexes=[1])),
        # one window holds the whole image
        (4, 4, dict(window_size=128, num_hidden_layers=2, fullatt_block_indexes=[1])),
        # portrait, several global layers, 4 heads of dim 8
        (20, 6, dict(window_size=64, num_hidden_layers=4, fullatt_block_indexes=[0, 2],
                     num_attention_heads=4)),
        # a single merged token (4 patches)
        (2, 2, dict(window_size=64, num_hidden_layers=2, fullatt_block_indexes=[1])),
        # exact gelu in the tower, every layer global
        (8, 12, dict(window_size=64, num_hidden_layers=2, fullatt_block_indexes=[0, 1], hidden_act="gelu")),
    ],
)
def test_tower_f32_matches_reference(tmp_path, gh, gw, vision):
    model, w, cfg = make(tmp_path, "f32", **vision)
    rng = np.random.default_rng(gh * 100 + gw)
    patches = rng.standard_normal((gh * gw, 768)).astype(np.float32)
    out = densemllm.vision.encode_patches(model, patches, gh, gw)
    assert out.shape == (gh // 2 * gw // 2, model.config.text.hidden_size) and out.dtype == np.float32
    ref = ref_tower(w, cfg, patches, gh, gw)
    assert rel_err(out, ref) <= F32_TOL


def test_backends_agree_f32(tmp_path):
    vision = dict(window_size=64, num_hidden_layers=2, fullatt_block_indexes=[1])
    m1, w, cfg = make(tmp_path, "f32", "onednn", **vision)
    m2 = densemllm.load(m1.path, backend="openblas")
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (100, 170, 3), dtype=np.uint8)
    a, b = m1.encode_image(img), m2.encode_image(img)
    # both f32 paths: each within 1e-4 of the f64 reference, so within 2e-4 of each other
    assert a.shape == b.shape == (8 // 2 * 12 // 2, m1.config.text.hidden_size)
    assert rel_err(a, b) <= 2 * F32_TOL


def test_tower_bf16(tmp_path):
    vision = dict(window_size=128, num_hidden_layers=3, fullatt_block_indexes=[1])
    model, w, cfg = make(tmp_path, "bf16", "onednn", **vision)
    rng = np.random.default_rng(7)
    gh, gw = 12, 20
    patches = rng.standard_normal((gh * gw, 768)).astype(np.float32)
    ref = ref_tower(w, cfg, patches, gh, gw)  # same bf16 weights, widened exactly to f64
    # OpenBLAS widens bf16 weights exactly and keeps f32 activations: f32 tolerance.
    blas = densemllm.load(model.path, backend="openblas")
    assert rel_err(densemllm.vision.encode_patches(blas, patches, gh, gw), ref) <= F32_TOL
    # oneDNN rounds the activations entering each matmul to bf16 (unit roundoff
    # 2^-9 ~ 2e-3, f32 accumulation). About 4 chained rounded matmuls per layer
    # plus the merger's 2, with errors adding in quadrature over ~12 roundings:
    # sqrt(12) * 2e-3 ~ 7e-3; allow 2e-2 x max|out| (an error in layout, rope or
    # windowing gives O(1)).
    out = densemllm.vision.encode_patches(model, patches, gh, gw)
    assert rel_err(out, ref) <= 2e-2


def test_encode_image_end_to_end(tmp_path):
    vision = dict(window_size=64, num_hidden_layers=2, fullatt_block_indexes=[1])
    model, w, cfg = make(tmp_path, "f32", **vision)
    rng = np.random.default_rng(11)
    img = rng.integers(0, 256, (75, 130, 3), dtype=np.uint8)
    pre = model.preprocess(img)
    patches, grid, size = pre
    rp, rgrid, rsize = ref_preprocess(img)
    assert grid == rgrid == (6, 10) and size == rsize == (96, 160)
    # 1/255 in [0,1] units is 2/255 after the (x - 0.5)/0.5 normalisation
    assert np.abs(patches - rp).max() <= 2 / 255
    out = model.encode_image(img)
    assert rel_err(out, ref_tower(w, cfg, rp, *rgrid)) <= F32_TOL
    assert np.array_equal(out, model.encode_image(pre))


def test_tower_rejects_bad_input(tmp_path):
    model, _, _ = make(tmp_path, "f32", window_size=64)
    good = np.zeros((16, 768), np.float32)
    with pytest.raises(ValueError):
        densemllm.vision.encode_patches(model, good, 3, 4)  # odd grid
    with pytest.raises(ValueError):
        densemllm.vision.encode_patches(model, good, 4, 8)  # wrong patch count
    with pytest.raises(ValueError):
        densemllm.vision.encode_patches(model, np.zeros((16, 700), np.float32), 4, 4)


def test_bad_checkpoint_shape_is_reported(tmp_path):
    path = make_checkpoint(tmp_path / "ck", dtype="f32", vision=dict(window_size=64))
    model = densemllm.load(path)
    d = densemllm.vision.vision_config_dict(model.config)
    d["intermediate_size"] += 1  # the checkpoint's fc1 no longer matches
    with pytest.raises(ValueError, match="fc1"):
        densemllm._core.VisionTower(model._checkpoint, d)
