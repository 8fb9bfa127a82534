"""Atomic file writes, and the project's one JSON writer and reader.

Every file clipindex writes for a reader to open goes through :func:`atomic_write`; every
JSON file goes through :func:`write_json_atomic` (callers choose key order, a ``default``
for non-JSON values and whether NaN is allowed, so each file keeps its own bytes) and is
read back with :func:`read_json`. This module sits at the bottom of the package (it
imports nothing of clipindex), so every layer can use it.

A write goes to a temporary file in the target's folder, is fsynced, then renamed over
the target, so a reader sees the old file or the new one, never half of one. The result
gets ordinary permissions (0o666 less the umask, like ``open(path, "w")``), not the
0o600 that :func:`tempfile.mkstemp` gives. An ``OSError`` that is a fault of the machine
(disk full, read-only file system, no permission, open-file limit, I/O error) is raised
as :class:`clipindex.errors.ResourceError` naming the target, after the temporary file
is removed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from clipindex.errors import os_faults

__all__ = ["atomic_write", "atomic_write_bytes", "read_json", "write_json_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *,
                 make_parents: bool = True, needs: int | None = None) -> Path:
    """Write ``path`` via ``write(fh)`` (a binary file object) atomically; its folder is
    created first unless ``make_parents`` is False (then a missing folder is a
    ``FileNotFoundError`` and nothing is written).

    ``needs``: the bytes it will take, if known (named when the disk is full).

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> atomic_write(p, lambda fh: fh.write(b"hi")).read_bytes()
    b'hi'
    """
    path = Path(path)
    with os_faults(path, needs=needs):
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data), needs=len(data))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None,
                      allow_nan: bool = True) -> Path:
    """Write ``obj`` as JSON indented by 2 with a trailing newline (UTF-8) atomically.

    ``sort_keys``, ``default`` and ``allow_nan`` are :func:`json.dumps`'s (the store
    keeps insertion order, benchmark records sort keys and refuse NaN).

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.json"
    >>> write_json_atomic(p, {"b": 1, "a": [2]}).read_text()
    '{\\n  "a": [\\n    2\\n  ],\\n  "b": 1\\n}\\n'
    """
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=default,
                      allow_nan=allow_nan)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value of the UTF-8 file ``path`` (``OSError`` / ``ValueError`` when the
    file is missing or not JSON)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
