"""The procedural scenes: determinism, label / depth / mask consistency, unique referring
answers, and the on-disk layout round trip."""
import numpy as np
import pytest

from densemllm.data import layout, scenes
from densemllm.data import tables as T

SEEDS = [(0, i) for i in range(12)] + [(7, 3), (123, 45)]


def test_same_seed_same_scene_and_streams_differ():
    a, b = scenes.make_scene(3, 5), scenes.make_scene(3, 5)
    for k in ("image", "labels", "depth", "instances"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert [r.text for r in a.referring] == [r.text for r in b.referring]
    # another index, another seed, the held-out split: other scenes
    for other in (scenes.make_scene(3, 6), scenes.make_scene(4, 5), scenes.heldout_scene(5)):
        assert not np.array_equal(a.image, other.image)
    # the stream yields exactly make_scene(seed, i)
    it = scenes.train_stream(3, start=4)
    next(it)
    np.testing.assert_array_equal(next(it).image, a.image)


@pytest.mark.parametrize("seed,index", SEEDS)
def test_labels_depth_and_instances_agree(seed, index):
    s = scenes.make_scene(seed, index)
    H, W = s.labels.shape
    assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    assert s.labels.max() < len(T.CLASSES)
    cam = s.camera
    v = np.arange(H)[:, None] + 0.5 + np.zeros((1, W))
    layout_px = s.instances == 0
    # sky has no depth; everything else is positive and below the table's maximum
    assert np.all((s.depth == 0) == (s.labels == 0))
    assert np.all(s.depth[s.labels > 0] > 0) and s.depth.max() < T.DEPTH_MAX_M
    # the wall is at its depth; the ground follows Z = f h / (v - cy)
    np.testing.assert_allclose(s.depth[(s.labels == 1) & layout_px], cam.wall_depth, rtol=1e-6)
    g = (s.labels == 2) & layout_px
    np.testing.assert_allclose(s.depth[g], cam.focal * cam.height / (v[g] - cam.cy), rtol=1e-5)
    # objects: label = shape, depth = standing depth, box/area/centroid = visible mask
    for o in s.objects:
        m = s.mask(o.id)
        assert m.sum() == o.area <= o.drawn_area
        if o.area:
            assert np.all(s.labels[m] == T.CLASSES.index(o.shape))
            np.testing.assert_allclose(s.depth[m], o.depth, rtol=1e-6)
            ys, xs = np.nonzero(m)
            assert o.box == (xs.min(), ys.min(), xs.max(), ys.max())
            # it stands on the ground: its lowest drawn row is its ground contact row
            assert ys.max() <= o.base_row
    assert np.all(np.isin(s.labels[layout_px], [0, 1, 2]))
    assert np.all(s.labels[~layout_px] >= 3)


def test_occlusion_nearer_objects_win():
    for i in range(30):
        s = scenes.make_scene(1, i)
        for o in s.objects:
            if o.drawn_area > o.area:  # partly hidden: only by nearer objects
                break
        else:
            continue
        break
    else:
        pytest.fail("no occlusion in 30 scenes")
    # an object's visible pixels are never claimed by a farther object
    for o in s.objects:
        farther = [p.id for p in s.objects if p.depth > o.depth]
        assert not np.isin(s.instances[s.mask(o.id)], farther).any()


@pytest.mark.parametrize("seed,index", SEEDS)
def test_referring_answers_are_unique(seed, index):
    s = scenes.make_scene(seed, index)
    for r in s.referring:
        assert scenes.parse_expression(r.text) == r.query
        assert scenes.resolve(s, r.query) == [r.object_id]
        o = s.object(r.object_id)
        assert o.area >= T.OBJECTS["referable_px"] * s.labels.size


def test_referring_kinds_are_all_generated():
    kinds = set()
    for i in range(80):
        for r in scenes.make_scene(2, i).referring:
            kinds.add(r.query.get("selector") or ("colour" if "colour" in r.query else "")
                      + ("texture" if "texture" in r.query else "") + ("shape" if "shape" in r.query else ""))
    assert {"largest", "left", "nearest", "shape", "colourshape", "colour", "textureshape"} <= kinds, kinds


def test_resolve_rejects_ambiguity():
    s = scenes.make_scene(0, 1)  # two circles and three stars (see the scenes' test history)
    by_shape = {}
    for o in s.objects:
        by_shape.setdefault(o.shape, []).append(o)
    shape, objs = max(by_shape.items(), key=lambda kv: len(kv[1]))
    assert len(objs) >= 2
    assert len(scenes.resolve(s, {"shape": shape})) == len(objs)  # "the star" is ambiguous
    with pytest.raises(ValueError):
        scenes.parse_expression("the tallest star")


def test_layout_round_trip(tmp_path):
    made = [scenes.heldout_scene(i) for i in range(3)] + [scenes.make_scene(0, 0, split="val", size=(160, 192))]
    names = layout.write_split(tmp_path, made, "val")
    assert names == [s.name for s in made]
    for d in layout.DIRS:
        assert sorted(p.stem for p in (tmp_path / d / "val").glob("*.png")) == sorted(names)
    assert not list(tmp_path.rglob("*.tmp"))
    back = list(layout.read_split(tmp_path, "val"))
    for a, b in zip(made, back):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.instances, b.instances)
        assert np.abs(a.depth - b.depth).max() <= 0.0005 + 1e-6  # millimetre PNG
        assert [o.box for o in a.objects] == [o.box for o in b.objects]
        assert [(r.text, r.object_id) for r in a.referring] == [(r.text, r.object_id) for r in b.referring]
    refs = layout.read_referring(tmp_path, "val")
    assert len(refs) == sum(len(s.referring) for s in made)
    r0 = refs[0]
    s0 = back[names.index(r0["image"])]
    ys, xs = np.nonzero(s0.mask(r0["object_id"]))
    assert r0["box"] == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_layout_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="val.json"):
        list(layout.read_split(tmp_path, "val"))
    layout.write_split(tmp_path, [scenes.heldout_scene(0)], "val")
    (tmp_path / "depth" / "val" / f"{scenes.heldout_scene(0).name}.png").unlink()
    with pytest.raises(FileNotFoundError, match="depth"):
        list(layout.read_split(tmp_path, "val"))
    with pytest.raises(ValueError, match="split"):
        scenes.make_scene(0, 0, split="test")
    with pytest.raises(ValueError, match="32..1024"):
        scenes.make_scene(0, 0, size=8)


def test_the_evaluation_harness_reads_the_layout(tmp_path):
    from densemllm import eval as E

    layout.write_heldout(tmp_path / "scenes", 3)
    made = [scenes.heldout_scene(i) for i in range(3)]
    for name, want in (("scenes", {"mIoU": 100.0}), ("scenes_depth", {"d1": 1.0, "abs_rel": 0.0}),
                       ("scenes_refer", {"cIoU": 1.0})):
        ds = E.get_dataset(name, tmp_path)  # the root may also be the folder above
        n = sum(len(s.referring) for s in made) if name == "scenes_refer" else 3

        def oracle(image, sample, ds=ds):
            s = next(x for x in ds if x.id == sample["id"])
            assert "object_id" not in sample["meta"]  # ground truth stays away from predictors
            gt = ds.load(s)[1]
            return gt.astype(np.int32) if ds.task == "segment" else gt

        r = E.evaluate(oracle, name, data_root=tmp_path, out=tmp_path / "out", progress=False)
        assert r.n_images == n
        for k, v in want.items():
            assert r.metrics[k] == pytest.approx(v, abs=1e-6), (name, k)
    # ground truth read back through the harness equals the generator's
    ds = E.get_dataset("scenes_depth", tmp_path)
    img, gt = ds.load(ds[0])
    np.testing.assert_array_equal(img, made[0].image)
    assert np.abs(gt - made[0].depth).max() <= 0.0005 + 1e-6
