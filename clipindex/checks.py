"""The shared checks of a caller's values: one wording for each kind of mistake.

Every setting a user gives (a batch size, ``k``, a worker count, a choice among names) is
checked once, where the library's settings object is made, by one of these functions;
each returns the value (an ``int`` for the integer checks) and raises a one-line
:class:`~clipindex.errors.UserInputError` (or the subclass given as ``error``, e.g.
:class:`~clipindex.errors.ConfigError` for a config file's field) that names the value
and what it must be:

- :func:`positive_int`: ``"batch_size must be a positive integer, got 0"``
- :func:`non_negative_int`: ``"workers must be a non-negative integer, got -1"``
- :func:`non_negative`: ``"gpus_per_encoder must be 0 or more, got -0.5"`` (any number)
- :func:`choice`: ``"Unknown engine 'spark'. Known: local, ray"``

A ``bool`` is never an integer here (``True`` is no batch size); numpy integers are.
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any, TypeVar

from clipindex.errors import UserInputError

__all__ = ["choice", "non_negative", "non_negative_int", "positive_int"]

T = TypeVar("T")


def _integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, error: type[UserInputError] = UserInputError
                 ) -> int:
    """``value`` as an ``int`` when it is an integer >= 1, else ``error``.

    Examples
    --------
    >>> positive_int("batch_size", 32)
    32
    >>> positive_int("batch_size", 0)
    Traceback (most recent call last):
    ...
    clipindex.errors.UserInputError: batch_size must be a positive integer, got 0
    """
    if not _integer(value) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: Any, *, error: type[UserInputError] = UserInputError
                     ) -> int:
    """``value`` as an ``int`` when it is an integer >= 0, else ``error``.

    Examples
    --------
    >>> non_negative_int("workers", 0)
    0
    """
    if not _integer(value) or value < 0:
        raise error(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def non_negative(name: str, value: Any, *, error: type[UserInputError] = UserInputError
                 ) -> float:
    """``value`` as a ``float`` when it is a real number >= 0 (not NaN), else ``error``.

    Examples
    --------
    >>> non_negative("gpus_per_encoder", 0.5)
    0.5
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not float(value) >= 0:
        raise error(f"{name} must be 0 or more, got {value!r}")
    return float(value)


def choice(name: str, value: T, options: Iterable[Any], *,
           error: type[UserInputError] = UserInputError) -> T:
    """``value`` when it is one of ``options``, else ``error`` listing them.

    Examples
    --------
    >>> choice("engine", "ray", ("local", "ray"))
    'ray'
    >>> choice("engine", "spark", ("local", "ray"))
    Traceback (most recent call last):
    ...
    clipindex.errors.UserInputError: Unknown engine 'spark'. Known: local, ray
    """
    known = list(options)
    if value not in known:
        raise error(f"Unknown {name} {value!r}. Known: {', '.join(str(k) for k in known)}")
    return value
