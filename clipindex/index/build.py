"""Building one matrix's FAISS index into a file: a given kind, or ``auto`` (chosen and
tuned, :mod:`clipindex.index.tuning`); approximate kinds record their recall@10 on
held-out queries (rows kept out of the index while it is measured, added after).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.index.auto import auto_index
from clipindex.index.fill import add_rows
from clipindex.index.tuning import RERANK_FACTOR, AutoSettings, held_out_sets, measure_sets

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
    index description (with ``recall_at_10`` on held-out queries for approximate kinds).
    Too few vectors to train an approximate kind fall back to exact flat, with a
    warning. ``auto`` chooses the kind, its structure and knob
    (:func:`clipindex.index.auto.auto_index`; ``cross``: the other matrices' query
    vectors by name)."""
    from clipindex.index import files
    from clipindex.index import kinds as indexes  # faiss: when a build gets here

    ids = np.flatnonzero(valid)
    settings = settings or AutoSettings()
    if kind == "auto":
        index, desc = auto_index(vectors, ids, cross or {}, self_name, settings)
        files.save_index(index, path)
        desc["memory_bytes"] = path.stat().st_size
        return desc
    use = kind if len(ids) else "flat"
    held = None
    if use != "flat":
        held = held_out_sets(vectors, ids, {}, self_name,
                             AutoSettings(queries=200, k=RECALL_K, flat_max_cells=0))
    try:
        index = indexes.build_index(rows_of(vectors, held.indexed if held else ids),
                                    held.indexed if held else ids, kind=use)
    except RuntimeError as exc:  # too few vectors to train an approximate index
        log.warning("%s: %s index failed (%s); using exact flat", path.name, kind, exc)
        use, held, index = "flat", None, indexes.build_index(vectors[ids], ids)
    measured: dict[str, Any] = {}
    if held is not None:
        both = {n: held.tune[n].joined(held.measure[n]) for n in held.tune}
        recalls = measure_sets(index, vectors, both, RECALL_K, RERANK_FACTOR.get(use, 4))
        measured[f"recall_at_{RECALL_K}"] = round(min(recalls.values()), 4)
        measured["held_out_queries"] = int(sum(len(s.queries) for s in both.values()))
        add_rows(index, vectors, held.rows)
    desc = {**indexes.describe_index(index), **measured}
    files.save_index(index, path)
    return desc
