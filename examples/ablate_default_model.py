"""Loss ablation of the paper (Tables 3, 4, 7) on the procedural scenes: the default
model trained for the same fixed budget with NTP-M (k = 8, 32, 128), the individual
(per-group) mean without sampling, plain BCE and single-label NTP (cross-entropy on
the majority class), then the held-out segmentation mIoU of its dense readout.

    python examples/ablate_default_model.py --out runs/ablation [--steps 100] [--batch 8]
        [--seed 0] [--eval-n 50] [--size 192] [--only ntpm-32,bce]

Budget: every variant trains --steps x --batch segmentation examples from the same
seeded stream (same scenes, prompts and init; only the vision loss differs; the text
loss is the same CE on the answers). The vision loss runs over the WHOLE vocabulary
(3590 ids), as in the paper: with only the 8 class ids valid, k >= 7 would make NTP-M
and the individual mean the same loss. Evaluation: the first --eval-n held-out scenes,
``model.segment(image, CLASSES, all_classes=True)`` (every class decoded from its own
token, so the number measures the vision tokens' logits, not the generated text),
mIoU with densemllm.eval.metrics.SegMetric (mmseg's formula). Writes OUT/ablation.json
and prints a Markdown table.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> (loss variant, k)
    "ntpm-8": ("ntpm", 8), "ntpm-32": ("ntpm", 32), "ntpm-128": ("ntpm", 128),
    "individual": ("individual", 32), "bce": ("bce", 32), "ntp": ("ntp_ce", 32),
}
PAPER = {"ntpm-8": "50.79 (Table 7)", "ntpm-32": "51.21 (Tables 3, 4, 7)", "ntpm-128": "49.93 (Table 7)",
         "individual": "32.7 (Table 3, Indiv. Mean)", "bce": "16.7 (Table 3)", "ntp": "35.33 (Table 4, NTP)"}


def heldout_miou(model_dir, n, threads=1, size=None):
    import densemllm
    from densemllm.data import heldout_scene, tables
    from densemllm.eval.metrics import SegMetric

    m = densemllm.load(model_dir, threads=threads)
    metric = SegMetric(len(tables.CLASSES), tables.IGNORE_INDEX, tables.CLASSES)
    stats = []
    for i in range(n):
        s = heldout_scene(i, size=size)
        r = m.segment(s.image, list(tables.CLASSES), all_classes=True, max_new_tokens=1)
        stats.append(metric.image_stats(r.labels.astype(np.int64), s.labels.astype(np.int64)))
    return metric.reduce(stats)


def main(argv=None):
    from densemllm._atomic import atomic_write
    from densemllm.data.train_default import Recipe, train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-n", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=Recipe.size, help="scene side in pixels (training and held-out)")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ", ".join(VARIANTS))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = a.only.split(",") if a.only else list(VARIANTS)
    res_path = out / "ablation.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    for name in names:
        loss, k = VARIANTS[name]
        if name in results:
            continue
        t0 = time.perf_counter()
        recipe = Recipe(seed=a.seed, steps=a.steps, batch=a.batch, loss=loss, k=k, warmup=max(1, a.steps // 10),
                        mix={"segment": 1.0}, valid="vocab", size=a.size)
        ck, rec = train(out / name, recipe, threads=a.threads, log=lambda *x: None, save_every=0)
        met = heldout_miou(ck, a.eval_n, a.threads, (a.size, a.size))
        results[name] = {"loss": loss, "k": k, "mIoU": met["mIoU"], "aAcc": met["aAcc"],
                         "train_seconds": rec["seconds"], "seconds": time.perf_counter() - t0}
        atomic_write(res_path, json.dumps(results, indent=1))
        print(f"{name}: mIoU {met['mIoU']:.1f} (train {rec['seconds']:.0f} s)", flush=True)
    print(f"\nbudget: {a.steps} steps x {a.batch} segmentation examples of {a.size} px, seed {a.seed}; "
          f"held-out: first {a.eval_n} scenes\n")
    print("| variant | loss | k | mIoU (ours) | paper (ADE20K mIoU) |\n| --- | --- | --- | --- | --- |")
    for name in VARIANTS:
        if name in results:
            r = results[name]
            print(f"| {name} | {r['loss']} | {r['k'] if r['loss'] == 'ntpm' else '-'} | {r['mIoU']:.1f} | {PAPER[name]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
