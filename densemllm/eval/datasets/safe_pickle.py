"""Read a pickle file WITHOUT executing code from it.

A pickle can name any importable callable (``GLOBAL``/``STACK_GLOBAL`` then ``REDUCE``)
and so run arbitrary code on load. The RefCOCO ``refs(*).p`` files only hold plain
data (lists of dicts of strings and numbers), which the pickle machine builds with
opcodes that import nothing. This unpickler refuses every import (``find_class``) and
every persistent id, so such a file loads and anything else is rejected with an error
naming the file and the global it asked for."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

MAX_BYTES = 2 << 30  # the real refs(unc).p is ~30 MB; refuse anything absurd up front

PLAIN = (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool, type(None))


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than plain containers and numbers."""


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, f, what):
        # Python 2 pickles (the refer toolkit's) store str as bytes: latin1 maps them 1:1
        super().__init__(f, encoding="latin1")
        self.what = what

    def find_class(self, module, name):
        raise UnsafePickleError(f"{self.what}: refuses to load the global {module}.{name}; only plain "
                                f"containers (dict, list, tuple, set), strings and numbers are accepted, "
                                f"so this file could execute code and is not read")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.what}: refuses a persistent id {pid!r}; only plain data is accepted")


def load_plain_pickle(path) -> object:
    """The object in pickle file ``path``, built from plain data only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{path} is {size} bytes, more than the {MAX_BYTES} a refs file may have")
    data = path.read_bytes()
    try:
        obj = _PlainUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated / not a pickle: a clear error, not a traceback from inside pickle
        raise ValueError(f"{path} is not a readable pickle: {type(e).__name__}: {e}") from e
    _check_plain(obj, path)
    return obj


def _check_plain(obj, path):
    stack = [obj]
    while stack:
        o = stack.pop()
        if not isinstance(o, PLAIN):
            raise UnsafePickleError(f"{path}: holds a {type(o).__name__}; only plain data is accepted")
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
