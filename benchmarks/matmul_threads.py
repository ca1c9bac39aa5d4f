"""oneDNN matmul: time per product of this tree against a baseline build, same run.

Issue 10 moved the oneDNN primitives to a user-managed scratchpad (one per calling
thread) so concurrent calls are correct; this checks the change costs nothing. Each
measurement runs in a fresh subprocess importing densemllm from a given source root
(this tree, and e.g. a worktree of the previous commit with its extension built
in place); rounds alternate between the roots so both see the same machine load.

    .venv/bin/python benchmarks/matmul_threads.py --baseline /tmp/base [--repeat 5]

Shapes: the Youtu-VL-4B LLM MLP (2560 -> 9728) and attention output products at
prefill sizes M = 256 and 1024, bf16 weights (the default) and f32. Prints the best
ms per product of each root and the ratio new/baseline (< 1: faster)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
from densemllm import _core
rng = np.random.default_rng(0)
out = {}
for M, N, K in [(256, 9728, 2560), (1024, 9728, 2560), (1024, 2560, 4096)]:
    x = rng.standard_normal((M, K), dtype=np.float32)
    w32 = (0.02 * rng.standard_normal((N, K))).astype(np.float32)
    for dt in ("bf16", "f32"):
        w = (w32.view(np.uint32) >> 16).astype(np.uint16) if dt == "bf16" else w32
        _core.matmul(x, w, bf16=dt == "bf16")  # warm-up: primitive creation
        best = 1e9
        for _ in range(5):
            t = time.perf_counter()
            _core.matmul(x, w, bf16=dt == "bf16")
            best = min(best, time.perf_counter() - t)
        out[f"M={M} N={N} K={K} {dt}"] = best * 1e3
print(json.dumps(out))
"""


def run(root):
    env = dict(os.environ, PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True,
                       cwd=root)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="source root of the baseline build")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    roots = {"this tree": Path(__file__).resolve().parents[1], "baseline": Path(a.baseline).resolve()}
    res = {k: [] for k in roots}
    for _ in range(a.repeat):
        for k, root in roots.items():
            res[k].append(run(root))
    print(f"{'product':34s} {'this tree ms':>13s} {'baseline ms':>12s} {'ratio':>6s}")
    for key in res["this tree"][0]:
        new = min(r[key] for r in res["this tree"])
        old = min(r[key] for r in res["baseline"])
        print(f"{key:34s} {new:13.2f} {old:12.2f} {new / old:6.3f}")


if __name__ == "__main__":
    main()
