"""An index file updated in place of a rebuild (``clipindex add``): tombstoned rows
removed with ``remove_ids``, new rows added with ``add_with_ids``; a kind that cannot
remove ids (HNSW) is rebuilt from the live vectors with the old search knob. Approximate
kinds have their recall@10 re-measured after every update on held-out rows kept out of
the index until measured (the store decides when to re-train instead:
:mod:`clipindex.store.update`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.index.build import RECALL_K
from clipindex.index.fill import add_rows
from clipindex.index.tuning import (
    RERANK_FACTOR,
    AutoSettings,
    HeldOut,
    held_out_sets,
    measure_sets,
)

__all__ = ["trained_n", "updated_index"]

log = logging.getLogger("clipindex.store")


def trained_n(desc: dict[str, Any]) -> int:
    """The vector count an index was built (trained) on."""
    for key in ("trained_n", "n_vectors", "ntotal"):
        if isinstance(desc.get(key), int):
            return int(desc[key])
    return 0


def _held_out(matrix: np.ndarray, live: np.ndarray, add: np.ndarray, name: str,
              queries: int) -> HeldOut:
    """Held-out queries for the recall after an add: rows of this add when there are
    enough of them (a fifth of ``queries``), else live rows; none is in the index while
    it is measured."""
    pool = add if len(add) >= max(1, queries // 5) else live
    return held_out_sets(matrix, live, {}, name, AutoSettings(queries=queries, k=RECALL_K),
                         pool=pool)


def updated_index(old_path: Path, new_path: Path, matrix: np.ndarray, valid: np.ndarray,
                  n_have: int, desc: dict[str, Any], generation: int,
                  self_name: str = "image_to_image", queries: int = 400) -> dict[str, Any]:
    """Write ``new_path``: the index of ``old_path`` (rows ``0..n_have-1``) with the
    valid rows of ``matrix`` from ``n_have`` on added and the invalid ones removed;
    return ``desc`` (its manifest description) updated. An approximate kind's recall@10
    is measured on ``queries`` held-out rows kept out of the index until measured (no
    query finds itself), then added."""
    from clipindex.index import files, kinds

    desc = dict(desc)
    kind = str(desc.get("kind", "flat"))
    live = np.flatnonzero(valid)
    add = np.flatnonzero(valid[n_have:]).astype(np.int64) + n_have
    held = _held_out(matrix, live, add, self_name, queries) \
        if kind != "flat" and len(live) > 1 else None
    out = np.zeros(0, np.int64) if held is None else held.rows
    index: Any = files.load_index(old_path)  # SWIG: remove_ids takes an id array too
    dead = np.flatnonzero(~valid[:n_have]).astype(np.int64)
    gone = np.union1d(dead, out[out < n_have])
    try:
        if len(gone):
            index.remove_ids(gone)
    except RuntimeError:  # e.g. HNSW: no removal; rebuild from the live vectors
        log.info("%s: a %s index cannot remove ids; rebuilding it", new_path.name, kind)
        keep = np.setdiff1d(live, out)
        index = kinds.build_index(np.asarray(matrix[keep], np.float32), keep, kind=kind)
        knob = kinds.search_knob(files.load_index(old_path))
        if knob is not None:
            kinds.set_search_knob(index, knob[1])
    else:
        add_rows(index, matrix, np.setdiff1d(add, out))
    if held is not None:
        both = {n: held.tune[n].joined(held.measure[n]) for n in held.tune}
        rerank = int(desc.get("rerank_factor") or RERANK_FACTOR.get(kind, 4))
        recalls = measure_sets(index, matrix, both, RECALL_K, rerank)
        desc[f"recall_at_{RECALL_K}"] = round(min(recalls.values()), 4)
        if "recall_at_10_by_query" in desc:
            desc["recall_at_10_by_query"] = {n: round(r, 4) for n, r in recalls.items()}
        desc["held_out_queries"] = int(len(out))
        desc.pop("held_out_by_query", None)
        desc["recall_measured_at_generation"] = generation
        if "target_recall" in desc:
            desc["reached"] = bool(desc[f"recall_at_{RECALL_K}"] >= desc["target_recall"])
        add_rows(index, matrix, out)
    base = trained_n(desc)
    files.save_index(index, new_path)
    desc.update(kinds.describe_index(index))
    desc["trained_n"] = base or int(len(live))
    if desc.get("memory_bytes") is not None:
        desc["memory_bytes"] = new_path.stat().st_size
    return desc
