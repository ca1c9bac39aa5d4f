"""Atomic file writes: every file the package produces goes through here.

A file is written under a temporary name in its destination folder and renamed
over the destination (``os.replace``, atomic on POSIX and Windows) only once it
is complete. Readers therefore see the old file or the new one, never a partial
one; and a process that has the old file memory-mapped (``densemllm.load`` maps
the safetensors weights) keeps its mapping of the old inode instead of seeing its
weights change underneath it or dying with SIGBUS when the file shrinks.

    with atomic_path("out.npy") as tmp:     # any writer that takes a path
        np.save(tmp, array)
    with atomic_open("config.json", "w") as f:
        json.dump(cfg, f)
    atomic_write("model.safetensors", blob)  # bytes or str

On an exception the temporary file is removed and the destination is untouched.
The temporary name keeps the destination's suffix (writers such as Pillow and
np.save choose the format or append an extension by it) and is created with mode
0o666 minus the umask, like open() would. ``fsync=True`` (default) flushes the data
to disk before the rename, so a crash or power loss cannot leave an empty file
under the final name.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_path", "atomic_open", "atomic_write", "is_temp_name", "remove_stale_temps"]


_TEMP_HEX = 12  # hex digits of the random part


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(_TEMP_HEX // 2)}.tmp{path.suffix}")


def is_temp_name(name: str) -> bool:
    """True for the name of a temporary file of this module (possibly left by a killed writer)."""
    if not name.startswith("."):
        return False
    parts = name[1:].split(".")
    return any(len(p) == _TEMP_HEX and all(c in "0123456789abcdef" for c in p) and parts[i + 1] == "tmp"
               for i, p in enumerate(parts[:-1]))


def remove_stale_temps(folder) -> int:
    """Delete the temporary files a killed writer left in ``folder``; returns how many.
    Only call it where no other process is writing into the folder at the same time."""
    n = 0
    for p in Path(folder).iterdir():
        if p.is_file() and is_temp_name(p.name):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


def _fsync_path(p: Path):
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, *, fsync=True):
    """Yield a temporary Path beside ``path``; when the block ends without an
    exception it replaces ``path``, otherwise it is deleted."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    os.close(fd)
    try:
        yield tmp
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="wb", *, encoding=None, fsync=True):
    """``open(tmp, mode)`` on a temporary file that replaces ``path`` on success.
    ``mode``: "w" or "wb"; text mode defaults to UTF-8."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def atomic_write(path, data, *, fsync=True):
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)
