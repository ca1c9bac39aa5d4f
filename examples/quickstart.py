"""A tour of the densemllm API on a tiny checkpoint with RANDOM weights.

Run:  python examples/quickstart.py [CHECKPOINT_DIR]
Without an argument it makes a tiny random checkpoint first, so every number printed is
meaningless; with a real Youtu-VL checkpoint directory the same calls give real results.
The notebook notebooks/quickstart.ipynb has the same cells (tests/test_examples.py runs both).
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import densemllm

# -- a checkpoint: yours, or a tiny random one in the real layout --------------------------
if len(sys.argv) > 1:
    ckpt = Path(sys.argv[1])
else:
    from densemllm.testing import make_checkpoint

    ckpt = make_checkpoint(Path(tempfile.mkdtemp()) / "tiny", seed=0)
    print("RANDOM weights: outputs below are meaningless")

print(densemllm.build_info())
model = densemllm.load(ckpt, dtype="auto", threads=None)
print(model, model.config.text.hidden_size, model.tokenizer.vocab_size)

# -- an image: path, PIL.Image or uint8 array (HxWx3, HxW, HxWx4) ---------------------------
rng = np.random.default_rng(0)
image = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))

# -- vision tower: patches and vision tokens -------------------------------------------------
pre = model.preprocess(image)
tokens = model.encode_image(image)
print("vision tokens", tokens.shape, tokens.dtype)

# -- language model: chat and generation (official greedy-like defaults) --------------------
reply = model.chat(image, "What is in the picture?", max_new_tokens=8)
print("chat:", repr(reply))

# -- dense tasks: one prefill each, NumPy arrays back ----------------------------------------
seg = model.segment(image, ["sky", "road", "car"])
print("segment:", seg.labels.shape, seg.labels.dtype, seg.class_names)
dep = model.depth(image, dataset="NYUv2")
print("depth:", dep.depth.shape, dep.depth.dtype, float(np.nanmin(dep.depth)), float(np.nanmax(dep.depth)))
z = model.vision_logits(image, ["sky", "road"])
print("vision logits:", z.shape)

# -- RLE in the model's own format -----------------------------------------------------------
text = densemllm.rle_encode(seg.labels)
assert np.array_equal(densemllm.rle_decode(text, seg.labels.shape), seg.labels)

# -- NTP-M loss (training signal over vision tokens) -----------------------------------------
logits = rng.standard_normal((4, 50)).astype(np.float32)
positives = [np.array([1, 2]), np.array([3]), np.array([], dtype=np.int64), np.array([7])]
loss, grad = densemllm.ntpm_loss(logits, positives, k=8)
print("NTP-M loss", float(loss), grad.shape)
