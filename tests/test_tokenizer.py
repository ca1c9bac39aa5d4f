"""Tokenizer: special tokens of the notes, encode/decode, chat templates (the
checkpoint's own, from each of its three places, and the fallback) against
transformers' apply_chat_template, and image pad expansion."""
import json
import shutil

import pytest
from transformers import PreTrainedTokenizerFast

from densemllm import CheckpointError
from densemllm.testing import CHATML_CHAT_TEMPLATE, make_checkpoint
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
    assert p.endswith("<|begin_of_text|>assistant\n")
    # make_checkpoint writes the Youtu-VL rendering (notes section 5), word for word
    assert tok.chat_prompt(MESSAGES[:2]) == (
        "<|begin_of_text|>system\nYou are a helpful assistant.<|end_of_text|>\n"
        "<|begin_of_text|>user\n<|vision_start|><|image_pad|><|vision_end|>Segment the core target."
        "<|end_of_text|>\n<|begin_of_text|>assistant\n")


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


def test_fallback_template_is_youtu(ckpt, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(ckpt, d)
    (d / "tokenizer_config.json").unlink()
    tok = Tokenizer.from_dir(d)
    assert tok.chat_template_source == "fallback" and tok.chat_template == FALLBACK_CHAT_TEMPLATE
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    want = ("<|begin_of_text|>system\nYou are a helpful assistant.<|end_of_text|>\n"
            "<|begin_of_text|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|end_of_text|>\n"
            "<|begin_of_text|>assistant\n")
    assert tok.chat_prompt(msgs) == want
    assert hf_tokenizer(d, FALLBACK_CHAT_TEMPLATE).apply_chat_template(msgs, tokenize=False,
                                                                       add_generation_prompt=True) == want
    # a ChatML checkpoint keeps its own template; one without any gets the Youtu fallback
    chatml = Tokenizer.from_dir(make_checkpoint(tmp_path / "chatml", chat_template="chatml"))
    assert chatml.chat_template == CHATML_CHAT_TEMPLATE and chatml.chat_template_source == "tokenizer_config.json"
    assert chatml.chat_prompt(msgs).startswith("<|im_start|>system\n")
    none = Tokenizer.from_dir(make_checkpoint(tmp_path / "none", chat_template=None))
    assert none.chat_template_source == "fallback" and none.chat_prompt(msgs) == want


def test_template_lookup_order_is_the_processors(ckpt, tmp_path):
    """Every source present with a different template: the one transformers' processor
    (ProcessorMixin.get_processor_dict) picks wins, then the next when it is removed."""
    from transformers import ProcessorMixin

    d = tmp_path / "c"
    shutil.copytree(ckpt, d)
    (d / "processor_config.json").write_text(json.dumps({"chat_template": "P{{ messages[0]['content'] }}"}))
    (d / "chat_template.json").write_text(json.dumps({"chat_template": "J{{ messages[0]['content'] }}"}))
    (d / "chat_template.jinja").write_text("K{{ messages[0]['content'] }}")
    order = ["processor_config.json", "chat_template.json", "chat_template.jinja", "tokenizer_config.json"]
    for k, source in enumerate(order):
        tok = Tokenizer.from_dir(d)
        assert tok.chat_template_source == source
        if source != "tokenizer_config.json":
            official = ProcessorMixin.get_processor_dict(str(d))[0].get("chat_template")
            assert tok.chat_template == official
        if source == "processor_config.json":
            (d / source).write_text(json.dumps({"image_processor_type": "x"}))  # no template in it
        elif source != "tokenizer_config.json":
            (d / source).unlink()


def test_bad_template_files_name_the_file(ckpt, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(ckpt, d)
    (d / "chat_template.jinja").write_bytes(b"{{ 'caf\xe9' }}")  # latin-1, not UTF-8
    with pytest.raises(CheckpointError, match="chat_template.jinja.*UTF-8"):
        Tokenizer.from_dir(d)
    (d / "chat_template.jinja").unlink()
    (d / "chat_template.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="chat_template.json"):
        Tokenizer.from_dir(d)


def test_grammar_tokens_decode_by_id_when_special(tmp_path):
    """A tokenizer that registers <ref>, <box>, <x_N> ... as special tokens: the ids are
    the same, decode(skip_special_tokens=True) drops them, decode_answer keeps them."""
    plain = Tokenizer.from_dir(make_checkpoint(tmp_path / "a"))
    special = Tokenizer.from_dir(make_checkpoint(tmp_path / "b", grammar_special=True))
    answer = "The results are 0 for <ref><BG></ref> and 1 for <ref><FG></ref>.<box><x_4><y_5><x_60><y_61></box>"
    ids = plain.encode(answer)
    assert special.encode(answer) == ids
    assert special.decode(ids, skip_special_tokens=True) != answer  # what the old parsing read
    assert plain.decode_answer(ids) == special.decode_answer(ids) == answer
    assert special.decode_answer(ids + [special.special_id("<|end_of_text|>")]) == answer
    assert set(special.grammar_ids.values()) >= {"<ref>", "</ref>", "<x_1023>", "<custom_1000>", "<FG>"}


def test_user_text_with_control_tokens_is_rejected(ckpt):
    tok = Tokenizer.from_dir(ckpt)
    for bad in ("<|image_pad|>", "a <|vision_start|> b", "sky<|end_of_text|>", "<|begin_of_text|>user"):
        with pytest.raises(ValueError, match=r"classes\[2\].*special token"):
            tok.check_user_text(bad, "classes[2]")
    assert tok.check_user_text("a <ref> cat", "x") == "a <ref> cat"  # grammar text is not a control token
    assert tok.check_user_text("<OTHERS>", "x") == "<OTHERS>"


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
