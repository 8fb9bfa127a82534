"""The audit's tables and files: ``label_issues.csv``, ``duplicates.csv``, ``outliers.csv``,
``audit.md`` and ``audit.json`` (what ``clipindex audit --json`` prints).

``label_issues.csv`` has one row per audited image, most suspect first (``score``
descending, then ``row_id``): ``rank, row_id, file, split, label, suggested, score,
issue`` (``suggested != label``), ``p_label`` (the combined probability of the given
label), ``votes_against`` / ``n_signals``, ``dup_group`` (its conflicting near-duplicate
group, 0 for none), ``outlier_z``, then ``p_label_<signal>`` per signal
(``image_<backbone>``, ``caption_<backbone>``) and the combined ``p_<class>`` per class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.files import atomic_write_bytes, write_json_atomic

__all__ = ["ISSUE_COLUMNS", "OUTLIER_COLUMNS", "FILES", "AuditResult", "finish", "issue_frame",
           "to_json"]

#: The leading columns of ``label_issues.csv`` (the ``p_label_<signal>`` columns follow).
ISSUE_COLUMNS: tuple[str, ...] = ("rank", "row_id", "file", "split", "label", "suggested",
                                  "score", "issue", "p_label", "votes_against", "n_signals",
                                  "dup_group", "outlier_z")
OUTLIER_COLUMNS: tuple[str, ...] = ("row_id", "file", "split", "label", "nearest",
                                    "prototype_cosine", "outlier_z")
FILES = ("label_issues.csv", "duplicates.csv", "outliers.csv", "audit.md", "audit.json")
_DIGITS = 6


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit_store` found: ``issues`` (``label_issues.csv``, every audited row,
    most suspect first), ``duplicates`` (near-duplicate groups with conflicting labels),
    ``outliers``, a JSON-ready ``summary`` and the written ``files``."""

    issues: pd.DataFrame
    duplicates: pd.DataFrame
    outliers: pd.DataFrame
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def issue_frame(images: pd.DataFrame, rows: np.ndarray, labels: np.ndarray,
                classes: np.ndarray, pooled: np.ndarray, per_signal: Mapping[str, np.ndarray],
                against: np.ndarray, n_signals: np.ndarray, dup_of: Mapping[int, int],
                z: np.ndarray) -> pd.DataFrame:
    """The ranked issue table (see the module docstring)."""
    by_id = images.set_index("row_id")
    li = np.array([list(classes).index(lab) for lab in labels])
    p_label = pooled[np.arange(len(rows)), li]
    suggested = classes[np.argmax(pooled, axis=1)]
    frame = pd.DataFrame({
        "row_id": rows.astype(int), "file": by_id.loc[rows, "file"].astype(str).to_numpy(),
        "split": by_id.loc[rows, "split"].astype(str).to_numpy(), "label": labels,
        "suggested": suggested, "score": np.round(1.0 - p_label, _DIGITS),
        "issue": suggested != labels, "p_label": np.round(p_label, _DIGITS),
        "votes_against": against, "n_signals": n_signals,
        "dup_group": [dup_of.get(int(r), 0) for r in rows],
        "outlier_z": np.round(z, 3),
        **{f"p_label_{k}": np.round(v, _DIGITS) for k, v in per_signal.items()},
        **{f"p_{c}": np.round(pooled[:, j], _DIGITS) for j, c in enumerate(classes)},
    })
    frame = frame.sort_values(["score", "row_id"], ascending=[False, True], kind="stable")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def _outliers(issues: pd.DataFrame, proto: np.ndarray, z: np.ndarray, limit: float
              ) -> pd.DataFrame:
    by_row = issues.set_index("row_id")
    order = issues.sort_values("row_id")["row_id"].to_numpy()
    frame = pd.DataFrame({"row_id": order, "prototype_cosine": np.round(proto, _DIGITS),
                          "outlier_z": np.round(z, 3)})
    frame = frame[frame["outlier_z"] > limit]
    for col in ("file", "split", "label"):
        frame[col] = by_row.loc[frame["row_id"], col].to_numpy()
    frame["nearest"] = by_row.loc[frame["row_id"], "suggested"].to_numpy()
    frame = frame.sort_values(["outlier_z", "row_id"], ascending=[False, True], kind="stable")
    return frame[list(OUTLIER_COLUMNS)].reset_index(drop=True)


def _markdown(issues: pd.DataFrame, dups: pd.DataFrame, outliers: pd.DataFrame,
              summary: Mapping[str, Any], top: int = 30) -> str:
    n_issue = int(issues["issue"].sum())
    lines = [f"# Label audit of {summary['dataset_dir']}", "",
             f"{len(issues)} labelled images audited with {', '.join(summary['backbones'])} "
             f"({len(summary['signals'])} out-of-fold signals: {', '.join(summary['signals'])}; "
             f"{summary['folds']} folds). {n_issue} image(s) have a suggested label other than "
             "their own; the table lists the most suspect first (score = 1 - combined "
             "probability of the given label).", ""]
    if summary.get("excluded_classes"):
        lines += [f"Not audited (fewer than two labelled images): "
                  f"{', '.join(summary['excluded_classes'])}.", ""]
    head = issues.head(top)
    lines += ["## Most likely mislabeled", "",
              "| rank | row_id | file | split | label | suggested | score | votes against |",
              "|---:|---:|---|---|---|---|---:|---:|"]
    lines += [f"| {r.rank} | {r.row_id} | {r.file} | {r.split} | {r.label} | {r.suggested} | "
              f"{r.score:.3f} | {r.votes_against}/{r.n_signals} |" for r in head.itertuples()]
    lines += ["", f"## Near-duplicates with conflicting labels ({dups['group'].nunique()} "
              "group(s))", ""]
    if len(dups):
        lines += ["| group | row_id | file | split | label | cross-split |",
                  "|---:|---:|---|---|---|---|"]
        lines += [f"| {r.group} | {r.row_id} | {r.file} | {r.split} | {r.label} | "
                  f"{'yes' if r.cross_split else ''} |" for r in dups.itertuples()]
    else:
        lines.append("None found.")
    lines += ["", f"## Outliers: far from every class ({len(outliers)}, robust z > "
              f"{summary['settings']['outlier_z']:g})", ""]
    if len(outliers):
        lines += ["| row_id | file | label | nearest | cosine | z |",
                  "|---:|---|---|---|---:|---:|"]
        lines += [f"| {r.row_id} | {r.file} | {r.label} | {r.nearest} | "
                  f"{r.prototype_cosine:.3f} | {r.outlier_z:.1f} |" for r in outliers.itertuples()]
    else:
        lines.append("None found.")
    return "\n".join(lines) + "\n"


def to_json(issues: pd.DataFrame, dups: pd.DataFrame, outliers: pd.DataFrame,
            summary: Mapping[str, Any], top: int = 50) -> dict[str, Any]:
    """``audit.json`` / ``clipindex audit --json``: the summary, the ``top`` issues, every
    conflicting duplicate and outlier."""
    def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
        return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in rec.items()}
                for rec in frame.to_dict(orient="records")]

    return {**summary, "n_audited": len(issues), "n_issues": int(issues["issue"].sum()),
            "top": records(issues.head(top)), "duplicates": records(dups),
            "outliers": records(outliers)}


def finish(issues: pd.DataFrame, dups: pd.DataFrame, proto: np.ndarray, z: np.ndarray,
           summary: dict[str, Any], out: Path | None, outlier_z: float) -> Any:
    """Fill the duplicates' suggestions and the outliers, write the files into ``out``."""
    suggested = dict(zip(issues["row_id"], issues["suggested"], strict=True))
    dups = dups.assign(suggested=[suggested[int(r)] for r in dups["row_id"]])
    outliers = _outliers(issues, proto, z, outlier_z)
    files: dict[str, Path] = {}
    if out is not None:
        def csv(frame: pd.DataFrame, name: str) -> None:
            text = frame.to_csv(index=False, lineterminator="\n")
            files[name] = atomic_write_bytes(out / name, text.encode("utf-8"))

        csv(issues, "label_issues.csv")
        csv(dups, "duplicates.csv")
        csv(outliers, "outliers.csv")
        files["audit.md"] = atomic_write_bytes(
            out / "audit.md", _markdown(issues, dups, outliers, summary).encode("utf-8"))
        files["audit.json"] = write_json_atomic(out / "audit.json",
                                                to_json(issues, dups, outliers, summary),
                                                sort_keys=False)
    return AuditResult(issues, dups, outliers, summary, files)
