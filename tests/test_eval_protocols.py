"""Protocols: what each benchmark asks the model (a recording stub model), the label
mapping back to the dataset's classes, and the whole path model -> protocol -> metric on
constructed checkpoints whose answers are known (tests/test_tasks.py's construction)."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from densemllm.eval import PROTOCOLS, evaluate, map_labels
from densemllm.eval.datasets import tables
from densemllm.eval.protocols import OPEN_WORLD_SEG_PROMPTS, WITHOUT_BACKGROUND
from densemllm.eval.testing import write_png
from densemllm.results import DepthResult, ReferResult, SegmentResult


class StubModel:
    """Records every task call; segment answers with the classes it was given, label =
    a function of the tile so merging can be checked."""

    def __init__(self):
        self.calls = []

    def segment(self, image, classes, background=False, crf=False, scale=1.0, prompt=None, **kw):
        self.calls.append(dict(task="segment", shape=image.shape, classes=list(classes), background=background,
                               crf=crf, scale=scale, prompt=prompt, **kw))
        k = len(self.calls) - 1  # label k everywhere: the k-th class of THIS call's order
        return SegmentResult(np.full(image.shape[:2], k, np.int32), list(classes), [None] * len(classes), "")

    def depth(self, image, dataset=None, **kw):
        self.calls.append(dict(task="depth", shape=image.shape, dataset=dataset, **kw))
        gh, gw = image.shape[0] // 16, image.shape[1] // 16
        bins = np.full((gh, gw), 501, np.int32)
        return DepthResult(np.full(image.shape[:2], np.nan, np.float32), bins, "", dataset)

    def refer(self, image, expression, **kw):
        self.calls.append(dict(task="refer", shape=image.shape, expression=expression, **kw))
        return ReferResult(np.ones(image.shape[:2], bool), (0, 0, 1, 1), "")


def test_segmentation_prompts_scale_crf_and_shuffle():
    m = StubModel()
    ade = tables.ADE20K
    pred = PROTOCOLS["ade20k"].predictor(m, ade)
    img = np.zeros((40, 56, 3), np.uint8)
    out = pred(img, {"id": "ADE_val_00000001"})
    c = m.calls[0]
    assert c["scale"] == 4.0 and c["crf"] is True and c["background"] is False and c["max_new_tokens"] == 1024
    assert sorted(c["classes"]) == sorted(ade["classes"]) and c["classes"] != list(ade["classes"])
    keyword = ", ".join(c["classes"]) + WITHOUT_BACKGROUND
    assert c["prompt"] in [t.format(keyword=keyword) for t in OPEN_WORLD_SEG_PROMPTS]
    # label 0 of the call = its first (shuffled) class, mapped back to the dataset index
    assert (out == ade["classes"].index(c["classes"][0])).all() and out.dtype == np.int32
    # the same image always gets the same prompt; other images other orders and templates
    pred(img, {"id": "ADE_val_00000001"})
    assert m.calls[1]["prompt"] == c["prompt"]
    prompts = {m.calls[-1]["prompt"] for i in range(20) if pred(img, {"id": f"i{i}"}) is not None}
    assert len(prompts) == 20 and len({p.split(":")[0] for p in prompts}) > 3
    # the fixed benchmarks: "Segment: <shuffled names>, without the background class."
    m2 = StubModel()
    PROTOCOLS["voc20"].predictor(m2, tables.VOC20)(img, {"id": "a"})
    c = m2.calls[0]
    assert c["scale"] == 3.0 and c["prompt"] == "Segment: " + ", ".join(c["classes"]) + ", without the background class."
    assert PROTOCOLS["coco_stuff164k"].scale == PROTOCOLS["pascal_context59"].scale == 3.0


def test_cityscapes_two_by_two_crops_merged_back():
    m = StubModel()
    city = tables.CITYSCAPES
    img = np.zeros((65, 130, 3), np.uint8)
    out = PROTOCOLS["cityscapes"].predictor(m, city)(img, {"id": "frankfurt/x"})
    assert [c["shape"][:2] for c in m.calls] == [(32, 65), (32, 65), (33, 65), (33, 65)]
    assert all(c["scale"] == 2.0 for c in m.calls)
    assert len({tuple(c["classes"]) for c in m.calls}) == 4  # each crop its own shuffle
    for k, (ys, xs) in enumerate([(slice(0, 32), slice(0, 65)), (slice(0, 32), slice(65, 130)),
                                  (slice(32, 65), slice(0, 65)), (slice(32, 65), slice(65, 130))]):
        assert (out[ys, xs] == city["classes"].index(m.calls[k]["classes"][k])).all()


def test_map_labels_to_the_dataset_order():
    voc = tables.VOC20["classes"]
    r = SimpleNamespace(class_names=["dog", "<OTHERS>", "unicorn", "Cat ", "horse"],
                        labels=np.array([[0, 1, 2], [3, 4, 0]], np.int32))
    np.testing.assert_array_equal(map_labels(r, voc), [[11, 255, 255], [7, 12, 11]])
    with pytest.raises(ValueError, match="5 classes"):
        map_labels(SimpleNamespace(class_names=r.class_names, labels=np.array([[5]])), voc)


def test_depth_prompt_scale_and_resize_to_the_original():
    m = StubModel()
    img = np.zeros((48, 64, 3), np.uint8)
    d = PROTOCOLS["nyuv2"].predictor(m, tables.NYUV2)(img, {"id": "a"})
    assert m.calls[0]["dataset"] == "NYUv2" and m.calls[0]["shape"][:2] == (144, 192)  # x3
    assert d.shape == (48, 64) and d.dtype == np.float32
    np.testing.assert_allclose(d, 10.0 * 500 / 999, rtol=1e-6)  # bin 501 of 0-10 m
    m2 = StubModel()
    PROTOCOLS["ddad"].predictor(m2, tables.DDAD)(img, {"id": "a"})
    assert m2.calls[0]["dataset"] == "DDAD" and m2.calls[0]["shape"][:2] == (48, 64)
    assert PROTOCOLS["cityscapes_depth"].depth_range() == ("linear", 0.0, 80.0)


def test_refer_protocol():
    m = StubModel()
    p = PROTOCOLS["refcoco"].predictor(m, tables.REFCOCO)
    mask = p(np.zeros((40, 50, 3), np.uint8), {"id": "7-0", "meta": {"expression": "the dog"}})
    p(np.zeros((40, 50, 3), np.uint8), {"id": "7-0", "meta": {"expression": "the dog"}})
    a, b = m.calls
    assert a["expression"] == "the dog" and a["crop_short_side"] == 1280 and a["seed"] == b["seed"]
    assert mask.dtype == bool and mask.shape == (40, 50)


# ---- constructed checkpoints: the whole path with a known answer ----
def _tasks():
    return pytest.importorskip("test_tasks")  # tests/test_tasks.py's checkpoint construction


def test_end_to_end_segmentation_known_miou(tmp_path):
    tt = _tasks()
    m = tt.build(tmp_path, rows={"cat": tt.e((0, 1.0)), "dog": tt.e((1, 1.0))})
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages").mkdir(parents=True)
    Image.fromarray(tt.band_image(["red", "green"])).save(base / "JPEGImages" / "2007_000001.jpg", quality=95)
    raw = np.full((64, 64), 8, np.uint8)  # VOC file values: 8 = cat (index 7), 12 = dog, 13 = horse
    raw[32:, :32], raw[32:, 32:] = 12, 13
    write_png(base / "SegmentationClass" / "2007_000001.png", raw, palette=[0] * 768)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n")
    proto = PROTOCOLS["voc20"].replace(crf=False, max_new_tokens=8)
    r = evaluate(m, "voc20", data_root=tmp_path, protocol=proto, out=tmp_path / "out", progress=False)
    # the model sees the x3 image (red rows -> cat, green rows -> dog); labels back at 64x64:
    # cat I=U=2048 -> 1; dog I=1024, U=2048 -> 1/2; horse I=0 -> 0 (predicted nowhere, U=1024)
    assert r.metrics["IoU.cat"] == 100.0 and r.metrics["IoU.dog"] == 50.0 and r.metrics["IoU.horse"] == 0.0
    assert r.metrics["mIoU"] == pytest.approx(50.0, abs=1e-12)
    assert r.metrics["aAcc"] == pytest.approx(75.0, abs=1e-12)
    assert r.metrics["mAcc"] == pytest.approx(200 / 3, abs=1e-12)
    # a model that names one class in its answer: only that one is decoded -> all pixels dog
    m2 = tt.build(tmp_path, answer="<ref>dog</ref><mask>", rows={"cat": tt.e((0, 1.0)), "dog": tt.e((1, 1.0))},
                  name="ck2")
    r2 = evaluate(m2, "voc20", data_root=tmp_path, protocol=proto, out=tmp_path / "out", progress=False)
    assert r2.metrics["IoU.dog"] == 25.0 and r2.metrics["IoU.cat"] == 0.0
    assert r2.metrics["aAcc"] == pytest.approx(25.0, abs=1e-12)


def test_end_to_end_depth_known_delta1(tmp_path):
    tt = _tasks()
    bins = [500, 501, 502, 503]
    m = tt.build(tmp_path, rows={f"<custom_{b}>": tt.e((j, 1.0)) for j, b in enumerate(bins)})
    base = tmp_path / "ddad" / "val"
    (base / "rgb").mkdir(parents=True)
    (base / "depth").mkdir()
    Image.fromarray(tt.band_image(tt.ORDER)).save(base / "rgb" / "000001_CAMERA_01.png")
    band = 0.05 + (np.repeat(np.array(bins, np.float64), 32)[:, None].repeat(64, 1) - 1) * 119.95 / 999
    gt = band.copy()
    gt[:64] *= 1.3  # the top half 30 % farther than the model says: outside delta < 1.25
    np.save(base / "depth" / "000001_CAMERA_01.npy", gt.astype(np.float32))
    r = evaluate(m, "ddad", data_root=tmp_path, out=tmp_path / "out", progress=False)
    assert r.metrics["d1"] == 0.5
    # |pred - gt| / gt is 0.3 / 1.3 on the top half and ~0 below (band edges interpolate one bin, 0.2 %)
    assert r.metrics["abs_rel"] == pytest.approx(0.5 * 0.3 / 1.3, abs=2e-3)


def test_end_to_end_referring_known_ciou(tmp_path):
    tt = _tasks()
    m = tt.build(tmp_path, answer="<box><x_40><y_40><x_119><y_119></box>", rows=tt.FGBG)
    imgdir = tmp_path / "images" / "mscoco" / "images" / "train2014"
    imgdir.mkdir(parents=True)
    Image.fromarray(tt.stripe_image()).save(imgdir / "COCO_train2014_000000000001.png")
    poly = [[0, 64, 160, 64, 160, 96, 0, 96]]  # the whole red stripe, rows 64..95
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.png", "height": 160, "width": 160}],
        "annotations": [{"id": 5, "image_id": 1, "segmentation": poly, "category_id": 1, "iscrowd": 0}]}))
    import pickle

    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([{
        "ref_id": 3, "ann_id": 5, "image_id": 1, "split": "val", "category_id": 1,
        "sentences": [{"sent_id": 9, "sent": "the red stripe", "raw": "The red stripe", "tokens": []}]}], protocol=2))
    proto = PROTOCOLS["refcoco"].replace(crop_short_side=96)
    r = evaluate(m, "refcoco", data_root=tmp_path, protocol=proto, out=tmp_path / "out", progress=False)
    # the mask is the stripe inside the 1.2x crop window (cols 32..127): I = 32*96, U = 32*160
    assert r.metrics["cIoU"] == pytest.approx(0.6, abs=1e-15) and r.metrics["gIoU"] == pytest.approx(0.6, abs=1e-15)
    assert Path(r.files["markdown"]).read_text().count("0.807") == 1  # the paper's RefCOCO val beside ours
