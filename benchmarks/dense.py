"""Dense decoding cost against the prefill it reads from (issue 5 acceptance: < 2%).

One segment() call = vision tower + LLM prefill over (vision tokens + prompt), the
model's answer, then dense decoding: the 150 ADE20K classes' LM-head rows only
(hidden . head[ids], mean per class) over the 32x32 = 1024-token grid of a
1024x1024 image, bilinear upsampling and argmax at the image size. Beside it, the
full-vocabulary alternative (all 283386 rows of Youtu-VL-4B's head for the 1024
tokens) is measured on a slice of rows and scaled linearly (a GEMM is linear in N).

Sizes: Youtu-VL-4B layer shapes (LLM hidden 2560, ffn 9728, 32 heads, q_lora 1536,
kv_lora 512, nope 128 / rope 64 / v 128; vision 1152, 16 heads, ffn 4304, window
256) at REDUCED depth (default 2 LLM + 2 vision layers, random bf16 weights, tiny
vocabulary) because a full-size random checkpoint (10.6 GB) does not fit this job.
The ratio is reported against the measured reduced-depth prefill (a conservative
bound: the real 40 + 27 layer prefill is far longer) and, for information, against
a full-depth estimate from the per-layer slope of a 1-layer run.

    .venv/bin/python benchmarks/dense.py [--threads N] [--layers 2] [--repeat 3]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import densemllm
from densemllm import _core
from densemllm.tasks.common import csr, render_prompt
from densemllm.testing import make_checkpoint

ADE150 = ("wall, building, sky, floor, tree, ceiling, road, bed, windowpane, grass, cabinet, sidewalk, "
          "person, earth, door, table, mountain, plant, curtain, chair, car, water, painting, sofa, shelf, "
          "house, sea, mirror, rug, field, armchair, seat, fence, desk, rock, wardrobe, lamp, bathtub, "
          "railing, cushion, base, box, column, signboard, chest of drawers, counter, sand, sink, "
          "skyscraper, fireplace, refrigerator, grandstand, path, stairs, runway, case, pool table, pillow, "
          "screen door, stairway, river, bridge, bookcase, blind, coffee table, toilet, flower, book, hill, "
          "bench, countertop, stove, palm, kitchen island, computer, swivel chair, boat, bar, arcade machine, "
          "hovel, bus, towel, light, truck, tower, chandelier, awning, streetlight, booth, television receiver, "
          "airplane, dirt track, apparel, pole, land, bannister, escalator, ottoman, bottle, buffet, poster, "
          "stage, van, ship, fountain, conveyer belt, canopy, washer, plaything, swimming pool, stool, barrel, "
          "basket, waterfall, tent, bag, minibike, cradle, oven, ball, food, step, tank, trade name, microwave, "
          "pot, animal, bicycle, lake, dishwasher, screen, blanket, sculpture, hood, sconce, vase, "
          "traffic light, tray, ashcan, fan, pier, crt screen, plate, monitor, bulletin board, shower, "
          "radiator, glass, clock, flag").split(", ")
FULL_VOCAB = 283386
TEXT = dict(hidden_size=2560, intermediate_size=9728, num_attention_heads=32, num_key_value_heads=32,
            q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
            max_position_embeddings=8192)


def vision_cfg(layers):
    return dict(hidden_size=1152, num_attention_heads=16, intermediate_size=4304, num_hidden_layers=layers,
                window_size=256, fullatt_block_indexes=[layers - 1])


def median_time(fn, repeat):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def run(tmp, layers, image, repeat):
    ck = make_checkpoint(Path(tmp) / f"ck{layers}", seed=0, num_hidden_layers=layers, vision=vision_cfg(layers),
                         **TEXT)
    model = densemllm.load(ck)
    # A short prompt: the tiny test tokenizer splits the 150 names into ~2000 byte-level
    # tokens (the real one needs ~500), which would inflate the prefill and flatter the ratio.
    prompt = render_prompt(model, "Segment all objects in this image.")
    model.prefill(prompt, image=image)  # warm-up (primitive caches, page-in of the mmap)
    t_pre, sess = median_time(lambda: model.prefill(prompt, image=image), repeat)
    return model, sess, t_pre


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--layers", type=int, default=2, help="LLM and vision layers of the reduced model")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slice", type=int, default=32768, help="head rows measured for the full-vocab GEMM")
    args = ap.parse_args()
    densemllm.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    info = densemllm.build_info()
    print(f"threads {info['threads']}, oneDNN {info['onednn']} ({info['onednn_isa']})")
    with tempfile.TemporaryDirectory() as tmp:
        model, sess, t_pre = run(tmp, args.layers, image, args.repeat)
        # Two distinct head rows per class (300 rows): the real tokenizer needs ~1.6 ids per
        # ADE20K name; the tiny test vocabulary would share most rows and flatter the cost.
        groups = [(100 + 2 * k, 101 + 2 * k) for k in range(len(ADE150))]
        off, ids = csr(groups)
        grid = sess.vision_grid
        n_tok = grid[0] * grid[1]
        t_logits, z = median_time(lambda: _core.dense_session_logits(sess.core, off, ids), args.repeat * 3)
        t_argmax, lab = median_time(lambda: _core.dense_upsample_argmax(z, (1024, 1024)), args.repeat * 3)
        t_dense = t_logits + t_argmax
        # full vocabulary: every head row for every vision token (bf16 head in place, oneDNN)
        hidden = sess.vision_hidden()
        head = rng.integers(0x3C00, 0x3D00, (args.slice, hidden.shape[1]), dtype=np.uint16)  # small bf16s
        t_slice, _ = median_time(lambda: _core.matmul(hidden, head, bf16=True), args.repeat)
        t_full = t_slice * FULL_VOCAB / args.slice
        print(f"reduced model: {args.layers} LLM + {args.layers} vision layers at Youtu-VL-4B sizes; "
              f"image 1024x1024 -> grid {grid[0]}x{grid[1]} = {n_tok} vision tokens; prompt "
              f"{len(sess.ids)} tokens; 150 classes = {len(ids)} head rows ({len(set(ids.tolist()))} distinct)")
        print(f"prefill (vision + LLM, measured)           {t_pre * 1e3:10.1f} ms")
        print(f"dense: class logits (150 classes)          {t_logits * 1e3:10.2f} ms")
        print(f"dense: upsample + argmax to 1024x1024      {t_argmax * 1e3:10.2f} ms")
        print(f"dense total                                {t_dense * 1e3:10.2f} ms = "
              f"{100 * t_dense / t_pre:.2f}% of the reduced-depth prefill")
        print(f"full-vocabulary logits ({FULL_VOCAB} rows, from {args.slice}) {t_full * 1e3:10.1f} ms = "
              f"{100 * t_full / t_pre:.1f}% of the reduced-depth prefill, {t_full / t_logits:.0f}x the class logits")
        if args.layers >= 2:
            del model, sess
            _, _, t_pre1 = run(tmp, 1, image, args.repeat)
            per_layer = t_pre - t_pre1  # one LLM layer + one vision layer
            # full depth = the 1-layer run + 26 more (LLM + vision) pairs + 13 more LLM layers,
            # so it is at least t_pre1 + 26 * per_layer (a lower bound, no FLOP split assumed).
            lower = t_pre1 + 26 * per_layer
            print(f"prefill at 1 layer each {t_pre1 * 1e3:.1f} ms -> one (LLM + vision) layer pair "
                  f"{per_layer * 1e3:.1f} ms; full depth (40 LLM + 27 vision) >= {lower:.1f} s, so dense "
                  f"decoding is <= {100 * t_dense / lower:.3f}% of a full prefill")


if __name__ == "__main__":
    main()
