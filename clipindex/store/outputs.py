"""The finished files of a backbone folder: the two matrices and their FAISS indexes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.store.manifest import write_npy

__all__ = ["RECALL_K", "build_faiss", "write_outputs"]

log = logging.getLogger("clipindex.store")

#: Approximate index kinds record their recall@RECALL_K against the exact index.
RECALL_K = 10


def build_faiss(vectors: np.ndarray, valid: np.ndarray, kind: str, path: Path
                ) -> dict[str, Any]:
    """Index the ``valid`` rows of ``vectors`` (ids = row ids) into ``path``; return the
    index description (with ``recall_at_10`` for approximate kinds). Too few vectors to
    train an approximate kind fall back to exact flat, with a warning."""
    from clipindex.store import indexes  # faiss, only when a build gets this far

    ids = np.flatnonzero(valid)
    use = kind if len(ids) else "flat"
    try:
        index = indexes.build_index(vectors[ids], ids, kind=use)
    except RuntimeError as exc:  # too few vectors to train an approximate index
        log.warning("%s: %s index failed (%s); using exact flat", path.name, kind, exc)
        use, index = "flat", indexes.build_index(vectors[ids], ids)
    desc = indexes.describe_index(index)
    if use != "flat":
        rng = np.random.default_rng(0)
        sample = rng.choice(ids, size=min(200, len(ids)), replace=False)
        exact = indexes.build_index(vectors[ids], ids)
        desc[f"recall_at_{RECALL_K}"] = indexes.measure_recall(
            index, exact, vectors[np.sort(sample)], RECALL_K)
    indexes.save_index(index, path)
    return desc


def write_outputs(folder: Path, images: np.ndarray | None, captions: np.ndarray | None,
                  valid: np.ndarray, dtype: str, index_kind: str) -> dict[str, Any]:
    """Write the two matrices in ``dtype`` (``None``: already in ``folder``) and their
    FAISS indexes; return the index description for the manifest."""
    for name, matrix in (("images.npy", images), ("captions.npy", captions)):
        if matrix is not None:
            write_npy(folder / name, matrix.astype(dtype))
    # Index what a reader will load: the stored (possibly float16) values.
    stored_i = np.load(folder / "images.npy").astype(np.float32)
    stored_c = np.load(folder / "captions.npy").astype(np.float32)
    return {
        "kind": index_kind,
        "images": build_faiss(stored_i, valid, index_kind, folder / "images.faiss"),
        "captions": build_faiss(stored_c, np.ones(len(stored_c), bool), index_kind,
                                folder / "captions.faiss"),
    }
