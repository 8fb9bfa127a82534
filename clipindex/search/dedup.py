"""Near-duplicates and few-shot leakage in a store (``clipindex dedup``).

- **exact** pairs: two rows whose files have the same sha256 (every pair of a group of
  identical files);
- **near** pairs: two rows whose stored image vectors have cosine >= ``threshold``, found
  with the store's own index (``BackboneIndex.search``: each row's nearest neighbours,
  the neighbourhood widened until its last neighbour is under the threshold), never an
  O(N²) loop in Python;
- **leakage**: a pair with one row in ``support`` and the other in ``test``: a few-shot
  classifier is then tested on (a copy of) an image it was fitted on.

Rows removed from the store (tombstoned by ``clipindex add``) are in no pair, exact or
near, before and after ``clipindex compact``.

The default threshold (:data:`DEFAULT_THRESHOLD`, 0.9975) was chosen on the demo world
(`clipindex demo`'s store: 1,000 images of the seed-0 world's ``val`` split): it is just
above the highest cosine between two distinct images for tiny-vit (0.9970) and tiny-vit-s
(0.9935), so neither shows a false pair there, and it still finds most half-size resizes
(at 0.997 / 0.998: tiny-vit 91% / 87%, tiny-vit-s 82% / 79%; a crop keeping 98% of each
side: about half). tiny-rn packs
the demo's distinct images closer (up to 0.9992; 15 false pairs at 0.997): with it use
``--threshold 0.9995``. See README "clipindex dedup" for the measured shares.

Example
-------
>>> pairs = find_duplicates(open_index("indexes/demo", "tiny-vit"))  # doctest: +SKIP
>>> pairs[["kind", "cosine", "row_id_a", "row_id_b", "leakage"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import DataError, UserInputError

__all__ = ["DEFAULT_THRESHOLD", "PAIR_COLUMNS", "file_sha256", "find_duplicates",
           "pairs_to_json"]

DEFAULT_THRESHOLD = 0.9975
PAIR_COLUMNS: tuple[str, ...] = ("kind", "cosine", "row_id_a", "file_a", "split_a",
                                  "row_id_b", "file_b", "split_b", "leakage")
_FIRST_K = 16
#: Stored images read (and hashed) per batch: one batch's remote reads go out together.
_HASH_BATCH = 64
log = logging.getLogger(__name__)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str | None:
    """sha256 of a file's bytes (None when it cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _digests(stored: Any, files: list[str]) -> list[str | None]:
    """sha256 of each stored image (None when unreadable): local files streamed, other
    images (URLs, shard members, parquet cells) read a batch at a time."""
    local = [stored.local_path(f) for f in files]
    if all(p is not None for p in local):
        return [file_sha256(p) for p in local]
    out: list[str | None] = []
    for i in range(0, len(files), _HASH_BATCH):
        for data in stored.read_many(files[i:i + _HASH_BATCH]):
            out.append(None if isinstance(data, BaseException)
                       else hashlib.sha256(data).hexdigest())
    return out


def _exact_pairs(images: pd.DataFrame, stored: Any
                 ) -> tuple[set[tuple[int, int]], list[str]]:
    """Pairs of rows whose files have the same bytes, and the files that could not be
    read (those take part in no exact pair)."""
    by_hash: dict[str, list[int]] = {}
    unreadable: list[str] = []
    files = [str(f) for f in images["file"].tolist()]
    for rid, file, digest in zip(images["row_id"].tolist(), files, _digests(stored, files),
                                 strict=True):
        if digest is not None:
            by_hash.setdefault(digest, []).append(int(rid))
        else:
            unreadable.append(file)
    pairs = {(a, b) for rows in by_hash.values() for i, a in enumerate(rows)
             for b in rows[i + 1:]}
    return pairs, unreadable


def _say_unreadable(unreadable: list[str], n: int, root: Any, require_files: bool) -> None:
    """No file readable (a wrong root): an error; some unreadable: one warning, since
    their exact copies cannot be found. Neither without ``require_files`` (the caller
    reads the count)."""
    if not unreadable or not require_files:
        return
    fix = ("give --root DATA_DIR, the folder the store's file paths are relative to "
           "(the one it was built from)")
    if len(unreadable) == n:
        raise DataError(f"none of the {n} image files could be read under {root} (e.g. "
                        f"{unreadable[0]}), so no exact duplicate can be found: {fix}")
    log.warning("%d of %d image files could not be read under %s (e.g. %s): exact "
                "duplicates were not checked for them (near duplicates were); %s",
                len(unreadable), n, root, unreadable[0], fix)


def _near_pairs(index: Any, threshold: float) -> dict[tuple[int, int], float]:
    """Pairs (a < b) with cosine >= threshold, through the store's index."""
    valid = np.flatnonzero(np.asarray(index.image_valid, bool))
    n = len(valid)
    found: dict[tuple[int, int], float] = {}
    todo, k = valid, min(_FIRST_K, n)
    while len(todo) and k > 1:
        scores, ids = index.search(np.asarray(index.image_vectors)[todo], k)
        for q, srow, irow in zip(todo.tolist(), scores, ids, strict=True):
            for s, j in zip(srow.tolist(), irow.tolist(), strict=True):
                if j >= 0 and j != q and s >= threshold:
                    found[(min(q, j), max(q, j))] = float(s)
        if k >= n:
            break
        todo = todo[scores[:, -1] >= threshold]  # neighbourhood full: look wider
        k = min(2 * k, n)
    return found


def find_duplicates(index: Any, *, threshold: float = DEFAULT_THRESHOLD,
                    root: str | os.PathLike[str] | None = None,
                    require_files: bool = True,
                    storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Exact and near-duplicate pairs of a store's images (:data:`PAIR_COLUMNS`).

    ``root`` is the data root the table's ``file`` paths are relative to (default: the
    one ``dataset.json`` records). Exact pairs come first, then by cosine (highest first).
    Files that cannot be read under ``root`` are hashed by no one, so they can be in no
    exact pair: their number is ``frame.attrs["unreadable_files"]`` and a warning (the
    CLI's ``Warning:`` line) says so; when none of them can be read it is a
    :class:`~clipindex.errors.DataError` (a wrong root). With ``require_files=False``
    neither: the caller reads the count and says it (``bench`` warns once).
    Images are read through :class:`~clipindex.sources.StoredImages`: a store built from
    object storage (``root`` may be a URL), webdataset shards or an image-bytes parquet
    is hashed from the same bytes it was encoded from (``storage_options``: fsspec
    options on top of the non-secret ones ``dataset.json`` records).
    """
    if isinstance(threshold, bool) or not -1.0 <= float(threshold) <= 1.0:
        raise UserInputError(f"the cosine threshold must be in [-1, 1], got {threshold!r}")
    from clipindex.sources import StoredImages

    images = index.images
    stored = StoredImages.of(index, root, storage_options)
    base: Any = stored.root
    if not stored.remote and not Path(base).is_dir():
        raise UserInputError(f"data root {base} is not a folder: give --root DATA_DIR to "
                             "hash the image files")
    removed = np.asarray(getattr(index, "image_removed", np.zeros(len(images), bool)), bool)
    live = images[~removed] if removed.any() else images  # removed rows are in no pair
    exact, unreadable = _exact_pairs(live, stored)
    _say_unreadable(unreadable, len(live), base, require_files)
    near = _near_pairs(index, float(threshold))
    vectors = np.asarray(index.image_vectors)
    by_id = images.set_index("row_id")
    rows = []
    for a, b in sorted(exact | set(near)):
        cos = near.get((a, b), float(vectors[a] @ vectors[b]))
        ra, rb = by_id.loc[a], by_id.loc[b]
        sa, sb = str(ra["split"]), str(rb["split"])
        rows.append({"kind": "exact" if (a, b) in exact else "near", "cosine": cos,
                     "row_id_a": a, "file_a": str(ra["file"]), "split_a": sa,
                     "row_id_b": b, "file_b": str(rb["file"]), "split_b": sb,
                     "leakage": {sa, sb} == {"support", "test"}})
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    if len(frame):
        frame = frame.sort_values(["kind", "cosine", "row_id_a", "row_id_b"],
                                  ascending=[True, False, True, True], kind="stable")
    frame = frame.reset_index(drop=True)
    frame.attrs["unreadable_files"] = len(unreadable)
    return frame


def pairs_to_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``clipindex dedup --json``: one object per pair, ``kind``, ``cosine``,
    ``leakage`` and the two rows as ``a`` / ``b`` (``row_id``, ``file``, ``split``)."""
    out = []
    for r in frame.itertuples(index=False):
        out.append({"kind": r.kind, "cosine": round(float(r.cosine), 6),
                    "leakage": bool(r.leakage),
                    "a": {"row_id": int(r.row_id_a), "file": r.file_a, "split": r.split_a},
                    "b": {"row_id": int(r.row_id_b), "file": r.file_b, "split": r.split_b}})
    return out
