"""Training examples and vision targets of the default model (no training here: the
runs are scripts, examples/train_default_model.py)."""
import numpy as np
import pytest

import densemllm
from densemllm import _core
from densemllm.data import default_model as dm
from densemllm.data import prompts, scenes
from densemllm.data import tables as T
from densemllm.data.train_default import Recipe, example_stream, sample_arrays, vision_targets


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return densemllm.load(dm.make_default_checkpoint(tmp_path_factory.mktemp("m") / "ck", dtype="bf16"))


def test_segment_targets_are_multi_label_at_token_boundaries(model):
    s = scenes.heldout_scene(3)
    ex = prompts.segment_example(s, np.random.default_rng(0), subset_p=0.0)
    ex.labels = np.zeros((128, 128), np.uint8)
    ex.labels[:, 24:] = 1                      # the boundary cuts token column 1 (px 16..31)
    ex.labels[:16, :16] = T.IGNORE_INDEX       # token 0 wholly ignored
    pos, valid, single = vision_targets(model, ex, (128, 128), (16, 16))
    ids = [model.tokenizer.encode(n)[0] for n in ex.classes]
    assert len(pos) == 64 and sorted(valid) == sorted(ids)
    assert list(pos[0]) == [] and single[0] == -1
    assert list(pos[1]) == sorted(ids[:2]) and single[1] == ids[0]   # 8 px of each: the first wins the tie
    assert list(pos[2]) == [ids[1]]
    assert list(pos[8]) == [ids[0]]


def test_depth_targets_invert_the_dequantisation(model):
    ex = prompts.depth_example(scenes.heldout_scene(0))
    H, W = scenes.DEFAULT_SIZE
    pos, valid, single = vision_targets(model, ex, (H, W), (H // 8, W // 8))  # patch 8, merged tokens of 16 px
    bins = {model.tokenizer.token_to_id(f"<custom_{b}>"): b for b in range(1, 1001)}
    assert len(valid) == 1000
    reg = ex.depth.reshape(H // 16, 16, W // 16, 16).transpose(0, 2, 1, 3).reshape(-1, 256)
    assert len(reg) == len(pos)
    for p, r in zip(pos, reg):
        v = r[r > 0]
        if not v.size:
            assert len(p) == 0
            continue
        b = np.array([bins[int(p[0])]], np.float32)
        d = _core.dense_depth_dequantize(b, "linear", 0.0, 10.0, 1000, 1.0)[0]
        assert abs(d - np.median(v)) <= 0.5 * 10.0 / 999 + 1e-6  # within half a bin


def test_core_targets_and_sample_arrays(model):
    s = scenes.heldout_scene(7)
    ex = prompts.core_example(s, s.referring[0].object_id, np.random.default_rng(1))
    ids, labels, pre, (pos, valid, single) = sample_arrays(model, ex)
    bg, fg = model.tokenizer.token_to_id("<BG>"), model.tokenizer.token_to_id("<FG>")
    gh2, gw2 = pre.grid[0] // 2, pre.grid[1] // 2
    assert len(pos) == gh2 * gw2 and sorted(valid) == sorted([bg, fg])
    assert any(list(p) == [fg] for p in pos) and any(list(p) == [bg] for p in pos)
    # the text loss covers exactly the answer; one image pad in the prompt
    n = labels.count(-100)
    assert model.tokenizer.decode(ids[n:]) == prompts.CORE_ANSWER
    assert ids.count(model.config.image_token_id) == 1
    g = prompts.ground_example(s, s.referring[0])
    ids, labels, _, vt = sample_arrays(model, g)
    assert vt is None and ids[-1] == model.config.eos_token_id[0]
    box = s.object(s.referring[0].object_id).box
    assert densemllm.parse.parse_boxes(model.tokenizer.decode(ids[labels.count(-100):])) == [box]


def test_example_stream_is_seeded_and_follows_the_mix():
    r = Recipe(seed=3, mix={"segment": 1, "depth": 1, "core": 1, "ground": 1})
    a = [e for _, e in zip(range(40), example_stream(r))]
    b = [e for _, e in zip(range(40), example_stream(r))]
    assert [(e.task, e.prompt, e.answer) for e in a] == [(e.task, e.prompt, e.answer) for e in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert {e.task for e in a} == set(prompts.TASKS)
    with pytest.raises(ValueError, match="mix"):
        next(example_stream(Recipe(mix={"segment": 1, "colour": 1})))
