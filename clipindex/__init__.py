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
    "make_world",
    "load_dataset",
    "build_store",
    "open_index",
    "classify",
    "classify_images",
    "search_text",
    "search_image",
    "run_bench",
    "run_demo",
    "write_report",
    "explain_image",
]

# Public functions from heavy modules (torch, faiss) are imported on first use, so
# ``import clipindex`` stays light. Name -> module; add entries here.
_LAZY: dict[str, str] = {
    "make_world": "clipindex.world",
    "load_dataset": "clipindex.sources",
    "build_store": "clipindex.store",
    "open_index": "clipindex.store",
    "classify": "clipindex.classifiers.runner",
    "classify_images": "clipindex.classifiers.runner",
    "search_text": "clipindex.search",
    "search_image": "clipindex.search",
    "run_bench": "clipindex.bench",
    "run_demo": "clipindex.demo",
    "write_report": "clipindex.report",
    "explain_image": "clipindex.explain",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clipindex' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
