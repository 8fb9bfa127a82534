"""Updating a backbone's FAISS index for ``clipindex add``: new rows added with
``add_with_ids``, tombstoned rows removed with ``remove_ids``; re-trained (``auto``:
re-chosen and re-tuned) only when the index holds more than
:data:`~clipindex.store.generations.RETRAIN_FACTOR` times the vectors it was trained on
(``trained_n`` in its description). A kind that cannot remove ids (HNSW) is rebuilt
from the live vectors when rows were removed. Approximate kinds have their recall@10
re-measured against exact search after every add (``recall_measured_at_generation``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.store.generations import RETRAIN_FACTOR
from clipindex.store.outputs import RECALL_K, build_faiss
from clipindex.store.tuning import (
    RERANK_FACTOR,
    AutoSettings,
    exact_top_k,
    recall_at_k,
    rescored_search,
)

__all__ = ["trained_n", "update_index"]

log = logging.getLogger("clipindex.store")


def trained_n(desc: dict[str, Any]) -> int:
    """The vector count an index was built (trained) on."""
    for key in ("trained_n", "n_vectors", "ntotal"):
        if isinstance(desc.get(key), int):
            return int(desc[key])
    return 0


def _settings(meta: dict[str, Any]) -> AutoSettings:
    return AutoSettings(target_recall=float(meta.get("target_recall") or 0.95),
                        max_memory=meta.get("max_memory"))


def _remeasure(index: Any, matrix: np.ndarray, ids: np.ndarray, rerank: int) -> float:
    """recall@10 of ``index`` against exact search (chunked over the memory map) on 200
    of its own vectors, of the search users get: ``k * rerank`` candidates rescored (a
    10M IVF-PQ store recorded 0.47 after an add from the raw PQ codes, 0.97 rescored)."""
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(ids, size=min(200, len(ids)), replace=False))
    queries = np.asarray(matrix[sample], dtype=np.float32)
    truth = exact_top_k(matrix, ids, queries, RECALL_K)
    return recall_at_k(rescored_search(index, matrix, queries, RECALL_K, rerank=rerank)[1],
                       truth)


def update_index(old_path: Path, new_path: Path, matrix: np.ndarray, valid: np.ndarray,
                 n_have: int, meta: dict[str, Any], name: str,
                 cross: Callable[[], dict[str, np.ndarray]], generation: int
                 ) -> dict[str, Any]:
    """Write ``new_path``: the index of ``old_path`` (rows ``0..n_have-1``) with the
    valid rows of ``matrix`` (the stored matrix, memory-mapped) from ``n_have`` on added
    and the invalid ones removed; returns its description for the manifest (``meta``:
    the manifest's ``index``; ``cross``: the other matrices' tuning queries, asked for
    only when ``auto`` re-tunes)."""
    from clipindex.store import indexes

    desc = dict(meta.get(name) or {"kind": "flat"})
    kind, auto = str(desc.get("kind", "flat")), meta.get("kind") == "auto"
    live = np.flatnonzero(valid)
    base = trained_n(desc)
    self_name = "image_to_image" if name == "images" else "text_to_text"
    if (auto or kind != "flat") and base and len(live) > RETRAIN_FACTOR * base:
        log.info("%s: %d vectors > %.0fx the %d it was trained on: re-training",
                 new_path.parent.name, len(live), RETRAIN_FACTOR, base)
        out = build_faiss(np.asarray(matrix, dtype=np.float32), valid,
                          "auto" if auto else kind, new_path,
                          cross=cross() if auto else None, self_name=self_name,
                          settings=_settings(meta))
        out.update(trained_n=int(len(live)), trained_at_generation=generation)
        return out
    index: Any = indexes.load_index(old_path)  # SWIG: remove_ids takes an id array too
    dead = np.flatnonzero(~valid[:n_have]).astype(np.int64)
    try:
        if len(dead):
            index.remove_ids(dead)
    except RuntimeError:  # e.g. HNSW: no removal; rebuild from the live vectors
        log.info("%s: a %s index cannot remove ids; rebuilding it", new_path.name, kind)
        index = indexes.build_index(np.asarray(matrix[live], np.float32), live, kind=kind)
        knob = indexes.search_knob(indexes.load_index(old_path))
        if knob is not None:
            indexes.set_search_knob(index, knob[1])
    else:
        add = np.flatnonzero(valid[n_have:]).astype(np.int64) + n_have
        if len(add):
            index.add_with_ids(np.ascontiguousarray(matrix[add], dtype=np.float32), add)
    indexes.save_index(index, new_path)
    desc.update(indexes.describe_index(index))
    desc["trained_n"] = base or int(len(live))
    if kind != "flat" and len(live):
        rerank = int(desc.get("rerank_factor", RERANK_FACTOR.get(kind, 4)))
        desc[f"recall_at_{RECALL_K}"] = _remeasure(index, matrix, live, rerank)
        desc["recall_measured_at_generation"] = generation
    if desc.get("memory_bytes") is not None:
        desc["memory_bytes"] = new_path.stat().st_size
    return desc
