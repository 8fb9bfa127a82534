"""The structure ``auto`` gives an IVF index, chosen from the data: the cell count.

IVF-Flat scores every vector of the cells it probes exactly, so with given centroids its
recall@k at ``nprobe`` p is known without building the index: a true neighbour is found
exactly when its cell (the centroid nearest to it) is among the query's p nearest
centroids. For each candidate cell count (``sqrt(n)`` times 1/2, 1, 2, 4) the centroids
are trained on a sample (spherical k-means), the true neighbours of the tuning queries
(held out, not in the index) are assigned to cells, and so are a sample of the rows
(the cells' sizes). That gives, for every ``nprobe``, the recall on the tuning queries
and the vectors a query scans; a candidate's cost is that of one query at the smallest
``nprobe`` whose recall reaches the target (quantizer ``nlist`` + scanned vectors, in
dot products). Candidates are tried from ``sqrt(n)`` up while the cost falls (else
``sqrt(n)/2``), so the costly large ones are trained only when they pay; the chosen
centroids are the index's own (no second training).

Example
-------
>>> ivf_candidates(1_000_000)
[1000, 2000, 4000, 500]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CellModel", "choose_cells", "ivf_candidates", "ivf_from_centroids",
           "train_centroids"]

#: k-means points per cell (FAISS warns below 39) and rounds: the knob is tuned after.
TRAIN_PER_CELL = 40
KMEANS_ITER = 10
#: Rows assigned to estimate the cells' sizes.
SIZE_SAMPLE = 50_000
#: Per probed cell, the cost of visiting it, in vector dot products.
PROBE_COST = 16
#: Cells at most: adding n vectors costs n x nlist x dim (assignment), so 4 * sqrt(n)
#: cells at 10M (12,649) would take ~30 min of one core to add and as long to train;
#: 4,096 cells take ~9 min (benchmarks/RESULTS.md, bench_10m).
MAX_NLIST = 4096


def ivf_candidates(n: int) -> list[int]:
    """Cell counts tried for ``n`` vectors, in the order :func:`choose_cells` may try
    them: ``sqrt(n)``, then 2x and 4x (while cheaper), else ``sqrt(n) / 2``."""
    top = max(1, min(n // 39, MAX_NLIST))
    root = math.sqrt(n)
    out = []
    for c in (1, 2, 4, 0.5):
        nlist = max(1, min(int(round(c * root)), top))
        if nlist not in out:
            out.append(nlist)
    return out


def train_centroids(matrix: np.ndarray, ids: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """Unit centroids of ``nlist`` cells by spherical k-means on a seeded sample of
    ``TRAIN_PER_CELL * nlist`` of the rows ``ids``."""
    import faiss

    rng = np.random.default_rng(seed)
    size = min(len(ids), TRAIN_PER_CELL * nlist)
    pick = np.sort(rng.choice(ids, size=size, replace=False))
    x = np.ascontiguousarray(matrix[pick], dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], nlist, niter=KMEANS_ITER, spherical=True, seed=seed,
                      max_points_per_centroid=TRAIN_PER_CELL, verbose=False)
    km.train(x)
    c = np.asarray(km.centroids, dtype=np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def _assign(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    import faiss

    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    return quantizer.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0]


def ivf_from_centroids(centroids: np.ndarray, nprobe: int = 1) -> Any:
    """An empty IVF-Flat inner-product index over these centroids (trained: the
    centroids are its quantizer)."""
    import faiss

    d = centroids.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    index: Any = faiss.IndexIVFFlat(quantizer, d, len(centroids),
                                    faiss.METRIC_INNER_PRODUCT)
    index.referenced_objects = [quantizer]  # the quantizer lives as long as the index
    index.nprobe = int(nprobe)
    return index


@dataclass
class CellModel:
    """One candidate: its centroids, the tuning recall and scan cost per ``nprobe``."""

    nlist: int
    centroids: np.ndarray
    recall: np.ndarray  # (nlist,) min over query sets of the lower bound at nprobe i+1
    scanned: np.ndarray  # (nlist,) mean vectors scanned at nprobe i+1
    train_s: float
    nprobe: int = 0
    cost: float = math.inf
    row: dict[str, Any] = field(default_factory=dict)


def _curves(centroids: np.ndarray, sizes: np.ndarray, queries: np.ndarray,
            truth_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-query recall at every nprobe, mean scanned at every nprobe) of one set."""
    nlist = len(centroids)
    order = np.argsort(-(queries @ centroids.T), axis=1, kind="stable")
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(nlist)[None, :].repeat(len(order), 0), axis=1)
    ranks = np.take_along_axis(pos, np.where(truth_cells >= 0, truth_cells, 0), axis=1)
    ranks = np.where(truth_cells >= 0, ranks, nlist)  # no neighbour: never counted
    counts = np.zeros((len(queries), nlist + 1))
    np.add.at(counts, (np.arange(len(queries))[:, None].repeat(ranks.shape[1], 1), ranks), 1)
    n_true = np.maximum((truth_cells >= 0).sum(axis=1, keepdims=True), 1)
    per_query = np.cumsum(counts[:, :nlist], axis=1) / n_true
    scanned = np.cumsum(sizes[order], axis=1).mean(axis=0)
    return per_query, scanned


def model_cells(matrix: np.ndarray, ids: np.ndarray, nlist: int, sets: dict[str, Any],
                target: float, seed: int) -> CellModel:
    """Train the candidate with ``nlist`` cells and measure its curves on ``sets``
    (name -> object with ``queries`` and ``truth``, the exact top-k row ids)."""
    t0 = time.perf_counter()
    centroids = train_centroids(matrix, ids, nlist, seed)
    rng = np.random.default_rng(seed + 1)
    sample = np.sort(rng.choice(ids, size=min(len(ids), SIZE_SAMPLE), replace=False))
    counts = np.bincount(_assign(centroids, matrix[sample]), minlength=nlist)
    sizes = counts * (len(ids) / len(sample))
    lows, scans = [], []
    for s in sets.values():
        truth = np.asarray(s.truth)
        flat = np.unique(truth[truth >= 0])
        assigned = _assign(centroids, matrix[flat]) if len(flat) else np.zeros(0, np.int64)
        at = np.searchsorted(flat, np.where(truth >= 0, truth, flat[0] if len(flat) else 0))
        cells = np.where(truth >= 0, assigned[np.minimum(at, max(len(flat) - 1, 0))]
                         if len(flat) else -1, -1)
        per_query, scanned = _curves(centroids, sizes, np.asarray(s.queries, np.float32),
                                     cells)
        se = per_query.std(axis=0) / math.sqrt(max(1, len(per_query)))
        lows.append(per_query.mean(axis=0) - 1.5 * se)
        scans.append(scanned)
    model = CellModel(nlist, centroids, np.min(lows, axis=0), np.max(scans, axis=0),
                      round(time.perf_counter() - t0, 3))
    reach = np.flatnonzero(model.recall >= target)
    model.nprobe = int(reach[0]) + 1 if len(reach) else nlist
    model.cost = float(nlist + model.scanned[model.nprobe - 1] + PROBE_COST * model.nprobe)
    model.row = {"nlist": nlist, "nprobe": model.nprobe,
                 "recall_lower_bound": round(float(model.recall[model.nprobe - 1]), 4),
                 "cost_dot_products": round(model.cost), "train_s": model.train_s}
    return model


def choose_cells(matrix: np.ndarray, ids: np.ndarray, sets: dict[str, Any], target: float,
                 seed: int) -> tuple[CellModel, list[dict[str, Any]]]:
    """The cheapest candidate (module docstring) and every tried one's row."""
    cands = ivf_candidates(len(ids))
    tried = {cands[0]: model_cells(matrix, ids, cands[0], sets, target, seed)}
    for nlist in cands[1:3]:  # upwards while each step is cheaper
        if nlist in tried:
            break
        tried[nlist] = model_cells(matrix, ids, nlist, sets, target, seed)
        if tried[nlist].cost >= min(m.cost for n, m in tried.items() if n != nlist):
            break
    best = min(tried.values(), key=lambda m: m.cost)
    if best.nlist == cands[0] and len(cands) > 3 and cands[3] not in tried:
        tried[cands[3]] = model_cells(matrix, ids, cands[3], sets, target, seed)
        best = min(tried.values(), key=lambda m: m.cost)
    return best, [m.row for m in tried.values()]
