"""Exceptions raised by clipindex on purpose.

Everything clipindex raises for a reason a user can act on derives from
:class:`ClipindexError`; the CLI turns these into a one-line ``Error: ...``
message and exit code 2, never a traceback::

    ClipindexError
    ├── UserInputError (ValueError)   bad argument, config or data given by the user
    │   ├── ConfigError               a config file or one of its fields is wrong
    │   ├── DataError                 images/annotations unreadable, or a selection is empty
    │   └── IndexMismatchError        a store opened with another backbone / dim / dataset
    │       └── DamagedStoreError     a store file is missing, unreadable or changed since
    │                                 its build (the message names the file and the fix)
    ├── IncompleteIndexError          a store folder without a finished manifest
    ├── ModelLoadError                weights could not be loaded (offline, bad checkpoint)
    ├── NotFittedError (sklearn's NotFittedError) a classifier used before ``fit``
    └── MissingExtraError (ImportError) an optional dependency is missing; says what to install

``NotFittedError`` is also :class:`sklearn.exceptions.NotFittedError` (so scikit-learn's
own checks recognise it); it is made on first use, so importing this module never loads
scikit-learn.

Messages say what to do, e.g. ``Unknown backbone 'ViT-B/31'. Known: RN50, ...``.
"""

from __future__ import annotations

__all__ = [
    "ClipindexError",
    "UserInputError",
    "ConfigError",
    "DataError",
    "IndexMismatchError",
    "DamagedStoreError",
    "IncompleteIndexError",
    "ModelLoadError",
    "MissingExtraError",
    "NotFittedError",  # noqa: F822  (made on first access, see __getattr__)
]


class ClipindexError(Exception):
    """Base class of every error clipindex raises on purpose."""


class UserInputError(ClipindexError, ValueError):
    """Bad input from the user: an argument, a config value or a data file."""


class ConfigError(UserInputError):
    """A config file or one of its fields is wrong."""


class DataError(UserInputError):
    """Images or annotations cannot be used (malformed, missing, empty selection)."""


class IndexMismatchError(UserInputError):
    """A store was opened for another backbone, dimension or dataset than it holds."""


class DamagedStoreError(IndexMismatchError):
    """A store file is missing, unreadable or no longer what its manifest recorded."""


class IncompleteIndexError(ClipindexError):
    """A store folder has no finished manifest: the build was interrupted or is running."""


class ModelLoadError(ClipindexError):
    """Model weights could not be loaded."""


class MissingExtraError(ClipindexError, ImportError):
    """An optional dependency is missing; the message names the pip line that fixes it."""


def _not_fitted_error() -> type:
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    class NotFittedError(ClipindexError, SklearnNotFittedError):
        """A classifier was used (``predict``, ``predict_proba``) before ``fit``."""

    NotFittedError.__qualname__ = "NotFittedError"
    NotFittedError.__module__ = __name__
    return NotFittedError


def __getattr__(name: str) -> type:
    """``NotFittedError`` is built on first access (it subclasses scikit-learn's)."""
    if name == "NotFittedError":
        return globals().setdefault(name, _not_fitted_error())  # one class, even if raced
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
