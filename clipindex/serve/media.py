"""The images a server shows: only files the store's tables name, inside the data root.

A request names a row id (an integer, checked against the table; a row removed from
the store by ``clipindex add`` is a 404 like one that never existed); the file is the
table's ``file`` of that row joined to the data root, resolved (symlinks included) and
refused unless it stays inside the root. No string from a request is ever part of a
path. Thumbnails are made on the fly through :func:`clipindex.encode.load_rgb` (the
decoder the store's build used) and kept in a bounded in-memory cache.
"""

from __future__ import annotations

import io
import mimetypes
from pathlib import Path

from clipindex.serve.errors import ApiError
from clipindex.serve.state import LRU, Snapshot

__all__ = ["IMAGE_TYPES", "Thumbnails", "image_file", "live_row", "media_type"]

#: Media types a stored image may be served as; anything else goes as a download.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp",
                         "image/tiff"})


def live_row(snapshot: Snapshot, row_id: int) -> None:
    """A 404 :class:`ApiError` unless image row ``row_id`` exists and was not removed
    from the store (tombstoned by ``clipindex add``: no route serves it)."""
    first = snapshot.first
    n = len(first.images)
    if not 0 <= row_id < n:
        raise ApiError(404, f"No image row {row_id}: row ids are 0..{n - 1}.")
    removed = getattr(first, "image_removed", None)
    if removed is not None and bool(removed[row_id]):
        raise ApiError(404, f"Image row {row_id} was removed from the store.")


def image_file(snapshot: Snapshot, row_id: int) -> Path:
    """The file of image row ``row_id``; a 404 :class:`ApiError` for anything else (a
    row out of range or removed, a file outside the data root)."""
    images = snapshot.first.images
    live_row(snapshot, row_id)
    if snapshot.data_root is None:
        raise ApiError(404, "The store names no data root; start serve with --root DATA_DIR.")
    root = snapshot.data_root
    path = (root / str(images["file"].iloc[row_id])).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ApiError(404, f"The file of image row {row_id} is not in the data root.")
    return path


def media_type(path: Path) -> str:
    """The media type to serve ``path`` as (from its name; never sniffed by browsers)."""
    guess = mimetypes.guess_type(path.name)[0]
    return guess if guess in IMAGE_TYPES else "application/octet-stream"


class Thumbnails:
    """JPEG thumbnails (longest side ``size``), cached by file, mtime and size."""

    def __init__(self, size: int, capacity: int) -> None:
        self.size = size
        self._cache = LRU(capacity)

    def get(self, path: Path) -> bytes:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        data = self._cache.get(key)
        if data is None:
            data = self._make(path)
            self._cache.put(key, data)
        return data

    def _make(self, path: Path) -> bytes:
        from clipindex.encode import DecodeError, load_rgb

        try:
            img = load_rgb(path, target_size=self.size)
        except DecodeError as exc:
            raise ApiError(404, f"The image cannot be decoded: {exc.reason}.") from None
        img.thumbnail((self.size, self.size))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
        return out.getvalue()
