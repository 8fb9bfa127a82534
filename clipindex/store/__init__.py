"""The store: ``OUT/<dataset>/`` tables and one folder of vectors + FAISS per backbone.

Owns: building (``build.py``), reading (``reader.py``: :class:`BackboneIndex`,
:func:`open_index`) and FAISS (``indexes.py``, the only module of the package that
imports ``faiss``).
May import: ``clipindex.errors``, ``clipindex.files``, ``clipindex.sources``,
``clipindex.encode``. Never classifiers, search, bench, report or the CLI.
"""

from clipindex.store.reader import (
    FORMAT_VERSION,
    BackboneIndex,
    BuildInterrupted,
    build_store,
    list_backbones,
    open_index,
    store_info,
)

__all__ = [
    "FORMAT_VERSION",
    "BackboneIndex",
    "BuildInterrupted",
    "build_store",
    "list_backbones",
    "open_index",
    "store_info",
]
