"""Raw vision-token logits for chosen vocabulary entries (one prefill, no generation)."""
from __future__ import annotations

import time

from .common import Turn, check_image, class_ids, grid_logits, over_images, render_prompt, scaled, session_grid, to_rgb
from .segment import check_scale


@over_images
def vision_logits(model, image, ids_or_names, prompt=None, *, scale=1.0):
    """float32 [gh/2, gw/2, K]: for entry k (a name, an id, or a list of ids), the mean
    over its ids of the final hidden state of each vision token times that LM-head
    row. Only the requested rows are touched. The prompt defaults to the segmentation
    form over the names (entries given as ids are not named in it)."""
    if isinstance(ids_or_names, (str, int)):
        raise TypeError("ids_or_names must be a list (of names, ids or id lists)")
    if isinstance(ids_or_names, (set, frozenset)):
        raise TypeError("ids_or_names must be an ordered sequence (a list or tuple), got a set: "
                        "channel k is the k-th entry, and a set has no order")
    entries = list(ids_or_names)
    if not entries:
        raise ValueError("ids_or_names is empty")
    groups = [class_ids(model, e, f"ids_or_names[{k}]") for k, e in enumerate(entries)]
    if prompt is None:
        names = [e.strip() for e in entries if isinstance(e, str)]
        prompt = (f"Segment: {', '.join(names)}, without the background class." if names
                  else "Segment all objects in this image.")
    rgb = to_rgb(image)
    check_scale(rgb, scale)
    rgb = scaled(rgb, scale)
    check_image(model, rgb)
    t0 = time.perf_counter()
    sess = model.prefill(render_prompt(model, prompt, what="prompt"), image=rgb)
    turn = Turn(sess, "", [], session_grid(sess), {"prefill": time.perf_counter() - t0})
    return grid_logits(turn, groups)
