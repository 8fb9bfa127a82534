"""Reciprocal rank fusion (RRF, Cormack et al. 2009) of several backbones' rankings.

Every backbone ranks the same (filtered) rows; a row's fused score is
``sum_b 1 / (RRF_K + rank_b)`` over the backbones whose top ``max(k, RRF_DEPTH)`` list
holds it (ranks start at 1). A fused score is *not* a cosine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["RRF_K", "RRF_DEPTH", "rrf_fuse"]

RRF_K = 60
"""The constant of reciprocal rank fusion: a row at rank r scores 1 / (RRF_K + r)."""

RRF_DEPTH = 100
"""Each backbone contributes its top ``max(k, RRF_DEPTH)`` rows to a fusion."""


def rrf_fuse(
    rankings: Sequence[np.ndarray], k: int, *, rrf_k: int = RRF_K
) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of several rankings of the same rows, per query.

    Parameters
    ----------
    rankings : sequence of int arrays, each (n_queries, depth)
        Row ids best first; -1 marks an empty slot.
    k : int
        How many fused rows to keep per query.
    rrf_k : int
        The fusion constant: a row at rank r (from 1) adds ``1 / (rrf_k + r)``.

    Returns
    -------
    scores, ids : (n_queries, k) arrays; ids -1 (score 0) where fewer rows exist.
        Ties are broken by row id.

    Examples
    --------
    >>> s, i = rrf_fuse([np.array([[3, 1]]), np.array([[1, 2]])], 3, rrf_k=60)
    >>> i.tolist(), round(float(s[0, 0]), 5)
    ([[1, 3, 2]], 0.03252)
    """
    n_queries = rankings[0].shape[0]
    out_ids = np.full((n_queries, k), -1, dtype=np.int64)
    out_scores = np.zeros((n_queries, k), dtype=np.float64)
    for q in range(n_queries):
        fused: dict[int, float] = {}
        for ranking in rankings:
            for r, row in enumerate(ranking[q], start=1):
                if row >= 0:
                    fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (rrf_k + r)
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        for j, (row, score) in enumerate(best):
            out_ids[q, j], out_scores[q, j] = row, score
    return out_scores, out_ids
