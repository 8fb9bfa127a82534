"""``audit_store``: rank a store's labelled images by how likely their label is wrong.

For each audited backbone two out-of-fold signals (:mod:`clipindex.audit.signals`): a
linear probe over the image vectors and one over the image's mean caption vector, both
cross-validated (``folds``, stratified, ``seed``), so no image is scored by a model that
saw its label. The class probabilities of all signals are averaged; near-duplicates
whose labels conflict pool that average over their group (the same picture is one
class); ``score = 1 - p(given label)`` and ``suggested`` is the most probable class.
Outliers are images whose best cosine to an out-of-fold class prototype is far below the
others' (robust z-score).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.audit import signals
from clipindex.audit.duplicates import duplicate_groups
from clipindex.audit.outputs import AuditResult, finish, issue_frame
from clipindex.errors import DataError, UserInputError
from clipindex.search.dedup import DEFAULT_THRESHOLD

__all__ = ["AuditResult", "AuditSettings", "audit_store"]


@dataclass(frozen=True)
class AuditSettings:
    """The audit's knobs: folds and seed of the cross-validation, the probes' ``C``,
    whether captions vote, the near-duplicate cosine and the outlier z-score."""

    folds: int = 5
    seed: int = 0
    C: float = 1.0  # noqa: N815 - scikit-learn's name
    captions: bool = True
    dup_threshold: float = DEFAULT_THRESHOLD
    outlier_z: float = 3.5

    def check(self) -> None:
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise UserInputError(f"folds must be an integer >= 2, got {self.folds!r}")
        if not float(self.C) > 0:
            raise UserInputError(f"C must be > 0, got {self.C!r}")
        if not float(self.outlier_z) > 0:
            raise UserInputError(f"the outlier z-score must be > 0, got {self.outlier_z!r}")


@dataclass
class _Rows:
    rows: np.ndarray  # audited row ids
    labels: np.ndarray  # their given labels (str)
    classes: list[str]
    dropped_classes: list[str]


def _audited_rows(indexes: Sequence[Any], folds: int) -> _Rows:
    """Labelled rows valid in every backbone, of classes with at least two such rows."""
    from clipindex.classifiers.rows import store_classes

    images = indexes[0].images
    label = images["label"]
    ok = label.notna().to_numpy() & (label.astype(str).str.strip() != "").to_numpy()
    for index in indexes:
        ok &= np.asarray(index.image_valid, bool)
    labels = label.astype(str).to_numpy()
    counts = pd.Series(labels[ok]).value_counts()
    if len(counts) < 2:
        raise DataError(f"the store {indexes[0].path.parent} has labels of "
                        f"{len(counts)} class(es) on its usable images: an audit compares "
                        "given labels across at least two classes (build it from labelled data)")
    small = sorted(str(c) for c, n in counts.items() if n < 2)
    ok &= ~np.isin(labels, small)
    keep = [c for c in store_classes(indexes[0]) if c in set(labels[ok])]
    if len(keep) < 2:
        raise DataError("fewer than two classes have two or more labelled images: "
                        "nothing to cross-validate")
    return _Rows(np.flatnonzero(ok), labels[ok], keep, small)


def _signals(indexes: Sequence[Any], r: _Rows, fold: np.ndarray, s: AuditSettings
             ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every signal's probabilities (NaN rows where it has no evidence) and the mean
    best cosine to an out-of-fold image prototype."""
    out: dict[str, np.ndarray] = {}
    proto = np.zeros(len(r.rows))
    for index in indexes:
        x = np.asarray(index.image_vectors, np.float32)[r.rows]
        out[f"image_{index.name}"] = signals.out_of_fold_probe(x, r.labels, r.classes, fold,
                                                               C=s.C)
        proto += signals.prototype_distance(x, r.labels, r.classes, fold) / len(indexes)
        if s.captions and len(index.captions):
            means, has = signals.caption_means(index.captions, index.caption_vectors,
                                               index.caption_valid, r.rows)
            if has.sum() >= 2 and len(np.unique(r.labels[has])) >= 2:
                p = np.full((len(r.rows), len(r.classes)), np.nan)
                p[has] = signals.out_of_fold_probe(means[has], r.labels[has], r.classes,
                                                   fold[has], C=s.C)
                out[f"caption_{index.name}"] = p
    return out, proto


def _robust_z(values: np.ndarray) -> np.ndarray:
    """How many robust standard deviations (1.4826 x MAD) each value lies BELOW the median."""
    med = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - med)))
    return (med - values) / mad if mad > 0 else np.zeros_like(values)


def _pool_groups(p: np.ndarray, pos: dict[int, int], dups: pd.DataFrame) -> np.ndarray:
    """The members of a conflicting duplicate group share their mean probabilities."""
    pooled = p.copy()
    for _, g in dups.groupby("group"):
        at = [pos[int(r)] for r in g["row_id"]]
        pooled[at] = p[at].mean(axis=0)
    return pooled


def _issue_table(indexes: Sequence[Any], r: _Rows, sig: dict[str, np.ndarray],
                 dups: pd.DataFrame, z: np.ndarray) -> pd.DataFrame:
    """``label_issues.csv``: every audited row, the combined score and each signal."""

    stacked = np.stack(list(sig.values()))
    mean = np.nanmean(stacked, axis=0)
    pos = {int(row): i for i, row in enumerate(r.rows)}
    pooled = _pool_groups(mean, pos, dups)
    li = np.array([r.classes.index(lab) for lab in r.labels])
    at = np.arange(len(li))
    per_signal = {name: p[at, li] for name, p in sig.items()}
    with np.errstate(invalid="ignore"):
        against = np.nansum(np.where(np.isnan(stacked[:, :, 0]), np.nan,
                                     np.argmax(np.nan_to_num(stacked), axis=2) != li), axis=0)
    dup_of = {int(row): int(g) for row, g in zip(dups["row_id"], dups["group"], strict=True)}
    return issue_frame(indexes[0].images, r.rows, r.labels, np.array(r.classes),
                       pooled, per_signal, against.astype(int),
                       np.sum(~np.isnan(stacked[:, :, 0]), axis=0), dup_of, z)


def audit_store(dataset_dir: str | os.PathLike[str], backbones: Sequence[str],
                out: str | os.PathLike[str] | None = None, *,
                settings: AuditSettings | None = None,
                root: str | os.PathLike[str] | None = None) -> AuditResult:
    """Audit a store's labels with one or more backbones' stored vectors.

    Parameters
    ----------
    dataset_dir : path
        The store's dataset folder (``OUT/<dataset>``).
    backbones : list of str
        Backbones built in the store (``tiny-vit``, ...); more backbones, more votes.
    out : path, optional
        Folder for ``label_issues.csv``, ``duplicates.csv``, ``outliers.csv``,
        ``audit.md`` and ``audit.json`` (never inside a store). None: write nothing.
    settings : AuditSettings, optional
        Folds, seed, probe ``C``, captions on/off, duplicate threshold, outlier z.
    root : path, optional
        Data root of the image files, for exact-copy hashing (default: the store's).

    Example
    -------
    >>> res = audit_store("indexes/demo", ["tiny-vit", "tiny-rn"], "audit")  # doctest: +SKIP
    >>> res.issues[["row_id", "label", "suggested", "score"]].head(3)  # doctest: +SKIP
    """
    from clipindex.store import open_index
    from clipindex.store.owned import refuse_store_path

    s = settings or AuditSettings()
    s.check()
    names = [str(b) for b in backbones]
    if not names:
        raise UserInputError("give at least one --backbone to audit with")
    if len(set(names)) != len(names):
        raise UserInputError(f"a backbone is listed twice: {names}")
    out_dir = refuse_store_path(out) if out is not None else None
    indexes = [open_index(dataset_dir, b) for b in names]
    r = _audited_rows(indexes, s.folds)
    folds = int(min(s.folds, pd.Series(r.labels).value_counts().min()))
    fold = signals.fold_ids(r.labels, folds, s.seed)
    sig, proto = _signals(indexes, r, fold, s)
    dups = duplicate_groups(indexes, indexes[0].images, r.rows, threshold=s.dup_threshold,
                            root=root)
    z = _robust_z(proto)
    issues = _issue_table(indexes, r, sig, dups, z)
    summary = {"dataset_dir": str(Path(dataset_dir).absolute()), "backbones": names,
               "signals": list(sig), "classes": r.classes, "folds": folds,
               "excluded_classes": r.dropped_classes, "settings": vars(s).copy()}
    return finish(issues, dups, proto, z, summary, out_dir, s.outlier_z)
