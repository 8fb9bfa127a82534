"""Query images: the few files a search or a classification is asked about.

The one route by which search and classify turn image files into vectors, so neither
decodes an image itself (``tests/test_architecture.py``):

- :func:`check_query_images` reads each file's *header* only (no pixel is decoded), so a
  missing, empty or unrecognised file fails before any model is loaded;
- :func:`encode_query_images` encodes them with one ``encoder.encode_images`` call
  (in-process, no progress bar): each file is decoded exactly once per encoder, by the
  very route the store's own images took (the same draft scale and pixels), so a stored
  image queried by its file finds itself with cosine 1.

A file that fails either step raises :class:`QueryImageError` (a ``DataError``) naming
the file and the decoder's short reason.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clipindex.encode.decode import identify
from clipindex.errors import DataError

__all__ = ["QueryImageError", "check_query_images", "encode_query_images"]

QueryPaths = Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None


class QueryImageError(DataError):
    """A query image that cannot be read; ``path`` and ``reason`` (short) are kept.

    Examples
    --------
    >>> str(QueryImageError("q.jpg", "missing file"))
    "Cannot read query image 'q.jpg': missing file."
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"Cannot read query image {self.path!r}: {reason}.")


class ImageEncoder(Protocol):
    """What :func:`encode_query_images` needs: :meth:`Encoder.encode_images`."""

    def encode_images(
        self, files: Sequence[str], *, workers: int | None = ..., progress: bool = ...
    ) -> tuple[np.ndarray, Any]: ...


def check_query_images(paths: QueryPaths) -> list[Path]:
    """The query image paths (one path or several; ``None`` is none), each checked from
    its header so a bad one fails before any model loads.

    Raises
    ------
    QueryImageError
        The first path that is a folder, missing, empty or not an image PIL recognises.

    Examples
    --------
    >>> check_query_images(None)
    []
    """
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    checked = []
    for path in map(Path, paths):
        if path.is_dir():
            raise QueryImageError(path, "it is a folder")
        reason = identify(path)
        if reason is not None:
            raise QueryImageError(path, reason)
        checked.append(path)
    return checked


def encode_query_images(encoder: ImageEncoder, paths: QueryPaths) -> np.ndarray:
    """Encode query image files: ``(n, d)`` float32 unit vectors, rows in ``paths`` order.

    ``encoder`` is an :class:`~clipindex.encode.Encoder` (or anything with its
    ``encode_images``; a store's ``BackboneIndex.encoder()``). The files are checked
    (:func:`check_query_images`) and then encoded in one ``encode_images(files,
    workers=0, progress=False)`` call: each file is decoded exactly once, as a build
    decodes it, so the vectors equal the stored ones of the same files.

    Raises
    ------
    QueryImageError
        The first file that cannot be read or decoded (with the decoder's reason).

    Examples
    --------
    >>> vectors = encode_query_images(load_encoder("tiny-vit"), ["q.jpg"])  # doctest: +SKIP
    >>> vectors.shape  # doctest: +SKIP
    (1, 64)
    """
    files = check_query_images(paths)
    if not files:
        raise DataError("No query image to encode: give at least one image file.")
    vectors, skipped = encoder.encode_images([str(p) for p in files], workers=0,
                                             progress=False)
    failed = sorted((int(item[0]), str(item[-1])) for item in skipped or ())
    if failed:
        position, reason = failed[0]
        raise QueryImageError(files[position], reason)
    return np.asarray(vectors, dtype=np.float32)
