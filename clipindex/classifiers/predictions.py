"""The one predictions table (``clipindex classify --out``, the bench's ``predictions/``).

Columns: ``row_id`` (int64; -1 for new files), ``file``, ``true`` (when known),
``predicted``, one ``p_<class>`` (float64) per class in the run's class order, and
``uncertain`` (bool; all False without abstention). :func:`write_predictions` writes it
as parquet or CSV; :func:`ensemble_table` votes over single-backbone tables.

Example
-------
>>> import numpy as np
>>> t = prediction_table([3], ["a.jpg"], ["cat"], np.array(["dog"]),
...                      np.array([[0.4, 0.6]]), ["cat", "dog"])
>>> t.columns.tolist()
['row_id', 'file', 'true', 'predicted', 'p_cat', 'p_dog', 'uncertain']
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.classifiers.ensemble import ENSEMBLES
from clipindex.errors import UserInputError
from clipindex.files import atomic_write
from clipindex.metrics import Vector

__all__ = ["PREDICTION_WRITERS", "ensemble_table", "prediction_table", "write_predictions"]


def prediction_table(row_ids: Vector, files: Sequence[str] | Vector, true: Vector | None,
                     predicted: Vector, proba: np.ndarray, classes: Sequence[str], *,
                     uncertain: Vector | None = None) -> pd.DataFrame:
    """One row per prediction; ``true=None`` leaves the ``true`` column out (new files).

    ``proba`` columns follow ``classes``; ``uncertain`` defaults to all False.
    """
    ids = np.asarray(row_ids, dtype=np.int64)
    cols: dict[str, Any] = {"row_id": ids, "file": _strings(files, keep_missing=True)}
    vocab = _vocab(tuple(str(c) for c in classes))
    if true is not None:
        cols["true"] = _strings(true, vocab=vocab)
    cols["predicted"] = _strings(predicted, vocab=vocab)
    for j, c in enumerate(classes):
        cols[f"p_{c}"] = np.asarray(proba[:, j], dtype=np.float64)
    cols["uncertain"] = (np.zeros(len(ids), dtype=bool) if uncertain is None
                         else np.asarray(uncertain).astype(bool))
    return pd.DataFrame(cols, copy=False)


class _Vocab:
    """The run's classes, sorted once: labels are coded by a binary search into them."""

    def __init__(self, classes: Sequence[str]) -> None:
        names = np.asarray([str(c) for c in classes])
        self.order = np.argsort(names, kind="stable")
        self.sorted = names[self.order]
        self.array = pd.array(names, dtype="str")

    def column(self, array: np.ndarray) -> Any:
        """``array`` (strings) as a string column taken from the classes, or None when a
        value is not one of them."""
        if not len(self.sorted) or array.dtype.kind != "U" or array.ndim != 1:
            return None
        at = np.minimum(np.searchsorted(self.sorted, array), len(self.sorted) - 1)
        if not (self.sorted[at] == array).all():
            return None
        return self.array.take(self.order[at])


@functools.lru_cache(maxsize=32)
def _vocab(classes: tuple[str, ...]) -> _Vocab:
    """The :class:`_Vocab` of a run's classes, made once per class list."""
    return _Vocab(classes)


def _strings(values: Any, keep_missing: bool = False, vocab: _Vocab | None = None) -> Any:
    """A column of strings as pandas' string array, made from the few distinct values
    (``take``): a table of labels costs what its classes cost, not what its rows do.
    ``keep_missing`` keeps None/NaN (file names), else every value is ``str(value)``;
    ``vocab`` (the run's classes) codes labels without sorting the rows."""
    if isinstance(values, (pd.Series, pd.api.extensions.ExtensionArray)) and \
            pd.api.types.is_string_dtype(values.dtype) and keep_missing:
        return pd.array(values, copy=False) if isinstance(values, pd.Series) else values
    array = np.asarray(values, dtype=object if keep_missing else None)
    if not keep_missing and array.dtype.kind != "U":
        array = array.astype(str)
    if keep_missing:
        return list(array)
    coded = vocab.column(array) if vocab is not None else None
    if coded is not None:
        return coded
    uniq, inverse = np.unique(array, return_inverse=True)
    return pd.array(uniq, dtype="str").take(inverse.ravel())


def ensemble_table(kind: str, tables: Sequence[pd.DataFrame], classes: Sequence[str]
                   ) -> pd.DataFrame:
    """The ``ENSEMBLES[kind]`` vote over single-backbone predictions tables, as one table.

    Rows: those every table holds, in the first table's order; ``file`` and ``true``
    come from the first table; probabilities are read from the ``p_<class>`` columns.
    Anyone can so recompute a bench's ensemble rows from its ``predictions/``.
    """
    if kind not in ENSEMBLES:
        raise UserInputError(f"Unknown ensemble {kind!r}. Known: {', '.join(ENSEMBLES)}")
    pcols = [f"p_{c}" for c in classes]
    common = tables[0]["row_id"]
    for t in tables[1:]:
        common = common[common.isin(t["row_id"])]
    aligned = [t.set_index("row_id").loc[common.to_numpy()] for t in tables]
    pred, proba = ENSEMBLES[kind]([a[pcols].to_numpy(np.float64) for a in aligned],
                                  list(classes))
    first = aligned[0]
    return prediction_table(common.to_numpy(), first["file"].to_numpy(),
                            first["true"].astype(str).to_numpy(), pred, proba, classes)


def _write_parquet(frame: pd.DataFrame, fh: Any) -> None:
    frame.to_parquet(fh, index=False)


def _write_csv(frame: pd.DataFrame, fh: Any) -> None:
    fh.write(frame.to_csv(index=False).encode("utf-8"))


PREDICTION_WRITERS: dict[str, Callable[[pd.DataFrame, Any], None]] = {
    ".parquet": _write_parquet,
    ".csv": _write_csv,
}


def write_predictions(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a predictions table atomically, as parquet or CSV by the file's extension
    (never inside a store folder: :func:`clipindex.store.owned.refuse_store_path`).

    Example
    -------
    >>> write_predictions(res.predictions, "preds.parquet")  # doctest: +SKIP
    PosixPath('preds.parquet')
    """
    from clipindex.store.owned import refuse_store_path

    out = refuse_store_path(path)
    writer = PREDICTION_WRITERS.get(out.suffix.lower())
    if writer is None:
        raise UserInputError(
            f"cannot write predictions to {out}: use a .parquet or .csv file name")
    return atomic_write(out, lambda fh: writer(frame, fh))
