"""What the task API returns: plain dataclasses of NumPy arrays plus the model's text.

Label conventions (docs/tasks.md):
- SegmentResult.labels: label i = ``class_names[i]`` (the i-th ``<ref>`` the model wrote,
  or the requested class when the model wrote none). In background mode
  ``class_names[0] == "<OTHERS>"`` and label 0 is the background.
- OpenSetResult.labels: 0 = background (``class_names[0] == "<BG>"``), i = class_names[i].
- DepthResult.depth: metres, float32, NaN where invalid.
- ReferResult.mask: bool, True on the referred object.
Timings are seconds per stage ("prefill", "generate", "dense", ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .parse import replace_mask, rle_encode


class _Picture:
    """Notebook display: ``result.picture()`` is a PIL image (drawn over ``result.image``,
    the input the task saw, when set); Jupyter shows it through ``_repr_png_``."""

    def show(self):
        """The result's picture (PIL.Image); in a notebook it displays itself."""
        return self.picture()

    def _repr_png_(self):
        import io

        buf = io.BytesIO()
        self.picture().save(buf, format="PNG")
        return buf.getvalue()

    def _canvas(self, shape):
        img = getattr(self, "image", None)
        return np.full(tuple(shape[:2]) + (3,), 128, np.uint8) if img is None else img

__all__ = ["SegmentResult", "DepthResult", "ReferResult", "OpenSetResult"]


@dataclass
class SegmentResult(_Picture):
    labels: np.ndarray                 # int32 [H, W]
    class_names: list                  # label i -> class_names[i]
    class_ids: list                    # token ids averaged for each class (None for <OTHERS>)
    text: str                          # the model's raw answer
    background: bool = False
    logits: np.ndarray | None = None   # float32 [gh/2, gw/2, K] class logits on the token grid
    timings: dict = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)  # the input (uint8 HxWx3), for pictures

    def picture(self):
        """The image overlaid with one colour per label and a legend (densemllm.viz)."""
        from . import viz

        return viz.overlay_labels(self._canvas(self.labels.shape), self.labels, self.class_names,
                                  background_label=0 if self.background else None)

    def model_text(self) -> str:
        """The answer with ``<mask>`` holding the RLE of ``labels`` (as the model writes it)."""
        return replace_mask(self.text, rle_encode(self.labels))

    def scores(self, temperature: float = 0.2) -> np.ndarray:
        """Per-token class scores on the token grid, in label order: softmax(z / temperature)
        (notes 7, the input a DenseCRF would take), or in background mode 0.5 for the
        background then sigmoid(z / 4) per class."""
        from . import _core

        if self.logits is None:
            raise ValueError("this result has no logits (only the background was named)")
        z = np.ascontiguousarray(self.logits, dtype=np.float32)
        return _core.dense_scores(z, temperature=float(temperature), background=self.background)


@dataclass
class DepthResult(_Picture):
    depth: np.ndarray                  # float32 [H, W] metres (relative when not metric), NaN invalid
    bins: np.ndarray                   # int32 [gh, gw] bins 1..1000 (x2 of the token grid)
    text: str
    dataset: str | None = None
    metric: bool = True                # False: open world without focal length -> relative depth
    timings: dict = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)

    def picture(self):
        """The depth as a colour map with a scale bar in metres (densemllm.viz)."""
        from . import viz

        return viz.colorize_depth(self.depth)

    def model_text(self) -> str:
        """The answer with ``<mask>`` holding the RLE of the bin grid (the model's own RLE
        is over this grid of patches, (H/patch, W/patch), notes 6)."""
        return replace_mask(self.text, rle_encode(self.bins))


@dataclass
class ReferResult(_Picture):
    mask: np.ndarray                   # bool [H, W]
    box: tuple | None                  # (x0, y0, x1, y1) grounding box in image pixels
    text: str                          # grounding answer
    segment_text: str = ""             # answer of "Segment the core target." on the crop
    crop_box: tuple | None = None      # (x0, y0, x1, y1) crop window in image pixels
    crop_labels: np.ndarray | None = None  # int32 labels on the resized crop (0 BG, 1 FG)
    timings: dict = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)

    def picture(self):
        """The image with the mask tinted and the grounding box outlined (densemllm.viz)."""
        from . import viz

        return viz.overlay_mask(self._canvas(self.mask.shape), self.mask, self.box)

    def model_text(self) -> str:
        """The core-target answer with ``<mask>`` holding the RLE of the crop's labels."""
        if self.crop_labels is None:
            return self.segment_text
        return replace_mask(self.segment_text, rle_encode(self.crop_labels))


@dataclass
class OpenSetResult(_Picture):
    labels: np.ndarray                 # int32 [H, W], 0 = background
    class_names: list                  # class_names[0] == "<BG>"
    boxes: list                        # [(class_name, (x0, y0, x1, y1)), ...] that were segmented
    text: str                          # the categories answer
    detect_text: str = ""
    timings: dict = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)

    def picture(self):
        from . import viz

        return viz.overlay_labels(self._canvas(self.labels.shape), self.labels, self.class_names,
                                  background_label=0)

    def model_text(self) -> str:
        return replace_mask(self.text, rle_encode(self.labels))
