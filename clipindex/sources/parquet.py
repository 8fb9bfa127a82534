"""The parquet source: image bytes in a parquet file (local or a URL).

The Hugging Face ``datasets`` layout (``Dataset.to_parquet``, the Hub's parquet files):
``image_column`` (default ``image``) is a struct of ``bytes`` and ``path`` or a plain
binary column; ``label_column`` (default ``label``) holds names, or ``ClassLabel``
integers whose names the file's ``huggingface`` schema metadata records;
``caption_column`` (optional) holds one caption (or a list of captions) per image.

Row order: the file's. A row's ``file`` is ``<file name>#<row number>``; with ``etag``
(the file's ETag or mtime) it is the row's identity. Images are not read while the
dataset loads (``width``/``height`` are 0); the encoder reads them a row group at a
time (:class:`ParquetReader`, the last row groups cached).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.config import DatasetConfig
from clipindex.errors import DataError
from clipindex.sources.filters import select
from clipindex.sources.records import Built, unknown_class
from clipindex.sources.storage import filesystem, is_url, join, object_identity

__all__ = ["ParquetReader", "load_parquet_images", "parquet_reader"]


def _open(location: str, options: Mapping[str, Any]) -> Any:
    import pyarrow.parquet as pq

    try:
        if not is_url(location):
            return pq.ParquetFile(location)
        fs, path = filesystem(location, options)
        return pq.ParquetFile(fs.open(path, "rb"))
    except FileNotFoundError:
        raise DataError(f"parquet file {location} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {location}: {str(exc).splitlines()[0]}") from None


class ParquetReader:
    """``read_many(["name#row", ...])``: the image bytes of those rows, read a row group
    at a time (the two last row groups are kept, so consecutive batches read each once)."""

    def __init__(self, location: str, column: str, options: Mapping[str, Any] | None,
                 group_starts: Sequence[int]) -> None:
        self.location, self.column = location, column
        self.options = dict(options or {})
        self.group_starts = np.asarray(group_starts, dtype=np.int64)
        self._file: Any = None
        self._cache: dict[int, list[Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_cache": {}}

    def _group(self, g: int) -> list[Any]:
        if g not in self._cache:
            if self._file is None:
                self._file = _open(self.location, self.options)
            values = self._file.read_row_group(g, columns=[self.column]).column(0).to_pylist()
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[g] = values
        return self._cache[g]

    def read_many(self, locators: Sequence[str]) -> list[bytes | BaseException]:
        out: list[bytes | BaseException] = []
        for loc in locators:
            try:
                row = int(loc.rsplit("#", 1)[1])
                g = int(np.searchsorted(self.group_starts, row, side="right") - 1)
                out.append(_image_bytes(self._group(g)[row - int(self.group_starts[g])]))
            except Exception as exc:  # noqa: BLE001 - the row's skip reason
                out.append(exc)
        return out


def parquet_reader(location: str, column: str, options: Mapping[str, Any] | None
                   ) -> ParquetReader:
    """A :class:`ParquetReader` of ``column`` of the parquet file at ``location``."""
    meta = _open(location, dict(options or {})).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    starts = [0, *np.cumsum(sizes)[:-1].tolist()] if sizes else []
    return ParquetReader(location, column, options, starts)


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, dict):
        value = value.get("bytes")
    if not value:
        raise ValueError("empty file")
    return bytes(value)


def _label_names(pf: Any, column: str) -> list[str] | None:
    """ClassLabel names of ``column`` from the ``datasets`` schema metadata, if any."""
    meta = (pf.schema_arrow.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feature = json.loads(meta)["info"]["features"][column]
    except (KeyError, TypeError, ValueError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if names else None


def _read_columns(pf: Any, cfg: DatasetConfig, location: str
                  ) -> tuple[list[str | None], list[Any]]:
    names = pf.schema_arrow.names
    wanted = [c for c in (cfg.image_column, cfg.label_column, cfg.caption_column) if c]
    for col in wanted:
        if col not in names:
            raise DataError(f"{location} has no column {col!r} (columns: {', '.join(names)}); "
                            "name them with image_column / label_column / caption_column")
    table = pf.read(columns=[c for c in wanted if c != cfg.image_column])
    labels = table.column(cfg.label_column).to_pylist()
    named = _label_names(pf, cfg.label_column)
    if named is not None:
        labels = [None if v is None or v < 0 else named[int(v)] for v in labels]
    captions = (table.column(cfg.caption_column).to_pylist() if cfg.caption_column
                else [None] * len(labels))
    return [None if v is None else str(v) for v in labels], captions


def load_parquet_images(cfg: DatasetConfig, root: Path | str, origin: str) -> Built:
    """One row per parquet row with a label, in the file's order."""
    location = join(str(root), str(cfg.parquet))
    pf = _open(location, cfg.storage_options)
    labels, texts = _read_columns(pf, cfg, location)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    starts = [0, *np.cumsum(sizes)[:-1].tolist()] if sizes else []
    tag = object_identity([location], cfg.storage_options).get(location, (0, ""))[1]
    name = location.rstrip("/").rsplit("/", 1)[-1]
    present = list(dict.fromkeys(v for v in labels if v))
    classes = list(cfg.classes) or sorted(present)
    for c in classes:
        if c not in present:
            raise unknown_class(c, "classes", origin, sorted(present))
    if len(classes) < 2:
        raise DataError(f"{location} has {len(classes)} class(es) in {cfg.label_column!r}: a "
                        "classifier needs two")
    pools = {c: [i for i, v in enumerate(labels) if v == c] for c in classes}
    sampled, support = select(pools, cfg, origin, given_split=False)
    chosen = {i: (c, j) for c, items in sampled.items() for j, i in enumerate(items)}
    records: list[dict[str, Any]] = []
    captions: list[tuple[int, str]] = []
    for i in range(len(labels)):
        if i not in chosen:
            continue
        c, j = chosen[i]
        text = texts[i]
        for t in (text if isinstance(text, list) else [text]):
            if t is not None and str(t).strip():
                captions.append((len(records), str(t).strip()))
        records.append({"file": f"{name}#{i}", "width": 0, "height": 0, "label": c,
                        "split": "support" if j in support[c] else "test", "etag": tag})
    funnel = {"all_images": len(labels), "with_class": {c: len(v) for c, v in pools.items()},
              "sampled": {c: len(v) for c, v in sampled.items()}}
    split_from = "drawn" if cfg.support_per_class is not None else "none"
    reader = ParquetReader(location, cfg.image_column, cfg.storage_options, starts)
    return Built(classes, records, captions, funnel, split_from, columns=["etag"],
                 reader=reader)
