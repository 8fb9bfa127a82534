"""Reading a store's large files: the vectors memory-mapped read-only (with
``MADV_RANDOM``), the FAISS indexes memory-mapped where their kind allows; an unreadable
file is a :class:`~clipindex.errors.DamagedStoreError` naming it (via
:class:`~clipindex.store.verify.Damage`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.store.verify import Damage

__all__ = ["advise_random", "load_faiss", "load_matrix", "mapped_files", "shrunk_in_place"]


def advise_random(matrix: np.ndarray) -> np.ndarray:
    """Tell the kernel a memory-mapped matrix is read at random rows (``MADV_RANDOM``):
    rescoring k candidates then faults in k rows, not k read-ahead windows."""
    import mmap

    mm = getattr(matrix, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        try:
            mm.madvise(mmap.MADV_RANDOM)
        except (OSError, ValueError):  # advice only
            pass
    return matrix


def load_matrix(path: Path) -> np.ndarray:
    """The stored matrix, memory-mapped read-only (float16 stays float16 on disk)."""
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises many kinds on bad bytes
        raise Damage(path, f"is unreadable ({type(exc).__name__})").error() from None
    if matrix.ndim != 2:
        raise Damage(path, f"is not a matrix (shape {matrix.shape})").error()
    return advise_random(matrix)


def load_faiss(path: Path, mmap: bool) -> tuple[Any, bool]:
    """The FAISS index (memory-mapped where its kind allows) and whether it is mapped."""
    from clipindex.store.indexes import load_index

    try:
        if mmap:
            try:
                return load_index(path, mmap=True), True
            except RuntimeError:  # a kind FAISS cannot map: read it into memory
                pass
        return load_index(path), False
    except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError on bad bytes
        raise Damage(path, f"is unreadable ({type(exc).__name__})").error() from None



def _mapped_size(mm: Any) -> int | None:
    try:
        return int(mm.size())  # fstat of the mapping's own descriptor: the mapped inode
    except (OSError, ValueError):
        return None


def _path_size(path: Path, inode: tuple[int, int]) -> int | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if (st.st_dev, st.st_ino) == inode else None


def mapped_files(index: Any) -> list[tuple[Path, Callable[[], int | None], int]]:
    """The files a :class:`~clipindex.store.BackboneIndex` has memory-mapped (its two
    vector matrices, and each FAISS index it mapped): ``(path, size_now, size)`` with
    ``size_now()`` the mapped file's size at the time of the call (None: unknown) and
    ``size`` its size now. The matrices are asked through their mapping's own file
    descriptor, so a file truncated and then replaced is still seen; a FAISS mapping
    (no descriptor of ours) by its path while it is the same inode."""
    out: list[tuple[Path, Callable[[], int | None], int]] = []
    for t, matrix in index.stored.items():
        mm = getattr(matrix, "_mmap", None)
        size = None if mm is None else _mapped_size(mm)
        if size is not None:
            out.append((index.path / f"{t}.npy", partial(_mapped_size, mm), size))
    for t, mapped in index.index_mmapped.items():
        path = index.path / f"{t}.faiss"
        try:
            st = path.stat()
        except OSError:
            continue
        if mapped:
            out.append((path, partial(_path_size, path, (st.st_dev, st.st_ino)), st.st_size))
    return out


def shrunk_in_place(files: Sequence[tuple[Path, Callable[[], int | None], int]]
                    ) -> str | None:
    """A one-line description of the first mapped file of :func:`mapped_files` that is
    now shorter than when it was mapped, else None. Reading a mapping past its file's
    new end kills the process (SIGBUS), so a long-lived reader (``clipindex serve``)
    checks this before it touches the mappings. A rebuild renames new files into place
    and leaves the old mapped ones whole: not damage to this reader."""
    for path, size_now, size in files:
        now = size_now()
        if now is not None and now < size:
            return f"{path} was truncated from {size} to {now} bytes while served"
    return None
