"""Tokenizer: special tokens of the notes, encode/decode, chat templates (the
checkpoint's own, from each of its three places, and the fallback) against
transformers' apply_chat_template, and image pad expansion."""
import json
import shutil

import pytest
from transformers import PreTrainedTokenizerFast

from densemllm import CheckpointError
from densemllm.testing import make_checkpoint
from densemllm.tokenizer import FALLBACK_CHAT_TEMPLATE, SPECIAL_TOKENS, Tokenizer

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Segment the core target."}]},
    {"role": "assistant", "content": "The results are 0 for <ref><BG></ref> and 1 for <ref><FG></ref>."},
    {"role": "user", "content": [{"type": "text", "text": "Please estimate the depth of this image."},
                                 {"type": "image"}]},
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tok"))


def hf_tokenizer(path, template):
    return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), chat_template=template,
                                   bos_token="<|begin_of_text|>", eos_token="<|im_end|>")


def test_special_tokens_are_single_ids(ckpt):
    tok = Tokenizer.from_dir(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    names = list(SPECIAL_TOKENS) + ["<custom_0>", "<custom_1000>", "<x_0>", "<x_1023>", "<y_0>", "<y_1023>",
                                    "<|begin_of_text|>", "<|end_of_text|>"]
    ids = [tok.special_id(t) for t in names]
    assert len(set(ids)) == len(ids)
    for t, i in zip(names, ids):
        assert tok.encode(t) == [i], t
        assert tok.id_to_token(i) == t
    assert tok.image_pad_id == cfg["image_token_id"] and tok.vision_start_id == cfg["vision_start_token_id"]
    assert tok.vision_end_id == cfg["vision_end_token_id"]
    assert tok.vocab_size == cfg["vocab_size"]
    with pytest.raises(KeyError, match="<custom_1001>"):
        tok.special_id("<custom_1001>")
    # A box answer tokenizes into its coordinate tokens.
    box = "<box><x_155><y_154><x_221><y_206></box>"
    assert tok.encode(box) == [tok.special_id(t) for t in
                               ["<box>", "<x_155>", "<y_154>", "<x_221>", "<y_206>", "</box>"]]


def test_encode_decode_roundtrip(ckpt):
    tok = Tokenizer.from_dir(ckpt)
    hf = hf_tokenizer(ckpt, None)
    for text in ["Segment: sky, road, person.", "caf\u00e9 \u6df1\u5ea6 \U0001F600 (0,12)(1,4)", "",
                 "<ref>sky</ref><mask>(1,3)</mask>"]:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)  # the reference library, same file
        assert tok.decode(ids) == text
    bos = tok.special_id("<|begin_of_text|>")
    assert bos not in tok.encode("hello")  # no BOS added
    # Structural tokens are special (skipped on request); task tokens are kept.
    ids = tok.encode("<|im_start|>a<ref>b</ref>")
    assert tok.decode(ids, skip_special_tokens=True) == "a<ref>b</ref>"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TypeError):
        tok.encode(3)


def test_checkpoint_template_matches_transformers(ckpt):
    tok = Tokenizer.from_dir(ckpt)
    assert tok.chat_template_source == "tokenizer_config.json"
    hf = hf_tokenizer(ckpt, json.loads((ckpt / "tokenizer_config.json").read_text())["chat_template"])
    for gen in (True, False):
        want = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
        assert tok.chat_prompt(MESSAGES, add_generation_prompt=gen) == want
    p = tok.chat_prompt(MESSAGES[1:2])
    assert p.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert p.endswith("<|im_start|>assistant\n")


CUSTOM = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}]"
          "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
          "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
          "{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}")


@pytest.mark.parametrize("where", ["tokenizer_config.json", "list", "chat_template.json", "chat_template.jinja"])
def test_template_sources(ckpt, tmp_path, where):
    d = tmp_path / "c"
    shutil.copytree(ckpt, d)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    del tc["chat_template"]
    if where == "tokenizer_config.json":
        tc["chat_template"] = CUSTOM
    elif where == "list":
        tc["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": CUSTOM}]
    elif where == "chat_template.json":
        (d / where).write_text(json.dumps({"chat_template": CUSTOM}))
    else:
        (d / where).write_text(CUSTOM)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    tok = Tokenizer.from_dir(d)
    assert tok.chat_template_source == ("tokenizer_config.json" if where == "list" else where)
    want = hf_tokenizer(d, CUSTOM).apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert tok.chat_prompt(MESSAGES) == want
    assert want.startswith("<|begin_of_text|>[SYSTEM]")


def test_fallback_template(ckpt, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(ckpt, d)
    (d / "tokenizer_config.json").unlink()
    tok = Tokenizer.from_dir(d)
    assert tok.chat_template_source == "fallback" and tok.chat_template == FALLBACK_CHAT_TEMPLATE
    got = tok.chat_prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}])
    assert got == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                   "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
                   "<|im_start|>assistant\n")


def test_template_is_sandboxed_and_errors_are_clear(ckpt, tmp_path):
    from jinja2.exceptions import SecurityError, TemplateError

    tok = Tokenizer.from_dir(ckpt)
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    tok._template = None
    with pytest.raises(SecurityError):
        tok.chat_prompt(MESSAGES)
    tok.chat_template, tok._template = "{% if %}", None
    with pytest.raises(CheckpointError, match="does not compile"):
        tok.chat_prompt(MESSAGES)
    tok.chat_template, tok._template = "{{ raise_exception('no system role') }}", None
    with pytest.raises(TemplateError, match="no system role"):
        tok.chat_prompt(MESSAGES)
    with pytest.raises(ValueError, match="messages"):
        tok.chat_prompt([{"content": "x"}])


def test_expand_image_pads(ckpt):
    tok = Tokenizer.from_dir(ckpt)
    ids = tok.encode(tok.chat_prompt(MESSAGES[1:2]))
    pad = tok.image_pad_id
    k = ids.index(pad)
    out = tok.expand_image_pads(ids, 6)
    assert len(out) == len(ids) + 5 and out[k:k + 6] == [pad] * 6
    assert out[:k] == ids[:k] and out[k + 6:] == ids[k + 1:]
    assert out[k - 1] == tok.vision_start_id and out[k + 6] == tok.vision_end_id
    assert tok.expand_image_pads(ids, 1) == ids
    with pytest.raises(ValueError, match="found 0"):
        tok.expand_image_pads(tok.encode("no image"), 4)
    with pytest.raises(ValueError, match="found 2"):
        tok.expand_image_pads(ids + [pad], 4)
    with pytest.raises(ValueError, match="n_tokens"):
        tok.expand_image_pads(ids, 0)


def test_missing_or_broken_tokenizer(ckpt, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(ckpt, d)
    (d / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.from_dir(d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(d)
