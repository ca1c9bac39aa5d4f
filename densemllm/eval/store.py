"""The on-disk per-image result store.

``<out>/store/<model>/<dataset>/<split>/<protocol hash>/`` holds ``manifest.json`` (what
the key means, readable) and one ``<image>.npz`` per evaluated image: its sufficient
statistics (and, when asked, the prediction). Every file is written to a temporary
name in the same folder and renamed over the target, so a killed run leaves either
the whole file or none: a resumed run skips the images whose file exists and never
counts an image twice (one file per image id)."""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np

from .._atomic import atomic_write, is_temp_name, remove_stale_temps

__all__ = ["atomic_write", "Store", "slug"]

def slug(text: str, n=48) -> str:
    """A file-name-safe form of ``text`` plus a short hash (distinct texts stay distinct)."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._")[:n] or "x"
    return f"{s}-{hashlib.sha1(str(text).encode()).hexdigest()[:8]}"


def key_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Store:
    def __init__(self, out, model_key: str, dataset: str, split: str, protocol: dict):
        self.manifest = {"model": model_key, "dataset": dataset, "split": split, "protocol": protocol}
        self.dir = Path(out) / "store" / slug(model_key) / slug(dataset) / slug(split) / key_hash(protocol)
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)  # left by a killed writer: never a result
        man = self.dir / "manifest.json"
        text = json.dumps(self.manifest, indent=2, sort_keys=True, default=str)
        if man.exists():
            old = json.loads(man.read_text())
            if json.dumps(old, sort_keys=True, default=str) != json.dumps(json.loads(text), sort_keys=True):
                raise RuntimeError(f"{man} describes a different run than this one; remove the folder or use "
                                   f"another out=")
        else:
            atomic_write(man, text.encode())

    def path(self, image_id: str) -> Path:
        return self.dir / (slug(image_id) + ".npz")

    def has(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    def put(self, image_id: str, stats: dict, prediction=None) -> None:
        arrays = {"__id__": np.array(image_id)}
        for k, v in stats.items():
            arrays["s_" + k] = np.asarray(v)
        if prediction is not None:
            arrays["prediction"] = np.asarray(prediction)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write(self.path(image_id), buf.getvalue())

    def get(self, image_id: str, with_prediction=False):
        p = self.path(image_id)
        with np.load(p, allow_pickle=False) as z:
            if str(z["__id__"]) != image_id:
                raise RuntimeError(f"{p} holds image {str(z['__id__'])!r}, not {image_id!r}")
            stats = {k[2:]: z[k] for k in z.files if k.startswith("s_")}
            stats = {k: (v.item() if v.ndim == 0 else v) for k, v in stats.items()}
            pred = z["prediction"] if with_prediction and "prediction" in z.files else None
        return (stats, pred) if with_prediction else stats

    def ids(self) -> set:
        out = set()
        for p in self._results():
            with np.load(p, allow_pickle=False) as z:
                out.add(str(z["__id__"]))
        return out

    def _results(self):
        return [p for p in self.dir.glob("*.npz") if not is_temp_name(p.name)]

    def clear(self) -> None:
        for p in self._results():
            p.unlink()
