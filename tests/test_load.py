"""densemllm.load: discovery of single/sharded files, the weight check against
config.json (one error listing everything wrong), dtype options, and the model
object. Weights are compared with what the `safetensors` package reads."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import densemllm
from densemllm import CheckpointError
from densemllm.checkpoint import check_weights, expected_weights, find_weight_files
from densemllm.testing import make_checkpoint


def bits(t):
    return t.view(torch.int16).numpy().view(np.uint16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("sharded"), shards=3, seed=1)


def copy(src, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(src, d)
    return d


def rewrite(d, edit):
    """Apply edit(dict of tensors) to model.safetensors."""
    t = load_file(str(d / "model.safetensors"))
    edit(t)
    save_file(t, str(d / "model.safetensors"))


def test_load_single_bf16(ckpt):
    m = densemllm.load(ckpt)
    assert isinstance(m, densemllm.Model) and m.dtype == "bf16" and m.backend == "onednn"
    assert m.config.text.hidden_size == 64 and m.config.vision.hidden_size == 32
    assert m.tokenizer.vocab_size == m.config.text.vocab_size and m.threads >= 1
    ref = load_file(str(ckpt / "model.safetensors"))
    names = set(m._checkpoint.names())
    assert names == set(ref)
    # Real layout names (released prefixes), tied head: no lm_head.
    assert "siglip2.vision_model.encoder.layers.1.mlp.fc2.bias" in names and "merger.mlp.2.weight" in names
    assert "model.layers.1.self_attn.q_b_proj.weight" in names and "lm_head.weight" not in names
    for n, t in ref.items():
        a = m._checkpoint.get(n)
        assert a.dtype == np.uint16 and not a.flags.owndata
        np.testing.assert_array_equal(a, bits(t))


def test_load_sharded(sharded):
    files = find_weight_files(sharded)
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    m = densemllm.load(sharded, threads=1)
    assert m.threads == 1 and densemllm.get_num_threads() == 1
    densemllm.set_num_threads(0)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(m._checkpoint.names())
    for n, shard in index.items():
        assert m._checkpoint.info(n)[2] == str(sharded / shard)
        np.testing.assert_array_equal(m._checkpoint.get(n), bits(load_file(str(sharded / shard))[n]))


def test_missing_shard(sharded, tmp_path):
    d = copy(sharded, tmp_path)
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors"):
        densemllm.load(d)


def test_index_disagreeing_with_shards(sharded, tmp_path):
    d = copy(sharded, tmp_path)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    name = "model.norm.weight"
    right = idx["weight_map"][name]
    idx["weight_map"][name] = next(f for f in set(idx["weight_map"].values()) if f != right)
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match=f"{name} \\(listed in"):
        densemllm.load(d)
    (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../x"}}')
    with pytest.raises(CheckpointError, match="not a plain file name"):
        densemllm.load(d)
    (d / "model.safetensors.index.json").write_text("[1")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        densemllm.load(d)


def test_corrupt_shard_names_file(sharded, tmp_path):
    d = copy(sharded, tmp_path)
    f = d / "model-00003-of-00003.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as ei:
        densemllm.load(d)
    assert str(f) in str(ei.value) and "out of range" in str(ei.value)


def test_weight_check_lists_every_problem(ckpt, tmp_path):
    d = copy(ckpt, tmp_path)

    def edit(t):
        del t["model.layers.0.mlp.up_proj.weight"]
        del t["merger.ln_q.weight"]
        t["model.layers.1.self_attn.o_proj.weight"] = torch.zeros(64, 32, dtype=torch.bfloat16)
        t["model.layers.0.input_layernorm.weight"] = torch.zeros(64, dtype=torch.int32)
        t["model.layers.9.extra.weight"] = torch.zeros(2, dtype=torch.bfloat16)
    rewrite(d, edit)
    with pytest.raises(CheckpointError) as ei:
        densemllm.load(d)
    msg = str(ei.value)
    assert str(d) in msg
    assert "2 missing" in msg and "model.layers.0.mlp.up_proj.weight [128, 64]" in msg
    assert "merger.ln_q.weight [32] (or vision_model.merger.ln_q.weight)" in msg
    assert "1 unexpected" in msg and "model.layers.9.extra.weight" in msg
    assert "model.layers.1.self_attn.o_proj.weight: expected [64, 64], got [64, 32]" in msg
    assert "model.layers.0.input_layernorm.weight: I32" in msg


def test_config_contradicting_weights(ckpt, tmp_path):
    d = copy(ckpt, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    cfg["vision_config"]["num_hidden_layers"] = 3
    cfg["vision_config"]["fullatt_block_indexes"] = [2]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as ei:
        densemllm.load(d)
    msg = str(ei.value)
    for i in (0, 1):
        assert f"model.layers.{i}.mlp.gate_proj.weight: expected [96, 64], got [128, 64]" in msg
        assert f"model.layers.{i}.mlp.down_proj.weight: expected [64, 96], got [64, 128]" in msg
    assert "siglip2.vision_model.encoder.layers.2.mlp.fc1.weight" in msg  # missing third layer


def test_prefix_variants_and_leftovers(ckpt, tmp_path):
    d = copy(ckpt, tmp_path)

    def edit(t):
        for n in list(t):
            if n.startswith("siglip2.vision_model."):
                t["vision_model." + n[len("siglip2.vision_model."):]] = t.pop(n)
            elif n.startswith("merger."):
                t["vision_model." + n] = t.pop(n)
        # SigLIP2 leftovers the architecture does not use: ignored.
        t["vision_model.embeddings.position_embedding.weight"] = torch.zeros(16, 32, dtype=torch.bfloat16)
        t["vision_model.embeddings.position_ids"] = torch.arange(16)
    rewrite(d, edit)
    m = densemllm.load(d)
    assert "vision_model.merger.mlp.0.weight" in m._checkpoint
    cfg = m.config
    resolved = check_weights(m._checkpoint, cfg)
    assert resolved["merger.mlp.0.weight"] == "vision_model.merger.mlp.0.weight"
    # Both variants of one weight at once is ambiguous.
    rewrite(d, lambda t: t.__setitem__("merger.ln_q.weight", t["vision_model.merger.ln_q.weight"].clone()))
    with pytest.raises(CheckpointError, match="ambiguous"):
        densemllm.load(d)


def test_variants_qlora_null_untied_bias(tmp_path):
    p = make_checkpoint(tmp_path / "v", q_lora_rank=None, tie_word_embeddings=False, attention_bias=True)
    m = densemllm.load(p)
    names = set(m._checkpoint.names())
    assert "model.layers.0.self_attn.q_proj.weight" in names and "lm_head.weight" in names
    assert "model.layers.0.self_attn.q_a_proj.weight" not in names
    assert "model.layers.0.self_attn.o_proj.bias" in names
    assert {n for alts, _ in expected_weights(m.config) for n in alts[:1]} == names
    # A tied config with an lm_head present: tolerated (some exports store it) if it fits.
    d = copy(make_checkpoint(tmp_path / "t"), tmp_path)
    rewrite(d, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].clone()))
    densemllm.load(d)
    rewrite(d, lambda t: t.__setitem__("lm_head.weight", torch.zeros(3, 64, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError, match="lm_head.weight: expected"):
        densemllm.load(d)


def test_dtype_options(tmp_path):
    p32 = make_checkpoint(tmp_path / "f32", dtype="f32")
    ref = load_file(str(p32 / "model.safetensors"))
    m = densemllm.load(p32)
    assert m.dtype == "f32" and m._checkpoint.get("model.norm.weight").dtype == np.float32
    m = densemllm.load(p32, dtype="bf16")
    assert m.dtype == "bf16"
    for n in ("model.embed_tokens.weight", "merger.mlp.0.weight"):
        assert m._checkpoint.info(n)[0] == "BF16"
        np.testing.assert_array_equal(m._checkpoint.get(n), bits(ref[n].to(torch.bfloat16)))
    pbf = make_checkpoint(tmp_path / "bf", dtype="bf16")
    refb = load_file(str(pbf / "model.safetensors"))
    m = densemllm.load(pbf, dtype="f32")
    assert m.dtype == "f32"
    n = "model.layers.0.mlp.down_proj.weight"
    np.testing.assert_array_equal(m._checkpoint.get(n), refb[n].float().numpy())
    m = densemllm.load(make_checkpoint(tmp_path / "f16", dtype="f16"))
    assert m.dtype == "bf16" and m._checkpoint.info(n)[0] == "BF16"
    with pytest.raises(ValueError, match="dtype"):
        densemllm.load(pbf, dtype="f16")


def test_load_arguments_and_consistency(ckpt, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        densemllm.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="backend"):
        densemllm.load(ckpt, backend="cuda")
    with pytest.raises(ValueError, match="threads"):
        densemllm.load(ckpt, threads=-1)
    monkeypatch.setenv("DENSEMLLM_BACKEND", "openblas")
    assert densemllm.load(ckpt).backend == "openblas"
    d = copy(ckpt, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["image_token_id"] = 5
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="image_token_id 5"):
        densemllm.load(d)
    shutil.copy(ckpt / "config.json", d / "config.json")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        densemllm.load(d)


def test_make_checkpoint_is_deterministic(tmp_path):
    a = make_checkpoint(tmp_path / "a", seed=3)
    b = make_checkpoint(tmp_path / "b", seed=3)
    c = make_checkpoint(tmp_path / "c", seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    t = load_file(str(a / "model.safetensors"))
    w = t["model.layers.0.mlp.gate_proj.weight"].float()
    assert 0.015 < w.std().item() < 0.025  # N(0, 0.02), 8192 samples
    assert abs(t["model.norm.weight"].float().mean().item() - 1.0) < 0.01


@pytest.mark.parametrize("kw", [{}, {"q_lora_rank": None, "tie_word_embeddings": False}])
def test_transformers_loads_the_llm_weights(tmp_path, kw):
    """The LLM parity tests build transformers' YoutuForCausalLM from these files."""
    from transformers import YoutuConfig, YoutuForCausalLM

    p = make_checkpoint(tmp_path / "hf", **kw)
    raw = json.loads((p / "config.json").read_text())
    text = {k: v for k, v in raw.items() if k not in ("vision_config", "architectures", "model_type", "torch_dtype",
                                                      "image_token_id", "video_token_id", "vision_start_token_id",
                                                      "vision_end_token_id")}
    hf = YoutuForCausalLM.from_pretrained(str(p), config=YoutuConfig(**text), dtype=torch.bfloat16)
    m = densemllm.load(p)
    sd = hf.state_dict()
    assert len(sd) == len([n for n in m._checkpoint.names() if n.startswith(("model.", "lm_head."))]) + \
        (1 if m.config.text.tie_word_embeddings else 0)
    for n, t in sd.items():
        src = "model.embed_tokens.weight" if n == "lm_head.weight" and m.config.text.tie_word_embeddings else n
        np.testing.assert_array_equal(bits(t), m._checkpoint.get(src), err_msg=n)
