"""``--index-kind auto``: the kind from N, dim and a memory budget; its structure and
search knob from the data; its recall measured on held-out queries.

The kind (:func:`choose_index`):

- ``n * dim <= AUTO_FLAT_MAX_CELLS`` (20k rows at 512-d, 156k at 64-d): exact ``flat``,
  whose one-query latency there is ~5 ms on one core (benchmarks/RESULTS.md);
- else, when the float32 vectors (plus 8-byte ids) fit ``max_memory`` (or no budget is
  given): ``ivf`` (IVF-Flat), its cell count chosen from candidates trained on a sample
  (:mod:`clipindex.index.structure`); HNSW (M 16 and 32) is a candidate too where its
  build, projected from a timed sample, costs at most ``build_factor`` x the IVF's;
- else ``ivfpq``: an OPQ rotation, ``4 * sqrt(n)`` cells (at most
  :data:`~clipindex.index.structure.MAX_NLIST`) and 8-bit PQ codes whose size
  (``pq_m`` bytes per vector) fits the budget: :func:`choose_index` gives the largest,
  and ``auto`` chooses among it and smaller ones from candidates trained on a sample
  (:mod:`clipindex.index.pqsize`: the fastest at the target recall).

Held-out queries (:func:`held_out_sets`): ``queries`` rows are drawn (seeded) from the
store and kept *out of the index* while it is tuned and measured (they are added after),
and as many vectors of the other matrix (caption vectors querying the image index: the
text -> image case); the exact top-k of each is computed over the indexed rows. Half of
each set tunes, the other half is the recall the manifest records: no query finds
itself, no query both chooses the knob and grades it.

The knob (:func:`tune_index`): ``nprobe`` / ``ef_search`` on a grid; every value whose
recall on the tuning half reaches the target (its lower bound: mean - 1.5 standard
errors, on every query set) is a candidate; their one-query p50 is measured and the
fastest taken, then the largest value within 5% of that time (a knob that is nearly
free and adds recall is taken). Recall is that of the search users get: ``k *
rerank_factor`` candidates rescored exactly from the stored vectors
(:func:`clipindex.index.topk.top_k`).
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
from clipindex.index.structure import MAX_NLIST
from clipindex.index.topk import exact_top_k, top_k

__all__ = [
    "AUTO_FLAT_MAX_CELLS",
    "DEFAULT_TARGET_RECALL",
    "NEARLY_FREE",
    "PQ_SIZES",
    "RERANK_FACTOR",
    "AutoSettings",
    "HeldOut",
    "QuerySet",
    "choose_index",
    "held_out_sets",
    "measure_sets",
    "p50_ms",
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
#: k-means training points per IVF cell of an ``ivfpq`` (FAISS warns below 39).
TRAIN_PER_CELL = 64
#: A knob within this factor of the fastest one's p50 counts as nearly free.
NEARLY_FREE = 1.05
#: Standard errors below the mean recall a tuning value must stay above the target.
MARGIN_SE = 1.5
_NPROBE_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160,
                192, 256, 320, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192, 16384)
_EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
#: PQ code sizes (bytes a vector) ``auto`` may use, largest first.
PQ_SIZES = (128, 64, 48, 32, 24, 16, 12, 8, 4)


@dataclass(frozen=True)
class AutoSettings:
    """Knobs of ``--index-kind auto``: recall target, memory budget (bytes, None: no
    limit), the flat threshold, held-out queries per query set (half tune, half
    measure), seed, recall depth k, and how much longer than an IVF's an HNSW build
    may take to be a candidate."""

    target_recall: float = DEFAULT_TARGET_RECALL
    max_memory: int | None = None
    flat_max_cells: int = AUTO_FLAT_MAX_CELLS
    queries: int = 500
    seed: int = 0
    k: int = 10
    build_factor: float = 2.0

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
    >>> choose_index(1_000_000, 512, AutoSettings())  # cells: chosen from the data
    ('ivf', {})
    >>> choose_index(1_000_000, 512, AutoSettings(max_memory=parse_memory("100MB")))[0]
    'ivfpq'
    """
    if n * d <= settings.flat_max_cells or n < 39 * 4:
        return "flat", {}
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39, MAX_NLIST))
    options: dict[str, Any] = {"nlist": nlist, "train_per_cell": TRAIN_PER_CELL}
    budget = settings.max_memory
    if budget is None or n * (4 * d + 8) <= budget:
        return "ivf", {}
    per_vector = budget / n - 8  # inverted lists keep an 8-byte id per vector
    fits = [m for m in PQ_SIZES if m <= per_vector and d % m == 0 and d // m >= 2]
    if not fits:
        need = n * (8 + min(m for m in PQ_SIZES if d % m == 0)) if any(
            d % m == 0 for m in PQ_SIZES) else None
        raise UserInputError(
            f"--max-index-memory {budget:,} bytes is too small for {n:,} vectors of dim {d}"
            + (f" (the smallest PQ index needs ~{need:,})" if need else ""))
    return "ivfpq", {**options, "pq_m": fits[0]}


@dataclass
class QuerySet:
    """Held-out queries of one kind: vectors, their row ids (None: another matrix's) and
    the exact top-k row ids among the indexed rows."""

    queries: np.ndarray
    rows: np.ndarray | None
    truth: np.ndarray

    def joined(self, other: QuerySet) -> QuerySet:
        """This set and ``other`` as one."""
        rows = None if self.rows is None or other.rows is None else \
            np.concatenate([self.rows, other.rows])
        return QuerySet(np.concatenate([self.queries, other.queries]), rows,
                        np.concatenate([self.truth, other.truth]))

    def half(self, second: bool) -> QuerySet:
        """The tuning (first) or the measuring (second) half."""
        cut = (len(self.queries) + 1) // 2
        part = slice(cut, None) if second else slice(0, cut)
        rows = None if self.rows is None else self.rows[part]
        return QuerySet(self.queries[part], rows, self.truth[part])


@dataclass
class HeldOut:
    """The rows an index holds while it is tuned (``indexed``), the held-out rows
    (``rows``, added after), and the query sets' tuning and measuring halves."""

    indexed: np.ndarray
    rows: np.ndarray
    tune: dict[str, QuerySet]
    measure: dict[str, QuerySet]


def held_out_sets(matrix: np.ndarray, ids: np.ndarray, cross: dict[str, np.ndarray],
                  self_name: str, settings: AutoSettings,
                  pool: np.ndarray | None = None) -> HeldOut:
    """Draw the held-out queries (module docstring): ``settings.queries`` rows of
    ``pool`` (default ``ids``; at most a tenth of ``ids``) and as many nonzero rows of
    each ``cross`` matrix; the truth is the exact top-k among ``ids`` less those rows."""
    rng = np.random.default_rng(settings.seed)
    pool = ids if pool is None else np.asarray(pool, dtype=np.int64)
    size = min(settings.queries, len(pool), max(2, len(ids) // 10))
    own = rng.permutation(rng.choice(pool, size=size, replace=False))
    indexed = np.setdiff1d(ids, own, assume_unique=True)
    vectors: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        self_name: (np.asarray(matrix[np.sort(own)], np.float32)[
            np.argsort(np.argsort(own))], own)}
    for name, other in cross.items():
        nonzero = np.flatnonzero(np.concatenate([  # a block at a time: other may be 10M rows
            np.abs(np.asarray(other[lo:lo + 65536], np.float32)).sum(axis=1) > 0
            for lo in range(0, len(other), 65536)] or [np.zeros(0, bool)]))
        if not len(nonzero):  # e.g. an import without text_emb: no caption queries
            continue
        pick = rng.permutation(rng.choice(nonzero, size=min(settings.queries, len(nonzero)),
                                          replace=False))
        vectors[name] = (np.asarray(other[np.sort(pick)], np.float32)[
            np.argsort(np.argsort(pick))], None)
    everything = np.concatenate([q for q, _ in vectors.values()])
    truth = exact_top_k(matrix, indexed, everything, settings.k)
    sets, start = {}, 0
    for name, (q, rows) in vectors.items():
        sets[name] = QuerySet(q, rows, truth[start:start + len(q)])
        start += len(q)
    return HeldOut(indexed, np.sort(own), {n: s.half(False) for n, s in sets.items()},
                   {n: s.half(True) for n, s in sets.items()})


def _per_query(index: Any, matrix: np.ndarray, s: QuerySet, k: int, rerank: int
               ) -> np.ndarray:
    found = top_k(index, matrix, s.queries, k, rerank=rerank, fill=False)[1]
    out = []
    for f, t in zip(found, s.truth, strict=True):
        want = set(t[t >= 0].tolist())
        out.append(len(want & set(f[f >= 0].tolist())) / len(want) if want else 1.0)
    return np.asarray(out, dtype=np.float64)


def measure_sets(index: Any, matrix: np.ndarray, sets: dict[str, QuerySet], k: int,
                 rerank: int) -> dict[str, float]:
    """recall@k of each set (held-out queries: none is in ``index``)."""
    return {name: float(_per_query(index, matrix, s, k, rerank).mean()) if len(s.queries)
            else 1.0 for name, s in sets.items()}


def _lower_bound(index: Any, matrix: np.ndarray, sets: dict[str, QuerySet], k: int,
                 rerank: int) -> tuple[float, float]:
    """(min over sets of the mean recall, min of mean - MARGIN_SE standard errors)."""
    means, lows = [], []
    for s in sets.values():
        if not len(s.queries):
            continue
        r = _per_query(index, matrix, s, k, rerank)
        means.append(r.mean())
        lows.append(r.mean() - MARGIN_SE * r.std() / math.sqrt(len(r)))
    return (float(min(means)), float(min(lows))) if means else (1.0, 1.0)


def p50_ms(index: Any, matrix: np.ndarray, queries: np.ndarray, k: int, rerank: int,
           repeats: int = 60) -> float:
    """Median one-query latency of the rescored search, in ms."""
    top_k(index, matrix, queries[:1], k, rerank=rerank)  # warm-up
    times = []
    for i in range(min(repeats, len(queries))):
        t0 = time.perf_counter()
        top_k(index, matrix, queries[i:i + 1], k, rerank=rerank)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 4) if times else 0.0


def _grid(knob: str, top: int, start: int | None) -> list[int]:
    grid = [v for v in (_NPROBE_GRID if knob == "nprobe" else _EF_GRID) if v <= top]
    if knob == "nprobe" and top not in grid:
        grid.append(top)
    if start is not None and start not in grid and start <= top:
        grid = sorted([*grid, int(start)])
    return grid


def tune_index(index: Any, matrix: np.ndarray, held: HeldOut, kind: str,
               settings: AutoSettings, start: int | None = None) -> dict[str, Any]:
    """Set ``index``'s knob (module docstring) with ``held``'s tuning halves (none of
    their rows is in ``index``); return what the manifest records, the recall of the
    measuring halves included. ``start``: a value the grid holds (a model's guess)."""
    from clipindex.index.kinds import index_nlist, search_knob, set_search_knob

    k, target = settings.k, settings.target_recall
    rerank = RERANK_FACTOR.get(kind, 4)
    knob = search_knob(index)
    trials: dict[int, tuple[float, float]] = {}
    own = next(iter(held.tune.values())).queries
    if knob is None:
        chosen, reaching = 0, [0]
        trials[0] = _lower_bound(index, matrix, held.tune, k, rerank)
    else:
        grid = _grid(knob[0], index_nlist(index) or max(_EF_GRID), start)
        at = grid.index(start) if start in grid else 0
        while at > 0:  # down while the value below still reaches the target
            set_search_knob(index, grid[at - 1])
            trials[grid[at - 1]] = _lower_bound(index, matrix, held.tune, k, rerank)
            if trials[grid[at - 1]][1] < target:
                break
            at -= 1
        reaching = []
        for value in grid[at:]:
            if value not in trials:
                set_search_knob(index, value)
                trials[value] = _lower_bound(index, matrix, held.tune, k, rerank)
            if trials[value][1] >= target:
                reaching.append(value)
            if len(reaching) >= 3:
                break
        reaching = sorted(set(reaching) | {v for v, t in trials.items() if t[1] >= target})
        chosen = _fastest(index, matrix, own, k, rerank, reaching or [grid[-1]], trials)
        set_search_knob(index, chosen)
    return _tuned(index, matrix, held, kind, settings, knob, chosen, trials, rerank)


def _fastest(index: Any, matrix: np.ndarray, queries: np.ndarray, k: int, rerank: int,
             values: list[int], trials: dict[int, tuple[float, float]]) -> int:
    """The knob of the best p50 among the lowest three ``values``, or a larger one
    within :data:`NEARLY_FREE` of that time with more recall."""
    from clipindex.index.kinds import set_search_knob

    timed = {}
    for value in values[:3]:
        set_search_knob(index, value)
        timed[value] = p50_ms(index, matrix, queries, k, rerank)
    best = min(timed, key=lambda v: (timed[v], v))
    free = [v for v in timed if timed[v] <= NEARLY_FREE * timed[best]
            and trials[v][0] >= trials[best][0]]
    return max(free)


def _tuned(index: Any, matrix: np.ndarray, held: HeldOut, kind: str,
           settings: AutoSettings, knob: tuple[str, int] | None, chosen: int,
           trials: dict[int, tuple[float, float]], rerank: int) -> dict[str, Any]:
    k = settings.k
    recalls = measure_sets(index, matrix, held.measure, k, rerank)
    own = next(iter(held.measure.values())).queries
    return {
        "tuned_knob": None if knob is None else knob[0],
        "tuned_value": None if knob is None else int(chosen),
        "target_recall": settings.target_recall,
        "reached": bool(min(recalls.values()) >= settings.target_recall),
        f"recall_at_{k}": round(min(recalls.values()), 4),
        f"recall_at_{k}_by_query": {n: round(r, 4) for n, r in recalls.items()},
        "held_out_queries": int(sum(len(s.queries) for s in held.measure.values())),
        "held_out_by_query": {n: len(s.queries) for n, s in held.measure.items()},
        f"tuning_recall_at_{k}": round(trials[chosen][0], 4),
        "rerank_factor": rerank,
        "tuning_queries": {n: len(s.queries) for n, s in held.tune.items()},
        "knob_trials": {str(v): round(t[0], 4) for v, t in sorted(trials.items())},
        "p50_ms": p50_ms(index, matrix, own, k, rerank),
    }
