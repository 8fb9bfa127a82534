"""``--index-kind auto``: choose a FAISS kind from N, dim and a memory budget, then tune
its search knob on the store's own held-out vectors to a target recall@10.

The choice (autofaiss's approach, measured here on 2 cores):

- ``n * dim <= AUTO_FLAT_MAX_CELLS`` (20k rows at 512-d, 156k at 64-d): exact ``flat``,
  whose one-query latency there is ~5 ms on one core (benchmarks/RESULTS.md);
- else, when the float32 vectors (plus 8-byte ids) fit ``max_memory`` (or no budget is
  given): ``ivf`` (IVF-Flat) with ``nlist = 4 * sqrt(n)`` cells (at most 4,096);
- else ``ivfpq``: an OPQ rotation, the same cells and 8-bit PQ codes whose size
  (``pq_m`` bytes per vector) is the largest that fits the budget.

HNSW is not chosen: its build runs ~1k vectors/s per core at 512-d, so 1M rows would
take tens of minutes on these machines; ``--index-kind hnsw`` still builds one.

Tuning: queries are drawn (seeded) from the store's own rows, *leave one out* (a
query's own row is removed from both the exact and the approximate top-k, so it is a
held-out query of the same distribution), and from the other matrix (caption vectors
querying the image index: the text -> image case; image vectors querying the caption
index). The knob (``nprobe`` / ``ef_search``) grows in powers of two until every query
set reaches ``target_recall``, then is bisected down to the smallest value that does.
Recall is that of the search users get: ``k * rerank_factor`` candidates rescored
exactly from the stored vectors (:func:`rescored_search`).
"""

from __future__ import annotations

import math
import mmap
import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipindex.errors import UserInputError

__all__ = [
    "AUTO_FLAT_MAX_CELLS",
    "DEFAULT_TARGET_RECALL",
    "RERANK_FACTOR",
    "AutoSettings",
    "choose_index",
    "exact_top_k",
    "parse_memory",
    "recall_at_k",
    "rescored_search",
    "tune_index",
]

#: Above this many ``n * dim`` cells exact search costs more than ~5 ms per query.
AUTO_FLAT_MAX_CELLS = 10_000_000
DEFAULT_TARGET_RECALL = 0.95
#: Cells at most: adding n vectors costs n x nlist x dim (assignment), so 4 * sqrt(n)
#: cells at 10M (12,649) would take ~30 min of one core to add and as long to train;
#: 4,096 cells take ~9 min (benchmarks/RESULTS.md, bench_10m).
AUTO_MAX_NLIST = 4096
#: Candidates fetched per result (k * factor) before exact rescoring, per kind. IVF-Flat
#: already scores every candidate of its probed cells exactly (it holds the stored
#: vectors): more candidates would return the same top-k, so it takes 1 and no rescoring.
RERANK_FACTOR = {"flat": 1, "ivf": 1, "hnsw": 4, "pq": 16, "ivfpq": 16}
#: k-means training points per IVF cell (FAISS warns below 39).
TRAIN_PER_CELL = 64
_PQ_M = (128, 64, 48, 32, 24, 16, 12, 8, 4)


@dataclass(frozen=True)
class AutoSettings:
    """Knobs of ``--index-kind auto``: recall target, memory budget (bytes, None: no
    limit), the flat threshold, tuning queries per query set, seed, recall depth k."""

    target_recall: float = DEFAULT_TARGET_RECALL
    max_memory: int | None = None
    flat_max_cells: int = AUTO_FLAT_MAX_CELLS
    queries: int = 500
    seed: int = 0
    k: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.target_recall <= 1:
            raise UserInputError(f"target recall must be in (0, 1], got {self.target_recall}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise UserInputError(f"max index memory must be > 0, got {self.max_memory}")


def parse_memory(text: str | int | None) -> int | None:
    """Bytes of a size like ``"4GB"``, ``"512M"``, ``"2GiB"`` or a plain number.

    Example
    -------
    >>> parse_memory("1.5GB"), parse_memory("512M"), parse_memory(None)
    (1500000000, 512000000, None)
    """
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    if not m:
        raise UserInputError(f"cannot read the memory size {text!r} (e.g. 4GB, 512MB)")
    base = 1024 if m.group(3) else 1000
    power = " kmgt".index(m.group(2) or " ")
    return int(float(m.group(1)) * base**power)


def choose_index(n: int, d: int, settings: AutoSettings) -> tuple[str, dict[str, Any]]:
    """(kind, build options) for ``n`` vectors of dim ``d`` (see the module docstring).

    Example
    -------
    >>> choose_index(1000, 64, AutoSettings())
    ('flat', {})
    >>> choose_index(1_000_000, 512, AutoSettings())
    ('ivf', {'nlist': 4000, 'train_per_cell': 64})
    >>> choose_index(1_000_000, 512, AutoSettings(max_memory=parse_memory("100MB")))[0]
    'ivfpq'
    """
    if n * d <= settings.flat_max_cells or n < 39 * 4:
        return "flat", {}
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39, AUTO_MAX_NLIST))
    options: dict[str, Any] = {"nlist": nlist, "train_per_cell": TRAIN_PER_CELL}
    budget = settings.max_memory
    if budget is None or n * (4 * d + 8) <= budget:
        return "ivf", options
    per_vector = budget / n - 8  # inverted lists keep an 8-byte id per vector
    fits = [m for m in _PQ_M if m <= per_vector and d % m == 0]
    if not fits:
        need = n * (8 + min(m for m in _PQ_M if d % m == 0)) if any(
            d % m == 0 for m in _PQ_M) else None
        raise UserInputError(
            f"--max-index-memory {budget:,} bytes is too small for {n:,} vectors of dim {d}"
            + (f" (the smallest PQ index needs ~{need:,})" if need else ""))
    return "ivfpq", {**options, "pq_m": fits[0]}


def exact_top_k(matrix: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int,
                exclude: np.ndarray | None = None, chunk: int = 65536) -> np.ndarray:
    """Exact top-``k`` row ids of each query among rows ``ids`` of ``matrix`` (which may
    be a memory map), block by block so memory stays ~``chunk x dim``; ``exclude``
    (one row id per query, or -1) is never returned. Ties keep the lower id."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    for start in range(0, len(ids), chunk):
        block_ids = ids[start:start + chunk]
        s = q @ np.asarray(matrix[block_ids], dtype=np.float32).T
        if exclude is not None:
            s[exclude[:, None] == block_ids[None, :]] = -np.inf
        s, cand = _block_top(s, block_ids, k)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, cand], axis=1)
        order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
    return np.where(np.isfinite(best_s), best_i, -1)


def _block_top(s: np.ndarray, block_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's scores at or above its k-th best (ties included, so the lexsort that
    follows still keeps the lower id), padded with -inf: lexsorting every score of a
    65,536-row block costs ~4 s per 500 queries, ~10 min over a 10M store."""
    if s.shape[1] <= k:
        return s, np.broadcast_to(block_ids, s.shape)
    kth = np.partition(s, s.shape[1] - k, axis=1)[:, s.shape[1] - k]
    r, c = np.nonzero(s >= kth[:, None])
    counts = np.bincount(r, minlength=len(s))
    pos = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    out_s = np.full((len(s), int(counts.max(initial=0))), -np.inf, dtype=s.dtype)
    out_i = np.full(out_s.shape, -1, dtype=np.int64)
    out_s[r, pos], out_i[r, pos] = s[r, c], block_ids[c]
    return out_s, out_i


def stored_rows(matrix: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``matrix[ids]`` as float32. Up to 4,096 rows of a whole-file memory map (what
    ``open_index`` gives) are read with one ``pread`` each instead of through the map: a
    page fault maps the pages around it into the process too (the kernel's fault-around,
    which MADV_RANDOM does not stop), so rescoring 160 random rows a query grew a 10M
    store's resident memory ~19 MB a query (3.4 GB of ``images.npy`` after 200 queries);
    read this way they stay in the page cache, outside the process."""
    base = getattr(matrix, "base", None)
    if not (isinstance(matrix, np.memmap) and isinstance(base, mmap.mmap) and len(ids) <= 4096
            and matrix.flags.c_contiguous and matrix.filename is not None):
        return np.asarray(matrix[ids], dtype=np.float32)
    out = np.empty((len(ids), matrix.shape[1]), dtype=matrix.dtype)
    row = out.itemsize * matrix.shape[1]
    fd = os.open(matrix.filename, os.O_RDONLY)
    try:
        for j, i in enumerate(np.asarray(ids, dtype=np.int64).tolist()):
            if os.preadv(fd, [out[j]], matrix.offset + i * row) != row:
                raise IndexError(f"row {i} is past the end of {matrix.filename}")
    finally:
        os.close(fd)
    return out.astype(np.float32, copy=False)


def rescored_search(index: Any, matrix: np.ndarray, queries: np.ndarray, k: int, *,
                    rerank: int = 1, rows: np.ndarray | None = None,
                    exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``index`` with ``k * rerank`` candidates rescored exactly from
    ``matrix`` (the stored vectors, row i = row id i): the scores returned are exact
    cosines of the returned rows; which rows come back depends on the index.
    ``exclude`` (one row id per query) drops that row (leave-one-out queries). With
    ``rerank`` 1 on an index whose own scores are exact cosines (flat, IVF-Flat, HNSW
    over flat storage) the index's answer is returned as it is: rescoring would change
    nothing but the time."""
    from clipindex.store.indexes import scores_are_exact, search_index

    q = np.ascontiguousarray(queries, dtype=np.float32)
    if rerank <= 1 and exclude is None and scores_are_exact(index):
        return search_index(index, q, k, rows=rows)
    extra = 0 if exclude is None else 1
    fetch = max(k * max(1, int(rerank)), k) + extra
    fetch = min(fetch, max(int(index.ntotal), 1))
    _, ids = search_index(index, q, fetch, rows=rows)
    good = ids >= 0
    if exclude is not None:
        good &= ids != exclude[:, None]
    safe = np.where(good, ids, 0)
    flat = stored_rows(matrix, safe.ravel()).reshape(*safe.shape, matrix.shape[1])
    scores = np.where(good, np.einsum("qd,qkd->qk", q, flat), -np.inf)
    order = np.lexsort((np.where(good, ids, np.iinfo(np.int64).max), -scores), axis=1)
    ids = np.take_along_axis(np.where(good, ids, -1), order, axis=1)[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)[:, :k].astype(np.float32)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return scores, ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (ids of -1 ignored)."""
    hits = []
    for f, t in zip(found, truth, strict=True):
        want = set(t[t >= 0].tolist())
        if want:
            hits.append(len(want & set(f[f >= 0].tolist())) / len(want))
    return float(np.mean(hits)) if hits else 1.0


@dataclass
class _QuerySet:
    queries: np.ndarray
    exclude: np.ndarray | None
    truth: np.ndarray


def _query_sets(matrix: np.ndarray, ids: np.ndarray, cross: dict[str, np.ndarray],
                self_name: str, settings: AutoSettings) -> dict[str, _QuerySet]:
    rng = np.random.default_rng(settings.seed)
    own = np.sort(rng.choice(ids, size=min(settings.queries, len(ids)), replace=False))
    sets = {self_name: (np.asarray(matrix[own], dtype=np.float32), own)}
    for name, other in cross.items():
        nonzero = np.flatnonzero(np.concatenate([  # a block at a time: other may be 10M rows
            np.abs(np.asarray(other[lo:lo + 65536], np.float32)).sum(axis=1) > 0
            for lo in range(0, len(other), 65536)] or [np.zeros(0, bool)]))
        if not len(nonzero):  # e.g. an import without text_emb: no caption queries
            continue
        pick = np.sort(rng.choice(nonzero, size=min(settings.queries, len(nonzero)),
                                  replace=False))
        sets[name] = (np.asarray(other[pick], dtype=np.float32), None)
    return {name: _QuerySet(q, ex, exact_top_k(matrix, ids, q, settings.k, ex))
            for name, (q, ex) in sets.items()}


def _recalls(index: Any, matrix: np.ndarray, sets: dict[str, _QuerySet], k: int,
             rerank: int) -> dict[str, float]:
    return {name: recall_at_k(rescored_search(index, matrix, s.queries, k, rerank=rerank,
                                              exclude=s.exclude)[1], s.truth)
            for name, s in sets.items()}


def _p50_ms(index: Any, matrix: np.ndarray, queries: np.ndarray, k: int, rerank: int,
            repeats: int = 50) -> float:
    rescored_search(index, matrix, queries[:1], k, rerank=rerank)  # warm-up
    times = []
    for i in range(min(repeats, len(queries))):
        t0 = time.perf_counter()
        rescored_search(index, matrix, queries[i:i + 1], k, rerank=rerank)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 3)


def tune_index(index: Any, matrix: np.ndarray, ids: np.ndarray, kind: str,
               cross: dict[str, np.ndarray], self_name: str,
               settings: AutoSettings) -> dict[str, Any]:
    """Set ``index``'s knob to the smallest value reaching ``settings.target_recall`` on
    every query set; return what the manifest records (knob, recall per query set,
    p50 latency, whether the target was reached). ``cross`` maps a query-set name to
    the other matrix (its nonzero rows are the queries)."""
    from clipindex.store.indexes import index_nlist, search_knob, set_search_knob

    k, target = settings.k, settings.target_recall
    rerank = RERANK_FACTOR.get(kind, 4)
    sets = _query_sets(matrix, ids, cross, self_name, settings)
    knob = search_knob(index)
    tried: dict[int, dict[str, float]] = {}

    def measure(value: int) -> float:
        if knob is not None:
            set_search_knob(index, value)
        tried[value] = _recalls(index, matrix, sets, k, rerank)
        return min(tried[value].values())

    if knob is None:
        chosen = 0
        measure(0)
    else:
        top = index_nlist(index) or 4096
        value, low = 1 if knob[0] == "nprobe" else 16, 0
        while measure(value) < target and value < top:
            low, value = value, min(value * 2, top)
        high = value
        while knob[0] == "nprobe" and high - low > 1:  # smallest nprobe reaching target
            mid = (low + high) // 2
            low, high = (mid, high) if measure(mid) < target else (low, mid)
        chosen = high
        set_search_knob(index, chosen)
    recalls = tried[chosen]
    own = sets[self_name].queries
    return {
        "tuned_knob": None if knob is None else knob[0],
        "tuned_value": None if knob is None else int(chosen),
        "target_recall": target,
        "reached": bool(min(recalls.values()) >= target),
        f"recall_at_{k}": round(min(recalls.values()), 4),
        f"recall_at_{k}_by_query": {n: round(r, 4) for n, r in recalls.items()},
        "rerank_factor": rerank,
        "tuning_queries": {n: len(s.queries) for n, s in sets.items()},
        "knob_trials": {str(v): round(min(r.values()), 4) for v, r in sorted(tried.items())},
        "p50_ms": _p50_ms(index, matrix, own, k, rerank),
    }
