"""Sources: COCO JSON, class folders and CSV/parquet manifests become a :class:`Dataset`.

Owns: reading a source (``coco.py``, the dataset assembly in ``dataset.py``), the
study's filters (target classes, ``person`` excluded, single-target images, the
seeded per-class sample) and the one dataset fingerprint.
May import: ``clipindex.errors``, ``clipindex.config``, ``clipindex.files``. Nothing
above it in the pipeline (encode, store, classifiers, search, bench, ...).
"""

from clipindex.sources.dataset import IMAGE_EXTENSIONS, Dataset, fingerprint, load_dataset

__all__ = ["IMAGE_EXTENSIONS", "Dataset", "fingerprint", "load_dataset"]
