"""Uploaded query images: written under a private temporary name, checked, then removed.

The body is already bounded (:class:`~clipindex.serve.guards.BodyLimit`). The file is
written to a server-chosen name in a private temporary folder (the client's file name
is never used on disk), its header is read by :func:`clipindex.encode.identify` (a
non-image is a 415), and an image that declares more than ``max_pixels`` pixels is
refused before any pixel is decoded (the decompression-bomb guard, 413; PIL's own
``DecompressionBombError`` lands there too).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clipindex.serve.errors import ApiError

__all__ = ["upload_file", "upload_label"]


def upload_label(filename: str | None) -> str:
    """A display name for an upload in results (never used as a path)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:100]
    return f"upload:{name}" if name else "upload"


def _check(path: Path, max_pixels: int) -> None:
    from PIL import Image

    from clipindex.encode import identify

    reason = identify(path)
    if reason == "decompression bomb":
        raise ApiError(413, "The image declares too many pixels (a decompression bomb).")
    if reason is not None:
        raise ApiError(415, f"The upload is not an image we can read: {reason}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            width, height = img.size
    if width * height > max_pixels:
        raise ApiError(413, f"The image declares {width}x{height} pixels, over the limit of "
                       f"{max_pixels:,} (a decompression-bomb guard).")


@contextmanager
def upload_file(data: bytes, max_pixels: int) -> Iterator[Path]:
    """A checked temporary file holding ``data``, removed when the block ends."""
    if not data:
        raise ApiError(422, "The upload is empty: send an image in the multipart field 'image'.")
    fd, name = tempfile.mkstemp(prefix="clipindex-serve-", suffix=".upload")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        _check(path, max_pixels)
        yield path
    finally:
        path.unlink(missing_ok=True)
