"""Shared steps of the dense tasks: image input, prompts, one prefill + generation,
class token ids, and the selected-row logits of the session's vision tokens."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from .. import _core
from ..image import is_image_list, to_rgb_array
from ..parse import parse_refs

DEFAULT_SYSTEM = "You are a helpful assistant."

# Generation options a task passes on to Session.generate_ids (it sets eos itself).
TASK_GEN_KEYWORDS = frozenset(("temperature", "top_k", "top_p", "repetition_penalty", "do_sample", "seed"))


def check_task_keywords(task_name, gen):
    """TypeError naming the task for a keyword it does not take."""
    from ..llm import check_gen_keywords

    check_gen_keywords(task_name, gen, TASK_GEN_KEYWORDS)


def merged_px(model) -> int:
    """Side in pixels of one merged vision token: patch_size * spatial_merge_size."""
    v = model.config.vision
    return int(v.patch_size) * int(v.spatial_merge_size)


def to_rgb(image, what="image") -> np.ndarray:
    """A writable, contiguous uint8 [H, W, 3] copy of `image` through the one input
    function (densemllm.image.to_rgb_array: same accepted inputs and errors everywhere)."""
    return np.ascontiguousarray(to_rgb_array(image, what))


def over_images(task):
    """Let a task take a list (or tuple) of images: it returns the list of results."""
    @functools.wraps(task)
    def run(model, image, *args, **kw):
        if is_image_list(image):
            return [task(model, im, *args, **kw) for im in image]
        return task(model, image, *args, **kw)
    return run


def check_image(model, rgb: np.ndarray, what="image"):
    h, w = rgb.shape[:2]
    px = merged_px(model)
    if h < px or w < px:
        raise ValueError(f"{what} is {w}x{h} pixels, smaller than one merged vision token "
                         f"({px}x{px}); enlarge it (e.g. scale=) first")


def resize_rgb(rgb: np.ndarray, size_hw, resample="bilinear") -> np.ndarray:
    """Pillow resize to (H, W); 'bilinear' (antialiased when shrinking) or 'lanczos'."""
    from PIL import Image

    h, w = int(size_hw[0]), int(size_hw[1])
    if (h, w) == rgb.shape[:2]:
        return rgb
    f = {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}[resample]
    return np.asarray(Image.fromarray(rgb).resize((w, h), f), dtype=np.uint8)


def scaled(rgb: np.ndarray, scale: float) -> np.ndarray:
    if not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if scale == 1:
        return rgb
    h, w = rgb.shape[:2]
    return resize_rgb(rgb, (max(1, round(h * scale)), max(1, round(w * scale))))


def render_prompt(model, text: str, *, image_first=True, system=DEFAULT_SYSTEM, what="prompt") -> str:
    """The checkpoint's chat template over one user turn holding the image and text."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} must be a non-empty string, got {text!r}")
    model.tokenizer.check_user_text(text, what)
    items = [{"type": "image"}, {"type": "text", "text": text}]
    if not image_first:
        items.reverse()
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": items}]
    return model.tokenizer.chat_prompt(msgs, add_generation_prompt=True)


@dataclass
class Turn:
    """One prefill + generation: the session (vision states retained), its text and ids."""

    session: object
    text: str
    ids: list
    grid: tuple
    timings: dict = field(default_factory=dict)


def run_turn(model, rgb, text, *, image_first=True, stop_at_mask=True, max_new_tokens=1024,
             system=DEFAULT_SYSTEM, what="prompt", **gen) -> Turn:
    """Prefill the prompt with the image ONCE and generate the answer from that session.

    Generation stops at eos, and (stop_at_mask) at ``<mask>``: the RLE after it is
    what dense decoding computes from the same session, so generating it token by
    token would only repeat the work (the result's ``model_text()`` fills it in)."""
    check_image(model, rgb)
    prompt = render_prompt(model, text, image_first=image_first, system=system, what=what)
    t0 = time.perf_counter()
    sess = model.prefill(prompt, image=rgb)
    t1 = time.perf_counter()
    eos = set(int(e) for e in model.config.eos_token_id)
    mask_id = model.tokenizer.token_to_id("<mask>")  # an id of this vocabulary
    if stop_at_mask and mask_id is not None:
        eos.add(int(mask_id))
    gen.setdefault("seed", 0)
    new = list(sess.generate_ids(max_new_tokens, eos_token_id=sorted(eos), **gen))
    t2 = time.perf_counter()
    # grammar tokens are kept by id, also when the tokenizer marks them special
    out = model.tokenizer.decode_answer(new)
    grid = session_grid(sess)
    return Turn(sess, out, new, grid, {"prefill": t1 - t0, "generate": t2 - t1})


def session_grid(sess):
    """(gh/2, gw/2) merged-token grid of the session's image (set by the prefill)."""
    g = sess.vision_grid
    if not g:
        raise RuntimeError("this session was prefilled without an image: no vision token grid")
    return int(g[0]), int(g[1])


def class_ids(model, entry, what="class") -> tuple:
    """Token ids of one class: a name (tokenized, no BOS), an id, or a sequence of ids."""
    vocab = model.config.text.vocab_size
    if isinstance(entry, str):
        name = entry.strip()
        if not name:
            raise ValueError(f"{what} name {entry!r} is empty")
        model.tokenizer.check_user_text(name, what)
        # a task token such as <OTHERS> is one id; any other name is tokenized like the
        # model's own text between <ref> and </ref>
        tok = model.tokenizer.token_to_id(name) if name.startswith("<") and name.endswith(">") else None
        ids = (tok,) if tok is not None else tuple(int(i) for i in model.tokenizer.encode(name))
        if not ids:
            raise ValueError(f"{what} name {entry!r} tokenizes to no token ids")
    elif isinstance(entry, (int, np.integer)) and not isinstance(entry, bool):
        ids = (int(entry),)
    else:
        try:
            ids = tuple(int(i) for i in entry)
        except TypeError:
            raise TypeError(f"{what} must be a name, a token id or a sequence of ids, got {entry!r}") from None
        if not ids:
            raise ValueError(f"{what}: an empty id list")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"{what} {entry!r}: token ids {bad} are outside the vocabulary [0, {vocab})")
    return ids


def csr(groups):
    off = np.zeros(len(groups) + 1, np.int64)
    off[1:] = np.cumsum([len(g) for g in groups])
    ids = np.fromiter((i for g in groups for i in g), np.int64, count=int(off[-1]))
    return off, ids


def grid_logits(turn: Turn, groups) -> np.ndarray:
    """float32 [gh/2, gw/2, K]: mean over each group's ids of (vision hidden . head row),
    computed in C from the session's retained states (no forward pass)."""
    off, ids = csr(groups)
    z = _core.dense_session_logits(turn.session.core, off, ids)
    if z.ndim == 2:
        z = z.reshape(turn.grid[0], turn.grid[1], -1)
    return z


def refs_of(model, turn: Turn):
    """The ``<ref>`` spans the model wrote, with the ids written between the tags."""
    return parse_refs(turn.text, turn.ids, model.tokenizer)


def timed(timings: dict, key: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - self.t

    return _T()
