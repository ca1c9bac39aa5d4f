"""The small default model: architecture from its config, tokenizer with every special
token, package files in sync with the builder, and the path through the dense tasks."""
import json

import numpy as np
import pytest

import densemllm
from densemllm.data import default_model as dm
from densemllm.data import prompts, scenes
from densemllm.data import tables as T
from densemllm.testing import special_token_list


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return dm.make_default_checkpoint(tmp_path_factory.mktemp("dm") / "ck", dtype="bf16")


def test_package_files_match_the_builder(tmp_path):
    # config and tokenizer rebuild identically (deterministic BPE); the chat template is
    # the package's own (a trained model keeps the template it was trained with)
    fresh = dm.write_package_files(tmp_path)
    for f in ("config.json", "tokenizer.json"):
        assert json.loads((dm.DEFAULT_DIR / f).read_text()) == json.loads((fresh / f).read_text()), f
    assert "chat_template" in json.loads((dm.DEFAULT_DIR / "tokenizer_config.json").read_text())


def test_init_checkpoint_uses_the_package_files(ckpt):
    for f in dm.PACKAGE_FILES:
        assert (ckpt / f).read_bytes() == (dm.DEFAULT_DIR / f).read_bytes(), f


def test_tokenizer_holds_every_special_token_and_ids_come_from_the_config(ckpt):
    m = densemllm.load(ckpt)
    special, task = special_token_list()
    for t in special + task:
        assert m.tokenizer.token_to_id(t) is not None, t
    c = m.config
    assert c.image_token_id == m.tokenizer.token_to_id("<|image_pad|>")
    assert c.vision.patch_size == 8 and c.text.q_lora_rank == dm.TEXT["q_lora_rank"]
    # class names are single tokens after <ref> (one id per class for dense decoding)
    for name in T.CLASSES:
        assert len(m.tokenizer.encode(name)) == 1, name


def test_train_init(ckpt):
    rng = np.random.default_rng(0)
    assert np.all(dm.train_init(rng, "model.layers.0.input_layernorm.weight", (4,)) == 1)
    assert np.all(dm.train_init(rng, "merger.mlp.0.bias", (4,)) == 0)
    big = dm.train_init(rng, "model.layers.0.mlp.down_proj.weight", (256, 768))
    np.testing.assert_allclose(big.std(), 0.02 / np.sqrt(2 * dm.TEXT["num_hidden_layers"]), rtol=0.02)


def test_dense_tasks_run_on_the_default_architecture(ckpt):
    m = densemllm.load(ckpt)
    s = scenes.heldout_scene(0)
    r = m.segment(s.image, list(T.CLASSES), max_new_tokens=4, all_classes=True)
    H, W = scenes.DEFAULT_SIZE
    assert r.labels.shape == s.labels.shape and r.logits.shape[:2] == (H // 16, W // 16)  # 16 px tokens
    d = m.depth(s.image, T.DEPTH_DATASET, max_new_tokens=4)
    assert d.bins.shape == (H // 8, W // 8) and np.nanmax(d.depth) <= T.DEPTH_MAX_M
    ex = prompts.core_example(s, s.referring[0].object_id, np.random.default_rng(0))
    assert min(ex.image.shape[:2]) == prompts.DEFAULT_CROP_SHORT_SIDE and ex.mask.shape == ex.image.shape[:2]
    assert ex.mask.any()


def test_load_without_path():
    if dm.trained_weights() is None:
        with pytest.raises(dm.DefaultModelMissing, match="model.safetensors"):
            densemllm.load()
    else:
        m = densemllm.load()
        assert m.config.vision.patch_size == 8
        assert dm.training_record().get("seed") is not None


def test_results_display_themselves(ckpt):
    import io

    from PIL import Image

    from densemllm import viz

    m = densemllm.load(ckpt)
    s = scenes.heldout_scene(1)
    r = m.segment(s.image, list(T.CLASSES), max_new_tokens=2, all_classes=True)
    H, W = s.labels.shape
    png = Image.open(io.BytesIO(r._repr_png_()))
    assert png.size[1] == H and png.size[0] > W  # the overlay and its legend
    # the overlay is drawn over the input image, not a blank canvas
    np.testing.assert_array_equal(np.asarray(r.show())[:H, :W], np.asarray(
        viz.overlay_labels(s.image, r.labels, r.class_names))[:H, :W])
    d = m.depth(s.image, T.DEPTH_DATASET, max_new_tokens=2)
    assert Image.open(io.BytesIO(d._repr_png_())).size[0] > W  # with its scale bar


def test_install_puts_weights_and_heldout_metrics_beside_the_package_files(tmp_path, ckpt):
    import shutil

    from densemllm.data import demo, train_default

    dest = tmp_path / "pkg"
    dest.mkdir()
    for f in dm.PACKAGE_FILES:
        shutil.copyfile(dm.DEFAULT_DIR / f, dest / f)
    assert dm.trained_weights(dest) is None and dm.heldout_metrics(dest) == {}
    held = {"scenes": {"mIoU": 12.5}, "scenes_depth": {"d1": 0.25}, "n_scenes": 3}
    train_default.install(ckpt, held, dest=dest)
    assert dm.trained_weights(dest) == dest / dm.WEIGHTS
    assert dm.heldout_metrics(dest) == held
    line = demo.held_out_line(held)
    assert "3 procedural scenes" in line and "mIoU 12.5 (aim 80.0)" in line and "delta1 0.250 (aim 0.900)" in line
    assert "cIoU" not in line  # not measured -> not printed
    train_default.install(ckpt, None, dest=dest)  # new weights without metrics: the old metrics go
    assert dm.heldout_metrics(dest) == {}
    (dest / "config.json").write_text(json.dumps({"model_type": "other"}))
    with pytest.raises(ValueError, match="not the default model's config"):
        train_default.install(ckpt, held, dest=dest)
