"""The store: ``OUT/<dataset>/`` tables and one folder of vectors + FAISS per backbone.

Owns: what the files are and the one manifest reader/writer (``manifest.py``: format
version, identity, sha256, JSON/npy/parquet IO), the build lock (``lock.py``),
resumable shards and the encode loops (``shards.py``), store generations, tombstones
and their atomic commit (``generations.py``), ``clipindex add`` (``add.py``:
:func:`add_to_store`; when an index re-trains in ``update.py``), ``clipindex compact``
(``compact.py``: :func:`compact_store`), the finished matrices and FAISS
files (``outputs.py``), building (``build.py``: :func:`build_store`), the knobs of a
build or an add checked against what each backbone will use before anything is written
(``plan.py``), re-indexing from stored vectors (``reindex.py``), importing clip-retrieval's
embeddings (``imported.py``: :func:`import_store`) and writing them back out
(``exported.py``: :func:`export_store`), reading (``reader.py``: :class:`BackboneIndex`,
:func:`open_index`, :func:`list_backbones`; ``summary.py``: :func:`store_info`). FAISS,
``--index-kind auto`` and top-k are :mod:`clipindex.index`'s, the floor below.
May import: ``clipindex.errors``, ``clipindex.files``, ``clipindex.sources``,
``clipindex.encode``, ``clipindex.index``. Never classifiers, search, bench, report or the CLI.
"""

from clipindex.store.adding import add_to_store
from clipindex.store.build import build_store
from clipindex.store.compact import compact_store
from clipindex.store.exported import export_store
from clipindex.store.imported import import_store
from clipindex.store.manifest import FORMAT_VERSION
from clipindex.store.reader import BackboneIndex, list_backbones, open_index
from clipindex.store.shards import BuildInterrupted
from clipindex.store.summary import store_info

__all__ = [
    "FORMAT_VERSION",
    "BackboneIndex",
    "BuildInterrupted",
    "add_to_store",
    "build_store",
    "compact_store",
    "export_store",
    "import_store",
    "list_backbones",
    "open_index",
    "store_info",
]
