"""``--index-kind auto``: choose a FAISS kind from N, dim and a memory budget, then tune
its search knob on the store's own held-out vectors to a target recall@10.

The choice (autofaiss's approach, measured here on 2 cores):

- ``n * dim <= AUTO_FLAT_MAX_CELLS`` (20k rows at 512-d, 156k at 64-d): exact ``flat``,
  whose one-query latency there is ~5 ms on one core (benchmarks/RESULTS.md);
- else, when the float32 vectors (plus 8-byte ids) fit ``max_memory`` (or no budget is
  given): ``ivf`` (IVF-Flat) with ``nlist = 4 * sqrt(n)`` cells;
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
exactly from the stored vectors (:func:`clipindex.index.topk.top_k`).
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipindex.errors import UserInputError
from clipindex.index.topk import exact_top_k, recall_at_k, top_k

__all__ = [
    "AUTO_FLAT_MAX_CELLS",
    "DEFAULT_TARGET_RECALL",
    "RERANK_FACTOR",
    "AutoSettings",
    "choose_index",
    "parse_memory",
    "tune_index",
]

#: Above this many ``n * dim`` cells exact search costs more than ~5 ms per query.
AUTO_FLAT_MAX_CELLS = 10_000_000
DEFAULT_TARGET_RECALL = 0.95
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
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
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
        nonzero = np.flatnonzero(np.linalg.norm(np.asarray(other, np.float32), axis=1) > 0)
        pick = np.sort(rng.choice(nonzero, size=min(settings.queries, len(nonzero)),
                                  replace=False))
        sets[name] = (np.asarray(other[pick], dtype=np.float32), None)
    return {name: _QuerySet(q, ex, exact_top_k(matrix, ids, q, settings.k, ex))
            for name, (q, ex) in sets.items()}


def _recalls(index: Any, matrix: np.ndarray, sets: dict[str, _QuerySet], k: int,
             rerank: int) -> dict[str, float]:
    return {name: recall_at_k(top_k(index, matrix, s.queries, k, rerank=rerank,
                                    exclude=s.exclude, fill=False)[1], s.truth)
            for name, s in sets.items()}


def _p50_ms(index: Any, matrix: np.ndarray, queries: np.ndarray, k: int, rerank: int,
            repeats: int = 50) -> float:
    top_k(index, matrix, queries[:1], k, rerank=rerank)  # warm-up
    times = []
    for i in range(min(repeats, len(queries))):
        t0 = time.perf_counter()
        top_k(index, matrix, queries[i:i + 1], k, rerank=rerank)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 3)


def tune_index(index: Any, matrix: np.ndarray, ids: np.ndarray, kind: str,
               cross: dict[str, np.ndarray], self_name: str,
               settings: AutoSettings) -> dict[str, Any]:
    """Set ``index``'s knob to the smallest value reaching ``settings.target_recall`` on
    every query set; return what the manifest records (knob, recall per query set,
    p50 latency, whether the target was reached). ``cross`` maps a query-set name to
    the other matrix (its nonzero rows are the queries)."""
    from clipindex.index.kinds import index_nlist, search_knob, set_search_knob

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
