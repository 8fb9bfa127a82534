"""Sources: COCO JSON, class folders and CSV/parquet manifests become a :class:`Dataset`.

Owns: one module per source kind (``coco.py``: the one place COCO JSON is read, and the
COCO builder; ``folder.py``; ``manifest.py``), the study's filters (``filters.py``:
target classes, ``person`` excluded, single-target images, the seeded per-class sample
and support draw), the one dataset fingerprint (``fingerprint.py``: what ``dataset.json``
and every store manifest record), what a builder returns (``records.py``) and the
:class:`Dataset` with its assembly (``dataset.py``: :func:`load_dataset`).
May import: ``clipindex.errors``, ``clipindex.config``, ``clipindex.files``. Nothing
above it in the pipeline (encode, store, classifiers, search, bench, ...), nor
``clipindex.demo`` (a demo world is read as the COCO files it writes).
"""

from clipindex.sources.dataset import IMAGE_EXTENSIONS, Dataset, load_dataset
from clipindex.sources.fingerprint import dataset_fingerprint, fingerprint
from clipindex.sources.stored import StoredImages

__all__ = ["IMAGE_EXTENSIONS", "Dataset", "StoredImages", "dataset_fingerprint", "fingerprint",
           "load_dataset"]
