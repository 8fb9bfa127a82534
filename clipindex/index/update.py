"""An index file updated in place of a rebuild (``clipindex add``): tombstoned rows
removed with ``remove_ids``, new rows added with ``add_with_ids``; a kind that cannot
remove ids (HNSW) is rebuilt from the live vectors with the old search knob. Approximate
kinds have their recall@10 re-measured after every update (the store decides when to
re-train instead: :mod:`clipindex.store.update`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.index.build import RECALL_K
from clipindex.index.topk import exact_top_k, recall_at_k

__all__ = ["trained_n", "updated_index"]

log = logging.getLogger("clipindex.store")


def trained_n(desc: dict[str, Any]) -> int:
    """The vector count an index was built (trained) on."""
    for key in ("trained_n", "n_vectors", "ntotal"):
        if isinstance(desc.get(key), int):
            return int(desc[key])
    return 0


def _remeasure(index: Any, matrix: np.ndarray, ids: np.ndarray) -> float:
    """recall@10 of ``index`` against exact search (chunked over the memory map) on 200
    of its own vectors."""
    from clipindex.index import kinds

    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(ids, size=min(200, len(ids)), replace=False))
    queries = np.asarray(matrix[sample], dtype=np.float32)
    truth = exact_top_k(matrix, ids, queries, RECALL_K)
    return recall_at_k(kinds.search_index(index, queries, RECALL_K)[1], truth)


def updated_index(old_path: Path, new_path: Path, matrix: np.ndarray, valid: np.ndarray,
                  n_have: int, desc: dict[str, Any], generation: int) -> dict[str, Any]:
    """Write ``new_path``: the index of ``old_path`` (rows ``0..n_have-1``) with the
    valid rows of ``matrix`` from ``n_have`` on added and the invalid ones removed;
    return ``desc`` (its manifest description) updated."""
    from clipindex.index import files, kinds

    desc = dict(desc)
    kind = str(desc.get("kind", "flat"))
    live = np.flatnonzero(valid)
    base = trained_n(desc)
    index: Any = files.load_index(old_path)  # SWIG: remove_ids takes an id array too
    dead = np.flatnonzero(~valid[:n_have]).astype(np.int64)
    try:
        if len(dead):
            index.remove_ids(dead)
    except RuntimeError:  # e.g. HNSW: no removal; rebuild from the live vectors
        log.info("%s: a %s index cannot remove ids; rebuilding it", new_path.name, kind)
        index = kinds.build_index(np.asarray(matrix[live], np.float32), live, kind=kind)
        knob = kinds.search_knob(files.load_index(old_path))
        if knob is not None:
            kinds.set_search_knob(index, knob[1])
    else:
        add = np.flatnonzero(valid[n_have:]).astype(np.int64) + n_have
        if len(add):
            index.add_with_ids(np.ascontiguousarray(matrix[add], dtype=np.float32), add)
    files.save_index(index, new_path)
    desc.update(kinds.describe_index(index))
    desc["trained_n"] = base or int(len(live))
    if kind != "flat" and len(live):
        desc[f"recall_at_{RECALL_K}"] = _remeasure(index, matrix, live)
        desc["recall_measured_at_generation"] = generation
    if desc.get("memory_bytes") is not None:
        desc["memory_bytes"] = new_path.stat().st_size
    return desc
