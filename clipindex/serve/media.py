"""The images a server shows: only files the store's tables name, inside the data root.

A request names a row id (an integer, checked against the table; a row removed from
the store by ``clipindex add`` is a 404 like one that never existed); the file is the
table's ``file`` of that row joined to the data root, resolved (symlinks included) and
refused unless it stays inside the root. No string from a request is ever part of a
path. A store built from object storage, webdataset shards or an image-bytes parquet
has no local file: its row's bytes come from
:class:`~clipindex.sources.StoredImages` (the one reader of stored images; its URL or
shard member is the table's, joined to the recorded root, never a request's string).
Thumbnails are made on the fly through :func:`clipindex.encode.load_rgb` /
:func:`~clipindex.encode.decode_rgb_bytes` (the decoder the store's build used) and kept
in a bounded in-memory cache.
"""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipindex.serve.errors import ApiError
from clipindex.serve.state import LRU, Snapshot

__all__ = ["IMAGE_TYPES", "Thumbnails", "image_bytes", "image_file", "live_row",
           "media_type", "sniffed_type"]

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


def image_file(snapshot: Snapshot, row_id: int) -> Path | None:
    """The file of image row ``row_id``, or None when the store's images are not local
    files (read them with :func:`image_bytes`); a 404 :class:`ApiError` for anything else
    (a row out of range or removed, a file outside the data root)."""
    images = snapshot.first.images
    live_row(snapshot, row_id)
    if snapshot.images is not None and snapshot.images.remote:
        return None
    if snapshot.data_root is None:
        raise ApiError(404, "The store names no data root; start serve with --root DATA_DIR.")
    root = snapshot.data_root
    path = (root / str(images["file"].iloc[row_id])).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ApiError(404, f"The file of image row {row_id} is not in the data root.")
    return path


def image_bytes(snapshot: Snapshot, row_id: int) -> tuple[bytes, str]:
    """``(bytes, cache key)`` of image row ``row_id`` of a store whose images are not
    local files; a 404 :class:`ApiError` when the row is not live or its bytes cannot be
    read (the reason says why, without credentials: options are never echoed)."""
    from clipindex.errors import DataError

    live_row(snapshot, row_id)
    table = snapshot.first.images
    file = str(table["file"].iloc[row_id])
    tag = str(table["etag"].iloc[row_id]) if "etag" in table.columns else ""
    try:
        return snapshot.images.read(file), f"{snapshot.images.root}|{file}|{tag}"
    except DataError as exc:
        raise ApiError(404, f"The image of row {row_id} cannot be read: {exc}.") from None


_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
            "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff"}


def sniffed_type(data: bytes) -> str:
    """The media type of image bytes from their header (a shard member or a parquet cell
    has no file name); anything PIL does not recognise goes as a download."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return _FORMATS.get(str(img.format), "application/octet-stream")
    except Exception:  # noqa: BLE001 - not an image: a download
        return "application/octet-stream"


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
        from clipindex.encode import load_rgb

        st = path.stat()
        return self._cached((str(path), st.st_mtime_ns, st.st_size),
                            lambda: load_rgb(path, target_size=self.size))

    def of_row(self, snapshot: Snapshot, row_id: int) -> bytes:
        """The thumbnail of image row ``row_id``, wherever its image is kept."""
        from clipindex.encode import decode_rgb_bytes

        path = image_file(snapshot, row_id)
        if path is not None:
            return self.get(path)
        data, key = image_bytes(snapshot, row_id)
        return self._cached(("stored", key),
                            lambda: decode_rgb_bytes(data, target_size=self.size))

    def _cached(self, key: tuple[Any, ...], decode: Callable[[], Any]) -> bytes:
        data = self._cache.get(key)
        if data is None:
            data = self._make(decode)
            self._cache.put(key, data)
        return data

    def _make(self, decode: Callable[[], Any]) -> bytes:
        from clipindex.encode import DecodeError

        try:
            img = decode()
        except DecodeError as exc:
            raise ApiError(404, f"The image cannot be decoded: {exc.reason}.") from None
        img.thumbnail((self.size, self.size))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
        return out.getvalue()
