"""The code size ``auto`` gives an IVF-PQ index, chosen from candidates trained on a sample.

Under a memory budget ``auto`` stores 8-bit PQ codes of ``pq_m`` bytes a vector (plus an
8-byte id). A larger code keeps more of each vector (more recall from the same cells) but
costs more to scan (``pq_m`` table look-ups a code): which is faster *at the target
recall* depends on the data. The candidates (:func:`pq_candidates`) are the largest code
that fits the budget and divides the dim (into sub-vectors of 2 dims or more), and up to
two smaller ones, each about half the
one before (128, 64, 32 bytes at 512-d with room for 128). Each candidate is trained
(OPQ rotation, cells, codebooks; on :data:`TRAIN_ROWS` rows in :data:`OPQ_ITER` rounds,
cheaper than the full index's training) on a seeded sample of at most :data:`SAMPLE_ROWS`
of the indexed rows and holds that sample, with as many rows a cell as the full index will have
(so a probed cell scans as many codes); its ``nprobe`` is tuned as the full index's is
(:func:`clipindex.index.tuning.tune_index`: the held-out tuning queries, their exact
top-k recomputed *within the sample*, the rescored search) and its one-query p50 measured
there. :func:`pick_pq` takes the fastest candidate whose held-out recall on the sample
reaches the target, or a larger code within :data:`~clipindex.index.tuning.NEARLY_FREE`
of that time (more recall for nothing); when none reaches it, the largest (most recall).
The full index is then built with that code and tuned on the full held-out sets; every
candidate's row goes to the manifest (``pq_candidates``).

Example
-------
>>> pq_candidates(10_000_000, 512, 2_000_000_000)
[128, 64, 32]
>>> pick_pq([{"pq_m": 128, "reached": True, "p50_ms": 1.0, "recall": 0.99},
...          {"pq_m": 64, "reached": True, "p50_ms": 0.6, "recall": 0.97}])
64
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from clipindex.index.fill import trained_index
from clipindex.index.tuning import (
    NEARLY_FREE,
    PQ_SIZES,
    AutoSettings,
    HeldOut,
    QuerySet,
    tune_index,
)

__all__ = ["SAMPLE_ROWS", "choose_pq", "pick_pq", "pq_candidates"]

log = logging.getLogger("clipindex.store")

#: Indexed rows a candidate holds (its training, adding and tuning cost grows with it).
SAMPLE_ROWS = 100_000
#: A candidate's codebooks and rotation are trained on this many of them, in this many
#: OPQ rounds (the full index: 65,536 and 10): a candidate is compared, not kept, and
#: OPQ training is most of its cost (16 codebooks of 64-d: 15 s for 12k rows here).
TRAIN_ROWS = 16_384
OPQ_ITER = 4
#: Candidates at most: the largest code that fits, then about half, then a quarter.
CANDIDATES = 3


def pq_candidates(n: int, d: int, budget: int) -> list[int]:
    """Code sizes (bytes a vector) tried for ``n`` vectors of dim ``d`` in ``budget``
    bytes: the largest that fits and divides ``d``, then up to two smaller ones, each the
    largest fitting size at most half the one before. Empty when none fits."""
    per_vector = budget / n - 8  # inverted lists keep an 8-byte id a vector
    fits = [m for m in PQ_SIZES if m <= per_vector and d % m == 0 and d // m >= 2]
    out: list[int] = []
    for m in fits:
        if not out or m <= out[-1] // 2:
            out.append(m)
        if len(out) == CANDIDATES:
            break
    return out


def pick_pq(rows: list[dict[str, Any]]) -> int:
    """The code size of the fastest row that reached the target (a larger one within
    ``NEARLY_FREE`` of its p50 is taken instead), else of the row of most recall (ties:
    the larger code)."""
    reached = [r for r in rows if r["reached"]]
    if not reached:
        return int(max(rows, key=lambda r: (r["recall"], r["pq_m"]))["pq_m"])
    best = min(r["p50_ms"] for r in reached)
    return int(max(r["pq_m"] for r in reached if r["p50_ms"] <= NEARLY_FREE * best))


def _sample(held: HeldOut, matrix: np.ndarray, settings: AutoSettings) -> HeldOut:
    """``held`` with its indexed rows cut to a seeded sample of ``SAMPLE_ROWS`` and every
    query set's truth recomputed as the exact top-k within that sample."""
    from clipindex.index.topk import exact_top_k

    rows = held.indexed
    if len(rows) > SAMPLE_ROWS:
        rng = np.random.default_rng(settings.seed + 3)
        rows = np.sort(rng.choice(rows, size=SAMPLE_ROWS, replace=False))

    def within(sets: dict[str, QuerySet]) -> dict[str, QuerySet]:
        return {name: QuerySet(s.queries, s.rows,
                               exact_top_k(matrix, rows, s.queries, settings.k))
                for name, s in sets.items()}

    return HeldOut(rows, np.zeros(0, np.int64), within(held.tune), within(held.measure))


def choose_pq(matrix: np.ndarray, held: HeldOut, options: dict[str, Any], n: int,
              settings: AutoSettings) -> tuple[int, list[dict[str, Any]]]:
    """(the chosen ``pq_m``, every candidate's row) for an ``ivfpq`` of ``options``
    (its ``nlist``, ``train_per_cell``) over ``n`` rows (module docstring)."""

    assert settings.max_memory is not None
    sizes = pq_candidates(n, int(matrix.shape[1]), settings.max_memory)
    if len(sizes) < 2:
        return int(options["pq_m"]), []
    sample = _sample(held, matrix, settings)
    # as many rows a cell as the full index (a probed cell scans as many codes), and at
    # least 39 rows a cell for k-means
    nlist = max(1, min(round(int(options["nlist"]) * len(sample.indexed) / n),
                       len(sample.indexed) // 39))
    rows = []
    for m in sizes:
        t0 = time.perf_counter()
        index = trained_index("ivfpq", matrix, sample.indexed, settings.seed,
                              {**options, "nlist": nlist, "pq_m": m,
                               "train_rows": TRAIN_ROWS, "opq_iter": OPQ_ITER})
        built = time.perf_counter() - t0
        tuned = tune_index(index, matrix, sample, "ivfpq", settings)
        rows.append({"pq_m": m, "nprobe": tuned["tuned_value"],
                     "recall": tuned[f"recall_at_{settings.k}"],
                     "reached": tuned["reached"], "p50_ms": tuned["p50_ms"],
                     "build_s": round(built, 2), "sample_rows": len(sample.indexed),
                     "sample_cells": nlist})
        log.info("auto: PQ%d on %d rows: recall %.3f at nprobe %s, p50 %.3f ms",
                 m, len(sample.indexed), rows[-1]["recall"], rows[-1]["nprobe"],
                 rows[-1]["p50_ms"])
    return pick_pq(rows), rows
