"""The one top-k: a query is over-fetched once, its candidates rescored exactly from the
stored vectors and sorted once.

Every search of a store goes through here (``BackboneIndex.search``/``top_k``,
``clipindex.search``'s ranking, the classifiers' k-NN through the store, auto's tuning
and held-out recall):

1. candidates: ``k * rerank`` ids from the index (``rerank`` is the kind's factor:
   1 for flat and IVF-Flat, whose own scores are exact, 4 for HNSW, 16 for PQ kinds),
   plus one per query when a query's own row is excluded; an index that was asked for
   them once is never asked for more (no compounding: the caller asks for ``k``);
2. rows a query may not return are dropped (``valid``: skipped and tombstoned rows;
   ``rows``: a filter; ``exclude``: a query's own row);
3. a query left with fewer than ``k`` candidates although more rows qualify (a
   selective filter on an approximate index) gets the exact top-k of every qualifying
   row instead, scanned in blocks (:func:`exact_top_k`);
4. scores are recomputed as float32 dot products with the stored rows (a float16 store
   is converted row by row), then one sort: highest score first, ties by lower row id.

Example
-------
>>> import numpy as np
>>> from clipindex.index.kinds import build_index
>>> x = np.eye(4, dtype="float32")
>>> scores, ids = top_k(build_index(x, kind="flat"), x, x[:1], 2, rescore=True)
>>> ids.tolist(), scores[0, 0].item()
([[0, 1]], 1.0)
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

__all__ = ["TopK", "exact_top_k", "rank_candidates", "recall_at_k", "stored_rows", "top_k"]

#: Rows scored per block by the exact scans (memory ~ block x dim floats).
BLOCK = 65536


class TopK(tuple):
    """``(scores, ids)``, unpacking as a plain pair; ``rescored``: the scores were
    computed here from the stored vectors (not FAISS's own)."""

    rescored: bool

    def __new__(cls, scores: np.ndarray, ids: np.ndarray, *, rescored: bool) -> TopK:
        self = super().__new__(cls, (scores, ids))
        self.rescored = bool(rescored)
        return self


def exact_top_k(matrix: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int,
                exclude: np.ndarray | None = None, chunk: int = BLOCK) -> np.ndarray:
    """Exact top-``k`` row ids of each query among rows ``ids`` of ``matrix`` (which may
    be a memory map), block by block so memory stays ~``chunk x dim``; ``exclude``
    (one row id per query, or -1) is never returned. Ties keep the lower id; -1 pads.

    Example
    -------
    >>> import numpy as np
    >>> exact_top_k(np.eye(3), np.arange(3), np.eye(3)[:1], 2, exclude=np.array([0]))
    array([[1, 2]])
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    for start in range(0, len(ids), chunk):
        block_ids = ids[start:start + chunk]
        s = q @ np.asarray(matrix[block_ids], dtype=np.float32).T
        if exclude is not None:
            s[exclude[:, None] == block_ids[None, :]] = -np.inf
        block_i = np.broadcast_to(block_ids, s.shape)
        if s.shape[1] > 2 * k:  # the block's top k (and its ties) before the exact sort
            kth = -np.partition(-s, k - 1, axis=1)[:, k - 1:k]
            keep = s >= kth
            width = int(keep.sum(axis=1).max())
            order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
            s = np.where(np.take_along_axis(keep, order, axis=1),
                         np.take_along_axis(s, order, axis=1), -np.inf)
            block_i = np.take_along_axis(block_i, order, axis=1)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, block_i], axis=1)
        order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
    return np.where(np.isfinite(best_s), best_i, -1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (ids of -1 ignored).

    Example
    -------
    >>> import numpy as np
    >>> recall_at_k(np.array([[1, 2], [3, -1]]), np.array([[1, 5], [3, 4]]))
    0.5
    """
    hits = []
    for f, t in zip(found, truth, strict=True):
        want = set(t[t >= 0].tolist())
        if want:
            hits.append(len(want & set(f[f >= 0].tolist())) / len(want))
    return float(np.mean(hits)) if hits else 1.0


def _allowed(n: int, valid: np.ndarray | None, rows: np.ndarray | None) -> np.ndarray | None:
    """The mask of rows a query may return (None: every row)."""
    if valid is None and rows is None:
        return None
    allowed = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, bool).copy()
    if rows is not None:
        mask = np.zeros(n, dtype=bool)
        mask[np.asarray(rows, dtype=np.int64)] = True
        allowed &= mask
    return allowed


def rank_candidates(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int, *,
                    scores: np.ndarray | None = None, valid: np.ndarray | None = None,
                    rows: np.ndarray | None = None, exclude: np.ndarray | None = None,
                    n_allowed: int | None = None, fill: bool = True) -> TopK:
    """Steps 2-4 of the module docstring on candidate ``ids`` (``(n_queries, m)``, -1
    for none) of ``queries``: drop what may not be returned, fill short queries
    exhaustively (``fill``; ``n_allowed``: rows that qualify, counted here when None),
    rescore from ``vectors`` (row i = row id i) unless ``scores`` are given (already
    exact for these very ids), sort once, keep ``k``."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    good = ids >= 0
    allowed = _allowed(len(vectors), valid, rows)
    if allowed is not None:
        good[good] = allowed[ids[good]]
    if exclude is not None:
        good &= ids != np.asarray(exclude, dtype=np.int64)[:, None]
    if fill:
        if n_allowed is None:
            n_allowed = len(vectors) if allowed is None else int(allowed.sum())
        want = min(k, n_allowed - (0 if exclude is None else 1))
        short = good.sum(axis=1) < want
        if short.any():  # too few candidates pass: the exact top over every allowed row
            pool = np.arange(len(vectors)) if allowed is None else np.flatnonzero(allowed)
            width = max(ids.shape[1], k)
            extra = exact_top_k(vectors, pool, q[short], width,
                                None if exclude is None else np.asarray(exclude)[short])
            out = np.full((len(ids), width), -1, dtype=np.int64)
            out[:, :ids.shape[1]] = np.where(good, ids, -1)
            out[short] = extra
            ids, good, scores = out, out >= 0, None
    rescored = scores is None
    if scores is None:
        safe = np.where(good, ids, 0)
        flat = stored_rows(vectors, safe.ravel()).reshape(*safe.shape, vectors.shape[1])
        scores = np.einsum("qd,qkd->qk", q, flat)
    scores = np.where(good, np.asarray(scores, dtype=np.float32), -np.inf)
    order = np.lexsort((np.where(good, ids, np.iinfo(np.int64).max), -scores), axis=1)
    ids = np.take_along_axis(np.where(good, ids, -1), order, axis=1)[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)[:, :k].astype(np.float32)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return TopK(scores, ids, rescored=rescored)


#: Reads of stored rows are announced to the kernel first (Linux; not on macOS).
_ADVISE = hasattr(os, "posix_fadvise")


def stored_rows(matrix: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``matrix[ids]`` as float32. Up to 4,096 rows of a whole-file memory map (what
    ``open_index`` gives) are read with one ``pread`` each instead of through the map: a
    page fault maps the pages around it into the process too (the kernel's fault-around,
    which MADV_RANDOM does not stop), so rescoring 160 random rows a query grew a 10M
    store's resident memory ~19 MB a query (3.4 GB of ``images.npy`` after 200 queries);
    read this way they stay in the page cache, outside the process. Every row's read is
    announced first (``POSIX_FADV_WILLNEED``), so rows not in the page cache are fetched
    from disk at once rather than one wait after another: 160 random rows of a 10M x 512
    float16 file with a cold cache took 7.7-7.9 ms read one by one, 1.8-2.0 ms announced
    (0.16 -> 0.23 ms when cached)."""
    base = getattr(matrix, "base", None)
    if not (isinstance(matrix, np.memmap) and isinstance(base, mmap.mmap) and len(ids) <= 4096
            and matrix.flags.c_contiguous and matrix.filename is not None):
        return np.asarray(matrix[ids], dtype=np.float32)
    out = np.empty((len(ids), matrix.shape[1]), dtype=matrix.dtype)
    row = out.itemsize * matrix.shape[1]
    fd = os.open(matrix.filename, os.O_RDONLY)
    at = np.asarray(ids, dtype=np.int64).tolist()
    try:
        if _ADVISE:
            for i in at:
                os.posix_fadvise(fd, matrix.offset + i * row, row, os.POSIX_FADV_WILLNEED)
        for j, i in enumerate(at):
            if os.preadv(fd, [out[j]], matrix.offset + i * row) != row:
                raise IndexError(f"row {i} is past the end of {matrix.filename}")
    finally:
        os.close(fd)
    return out.astype(np.float32, copy=False)


def top_k(index: Any, vectors: np.ndarray, queries: np.ndarray, k: int, *,
          rerank: int = 1, rows: np.ndarray | None = None, valid: np.ndarray | None = None,
          exclude: np.ndarray | None = None, rescore: bool = False,
          n_allowed: int | None = None, fill: bool = True) -> TopK:
    """Top-``k`` of ``index`` (FAISS, ids = row ids of ``vectors``): ``k * rerank``
    candidates (+1 per query when ``exclude`` names its own row) then
    :func:`rank_candidates`. The scores returned are exact cosines of the returned rows;
    which rows come back depends on the index. With ``rerank`` 1, no ``exclude`` and
    ``rescore`` False, an index whose own scores are exact (flat, IVF-Flat, HNSW over
    flat storage) answers as it is: rescoring would change nothing but the time
    (``rescore=True`` still recomputes them: the scores of a ranking, bit for bit the
    same on every kind). ``rows`` go to FAISS's id selector too."""
    from clipindex.index.kinds import scores_are_exact, search_index

    q = np.ascontiguousarray(queries, dtype=np.float32)
    plain = rerank <= 1 and exclude is None and not rescore and scores_are_exact(index)
    if plain and valid is None:
        return TopK(*search_index(index, q, k, rows=rows), rescored=False)
    extra = 0 if exclude is None else 1
    fetch = min(max(k * max(1, int(rerank)), k) + extra, max(int(index.ntotal), 1))
    found, ids = search_index(index, q, fetch, rows=rows)
    return rank_candidates(q, ids, vectors, k, valid=valid, rows=rows, exclude=exclude,
                           n_allowed=n_allowed, fill=fill,
                           scores=found if plain else None)
