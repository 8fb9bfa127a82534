"""A store's tables as a query reads them: rows by id, columns decoded on first use.

A query touches the k rows it returns, never a whole column (issue 33). So an open keeps
each table's parquet bytes (the very bytes it hashed) and decodes a column only when a
query first needs it; rows are then picked by row id with Arrow's ``take`` (a few
microseconds for ten rows of a million, where ``to_numpy()`` of a string column builds a
million Python objects). ``--where`` filters are evaluated on per-column codes
(:meth:`StoreTable.codes`, made once per open), and the first caption of an image comes
from :class:`FirstCaptions` (a binary search of the caption -> image column, or a map
made once), not from a scan of the captions.

The whole pandas DataFrame (what ``BackboneIndex.images`` returns) is still there for
the code that wants one (classifiers, reports); it is built on first use.

Example
-------
>>> t = StoreTable.from_frame(pd.DataFrame({"file": ["a", "b", "c"], "label": ["x", None, "y"]}))
>>> t.take("file", np.array([2, 0])), t.take("label", np.array([1]))
(['c', 'a'], [None])
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd

from clipindex.sources.remote import arrow_buffer

__all__ = ["FirstCaptions", "StoreTable"]


class StoreTable:
    """One table of a store (images or captions).

    Built from the parquet bytes of a store (:meth:`from_parquet`: nothing decoded yet) or
    from a DataFrame (:meth:`from_frame`). ``len(t)`` and ``t.columns`` come from the
    parquet footer; :meth:`take` returns plain Python values (None where missing);
    :meth:`ints` and :meth:`codes` are cached per column; :attr:`frame` is the
    DataFrame ``pd.read_parquet`` gives.
    """

    def __init__(self, *, data: bytes | None = None, frame: pd.DataFrame | None = None) -> None:
        # the parquet bytes in Arrow's memory (see the note at :meth:`_reader`)
        self._owned = None if data is None else arrow_buffer(data)
        self._frame = frame
        self._arrow: dict[str, Any] = {}
        self._ints: dict[str, np.ndarray] = {}
        self._codes: dict[str, tuple[np.ndarray, pd.Series]] = {}
        self._series: dict[str, pd.Series] = {}
        self._lock = threading.Lock()
        if frame is not None:
            self._n, self._columns = len(frame), [str(c) for c in frame.columns]
        else:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(self._reader()).metadata
            self._n = int(meta.num_rows)
            self._columns = [c for c in meta.schema.to_arrow_schema().names
                             if not c.startswith("__index_level_")]

    @classmethod
    def from_parquet(cls, data: bytes) -> StoreTable:
        """A table from a parquet file's bytes (its footer is read, no column decoded)."""
        return cls(data=data)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> StoreTable:
        return cls(frame=frame)

    def __len__(self) -> int:
        return self._n

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def __contains__(self, column: object) -> bool:
        return column in self._columns

    @property
    def frame(self) -> pd.DataFrame:
        """The whole table as a DataFrame (decoded on first use, then kept)."""
        if self._frame is None:
            with self._lock:
                if self._frame is None:
                    self._frame = pd.read_parquet(self._reader(), use_threads=False)
        return self._frame

    def series(self, column: str) -> pd.Series:
        """One column as the DataFrame holds it (decoded alone when the frame is not)."""
        if self._frame is not None:
            return self._frame[column]
        if column not in self._series:
            self._series[column] = pd.read_parquet(self._reader(), columns=[column],
                                                   use_threads=False)[column]
        return self._series[column]

    # Every read here is single-threaded (use_threads=False) and from Arrow's own memory
    # (:meth:`_reader`): a column is decoded during a query, after torch and OpenMP have
    # started their threads; Arrow's thread pool started that late, or its I/O threads
    # holding Python buffers, aborted the process at exit ("terminate called without an
    # active exception", rc -6; see ``clipindex.sources.remote.arrow_reader``).
    def _reader(self) -> Any:
        """The parquet bytes as an Arrow reader."""
        import pyarrow as pa

        return pa.BufferReader(self._owned)

    def _array(self, column: str) -> Any:
        """The column as one contiguous Arrow array (``take`` on a chunked array would
        concatenate its chunks on every call)."""
        found = self._arrow.get(column)
        if found is None:
            import pyarrow.parquet as pq

            table = pq.read_table(self._reader(), columns=[column], use_threads=False)
            found = self._arrow[column] = table.column(column).combine_chunks()
        return found

    def take(self, column: str, rows: np.ndarray) -> list[Any]:
        """The values of ``column`` at ``rows`` (positions = row ids), as Python values."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._owned is None:  # missing values as None, as Arrow's to_pylist gives them
            values = self.series(column).iloc[rows]
            return values.astype(object).where(values.notna(), None).tolist()
        return self._array(column).take(rows).to_pylist()

    def ints(self, column: str) -> np.ndarray:
        """An integer column as an int64 array (kept: an open pays for it once)."""
        found = self._ints.get(column)
        if found is None:
            found = self._ints[column] = np.asarray(self.series(column).to_numpy(),
                                                    dtype=np.int64)
        return found

    def codes(self, column: str) -> tuple[np.ndarray, pd.Series]:
        """``(codes, values)``: the column is ``values[codes]`` (``values`` keep the
        column's dtype, missing included), made once: a filter is evaluated on the few
        distinct values, then spread to the rows with one gather."""
        found = self._codes.get(column)
        if found is None:
            codes, values = pd.factorize(self.series(column), use_na_sentinel=False)
            found = self._codes[column] = (np.asarray(codes, dtype=np.intp), pd.Series(
                values, name=column, dtype=self.series(column).dtype))
        return found


class FirstCaptions:
    """The first caption (lowest caption row id) of an image, among the valid captions
    (a tombstoned caption is never one).

    ``owner[c]`` is the image row of caption ``c``. When ``owner`` is sorted (the way a
    build writes captions), the captions of the hits are found by binary search, nothing
    is precomputed; otherwise a map image -> first caption is made once (one pass).
    """

    def __init__(self, owner: np.ndarray, valid: np.ndarray, n_images: int) -> None:
        self._owner = np.asarray(owner, dtype=np.int64)
        self._valid = np.asarray(valid, dtype=bool)
        self._n_images = n_images
        self._sorted: bool | None = None
        self._map: np.ndarray | None = None

    def _is_sorted(self) -> bool:
        if self._sorted is None:
            o = self._owner
            self._sorted = bool(len(o) < 2 or (o[1:] >= o[:-1]).all())
        return self._sorted

    def _first_map(self) -> np.ndarray:
        if self._map is None:
            first = np.full(self._n_images, np.iinfo(np.int64).max, dtype=np.int64)
            rows = np.flatnonzero(self._valid)
            owner = self._owner[rows]
            inside = (owner >= 0) & (owner < self._n_images)
            np.minimum.at(first, owner[inside], rows[inside])
            first[first == np.iinfo(np.int64).max] = -1
            self._map = first
        return self._map

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Caption row of each of ``images`` (-1: it has no valid caption)."""
        images = np.asarray(images, dtype=np.int64)
        if not self._is_sorted():
            return self._first_map()[images]
        owner, valid = self._owner, self._valid
        out = np.searchsorted(owner, images, side="left")
        for i, (pos, image) in enumerate(zip(out.tolist(), images.tolist(), strict=True)):
            while pos < len(owner) and owner[pos] == image and not valid[pos]:
                pos += 1
            out[i] = pos if pos < len(owner) and owner[pos] == image else -1
        return out
