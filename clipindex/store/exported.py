"""Take a store elsewhere: clip-retrieval's layout from one backbone of a store
(``clipindex export``, :func:`export_store`), the inverse of :func:`import_store`.

The layout written (what clip-retrieval ``inference`` writes, what autofaiss and
clip-retrieval ``index`` / ``back`` read)::

    DIR/img_emb/img_emb_0.npy          (n, dim) image vectors, L2-normalised
    DIR/text_emb/text_emb_0.npy        (n, dim) the vector of each image's caption
    DIR/metadata/metadata_0.parquet    n rows: image_path, caption, the store's columns

Row i of the three files is the same image. Only rows a search may return are written:
removed (tombstoned) images and images without a vector (skipped at build) are left
out, so the rows are renumbered 0..n-1 in row id order (``clipindex import`` of the
folder gives a store whose searches answer the same images with the same scores).
``image_path`` is the absolute path of the image (the store's data root joined with its
``file``); ``caption`` and the ``text_emb`` row are the image's first caption (lowest
caption row id still in the store; clip-retrieval keeps one caption per image, so the
others are not exported); an image with none has caption ``""`` and a zero text vector.
``text_emb`` is written only when the store has captions. Every other column of the
images table (``label``, ``split``, ...) but ``row_id`` and ``file`` is kept.
Vectors keep the store's dtype (float16 or float32).

``DIR`` must not exist or be empty, and must not lie inside a store; everything is
written in a temporary folder beside it, renamed to ``DIR`` only when complete. ``DIR``
may be a URL (``s3://bucket/clip-out``, with ``storage_options``): written locally first,
then uploaded (:mod:`clipindex.store.staging`). A store built from object storage
exports its images' URLs as ``image_path``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import UserInputError
from clipindex.store.imported import CAPTION_COLUMN, PATH_COLUMN
from clipindex.store.owned import refuse_store_path

__all__ = ["ExportResult", "export_store"]

_ROWS = 65536  # rows copied at a time


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_store` wrote."""

    path: Path | str  # a URL when exported to object storage
    n_images: int
    n_removed: int
    n_skipped: int
    captions: bool
    dim: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "n_images": self.n_images,
                "n_removed": self.n_removed, "n_skipped": self.n_skipped,
                "captions": self.captions, "dim": self.dim,
                "seconds": round(self.seconds, 3)}


def _copy_rows(source: np.ndarray, rows: np.ndarray, path: Path) -> None:
    """``source[rows]`` into the npy file ``path``, a block at a time (rows < 0: zeros)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=source.dtype,
                                    shape=(len(rows), source.shape[1]))
    for lo in range(0, len(rows), _ROWS):
        block = rows[lo:lo + _ROWS]
        values = np.zeros((len(block), source.shape[1]), dtype=source.dtype)
        have = block >= 0
        values[have] = source[block[have]]
        out[lo:lo + len(block)] = values
    out.flush()
    del out


def _first_captions(index: Any, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """For each image row: the caption row id of its first live caption (-1: none) and
    its text."""
    caps = index.captions
    live = caps[np.asarray(index.caption_valid) & caps["image_row_id"].isin(rows).to_numpy()]
    first = live.sort_values("row_id").drop_duplicates("image_row_id")
    lookup = dict(zip(first["image_row_id"].tolist(), first["row_id"].tolist(), strict=True))
    ids = np.array([lookup.get(int(r), -1) for r in rows], dtype=np.int64)
    texts = caps["text"].to_numpy()
    return ids, [str(texts[i]) if i >= 0 else "" for i in ids]


def _metadata(index: Any, rows: np.ndarray, captions: list[str] | None) -> pd.DataFrame:
    from clipindex.sources.storage import is_url, join

    root = index.dataset_info.get("root")
    images = index.images.iloc[rows].reset_index(drop=True)
    if is_url(root):  # a store built from object storage: the images' URLs
        paths = [join(str(root), str(f)) for f in images["file"]]
    else:
        base = Path(str(root)).expanduser().absolute() if root else None
        paths = [str(base / f) if base is not None else str(f) for f in images["file"]]
    meta = pd.DataFrame({PATH_COLUMN: paths})
    if captions is not None:
        meta[CAPTION_COLUMN] = captions
    rest = images.drop(columns=[c for c in ("row_id", "file", PATH_COLUMN, CAPTION_COLUMN)
                                if c in images])
    return pd.concat([meta, rest], axis=1)


def _prepare_out(out: Path) -> Path:
    out = refuse_store_path(Path(out).expanduser())
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"{out} already exists and is not an empty folder; choose "
                             "another --out or remove it first")
    return out


def export_store(dataset_dir: str | os.PathLike[str], backbone: str, *,
                 out: str | os.PathLike[str],
                 storage_options: dict[str, Any] | None = None) -> ExportResult:
    """Write ``backbone``'s vectors and the store's tables in clip-retrieval's layout.

    ``dataset_dir`` is the store (``OUT/<dataset>``), ``backbone`` one of its backbones
    (a name or folder, as for :func:`open_index`), ``out`` the folder to write (see the
    module docstring for the layout and what is left out).

    Example
    -------
    >>> export_store("indexes/demo", "tiny-vit", out="demo-clip")  # doctest: +SKIP
    """
    from clipindex.sources.storage import is_url

    if is_url(os.fspath(out)):
        from clipindex.store.staging import check_empty_target, upload_folder

        check_empty_target(os.fspath(out), storage_options)
        with tempfile.TemporaryDirectory(prefix="clipindex-export-") as staged:
            done = export_store(dataset_dir, backbone, out=Path(staged) / "out")
            upload_folder(Path(staged) / "out", os.fspath(out), storage_options)
        return replace(done, path=os.fspath(out))
    from clipindex.store.generations import tombstones
    from clipindex.store.reader import open_index

    t0 = time.perf_counter()
    folder = _prepare_out(Path(out))
    index = open_index(dataset_dir, backbone)
    rows = np.flatnonzero(np.asarray(index.image_valid)).astype(np.int64)
    n_removed = len(np.unique(tombstones(index.dataset_info)[0]))
    has_captions = len(index.captions) > 0
    cap_rows, texts = _first_captions(index, rows) if has_captions else (None, None)
    tmp = folder.parent / f".{folder.name}.export-{os.getpid()}"
    try:
        for sub in ("img_emb", "metadata") + (("text_emb",) if has_captions else ()):
            (tmp / sub).mkdir(parents=True)
        _copy_rows(index.stored["images"], rows, tmp / "img_emb" / "img_emb_0.npy")
        if cap_rows is not None:
            _copy_rows(index.stored["captions"], cap_rows, tmp / "text_emb" / "text_emb_0.npy")
        _metadata(index, rows, texts).to_parquet(tmp / "metadata" / "metadata_0.parquet",
                                                 index=False)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(path=folder, n_images=len(rows), n_removed=n_removed,
                        n_skipped=len(index.images) - len(rows) - n_removed,
                        captions=has_captions, dim=index.dim,
                        seconds=time.perf_counter() - t0)
