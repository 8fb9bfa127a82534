"""Disk space: what a store write needs, checked before writing, and memory maps whose
blocks are allocated before a byte is written through them.

A memory map written past the space a full disk could give is not an ``OSError``: the
kernel kills the process with SIGBUS ("Bus error", exit 135). So a matrix written
through a memory map (:func:`reserved_memmap`) first gets every block of its file
allocated (``os.posix_fallocate``), which fails with ENOSPC instead; and a build, add
or compact checks the free space against what it will write (:func:`check_space`)
before it writes anything. Both raise :class:`~clipindex.errors.ResourceError` naming
the path and the space needed; the partial file is removed.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from clipindex.errors import ResourceError, disk_full, os_faults

__all__ = ["check_space", "matrix_bytes", "naming_needs", "reserved_memmap"]

#: Slack for the tables, records and file-system metadata around the matrices.
_SLACK = 1 << 16


def matrix_bytes(rows: int, dim: int, dtype: str = "float32") -> int:
    """Bytes of a ``(rows, dim)`` matrix of ``dtype`` on disk (npy header included)."""
    return int(rows) * int(dim) * np.dtype(dtype).itemsize + 128


def check_space(path: str | os.PathLike[str], needs: int) -> None:
    """Raise a disk-full :class:`~clipindex.errors.ResourceError` when the file system
    holding ``path`` (or its nearest existing parent) has less than ``needs`` bytes free.

    Examples
    --------
    >>> check_space(".", 1)
    """
    probe = Path(path).absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:  # cannot tell: the writes themselves will say
        return
    if free < needs + _SLACK:
        raise disk_full(path, needs=needs + _SLACK)


def reserved_memmap(path: Path, dtype: str, shape: tuple[int, int]) -> np.memmap:
    """``numpy.lib.format.open_memmap(path, "w+", dtype, shape)`` with every block of
    the file allocated first: a full disk raises a ResourceError (and ``path`` is
    removed) instead of a SIGBUS later."""
    needs = matrix_bytes(shape[0], shape[1], dtype)
    with os_faults(path, needs=needs):
        try:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            with open(path, "rb+") as fh:
                _allocate(fh.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return out


def _allocate(fd: int) -> None:
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - macOS: check_space only
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # cannot reserve here
            raise


@contextmanager
def naming_needs(path: str | os.PathLike[str], estimate: Callable[[], int]) -> Iterator[None]:
    """A disk-full :class:`~clipindex.errors.ResourceError` raised inside without the
    space needed gets ``estimate()`` (computed only then: it may build a model skeleton)."""
    try:
        yield
    except ResourceError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or exc.needs:
            raise
        raise disk_full(exc.path or path, needs=estimate(), code=exc.errno) from exc
