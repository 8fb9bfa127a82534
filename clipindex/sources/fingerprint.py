"""The one dataset fingerprint: what stores record to know their dataset has not changed.

:func:`fingerprint` is the sha256 of a canonical serialisation of both tables' content
(columns and rows, JSON with numpy values made native). Paths in the tables are relative
to the data root, so the same data under another root has the same fingerprint.
``load_dataset`` records it in ``Dataset.info["fingerprint"]`` (``dataset.json``) and a
store's manifest records it as ``dataset_fingerprint``; its output must never change
for the same tables, or every existing store would read as stale.

:func:`dataset_fingerprint` is what a store build asks of any dataset: the tables' own
fingerprint, recomputed (so tables edited after loading are not mistaken for the loaded
ones), with a warning when it differs from the value the dataset records.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import UserInputError

__all__ = ["dataset_fingerprint", "fingerprint"]

log = logging.getLogger(__name__)

_CHUNK = 65536  # rows serialised at a time


def fingerprint(images: pd.DataFrame, captions: pd.DataFrame) -> str:
    """sha256 of a canonical serialisation of both tables' content.

    Paths in the tables are relative to the data root, so the same data under
    another root has the same fingerprint.

    Examples
    --------
    >>> fingerprint(ds.images, ds.captions)[:12]  # doctest: +SKIP
    '3f9a0c6e1b2d'
    """
    for name, table in (("images", images), ("captions", captions)):
        if not isinstance(table, pd.DataFrame):
            raise UserInputError(f"fingerprint: {name} must be a pandas DataFrame (a "
                                 f"Dataset's {name} table); got {type(table).__name__}")
    h = hashlib.sha256(b"clipindex-tables-v1")
    for name, table in (("images", images), ("captions", captions)):
        # The bytes of json.dumps({"table", "columns", "rows": every row}), written
        # _CHUNK rows at a time: the same hash without millions of rows as Python lists
        # (and their JSON text) in memory at once.
        head = json.dumps({"table": name, "columns": [str(c) for c in table.columns]},
                          separators=(",", ":"))
        h.update((head[:-1] + ',"rows":[').encode("utf-8"))
        for lo in range(0, len(table), _CHUNK):
            rows = table.iloc[lo:lo + _CHUNK].to_dict(orient="split")["data"]
            text = json.dumps(rows, separators=(",", ":"), default=_json_native,
                              allow_nan=True)
            h.update((("," if lo else "") + text[1:-1]).encode("utf-8"))
        h.update(b"]}")
    return h.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """:func:`fingerprint` of a dataset's ``images`` and ``captions`` tables.

    ``dataset`` is a :class:`~clipindex.sources.Dataset` or anything with the two tables
    (``info`` optional). For a dataset from ``load_dataset`` this is the value it
    recorded in ``info["fingerprint"]``; when the tables changed since (the recorded
    value differs), a warning is logged and the tables' own value is returned.

    Examples
    --------
    >>> dataset_fingerprint(ds) == ds.info["fingerprint"]  # doctest: +SKIP
    True
    """
    if not (hasattr(dataset, "images") and hasattr(dataset, "captions")):
        raise UserInputError(f"dataset_fingerprint: give a Dataset (from load_dataset) or an "
                             f"object with images and captions tables; got "
                             f"{type(dataset).__name__}")
    value = fingerprint(dataset.images, dataset.captions)
    recorded = (getattr(dataset, "info", None) or {}).get("fingerprint")
    if recorded and recorded != value:
        log.warning("%s: the tables changed since the dataset was loaded (fingerprint %s, "
                    "recorded %s); using the tables' own", getattr(dataset, "name", "dataset"),
                    value[:12], str(recorded)[:12])
    return value


def _json_native(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
