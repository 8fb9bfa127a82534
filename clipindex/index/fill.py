"""An index filled from rows of a stored matrix without copying the matrix: rows added a
block at a time (:func:`add_rows`), and an index of a kind trained on a seeded sample of
them and filled with all (:func:`trained_index`). ``auto`` (:mod:`clipindex.index.auto`),
its PQ candidates (:mod:`clipindex.index.pqsize`), ``build`` and ``update`` fill their
indexes here. (:func:`clipindex.index.kinds.build_index` takes vectors already aligned
with their ids; these take row ids of a memory map, which may be 10M x 512 float16.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ADD_BLOCK", "add_rows", "trained_index"]

#: Rows added to an index per call (memory: a block of float32 rows at a time).
ADD_BLOCK = 65536


def add_rows(index: Any, vectors: np.ndarray, ids: np.ndarray) -> Any:
    """Add rows ``ids`` of ``vectors`` (a memory map, float16 or float32) under their ids,
    a block at a time."""
    ids = np.asarray(ids, dtype=np.int64)
    for start in range(0, len(ids), ADD_BLOCK):
        block = ids[start:start + ADD_BLOCK]
        index.add_with_ids(np.ascontiguousarray(vectors[block], dtype=np.float32), block)
    return index


def trained_index(kind: str, vectors: np.ndarray, ids: np.ndarray, seed: int,
                  options: dict[str, Any]) -> Any:
    """An index of ``kind`` trained on a seeded sample of rows ``ids`` and filled with all
    of them in blocks (no float32 copy of the whole matrix). ``options``: fields of
    :class:`~clipindex.index.kinds.IndexSpec`, and ``train_rows`` (the sample's size;
    default ``train_per_cell`` x cells, at least 65,536)."""
    from clipindex.index import kinds

    options = dict(options)
    train_rows = options.pop("train_rows", None)  # a cheaper training (PQ candidates)
    spec = kinds.IndexSpec(kind=kind, seed=seed, **options)
    index = kinds.INDEX_KINDS[kind](int(vectors.shape[1]), len(ids), spec)
    if not index.is_trained:
        nlist = options.get("nlist") or 1
        size = min(len(ids), int(train_rows) if train_rows else
                   max(int(options.get("train_per_cell") or 64) * nlist, 65536))
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(ids, size=size, replace=False))
        index.train(np.ascontiguousarray(vectors[pick], dtype=np.float32))
    add_rows(index, vectors, ids)
    kinds._set_search_defaults(index, spec)
    return index
