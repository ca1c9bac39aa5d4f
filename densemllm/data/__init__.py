"""Procedural dense-prediction data: seeded scenes (sky / wall / ground and shaped
objects) with per-pixel classes, metric depth, instances and referring expressions
with unique answers; an infinite training stream and a fixed held-out split; the
mmsegmentation-style layout on disk. See docs/default-model.md."""
from . import tables
from .layout import read_split, write_heldout, write_split
from .scenes import Scene, heldout_scene, make_scene, resolve, train_stream

__all__ = ["tables", "Scene", "make_scene", "train_stream", "heldout_scene", "resolve", "write_split",
           "write_heldout", "read_split"]
