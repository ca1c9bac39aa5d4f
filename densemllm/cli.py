"""The ``densemllm`` command: dense prediction from the command line.

Each task writes ``PREFIX.npy`` (the array), ``PREFIX.png`` (a picture) and
``PREFIX.txt`` (the model's answer with the RLE filled in), and prints a summary.
``densemllm demo`` runs the default model embedded in the package on a procedural
scene (densemllm.data; RANDOM weights, said on every line, when the build has no
trained default weights).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TASKS = ("segment", "depth", "refer", "segment-open", "chat")


def _common(p, image=True):
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (config.json, "
                   "*.safetensors, tokenizer.json)")
    if image:
        p.add_argument("image", metavar="IMAGE", help="input image file (any format Pillow reads)")
    p.add_argument("--out", metavar="PREFIX", default=None,
                   help="output path prefix (default: IMAGE's name without extension + '.<task>'); "
                        "a directory (an existing one, or a path ending in '/') puts the default names "
                        "inside it. chat writes the answer to PREFIX.txt when given")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="threads for all heavy work "
                   "(default: all cores)")
    p.add_argument("--backend", choices=("onednn", "openblas"), default=None,
                   help="matrix backend (default: onednn, or $DENSEMLLM_BACKEND)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="generation limit per model answer (task default when omitted)")


def build_parser():
    ap = argparse.ArgumentParser(
        prog="densemllm",
        description="Dense prediction (segmentation, depth, referring and open-set segmentation) "
                    "with a DenseMLLM / Youtu-VL checkpoint on the CPU. Every task runs one prefill "
                    "of the image and prompt, the model's own answer, and dense decoding of the "
                    "vision tokens' logits from that same prefill.",
        epilog="Outputs: PREFIX.npy (labels int32 / depth float32 metres, NaN invalid / mask bool), "
               "PREFIX.png (picture), PREFIX.txt (model answer with the RLE filled in).")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("segment", help="semantic segmentation into given classes",
                       description="Semantic segmentation. Labels follow the <ref> list the model writes "
                                   "(label i = i-th class); with --background label 0 is background.")
    _common(p)
    p.add_argument("--classes", required=True, metavar="A,B,...", help="comma-separated class names")
    p.add_argument("--background", action="store_true",
                   help="background mode (<OTHERS>): sigmoid(z/4) against a constant 0.5")
    p.add_argument("--scale", type=float, default=1.0, metavar="S",
                   help="resize the input by S before the model (paper: x4 ADE20K, x3 COCO-Stuff); "
                        "labels are at the original size")
    p.add_argument("--prompt", default=None, help="custom prompt (default: 'Segment: A, B, ..., without "
                   "the background class.')")
    p.add_argument("--all-classes", action="store_true",
                   help="decode every requested class, not only those the model names")
    p.add_argument("--crf", action="store_true",
                   help="refine with DenseCRF as the paper's benchmarks do (softmax(z/0.2), CRF, argmax; "
                        "docs/crf.md); not with --background")

    p = sub.add_parser("depth", help="metric depth estimation",
                       description="Depth in metres. With --dataset the dataset prompt precedes the image "
                                   "and bins map linearly onto its range; otherwise open-world "
                                   "log-uniform 0.5-100 m.")
    _common(p)
    p.add_argument("--dataset", choices=("NYUv2", "Cityscapes", "DDAD"), default=None,
                   help="dataset prompt and range (NYUv2 0-10 m, Cityscapes 0-80 m, DDAD 0.05-120 m)")
    p.add_argument("--focal-length", type=float, default=None, metavar="PX",
                   help="focal length in pixels (open world): normalises to 2000 px for metric depth; "
                        "without it the depth is relative")

    p = sub.add_parser("refer", help="referring segmentation (grounding, then core target)",
                       description="Mask of the object an expression describes: grounding box, 1.2x crop, "
                                   "'Segment the core target.', pasted back.")
    _common(p)
    p.add_argument("--expression", required=True, help="the referring expression")
    p.add_argument("--crop-short-side", type=int, default=1280, metavar="PX",
                   help="short side the crop is resized to (paper: 1280; lower is faster)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random box colour")

    p = sub.add_parser("segment-open", help="open-set segmentation (categories, detection, masks)",
                       description="Label map of every object the model finds; label 0 = background.")
    _common(p)
    p.add_argument("--max-boxes", type=int, default=30, metavar="N", help="segment the N largest boxes")
    p.add_argument("--crop-short-side", type=int, default=1280, metavar="PX",
                   help="short side of each box crop (paper: 1280)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random box colours")

    p = sub.add_parser("chat", help="one chat turn about an image",
                       description="Ask anything about the image; prints the answer.")
    _common(p)
    p.add_argument("--text", required=True, help="the question")

    p = sub.add_parser("train", help="train a checkpoint from a JSON/YAML config (see docs/training.md)",
                       description="Train with NTP-M on vision tokens and cross-entropy on answers. CONFIG "
                                   "names the model, a JSON-lines file of samples and an output folder "
                                   "(log.jsonl, final/ checkpoint, loss.png); see docs/training.md, 'Trainer'.")
    p.add_argument("config", metavar="CONFIG", help="training config (.json, or .yaml with pyyaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("demo", help="the default model on a procedural scene: segment, depth, refer",
                       description="Generates a held-out procedural scene, runs segment, depth and refer with "
                                   "the default model embedded in the package, writes pictures (overlay with "
                                   "legend, depth colour map with scale bar, referring mask with its box, and "
                                   "the ground truth of each) and prints the scene's metrics. A build without "
                                   "trained default weights runs RANDOM weights of the same architecture and "
                                   "says so on every line.")
    p.add_argument("--out-dir", default="densemllm-demo", metavar="DIR",
                   help="where the pictures go (default: ./densemllm-demo)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="threads (default: all cores)")
    p.add_argument("--image", default=None, metavar="IMAGE",
                   help="your own image instead of a scene (the model only knows the procedural world)")
    p.add_argument("--scene", type=int, default=None, metavar="N", help="index of the held-out scene "
                   "(default: densemllm.data.demo.DEMO_SCENE)")
    p.add_argument("--expression", default=None, help="referring expression (default: the scene's own)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="a checkpoint of the default architecture instead of the embedded model")

    from .eval.cli import add_parser as _add_eval_parser  # densemllm eval (docs/evaluation.md)

    _add_eval_parser(sub)
    # `densemllm --help` documents every option of every command, not just the list.
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    ap.epilog += "\n\n" + "\n".join(f"=== densemllm {name} ===\n{sp.format_help()}"
                                       for name, sp in sub.choices.items())
    return ap


def _load(args):
    import densemllm

    return densemllm.load(args.model, threads=args.threads, backend=args.backend)


def _prefix(args, task):
    name = Path(Path(args.image).stem + "." + task)
    if args.out:
        out = Path(args.out)
        if args.out.endswith(("/", "\\")) or out.is_dir():
            return out / name
        return out
    return name


def _gen(args):
    return {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}


def _write_text(prefix, text):
    # surrounding blank lines of the answer (a random model writes many) are not kept
    from ._atomic import atomic_write

    atomic_write(Path(f"{prefix}.txt"), text.strip() + "\n")


def _write(prefix, array, picture, text):
    prefix.parent.mkdir(parents=True, exist_ok=True)
    np.save(f"{prefix}.npy", array)
    picture.save(f"{prefix}.png")
    _write_text(prefix, text)
    print(f"wrote {prefix}.npy, {prefix}.png, {prefix}.txt")


def _timings(t):
    return ", ".join(f"{k} {v:.2f}s" for k, v in t.items())


def run_segment(model, args, image_path, prefix):
    from . import viz
    from .tasks.common import to_rgb

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    rgb = to_rgb(image_path)
    r = model.segment(rgb, classes, background=args.background, scale=args.scale, prompt=args.prompt,
                      all_classes=args.all_classes, crf=getattr(args, "crf", False), **_gen(args))
    counts = np.bincount(r.labels.ravel(), minlength=len(r.class_names))
    print("classes: " + ", ".join(f"{i}={n} ({counts[i] / r.labels.size:.1%})" for i, n in enumerate(r.class_names)))
    print("timings: " + _timings(r.timings))
    _write(prefix, r.labels, viz.overlay_labels(rgb, r.labels, r.class_names,
                                               background_label=0 if r.background else None), r.model_text())
    return r


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (ValueError, TypeError, OSError, NotImplementedError) as e:
        print(f"densemllm {args.command}: error: {e}", file=sys.stderr)
        return 2


def _main(args):
    if args.command == "demo":
        return demo(args)
    if args.command == "eval":
        from .eval.cli import run as _run_eval

        return _run_eval(args)
    if args.command == "train":
        from .train.trainer import run_config

        run_config(args.config, progress=not args.no_progress)
        return 0
    from . import viz
    from .tasks.common import to_rgb

    model = _load(args)
    prefix = _prefix(args, args.command)
    if args.command == "segment":
        run_segment(model, args, args.image, prefix)
    elif args.command == "depth":
        rgb = to_rgb(args.image)
        r = model.depth(rgb, args.dataset, args.focal_length, **_gen(args))
        ok = np.isfinite(r.depth)
        rng = f"{np.min(r.depth[ok]):.2f}..{np.max(r.depth[ok]):.2f} m" if ok.any() else "no valid pixels"
        print(f"depth ({'metric' if r.metric else 'relative'}): {rng}; timings: {_timings(r.timings)}")
        _write(prefix, r.depth, viz.colorize_depth(r.depth), r.model_text())
    elif args.command == "refer":
        rgb = to_rgb(args.image)
        r = model.refer(rgb, args.expression, crop_short_side=args.crop_short_side, seed=args.seed, **_gen(args))
        print(f"box: {r.box}; mask pixels: {int(r.mask.sum())}; timings: {_timings(r.timings)}")
        _write(prefix, r.mask, viz.overlay_mask(rgb, r.mask, r.box), r.text + "\n" + r.model_text())
    elif args.command == "segment-open":
        rgb = to_rgb(args.image)
        r = model.segment_open(rgb, max_boxes=args.max_boxes, crop_short_side=args.crop_short_side,
                               seed=args.seed, **_gen(args))
        print(f"classes: {r.class_names[1:]}; boxes: {len(r.boxes)}; timings: {_timings(r.timings)}")
        _write(prefix, r.labels, viz.overlay_labels(rgb, r.labels, r.class_names, background_label=0),
               r.text + "\n" + r.detect_text)
    elif args.command == "chat":
        rgb = to_rgb(args.image)
        answer = model.chat(rgb, args.text, **_gen(args))
        print(answer)
        if args.out:
            prefix.parent.mkdir(parents=True, exist_ok=True)
            _write_text(prefix, answer)
            print(f"wrote {prefix}.txt")
    return 0


def demo(args):
    from .data.demo import DEMO_SCENE, run_demo

    run_demo(args.out_dir, threads=args.threads, image=args.image,
             index=DEMO_SCENE if args.scene is None else args.scene, expression=args.expression, model=args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
