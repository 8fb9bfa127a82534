"""The hits of a search as a DataFrame, one row per (query, rank), grouped per query.

::

    query_id  query  rank  score  row_id  file  label  caption        (target="images")
    query_id  query  rank  score  row_id  image_row_id  file  label  text   (target="captions")
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipindex.search.ranking import SearchableIndex

__all__ = ["backbone_name", "first_captions", "hits_frame"]


def first_captions(index: SearchableIndex, image_rows: np.ndarray) -> np.ndarray:
    """The first caption (lowest caption row id) of each of ``image_rows``; "" if none."""
    caps = index.captions
    if len(caps) == 0 or "image_row_id" not in caps or len(image_rows) == 0:
        return np.array([""] * len(image_rows), dtype=object)
    # Only the captions of the hits: a search must not scan-sort the whole table.
    mine = caps[caps["image_row_id"].isin(np.unique(image_rows))]
    first = mine.sort_values("row_id").drop_duplicates("image_row_id")
    lookup = dict(zip(first["image_row_id"].tolist(), first["text"].tolist(), strict=True))
    return np.array([lookup.get(int(r), "") for r in image_rows], dtype=object)


def backbone_name(index: SearchableIndex, i: int) -> str:
    name = getattr(index, "name", None)
    if name:
        return str(name)
    manifest = index.manifest or {}
    return str(manifest.get("backbone", f"backbone{i}"))


def hits_frame(
    index: SearchableIndex, target: str, labels: list[str], scores: np.ndarray, ids: np.ndarray
) -> pd.DataFrame:
    """The hits as a DataFrame, grouped per query (row-major over the (query, rank) grid)."""
    qi, slot = np.nonzero(ids >= 0)
    hit = ids[qi, slot]
    images = index.images
    frame = pd.DataFrame(
        {
            "query_id": qi.astype(np.int64),
            "query": [labels[i] for i in qi],
            "rank": (slot + 1).astype(np.int64),
            "score": scores[qi, slot].astype(np.float64),
            "row_id": hit.astype(np.int64),
        }
    )
    if target == "images":
        image_rows = hit
    else:
        caps = index.captions
        image_rows = caps["image_row_id"].to_numpy()[hit].astype(np.int64)
        frame["image_row_id"] = image_rows
    frame["file"] = images["file"].to_numpy()[image_rows] if len(hit) else []
    table = images if target == "images" else index.captions
    label = table["label"].to_numpy()[hit] if "label" in table else [None] * len(hit)
    frame["label"] = label if len(hit) else []
    if target == "images":
        frame["caption"] = first_captions(index, hit)
    else:
        frame["text"] = index.captions["text"].to_numpy()[hit] if len(hit) else []
    return frame
