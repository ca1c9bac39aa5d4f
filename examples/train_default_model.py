"""Train the default model on the procedural scenes, evaluate it on the held-out split
and (with --install) put its weights into the package.

    python examples/train_default_model.py --out runs/default [--steps 2000] [--seed 0]
        [--time-limit 3600] [--eval-n 200] [--install]

Reproducible: the scenes, task mix, prompts and init come from --seed. Prints the wall
time, the held-out metrics through densemllm.eval and writes OUT/record.json,
OUT/log.jsonl, OUT/model/ (a checkpoint densemllm.load reads). docs/default-model.md
records the runs.
"""
import argparse
import json
import time
from pathlib import Path

from densemllm._atomic import atomic_write
from densemllm.data import layout
from densemllm.data.train_default import Recipe, evaluate_heldout, install, train


def main(argv=None):
    d = Recipe()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--loss", default=d.loss)
    ap.add_argument("--k", type=int, default=d.k)
    ap.add_argument("--save-every", type=int, default=200, metavar="N", help="also save every N steps")
    ap.add_argument("--time-limit", type=float, default=None, metavar="S", help="stop training after S seconds")
    ap.add_argument("--threads", type=int, default=1, help="threads (default 1: fastest on a shared 2-core machine)")
    ap.add_argument("--eval-n", type=int, default=200, help="held-out scenes to evaluate (0: skip)")
    ap.add_argument("--install", action="store_true", help="copy the weights into densemllm/models/default/")
    a = ap.parse_args(argv)
    out = Path(a.out)
    recipe = Recipe(seed=a.seed, steps=a.steps, batch=a.batch, lr=a.lr, loss=a.loss, k=a.k,
                    warmup=min(d.warmup, max(1, a.steps // 10)), time_limit_s=a.time_limit)
    t0 = time.perf_counter()
    ck, record = train(out, recipe, threads=a.threads, save_every=a.save_every)
    print(f"trained {record['steps']} steps ({record['examples']} examples) in {record['seconds']:.0f} s -> {ck}")
    if a.eval_n:
        data = out / "heldout"
        if not (data / "meta" / "val.json").is_file():
            layout.write_heldout(data, a.eval_n)
        record["heldout"] = evaluate_heldout(ck, data, n=None, threads=a.threads)
        record["heldout_n_scenes"] = a.eval_n
        for name, m in record["heldout"].items():
            print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}))
    record["total_seconds"] = time.perf_counter() - t0
    atomic_write(out / "record.json", json.dumps(record, indent=1))
    print(f"wall time {record['total_seconds']:.0f} s; record: {out / 'record.json'}")
    if a.install:
        held = dict(record["heldout"], n_scenes=a.eval_n) if "heldout" in record else None
        print("installed", install(ck, held))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
