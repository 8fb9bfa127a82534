"""The finished files of a backbone folder: the two matrices and their FAISS indexes.

Each matrix's index is built by :func:`clipindex.index.build.build_faiss`
(``index_kind="auto"`` chooses and tunes it, :mod:`clipindex.index.tuning`): the images
index is tuned on image queries and caption queries (text -> image), the captions index
on caption queries and image queries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clipindex.index.build import build_faiss, rows_of
from clipindex.index.tuning import AutoSettings
from clipindex.store.manifest import write_npy

__all__ = ["write_outputs"]

def write_outputs(folder: Path, images: np.ndarray | None, captions: np.ndarray | None,
                  valid: np.ndarray, dtype: str, index_kind: str,
                  settings: AutoSettings | None = None, *,
                  caption_valid: np.ndarray | None = None) -> dict[str, Any]:
    """Write the two matrices in ``dtype`` (``None``: already in ``folder``) and their
    FAISS indexes (of the ``valid`` image rows and ``caption_valid`` caption rows, default
    all); return the index description for the manifest."""
    for name, matrix in (("images.npy", images), ("captions.npy", captions)):
        if matrix is not None:
            write_npy(folder / name, matrix.astype(dtype))
    # Index what a reader will load: the stored (possibly float16) values.
    # Memory-mapped (float16 stays float16 on disk): indexes convert a block at a time.
    stored_i = np.load(folder / "images.npy", mmap_mode="r")
    stored_c = np.load(folder / "captions.npy", mmap_mode="r")
    cap_valid = np.ones(len(stored_c), bool) if caption_valid is None else caption_valid
    extra: dict[str, Any] = {}
    if index_kind == "auto":
        settings = settings or AutoSettings()
        extra = {"target_recall": settings.target_recall, "max_memory": settings.max_memory}
    return {
        "kind": index_kind,
        **extra,
        "images": build_faiss(stored_i, valid, index_kind, folder / "images.faiss",
                              cross={"text_to_image": stored_c}, self_name="image_to_image",
                              settings=settings),
        "captions": build_faiss(stored_c, cap_valid, index_kind,
                                folder / "captions.faiss",
                                cross={"image_to_text": rows_of(stored_i, np.flatnonzero(valid))},
                                self_name="text_to_text", settings=settings),
    }
