"""The build lock: one build at a time writes a dataset folder."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clipindex.errors import UserInputError, os_faults

__all__ = ["LOCK_NAME", "build_lock"]

LOCK_NAME = ".clipindex-build.lock"


@contextmanager
def build_lock(dataset_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``dataset_dir`` while a build writes into it.

    A second build of the same folder (another process or the same one) fails at once
    with a :class:`UserInputError` naming the holder's pid, instead of interleaving
    shards and tables. The lock is ``flock`` on a hidden file, released by the kernel
    when its holder exits, killed or not, so it never goes stale. Where ``fcntl`` is
    missing (Windows) builds are not locked. A folder that cannot be written (read-only
    file system, no permission, disk full) fails here, before anything is written, with
    a :class:`~clipindex.errors.ResourceError` naming it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = dataset_dir / LOCK_NAME
    with os_faults(path):
        dataset_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise UserInputError(
                f"another clipindex build (pid {holder}) is writing {dataset_dir}; wait "
                "for it to finish, or build into another --out"
            ) from None
        with os_faults(path):
            os.ftruncate(fd, 0)
            try:
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as exc:  # the pid is a courtesy: a full disk is named later,
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # with the space needed
                    raise
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
