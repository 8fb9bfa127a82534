"""Index files: :func:`save_index` (atomic: temp file, fsync, rename) and
:func:`load_index` (read into memory, or memory-mapped read-only with ``mmap=True``).

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> from clipindex.index.kinds import build_index
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.faiss"
>>> load_index(save_index(build_index(np.eye(2, dtype="float32")), p), mmap=True).ntotal
2
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss

from clipindex.errors import os_error_from_text, os_faults

__all__ = ["load_index", "save_index"]


def save_index(index: faiss.Index, path: str | os.PathLike[str]) -> Path:
    """Write ``index`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    Example
    -------
    >>> import numpy as np, tempfile, pathlib
    >>> from clipindex.index.kinds import build_index
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.faiss"
    >>> load_index(save_index(build_index(np.eye(2, dtype="float32")), p)).ntotal
    2
    """
    path = Path(path)
    # faiss writes the file itself (no copy of a multi-GB index in memory), then the
    # temp file is synced and renamed over ``path``: a reader sees the old or the new.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os_faults(path):
            try:
                faiss.write_index(index, str(tmp))
            except RuntimeError as exc:  # an OS fault as FAISS words it: a ResourceError
                raise (os_error_from_text(exc, path) or exc) from exc
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_index(path: str | os.PathLike[str], *, mmap: bool = False) -> faiss.Index:
    """Read an index written by :func:`save_index`.

    With ``mmap=True`` the index's bulk data is memory-mapped read-only instead of read
    into memory: FAISS's ``IO_FLAG_MMAP_IFC`` maps the codes of every kind built on flat
    codes (flat, PQ, HNSW storage) and the inverted lists of IVF kinds, so opening a large
    index costs almost no resident memory until it is searched. A mapped index cannot
    be added to.

    Example
    -------
    >>> import numpy as np, tempfile, pathlib
    >>> from clipindex.index.kinds import build_index
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.faiss"
    >>> load_index(save_index(build_index(np.eye(2, dtype="float32")), p)).d
    2
    >>> load_index(p, mmap=True).ntotal
    2
    """
    flags = (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY) if mmap else 0
    # read_index returns the concrete class (and owns it); wrapping it again with
    # downcast_index would let the owning proxy free the index.
    return faiss.read_index(os.fspath(path), flags)
