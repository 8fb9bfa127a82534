"""Exact ranking of a store's rows: candidates from FAISS, scores from the stored vectors.

Scores are exact cosine similarities: the candidates ``index.search`` returns are
rescored from the stored vectors (and, for an approximate index, over-fetched first), so
a score never depends on the index kind. Rows a build skipped never appear; ties go to
the lower row id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from clipindex.errors import DataError, UserInputError
from clipindex.search.filters import coded_mask
from clipindex.store.tables import StoreTable

__all__ = ["SearchableIndex", "Selection", "allowed_rows", "check_aligned", "is_exact",
           "n_valid", "rank", "select_rows", "stored_vectors", "table_of", "target_table",
           "valid_rows", "where_rows"]


class _Encoder(Protocol):
    def encode_images(
        self, files: Sequence[Any], *, workers: int | None = ..., progress: bool = ...
    ) -> tuple[np.ndarray, Any]: ...


class SearchableIndex(Protocol):
    """What search needs from :class:`clipindex.store.BackboneIndex`."""

    images: pd.DataFrame
    captions: pd.DataFrame
    image_vectors: np.ndarray
    caption_vectors: np.ndarray
    image_valid: np.ndarray
    caption_valid: np.ndarray
    manifest: dict

    def search(
        self, queries: np.ndarray, k: int, *, target: str = ..., rows: Any = ...
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def encoder(self) -> _Encoder: ...

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray: ...


def target_table(index: SearchableIndex, target: str) -> pd.DataFrame:
    """The table ``--where`` filters: images, or captions joined with their image's columns."""
    if target == "images":
        return index.images
    extra = [c for c in index.images.columns if c not in index.captions.columns]
    joined = index.captions.join(index.images[extra], on="image_row_id")
    return joined


def is_exact(index: SearchableIndex, target: str) -> bool:
    """Whether the FAISS index of ``target`` is exact (flat); unknown means approximate."""
    manifest = index.manifest or {}
    desc: Any = manifest.get("index", manifest.get("index_kind", "flat"))
    if isinstance(desc, dict):
        desc = desc.get(target, desc)  # the store describes each matrix's index
        if isinstance(desc, dict):
            desc = desc.get("kind", manifest.get("index", {}).get("kind", "unknown"))
    return str(desc).lower() == "flat"


def rank(
    index: SearchableIndex, queries: np.ndarray, k: int, target: str, rows: np.ndarray | None,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, ids) of every query among the allowed valid rows.

    ``rows`` are the allowed row ids (``None``: all). ``k`` must not exceed their
    number. Candidates come from ``index.search``; their scores are recomputed
    from the stored vectors, so they are exact cosines whatever the index kind (an
    index that rescored them already, ``Hits.rescored``, is not rescored twice).
    ``device`` (``cuda``) searches on the GPU (``BackboneIndex.search(device=)``).
    """
    vectors = stored_vectors(index, target)
    valid = valid_rows(index, target)
    n_invalid = len(valid) - n_valid(index, target) if rows is None \
        else int((~valid[rows]).sum())
    pool = len(valid) if rows is None else len(rows)
    fetch = k + n_invalid
    if not is_exact(index, target) and not _index_rescores(index, target):
        fetch = max(fetch, 4 * k, k + 50)
    fetch = min(fetch, pool)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    on = {"device": device} if device is not None else {}
    found = index.search(q, fetch, target=target, rows=rows, **on)
    ids = np.asarray(found[1], dtype=np.int64)
    good = ids >= 0
    good[good] = valid[ids[good]]
    if rows is not None:
        allowed = np.zeros(len(valid), dtype=bool)
        allowed[rows] = True
        good[good] = allowed[ids[good]]
    short = good.sum(axis=1) < min(k, n_valid(index, target) if rows is None
                                   else _n_allowed(valid, rows))
    if short.any():  # an approximate index found too few rows that pass: exact fallback
        ids, good = _exhaustive_ids(q, short, ids, good, vectors, valid, rows, fetch)
    if getattr(found, "rescored", False) and not short.any():
        # The index rescored these very ids from the stored vectors (hnsw, pq kinds):
        # the same einsum again would give the same numbers.
        scores = np.where(good, np.asarray(found[0], dtype=np.float32), -np.inf)
    else:
        safe = np.where(good, ids, 0)
        scores = np.einsum("qd,qkd->qk", q, np.asarray(vectors[safe], dtype=np.float32))
        scores = np.where(good, scores, -np.inf)
    # Highest score first; ties by row id so results are deterministic.
    order = np.lexsort((np.where(good, ids, np.iinfo(np.int64).max), -scores), axis=1)
    ids = np.take_along_axis(np.where(good, ids, -1), order, axis=1)[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)[:, :k]
    return scores.astype(np.float32), ids


def _index_rescores(index: SearchableIndex, target: str) -> bool:
    """Whether ``index.search`` over-fetches and rescores by itself (a rerank factor > 1:
    16 for PQ kinds, 4 for HNSW): fetching 60 here would compound to 960 stored rows read
    per query (~5 ms at 1M, page faults on a 10M memory map)."""
    desc = (index.manifest or {}).get("index")
    desc = desc.get(target) if isinstance(desc, dict) else None
    if not isinstance(desc, dict):
        return False
    factor = desc.get("rerank_factor")
    if factor is not None:
        return int(factor) > 1
    return str(desc.get("kind")) in ("hnsw", "pq", "ivfpq")


def _n_allowed(valid: np.ndarray, rows: np.ndarray | None) -> int:
    return int(valid.sum()) if rows is None else int(valid[np.asarray(rows)].sum())


def _exhaustive_ids(q: np.ndarray, short: np.ndarray, ids: np.ndarray, good: np.ndarray,
                    vectors: np.ndarray, valid: np.ndarray, rows: np.ndarray | None,
                    fetch: int) -> tuple[np.ndarray, np.ndarray]:
    """For the ``short`` queries (a filter or tombstones left an approximate index's
    probed cells with fewer than k passing rows), the exact top-``fetch`` over every
    allowed valid row, scanned in blocks: the store is searched until k rows pass the
    filter or it is exhausted."""
    allowed = np.flatnonzero(valid) if rows is None else \
        np.asarray(rows, dtype=np.int64)[valid[np.asarray(rows, dtype=np.int64)]]
    qs = q[short]
    best = np.full((len(qs), fetch), -np.inf, dtype=np.float32)
    best_ids = np.full((len(qs), fetch), -1, dtype=np.int64)
    for start in range(0, len(allowed), 65536):
        block = allowed[start:start + 65536]
        sims = qs @ np.asarray(vectors[block], dtype=np.float32).T
        both = np.concatenate([best, sims], axis=1)
        both_ids = np.concatenate([best_ids, np.broadcast_to(block, sims.shape)], axis=1)
        top = np.argsort(-both, axis=1, kind="stable")[:, :fetch]
        best = np.take_along_axis(both, top, axis=1)
        best_ids = np.take_along_axis(both_ids, top, axis=1)
    width = max(ids.shape[1], fetch)
    out = np.full((len(ids), width), -1, dtype=np.int64)
    out[:, :ids.shape[1]] = np.where(good, ids, -1)
    out[short] = best_ids
    return out, out >= 0


def table_of(index: SearchableIndex, target: str) -> StoreTable:
    """``target``'s table read by row id: the store's own (columns cached per open) or,
    for a stand-in index that has only DataFrames, a view of them."""
    table = getattr(index, "table", None)
    if callable(table):
        return table(target)
    return StoreTable.from_frame(index.images if target == "images" else index.captions)


def valid_rows(index: SearchableIndex, target: str) -> np.ndarray:
    """The rows of ``target`` a query may return (skipped and tombstoned rows are False)."""
    return np.asarray(index.image_valid if target == "images" else index.caption_valid, bool)


def n_valid(index: SearchableIndex, target: str) -> int:
    """How many rows :func:`valid_rows` holds: counted once per open by the store
    (``BackboneIndex.n_valid``), counted here for a stand-in index."""
    counted = getattr(index, "n_valid", None)
    return int(counted(target)) if callable(counted) else int(valid_rows(index, target).sum())


def n_rows(index: SearchableIndex, target: str) -> int:
    """Rows of ``target``'s table (from the valid mask: no table is decoded)."""
    return len(index.image_valid if target == "images" else index.caption_valid)


def stored_vectors(index: SearchableIndex, target: str) -> np.ndarray:
    """The stored matrix of ``target`` as on disk (a float16 store stays float16: rows
    are converted when gathered, the exact values of the float32 copy, which is never
    made for a query)."""
    stored = getattr(index, "stored", None)
    if isinstance(stored, dict) and target in stored:
        return stored[target]
    return index.image_vectors if target == "images" else index.caption_vectors


def where_rows(index: SearchableIndex, target: str, where: Sequence[str] | str) -> np.ndarray:
    """The mask of ``target`` rows that pass ``--where``, evaluated on the tables' cached
    per-column codes (for captions, the image table's columns too, through each
    caption's image)."""
    table = table_of(index, target)
    if target == "images":
        return coded_mask(table.codes, table.columns, where, len(table))
    images = table_of(index, "images")
    extra = [c for c in images.columns if c not in table.columns]
    owner = table.ints("image_row_id") if extra else None

    def codes(column: str) -> tuple[np.ndarray, pd.Series]:
        return (images if column in extra else table).codes(column)

    def spread(column: str, hit: np.ndarray) -> np.ndarray:
        return hit[owner] if column in extra else hit

    return coded_mask(codes, table.columns + extra, where, len(table), spread)


@dataclass(frozen=True)
class Selection:
    """What a search may return: ``rows`` (the ids passed to the index, None for all),
    ``n_avail`` (rows any backbone can return; None: at least ``k``, not counted) and
    ``pool`` (per backbone, the rows it can return)."""

    rows: np.ndarray | None
    n_avail: int | None
    pool: tuple[int, ...]


def select_rows(indexes: Sequence[SearchableIndex], target: str,
                where: Sequence[str] | str | None, k: int) -> Selection:
    """The rows a search of ``k`` hits may return. Without ``where`` nothing is scanned:
    the counts are the store's (counted once per open); the union of several backbones'
    valid rows is only counted when ``k`` exceeds every backbone's own count."""
    noun = target if target == "images" else "captions"
    if where:
        mask = where_rows(indexes[0], target, where)
        if not mask.any():
            raise DataError(f"No {noun} match --where {' and '.join(_as_list(where))}.")
        rows = np.flatnonzero(mask).astype(np.int64)
        pool = tuple(int(valid_rows(i, target)[rows].sum()) for i in indexes)
        union = np.zeros(len(rows), dtype=bool)
        for index in indexes:
            union |= valid_rows(index, target)[rows]
        n_avail: int | None = int(union.sum())
    else:
        rows = None
        pool = tuple(n_valid(i, target) for i in indexes)
        n_avail = pool[0] if len(indexes) == 1 else None
        if n_avail is None and k > max(pool):
            union = np.zeros(n_rows(indexes[0], target), dtype=bool)
            for index in indexes:
                union |= valid_rows(index, target)
            n_avail = int(union.sum())
    if not (n_avail if n_avail is not None else max(pool)):
        raise DataError(f"No searchable {noun}: every selected row was skipped by the build.")
    return Selection(rows, n_avail, pool)


def allowed_rows(
    indexes: Sequence[SearchableIndex], target: str, where: Sequence[str] | str | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """(rows passed to the index or None for all, the mask of rows any backbone can return)."""
    selection = select_rows(indexes, target, where, 0)
    valid = np.zeros(n_rows(indexes[0], target), dtype=bool)
    for index in indexes:
        valid |= valid_rows(index, target)
    if selection.rows is None:
        return None, valid
    mask = np.zeros(len(valid), dtype=bool)
    mask[selection.rows] = True
    return selection.rows, mask & valid


def _as_list(value: Sequence[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def check_aligned(indexes: Sequence[SearchableIndex]) -> None:
    """Backbones fused together hold the same rows (their valid masks have the tables'
    lengths, so no table is decoded to check)."""
    n_images, n_captions = n_rows(indexes[0], "images"), n_rows(indexes[0], "captions")
    for index in indexes[1:]:
        if n_rows(index, "images") != n_images or n_rows(index, "captions") != n_captions:
            raise UserInputError(
                "Backbones to fuse must belong to the same dataset folder "
                "(their image and caption tables differ)."
            )
