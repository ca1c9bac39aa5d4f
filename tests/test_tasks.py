"""Known-answer tests of the task API on tiny checkpoints whose weights are CONSTRUCTED
so that the right answer is known in advance.

Construction (bf16 weights, as released):
- Vision tower: every layer's out_proj and fc2 are zero, so the residual stream is the
  patch embedding, which reads the mean colour of the patch: features (R, G, B, -R, -G,
  -B, 0...) with R, G, B in {-1, +1} for the pure colours used (mean zero, so the post
  LayerNorm only rescales). The merger's first Linear + exact GELU turns the colour into
  a one-hot "colour detector" (k*(c_j . c) - 2k: +k for the matching colour, <= -k
  otherwise, GELU(-k) ~ 0) and the second Linear puts it on LLM basis direction e_j.
  So a vision token of colour j enters the LLM as k*e_j.
- LLM: every o_proj and down_proj is zero, so each position's final hidden state is
  RMSNorm(its input): vision tokens -> 8*e_j (hidden 64). Text embeddings have their
  components 0..3 zeroed, so text and vision live in orthogonal subspaces.
- LM head (untied): class / depth / FG-BG rows are built from e_0..e_3 (dense decoding
  reads them); a "successor chain" makes generation deterministic: the row of token
  s_{i+1} is alpha * unit(embedding of s_i), so greedy decoding after the prompt's last
  token L writes exactly the scripted answer, then eos. The two parts never mix
  (orthogonal subspaces), so dense logits and generation are controlled independently.
"""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import densemllm
from densemllm.parse import ParseError
from densemllm.tasks.common import render_prompt
from densemllm.testing import make_checkpoint

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
ORDER = ["red", "green", "blue", "yellow"]  # colour j -> LLM direction e_j
D, DV, K_GATE, ALPHA = 64, 32, 6.0, 4.0
V = "siglip2.vision_model."


def e(*pairs):
    v = np.zeros(D, np.float32)
    for j, s in pairs:
        v[j] += s
    return v


def band_image(bands, width=64, band_px=32):
    """Horizontal colour bands, each `band_px` rows (one merged token row at 32)."""
    return np.concatenate([np.tile(np.array(COLOURS[c], np.uint8), (band_px, width, 1)) for c in bands])


def build(tmp_path, answer="", rows=None, name="ck", patch=16, **checkpoint_options):
    """A constructed checkpoint: `rows` maps a token (string) to an extra LM-head row in the
    vision subspace; generation after any prompt writes `answer` then eos. `patch`: the
    vision patch size (a merged token covers 2*patch pixels); `checkpoint_options` go to
    make_checkpoint (e.g. grammar_special=True)."""
    path = make_checkpoint(tmp_path / name, seed=0, tie_word_embeddings=False, max_position_embeddings=512,
                           vision=dict(patch_size=patch), **checkpoint_options)
    model = densemllm.load(path)
    tok = model.tokenizer
    last = tok.encode(render_prompt(model, "x"))[-1]
    chain = [last] + list(tok.encode(answer)) + [int(model.config.eos_token_id[0])]
    assert len(set(chain[:-1])) == len(chain) - 1, "the scripted answer must not repeat a token"
    t = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
    dtype = torch.bfloat16
    # vision: residual stream = patch embedding = colour means
    nl = model.config.vision.num_hidden_layers
    for i in range(nl):
        for w in ("self_attn.out_proj", "mlp.fc2"):
            t[f"{V}encoder.layers.{i}.{w}.weight"].zero_()
            t[f"{V}encoder.layers.{i}.{w}.bias"].zero_()
    pe = torch.zeros(DV, 3 * patch * patch)
    for c in range(3):
        pe[c, c::3] = 1.0 / patch**2
        pe[3 + c, c::3] = -1.0 / patch**2
    t[f"{V}embeddings.patch_embedding.weight"] = pe
    t[f"{V}embeddings.patch_embedding.bias"].zero_()
    t[f"{V}post_layernorm.weight"].fill_(1.0)
    t[f"{V}post_layernorm.bias"].zero_()
    t["merger.ln_q.weight"].fill_(1.0)
    a = np.sqrt(DV / 6.0)  # LayerNorm gain of (+-1 x3, -+1 x3, 0...) over DV features
    m0, b0 = torch.zeros(4 * DV, 4 * DV), torch.zeros(4 * DV)
    m2 = torch.zeros(D, 4 * DV)
    for j, c in enumerate(ORDER):
        sign = torch.tensor([1.0 if v else -1.0 for v in COLOURS[c]])
        m0[j, :3] = K_GATE * sign / a
        b0[j] = -2 * K_GATE
        m2[j, j] = 1.0
    t["merger.mlp.0.weight"], t["merger.mlp.0.bias"] = m0, b0
    t["merger.mlp.2.weight"] = m2
    t["merger.mlp.2.bias"].zero_()
    # LLM: no attention / MLP contributions; text embeddings orthogonal to e_0..e_3
    for i in range(model.config.text.num_hidden_layers):
        t[f"model.layers.{i}.self_attn.o_proj.weight"].zero_()
        t[f"model.layers.{i}.mlp.down_proj.weight"].zero_()
    t["model.norm.weight"].fill_(1.0)
    emb = t["model.embed_tokens.weight"]
    emb[:, :4] = 0
    head = torch.zeros_like(emb)
    for prev, nxt in zip(chain[:-1], chain[1:]):
        u = emb[prev].to(dtype).float()
        head[nxt] += ALPHA * u / u.norm()
    for token, vec in (rows or {}).items():
        ids = [tok.token_to_id(token)] if tok.token_to_id(token) is not None else tok.encode(token)
        for i in ids:
            head[i] += torch.from_numpy(vec)
    t["lm_head.weight"] = head
    save_file({k: v.to(dtype).contiguous() for k, v in t.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    return densemllm.load(path)


def test_segment_top_and_bottom_halves(tmp_path):
    m = build(tmp_path, rows={"cat": e((0, 1.0)), "dog": e((1, 1.0))})
    assert not set(m.tokenizer.encode("cat")) & set(m.tokenizer.encode("dog"))
    img = band_image(["red", "green"])
    r = m.segment(img, ["cat", "dog"])
    # the scripted answer is empty (no <ref>): every requested class is decoded
    assert r.text == "" and r.class_names == ["cat", "dog"]
    want = np.zeros((64, 64), np.int32)
    want[32:] = 1
    np.testing.assert_array_equal(r.labels, want)
    assert r.labels.dtype == np.int32
    assert r.logits.shape == (2, 2, 2)
    p = r.scores()  # softmax(z / 0.2) over the token grid: 8 vs 0 -> exp(-40) for the loser
    np.testing.assert_allclose(p[0, :, 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    assert r.model_text() == "<mask>(0,2048)(1,2048)</mask>"
    # scale=2: the model sees 128x128 (4 token rows), labels stay at the original size
    np.testing.assert_array_equal(m.segment(img, ["cat", "dog"], scale=2.0).labels, want)
    # vision_logits on the token grid: RMSNorm makes each vision token 8*e_j (sqrt(64); the
    # GELU(-6) leak is ~1e-8), so the matching class row gives 8, others 0. atol 0.1 covers
    # the bf16 rounding of activations on the oneDNN path (8 * 2^-9 = 0.016) with margin.
    z = m.vision_logits(img, ["cat", "dog", m.tokenizer.encode("dog")])
    np.testing.assert_allclose(z, np.array([[[8, 0, 0]] * 2, [[0, 8, 8]] * 2], np.float32), atol=0.1)


def test_segment_background_mode_and_model_refs(tmp_path):
    rows = {"cat": e((0, 1.0), (2, -1.0)), "dog": e((1, 1.0), (2, -1.0))}
    img = band_image(["red", "blue", "green"])
    m = build(tmp_path, rows=rows)
    r = m.segment(img, ["cat", "dog"], background=True)
    assert r.class_names == ["<OTHERS>", "cat", "dog"] and r.background
    want = np.repeat(np.array([1, 0, 2], np.int32), 32)[:, None].repeat(64, 1)
    np.testing.assert_array_equal(r.labels, want)
    sc = r.scores()  # background first: [0.5, sigmoid(z_cat / 4), sigmoid(z_dog / 4)]
    np.testing.assert_array_equal(sc[..., 0], 0.5)
    np.testing.assert_allclose(sc[0, :, 1], 1 / (1 + np.exp(-2.0)), atol=0.01)  # z_cat ~ 8 on red
    # the model answers with refs: only what it wrote is decoded, with the ids it wrote
    # (a chain cannot repeat <ref>, so the script names one class; background channel first)
    m2 = build(tmp_path, answer="<ref>dog</ref><mask>", rows=rows, name="ck2")
    r2 = m2.segment(img, ["cat", "dog"], background=True)
    assert r2.text == "<ref>dog</ref>"
    assert r2.class_names == ["<OTHERS>", "dog"]
    assert r2.class_ids[1] == m2.tokenizer.encode("dog")
    np.testing.assert_array_equal(r2.labels, np.where(want == 2, 1, 0))
    assert r2.model_text().endswith("<mask>(0,4096)(1,2048)</mask>")


def test_depth_ramp(tmp_path):
    bins = [500, 501, 502, 503]  # one bin per colour band: a ramp
    rows = {f"<custom_{b}>": e((j, 1.0)) for j, b in enumerate(bins)}
    m = build(tmp_path, rows=rows)
    img = band_image(ORDER)  # 128 x 64: one band per token row
    want_bins = np.repeat(np.array(bins, np.int32), 2)[:, None].repeat(4, 1)  # x2 grid (8 x 4)
    band = np.repeat(np.array(bins, np.float64), 32)[:, None]  # each pixel's own band bin
    r = m.depth(img, "NYUv2")
    np.testing.assert_array_equal(r.bins, want_bins)
    assert r.depth.shape == (128, 64) and r.depth.dtype == np.float32 and r.metric
    step = 10.0 / 999  # one NYUv2 bin in metres
    assert np.abs(r.depth - (band - 1) * step).max() <= step + 1e-5
    np.testing.assert_allclose(r.depth[:8], (500 - 1) * step, rtol=1e-6)  # band interiors exact
    np.testing.assert_allclose(r.depth[-8:], (503 - 1) * step, rtol=1e-6)
    dd = m.depth(img, "ddad")  # names are case-insensitive
    assert np.abs(dd.depth - (0.05 + (band - 1) * 119.95 / 999)).max() <= 119.95 / 999 + 1e-4
    # open world: log-uniform 0.5-100 m; focal 1000 px doubles the image, depth is unchanged
    o = m.depth(img, focal_length=2000.0)
    logd = lambda b: 0.5 * 200.0 ** ((b - 1) / 999)  # noqa: E731
    assert np.all(np.abs(o.depth - logd(band)) <= logd(band + 1) - logd(band) + 1e-4)
    o2 = m.depth(img, focal_length=1000.0)
    assert o2.bins.shape == (16, 8)
    np.testing.assert_array_equal(o2.bins[::2, ::2], want_bins)
    # same metric depth away from the band transitions (which the finer grid makes narrower)
    for rows in (slice(0, 24), slice(104, 128)):
        np.testing.assert_allclose(o2.depth[rows], o.depth[rows], rtol=1e-6)
    assert np.all(np.abs(o2.depth - logd(band)) <= logd(band + 1) - logd(band) + 1e-4)
    rel = m.depth(img)
    assert not rel.metric
    with pytest.raises(ValueError, match="unknown depth dataset"):
        m.depth(img, "KITTI")
    with pytest.raises(ValueError, match="focal_length"):
        m.depth(img, "NYUv2", focal_length=500.0)


def stripe_image():
    """Blue, with a red stripe over rows 64..95 across the whole width. (A stripe, not a
    square: the 2-D bilinear upsampling of one isolated token rounds its corners, while a
    stripe that crosses the crop has exact 1-D edges.)"""
    img = np.tile(np.array(COLOURS["blue"], np.uint8), (160, 160, 1))
    img[64:96] = COLOURS["red"]
    return img


# the object inside the 1.2x crop window (32..127) of the scripted box (40..119)
OBJECT = (slice(64, 96), slice(32, 128))


FGBG = {"<FG>": e((0, 1.0), (2, -1.0)), "<BG>": e((2, 1.0), (0, -1.0))}


def test_refer_grounding_then_core_target(tmp_path):
    m = build(tmp_path, answer="<box><x_40><y_40><x_119><y_119></box>", rows=FGBG)
    want = np.zeros((160, 160), bool)
    want[OBJECT] = True
    r = m.refer(stripe_image(), "the red stripe", crop_short_side=96, box_color=(0, 0, 255))
    assert r.box == (40, 40, 119, 119)
    assert r.crop_box == (32, 32, 128, 128)  # 1.2x the 80 px box around its centre
    np.testing.assert_array_equal(r.mask, want)
    assert r.crop_labels.shape == (96, 96)
    # the default random-colour outline leaves the answer unchanged here
    np.testing.assert_array_equal(m.refer(stripe_image(), "it", crop_short_side=96, seed=1).mask, want)
    # crop resized to short side 192 (Lanczos) and the mask pasted back nearest
    np.testing.assert_array_equal(m.refer(stripe_image(), "it", crop_short_side=192,
                                          box_color=(0, 0, 255)).mask, want)


def test_segment_open_categories_detection_masks(tmp_path):
    m = build(tmp_path, answer="<ref>cat</ref><box><x_40><y_40><x_119><y_119></box>", rows=FGBG)
    r = m.segment_open(stripe_image(), crop_short_side=96, box_color=(0, 0, 255))
    assert r.class_names == ["<BG>", "cat"]
    assert r.boxes == [("cat", (40, 40, 119, 119))]
    want = np.zeros((160, 160), np.int32)
    want[OBJECT] = 1
    np.testing.assert_array_equal(r.labels, want)


def test_bad_inputs_and_documented_empty_results(tmp_path):
    m = build(tmp_path, rows={"cat": e((0, 1.0))})
    img = band_image(["red", "green"])
    with pytest.raises(ValueError, match="duplicate"):
        m.segment(img, ["cat", "dog", "cat "])
    with pytest.raises(ValueError, match="empty"):
        m.segment(img, ["cat", "  "])
    with pytest.raises(ValueError, match="empty"):
        m.segment(img, [])
    with pytest.raises(TypeError):
        m.segment(img, "cat")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.vision_logits(img, ["cat", m.config.text.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.vision_logits(img, [[-1]])
    with pytest.raises(ValueError, match="300 classes do not fit"):
        m.segment(img, [f"class number {i}" for i in range(300)])
    with pytest.raises(ValueError, match="smaller than one merged"):
        m.segment(np.zeros((20, 64, 3), np.uint8), ["cat"])
    with pytest.raises(TypeError, match="unknown key"):
        m.segment(img, ["cat"], crf=True, crf_params={"sxy": 3})
    with pytest.raises(ValueError, match="scale"):
        m.segment(img, ["cat"], scale=0)
    # no <box> in the answer: an empty mask, box None (documented)
    r = m.refer(img, "anything", crop_short_side=64)
    assert r.box is None and not r.mask.any() and r.mask.shape == (64, 64)
    # no categories: all background
    o = m.segment_open(img)
    assert o.class_names == ["<BG>"] and not o.labels.any()
    bad = build(tmp_path, answer="<box><x_40><y_40></box>", name="bad")
    with pytest.raises(ParseError, match="unparsable box"):
        bad.refer(stripe_image(), "x", crop_short_side=96)


@pytest.mark.parametrize("tied", [True, False])
def test_vision_logits_equal_hidden_times_head_rows(tmp_path, tied):
    """Random weights: the dense path (session accessors, gathered rows) against the
    final hidden states of a separate forward pass times the head read from the file."""
    path = make_checkpoint(tmp_path / "ck", seed=3, tie_word_embeddings=tied, dtype="f32")
    m = densemllm.load(path)
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    entries = ["cat", 7, [11, 12, 11]]
    z = m.vision_logits(img, entries, prompt="Segment: cat.")
    prompt = render_prompt(m, "Segment: cat.")
    hidden = m.forward(prompt, image=img, output="hidden")
    ids = m.tokenizer.expand_image_pads(m.tokenizer.encode(prompt), 6)
    vis = hidden[np.array(ids) == m.config.image_token_id].astype(np.float64)
    w = load_file(str(path / "model.safetensors"))
    head = (w["model.embed_tokens.weight"] if tied else w["lm_head.weight"]).double().numpy()
    groups = [m.tokenizer.encode("cat"), [7], [11, 12, 11]]
    ref = np.stack([(vis @ head[g].T).mean(1) for g in groups], -1).reshape(2, 3, 3)
    # f32 weights: the oneDNN path rounds activations to bf16 only for bf16 weights, so
    # this is f32 accumulation over 64 terms of O(1) values.
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-4)


def test_crop_window_bounds_the_aspect_ratio():
    from densemllm.tasks.refer import MAX_CROP_ASPECT, crop_window

    assert crop_window((10, 10, 49, 49), 192, 192) == (6, 6, 54, 54)  # 1.2 x a 40 px box, centred
    # a 1 px wide, full-height box (what a weak model may answer): widened to 1:4, centred
    x0, y0, x1, y1 = crop_window((100, 0, 100, 191), 192, 192)
    assert (y0, y1) == (0, 192) and x1 - x0 == 192 / MAX_CROP_ASPECT and x0 <= 100 < x1
    # near the border the widened window is shifted inside the image
    assert crop_window((0, 5, 191, 5), 192, 192) == (0, 0, 192, 48)
    # an image narrower than 1:4 itself keeps the whole short side
    assert crop_window((0, 0, 3, 399), 4, 400) == (0, 0, 4, 400)
