"""Reading a store's large files: the vectors memory-mapped read-only (with
``MADV_RANDOM``), the FAISS indexes memory-mapped where their kind allows; an unreadable
file is a :class:`~clipindex.errors.DamagedStoreError` naming it (via
:class:`~clipindex.store.verify.Damage`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clipindex.store.verify import Damage

__all__ = ["advise_random", "load_faiss", "load_matrix"]


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
