"""Reading a store's large files: the vectors memory-mapped read-only (with
``MADV_RANDOM``), the FAISS indexes memory-mapped where their kind allows; an unreadable
file is a :class:`~clipindex.errors.DamagedStoreError` naming it (via
:class:`~clipindex.store.verify.Damage`). A FAISS index is read on first use
(:class:`LazyFaiss`), from the very file that was checked when the store was opened."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.store.verify import Damage

#: Where a process's open descriptors are named (Linux); see :class:`LazyFaiss`.
PROC_FD = Path("/proc/self/fd")

__all__ = ["LazyFaiss", "advise_random", "load_faiss", "load_matrix", "mapped_files",
           "shrunk_in_place"]


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


def load_faiss(path: Path, mmap: bool, shown: Path | None = None) -> tuple[Any, bool]:
    """The FAISS index (memory-mapped where its kind allows) and whether it is mapped;
    ``shown`` is the path an error names (``path`` may be a ``/proc/self/fd`` link)."""
    from clipindex.index.files import load_index

    try:
        if mmap:
            try:
                return load_index(path, mmap=True), True
            except RuntimeError:  # a kind FAISS cannot map: read it into memory
                pass
        return load_index(path), False
    except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError on bad bytes
        raise Damage(shown or path, f"is unreadable ({type(exc).__name__})"
                     ).error() from None


class LazyFaiss:
    """One FAISS file of an open store, read (or memory-mapped) on first :meth:`get`.

    Opening a store only opens the file (a descriptor, kept while this object lives):
    reading a 1M-row flat index costs ~90 ms, and an image query never needs the
    captions index. The first :meth:`get` reads the file through that descriptor
    (``/proc/self/fd/N``), so it reads the very file that was checked at open, even if a
    rebuild renamed another one into place since, exactly as an index read at open
    would. Where ``/proc`` is missing the path is read while it still names the same
    file (device, inode); a replaced one is a :class:`DamagedStoreError` (reopen it).
    Thread-safe: concurrent first queries read the file once.
    """

    def __init__(self, path: Path, mmap: bool, index: Any = None,
                 mapped: bool | None = None) -> None:
        self.path, self.mmap = Path(path), mmap
        self._index, self._mapped = index, mapped
        self._lock = threading.Lock()
        self._fd: int | None = None
        if index is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                st = os.fstat(self._fd)
            except OSError as exc:
                if self._fd is not None:
                    os.close(self._fd)
                raise Damage(self.path, f"is unreadable ({exc.strerror or exc})"
                             ).error() from None
            self.identity, self.size = (st.st_dev, st.st_ino), st.st_size
            weakref.finalize(self, os.close, self._fd)

    @classmethod
    def loaded(cls, index: Any, mapped: bool = False, path: Path | None = None
               ) -> LazyFaiss:
        """An index already in memory (a stand-in or a test's), behind the same API."""
        return cls(path or Path("<memory>"), mapped, index=index, mapped=mapped)

    @property
    def is_loaded(self) -> bool:
        """Whether the index was read already."""
        return self._index is not None

    @property
    def mapped(self) -> bool:
        """Whether the index is memory-mapped (reads it first if needed)."""
        self.get()
        return bool(self._mapped)

    def get(self) -> Any:
        """The FAISS index, read on the first call."""
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index, self._mapped = load_faiss(self._source(), self.mmap,
                                                           self.path)
        return self._index

    def _source(self) -> Path:
        link = PROC_FD / str(self._fd)
        if link.exists():
            return link
        try:
            st = self.path.stat()
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self.identity:
            raise Damage(self.path, "was replaced after the store was opened (reopen "
                         "it to read the new file)").error()
        return self.path

    def size_now(self) -> int | None:
        """The size of the file opened at open (None: unknown, or not from a file)."""
        if self._fd is None:
            return None
        try:
            return os.fstat(self._fd).st_size
        except OSError:
            return None



def _mapped_size(mm: Any) -> int | None:
    try:
        return int(mm.size())  # fstat of the mapping's own descriptor: the mapped inode
    except (OSError, ValueError):
        return None


def mapped_files(index: Any) -> list[tuple[Path, Callable[[], int | None], int]]:
    """The files a :class:`~clipindex.store.BackboneIndex` has memory-mapped (its two
    vector matrices, and each FAISS index it mapped): ``(path, size_now, size)`` with
    ``size_now()`` the mapped file's size at the time of the call (None: unknown) and
    ``size`` its size now. The matrices are asked through their mapping's own file
    descriptor, so a file truncated and then replaced is still seen; a FAISS file
    through the descriptor :class:`LazyFaiss` keeps (whether it is mapped already or
    not read yet: a read would map it)."""
    out: list[tuple[Path, Callable[[], int | None], int]] = []
    for t, matrix in index.stored.items():
        mm = getattr(matrix, "_mmap", None)
        size = None if mm is None else _mapped_size(mm)
        if size is not None:
            out.append((index.path / f"{t}.npy", partial(_mapped_size, mm), size))
    for lazy in getattr(index, "faiss_files", {}).values():
        pending = not lazy.is_loaded and lazy.mmap
        if (pending or (lazy.is_loaded and lazy.mapped)) and lazy.size_now() is not None:
            out.append((lazy.path, lazy.size_now, lazy.size))
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
