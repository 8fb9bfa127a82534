"""Abstention with coverage: the two-class uncertain band and risk-coverage curves.

- :func:`uncertain_band` (``classify --uncertain-band LO,HI``): for two classes, a row is
  ``uncertain`` when the probability of the *positive* class (the second class of the
  run's class order, e.g. ``roads`` in ``--classes fields,roads``) lies inside
  ``[LO, HI]`` — the fields-vs-roads document's band around 0.5. ``--reject-below P``
  (:func:`~clipindex.classifiers.ensemble.reject_below`) is the one-sided rule for any
  number of classes.
- :func:`risk_coverage`: for thresholds t on a row's confidence (its top probability;
  for a majority vote, the share of backbones voting for the winner), the share of rows
  kept (confidence >= t: exactly the rows ``--reject-below t`` does not flag) and the
  accuracy of the kept rows. At t = 0 every row is kept, so coverage is 1 and the
  accuracy is the plain accuracy.
- :func:`threshold_for_accuracy`: the smallest threshold of a curve whose kept rows reach
  a target accuracy (e.g. 0.99), with its coverage; ``None`` when no threshold does.

Example
-------
>>> import numpy as np
>>> curve = risk_coverage(["a", "b", "a"], ["a", "a", "a"], np.array([0.9, 0.6, 0.8]),
...                       thresholds=[0.0, 0.7])
>>> curve[["threshold", "coverage", "accuracy"]].round(3).values.tolist()
[[0.0, 1.0, 0.667], [0.7, 0.667, 1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import UserInputError
from clipindex.metrics import Vector

__all__ = ["CURVE_COLUMNS", "DEFAULT_THRESHOLDS", "confidence_of", "parse_band",
           "risk_coverage", "threshold_for_accuracy", "uncertain_band"]

#: The thresholds of ``coverage.csv``: 0, 0.01, ..., 1.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(i / 100, 2) for i in range(101))
CURVE_COLUMNS: tuple[str, ...] = ("threshold", "coverage", "accuracy", "n_kept", "n")


def parse_band(band: str | Sequence[float]) -> tuple[float, float]:
    """``"0.3,0.7"`` (or a pair) -> ``(0.3, 0.7)``, checked: 0 <= LO <= HI <= 1.

    Example
    -------
    >>> parse_band("0.3,0.7")
    (0.3, 0.7)
    """
    parts: list[Any] = (str(band).split(",") if isinstance(band, str) else list(band))
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise UserInputError(f"the uncertain band must be LO,HI (two numbers), got {band!r}"
                             ) from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise UserInputError(f"the uncertain band needs 0 <= LO <= HI <= 1, got {lo},{hi}")
    return lo, hi


def uncertain_band(proba: np.ndarray, lo: float, hi: float, positive: int = 1) -> np.ndarray:
    """True ("uncertain") where the positive class's probability is in ``[lo, hi]``.

    Two classes only (``proba`` is ``(n, 2)``); ``positive`` is the positive column.

    Example
    -------
    >>> import numpy as np
    >>> uncertain_band(np.array([[0.9, 0.1], [0.45, 0.55], [0.2, 0.8]]), 0.3, 0.7).tolist()
    [False, True, False]
    """
    lo, hi = parse_band((lo, hi))
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise UserInputError("the uncertain band is for two classes (the positive class's "
                             f"probability); this run has {p.shape[-1] if p.ndim else 0}: "
                             "use --reject-below P, or --classes a,b")
    pos = p[:, positive]
    return (pos >= lo) & (pos <= hi)


def confidence_of(frame: pd.DataFrame) -> np.ndarray:
    """A predictions table's per-row confidence: the largest ``p_<class>`` value."""
    cols = [c for c in frame.columns if str(c).startswith("p_")]
    if not cols:
        raise UserInputError("the predictions table has no p_<class> columns")
    return frame[cols].to_numpy(np.float64).max(axis=1)


def risk_coverage(true: Vector, predicted: Vector, confidence: np.ndarray, *,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Coverage and kept-row accuracy at each threshold (:data:`CURVE_COLUMNS`).

    A row is kept at threshold t when its confidence is >= t (the rows
    ``reject_below(proba, t)`` leaves unflagged). Accuracy is NaN where no row is kept.
    """
    t = np.asarray(true).astype(str)
    p = np.asarray(predicted).astype(str)
    conf = np.asarray(confidence, dtype=np.float64)
    if not (len(t) == len(p) == len(conf)):
        raise UserInputError("true, predicted and confidence need one value per row")
    right = t == p
    ths = np.asarray(list(thresholds), dtype=np.float64)
    kept = conf[None, :] >= ths[:, None]
    n_kept = kept.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n_kept > 0, (kept & right[None, :]).sum(axis=1) / np.maximum(n_kept, 1),
                       np.nan)
    n = len(t)
    return pd.DataFrame({"threshold": ths, "coverage": n_kept / n if n else np.nan,
                         "accuracy": acc, "n_kept": n_kept.astype(np.int64),
                         "n": np.full(len(ths), n, dtype=np.int64)})


def threshold_for_accuracy(curve: pd.DataFrame, target: float) -> dict[str, Any] | None:
    """The smallest threshold whose kept rows reach ``target`` accuracy, or None.

    Returns ``{"threshold", "coverage", "accuracy", "n_kept"}``.

    Example
    -------
    >>> import numpy as np
    >>> c = risk_coverage(["a", "b"], ["a", "a"], np.array([0.9, 0.6]), thresholds=[0, .7])
    >>> threshold_for_accuracy(c, 0.99)["threshold"]
    0.7
    """
    if not 0.0 < float(target) <= 1.0:
        raise UserInputError(f"the target accuracy must be in (0, 1], got {target!r}")
    ok = curve[(curve["n_kept"] > 0) & (curve["accuracy"] >= float(target) - 1e-12)]
    if ok.empty:
        return None
    row = ok.sort_values("threshold").iloc[0]
    return {"threshold": float(row["threshold"]), "coverage": float(row["coverage"]),
            "accuracy": float(row["accuracy"]), "n_kept": int(row["n_kept"])}
