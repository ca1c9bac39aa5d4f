"""Evaluation of dense predictors on the paper's benchmarks (docs/evaluation.md).

    report = densemllm.eval.evaluate(model_or_predictor, "ade20k", data_root=PATH)
    report.metrics["mIoU"]

Kept apart as mmsegmentation keeps them: ``datasets`` (one plain-data table per dataset
and the readers of the standard layouts), ``protocols`` (prompt, scale, crops per
benchmark; the model -> predictor step), ``metrics`` (per-image statistics, reduced at
the end), ``store`` (atomic per-image results, resumable) and ``runner`` (the loop,
local processes or Ray workers, the reports).
"""
from . import datasets, metrics, protocols
from .datasets import get_dataset, register
from .metrics import DepthMetric, ReferMetric, SegMetric
from .protocols import PROTOCOLS, DepthProtocol, ReferProtocol, SegProtocol, default_protocol, map_labels
from .runner import Report, evaluate

__all__ = ["evaluate", "Report", "get_dataset", "register", "datasets", "metrics", "protocols", "PROTOCOLS",
           "SegProtocol", "DepthProtocol", "ReferProtocol", "default_protocol", "map_labels", "SegMetric",
           "DepthMetric", "ReferMetric"]

# The procedural scenes of the default model (densemllm.data): scenes, scenes_depth, scenes_refer.
from ..data import eval_tables as _scene_tables  # noqa: E402

_scene_tables.register()
