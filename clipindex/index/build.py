"""Building one matrix's FAISS index into a file: a given kind, or ``auto`` (chosen and
tuned, :mod:`clipindex.index.tuning`); approximate kinds record their recall@10.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.index.tuning import AutoSettings, choose_index, tune_index

__all__ = ["RECALL_K", "build_faiss", "rows_of"]

log = logging.getLogger("clipindex.store")

#: Approximate index kinds record their recall@RECALL_K against the exact index.
RECALL_K = 10


def rows_of(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
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
    from clipindex.index import files  # faiss: when a build gets here
    from clipindex.index import kinds as indexes

    ids = np.flatnonzero(valid)
    if kind == "auto":
        return _build_auto(vectors, ids, path, cross or {}, self_name,
                           settings or AutoSettings())
    use = kind if len(ids) else "flat"
    try:
        index = indexes.build_index(rows_of(vectors, ids), ids, kind=use)
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
    files.save_index(index, path)
    return desc


def _build_auto(vectors: np.ndarray, ids: np.ndarray, path: Path,
                cross: dict[str, np.ndarray], self_name: str,
                settings: AutoSettings) -> dict[str, Any]:
    from clipindex.index import files
    from clipindex.index import kinds as indexes

    n, d = len(ids), int(vectors.shape[1])
    kind, options = choose_index(n, d, settings)
    t0 = time.perf_counter()
    index = indexes.build_index(rows_of(vectors, ids), ids, kind=kind, seed=settings.seed,
                                **options)
    build_s = time.perf_counter() - t0
    desc = indexes.describe_index(index)
    desc.update(chosen_by="auto", n_vectors=n, build_seconds=round(build_s, 3))
    if kind != "flat":
        desc.update(tune_index(index, vectors, ids, kind, cross, self_name, settings))
        desc.update(indexes.describe_index(index))  # the tuned knob
    else:
        desc.update(rerank_factor=1, reason=f"n*dim {n * d:,} <= {settings.flat_max_cells:,}")
    files.save_index(index, path)
    desc["memory_bytes"] = path.stat().st_size
    return desc
