"""Dataset readers on miniature copies of each real layout (written by
densemllm.eval.testing with the real naming quirks), the restricted unpickler, COCO
masks (ours vs pycocotools), and the errors for bad input."""
import os
import pickle
import shutil

import numpy as np
import pytest

from densemllm.eval import datasets as D
from densemllm.eval import testing as T
from densemllm.eval.datasets import tables
from densemllm.eval.datasets.coco_mask import have_pycocotools, polygon_counts, segmentation_to_mask, string_to_counts
from densemllm.eval.datasets.base import DatasetError
from densemllm.eval.datasets.safe_pickle import UnsafePickleError, load_plain_pickle

LAYOUTS = [  # (dataset, writer, data_root below tmp, expected ids)
    ("ade20k", T.make_ade20k, "", ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]),
    ("ade20k", T.make_ade20k, "ADEChallengeData2016", None),  # data_root may point at the inner folder
    ("coco_stuff164k", T.make_coco_stuff164k, "", ["000000000139", "000000000285", "000000000431"]),
    ("pascal_context59", T.make_pascal_context59, "", ["2008_000002", "2008_000007", "2008_000012"]),
    ("pascal_context59", T.make_pascal_context59, "VOCdevkit", None),
    ("voc20", T.make_voc20, "", ["2007_000033", "2007_000043", "2007_000053"]),
    ("cityscapes", T.make_cityscapes, "", ["frankfurt/frankfurt_000000_000294", "frankfurt/frankfurt_000000_000576",
                                           "lindau/lindau_000000_000019"]),
    ("nyuv2", T.make_nyuv2, "", ["bathroom_0001", "living_room_0002", "study_room_0003"]),
    ("cityscapes_depth", T.make_cityscapes_depth, "", ["munster/munster_000000_000019",
                                                       "munster/munster_000001_000019"]),
    ("ddad", T.make_ddad, "", ["000150_CAMERA_01", "000151_CAMERA_05"]),
    ("refcoco", T.make_refcoco, "", ["7-0", "7-1", "8-50", "9-100"]),
]


@pytest.mark.parametrize("name,writer,sub,ids", LAYOUTS)
def test_reader_on_miniature_layout(tmp_path, name, writer, sub, ids):
    expected = writer(tmp_path)
    ds = D.get_dataset(name, tmp_path / sub if sub else tmp_path)
    assert sorted(s.id for s in ds) == sorted(expected)
    if ids is not None:
        assert [s.id for s in ds] == ids
    for s in ds:
        img, gt = ds.load(s)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        np.testing.assert_array_equal(gt, expected[s.id])
        assert gt.shape == img.shape[:2]
        if ds.task == "segment":
            vals = np.unique(gt)
            assert set(vals.tolist()) <= set(range(len(ds.classes))) | {255}
    if name == "ade20k":  # reduce_zero_label: file 0 -> 255, k -> k - 1
        from PIL import Image

        raw = np.asarray(Image.open(ds[0].target))
        gt = ds.load(ds[0])[1]
        assert (gt[raw == 0] == 255).all() and (gt[(raw > 0) & (raw < 255)] == raw[(raw > 0) & (raw < 255)] - 1).all()
        assert raw.min() == 0 and 150 in raw  # the miniature uses the whole raw range 0..150
    if name == "nyuv2":
        assert ds[1].meta["scene"] == "living_room" and ds[0].meta["scene"] == "bathroom"
    if name == "refcoco":
        assert ds[0].meta["expression"] == "the left thing" and "segmentation" not in ds[0].meta


def test_refcoco_family_and_splits(tmp_path):
    T.make_refcoco(tmp_path, "refcoco+", "unc")
    T.make_refcoco(tmp_path, "refcocog", "umd")
    T.make_refcoco(tmp_path, "refcocog", "google", seed=1)
    assert len(D.get_dataset("refcoco+", tmp_path)) == 4
    assert len(D.get_dataset("refcocog", tmp_path)) == 4           # umd is refcocog's default
    assert len(D.get_dataset("refcocog", tmp_path, "google:val")) == 4
    assert [s.id for s in D.get_dataset("refcocog", tmp_path, "train")] == ["10-150"]
    with pytest.raises(ValueError, match="unknown split 'testA'"):
        D.get_dataset("refcocog", tmp_path, "testA")
    with pytest.raises(DatasetError, match="no refs in split 'test'"):
        D.get_dataset("refcocog", tmp_path, "test")
    # the same refs converted to JSON are read too
    import json

    refs = load_plain_pickle(tmp_path / "refcoco+" / "refs(unc).p")
    (tmp_path / "refcoco+" / "refs(unc).p").unlink()
    (tmp_path / "refcoco+" / "refs(unc).json").write_text(json.dumps(refs))
    assert [s.id for s in D.get_dataset("refcoco+", tmp_path)] == ["7-0", "7-1", "8-50", "9-100"]
    # a Python-2 style protocol-2 pickle (bytes-free here) and protocol 0 both load
    T.make_refcoco(tmp_path / "p0", "refcoco", "unc", protocol=0)
    assert len(D.get_dataset("refcoco", tmp_path / "p0")) == 4


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_restricted_unpickler_rejects_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    T.make_refcoco(tmp_path)
    evil = tmp_path / "refcoco" / "refs(unc).p"
    good = load_plain_pickle(evil)
    assert isinstance(good, list) and good[0]["sentences"][0]["sent"] == "the left thing"
    evil.write_bytes(pickle.dumps([{"split": "val"}, _Boom()], protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p: refuses to load the global posix\.system"):
        D.get_dataset("refcoco", tmp_path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    # any class at all is refused, even a harmless one
    evil.write_bytes(pickle.dumps([{1, 2}, np.int64(3)], protocol=4))
    with pytest.raises(UnsafePickleError, match="numpy"):
        load_plain_pickle(evil)
    evil.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_plain_pickle(evil)


def test_coco_masks_own_decoder_and_rasteriser(tmp_path):
    # hand-checkable: a 2x3 RLE (column-major runs) and an axis-aligned square polygon
    m = segmentation_to_mask({"size": [2, 3], "counts": [1, 3, 2]}, 2, 3, backend="numpy")
    np.testing.assert_array_equal(m, [[False, True, False], [True, True, False]])
    sq = segmentation_to_mask([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10, backend="numpy")
    want = np.zeros((10, 10), bool)
    want[2:6, 2:6] = True  # the pixels whose centres (x + 0.5, y + 0.5) lie inside [2, 6]^2
    np.testing.assert_array_equal(sq, want)
    # small counts are one char each; from the 4th on each is the difference to the count two before
    assert string_to_counts("52203") == [5, 2, 2, 0 + 2, 3 + 2]
    with pytest.raises(ValueError, match="adding up"):
        segmentation_to_mask({"size": [2, 3], "counts": [1, 3]}, 2, 3, backend="numpy")
    with pytest.raises(ValueError, match="at least 3"):
        segmentation_to_mask([[1, 2, 3, 4]], 5, 5)
    with pytest.raises(ValueError, match="boundary points"):
        segmentation_to_mask([[0, 0, 1e9, 0, 1e9, 1e9]], 5, 5, backend="numpy")


@pytest.mark.skipif(not have_pycocotools(), reason="pycocotools not installed (the eval extra)")
def test_coco_masks_equal_pycocotools():
    from pycocotools import mask as mu

    rng = np.random.default_rng(0)
    for k in range(60):
        h, w = int(rng.integers(5, 60)), int(rng.integers(5, 60))
        n = int(rng.integers(3, 12))
        polys = [list(np.column_stack([rng.uniform(-3, w + 3, n), rng.uniform(-3, h + 3, n)]).ravel())
                 for _ in range(int(rng.integers(1, 3)))]
        if k % 3 == 0:
            polys = [list(np.round(np.asarray(p) * 2) / 2) for p in polys]  # half-pixel vertices
        ours = segmentation_to_mask(polys, h, w, backend="numpy")
        theirs = segmentation_to_mask(polys, h, w, backend="pycocotools")
        np.testing.assert_array_equal(ours, theirs, err_msg=f"polygon case {k}")
        for p in polys:
            assert polygon_counts(p, h, w) == _counts(mu.frPyObjects([p], h, w)[0], h, w)
        # compressed RLE text of a random mask, and its uncompressed counts
        mask = rng.random((h, w)) < 0.4
        rle = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
        np.testing.assert_array_equal(segmentation_to_mask({"size": [h, w], "counts": rle["counts"].decode()}, h, w,
                                                           backend="numpy"), mask)
        np.testing.assert_array_equal(segmentation_to_mask({"size": [h, w], "counts": T.rle_counts(mask)}, h, w,
                                                           backend="pycocotools"), mask)


def _counts(rle, h, w):
    """pycocotools' run lengths of a compressed RLE (through our string decoder)."""
    return string_to_counts(rle["counts"].decode())


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'ade21k'; known: ade20k"):
        D.get_dataset("ade21k", tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        D.get_dataset("ade20k", tmp_path / "nowhere")
    T.make_ade20k(tmp_path)
    base = tmp_path / "ADEChallengeData2016"
    # a label PNG whose size differs from its image
    lab = base / "annotations" / "validation" / "ADE_val_00000002.png"
    T.write_png(lab, np.ones((10, 12), np.uint8), "L")
    ds = D.get_dataset("ade20k", tmp_path)
    with pytest.raises(DatasetError, match=r"ADE_val_00000002\.png is 12x10 \(WxH\) but its image .*ADE_val_00000002\.jpg is 56x48"):
        ds.load(ds[1])
    # a label holding a value beyond the class table (a mislabelled table / wrong dataset)
    T.write_png(lab, np.full((48, 56), 200, np.uint8), "L")
    with pytest.raises(DatasetError, match=r"ADE_val_00000002\.png holds values \[200\].*150 classes"):
        ds.load(ds[1])
    T.write_png(lab, np.zeros((48, 56, 3), np.uint8), "RGB")
    with pytest.raises(DatasetError, match=r"ADE_val_00000002\.png is a RGB image"):
        ds.load(ds[1])
    # the same files under a table with fewer classes: the values do not fit it
    small = dict(tables.ADE20K, name="ade_small", classes=tables.ADE20K["classes"][:10],
                 palette=tables.ADE20K["palette"][:10])
    D.register(small)
    try:
        ds_small = D.get_dataset("ade_small", tmp_path)
        with pytest.raises(DatasetError, match=r"ADE_val_00000001\.png holds values .*10 classes of the 'ade_small'"):
            ds_small.load(ds_small[0])
    finally:
        D.REGISTRY.pop("ade_small")
    # a missing label map, a missing folder, a missing split file entry
    (base / "annotations" / "validation" / "ADE_val_00000003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing label map .*ADE_val_00000003\.png"):
        D.get_dataset("ade20k", tmp_path)
    shutil.rmtree(base / "annotations")
    with pytest.raises(FileNotFoundError, match=r"missing folder .*annotations/validation"):
        D.get_dataset("ade20k", tmp_path)
    T.make_voc20(tmp_path / "voc")
    vs = tmp_path / "voc" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    vs.write_text("2007_000033\n2007_999999\n")
    with pytest.raises(FileNotFoundError, match=r"missing image .*2007_999999\.jpg"):
        D.get_dataset("voc20", tmp_path / "voc")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        D.get_dataset("voc20", tmp_path / "voc", "test")
    # depth: a camera file without the baseline
    T.make_cityscapes_depth(tmp_path / "cs")
    ds = D.get_dataset("cityscapes_depth", tmp_path / "cs")
    open(ds[0].meta["camera"], "w").write('{"intrinsic": {"fx": 1}}')
    with pytest.raises(DatasetError, match=r"munster_000000_000019_camera\.json: expected extrinsic\.baseline"):
        ds.load(ds[0])


def test_table_checks():
    bad = dict(tables.VOC20, name="voc_bad", palette=tables.VOC20["palette"][:5])
    with pytest.raises(ValueError, match="'voc_bad': 5 palette colours for 20 classes"):
        D.register(bad)
    with pytest.raises(ValueError, match="duplicate class names"):
        D.register(dict(tables.VOC20, name="voc_dup", classes=("a", "a") + tables.VOC20["classes"][2:]))
    with pytest.raises(ValueError, match="surrounding spaces"):
        D.register(dict(tables.VOC20, name="voc_sp", classes=("bed ",) + tables.VOC20["classes"][1:]))
    with pytest.raises(ValueError, match="reader 'nope'"):
        D.register(dict(tables.VOC20, name="voc_r", reader="nope"))
    with pytest.raises(ValueError, match="already registered"):
        D.register(tables.VOC20)
    assert "voc_bad" not in D.REGISTRY
    # one table entry adds a dataset on an existing reader
    t = dict(tables.CITYSCAPES, name="scenes_test", root_names=("scenes",), paper={})
    D.register(t)
    try:
        assert D.table_of("scenes_test") is t
    finally:
        D.REGISTRY.pop("scenes_test")


def _mmseg_dataset_facts(file, cls):
    """(METAINFO dict, __init__ defaults) of an mmseg dataset class, read from its source
    with ast (importing mmseg.datasets needs mmcv's compiled ops, absent from mmcv-lite)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("mmseg")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mmsegmentation is not installed")
    src = open(os.path.join(spec.submodule_search_locations[0], "datasets", file)).read()
    node = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == cls)
    meta, defaults = {}, {}
    for item in node.body:
        if isinstance(item, ast.Assign) and item.targets[0].id == "METAINFO":
            meta = {kw.arg: ast.literal_eval(kw.value) for kw in item.value.keywords}
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            args = item.args.args[-len(item.args.defaults):] if item.args.defaults else []
            defaults = {a.arg: ast.literal_eval(d) for a, d in zip(args, item.args.defaults)}
            for call in ast.walk(item):  # values fixed in the super().__init__(...) call
                if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "__init__":
                    for kw in call.keywords:
                        if kw.arg and isinstance(kw.value, ast.Constant):
                            defaults[kw.arg] = kw.value.value
    return meta, defaults


@pytest.mark.parametrize("table,file,cls,drop_first", [
    (tables.ADE20K, "ade.py", "ADE20KDataset", False),
    (tables.COCO_STUFF164K, "coco_stuff.py", "COCOStuffDataset", False),
    (tables.PASCAL_CONTEXT59, "pascal_context.py", "PascalContextDataset59", False),
    (tables.VOC20, "voc.py", "PascalVOCDataset", True),  # VOC20 = VOC without its background class
    (tables.CITYSCAPES, "cityscapes.py", "CityscapesDataset", False),
])
def test_tables_equal_mmsegmentation_dataset_classes(table, file, cls, drop_first):
    meta, defaults = _mmseg_dataset_facts(file, cls)
    classes = [c.strip() for c in meta["classes"]]  # mmseg's ADE20K 'bed ' has a stray space
    palette = [tuple(c) for c in meta["palette"]]
    if drop_first:
        assert classes[0] == "background"
        classes, palette = classes[1:], palette[1:]
    assert list(table["classes"]) == classes
    assert [tuple(c) for c in table["palette"]] == palette
    assert table["layout"]["img_suffix"] == defaults.get("img_suffix")
    assert table["layout"]["seg_suffix"] == defaults.get("seg_map_suffix")
    assert table["reduce_zero_label"] == (drop_first or bool(defaults.get("reduce_zero_label", False)))
