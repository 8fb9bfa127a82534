"""Exceptions raised by clipindex on purpose.

Everything clipindex raises for a reason a user can act on derives from
:class:`ClipindexError`; the CLI turns these into a one-line ``Error: ...``
message and exit code 2, never a traceback::

    ClipindexError
    ├── UserInputError (ValueError)   bad argument, config or data given by the user
    │   ├── ConfigError               a config file or one of its fields is wrong
    │   ├── DataError                 images/annotations unreadable, or a selection is empty
    │   └── IndexMismatchError        a store opened with another backbone / dim / dataset
    ├── IncompleteIndexError          a store folder without a finished manifest
    ├── ModelLoadError                weights could not be loaded (offline, bad checkpoint)
    └── MissingExtraError (ImportError) an optional dependency is missing; says what to install

Messages say what to do, e.g. ``Unknown backbone 'ViT-B/31'. Known: RN50, ...``.
"""

from __future__ import annotations

__all__ = [
    "ClipindexError",
    "UserInputError",
    "ConfigError",
    "DataError",
    "IndexMismatchError",
    "IncompleteIndexError",
    "ModelLoadError",
    "MissingExtraError",
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


class IncompleteIndexError(ClipindexError):
    """A store folder has no finished manifest: the build was interrupted or is running."""


class ModelLoadError(ClipindexError):
    """Model weights could not be loaded."""


class MissingExtraError(ClipindexError, ImportError):
    """An optional dependency is missing; the message names the pip line that fixes it."""
