"""``densemllm eval``: the paper's benchmark protocol on a dataset on disk."""
from __future__ import annotations

import argparse
import dataclasses


def add_parser(sub):
    from . import datasets

    p = sub.add_parser(
        "eval", help="evaluate a checkpoint on a benchmark (mmseg-style dataset on disk)",
        description="Runs the paper's protocol for DATASET (prompt, scale, crops; docs/evaluation.md) over the "
                    "split, stores per-image statistics under --out (a killed run resumes where it stopped) and "
                    "writes report.json / report.md with the paper's numbers beside ours.")
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory")
    p.add_argument("--dataset", required=True, choices=datasets.names(), metavar="NAME",
                   help="one of: " + ", ".join(datasets.names()))
    p.add_argument("--data-root", required=True, metavar="PATH", help="the dataset's folder (as mmseg's data_root)")
    p.add_argument("--split", default=None, help="split (default: the benchmark's evaluation split)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local worker processes, each loading the model once (default 1)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="run the workers on a Ray cluster ('auto', or ray://HEAD:10001); needs densemllm[ray]")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="number of Ray actors with --ray-address (default 2)")
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="skip images already in the store (the default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start this run afresh")
    p.add_argument("--out", default="densemllm-eval", metavar="DIR", help="store and reports (default ./densemllm-eval)")
    p.add_argument("--worst", type=int, default=0, metavar="N", help="write pictures of the N worst images")
    p.add_argument("--no-crf", action="store_true", help="segmentation without DenseCRF (the paper uses it)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="generation limit per model answer (protocol default when omitted)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="threads (one process)")
    p.add_argument("--backend", choices=("onednn", "openblas"), default=None, help="matrix backend")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from . import datasets, evaluate
    from .protocols import default_protocol

    table = datasets.table_of(args.dataset)
    protocol = default_protocol(table)
    if args.no_crf and hasattr(protocol, "crf"):
        protocol = dataclasses.replace(protocol, crf=False)
    if args.max_new_tokens is not None:
        protocol = dataclasses.replace(protocol, max_new_tokens=args.max_new_tokens)
    load = {k: v for k, v in (("threads", args.threads), ("backend", args.backend)) if v is not None}
    workers = args.workers if args.ray_address is None else (args.ray_workers or 2)
    report = evaluate(args.model, args.dataset, data_root=args.data_root, split=args.split, protocol=protocol,
                      limit=args.limit, workers=workers, resume=args.resume, out=args.out,
                      ray_address=args.ray_address, worst=args.worst, progress=not args.no_progress,
                      load_kwargs=load)
    print(report.summary())
    for k, v in report.metrics.items():
        if "." not in k:
            print(f"  {k}: {v}")
    print(f"report: {report.files['json']}, {report.files['markdown']}")
    return 0
