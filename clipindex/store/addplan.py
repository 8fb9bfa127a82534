"""Which rows an add appends and which it tombstones (:func:`plan_rows`): the source's
images matched to the store's by identity (relative path, with ``etag`` where the source
records one), shared by ``clipindex add`` of a dataset source (:mod:`clipindex.store.add`)
and of imported embeddings (:mod:`clipindex.store.addimported`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import DataError
from clipindex.store.generations import tombstones

__all__ = ["RowPlan", "plan_rows"]


@dataclass
class RowPlan:
    """The store's tables after an add and what changed."""

    images: pd.DataFrame
    captions: pd.DataFrame
    dead_images: np.ndarray
    dead_captions: np.ndarray
    added: int
    removed: int
    added_captions: int
    removed_captions: int
    #: the source's row ids of the appended rows, in their order
    source_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.removed_captions)

    def fingerprint(self, before: str) -> str:
        """The store's dataset fingerprint after this plan: ``before`` when nothing
        changed, else that of the new tables and their tombstones."""
        if not self.changed:
            return before
        from clipindex.sources import fingerprint as table_fingerprint
        from clipindex.store.generations import store_fingerprint

        return store_fingerprint(table_fingerprint(self.images, self.captions),
                                 self.dead_images, self.dead_captions)


def _identity(table: pd.DataFrame) -> pd.Series:
    """An image's identity: its ``file``, with its ``etag`` when the source records one."""
    files = table["file"].astype(str)
    if "etag" in table.columns:
        return files + "\0" + table["etag"].fillna("").astype(str)
    return files


def _member(values: pd.Series, among: pd.Series) -> np.ndarray:
    """``values.isin(among)`` as a bool array, hashed by Arrow: pandas' ``isin`` of its
    Arrow-backed strings makes a Python object of every value (~7 s per million)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = pc.is_in(pa.array(values, type=pa.large_string()),
                     value_set=pa.array(among, type=pa.large_string()))
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


def plan_rows(images: pd.DataFrame, captions: pd.DataFrame, info: dict[str, Any],
              source: Any) -> RowPlan:
    """Match ``source``'s images to the store's by relative path: new ones appended
    (row ids after the last), gone ones tombstoned with their captions."""
    dead_i, dead_c = tombstones(info)
    files = _identity(images)
    live = np.ones(len(images), dtype=bool)
    live[dead_i] = False
    src = source.images
    src_files = _identity(src)
    if src_files.nunique() != len(src_files):
        raise DataError(f"the source lists {src_files[src_files.duplicated()].iloc[0]!r} "
                        "more than once; an image's identity is its path")
    gone = np.flatnonzero(live & ~_member(files, src_files))
    new = src[~_member(src_files, files[live])]
    n0, nc0 = len(images), len(captions)
    row_of = dict(zip(new["row_id"].astype(int), range(n0, n0 + len(new)), strict=True))
    add = new.reindex(columns=images.columns).assign(row_id=np.arange(n0, n0 + len(new)))
    new_images = pd.concat([images, add], ignore_index=True) if len(add) else images
    caps = source.captions[source.captions["image_row_id"].isin(row_of)]
    caps = caps.reindex(columns=captions.columns).assign(
        row_id=np.arange(nc0, nc0 + len(caps)),
        image_row_id=caps["image_row_id"].map(row_of).to_numpy())
    new_captions = pd.concat([captions, caps], ignore_index=True) if len(caps) else captions
    for frame in (new_images, new_captions):
        frame["row_id"] = frame["row_id"].astype(np.int64)
    new_captions["image_row_id"] = new_captions["image_row_id"].astype(np.int64)
    gone_c = np.flatnonzero(captions["image_row_id"].isin(gone).to_numpy())
    return RowPlan(new_images, new_captions,
                   np.union1d(dead_i, gone).astype(np.int64),
                   np.union1d(dead_c, gone_c).astype(np.int64),
                   added=len(new), removed=len(gone), added_captions=len(caps),
                   removed_captions=len(np.setdiff1d(gone_c, dead_c)),
                   source_rows=new["row_id"].to_numpy(np.int64))
