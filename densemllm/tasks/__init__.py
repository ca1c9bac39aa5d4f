"""Dense tasks on a loaded model: each runs the model's own generation and then decodes
the answer from the same prefill's vision tokens (notes sections 6-7). See docs/tasks.md."""
from .depth import depth
from .logits import vision_logits
from .open_set import segment_open
from .refer import refer
from .segment import segment

__all__ = ["segment", "depth", "refer", "segment_open", "vision_logits"]
