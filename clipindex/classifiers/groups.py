"""Per-group accuracy on any column of ``images.parquet`` (``--group-by COLUMN``).

The multimodal course work's fairness tables (accuracy by age, gender, ethnicity) on any
column: the demo world's ``context`` and ``causes`` tags, a folder's sub-folder, a
manifest's extra columns. For one predictions table (rows joined to the images table by
``row_id``):

- per group g: ``n`` (rows of the group) and ``accuracy`` (share right);
- ``gap``: the largest accuracy minus the smallest, over the groups;
- ``bias``: the mean over groups of ``|accuracy_g - overall accuracy|`` (unweighted, as
  the course work reports it).

Missing values form the group ``(missing)``; an empty string (a clean image's
``causes``) the group ``(none)``.

Example
-------
>>> import pandas as pd
>>> preds = pd.DataFrame({"row_id": [0, 1, 2, 3], "true": list("aabb"),
...                       "predicted": list("abbb")})
>>> images = pd.DataFrame({"row_id": [0, 1, 2, 3], "context": ["x", "y", "x", "y"]})
>>> t = group_table(preds, images, "context")
>>> t[["group", "n", "accuracy"]].values.tolist(), float(t["gap"][0]), float(t["bias"][0])
([['x', 2, 1.0], ['y', 2, 0.5]], 0.5, 0.25)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipindex.errors import UserInputError

__all__ = ["GROUP_COLUMNS", "MISSING_GROUP", "EMPTY_GROUP", "check_group_column",
           "group_table", "group_values"]

GROUP_COLUMNS: tuple[str, ...] = ("column", "group", "n", "accuracy", "overall_accuracy",
                                  "gap", "bias")
MISSING_GROUP = "(missing)"
EMPTY_GROUP = "(none)"


#: The images table's join key: one row per group, so no group to compare.
ROW_ID = "row_id"


def check_group_column(images: pd.DataFrame, column: str) -> None:
    """A one-line error naming the columns to group by when ``column`` is not one of
    them: not in the images table, or ``row_id`` (unique per row: every group would be
    one image, right or wrong)."""
    columns = ", ".join(str(c) for c in images.columns if c != ROW_ID)
    if column == ROW_ID and ROW_ID in images.columns:
        raise UserInputError(f"cannot group by {ROW_ID!r}: it is unique per image, so each "
                             f"group would be one image; group by one of: {columns}")
    if column not in images.columns:
        raise UserInputError(f"no column {column!r} in images.parquet to group by; "
                             f"columns: {columns}")


def group_values(images: pd.DataFrame, column: str, row_ids: np.ndarray) -> np.ndarray:
    """The group label (a string) of each row id."""
    check_group_column(images, column)
    values = images.set_index("row_id")[column].reindex(np.asarray(row_ids, np.int64))
    out = []
    for v in values.tolist():
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(MISSING_GROUP)
        elif isinstance(v, (list, tuple, np.ndarray)):
            out.append(",".join(map(str, v)) or EMPTY_GROUP)
        else:
            out.append(str(v) if str(v) != "" else EMPTY_GROUP)
    return np.asarray(out, dtype=object)


def group_table(predictions: pd.DataFrame, images: pd.DataFrame, column: str) -> pd.DataFrame:
    """Accuracy and n per group of ``column`` (:data:`GROUP_COLUMNS`), groups sorted."""
    groups = group_values(images, column, predictions["row_id"].to_numpy())
    right = (predictions["true"].astype(str).to_numpy()
             == predictions["predicted"].astype(str).to_numpy())
    frame = pd.DataFrame({"group": groups, "right": right})
    per = frame.groupby("group", sort=True)["right"].agg(["size", "mean"]).reset_index()
    overall = float(right.mean()) if len(right) else float("nan")
    acc = per["mean"].to_numpy(np.float64)
    gap = float(acc.max() - acc.min()) if len(acc) else float("nan")
    bias = float(np.mean(np.abs(acc - overall))) if len(acc) else float("nan")
    return pd.DataFrame({"column": column, "group": per["group"].astype(str),
                         "n": per["size"].astype(np.int64), "accuracy": acc,
                         "overall_accuracy": overall, "gap": gap, "bias": bias},
                        columns=list(GROUP_COLUMNS))
