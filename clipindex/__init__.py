"""clipindex: CLIP embeddings encoded once per backbone into FAISS indexes.

Everything after the store (classifiers, search, benchmarks, reports) reads
stored vectors; nothing re-encodes an image.
"""

from __future__ import annotations

__version__ = "0.1.0"

from clipindex.errors import (  # noqa: E402
    ClipindexError,
    ConfigError,
    DataError,
    IncompleteIndexError,
    IndexMismatchError,
    MissingExtraError,
    ModelLoadError,
    UserInputError,
)

__all__ = [
    "__version__",
    "ClipindexError",
    "ConfigError",
    "DataError",
    "IncompleteIndexError",
    "IndexMismatchError",
    "MissingExtraError",
    "ModelLoadError",
    "UserInputError",
]
