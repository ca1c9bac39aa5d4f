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
        """(patches float32 [N, 3*16*16], (gh, gw), (H, W) resized) of an image; see densemllm.vision."""
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

    def __repr__(self):
        return f"Model({str(self.path)!r}, dtype={self.dtype!r}, backend={self.backend!r})"
