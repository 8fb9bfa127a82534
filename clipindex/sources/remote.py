"""Manifests and class folders whose data root is a URL (``s3://bucket/data``, ...).

The same rules as :mod:`~clipindex.sources.manifest` and :mod:`~clipindex.sources.folder`
(row order, splits, captions, sampling), with the files listed through fsspec: one
listing per folder (a manifest's folders, or one recursive ``find`` of a class-folder
tree), never one request per image. Each row's ``file`` is relative to the root and its
``bytes``/``etag`` (size and ETag or mtime, from the listing) complete its identity.
Images are not opened while the dataset loads (``width``/``height`` are 0); the encoder
reads them in parallel batches (:class:`~clipindex.sources.storage.FileReader`).
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

import pandas as pd

from clipindex.config import DatasetConfig
from clipindex.errors import DataError
from clipindex.sources.filters import sample_rows
from clipindex.sources.manifest import SPLIT_ALIASES, missing
from clipindex.sources.records import Built
from clipindex.sources.storage import (
    FileReader,
    filesystem,
    is_url,
    join,
    object_identity,
    read_bytes,
)

__all__ = ["arrow_buffer", "arrow_reader", "load_remote_folder", "load_remote_manifest",
           "read_remote_table"]

_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def arrow_buffer(data: bytes) -> Any:
    """A copy of ``data`` in Arrow's own memory (a ``pyarrow.Buffer``), for reading
    parquet from bytes.

    Not ``io.BytesIO``: Arrow reads a Python file object through its I/O threads (the
    footer too, with ``use_threads=False`` and ``pre_buffer=False``), and the buffers
    those threads keep hold Python objects; one dropped by an I/O thread while the
    interpreter finalizes takes the GIL, is told to exit and unwinds through a noexcept
    destructor: ``terminate called without an active exception``, the process aborts
    after its work is done (1 CLI search in 5-18 here; gdb backtrace). Buffers in Arrow's
    memory need no GIL to free.

    Example
    -------
    >>> arrow_buffer(b"PAR1").to_pybytes()
    b'PAR1'
    """
    import numpy as np
    import pyarrow as pa

    owned = pa.allocate_buffer(len(data))
    np.frombuffer(owned, dtype=np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
    return owned


def arrow_reader(data: bytes) -> Any:
    """A ``pyarrow.BufferReader`` over :func:`arrow_buffer` of ``data``."""
    import pyarrow as pa

    return pa.BufferReader(arrow_buffer(data))


def read_remote_table(location: str, options: dict[str, Any]) -> pd.DataFrame:
    """A .csv (all text) or .parquet table from a URL."""
    raw = read_bytes(location, options)
    try:
        if location.lower().endswith(".csv"):
            return pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)
        return pd.read_parquet(arrow_reader(raw))
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read {location}: {str(exc).splitlines()[0]}") from None


def _relative(root: str, path: str, where: str, allow: bool) -> str:
    if is_url(path):
        if path.startswith(root.rstrip("/") + "/"):
            return path[len(root.rstrip("/")) + 1:]
        if allow:
            return path
        raise DataError(f"{where}: {path!r} is outside the data root {root}; pass "
                        "--allow-outside-root to accept it")
    norm = posixpath.normpath(path)
    if norm.startswith("../") or norm == ".." or posixpath.isabs(norm):
        raise DataError(f"{where}: {path!r} leads outside the data root {root}")
    return norm


def _assemble(cfg: DatasetConfig, root: str, origin: str, rows: dict[str, dict[str, Any]],
              texts: dict[str, list[str]], given: bool) -> Built:
    classes, support, chosen, funnel = sample_rows(rows, cfg, origin, origin,
                                                   given_split=given)
    tags = object_identity([join(root, rel) for rel in chosen], cfg.storage_options)
    records: list[dict[str, Any]] = []
    captions: list[tuple[int, str]] = []
    for rel, entry in rows.items():
        if rel not in chosen:
            continue
        c, j = chosen[rel]
        split = entry["split"] if given else ("support" if j in support[c] else "test")
        size, tag = tags.get(join(root, rel), (0, ""))
        captions += [(len(records), t) for t in texts.get(rel, [])]
        records.append({"file": rel, "width": 0, "height": 0, "label": c, "split": split,
                        "bytes": size, "etag": tag})
    split_from = "given" if given else ("drawn" if cfg.support_per_class is not None else "none")
    return Built(classes, records, captions, funnel, split_from, columns=["bytes", "etag"],
                 reader=FileReader(root, cfg.storage_options))


def load_remote_manifest(cfg: DatasetConfig, root: str, origin: str) -> Built:
    """A manifest (``path``, ``label``, optional ``split``, ``caption``) under a URL root."""
    location = join(root, str(cfg.path("manifest")))
    table = read_remote_table(location, cfg.storage_options)
    for col in ("path", "label"):
        if col not in table.columns:
            raise DataError(f"Manifest {location} has no '{col}' column (columns: "
                            f"{', '.join(map(str, table.columns))})")
    rows: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    has_split = "split" in table.columns
    for i, rec in enumerate(table.to_dict("records")):
        where = f"{location} row {i + 2}"
        if missing(rec["path"]) or missing(rec["label"]):
            raise DataError(f"{where}: empty path or label")
        rel = _relative(root, str(rec["path"]), where, cfg.allow_outside_root)
        raw = rec.get("split")
        split = None if missing(raw) else SPLIT_ALIASES.get(str(raw).strip().lower())
        if split is None and has_split and not missing(raw):
            raise DataError(f"{where}: unknown split {raw!r}; use support/train or test")
        entry = rows.setdefault(rel, {"label": str(rec["label"]), "split": split})
        if entry["label"] != str(rec["label"]) or entry["split"] != split:
            raise DataError(f"{where}: '{rec['path']}' appears again with another label or "
                            "split")
        if not missing(rec.get("caption")):
            texts.setdefault(rel, []).append(str(rec["caption"]).strip())
    if not rows:
        raise DataError(f"Manifest {location} has no rows")
    splits = {e["split"] for e in rows.values()}
    if None in splits and len(splits) > 1:
        raise DataError(f"Manifest {location}: some rows have a split and others none")
    return _assemble(cfg, root, origin, rows, texts, None not in splits)


def load_remote_folder(cfg: DatasetConfig, root: str, origin: str) -> Built:
    """``ROOT/<class>/...`` (or ``ROOT/{train,test}/<class>/...``) listed with one
    recursive ``find``; order: class, support before test, path."""
    base = join(root, cfg.path("images") or "").rstrip("/")
    fs, path = filesystem(base, cfg.storage_options)
    found = sorted(p[len(path.rstrip("/")) + 1:] for p in fs.find(path)
                   if p.lower().endswith(_EXTENSIONS))
    parts = [p.split("/") for p in found if not any(s.startswith(".") for s in p.split("/"))]
    given = any(p[0] == "train" for p in parts) and any(p[0] == "test" for p in parts)
    rows: dict[str, dict[str, Any]] = {}
    keyed = []
    for p in parts:
        if given and p[0] in ("train", "test") and len(p) > 2:
            split, label = ("support" if p[0] == "train" else "test"), p[1]
        elif not given and len(p) > 1:
            split, label = None, p[0]
        else:
            continue
        keyed.append((label, split != "support", "/".join(p), split))
    prefix = posixpath.relpath(base, root.rstrip("/")) if base != root.rstrip("/") else ""
    for label, _, rel, split in sorted(keyed):
        rows[posixpath.join(prefix, rel) if prefix else rel] = {"label": label, "split": split}
    if not rows:
        raise DataError(f"{base} holds no class sub-folders of images ({origin})")
    return _assemble(cfg, root, origin, rows, {}, given)
