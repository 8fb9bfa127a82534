"""The hits of a search, built from the hit rows only, as columns of plain Python values.

::

    query_id  query  rank  score  row_id  file  label  caption        (target="images")
    query_id  query  rank  score  row_id  image_row_id  file  label  text   (target="captions")

A query's work beyond FAISS touches only its k hit rows: their metadata is taken by row
id from the store's tables (:meth:`BackboneIndex.table`, Arrow ``take``) and an image's
first caption comes from :meth:`BackboneIndex.first_captions` (no scan of the captions).
:class:`HitTable` gives the JSON records directly (what ``serve`` returns: no DataFrame
per request) and the DataFrame on demand.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from clipindex.search.ranking import SearchableIndex, table_of
from clipindex.store.tables import FirstCaptions

__all__ = ["HitTable", "backbone_name", "first_captions", "hit_table", "hits_frame",
           "table_of"]


class HitTable:
    """Hits as columns (``name -> list`` of Python values, one entry per hit, grouped
    per query). :meth:`frame` is the DataFrame, :meth:`records` the JSON-ready dicts."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self.columns = columns

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> HitTable:
        table = cls({str(c): frame[c].tolist() for c in frame.columns})
        table._frame = frame
        return table

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def frame(self) -> pd.DataFrame:
        """The hits as a DataFrame (ids int64, score float64, text columns str)."""
        found = getattr(self, "_frame", None)
        if found is None:
            data: dict[str, Any] = {}
            for name, values in self.columns.items():
                if name in _INTS:
                    data[name] = np.asarray(values, dtype=np.int64)
                elif name == "score":
                    data[name] = np.asarray(values, dtype=np.float64)
                else:
                    data[name] = values if values else np.array([], dtype=object)
            found = self._frame = pd.DataFrame(data)
        return found

    def records(self) -> list[dict[str, Any]]:
        """One dict per hit; missing values (None, NaN, pd.NA) are None."""
        names = list(self.columns)
        values = [_cleaned(v) for v in self.columns.values()]
        return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


_INTS = frozenset({"query_id", "rank", "row_id", "image_row_id"})


def _cleaned(values: list[Any]) -> list[Any]:
    """``values`` with every missing value as None (a column of only strings or only
    ints, what most columns are, has none: returned as it is)."""
    if all(type(v) is str for v in values) or all(type(v) is int for v in values):
        return values
    return [None if _missing(v) else v for v in values]


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def first_captions(index: SearchableIndex, image_rows: np.ndarray) -> np.ndarray:
    """The first valid caption row (lowest row id) of each of ``image_rows``; -1 if none."""
    found = getattr(index, "first_captions", None)
    if callable(found):
        return np.asarray(found(image_rows), dtype=np.int64)
    captions = table_of(index, "captions")
    if len(captions) == 0 or "image_row_id" not in captions:
        return np.full(len(image_rows), -1, dtype=np.int64)
    lookup = FirstCaptions(captions.ints("image_row_id"), np.asarray(index.caption_valid),
                           len(index.image_valid))
    return lookup(image_rows)


def backbone_name(index: SearchableIndex, i: int) -> str:
    name = getattr(index, "name", None)
    if name:
        return str(name)
    manifest = index.manifest or {}
    return str(manifest.get("backbone", f"backbone{i}"))


def hit_table(index: SearchableIndex, target: str, labels: list[str], scores: np.ndarray,
              ids: np.ndarray, offset: int = 0) -> HitTable:
    """The hits (ids >= 0) after each query's first ``offset``, grouped per query
    (row-major over the (query, rank) grid); ranks keep their place."""
    qi, slot = np.nonzero(ids >= 0)
    if offset:
        keep = slot >= offset
        qi, slot = qi[keep], slot[keep]
    hit = ids[qi, slot].astype(np.int64)
    images = table_of(index, "images")
    columns: dict[str, list[Any]] = {
        "query_id": qi.tolist(),
        "query": [labels[i] for i in qi.tolist()],
        "rank": (slot + 1).tolist(),
        "score": scores[qi, slot].astype(np.float64).tolist(),
        "row_id": hit.tolist(),
    }
    if target == "images":
        image_rows, table = hit, images
    else:
        table = table_of(index, "captions")
        image_rows = np.asarray(table.ints("image_row_id")[hit], dtype=np.int64)
        columns["image_row_id"] = image_rows.tolist()
    columns["file"] = images.take("file", image_rows)
    columns["label"] = table.take("label", hit) if "label" in table else [None] * len(hit)
    if target == "images":
        first = first_captions(index, hit)
        found = first >= 0
        text = [""] * len(hit)
        if found.any():
            got = table_of(index, "captions").take("text", first[found])
            for j, value in zip(np.flatnonzero(found).tolist(), got, strict=True):
                text[j] = value
        columns["caption"] = text
    else:
        columns["text"] = table.take("text", hit)
    return HitTable(columns)


def hits_frame(index: SearchableIndex, target: str, labels: list[str], scores: np.ndarray,
               ids: np.ndarray) -> pd.DataFrame:
    """The hits as a DataFrame (:func:`hit_table`'s :meth:`HitTable.frame`)."""
    return hit_table(index, target, labels, scores, ids).frame()
