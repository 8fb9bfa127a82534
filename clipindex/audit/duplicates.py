"""Near-duplicate groups whose members carry different labels.

Pairs come from :func:`clipindex.search.dedup.find_duplicates` (exact file copies and
near pairs through the store's own index) for each audited backbone; a near pair counts
when a majority of the backbones find it (tiny-rn packs distinct demo images closer than
the others, so one backbone alone is not trusted), an exact pair always. Pairs are
joined into groups (connected components); a group whose labels differ is a conflict:
the same picture cannot be two classes, so at least one label in it is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from clipindex.search.dedup import find_duplicates

__all__ = ["DUPLICATE_COLUMNS", "duplicate_groups"]

DUPLICATE_COLUMNS: tuple[str, ...] = ("group", "row_id", "file", "split", "label",
                                      "suggested", "cross_split", "max_cosine")


def _agreed_pairs(indexes: Sequence[Any], threshold: float,
                  root: str | os.PathLike[str] | None) -> dict[tuple[int, int], float]:
    """Pairs (a < b) found by a majority of the backbones (exact pairs by any)."""
    votes: dict[tuple[int, int], int] = {}
    best: dict[tuple[int, int], float] = {}
    exact: set[tuple[int, int]] = set()
    for index in indexes:
        pairs = find_duplicates(index, threshold=threshold, root=root, require_files=False)
        for r in pairs.itertuples(index=False):
            key = (int(r.row_id_a), int(r.row_id_b))
            votes[key] = votes.get(key, 0) + 1
            best[key] = max(best.get(key, -1.0), float(r.cosine))
            if r.kind == "exact":
                exact.add(key)
    need = len(indexes) // 2 + 1
    return {k: best[k] for k, v in votes.items() if v >= need or k in exact}


def _components(pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the pair graph (union-find), each sorted, by first row."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for a in list(parent):
        groups.setdefault(find(a), []).append(a)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def duplicate_groups(indexes: Sequence[Any], images: pd.DataFrame, audited: np.ndarray,
                     *, threshold: float, root: str | os.PathLike[str] | None = None
                     ) -> pd.DataFrame:
    """One row per member of a near-duplicate group of audited rows whose labels differ
    (:data:`DUPLICATE_COLUMNS`; ``suggested`` is left for the caller to fill)."""
    keep = set(int(r) for r in audited)
    found = {k: v for k, v in _agreed_pairs(indexes, threshold, root).items()
             if k[0] in keep and k[1] in keep}
    by_id = images.set_index("row_id")
    rows = []
    number = 0
    for members in _components(list(found)):
        labels = by_id.loc[members, "label"].astype(str)
        if labels.nunique() < 2:
            continue
        number += 1
        splits = by_id.loc[members, "split"].astype(str)
        cos = max(v for k, v in found.items() if k[0] in members)
        for r in members:
            rows.append({"group": number, "row_id": r, "file": str(by_id.loc[r, "file"]),
                         "split": str(splits[r]), "label": str(labels[r]), "suggested": "",
                         "cross_split": splits.nunique() > 1, "max_cosine": round(cos, 6)})
    return pd.DataFrame(rows, columns=list(DUPLICATE_COLUMNS))
