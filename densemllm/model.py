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

    # ---- vision (densemllm/vision.py) ----
    def preprocess(self, image, max_num_patches=36864):
        """(patches float32 [N, 3*patch*patch], (gh, gw), (H, W) resized) of an image; see densemllm.vision."""
        from . import vision
        return vision.preprocess(self, image, max_num_patches)

    def encode_image(self, image, max_num_patches=36864):
        """Vision tokens float32 [gh/2*gw/2, text.hidden_size] of an image (or of a preprocess() result)."""
        from . import vision
        return vision.encode_image(self, image, max_num_patches)

    # ---- language model (densemllm/llm.py) ----
    def forward(self, input_ids, image=None, output="logits", *, image_embeds=None):
        """float32 logits [T, vocab] or final normalised hidden states [T, hidden] (output="hidden")."""
        from . import llm
        return llm.forward(self, input_ids, image, output, image_embeds=image_embeds)

    def prefill(self, input_ids_or_prompt, image=None, *, image_embeds=None):
        """Run a prompt once; returns a :class:`densemllm.llm.Session` (KV cache, vision hidden states)."""
        from . import llm
        return llm.prefill(self, input_ids_or_prompt, image, image_embeds=image_embeds)

    def generate(self, prompt_or_ids, image=None, **kw):
        """Generate text (HF semantics, official defaults); see :func:`densemllm.llm.generate`."""
        from . import llm
        return llm.generate(self, prompt_or_ids, image, **kw)

    def chat(self, image, text, system="You are a helpful assistant.", **gen):
        """One chat turn with the checkpoint's template; returns the reply text."""
        from . import llm
        return llm.chat(self, image, text, system, **gen)

    # ---- dense tasks (densemllm/tasks/, docs/tasks.md) ----
    def segment(self, image, classes, background=False, crf=False, scale=1.0, prompt=None, **kw):
        """Semantic segmentation -> :class:`densemllm.results.SegmentResult` (labels int32 HxW)."""
        from .tasks import segment
        return segment(self, image, classes, background, crf, scale, prompt, **kw)

    def depth(self, image, dataset=None, focal_length=None, **kw):
        """Depth in metres -> :class:`densemllm.results.DepthResult` (float32 HxW, NaN invalid)."""
        from .tasks import depth
        return depth(self, image, dataset, focal_length, **kw)

    def refer(self, image, expression, **kw):
        """Referring segmentation (grounding, then core target) -> :class:`densemllm.results.ReferResult`."""
        from .tasks import refer
        return refer(self, image, expression, **kw)

    def segment_open(self, image, **kw):
        """Open-set segmentation (categories, detection, per-box masks) -> OpenSetResult."""
        from .tasks import segment_open
        return segment_open(self, image, **kw)

    def vision_logits(self, image, ids_or_names, prompt=None, **kw):
        """float32 [gh/2, gw/2, K] logits of the vision tokens for the given names / ids."""
        from .tasks import vision_logits
        return vision_logits(self, image, ids_or_names, prompt, **kw)

    def __repr__(self):
        return f"Model({str(self.path)!r}, dtype={self.dtype!r}, backend={self.backend!r})"
