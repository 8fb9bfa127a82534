"""``--index-kind auto`` end to end: the kind, its structure and knob chosen from the
data (:mod:`clipindex.index.tuning`, :mod:`clipindex.index.structure` for IVF cells,
:mod:`clipindex.index.pqsize` for PQ code sizes), the index trained on a sample and
filled in blocks, tuned and measured while the held-out rows are out of it, then completed with
them.

Example
-------
>>> import numpy as np
>>> x = np.random.default_rng(0).standard_normal((300, 8)).astype("float32")
>>> x /= np.linalg.norm(x, axis=1, keepdims=True)
>>> index, desc = auto_index(x, np.arange(300), {}, "image_to_image", AutoSettings())
>>> desc["kind"], index.ntotal
('flat', 300)
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from clipindex.index.fill import add_rows, trained_index
from clipindex.index.pqsize import choose_pq
from clipindex.index.structure import choose_cells, ivf_from_centroids
from clipindex.index.tuning import (
    AutoSettings,
    HeldOut,
    choose_index,
    held_out_sets,
    tune_index,
)

__all__ = ["auto_index"]

log = logging.getLogger("clipindex.store")

#: HNSW rows timed to project an HNSW build.
HNSW_PROBE = 2000
#: A large graph inserts slower than the timed small one beyond its log(n) depth (cache
#: misses on random neighbours; measured ~1k/s per core at 1M x 512 against ~8k/s for
#: the first 2,000): the projection is multiplied by this.
HNSW_LARGE_GRAPH = 4.0


def _ivf(vectors: np.ndarray, held: HeldOut, settings: AutoSettings
         ) -> tuple[Any, dict[str, Any], float]:
    """The IVF of the cheapest cell count, tuned, and the seconds its own build took
    (its centroids' training and the adds: the yardstick of an HNSW candidate)."""
    model, table = choose_cells(vectors, held.indexed, held.tune, settings.target_recall,
                                settings.seed)
    log.info("auto: %d cells (nprobe ~%d) of %s", model.nlist, model.nprobe,
             [r["nlist"] for r in table])
    t0 = time.perf_counter()
    index = add_rows(ivf_from_centroids(model.centroids, model.nprobe), vectors, held.indexed)
    built = time.perf_counter() - t0 + model.train_s
    tuned = tune_index(index, vectors, held, "ivf", settings, start=model.nprobe)
    return index, {**tuned, "cell_candidates": table}, built


def _hnsw(vectors: np.ndarray, held: HeldOut, settings: AutoSettings, budget_s: float
          ) -> tuple[Any, dict[str, Any]] | str:
    """The best HNSW (M 16 or 32) when the projected build of both fits ``budget_s``,
    else why not (a line for the manifest)."""
    from clipindex.index import kinds

    rng = np.random.default_rng(settings.seed + 2)
    probe = np.sort(rng.choice(held.indexed, size=min(HNSW_PROBE, len(held.indexed)),
                               replace=False))
    t0 = time.perf_counter()
    kinds.build_index(np.asarray(vectors[probe], np.float32), probe, kind="hnsw", hnsw_m=32)
    rate = len(probe) / max(time.perf_counter() - t0, 1e-9)
    n = len(held.indexed)
    projected = n / rate * max(1.0, math.log(n) / math.log(max(len(probe), 2))) * \
        (HNSW_LARGE_GRAPH if n > 4 * len(probe) else 1.0)
    log.info("auto: HNSW projected %.0f s a graph, budget %.0f s", projected, budget_s)
    if 2 * projected > budget_s:  # two graphs are built: M 16 and 32
        return f"projected build 2 x {projected:.0f} s > {budget_s:.0f} s"
    best: tuple[Any, dict[str, Any]] | None = None
    for m in (16, 32):
        index = trained_index("hnsw", vectors, held.indexed, settings.seed, {"hnsw_m": m})
        tuned = tune_index(index, vectors, held, "hnsw", settings)
        if best is None or (tuned["reached"], -tuned["p50_ms"]) > (
                best[1]["reached"], -best[1]["p50_ms"]):
            best = (index, tuned)
    assert best is not None
    return best


def auto_index(vectors: np.ndarray, ids: np.ndarray, cross: dict[str, np.ndarray],
               self_name: str, settings: AutoSettings) -> tuple[Any, dict[str, Any]]:
    """The index ``auto`` chooses for rows ``ids`` of ``vectors`` and what the manifest
    records of it (kind, structure, knob, held-out recall, p50, the candidates tried)."""
    from clipindex.index import kinds

    n, d = len(ids), int(vectors.shape[1])
    kind, options = choose_index(n, d, settings)
    t0 = time.perf_counter()
    if kind == "flat":
        index = add_rows(kinds.build_index(np.zeros((0, d), np.float32), kind="flat"),
                         vectors, ids)
        desc = kinds.describe_index(index)
        desc.update(chosen_by="auto", n_vectors=n, rerank_factor=1,
                    build_seconds=round(time.perf_counter() - t0, 3),
                    reason=f"n*dim {n * d:,} <= {settings.flat_max_cells:,}")
        return index, desc
    held = held_out_sets(vectors, np.asarray(ids, np.int64), cross, self_name, settings)
    log.info("auto: %s over %d rows; held-out truth in %.1f s", kind, n,
             time.perf_counter() - t0)
    if kind == "ivf":
        index, tuned, built = _ivf(vectors, held, settings)
        other = _hnsw(vectors, held, settings, settings.build_factor * built)
        if isinstance(other, str):
            tuned["hnsw_candidate"] = other
        elif (other[1]["reached"], -other[1]["p50_ms"]) > (tuned["reached"], -tuned["p50_ms"]):
            index, tuned = other[0], {**other[1], "ivf_candidate": {
                k: tuned[k] for k in ("tuned_value", "p50_ms", "recall_at_10")}}
        else:
            tuned["hnsw_candidate"] = {k: other[1][k] for k in ("tuned_value", "p50_ms",
                                                                 "recall_at_10")}
    else:
        candidates: list[dict[str, Any]] = []
        if kind == "ivfpq":
            pq_m, candidates = choose_pq(vectors, held, options, n, settings)
            options = {**options, "pq_m": pq_m}
        index = trained_index(kind, vectors, held.indexed, settings.seed, options)
        tuned = tune_index(index, vectors, held, kind, settings)
        if candidates:
            tuned["pq_candidates"] = candidates
    add_rows(index, vectors, held.rows)  # the held-out rows, measured without them
    desc = kinds.describe_index(index)
    desc.update(tuned)
    desc.update(kinds.describe_index(index), chosen_by="auto", n_vectors=n,
                build_seconds=round(time.perf_counter() - t0, 3))
    return index, desc
