"""``bench --drop-suspects N``: every record's accuracy with and without an audit's top
N suspects (the images most likely mislabeled, :mod:`clipindex.audit`).

The suspects come from an existing audit (``--audit DIR`` or its ``label_issues.csv``,
checked against the store: same row ids, same files) or from a fresh
:func:`clipindex.audit.audit_store` over the bench's own backbones, written to
``RESULTS/audit/`` (where ``clipindex report`` finds it). The classifiers are fitted as
always; only the evaluated rows change: ``suspects.csv`` has, per backbone and method,
``n``/``accuracy`` on all evaluated rows and ``n_kept``/``accuracy_kept`` without the
suspects among them (``n_dropped``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from clipindex.checks import positive_int
from clipindex.errors import DataError, UserInputError

__all__ = ["SUSPECT_COLUMNS", "check_drop", "suspect_rows", "without_suspects",
           "write_without_suspects"]

SUSPECT_COLUMNS: tuple[str, ...] = ("backbone", "method", "n", "accuracy", "n_dropped",
                                    "n_kept", "accuracy_kept")


def check_drop(n: int | None, audit: str | os.PathLike[str] | None) -> None:
    """Refuse a bad ``--drop-suspects`` before any work."""
    if n is None:
        if audit is not None:
            raise UserInputError("--audit is read only with --drop-suspects N")
        return
    positive_int("--drop-suspects", n)
    if audit is not None and not _issues_file(Path(audit)).is_file():
        raise UserInputError(f"--audit {audit}: no label_issues.csv there; give the folder "
                             "`clipindex audit --out` wrote, or its label_issues.csv")


def _issues_file(path: Path) -> Path:
    return path / "label_issues.csv" if path.is_dir() or path.suffix != ".csv" else path


def suspect_rows(ddir: Path, backbones: Sequence[str], n: int, out: Path, *,
                 audit: str | os.PathLike[str] | None = None) -> tuple[list[int], Path]:
    """The top ``n`` suspects' row ids, and the ``label_issues.csv`` they come from."""
    images = pd.read_parquet(ddir / "images.parquet")
    if audit is None:
        from clipindex.audit import audit_store

        res = audit_store(ddir, list(backbones), out / "audit")
        issues, path = res.issues, res.files["label_issues.csv"]
    else:
        path = _issues_file(Path(audit))
        issues = pd.read_csv(path)
        missing = {"row_id", "file", "score"} - set(issues.columns)
        if missing:
            raise DataError(f"{path} is not an audit's label_issues.csv (no "
                            f"{', '.join(sorted(missing))} column)")
        files = dict(zip(images["row_id"].astype(int), images["file"].astype(str), strict=True))
        if any(files.get(int(r)) != str(f) for r, f in zip(issues["row_id"], issues["file"],
                                                           strict=True)):
            raise DataError(f"{path} audits another store than {ddir} (its row ids name "
                            "other files): rerun `clipindex audit` on this store")
    top = issues.sort_values(["score", "row_id"], ascending=[False, True], kind="stable")
    return [int(r) for r in top["row_id"].head(n)], path


def write_without_suspects(records: Mapping[str, Mapping[str, Any]],
                           tables: Mapping[str, pd.DataFrame], rows: Sequence[int],
                           source: Path, out: Path) -> tuple[dict[str, Path], str]:
    """``suspects.csv`` and its markdown section (appended to ``tables.md``)."""
    from clipindex.bench.outputs import write_csv

    drop = set(rows)
    lines = []
    for key, rec in records.items():
        t = tables[key]
        keep = ~t["row_id"].astype(int).isin(drop)
        right = (t["true"].astype(str) == t["predicted"].astype(str))
        lines.append({"backbone": rec["backbone"], "method": rec["method"], "n": len(t),
                      "accuracy": round(float(right.mean()), 4) if len(t) else None,
                      "n_dropped": int((~keep).sum()), "n_kept": int(keep.sum()),
                      "accuracy_kept": round(float(right[keep].mean()), 4) if keep.any()
                      else None})
    frame = pd.DataFrame(lines, columns=list(SUSPECT_COLUMNS))
    md = [f"\n## Without the audit's top {len(rows)} suspects\n",
          f"Suspects from {source}; classifiers fitted as above, only the evaluated rows "
          "change.\n", "| backbone | method | accuracy (n) | without suspects (n) |",
          "|---|---|---:|---:|"]
    md += [f"| {r.backbone} | {r.method} | {r.accuracy} ({r.n}) | {r.accuracy_kept} "
           f"({r.n_kept}) |" for r in frame.itertuples()]
    return {"suspects.csv": write_csv(frame, out / "suspects.csv")}, "\n".join(md) + "\n"


def without_suspects(n: int | None, audit: str | os.PathLike[str] | None, outcome: Any,
                     ddir: Path, backbones: Sequence[str], out: Path
                     ) -> tuple[dict[str, Path], str]:
    """What ``run_bench`` adds for ``drop_suspects=n`` (nothing when ``n`` is None):
    ``outcome`` holds the run's ``records`` and prediction ``tables``."""
    if not n:
        return {}, ""
    rows, source = suspect_rows(ddir, backbones, n, out, audit=audit)
    return write_without_suspects(outcome.records, outcome.tables, rows, source, out)
