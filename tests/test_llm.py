"""Language model parity with transformers' YoutuForCausalLM (torch 2.13, transformers
5.23) loaded from the same tiny checkpoint; KV cache consistency; input errors.

Tolerances: f32 logits must agree to 1e-4 x max|logit| (the issue's bound). Both
sides compute in float32 with different summation orders (oneDNN/OpenBLAS blocked
GEMMs, our streaming softmax vs torch's eager attention), which over 2 layers gives
differences around 1e-7 relative; 1e-4 leaves room for BLAS kernel choice while a
wrong RoPE pair order, scale or mask shifts logits by > 1e-2 (checked when writing
these tests by perturbing the reference).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import densemllm
from densemllm import _core, llm
from densemllm.config import ModelConfig
from densemllm.testing import make_checkpoint

F32_TOL = 1e-4

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32,
        "beta_slow": 1, "mscale": 0.8, "mscale_all_dim": 1.0}
def hf_config(cfg, *, kv_heads=None):
    """transformers YoutuConfig from a checkpoint's config.json dict."""
    from transformers import YoutuConfig

    if "rope_parameters" in cfg:
        rp = dict(cfg["rope_parameters"])
    else:
        rp = dict(cfg.get("rope_scaling") or {"rope_type": "default"})
        rp.setdefault("rope_type", rp.pop("type", "default"))
        rp["rope_theta"] = cfg["rope_theta"]
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
              "rms_norm_eps", "max_position_embeddings", "rope_interleave", "attention_bias",
              "tie_word_embeddings")
    kw = {k: cfg[k] for k in fields}
    # transformers 5.23's Youtu/DeepSeek attention gives every query head its own
    # k_nope/v from kv_b (H*(nope+v) rows) and then still repeats K/V by
    # heads/num_key_value_heads, which fails for num_key_value_heads < heads. The
    # model the weights define is the one with num_key_value_heads = heads (what
    # DeepSeek's own code computes: the field is unused by MLA), so the reference
    # is built that way; `kv_heads` overrides it.
    kw["num_key_value_heads"] = kv_heads or cfg["num_attention_heads"]
    eos = cfg.get("eos_token_id")
    return YoutuConfig(**kw, rope_parameters=rp, bos_token_id=cfg.get("bos_token_id"),
                       eos_token_id=eos, pad_token_id=cfg.get("pad_token_id"),
                       attn_implementation="eager")


def hf_model(path, *, dtype=torch.float32, state_override=None):
    """YoutuForCausalLM with the checkpoint's LLM weights (f32 unless asked)."""
    from transformers import YoutuForCausalLM

    cfg = json.loads((path / "config.json").read_text())
    state = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update({k: v for k, v in load_file(str(f)).items() if k.startswith(("model.", "lm_head."))})
    if state_override:
        state.update(state_override)
    torch.manual_seed(0)
    model = YoutuForCausalLM(hf_config(cfg))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    missing = [m for m in missing if not (cfg["tie_word_embeddings"] and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg["tie_word_embeddings"]:
        model.tie_weights()
    return model.to(dtype).eval()


def ref_logits(model, ids, vision=None, image_token_id=None):
    """Reference logits [T, vocab] (float64 numpy); vision rows replace the pads."""
    with torch.no_grad():
        t = torch.tensor(np.asarray(ids)[None], dtype=torch.long)
        emb = model.model.embed_tokens(t)
        if vision is not None:
            mask = t[0] == image_token_id
            emb[0, mask] = torch.from_numpy(vision).to(emb.dtype)
        out = model(inputs_embeds=emb)
        return out.logits[0].double().numpy()


def load(tmp_path, name="ck", *, dtype="f32", backend="onednn", seed=0, **over):
    path = make_checkpoint(tmp_path / name, seed=seed, dtype=dtype, **over)
    return path, densemllm.load(path, dtype=dtype if dtype == "f32" else "bf16", backend=backend)


def rel_err(a, b):
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def sharpen(path, scale=6.0):
    """Scale the attention projections of a tiny checkpoint so attention is peaked
    (N(0, 0.02) weights give near-uniform attention, where RoPE or masking
    mistakes would hardly show in the logits)."""
    from safetensors.torch import save_file

    for f in sorted(path.glob("*.safetensors")):
        st = load_file(str(f))
        for k, v in st.items():
            if any(s in k for s in ("q_a_proj.weight", "q_b_proj.weight", "q_proj.weight",
                                    "kv_a_proj_with_mqa.weight", "kv_b_proj.weight")):
                st[k] = (v.float() * scale).to(v.dtype)
        save_file(st, str(f), metadata={"format": "pt"})


def make(tmp_path, name="ck", *, dtype="f32", seed=0, sharp=True, **over):
    path = make_checkpoint(tmp_path / name, seed=seed, dtype=dtype, **over)
    if sharp:
        sharpen(path)
    return path


def random_ids(model, n, seed=0, pads=0):
    """n ids from the tiny vocabulary, avoiding the image pad; `pads` pads inserted at 3.."""
    rng = np.random.default_rng(seed)
    pad = model.config.image_token_id
    ids = rng.integers(0, model.config.text.vocab_size, n)
    ids[ids == pad] = 5
    if pads:
        ids = np.concatenate([ids[:3], np.full(pads, pad), ids[3:]])
    return ids


CASES = {
    "qlora_tied": {},
    "direct_q_untied": dict(q_lora_rank=None, tie_word_embeddings=False),
    "yarn_mscale": dict(rope_scaling=YARN),
    "yarn_rope_parameters": dict(rope_parameters={"rope_type": "yarn", "rope_theta": 50000.0, "factor": 2.0,
                                                  "original_max_position_embeddings": 24}),
    "kv_heads_lt_heads": dict(num_key_value_heads=2),
    "bias_rotate_half": dict(attention_bias=True, rope_interleave=False, q_lora_rank=None),
}


@pytest.mark.parametrize("image", [False, True], ids=["text", "image"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_parity_f32(tmp_path, case, image):
    path = make(tmp_path, **CASES[case])
    model = densemllm.load(path)
    ref = hf_model(path)
    n_vis = 6 if image else 0
    ids = random_ids(model, 40, seed=1, pads=n_vis)
    vis = np.random.default_rng(2).standard_normal((n_vis, model.config.text.hidden_size)).astype(np.float32)
    ours = model.forward(ids, image_embeds=vis if image else None)
    want = ref_logits(ref, ids, vis if image else None, model.config.image_token_id)
    assert ours.shape == want.shape and ours.dtype == np.float32
    assert rel_err(ours, want) <= F32_TOL
    # hidden output = the final-normed states whose head gives the logits
    hid = model.forward(ids, image_embeds=vis if image else None, output="hidden")
    assert hid.shape == (len(ids), model.config.text.hidden_size)
    head = ref.lm_head.weight.detach().double().numpy()
    assert rel_err(hid.astype(np.float64) @ head.T, want) <= F32_TOL


def test_openblas_backend_parity(tmp_path):
    path = make(tmp_path, rope_scaling=YARN, q_lora_rank=None)
    model = densemllm.load(path, backend="openblas")
    ids = random_ids(model, 30)
    assert rel_err(model.forward(ids), ref_logits(hf_model(path), ids)) <= F32_TOL


def test_grouped_kv_b_matches_repeated_heads(tmp_path):
    """A checkpoint whose kv_b holds num_key_value_heads groups (rows
    Hkv*(nope+v)) shares each group's k_nope/v among heads/Hkv query heads: the
    same model as transformers' per-head kv_b with every group block repeated."""
    path = make(tmp_path, num_key_value_heads=2)
    cfg = json.loads((path / "config.json").read_text())
    H, nv = cfg["num_attention_heads"], cfg["qk_nope_head_dim"] + cfg["v_head_dim"]
    st = load_file(str(path / "model.safetensors"))
    override = {}
    for k in list(st):
        if k.endswith("kv_b_proj.weight"):
            grouped = st[k][: 2 * nv].clone()
            st[k] = grouped
            override[k] = grouped.view(2, 1, nv, -1).expand(2, H // 2, nv, -1).reshape(H * nv, -1)
    save_file(st, str(path / "model.safetensors"), metadata={"format": "pt"})
    ck = _core.Checkpoint([str(path / "model.safetensors")])
    lm = _core.LanguageModel(ck, llm.lm_config_dict(ModelConfig.from_dict(cfg)))
    ids = np.arange(3, 35, dtype=np.int64)
    ours = _core.Session(lm).extend(ids, output="logits")
    assert rel_err(ours, ref_logits(hf_model(path, state_override=override), ids)) <= F32_TOL


def test_incremental_decoding_equals_full(tmp_path):
    path = make(tmp_path, rope_scaling=YARN, num_key_value_heads=2)
    model = densemllm.load(path)
    D = model.config.text.hidden_size
    ids = random_ids(model, 74, seed=3, pads=4)  # 78 tokens: prompt of 10, then 68 single steps
    vis = np.random.default_rng(4).standard_normal((4, D)).astype(np.float32)
    full = model.forward(ids, image_embeds=vis)
    sess = model.prefill(ids[:10], image_embeds=vis)
    steps = [sess._last_logits.copy()]
    for t in ids[10:]:
        steps.append(sess.extend([t]))
    assert sess.position == len(ids)
    inc = np.stack(steps)
    assert rel_err(inc[:-1], full[9:-1]) <= F32_TOL
    assert rel_err(inc[-1], full[-1]) <= F32_TOL
    # the session kept the vision tokens' final hidden states (rows at the pads)
    hid = model.forward(ids, image_embeds=vis, output="hidden")
    pads = np.flatnonzero(ids == model.config.image_token_id)
    np.testing.assert_array_equal(sess.core.vision_positions(), pads)
    assert rel_err(sess.vision_hidden(), hid[pads]) <= F32_TOL


def test_absorbed_and_expanded_attention_agree(tmp_path):
    """The two MLA forms (per-head K/V from kv_b vs W_UK folded into q over the
    latent cache) are the same function; 'auto' picks by cost."""
    path = make(tmp_path, q_lora_rank=None)
    model = densemllm.load(path)
    lm = llm.language_model(model)
    ids = random_ids(model, 33)
    out = {}
    for mode in ("expanded", "absorbed"):
        lm.attn_mode = mode
        out[mode] = model.forward(ids)
    lm.attn_mode = "auto"
    assert rel_err(out["absorbed"], out["expanded"]) <= F32_TOL
    with pytest.raises(ValueError, match="attn_mode"):
        lm.attn_mode = "other"


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_absorbed_decode_kernels_against_reference(tmp_path, dtype):
    """ops/mla.c against transformers: kv_lora 80 and rope 6 (not multiples of the
    16-lane vectors: masked tails), 300 prompt tokens in absorbed mode (5 token
    groups of 64 rows x 4 heads, causal within and across groups, 3 key blocks of
    128), then single decode steps reading a 300+ row latent cache. bf16 kv_b is
    read in place and widened exactly, so the f32 bound holds against the f32
    reference on the same (bf16-representable) weights with the OpenBLAS backend.
    Decode steps are bit-identical with 1 and 2 threads: every key block's partial
    softmax state is merged in block order, and the M=1 products split rows only."""
    path = make(tmp_path, dtype=dtype, kv_lora_rank=80, qk_rope_head_dim=6, num_hidden_layers=2)
    model = densemllm.load(path, backend="openblas")
    lm = llm.language_model(model)
    lm.attn_mode = "absorbed"
    ids = random_ids(model, 304, seed=7)
    want = ref_logits(hf_model(path), ids)
    assert rel_err(model.forward(ids[:300]), want[:300]) <= F32_TOL
    steps = {}
    for threads in (1, 2):
        densemllm.set_num_threads(threads)
        try:
            sess = model.prefill(ids[:300])
            steps[threads] = np.stack([sess.extend([t]) for t in ids[300:]])
        finally:
            densemllm.set_num_threads(0)
    assert rel_err(steps[2], want[300:]) <= F32_TOL
    np.testing.assert_array_equal(steps[1], steps[2])
    lm.attn_mode = "auto"


def test_bf16_weights_against_reference_on_rounded_weights(tmp_path):
    """bf16 checkpoint: the oneDNN path rounds activations to bf16 at each matmul
    input (relative error 2^-9 per operand, f32 accumulation); over 2 layers of
    ~8 matmuls plus the head that compounds to about 1e-2 of max|logit| at worst,
    so the bound is 3e-2. The reference is float32 torch on the same bf16 values
    (exactly representable in f32). The OpenBLAS path widens bf16 weights to f32
    without rounding activations, so it meets the f32 bound."""
    path = make(tmp_path, dtype="bf16", rope_scaling=YARN)
    ref = hf_model(path)
    ids = random_ids(densemllm.load(path), 40)
    want = ref_logits(ref, ids)
    bf = densemllm.load(path, backend="onednn")
    assert rel_err(bf.forward(ids), want) <= 3e-2
    ob = densemllm.load(path, backend="openblas")
    assert rel_err(ob.forward(ids), want) <= F32_TOL
    llm.language_model(ob).attn_mode = "absorbed"  # bf16 kv_b read in place by ops/mla.c
    assert rel_err(ob.forward(ids), want) <= F32_TOL


def test_kv_cache_bytes(tmp_path):
    path = make(tmp_path)
    model = densemllm.load(path)
    t = model.config.text
    lm = llm.language_model(model)
    per_tok = t.num_hidden_layers * (t.kv_lora_rank + t.qk_rope_head_dim) * 4
    assert lm.kv_bytes_per_token == per_tok
    sess = model.prefill(random_ids(model, 12))
    assert sess.core.kv_bytes == 12 * per_tok


# ---- errors ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = make(tmp_path_factory.mktemp("llm_err"), max_position_embeddings=48)
    return densemllm.load(path)


def test_error_pad_count_mismatch(small):
    D = small.config.text.hidden_size
    ids = random_ids(small, 10, pads=3)
    with pytest.raises(ValueError, match="3 image-pad tokens .* 5 vision embeddings"):
        small.forward(ids, image_embeds=np.zeros((5, D), np.float32))
    with pytest.raises(ValueError, match="image_embeds"):
        small.forward(ids, image_embeds=np.zeros((3, D + 1), np.float32))


def test_error_beyond_max_positions(small):
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 48"):
        small.forward(random_ids(small, 49))
    sess = small.prefill(random_ids(small, 47))
    sess.extend([7])  # position 48 is the last allowed
    with pytest.raises(ValueError, match="49 tokens exceeds max_position_embeddings 48"):
        sess.extend([7])
    assert sess.position == 48  # the failed step left the session usable


def test_error_empty_input(small):
    with pytest.raises(ValueError, match="empty input"):
        small.forward([])
    with pytest.raises(ValueError, match="empty input"):
        small.prefill(np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty input"):
        _core.Session(llm.language_model(small)).extend(np.zeros(0, np.int64))


def test_error_ids_out_of_vocabulary(small):
    V = small.config.text.vocab_size
    with pytest.raises(IndexError, match=f"token id {V} at position 2 is outside the vocabulary"):
        small.forward([1, 2, V, 3])
    with pytest.raises(IndexError, match="token id -1"):
        small.forward([-1, 2])
    with pytest.raises(TypeError, match="integers"):
        small.forward([1.5, 2.0])
    with pytest.raises(ValueError, match="output"):
        small.forward([1, 2], output="probs")


@pytest.mark.parametrize("n", [1, 15, 16, 37, 40000])
def test_swiglu_matches_torch(n):
    """SwiGLU's vectorised exp: within 2e-6 relative of torch's silu(g) * u (float64
    reference) over the float range that matters, including saturation (|g| up
    to 150: exp overflows to inf / underflows to 0 like expf)."""
    rng = np.random.default_rng(n)
    g = np.concatenate([rng.uniform(-150, 150, n // 2), rng.standard_normal(n - n // 2) * 4]).astype(np.float32)
    u = rng.standard_normal(n).astype(np.float32)
    got = _core.swiglu(g, u)
    want = (torch.nn.functional.silu(torch.from_numpy(g).double()) * torch.from_numpy(u).double()).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)
