"""The example script and the notebook run as written (so the docs cannot drift from the API)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_script_runs():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stdout
    assert "segment: (96, 128) int32" in r.stdout


def test_quickstart_notebook_cells_run():
    nb = json.loads((ROOT / "notebooks" / "quickstart.ipynb").read_text())
    ns = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec"), ns)
    assert ns["seg"].labels.shape == (96, 128)
    assert ns["dep"].depth.dtype == np.float32
    assert ns["z"].shape[-1] == 2
    assert ns["grad"].shape == (4, 50)


def run_example(name, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_training_script_runs(tmp_path):
    out = run_example("train_default_model.py", "--out", tmp_path / "run", "--steps", 2, "--batch", 1,
                      "--eval-n", 2, "--save-every", 0)
    assert "trained 2 steps (2 examples)" in out and "scenes_refer" in out
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["steps"] == 2 and set(rec["heldout"]) == {"scenes", "scenes_depth", "scenes_refer"}


def test_ablation_script_runs(tmp_path):
    out = run_example("ablate_default_model.py", "--out", tmp_path / "abl", "--steps", 1, "--batch", 1,
                      "--eval-n", 1, "--size", 64, "--only", "ntpm-8,bce")
    assert "64 px" in out and "| ntpm-8 | ntpm | 8 |" in out and "| bce | bce | - |" in out
