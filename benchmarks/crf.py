"""DenseCRF cost: densemllm.dense_crf against pydensecrf (pydensecrf2, the original densecrf
C++ code) on the same inputs, in the same run (issue 15: target < 1 s for 512x512 x 19
classes, 5 iterations, on 2 cores).

Inputs (seeded): a synthetic photo-like RGB image (Voronoi regions with smooth shading and
pixel noise) and class probabilities softmax((one-hot(region class) + N(0, 0.5)) / 0.2), the
paper's temperature. Parameters: densemllm.crf.DEFAULTS (pydensecrf's README values: Gaussian
sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10), 5 iterations.

Each (implementation, size) runs in its own subprocess:
  time   : best of --repeat calls (all listed; wall clock), and the process CPU time (all
           threads; the fairer figure while other jobs load the machine). densemllm: one dense_crf call (argument checks,
           lattice construction, inference; Q out). pydensecrf: DenseCRF2D + setUnaryEnergy +
           addPairwiseGaussian + addPairwiseBilateral + inference + the copy to NumPy; its unary
           (-log clip(p), class-major [C, N]) is prepared before the clock starts.
  memory : growth of the process's peak RSS (VmHWM) over the RSS with the inputs present; the
           peak is reset (write 5 to /proc/self/clear_refs) before each call; max over calls.
  agree  : share of pixels whose argmax equals pydensecrf's, and max |Q - Q_pydensecrf| over the
           first 65536 pixels (saved by the subprocesses).
pydensecrf is single-threaded (densecrf has no threading); densemllm runs with --threads.

    .venv/bin/python benchmarks/crf.py [--threads 2] [--repeat 3] [--sizes 512,1024] [--classes 19,150]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SAMPLE = 65536


def make_inputs(H, W, C, seed=0):
    rng = np.random.default_rng(seed)
    n_regions = 48
    cy, cx = rng.integers(0, H, n_regions), rng.integers(0, W, n_regions)
    region = np.zeros((H, W), np.int32)
    best = np.full((H, W), np.inf)
    yy, xx = np.mgrid[0:H, 0:W]
    for r in range(n_regions):  # Voronoi without an [H, W, regions] temporary
        d = (yy - cy[r]) ** 2 + (xx - cx[r]) ** 2
        m = d < best
        best[m], region[m] = d[m], r
    palette = rng.integers(30, 226, (n_regions, 3))
    shade = (yy / H - 0.5) * 40 + (xx / W - 0.5) * 20
    image = np.clip(palette[region] + shade[..., None] + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8)
    cls = rng.integers(0, C, n_regions)[region]
    z = rng.normal(0, 0.5, (H, W, C)).astype(np.float32)
    np.put_along_axis(z, cls[..., None], np.take_along_axis(z, cls[..., None], -1) + 1, -1)
    z /= 0.2
    z -= z.max(-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(-1, keepdims=True)
    return image, z


def rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(impl, H, W, C, threads, repeat, out_path):
    image, probs = make_inputs(H, W, C)
    if impl == "densemllm":
        import densemllm
        from densemllm.crf import DEFAULTS, dense_crf

        densemllm.set_num_threads(threads)

        def call():
            return dense_crf(image, probs, **DEFAULTS)
    else:
        import pydensecrf.densecrf as dcrf
        from densemllm.crf import DEFAULTS as P

        unary = np.ascontiguousarray(-np.log(np.clip(probs, P["clip"], 1)).reshape(-1, C).T)
        del probs

        def call():
            d = dcrf.DenseCRF2D(W, H, C)
            d.setUnaryEnergy(unary)
            d.addPairwiseGaussian(sxy=P["sxy_gaussian"], compat=P["compat_gaussian"])
            d.addPairwiseBilateral(sxy=P["sxy_bilateral"], srgb=P["srgb"], rgbim=image, compat=P["compat_bilateral"])
            q = np.array(d.inference(P["iterations"]))  # [C, N]
            return q.T.reshape(H, W, C)
    base = rss_kb("VmRSS")
    times, cpu, peak = [], [], 0
    for _ in range(repeat):
        reset_peak()
        t, c = time.perf_counter(), time.process_time()
        q = call()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        peak = max(peak, rss_kb("VmHWM") - base)
        labels = q.argmax(-1).astype(np.int16)
        sample = np.array(q.reshape(-1, C)[:SAMPLE])
        del q
    np.savez(out_path, labels=labels, sample=sample)
    print(json.dumps(dict(times=times, cpu=cpu, peak_mib=peak / 1024)))


def run(impl, H, W, C, threads, repeat, tmp):
    out = os.path.join(tmp, f"{impl}-{H}-{C}-{threads}.npz")
    r = subprocess.run([sys.executable, __file__, "--child", impl, str(H), str(W), str(C), str(threads),
                        str(repeat), out], capture_output=True, text=True)
    if r.returncode != 0:
        return dict(error=(r.stderr or r.stdout).strip().splitlines()[-1:]), None
    return json.loads(r.stdout.strip().splitlines()[-1]), np.load(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--classes", default="19,150")
    ap.add_argument("--no-reference", action="store_true", help="skip pydensecrf")
    ap.add_argument("--child", nargs=7)
    a = ap.parse_args()
    if a.child:
        impl, H, W, C, threads, repeat, out = a.child
        return child(impl, int(H), int(W), int(C), int(threads), int(repeat), out)
    try:
        import pydensecrf.densecrf  # noqa: F401
        have_ref = not a.no_reference
    except ImportError as e:
        print(f"pydensecrf not available ({e}): densemllm only")
        have_ref = False
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    print(f"CPU: {cpu} ({os.cpu_count()} cpus; {', '.join(isa)}); load average {os.getloadavg()}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| size | classes | implementation | threads | time (best) | all calls (s) | CPU time (best) | "
          "peak extra memory | labels = pydensecrf | max abs dQ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for S in [int(s) for s in a.sizes.split(",")]:
            for C in [int(c) for c in a.classes.split(",")]:
                rows = [("densemllm", a.threads)]
                if a.threads != 1:
                    rows.append(("densemllm", 1))
                if have_ref:
                    rows.append(("pydensecrf", 1))
                res = {row: run(row[0], S, S, C, row[1], a.repeat, tmp) for row in rows}
                ref = res.get(("pydensecrf", 1), (None, None))[1]
                for (impl, th), (r, arrays) in res.items():
                    if "error" in r:
                        print(f"| {S}x{S} | {C} | {impl} | {th} | failed: {r['error']} | | | | | |")
                        continue
                    agree = dq = ""
                    if ref is not None and arrays is not None and impl != "pydensecrf":
                        agree = f"{(arrays['labels'] == ref['labels']).mean():.5f}"
                        dq = f"{np.abs(arrays['sample'] - ref['sample']).max():.1e}"
                    calls = ", ".join(f"{t:.3f}" for t in r["times"])
                    print(f"| {S}x{S} | {C} | {impl} | {th} | {min(r['times']):.3f} s | {calls} | "
                          f"{min(r['cpu']):.3f} s | {r['peak_mib']:.0f} MiB | {agree} | {dq} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
