"""Procedural dense-prediction scenes: a seeded generator of images with exact per-pixel
class labels, metric depth, object instances and referring expressions with unique
answers. The same generator serves training (an infinite seeded stream) and a fixed
held-out split (docs/default-model.md describes the geometry).

Geometry (a pinhole camera looking horizontally over a ground plane):
- focal length ``f`` pixels, principal point ``(cx, cy)`` with ``cx = W / 2`` and ``cy``
  the horizon row; the camera centre is ``h`` metres above the ground; pixel centres
  are at ``(x + 0.5, y + 0.5)``.
- ground: the plane ``Y = h`` below the camera; the pixel row ``v`` (centre) below the
  horizon sees it at depth ``Z = f h / (v - cy)`` (depth = distance along the optical
  axis, as depth datasets store it).
- wall: a fronto-parallel plane at depth ``Zw`` spanning the whole width, standing on
  the ground (its base row ``cy + f h / Zw``) up to ``H_wall`` metres above the ground
  (top row ``cy - f (H_wall - h) / Zw``); depth ``Zw`` everywhere on it.
- sky: above the wall; no depth (invalid, 0).
- objects: flat cut-outs facing the camera, standing on the ground at depth ``Z``
  (their lowest row at ``cy + f h / Z``), ``s`` metres tall, so ``f s / Z`` pixels
  tall; drawn far to near (nearer objects occlude farther ones); depth ``Z`` on them.
All depths are below ``tables.DEPTH_MAX_M`` because the wall closes the scene.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import tables as T

__all__ = ["Camera", "SceneObject", "Referring", "Scene", "make_scene", "train_stream", "heldout_scene",
           "resolve", "expression_text", "parse_expression", "SPLIT_KEYS", "DEFAULT_SIZE"]

# Seed domains: scene i of split s is drawn from SeedSequence([SPLIT_KEYS[s], seed, i]), so
# training streams and the held-out split never share a scene.
SPLIT_KEYS = {"train": 1, "val": 2}
# 192 px: 12 x 12 vision tokens of 16 px; the token-resolution ceiling of the dense
# readout is 83 mIoU here (74 at 128 px, 88 at 256 px; docs/default-model.md).
DEFAULT_SIZE = (192, 192)
HELDOUT_SEED = 0


@dataclass(frozen=True)
class Camera:
    focal: float        # pixels
    cx: float           # principal point column (pixels)
    cy: float           # principal point row = horizon row (pixels)
    height: float       # camera centre above the ground (m)
    wall_depth: float   # m
    wall_height: float  # wall top above the ground (m)

    def ground_depth(self, v):
        """Depth (m) of the ground seen at pixel-centre row(s) ``v`` (> cy)."""
        return self.focal * self.height / (np.asarray(v, np.float64) - self.cy)

    def ground_row(self, depth):
        """Pixel-centre row where the ground is at ``depth`` metres."""
        return self.cy + self.focal * self.height / depth


@dataclass
class SceneObject:
    id: int                 # value in the instance map (1..)
    shape: str              # one of tables.SHAPES (its class name)
    colour: str             # key of tables.COLOURS
    texture: str            # key of tables.TEXTURES
    depth: float            # m
    size_m: float           # height of its bounding square (m)
    size_px: float
    centre_x: float         # pixel column of the bounding square's centre
    base_row: float         # pixel row where it stands on the ground
    drawn_area: int = 0     # pixels it covered when drawn (before nearer objects)
    area: int = 0           # visible pixels
    box: tuple | None = None       # visible (x0, y0, x1, y1), inclusive pixel corners
    centroid: tuple | None = None  # visible (x, y) mean pixel position

    @property
    def label(self) -> int:
        return T.CLASSES.index(self.shape)


@dataclass
class Referring:
    text: str          # "the red circle"
    object_id: int     # the instance it refers to
    query: dict        # its meaning: attribute filters + optional selector (see resolve)


@dataclass
class Scene:
    image: np.ndarray       # uint8 [H, W, 3]
    labels: np.ndarray      # uint8 [H, W] indices into tables.CLASSES
    depth: np.ndarray       # float32 [H, W] metres, 0 = invalid (sky)
    instances: np.ndarray   # uint8 [H, W] object id, 0 = layout
    objects: list           # [SceneObject]
    referring: list         # [Referring]
    camera: Camera
    split: str = "train"
    seed: int = 0
    index: int = 0

    @property
    def name(self) -> str:
        H, W = self.labels.shape
        size = "" if (H, W) == DEFAULT_SIZE else f"_{H}x{W}"
        return f"{self.split}_{self.seed:04d}_{self.index:06d}{size}"

    def object(self, object_id) -> SceneObject:
        for o in self.objects:
            if o.id == object_id:
                return o
        raise KeyError(f"no object with id {object_id} in scene {self.name}")

    def mask(self, object_id) -> np.ndarray:
        """bool [H, W]: the visible pixels of object ``object_id``."""
        return self.instances == object_id

    def present_classes(self) -> list:
        """Class names that cover at least one pixel, in tables.CLASSES order."""
        return [T.CLASSES[i] for i in np.flatnonzero(np.bincount(self.labels.ravel(), minlength=len(T.CLASSES)))]


# ---------------------------------------------------------------- rendering helpers

def _smooth_noise(rng, H, W, cells):
    """Bilinear interpolation of a (cells+1)^2 grid of N(0, 1): low-frequency noise."""
    g = rng.standard_normal((cells + 1, cells + 1))
    y = np.linspace(0, cells, H, endpoint=False) + 0.5 * cells / H
    x = np.linspace(0, cells, W, endpoint=False) + 0.5 * cells / W
    y0, x0 = np.minimum(y.astype(int), cells - 1), np.minimum(x.astype(int), cells - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    a, b = g[y0][:, x0], g[y0][:, x0 + 1]
    c, d = g[y0 + 1][:, x0], g[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _jitter(rng, rgb, amount):
    return np.clip(np.asarray(rgb, np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def _sky(rng, H, W, v):
    top = _jitter(rng, (70, 125, 205), 25)
    horizon = _jitter(rng, (185, 210, 240), 15)
    t = np.clip(v / H, 0, 1)[:, :, None]
    img = top * (1 - t) + horizon * t
    clouds = _smooth_noise(rng, H, W, int(rng.integers(2, 6)))
    amount = np.clip(clouds - rng.uniform(0.3, 1.2), 0, 1)[:, :, None]
    return img * (1 - 0.8 * amount) + 245.0 * 0.8 * amount


WALL_COLOURS = ((150, 70, 50), (130, 130, 135), (200, 180, 140), (110, 140, 150), (170, 120, 90))
GROUND_COLOURS = ((90, 140, 60), (190, 170, 120), (120, 120, 115), (130, 95, 60))


def _wall(rng, cam, u, v):
    base = _jitter(rng, WALL_COLOURS[rng.integers(len(WALL_COLOURS))], 15)
    f, Z = cam.focal, cam.wall_depth
    H, W = u.shape
    v_base = cam.ground_row(Z)
    if rng.random() < 0.6:  # bricks: 0.2 m x 0.4 m, half-offset rows, mortar lines
        bh = f * 0.2 / Z
        bw = 2 * bh
        rows = (v_base - v) / bh
        r = np.floor(rows)
        cols = (u + (r % 2) * bw / 2) / bw
        c = np.floor(cols)
        mortar = max(0.7, 0.12 * bh)
        is_mortar = ((rows - r) * bh < mortar) | ((cols - c) * bw < mortar)
        shade = rng.uniform(-18, 18, (64, 64))[r.astype(np.int64) % 64, c.astype(np.int64) % 64]
        img = base[None, None, :] + shade[:, :, None]
        img = np.where(is_mortar[:, :, None], 0.55 * base + 0.45 * 200, img)
    else:  # painted panels with vertical seams every 1 m
        pw = f * 1.0 / Z
        seam = ((u / pw) % 1.0) * pw < max(0.8, 0.03 * pw)
        img = base[None, None, :] + 10 * _smooth_noise(rng, H, W, 3)[:, :, None]
        img = np.where(seam[:, :, None], 0.7 * base, img)
    return img


def _ground(rng, cam, u, v):
    a = _jitter(rng, GROUND_COLOURS[rng.integers(len(GROUND_COLOURS))], 15)
    b = a * rng.uniform(0.72, 0.88)
    below = v > cam.cy
    Z = np.where(below, cam.focal * cam.height / np.maximum(v - cam.cy, 1e-6), 1e6)
    X = (u - cam.cx) * Z / cam.focal
    tile = rng.uniform(0.5, 1.5)
    checker = (np.floor(X / tile) + np.floor(Z / tile)) % 2
    # fade the tiles where they get smaller than a few pixels (no aliasing at the horizon)
    fade = np.clip((cam.focal * tile / Z) / 6.0 - 0.5, 0, 1)[:, :, None]
    mean = (a + b) / 2
    img = mean + fade * (np.where(checker[:, :, None] > 0, a, b) - mean)
    return img + 8 * _smooth_noise(rng, *u.shape, 4)[:, :, None]


STAR = np.array([(np.cos(np.pi / 2 + k * np.pi / 5) * (1.0 if k % 2 == 0 else 0.45),
                  -np.sin(np.pi / 2 + k * np.pi / 5) * (1.0 if k % 2 == 0 else 0.45) + 0.1)
                 for k in range(10)])


def _inside_polygon(a, b, poly):
    inside = np.zeros(a.shape, bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if y1 == y2:
            continue
        cross = ((y1 > b) != (y2 > b)) & (a < (x2 - x1) * (b - y1) / (y2 - y1) + x1)
        inside ^= cross
    return inside


def shape_mask(shape, a, b):
    """bool mask of ``shape`` in local coordinates a (right) and b (down), both in [-1, 1]
    over the object's bounding square; every shape touches b = 1 (it stands there)
    except the star, whose lower points reach b = 0.91."""
    if shape == "circle":
        return a * a + b * b <= 1.0
    if shape == "square":
        return (np.abs(a) <= 0.9) & (b >= -0.8) & (b <= 1.0)
    if shape == "triangle":
        return (b >= -1.0) & (b <= 1.0) & (np.abs(a) <= (b + 1.0) / 2.0)
    if shape == "diamond":
        return np.abs(a) * 1.15 + np.abs(b) <= 1.0
    if shape == "star":
        return _inside_polygon(a, b, STAR)
    raise ValueError(f"unknown shape {shape!r}; expected one of {T.SHAPES}")


def _texture(rng, texture, colour, du, dv, size):
    c = _jitter(rng, T.COLOURS[colour], 12)
    second = c * 0.55 if colour != "black" else c + 90
    p = max(4.0, size / rng.uniform(4, 7))
    if texture == "plain":
        pat = np.zeros(du.shape, bool)
    elif texture == "hstripes":
        pat = (dv / p) % 1.0 < 0.5
    elif texture == "vstripes":
        pat = (du / p) % 1.0 < 0.5
    elif texture == "checker":
        pat = (np.floor(du / p) + np.floor(dv / p)) % 2 > 0
    elif texture == "dots":
        pat = ((du % p) - p / 2) ** 2 + ((dv % p) - p / 2) ** 2 <= (0.3 * p) ** 2
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {tuple(T.TEXTURES)}")
    img = np.where(pat[:, :, None], second, c)
    light = 1.08 - 0.16 * np.clip(dv / max(size, 1.0), 0, 1)  # lit from above
    return img * light[:, :, None]


# ---------------------------------------------------------------- the generator

def _size(size):
    if size is None:
        size = DEFAULT_SIZE
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    H, W = (int(s) for s in size)
    if not (32 <= H <= 1024 and 32 <= W <= 1024):
        raise ValueError(f"scene size (H, W) must lie in 32..1024 pixels per side, got {(H, W)}")
    return H, W


def _camera(rng, H, W):
    C = T.CAMERA
    for _ in range(100):
        f = rng.uniform(*C["focal_per_width"]) * W
        cy = rng.uniform(*C["horizon_row"]) * H
        h = rng.uniform(*C["camera_height_m"])
        zw = rng.uniform(*C["wall_depth_m"])
        if cy + f * h / zw <= C["max_ground_start"] * H:
            break
    else:  # push the wall back until the ground shows (always possible within DEPTH_MAX_M)
        zw = min(T.DEPTH_MAX_M * 0.95, f * h / (C["max_ground_start"] * H - cy))
    hw = h + rng.uniform(*C["wall_height_above_camera_m"])
    return Camera(float(f), W / 2.0, float(cy), float(h), float(zw), float(hw))


def _place_objects(rng, cam, H, W):
    O = T.OBJECTS
    n = int(rng.integers(O["count"][0], O["count"][1] + 1))
    lo_px, hi_px = (s * min(H, W) for s in O["size_px"])
    z_near = max(O["min_depth_m"], cam.focal * cam.height / (H - cam.cy))  # base row inside the image
    z_far = cam.wall_depth - O["wall_gap_m"]
    objs = []
    for k in range(n):
        shape = T.SHAPES[rng.integers(len(T.SHAPES))]
        colour = list(T.COLOURS)[rng.integers(len(T.COLOURS))]
        texture = list(T.TEXTURES)[rng.integers(len(T.TEXTURES))]
        z = rng.uniform(z_near, max(z_near + 1e-3, z_far))
        for _ in range(20):
            size_m = rng.uniform(*O["size_m"])
            s = cam.focal * size_m / z
            if lo_px <= s <= hi_px:
                break
        else:
            s = float(np.clip(s, lo_px, hi_px))
            size_m = s * z / cam.focal
        cx = rng.uniform(0.3 * s, W - 0.3 * s)
        objs.append(SceneObject(k + 1, shape, colour, texture, float(z), float(size_m), float(s), float(cx),
                                float(cam.ground_row(z))))
    return objs


def make_scene(seed=0, index=0, *, split="train", size=None) -> Scene:
    """Scene ``index`` of the stream ``(split, seed)``: the same arguments always give the
    same scene (bit for bit), whatever was generated before."""
    if split not in SPLIT_KEYS:
        raise ValueError(f"split must be one of {tuple(SPLIT_KEYS)}, got {split!r}")
    seed, index = int(seed), int(index)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    H, W = _size(size)
    rng = np.random.default_rng([SPLIT_KEYS[split], seed, index])
    cam = _camera(rng, H, W)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5

    v_top, v_base = cam.cy - cam.focal * (cam.wall_height - cam.height) / cam.wall_depth, \
        cam.ground_row(cam.wall_depth)
    is_ground = v >= v_base
    is_wall = ~is_ground & (v >= v_top)
    labels = np.where(is_ground, 2, np.where(is_wall, 1, 0)).astype(np.uint8)
    depth = np.zeros((H, W), np.float64)
    depth[is_wall] = cam.wall_depth
    depth[is_ground] = cam.ground_depth(v[is_ground])

    img = _sky(rng, H, W, v)
    img = np.where(is_wall[:, :, None], _wall(rng, cam, u, v), img)
    img = np.where(is_ground[:, :, None], _ground(rng, cam, u, v), img)

    instances = np.zeros((H, W), np.uint8)
    objs = _place_objects(rng, cam, H, W)
    for o in sorted(objs, key=lambda o: -o.depth):  # far to near: nearer ones occlude
        half = o.size_px / 2
        x0, x1 = max(0, int(np.floor(o.centre_x - half))), min(W, int(np.ceil(o.centre_x + half)))
        y0, y1 = max(0, int(np.floor(o.base_row - o.size_px))), min(H, int(np.ceil(o.base_row)))
        if x1 <= x0 or y1 <= y0:
            continue
        uu, vv = u[y0:y1, x0:x1], v[y0:y1, x0:x1]
        a = (uu - o.centre_x) / half
        b = (vv - (o.base_row - half)) / half
        m = shape_mask(o.shape, a, b)
        o.drawn_area = int(m.sum())
        tex = _texture(rng, o.texture, o.colour, uu - (o.centre_x - half), vv - (o.base_row - o.size_px), o.size_px)
        img[y0:y1, x0:x1] = np.where(m[:, :, None], tex, img[y0:y1, x0:x1])
        instances[y0:y1, x0:x1][m] = o.id
        labels[y0:y1, x0:x1][m] = o.label
        depth[y0:y1, x0:x1][m] = o.depth

    img = img + rng.normal(0.0, 3.0, img.shape)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    counts = np.bincount(instances.ravel(), minlength=len(objs) + 1)
    for o in objs:
        o.area = int(counts[o.id])
        if o.area:
            ys, xs = np.nonzero(instances == o.id)
            o.box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
            o.centroid = (float(xs.mean()), float(ys.mean()))
    scene = Scene(image, labels, depth.astype(np.float32), instances, objs, [], cam, split, seed, index)
    scene.referring = _referring(rng, scene)
    return scene


def train_stream(seed=0, *, size=None, start=0):
    """Infinite iterator of training scenes ``make_scene(seed, i, split="train")``, i = start, ..."""
    i = int(start)
    while True:
        yield make_scene(seed, i, split="train", size=size)
        i += 1


def heldout_scene(index, *, size=None, seed=HELDOUT_SEED) -> Scene:
    """Scene ``index`` of the fixed held-out split (never seen by a training stream)."""
    return make_scene(seed, index, split="val", size=size)


# ---------------------------------------------------------------- referring expressions

SELECTORS = ("largest", "smallest", "left", "right", "nearest", "farthest")


def expression_text(query) -> str:
    """The English expression of a query dict (inverse of :func:`parse_expression`)."""
    shape, colour, adj, sel = query.get("shape"), query.get("colour"), query.get("texture"), query.get("selector")
    noun = shape or "object"
    words = [w for w in (colour, adj) if w]
    if sel in ("largest", "smallest", "nearest", "farthest"):
        return " ".join(["the", sel] + words + [noun])
    if sel in ("left", "right"):
        return " ".join(["the"] + words + [noun, "on the", sel])
    if sel is not None:
        raise ValueError(f"unknown selector {sel!r}; expected one of {SELECTORS}")
    return " ".join(["the"] + words + [noun])


def parse_expression(text) -> dict:
    """The query dict of an expression this module writes (ValueError otherwise)."""
    words = text.strip().split()
    if len(words) < 2 or words[0] != "the":
        raise ValueError(f"not a scene expression: {text!r}")
    q = {}
    words = words[1:]
    if words[-3:-1] == ["on", "the"] and words[-1] in ("left", "right"):
        q["selector"] = words[-1]
        words = words[:-3]
    elif words[0] in SELECTORS:
        q["selector"] = words.pop(0)
    if not words:
        raise ValueError(f"no noun in {text!r}")
    noun = words.pop()
    if noun != "object":
        if noun not in T.SHAPES:
            raise ValueError(f"unknown shape {noun!r} in {text!r}")
        q["shape"] = noun
    adjectives = set(T.TEXTURES.values())
    for w in words:
        if w in T.COLOURS and "colour" not in q:
            q["colour"] = w
        elif w in adjectives and "texture" not in q:
            q["texture"] = w
        else:
            raise ValueError(f"unexpected word {w!r} in {text!r}")
    return q


def _matches(o, q):
    return ((q.get("shape") is None or o.shape == q["shape"])
            and (q.get("colour") is None or o.colour == q["colour"])
            and (q.get("texture") is None or T.TEXTURES[o.texture] == q["texture"]))


def resolve(scene, query) -> list:
    """Ids of the objects ``query`` denotes in ``scene``: every present object (at least
    OBJECTS["present_px"] visible pixels) matching the attribute filters; a selector then
    keeps the winner only if it beats the runner-up by the table's margin (else none)."""
    O = T.OBJECTS
    members = [o for o in scene.objects if o.area >= O["present_px"] and _matches(o, query)]
    sel = query.get("selector")
    if sel is None or len(members) <= 1:
        return [o.id for o in members]
    key = {"largest": lambda o: -o.area, "smallest": lambda o: o.area, "left": lambda o: o.centroid[0],
           "right": lambda o: -o.centroid[0], "nearest": lambda o: o.depth, "farthest": lambda o: -o.depth}[sel]
    first, second = sorted(members, key=key)[:2]
    W = scene.image.shape[1]
    ok = {"largest": first.area >= O["size_ratio"] * second.area,
          "smallest": second.area >= O["size_ratio"] * first.area,
          "left": second.centroid[0] - first.centroid[0] >= O["side_gap"] * W,
          "right": first.centroid[0] - second.centroid[0] >= O["side_gap"] * W,
          "nearest": second.depth - first.depth >= O["depth_gap_m"],
          "farthest": first.depth - second.depth >= O["depth_gap_m"]}[sel]
    return [first.id] if ok else []


def _candidate_queries(o, n_same_shape):
    adj = T.TEXTURES[o.texture]
    qs = [{"shape": o.shape}, {"colour": o.colour, "shape": o.shape}, {"colour": o.colour},
          {"texture": adj, "shape": o.shape}]
    if n_same_shape >= 2:
        qs += [{"shape": o.shape, "selector": s} for s in SELECTORS]
    return qs


def _referring(rng, scene, max_refs=3):
    O = T.OBJECTS
    H, W = scene.labels.shape
    referable = [o for o in scene.objects
                 if o.area >= O["referable_px"] * H * W and o.area >= O["referable_visible"] * o.drawn_area]
    out = []
    for i in rng.permutation(len(referable)):
        o = referable[i]
        n_same = sum(1 for p in scene.objects if p.area >= O["present_px"] and p.shape == o.shape)
        good = [q for q in _candidate_queries(o, n_same) if resolve(scene, q) == [o.id]]
        if good:
            q = good[rng.integers(len(good))]
            out.append(Referring(expression_text(q), o.id, q))
        if len(out) == max_refs:
            break
    return out


def scene_dict(scene) -> dict:
    """JSON-ready description of a scene (camera, objects, referring) without the arrays."""
    return {
        "name": scene.name, "split": scene.split, "seed": scene.seed, "index": scene.index,
        "size": list(scene.labels.shape), "camera": dataclasses.asdict(scene.camera),
        "objects": [dataclasses.asdict(o) for o in scene.objects],
        "referring": [dataclasses.asdict(r) for r in scene.referring],
    }
