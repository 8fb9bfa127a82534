"""The finished files of a backbone folder: the two matrices and their FAISS indexes.

``index_kind="auto"`` chooses and tunes each matrix's index (:mod:`clipindex.store.tuning`):
the images index is tuned on image queries (leave-one-out) and caption queries (text ->
image), the captions index on caption queries and image queries.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.store.manifest import write_npy
from clipindex.store.tuning import AutoSettings, choose_index, tune_index

__all__ = ["RECALL_K", "build_faiss", "write_outputs"]

log = logging.getLogger("clipindex.store")

#: Approximate index kinds record their recall@RECALL_K against the exact index.
RECALL_K = 10


def _rows(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``vectors[ids]``, without a copy when ``ids`` are every row (a 1M x 512 store:
    2 GB less at the peak of a build or an import)."""
    return vectors if len(ids) == len(vectors) else vectors[ids]


def build_faiss(vectors: np.ndarray, valid: np.ndarray, kind: str, path: Path, *,
                cross: dict[str, np.ndarray] | None = None, self_name: str = "images",
                settings: AutoSettings | None = None) -> dict[str, Any]:
    """Index the ``valid`` rows of ``vectors`` (ids = row ids) into ``path``; return the
    index description (with ``recall_at_10`` for approximate kinds). Too few vectors to
    train an approximate kind fall back to exact flat, with a warning. ``auto`` chooses
    the kind and tunes it (``cross``: the other matrices' query vectors by name)."""
    from clipindex.store import indexes  # faiss, only when a build gets this far

    ids = np.flatnonzero(valid)
    if kind == "auto":
        return _build_auto(vectors, ids, path, cross or {}, self_name,
                           settings or AutoSettings())
    use = kind if len(ids) else "flat"
    try:
        index = indexes.build_index(_rows(vectors, ids), ids, kind=use)
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


def _build_auto(vectors: np.ndarray, ids: np.ndarray, path: Path,
                cross: dict[str, np.ndarray], self_name: str,
                settings: AutoSettings) -> dict[str, Any]:
    from clipindex.store import indexes

    n, d = len(ids), int(vectors.shape[1])
    kind, options = choose_index(n, d, settings)
    t0 = time.perf_counter()
    index = indexes.build_index(_rows(vectors, ids), ids, kind=kind, seed=settings.seed,
                                **options)
    build_s = time.perf_counter() - t0
    desc = indexes.describe_index(index)
    desc.update(chosen_by="auto", n_vectors=n, build_seconds=round(build_s, 3))
    if kind != "flat":
        desc.update(tune_index(index, vectors, ids, kind, cross, self_name, settings))
        desc.update(indexes.describe_index(index))  # the tuned knob
    else:
        desc.update(rerank_factor=1, reason=f"n*dim {n * d:,} <= {settings.flat_max_cells:,}")
    indexes.save_index(index, path)
    desc["memory_bytes"] = path.stat().st_size
    return desc


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
                                cross={"image_to_text": _rows(stored_i, np.flatnonzero(valid))},
                                self_name="text_to_text", settings=settings),
    }
