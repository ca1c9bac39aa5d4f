"""The densemllm command, run as a subprocess on tiny checkpoints."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densemllm.testing import make_checkpoint
from test_tasks import COLOURS, band_image, build, e

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "densemllm.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_help_documents_every_option(tmp_path):
    r = cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    for cmd in ("segment", "depth", "refer", "segment-open", "chat", "demo"):
        assert f"=== densemllm {cmd} ===" in r.stdout
    for opt in ("--model", "--classes", "--background", "--scale", "--prompt", "--all-classes", "--dataset",
                "--focal-length", "--expression", "--crop-short-side", "--max-boxes", "--text", "--out-dir",
                "--threads", "--backend", "--max-new-tokens", "--out", "--seed"):
        assert opt in r.stdout, opt


def test_segment_writes_exact_labels_picture_and_text(tmp_path):
    model = build(tmp_path, rows={"cat": e((0, 1.0)), "dog": e((1, 1.0))})
    Image.fromarray(band_image(["red", "green"])).save(tmp_path / "in.png")
    r = cli("segment", "--model", model.path, "in.png", "--classes", "cat,dog", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    labels = np.load(tmp_path / "in.segment.npy")
    want = np.zeros((64, 64), np.int32)
    want[32:] = 1
    np.testing.assert_array_equal(labels, want)
    assert Image.open(tmp_path / "in.segment.png").size[1] == 64
    assert (tmp_path / "in.segment.txt").read_text().strip() == "<mask>(0,2048)(1,2048)</mask>"
    assert "0=cat (50.0%)" in r.stdout


def test_other_commands_on_a_random_checkpoint(tmp_path):
    ck = make_checkpoint(tmp_path / "ck", seed=1)
    img = np.tile(np.array(COLOURS["blue"], np.uint8), (64, 96, 1))
    Image.fromarray(img).save(tmp_path / "x.png")
    r = cli("depth", "--model", ck, "x.png", "--dataset", "NYUv2", "--out", "o/d", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = np.load(tmp_path / "o/d.npy")
    assert d.shape == (64, 96) and d.dtype == np.float32 and np.nanmax(d) <= 10.0
    assert (tmp_path / "o/d.png").exists()
    r = cli("refer", "--model", ck, "x.png", "--expression", "the sky", "--crop-short-side", "64",
            "--max-new-tokens", "6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "x.refer.npy").dtype == bool
    r = cli("segment-open", "--model", ck, "x.png", "--max-new-tokens", "6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "x.segment-open.npy").shape == (64, 96)
    r = cli("chat", "--model", ck, "x.png", "--text", "What is it?", "--max-new-tokens", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # chat --out writes the answer; --out DIR/ puts the default names inside DIR
    r = cli("chat", "--model", ck, "x.png", "--text", "What is it?", "--max-new-tokens", "4", "--out", "c",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c.txt").read_text().strip() == r.stdout.splitlines()[0].strip()
    r = cli("depth", "--model", ck, "x.png", "--max-new-tokens", "2", "--out", "outdir/", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "outdir" / "x.depth.npy").exists() and not (tmp_path / "outdir.npy").exists()
    r = cli("depth", "--model", ck, "x.png", "--max-new-tokens", "2", "--out", "outdir", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # an existing directory, no slash
    assert not (tmp_path / "outdir.npy").exists()


def test_errors_exit_2_with_a_message(tmp_path):
    ck = make_checkpoint(tmp_path / "ck", seed=1)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "tiny.png")
    r = cli("segment", "--model", ck, "tiny.png", "--classes", "a,b", cwd=tmp_path)
    assert r.returncode == 2 and "smaller than one merged" in r.stderr
    r = cli("segment", "--model", ck, "missing.png", "--classes", "a", cwd=tmp_path)
    assert r.returncode == 2 and "missing.png" in r.stderr
    (tmp_path / "adir").mkdir()
    r = cli("segment", "--model", ck, "adir", "--classes", "a", cwd=tmp_path)
    assert r.returncode == 2 and "is a directory" in r.stderr
    r = cli("depth", "--model", ck, "tiny.png", "--dataset", "KITTI", cwd=tmp_path)
    assert r.returncode == 2  # argparse rejects the choice


def test_demo_says_weights_are_random(tmp_path):
    r = cli("demo", "--out-dir", tmp_path / "demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from densemllm.data import default_model, scenes, tables

    if default_model.trained_weights() is None:
        assert "RANDOM weights" in r.stdout
    else:  # the shipped model: no untrained label, and its recorded held-out metrics beside the aims
        assert "UNTRAINED" not in r.stdout and "RANDOM" not in r.stdout
        n = default_model.heldout_metrics()["n_scenes"]
        assert f"its held-out metrics ({n} procedural scenes" in r.stdout and "(aim 80.0)" in r.stdout
    labels = np.load(tmp_path / "demo" / "demo.segment.npy")
    assert labels.shape == scenes.DEFAULT_SIZE and labels.max() < len(tables.CLASSES)
    for name in ("image", "segment", "depth", "refer", "segment.truth", "depth.truth"):
        assert (tmp_path / "demo" / f"demo.{name}.png").is_file(), name
    assert "mIoU" in r.stdout


def test_viz_pictures():
    from densemllm import viz

    rgb = np.zeros((20, 30, 3), np.uint8)
    lab = np.zeros((20, 30), np.int32)
    lab[10:] = 2
    pal = viz.palette(3)
    assert len({tuple(c) for c in pal}) == 3
    img = np.asarray(viz.overlay_labels(rgb, lab, ["a", "b", "c"], alpha=1.0))
    assert img.shape[0] >= 20 and img.shape[1] > 30  # legend to the right
    np.testing.assert_array_equal(img[0, 0], pal[0])
    np.testing.assert_array_equal(img[19, 29], pal[2])
    bg = np.asarray(viz.overlay_labels(rgb, lab, ["a", "b", "c"], alpha=1.0, background_label=0))
    np.testing.assert_array_equal(bg[0, 0], [0, 0, 0])  # background left as the image
    d = np.linspace(1, 5, 600, dtype=np.float32).reshape(20, 30)
    d[0, 0] = np.nan
    dep = np.asarray(viz.colorize_depth(d))
    np.testing.assert_array_equal(dep[0, 0], [0, 0, 0])  # invalid = black
    assert dep[19, 29].sum() > dep[0, 1].sum()  # far is brighter than near
    assert dep.shape[1] > 30  # scale bar
    with pytest.raises(ValueError):
        viz.overlay_labels(rgb, lab[:5], ["a"])
    m = np.asarray(viz.overlay_mask(rgb, lab == 2, box=(2, 2, 10, 10), alpha=1.0))
    np.testing.assert_array_equal(m[15, 15], [255, 0, 0])
    np.testing.assert_array_equal(m[2, 5], [0, 255, 0])
