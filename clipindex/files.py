"""Atomic file writes: the one place clipindex writes a file a reader may open.

A write goes to a temporary file in the target's folder, is fsynced, then renamed over
the target, so a reader sees the old file or the new one, never half of one. The result
gets ordinary permissions (0o666 less the umask, like ``open(path, "w")``), not the
0o600 that :func:`tempfile.mkstemp` gives.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "write_json_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` via ``write(fh)`` (a binary file object) atomically.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> atomic_write(p, lambda fh: fh.write(b"hi")).read_bytes()
    b'hi'
    """
    path = Path(path)
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
    return atomic_write(path, lambda fh: fh.write(data))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``obj`` as indented JSON (trailing newline) atomically."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=default)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))
