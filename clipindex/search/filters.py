"""Row filters on a store's tables: the ``--where`` expressions of ``clipindex search``.

``col=v``, ``col!=v``, ``col=a,b`` (in a set), ``col<n`` (also ``<=``, ``>``, ``>=``);
several expressions are ANDed. Values are read in the column's type (numbers for
numeric columns, ``true``/``false`` for boolean ones); an unknown column is a
:class:`~clipindex.errors.UserInputError` that lists the columns there are.

Example
-------
>>> import pandas as pd
>>> t = pd.DataFrame({"label": ["cat", "dog", "cow"], "width": [100, 300, 200]})
>>> where_mask(t, ["label=cat,dog", "width>150"]).tolist()
[False, True, False]
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import UserInputError

__all__ = ["Condition", "coded_mask", "condition_hit", "parse_where", "where_mask"]

_WHERE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|=|<|>)\s*(.*?)\s*$")
_SYNTAX = "write COLUMN=VALUE, COLUMN!=VALUE, COLUMN=A,B or COLUMN<NUMBER (also <=, >, >=)"
_OP_CHARS = "=<>!"
#: Operators people write from other languages, and the one they meant.
_MEANT = {"==": "=", "!==": "!=", "=>": ">=", "=<": "<=", "<>": "!=", "===": "="}
_ORDER_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Condition:
    """One parsed expression: ``column``, ``op`` and its ``values`` (as written)."""

    column: str
    op: str
    values: tuple[str, ...]


def parse_where(expressions: Sequence[str] | str | None) -> tuple[Condition, ...]:
    """Parse ``--where`` expressions: ``col=v``, ``col!=v``, ``col=a,b`` (in), ``col<3`` ...

    Several expressions are ANDed. ``=`` and ``!=`` take a comma-separated list of
    values; ``<``, ``<=``, ``>``, ``>=`` take one number.

    Examples
    --------
    >>> [(c.column, c.op, c.values) for c in parse_where(["label=cat,dog", "width>200"])]
    [('label', '=', ('cat', 'dog')), ('width', '>', ('200',))]
    """
    if expressions is None:
        return ()
    if isinstance(expressions, str):
        expressions = [expressions]
    conditions = []
    for text in expressions:
        match = _WHERE_RE.match(text)
        if match is None or not match.group(3):
            raise UserInputError(f"Cannot read --where {text!r}: {_SYNTAX}.")
        column, op, value = match.groups()
        if value[0] in _OP_CHARS:  # ``label==cow`` would otherwise look for "=cow"
            _bad_operator(text, column, op, value)
        values = tuple(v.strip() for v in value.split(",")) if op in ("=", "!=") else (value,)
        conditions.append(Condition(column, op, values))
    return tuple(conditions)


def _bad_operator(text: str, column: str, op: str, value: str) -> None:
    """Refuse an operator clipindex does not have (``==``, ``=>``, ...), naming the fix."""
    rest = value.lstrip(_OP_CHARS + " ")
    written = op + value[: len(value) - len(rest)].replace(" ", "")
    meant = _MEANT.get(written)
    fix = f" (did you mean {column}{meant}{rest}?)" if meant and rest else ""
    raise UserInputError(
        f"Cannot read --where {text!r}: {written!r} is not an operator{fix}; {_SYNTAX}.")


def _coerce(values: Sequence[str], series: pd.Series, text: str) -> list[Any]:
    if pd.api.types.is_bool_dtype(series):
        table = {"true": True, "1": True, "false": False, "0": False}
        if any(v.lower() not in table for v in values):
            raise UserInputError(f"--where {text}: column {series.name!r} takes true or false.")
        return [table[v.lower()] for v in values]
    if pd.api.types.is_numeric_dtype(series):
        try:
            return [float(v) for v in values]
        except ValueError:
            raise UserInputError(
                f"--where {text}: column {series.name!r} is numeric; give a number."
            ) from None
    return list(values)


def where_mask(table: pd.DataFrame, expressions: Sequence[str] | str | None) -> np.ndarray:
    """Boolean mask of the rows of ``table`` that satisfy every ``--where`` expression.

    Unknown columns raise :class:`UserInputError` listing the columns there are.

    Examples
    --------
    >>> t = pd.DataFrame({"label": ["cat", "dog", "cow"], "width": [100, 300, 200]})
    >>> where_mask(t, ["label!=cow", "width>=150"]).tolist()
    [False, True, False]
    """
    mask = np.ones(len(table), dtype=bool)
    for cond in parse_where(expressions):
        text = _text(cond)
        if cond.column not in table.columns:
            raise _unknown(cond, text, [str(c) for c in table.columns])
        mask &= condition_hit(table[cond.column], cond, text)
    return mask


def _text(cond: Condition) -> str:
    return f"{cond.column}{cond.op}{','.join(cond.values)}"


def _unknown(cond: Condition, text: str, columns: Sequence[str]) -> UserInputError:
    return UserInputError(f"Unknown column {cond.column!r} in --where {text}. "
                          f"Columns: {', '.join(columns)}.")


def condition_hit(series: pd.Series, cond: Condition, text: str | None = None) -> np.ndarray:
    """Boolean array: which values of ``series`` satisfy ``cond`` (elementwise, so it
    may be evaluated on a column's distinct values and spread to its rows)."""
    text = _text(cond) if text is None else text
    if cond.op in _ORDER_OPS:
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise UserInputError(
                f"--where {text}: {cond.op} needs a numeric column; "
                f"{cond.column!r} is not numeric (use = or !=)."
            )
        (value,) = _coerce(cond.values, series, text)
        hit = _ORDER_OPS[cond.op](series.to_numpy(dtype=float), value)
    else:
        values = _coerce(cond.values, series, text)
        column = series if values and not isinstance(values[0], str) else series.astype(str)
        hit = column.isin(values).to_numpy()
        if cond.op == "!=":
            hit = ~hit
    return np.asarray(hit, dtype=bool)


def coded_mask(codes: Callable[[str], tuple[np.ndarray, pd.Series]], columns: Sequence[str],
               expressions: Sequence[str] | str | None, n_rows: int,
               spread: Callable[[str, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """:func:`where_mask` on a table held as per-column codes: ``codes(column)`` is
    ``(codes, values)`` with the column equal to ``values[codes]`` (made once per open),
    so a query evaluates each expression on the distinct values and gathers, and no
    column of Python objects is built. ``spread(column, hit)`` maps a column's
    per-row hits to the table's rows (a caption filtered on its image's column)."""
    mask = np.ones(n_rows, dtype=bool)
    for cond in parse_where(expressions):
        text = _text(cond)
        if cond.column not in columns:
            raise _unknown(cond, text, columns)
        row_codes, values = codes(cond.column)
        hit = condition_hit(values, cond, text)[row_codes]
        mask &= hit if spread is None else spread(cond.column, hit)
    return mask
