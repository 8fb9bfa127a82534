"""The bench's breakdowns of its predictions: abstention coverage and per-group accuracy.

Both are recomputed from the ``predictions/`` tables alone (anyone can redo them):

- ``coverage.csv`` (always): for every (backbone, method) incl. ensemble rows, the
  risk-coverage curve of :func:`clipindex.classifiers.abstain.risk_coverage` over the
  thresholds 0, 0.01, ..., 1 on the row's confidence (top probability; a majority
  vote's is its vote share). Columns ``backbone, method,`` + ``CURVE_COLUMNS``.
  ``tables.md`` lists, per (backbone, method), the smallest threshold whose kept rows
  reach the target accuracy (``--target-accuracy``, default 0.99) and the coverage left.
- ``groups.csv`` (``--group-by COLUMN``): accuracy and n per value of an
  ``images.parquet`` column per (backbone, method), the largest gap between groups and
  the bias (:func:`clipindex.classifiers.groups.group_table`).

Example
-------
>>> coverage_frame({}, {}).columns.tolist()[:3]
['backbone', 'method', 'threshold']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.bench.outputs import METRIC_DIGITS, write_csv
from clipindex.classifiers.abstain import (
    CURVE_COLUMNS,
    confidence_of,
    risk_coverage,
    threshold_for_accuracy,
)
from clipindex.classifiers.groups import GROUP_COLUMNS, check_group_column, group_table

__all__ = ["DEFAULT_TARGET", "coverage_frame", "coverage_targets", "groups_frame",
           "breakdowns_markdown", "write_breakdowns"]

log = logging.getLogger(__name__)

DEFAULT_TARGET = 0.99


def _keys(records: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    return [(k, str(r["backbone"]), str(r["method"])) for k, r in records.items()]


def coverage_frame(records: Mapping[str, Mapping[str, Any]],
                   tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """``coverage.csv``: one risk-coverage curve per (backbone, method)."""
    parts = []
    for key, backbone, method in _keys(records):
        t = tables[key]
        curve = risk_coverage(t["true"].to_numpy(), t["predicted"].to_numpy(),
                              confidence_of(t))
        parts.append(curve.assign(backbone=backbone, method=method))
    cols = ["backbone", "method", *CURVE_COLUMNS]
    if not parts:
        return pd.DataFrame(columns=cols)
    frame = pd.concat(parts, ignore_index=True)[cols]
    return frame.round({"coverage": METRIC_DIGITS, "accuracy": METRIC_DIGITS})


def coverage_targets(coverage: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per (backbone, method): the smallest threshold reaching ``target`` accuracy."""
    rows = []
    for (backbone, method), curve in coverage.groupby(["backbone", "method"], sort=False):
        plain = curve.sort_values("threshold").iloc[0]
        hit = threshold_for_accuracy(curve, target) or {}
        rows.append({"backbone": backbone, "method": method, "target": target,
                     "accuracy_all": plain["accuracy"], "threshold": hit.get("threshold"),
                     "coverage": hit.get("coverage"), "accuracy": hit.get("accuracy")})
    return pd.DataFrame(rows, columns=["backbone", "method", "target", "accuracy_all",
                                       "threshold", "coverage", "accuracy"])


def groups_frame(records: Mapping[str, Mapping[str, Any]], tables: Mapping[str, pd.DataFrame],
                 images: pd.DataFrame, column: str) -> pd.DataFrame:
    """``groups.csv``: per (backbone, method), accuracy and n per group of ``column``."""
    check_group_column(images, column)
    parts = [group_table(tables[key], images, column).assign(backbone=backbone, method=method)
             for key, backbone, method in _keys(records)]
    cols = ["backbone", "method", *GROUP_COLUMNS]
    if not parts:
        return pd.DataFrame(columns=cols)
    frame = pd.concat(parts, ignore_index=True)[cols]
    return frame.round({c: METRIC_DIGITS for c in ("accuracy", "overall_accuracy", "gap",
                                                   "bias")})


def _num(v: Any) -> str:
    return "n/a" if v is None or not np.isfinite(float(v)) else f"{float(v):.3f}"


def breakdowns_markdown(targets: pd.DataFrame, groups: pd.DataFrame | None) -> str:
    """The ``tables.md`` sections: abstention thresholds, and accuracy per group."""
    lines = []
    if len(targets):
        target = float(targets["target"].iloc[0])
        lines += [f"## Abstention: the threshold that reaches accuracy {target:g}", "",
                  "Rows whose confidence (top probability; a majority vote's vote share) is "
                  "below the threshold are left to a person; `coverage` is the share kept "
                  "(`coverage.csv` has the whole risk-coverage curve).", "",
                  "| Backbone | Method | Accuracy (all rows) | Threshold | Coverage | "
                  "Accuracy (kept) |", "|---|---|---|---|---|---|"]
        for r in targets.itertuples():
            th = "not reached" if r.threshold is None or pd.isna(r.threshold) \
                else f"{r.threshold:.2f}"
            lines.append(f"| {r.backbone} | {r.method} | {_num(r.accuracy_all)} | {th} | "
                         f"{_num(r.coverage)} | {_num(r.accuracy)} |")
        lines.append("")
    if groups is not None and len(groups):
        column = str(groups["column"].iloc[0])
        names = sorted(groups["group"].unique())
        n_of = groups.groupby("group")["n"].first()
        lines += [f"## Accuracy per `{column}` (n per group: "
                  + ", ".join(f"{g} {int(n_of[g])}" for g in names) + ")", "",
                  "| Backbone | Method | " + " | ".join(names) + " | Gap | Bias |",
                  "|---|---|" + "---|" * (len(names) + 2)]
        for (backbone, method), g in groups.groupby(["backbone", "method"], sort=False):
            acc = dict(zip(g["group"], g["accuracy"], strict=True))
            cells = [_num(acc.get(n)) for n in names]
            lines.append(f"| {backbone} | {method} | " + " | ".join(cells)
                         + f" | {_num(g['gap'].iloc[0])} | {_num(g['bias'].iloc[0])} |")
        lines += ["", "Gap: the best group's accuracy minus the worst's. Bias: the mean "
                  "absolute difference between a group's accuracy and the overall accuracy.",
                  ""]
    return "\n".join(lines) + ("\n" if lines else "")


def write_breakdowns(records: Mapping[str, Mapping[str, Any]],
                     tables: Mapping[str, pd.DataFrame], images: pd.DataFrame, out: Path, *,
                     target: float = DEFAULT_TARGET, group_by: str | None = None
                     ) -> tuple[dict[str, Path], str]:
    """Write ``coverage.csv`` (and ``groups.csv``); return the files and the markdown."""
    files: dict[str, Path] = {}
    coverage = coverage_frame(records, tables)
    files["coverage.csv"] = write_csv(coverage, out / "coverage.csv")
    groups = None
    if group_by is not None:
        groups = groups_frame(records, tables, images, group_by)
        files["groups.csv"] = write_csv(groups, out / "groups.csv")
    return files, breakdowns_markdown(coverage_targets(coverage, target), groups)


def check_breakdowns(images_columns: Sequence[str], group_by: str | None,
                     target: float) -> None:
    """Checked before any work: the target accuracy and the group column."""
    from clipindex.errors import UserInputError

    if isinstance(target, bool) or not isinstance(target, (int, float)) \
            or not 0.0 < float(target) <= 1.0:
        raise UserInputError(f"the target accuracy must be in (0, 1], got {target!r}")
    if group_by is not None:
        check_group_column(pd.DataFrame(columns=list(images_columns)), group_by)


def write_leakage(ddir: Path, backbones: Sequence[str] | str, root: Path | str, out: Path
                  ) -> tuple[dict[str, Path], int]:
    """``leakage.csv``: duplicate pairs (:func:`clipindex.search.dedup.find_duplicates`,
    default threshold) with one row in support and one in test, agreed on by the
    backbones: an exact pair (same file bytes) always; a near pair only when it is a
    near duplicate in a majority of ``backbones`` (one weak backbone, e.g. tiny-rn,
    packing distinct images closer than the threshold, does not flag them alone).
    ``backbones`` (column) says how many backbones found the pair; ``cosine`` is the
    median of their cosines.

    Returns the file and the number of pairs; the bench warns on stderr when there are any.
    """
    names = [backbones] if isinstance(backbones, str) else list(backbones)
    found = {name: _leaks(ddir, name, root) for name in names}
    unreadable = max(int(f.attrs.get("unreadable_files", 0)) for f in found.values())
    if unreadable:  # once, not once per backbone: every backbone hashes the same files
        log.warning("%d image file(s) could not be read under %s: leakage.csv has no exact "
                    "duplicates of them (near duplicates are there)", unreadable, root)
    leaks = agreed_pairs(found)
    return {"leakage.csv": write_csv(leaks, out / "leakage.csv")}, int(len(leaks))


def _leaks(ddir: Path, backbone: str, root: Path | str) -> pd.DataFrame:
    from clipindex.search.dedup import find_duplicates
    from clipindex.store import open_index

    # a bench whose image files are gone still finishes: write_leakage warns once
    pairs = find_duplicates(open_index(ddir, backbone), root=root, require_files=False)
    leaks = pairs[pairs["leakage"].astype(bool)] if len(pairs) else pairs
    leaks.attrs["unreadable_files"] = pairs.attrs["unreadable_files"]
    return leaks


def agreed_pairs(per_backbone: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The pairs of :func:`write_leakage`: exact ones, and near ones found by more than
    half of the backbones (``backbones``: how many found it; ``cosine``: their median)."""
    frames = [f for f in per_backbone.values() if len(f)]
    if not frames:
        first = next(iter(per_backbone.values()))
        return first.assign(backbones=pd.Series(dtype=int))
    both = pd.concat(frames, ignore_index=True)
    key = ["row_id_a", "row_id_b"]
    counts = both.groupby(key)["kind"].transform("size")
    cosine = both.groupby(key)["cosine"].transform("median")
    both = both.assign(backbones=counts, cosine=cosine).drop_duplicates(key)
    keep = (both["kind"] == "exact") | (both["backbones"] * 2 > len(per_backbone))
    return both[keep].sort_values(["kind", "cosine", "row_id_a", "row_id_b"],
                                  ascending=[True, False, True, True],
                                  kind="stable").reset_index(drop=True)
