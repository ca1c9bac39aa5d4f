"""The Model object: a loaded checkpoint with its config, tokenizer and C state.

Each area adds its methods here as thin wrappers over its own module:
vision (preprocess, encode_image), language model (forward, generate, chat),
dense tasks (segment, depth, refer, segment_open, vision_logits).
"""
from __future__ import annotations


class Model:
    """A DenseMLLM / Youtu-VL checkpoint loaded for CPU inference and training.

    Create with :func:`densemllm.load`. Attributes: ``config`` (:class:`densemllm.config.ModelConfig`),
    ``tokenizer`` (:class:`densemllm.tokenizer.Tokenizer`), ``path``, ``dtype``, ``backend``.
    """

    def __init__(self, path, config, tokenizer, checkpoint, dtype, backend, threads):
        self.path = path
        self.config = config
        self.tokenizer = tokenizer
        self._checkpoint = checkpoint  # densemllm._core.Checkpoint (mmap'd weights)
        self.dtype = dtype
        self.backend = backend
        self.threads = threads

    def __repr__(self):
        return f"Model({str(self.path)!r}, dtype={self.dtype!r}, backend={self.backend!r})"
