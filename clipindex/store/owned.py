"""What a store owns on disk, so that no output a user names lands on it.

A store's dataset folder (``OUT/<dataset>/``) holds ``dataset.json``, ``images.parquet``
and ``captions.parquet``, one folder per backbone (``manifest.json``, the vectors, the
FAISS files, the text cache) and, once added to, ``CURRENT`` and ``.generations/`` (each
generation a dataset folder of its own). Every path inside that folder is the store's:
an output written there (``classify --out OUT/demo/images.parquet``, ``report --out
OUT/demo/dataset.json``) would replace a file the store's hashes vouch for, or put a file
or folder among its backbone folders. :func:`refuse_store_path` refuses any such path
before anything is written; every library function that writes a file or folder the
user names (predictions, the report, Grad-CAM PNGs, bench and demo folders) calls it.

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> refuse_store_path(d / "preds.csv") == d / "preds.csv"
True
"""

from __future__ import annotations

import os
from pathlib import Path

from clipindex.errors import UserInputError

__all__ = ["STORE_MARKERS", "refuse_store_path", "store_folder_of"]

#: Beside ``dataset.json``, one of these makes a folder a store's dataset folder (so a
#: stray ``dataset.json`` of some other tool does not).
STORE_MARKERS = ("images.parquet", "CURRENT", ".generations")


def _is_store_folder(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() and any(
        (folder / name).exists() for name in STORE_MARKERS)


def store_folder_of(path: str | os.PathLike[str]) -> Path | None:
    """The store dataset folder that ``path`` is or lies inside (resolved), else None.

    ``path`` need not exist; links are followed as far as they do."""
    resolved = Path(path).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if _is_store_folder(folder):
            return folder
    return None


def refuse_store_path(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """``path`` as a :class:`~pathlib.Path` when it lies outside every store; a one-line
    :class:`~clipindex.errors.UserInputError` naming ``what``, the path and the store
    when it is (or is inside) a store's dataset folder."""
    folder = store_folder_of(path)
    if folder is None:
        return Path(path)
    p = Path(path).expanduser().resolve()
    where = ("the folder of the store" if p == folder else
             "a file of the store" if p.is_file() else
             "a folder of the store" if p.is_dir() else "a path inside the store")
    raise UserInputError(
        f"{what} {path} is {where} {folder}; write it elsewhere (a store folder holds "
        "only the store's own files: dataset.json, the tables, the backbone folders)")
