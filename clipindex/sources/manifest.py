"""The manifest source: a ``.csv``/``.parquet`` table with ``path``, ``label`` and
optionally ``split`` (``support``/``train`` or ``test``/``val``/``query``) and ``caption``
(one row per caption; a path may appear on several rows with the same label and split).

Row order: the order in which each path first appears in the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from clipindex.config import DatasetConfig
from clipindex.errors import DataError
from clipindex.sources.filters import sample_rows
from clipindex.sources.records import Built, header_size, require_file, under_root

__all__ = ["MANIFEST_READERS", "SPLIT_ALIASES", "load_manifest", "missing", "read_table"]

SPLIT_ALIASES = {
    "support": "support",
    "train": "support",
    "test": "test",
    "val": "test",
    "query": "test",
}


MANIFEST_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".csv": lambda path: pd.read_csv(path, dtype=str, keep_default_na=False),
    ".parquet": pd.read_parquet,
}


def read_table(path: Path) -> pd.DataFrame:
    """A .csv (all columns as text) or .parquet table; unreadable is a DataError."""
    reader = MANIFEST_READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: a manifest must be .csv or .parquet")
    try:
        return reader(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"Cannot read {path}: {str(exc).splitlines()[0]}") from None


def missing(value: Any) -> bool:
    """An empty cell: None, NaN or ''."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == ""


def _manifest_rows(
    path: Path, root: Path, allow_outside: bool = False
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Group manifest rows by path: {rel: {"label", "split"}}, {rel: [captions]}."""
    table = read_table(path)
    for col in ("path", "label"):
        if col not in table.columns:
            raise DataError(
                f"Manifest {path} has no '{col}' column (columns: "
                f"{', '.join(map(str, table.columns))}); it needs 'path' and 'label', "
                "optionally 'split' and 'caption'"
            )
    rows: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}

    def column(name: str) -> list[Any]:
        return table[name].tolist() if name in table.columns else [None] * len(table)

    split_col = column("split")
    for i, (p, label, split, cap) in enumerate(
        zip(column("path"), column("label"), split_col, column("caption"), strict=True)
    ):
        line = f"{path} row {i + 2}" if path.suffix.lower() == ".csv" else f"{path} row {i}"
        if missing(p) or missing(label):
            raise DataError(f"{line}: empty path or label")
        rel = under_root(root, Path(str(p)).expanduser(), line, allow=allow_outside)
        split = None if missing(split) else SPLIT_ALIASES.get(str(split).strip().lower())
        if split is None and "split" in table.columns and not missing(split_col[i]):
            raise DataError(f"{line}: unknown split {split_col[i]!r}; use support/train or test")
        entry = rows.setdefault(rel, {"label": str(label), "split": split})
        if entry["label"] != str(label) or entry["split"] != split:
            raise DataError(f"{line}: '{p}' appears again with another label or split")
        if not missing(cap):
            texts.setdefault(rel, []).append(str(cap).strip())
    return rows, texts


def load_manifest(cfg: DatasetConfig, root: Path, origin: str) -> Built:
    """The rows of a manifest, in the order each path first appears."""
    path = require_file(root, cfg, "manifest", origin)
    rows, texts = _manifest_rows(path, root, cfg.allow_outside_root)
    if not rows:
        raise DataError(f"Manifest {path} has no rows")
    splits = {e["split"] for e in rows.values()}
    if None in splits and len(splits) > 1:
        raise DataError(f"Manifest {path}: some rows have a split and others none; fill them all")
    given = None not in splits
    classes, support, chosen, funnel = sample_rows(rows, cfg, origin, f"Manifest {path}",
                                                   given_split=given)
    records: list[dict[str, Any]] = []
    captions: list[tuple[int, str]] = []
    for rel, entry in rows.items():  # manifest order
        if rel not in chosen:
            continue
        c, j = chosen[rel]
        split = entry["split"] if given else ("support" if j in support[c] else "test")
        width, height = header_size(root / rel)
        captions += [(len(records), t) for t in texts.get(rel, [])]
        records.append({"file": rel, "width": width, "height": height, "label": c, "split": split})
    split_from = "given" if given else ("drawn" if cfg.support_per_class is not None else "none")
    return Built(classes, records, captions, funnel, split_from)
