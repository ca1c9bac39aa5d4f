"""The trainer end to end on a tiny checkpoint (densemllm.testing.make_checkpoint, f32).

Constructed data: 96 x 96 images (3 x 3 merged vision tokens of 32 px), each token's
block randomly "sky" (blue) or "road" (grey) with pixel noise; the label map follows.
Prompt "Segment: sky, road, without the background class.", answer "The target
categories include <ref>sky</ref><ref>road</ref>.<mask>" (the model's answer format;
generation stops at <mask>). Held-out images come from other seeds.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import densemllm
from densemllm.testing import make_checkpoint
from densemllm.train import Sample, Trainer
from densemllm.train import checkpoint as ck
from densemllm.train.samples import IGNORE_INDEX, encode
from densemllm.train.targets import Segmentation

CLASSES = ["sky", "road"]
COLOURS = np.array([[70, 130, 230], [120, 120, 120]])
PROMPT = "Segment: sky, road, without the background class."
ANSWER = "The target categories include <ref>sky</ref><ref>road</ref>.<mask>"


def scene(seed, n=3):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 2, (n, n))
    lab[0, 0], lab[-1, -1] = 0, 1  # both classes in every image
    lm = np.kron(lab, np.ones((32, 32), np.int64))
    img = np.clip(COLOURS[lm] + rng.integers(-20, 21, lm.shape + (3,)), 0, 255).astype(np.uint8)
    return img, lm


def dataset(n=32, seed0=0):
    return [Sample(img, PROMPT, ANSWER, dense=Segmentation(lm, CLASSES)) for img, lm in
            (scene(seed0 + i) for i in range(n))]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tr") / "tiny", dtype="f32")


@pytest.fixture(scope="module")
def trained(ckpt, tmp_path_factory):
    """200 steps of 2 accumulated samples; the saved result and its log."""
    out = tmp_path_factory.mktemp("run")
    tr = Trainer(ckpt, lr=2e-3, warmup=10, total_steps=200, batch_size=2, threads=1)
    stats = tr.fit(dataset(), log=out / "log.jsonl", progress=False)
    tr.save(out / "final")
    return tr, stats, out


def miou(pairs, n_classes=2):
    inter, union = np.zeros(n_classes), np.zeros(n_classes)
    for pred, gt in pairs:  # mmsegmentation: intersections and unions summed over the split
        for c in range(n_classes):
            inter[c] += ((pred == c) & (gt == c)).sum()
            union[c] += ((pred == c) | (gt == c)).sum()
    return float((inter / union).mean())


def test_sample_uses_the_inference_prompt(ckpt):
    """Same chat template and pad expansion as inference; labels on the answer only."""
    from densemllm.llm import _prompt_ids
    from densemllm.tasks.common import render_prompt

    model = densemllm.load(ckpt)
    img, lm = scene(0)
    e = encode(model, Sample(img, PROMPT, ANSWER, dense=Segmentation(lm, CLASSES)))
    n_prompt = e.meta["prompt_tokens"]
    want = _prompt_ids(model, render_prompt(model, PROMPT), 9)  # what prefill() runs
    np.testing.assert_array_equal(e.input_ids[:n_prompt], want)
    assert (e.labels[:n_prompt] == IGNORE_INDEX).all()
    ans = e.input_ids[n_prompt:]
    np.testing.assert_array_equal(e.labels[n_prompt:], ans)
    # the turn ends with the template's end-of-turn id (the Youtu template: <|end_of_text|>)
    assert model.tokenizer.decode(ans) == ANSWER + "<|end_of_text|>"
    assert e.n_text == len(ans) and e.n_vision == 9


def test_training_learns_segmentation_and_answer(trained):
    tr, stats, out = trained
    first, last = stats[0]["loss"], np.mean([s["loss"] for s in stats[-5:]])
    print(f"loss {first:.3f} -> {last:.4f} ({first / last:.0f}x)")
    assert first / last >= 10
    model = densemllm.load(out / "final")
    pairs = []
    for seed in range(1000, 1008):
        img, lm = scene(seed)
        r = model.segment(img, CLASSES, do_sample=False)
        assert r.class_names == CLASSES
        pairs.append((r.labels, lm))
    m = miou(pairs)
    print(f"held-out mIoU {m:.3f}")
    assert m >= 0.9  # bilinear upsampling of the 3 x 3 token grid blurs the block edges
    text = model.chat(scene(2000)[0], PROMPT, do_sample=False, max_new_tokens=40)
    assert text == ANSWER
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 201)) and log[-1]["loss"] == stats[-1]["loss"]


def test_saved_checkpoint_gives_the_trainers_model(trained):
    """f32 save is bit-exact; densemllm.load of it computes the trainer's losses from its
    own logits to <= 1e-6; transformers' YoutuForCausalLM gives the same logits (<= 1e-4)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from test_llm import F32_TOL, hf_model, ref_logits, rel_err

    tr, _, out = trained
    params = {k: v for k, v in _read_model(out / "final").items()}
    for n, a in tr.tm.params().items():
        np.testing.assert_array_equal(params[n], a)
    model = densemllm.load(out / "final")
    img, lm = scene(3000)
    e = encode(model, Sample(img, PROMPT, ANSWER, dense=Segmentation(lm, CLASSES)))
    tr.tm.zero_grad()
    o = tr.tm.forward_backward(e.input_ids, image=e.pre, labels=e.labels, vision_targets=e.targets.positives,
                               vision_valid=e.targets.valid_per_token())
    z = model.forward(e.input_ids, image=img).astype(np.float64)
    rows = np.flatnonzero(e.labels[1:] != IGNORE_INDEX)
    lse = np.log(np.exp(z[rows] - z[rows].max(1, keepdims=True)).sum(1)) + z[rows].max(1)
    ce = float(np.mean(lse - z[rows, e.labels[rows + 1]]))
    assert abs(ce - o.text_loss) <= 1e-6 * max(1.0, abs(ce))
    vis = np.flatnonzero(e.input_ids == model.config.image_token_id)
    vl, _ = densemllm.ntpm_loss(np.ascontiguousarray(z[vis], np.float32), e.targets.positives,
                                valid=e.targets.valid_per_token(), reduction="mean", grad=False)
    assert abs(vl - o.vision_loss) <= 1e-6 * max(1.0, abs(vl))
    # transformers: the language model with the same inputs_embeds
    ref = hf_model(out / "final")
    emb = model.encode_image(img)
    want = ref_logits(ref, e.input_ids, emb, model.config.image_token_id)
    got = model.forward(e.input_ids, image_embeds=emb)
    print(f"transformers rel err {rel_err(got, want):.2e}")
    assert rel_err(got, want) <= F32_TOL


def _read_model(d):
    import safetensors.numpy

    return safetensors.numpy.load_file(str(d / "model.safetensors"))


def test_resume_is_bit_exact(ckpt, tmp_path):
    data = dataset(8, seed0=50)
    kw = dict(lr=1e-3, warmup=3, total_steps=12, batch_size=2, threads=1, weight_decay=0.01)
    a = Trainer(ckpt, **kw)
    a.fit(data, progress=False)
    b = Trainer(ckpt, **kw)
    b.fit(data, steps=5, progress=False)
    b.save(tmp_path / "mid")
    del b
    c = Trainer.resume(tmp_path / "mid", threads=1)
    assert c.step_count == 5
    c.fit(data, progress=False)
    assert c.step_count == 12
    pa, pc = a.tm.params(), c.tm.params()
    for n in pa:
        np.testing.assert_array_equal(pa[n], pc[n], err_msg=n)
    for n in a.optimizer.m:
        np.testing.assert_array_equal(a.optimizer.m[n], c.optimizer.m[n])
        np.testing.assert_array_equal(a.optimizer.v[n], c.optimizer.v[n])


def test_bad_input(ckpt, tmp_path):
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        Trainer(ckpt, lr=0.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        Trainer(ckpt, lr=-1e-4)
    with pytest.raises(ValueError, match=r"total_steps \(5\) must be >= warmup \(10\)"):
        Trainer(ckpt, warmup=10, total_steps=5)
    with pytest.raises(ValueError, match="freeze: unknown part"):
        Trainer(ckpt, freeze=["decoder"])
    with pytest.raises(ValueError, match="loss must be one of"):
        Trainer(ckpt, loss="dice")
    # a resume directory from another model
    tr = Trainer(ckpt, total_steps=2, threads=1)
    tr.step(dataset(1)[0])
    tr.save(tmp_path / "a")
    other = make_checkpoint(tmp_path / "other", dtype="f32", hidden_size=32, vision={"out_hidden_size": 32})
    with pytest.raises(ValueError, match="holds the state of another model"):
        Trainer.resume(tmp_path / "a", model_dir=other)
    # a checkpoint whose files do not belong together fails loudly
    opt = tmp_path / "a" / "optimizer.safetensors"
    blob = bytearray(opt.read_bytes())
    blob[-1] ^= 1
    opt.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="optimizer.safetensors does not match trainer_state.json"):
        Trainer.resume(tmp_path / "a")


def test_interrupted_save_leaves_the_old_checkpoint(ckpt, tmp_path, monkeypatch):
    tr = Trainer(ckpt, total_steps=3, threads=1)
    tr.step(dataset(1)[0])
    tr.save(tmp_path / "c")
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    tr.step(dataset(2)[1])
    real = ck.atomic_write
    calls = []

    def dying(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed mid-save")
        real(path, data)

    monkeypatch.setattr(ck, "atomic_write", dying)
    with pytest.raises(KeyboardInterrupt):
        tr.save(tmp_path / "c")
    monkeypatch.setattr(ck, "atomic_write", real)
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert Trainer.resume(tmp_path / "c", threads=1).step_count == 1


def test_freeze_leaves_parts_untouched(ckpt):
    tr = Trainer(ckpt, lr=1e-3, total_steps=2, freeze=["vision", "merger"], threads=1)
    before = {n: a.copy() for n, a in tr.tm.params().items()}
    st = tr.step(dataset(2))
    assert st["samples"] == 2 and st["grad_norm"] > 0
    for n, a in tr.tm.params().items():
        frozen = n.startswith(("siglip2.", "vision_model.", "merger."))
        assert np.array_equal(a, before[n]) == frozen, n


def test_loss_curve_png(trained, tmp_path):
    from densemllm.train.trainer import plot_losses

    _, _, out = trained
    png = plot_losses(out / "log.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_train(ckpt, tmp_path, capsys):
    from PIL import Image

    from densemllm.cli import main

    rows = []
    for i in range(3):
        img, lm = scene(100 + i)
        Image.fromarray(img).save(tmp_path / f"img{i}.png")
        np.save(tmp_path / f"lab{i}.npy", lm)
        rows.append({"image": f"img{i}.png", "prompt": PROMPT, "answer": ANSWER,
                     "dense": {"type": "segmentation", "label_map": f"lab{i}.npy", "classes": CLASSES}})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": str(ckpt), "data": "data.jsonl", "out": "run", "threads": 1,
           "trainer": {"lr": 1e-3, "warmup": 1, "total_steps": 4, "batch_size": 2}}
    (tmp_path / "train.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "train.json"), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert len((run / "log.jsonl").read_text().splitlines()) == 4
    assert (run / "loss.png").is_file()
    densemllm.load(run / "final")
    # resume continues from run/final; a bad config names the problem
    cfg.update(resume=True, steps=2)
    (tmp_path / "train.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "train.json"), "--no-progress"]) == 0
    assert json.loads((run / "final" / "trainer_state.json").read_text())["step"] == 6
    (tmp_path / "bad.json").write_text(json.dumps({"model": str(ckpt), "data": "data.jsonl", "out": "r",
                                                   "trainer": {"lr": -1}}))
    assert main(["train", str(tmp_path / "bad.json")]) == 2
    assert "lr must be > 0" in capsys.readouterr().err


def test_bf16_export_loads_and_does_not_resume(trained, tmp_path):
    tr, _, out = trained
    tr.save(tmp_path / "bf16", dtype="bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    a = densemllm.load(out / "final")
    b = densemllm.load(tmp_path / "bf16", dtype="f32")
    img = scene(4000)[0]
    assert b.chat(img, PROMPT, do_sample=False, max_new_tokens=40) == ANSWER
    za = a.vision_logits(img, CLASSES, prompt=PROMPT)
    zb = b.vision_logits(img, CLASSES, prompt=PROMPT)
    assert np.abs(za - zb).max() <= 0.05 * np.abs(za).max()  # bf16 weights: ~3 significant digits
    with pytest.raises(ValueError, match="only f32 checkpoints resume exactly"):
        Trainer.resume(tmp_path / "bf16")


def test_loaded_logits_equal_the_trainers_own(tmp_path):
    """The trainer's own logits of one row, read off its head gradient, equal those of
    densemllm.load(saved) (untied head: with one counted row t and target y, the
    lm_head gradient is (softmax(z_t) - e_y) h_t^T, so row v is p_v h_t for v != y and
    z_v - z_u = log(g_v . g_u / g_u . g_u)). The bound is absolute on these differences
    and dominated by the read-off's own f32 error (see below); the 1e-6 acceptance check
    on the losses is test_saved_checkpoint_gives_the_trainers_model."""
    path = make_checkpoint(tmp_path / "untied", dtype="f32", tie_word_embeddings=False)
    tr = Trainer(path, lr=1e-3, total_steps=3, threads=1)
    for s in dataset(3):
        tr.step(s)  # the masters are no longer the file's
    tr.save(tmp_path / "saved")
    img, lm = scene(7)
    e = tr.encode(Sample(img, PROMPT, ANSWER))
    t = len(e.input_ids) - 3
    labels = np.full(len(e.input_ids), IGNORE_INDEX)
    labels[t + 1] = e.input_ids[t + 1]
    tr.tm.zero_grad()
    tr.tm.forward_backward(e.input_ids, image=e.pre, labels=labels)
    g = tr.tm.grads()["lm_head.weight"].astype(np.float64)
    y = int(labels[t + 1])
    others = np.array([v for v in range(g.shape[0]) if v != y])
    u = int(others[np.argmax(np.linalg.norm(g[others], axis=1))])  # the most precise reference row
    own = np.log(g[others] @ g[u] / (g[u] @ g[u]))  # z_v - z_u, trainer's own
    z = densemllm.load(tmp_path / "saved").forward(e.input_ids, image=img)[t].astype(np.float64)
    loaded = z[others] - z[u]
    err = np.abs(own - loaded).max()
    print(f"own vs loaded logit differences: max |diff| = {err:.1e} (max |z| = {np.abs(z).max():.2f})")
    # the read-off itself has an error: the head's softmax p is f32 from an exp of ~2 ulp
    # (<= ~3 ulp = 3.6e-7 relative per p), a log ratio of two of them <= 7.2e-7, the f32
    # gradient rows and the loaded f32 logits add ~2.5e-7: 1.5e-6 bounds the measurement
    assert err <= 1.5e-6
