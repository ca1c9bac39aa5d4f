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
