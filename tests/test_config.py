"""config.json parsing: both RoPE schemas, q_lora null or set, tied or untied head,
defaults of the notes, and clear errors for broken values."""
import json

import pytest

from densemllm import CheckpointError
from densemllm.config import ModelConfig, TextConfig, VisionConfig

# Youtu-VL-4B values as the notes list them (section 1), spelled as a remote-code config.
YOUTU_VL_4B = {
    "vocab_size": 283386, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 40,
    "num_attention_heads": 32, "num_key_value_heads": 32, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768, "rope_theta": 500000.0, "rope_scaling": None,
    "rope_interleave": True, "attention_bias": False, "hidden_act": "silu", "tie_word_embeddings": True,
    "bos_token_id": 128000, "eos_token_id": 128001, "vision_start_token_id": 128262,
    "vision_end_token_id": 128263,
    "vision_config": {
        "hidden_size": 1152, "num_attention_heads": 16, "intermediate_size": 4304, "num_hidden_layers": 27,
        "patch_size": 16, "num_channels": 3, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh",
        "spatial_merge_size": 2, "out_hidden_size": 2560, "window_size": 256,
        "fullatt_block_indexes": [7, 15, 23, 26],
    },
}


def test_released_config_and_defaults():
    c = ModelConfig.from_dict(YOUTU_VL_4B)
    assert c.text.hidden_size == 2560 and c.text.q_lora_rank == 1536 and c.text.qk_head_dim == 192
    assert c.text.rope_theta == 500000.0 and c.text.rope_scaling is None
    assert c.vision.head_dim == 72 and c.vision.fullatt_block_indexes == (7, 15, 23, 26)
    # image_token_id is absent above: no built-in id, the loader takes it from the tokenizer
    # (tests/test_fidelity.py::test_token_ids_come_from_the_tokenizer).
    assert c.image_token_id is None and c.video_token_id is None
    assert c.vision_start_token_id == 128262 and c.eos_token_id == (128001,)
    assert c.raw is YOUTU_VL_4B
    # A bare config takes every value from the notes; fullatt from "every 8th and the last".
    bare = ModelConfig.from_dict({})
    assert bare.text == TextConfig() and bare.vision == VisionConfig()
    assert ModelConfig.from_dict({"vision_config": {"num_hidden_layers": 27}}).vision.fullatt_block_indexes == \
        (7, 15, 23, 26)
    assert ModelConfig.from_dict({"vision_config": {"num_hidden_layers": 12}}).vision.fullatt_block_indexes == \
        (7, 11)


def test_both_rope_schemas_agree():
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192, "beta_fast": 32,
            "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    old = dict(YOUTU_VL_4B, rope_theta=1.6e6, rope_scaling=yarn)
    new = {k: v for k, v in YOUTU_VL_4B.items() if k not in ("rope_theta", "rope_scaling")}
    new["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1.6e6, "factor": 4.0,
                              "original_max_position_embeddings": 8192, "beta_fast": 32, "beta_slow": 1,
                              "mscale": 1.0, "mscale_all_dim": 1.0}
    a, b = ModelConfig.from_dict(old).text, ModelConfig.from_dict(new).text
    assert a == b
    assert a.rope_theta == 1.6e6
    assert a.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192,
                              "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    # Plain RoPE in the new schema is "no scaling".
    plain = dict(new, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    t = ModelConfig.from_dict(plain).text
    assert t.rope_scaling is None and t.rope_theta == 1e4
    # Absent YaRN fields: DeepSeek's defaults, mscale kept absent (None), not invented.
    t = ModelConfig.from_dict(dict(YOUTU_VL_4B, rope_scaling={"rope_type": "yarn", "factor": 2})).text
    assert t.rope_scaling["beta_fast"] == 32.0 and t.rope_scaling["beta_slow"] == 1.0
    assert t.rope_scaling["original_max_position_embeddings"] == 32768
    assert t.rope_scaling["mscale"] is None and t.rope_scaling["mscale_all_dim"] is None


def test_qlora_null_untied_and_gqa():
    c = ModelConfig.from_dict(dict(YOUTU_VL_4B, q_lora_rank=None, tie_word_embeddings=False,
                                   num_key_value_heads=8, eos_token_id=[1, 2], image_token_id=5))
    assert c.text.q_lora_rank is None and not c.text.tie_word_embeddings
    assert c.text.num_key_value_heads == 8 and c.eos_token_id == (1, 2) and c.image_token_id == 5
    # num_key_value_heads absent -> equal to heads.
    d = dict(YOUTU_VL_4B)
    del d["num_key_value_heads"]
    assert ModelConfig.from_dict(d).text.num_key_value_heads == 32


def test_nested_text_config():
    d = {"text_config": {k: v for k, v in YOUTU_VL_4B.items() if k != "vision_config"},
         "vision_config": YOUTU_VL_4B["vision_config"]}
    assert ModelConfig.from_dict(d).text == ModelConfig.from_dict(YOUTU_VL_4B).text


@pytest.mark.parametrize("change, needle", [
    ({"hidden_size": "2560"}, "hidden_size must be an integer"),
    ({"hidden_size": True}, "hidden_size must be an integer"),
    ({"num_hidden_layers": -1}, r"num_hidden_layers must be in \[1, 1024\], got -1"),
    ({"num_key_value_heads": 5}, "not a multiple of num_key_value_heads"),
    ({"qk_rope_head_dim": 63}, "qk_rope_head_dim must be even"),
    ({"rms_norm_eps": 0}, "rms_norm_eps must be a finite number in"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
    ({"rope_scaling": 3}, "rope_scaling must be an object"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": -1}}, "factor must be a finite number in"),
    ({"eos_token_id": "x"}, "eos_token_id"),
    ({"image_token_id": -3}, "image_token_id"),
    ({"vision_config": {"fullatt_block_indexes": [30]}}, "out of range"),
    ({"vision_config": {"hidden_size": 100, "num_attention_heads": 16}}, "not a multiple of num_attention_heads"),
    ({"vision_config": {"window_size": 100}}, "window_size"),
    ({"vision_config": {"out_hidden_size": 1000}}, "out_hidden_size"),
    ({"vision_config": []}, "vision_config must be an object"),
])
def test_invalid_values(change, needle):
    d = json.loads(json.dumps(YOUTU_VL_4B))
    for k, v in change.items():
        if k == "vision_config" and isinstance(v, dict):
            d[k].update(v)
        else:
            d[k] = v
    with pytest.raises(CheckpointError, match=needle) as ei:
        ModelConfig.from_dict(d, "x/config.json")
    assert "x/config.json" in str(ei.value)


def test_from_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(YOUTU_VL_4B))
    assert ModelConfig.from_file(tmp_path).text.vocab_size == 283386
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError):
        ModelConfig.from_file(tmp_path / "nothing")
