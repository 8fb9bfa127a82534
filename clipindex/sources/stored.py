"""The bytes of a stored image, wherever the store's dataset keeps it.

Every place that reads an image a store already holds (report thumbnails, ``dedup``'s
exact hashes and the audit's, ``serve``'s ``/images/ROW`` and ``/thumbs/ROW``, Grad-CAM
of stored rows) goes through :class:`StoredImages`, made from the store's
``dataset.json`` (``root``, ``source``, ``config``). The table's ``file`` of a row is:

- a path under a local root (COCO, class folders, manifests): read with ``open``;
  :meth:`StoredImages.local_path` gives it to callers that want a file (serve's
  ``FileResponse``, its symlink check);
- a path under a URL root (``root: s3://...``, remote manifests/folders/COCO): read through
  fsspec, one batch at a time (:class:`~clipindex.sources.storage.FileReader`);
- ``<shard>#<key>`` of webdataset shards: the image member's byte range, found by listing
  that shard once (headers only when the shard is local or seekable; the listing is kept
  for the object's lifetime), then a range read
  (:class:`~clipindex.sources.storage.RangeReader`);
- ``<file>#<row>`` of an image-bytes parquet: that row's cell
  (:class:`~clipindex.sources.parquet.ParquetReader`).

Storage options: ``dataset.json`` records the build's options with every secret replaced
by ``***`` (:func:`~clipindex.sources.storage.redact`); those placeholders are dropped
here, so an endpoint recorded at build is used again while credentials come from the
environment (``AWS_ACCESS_KEY_ID``, ...) or the caller's ``storage_options``.

Example
-------
>>> images = StoredImages.of(open_index("indexes/demo", "tiny-vit"))  # doctest: +SKIP
>>> images.read(images.files[0])[:3]  # doctest: +SKIP
b'\\xff\\xd8\\xff'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipindex.errors import DataError
from clipindex.sources.storage import REDACTED, FileReader, RangeReader, is_url, join

__all__ = ["StoredImages", "usable_options"]


def usable_options(recorded: Mapping[str, Any] | None,
                   given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Recorded storage options without their redacted secrets, ``given`` merged on top
    (nested options such as ``client_kwargs`` key by key).

    Examples
    --------
    >>> usable_options({"endpoint_url": "h", "secret": "***",
    ...                 "client_kwargs": {"region": "x", "session_token": "***"}},
    ...                {"secret": "s", "client_kwargs": {"session_token": "t"}})
    {'endpoint_url': 'h', 'client_kwargs': {'region': 'x', 'session_token': 't'}, 'secret': 's'}
    """
    def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: merge(v, {}) if isinstance(v, Mapping) else v
               for k, v in base.items() if v != REDACTED}
        for k, v in top.items():
            out[k] = merge(out[k], v) if isinstance(v, Mapping) and \
                isinstance(out.get(k), Mapping) else v
        return out

    return merge(recorded or {}, given or {})


class StoredImages:
    """Reads a store's images by their table ``file`` (see the module docstring).

    Parameters
    ----------
    info : dict
        The store's ``dataset.json`` (``BackboneIndex.dataset_info``).
    root : str or Path, optional
        The data root to read under instead of the recorded one (``--root``).
    storage_options : dict, optional
        fsspec options on top of the recorded ones (credentials, endpoint).
    """

    def __init__(self, info: Mapping[str, Any], root: str | os.PathLike[str] | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        config = dict(info.get("config") or {})
        self.source = str(info.get("source") or "")
        chosen = os.fspath(root) if root is not None else str(info.get("root") or ".")
        if chosen.startswith("file://"):
            chosen = chosen[len("file://"):]
        self.root: str = chosen.rstrip("/") if is_url(chosen) else \
            str(Path(chosen).expanduser())
        self.options = usable_options(config.get("storage_options"), storage_options)
        self._config = config
        self._reader: Any = None

    @classmethod
    def of(cls, index: Any, root: str | os.PathLike[str] | None = None,
           storage_options: Mapping[str, Any] | None = None) -> StoredImages:
        """The stored images of an opened store (``open_index``) or a loaded dataset."""
        info = getattr(index, "dataset_info", None) or getattr(index, "info", None) or {}
        return cls(info, root, storage_options)

    @property
    def remote(self) -> bool:
        """Whether the images are not plain local files (URLs, shard members, parquet)."""
        return self.source in ("webdataset", "parquet") or is_url(self.root)

    def local_path(self, file: str) -> Path | None:
        """The local file of ``file`` (None when the images are not local files)."""
        if self.remote:
            return None
        path = Path(file)
        return path if path.is_absolute() else Path(self.root) / path

    def location(self, file: str) -> str:
        """Where ``file`` is read from, for messages."""
        if self.source in ("webdataset", "parquet"):
            return f"{file} (under {self.root})"
        return str(self.local_path(file) or join(self.root, file))

    def read(self, file: str) -> bytes:
        """The bytes of one stored image; a missing or unreadable one is a one-line
        :class:`~clipindex.errors.DataError`."""
        got = self.read_many([file])[0]
        if isinstance(got, BaseException):
            if isinstance(got, FileNotFoundError | KeyError):
                raise DataError(f"{self.location(file)} does not exist") from None
            text = str(got).strip().splitlines()
            raise DataError(f"cannot read {self.location(file)}: "
                            f"{text[0] if text else type(got).__name__}") from None
        return got

    def read_many(self, files: Sequence[str]) -> list[bytes | BaseException]:
        """The bytes of each file (or the exception its read raised), in order; remote
        reads of one call go out together (concurrent, bounded)."""
        files = [str(f) for f in files]
        if not self.remote:
            return [_read_file(self.local_path(f)) for f in files]
        return self._image_reader(files).read_many(files)

    def _image_reader(self, files: Sequence[str]) -> Any:
        if self.source == "webdataset":
            if self._reader is None:
                self._reader = _ShardMembers(self._config, self.root, self.options)
            self._reader.list_for(files)
            return self._reader.ranges
        if self._reader is None:
            if self.source == "parquet":
                from clipindex.sources.parquet import parquet_reader

                self._reader = parquet_reader(join(self.root, str(self._config["parquet"])),
                                              str(self._config.get("image_column") or "image"),
                                              self.options)
            else:
                self._reader = FileReader(self.root, self.options)
        return self._reader


def _read_file(path: Path | None) -> bytes | BaseException:
    try:
        with open(path, "rb") as fh:  # type: ignore[arg-type]
            return fh.read()
    except OSError as exc:
        return exc


class _ShardMembers:
    """Byte spans of shard members, each shard listed once, on the first read of one of
    its members."""

    def __init__(self, config: Mapping[str, Any], root: str, options: dict[str, Any]) -> None:
        from clipindex.sources.shards import shard_locations

        self.base = shard_locations(str(config.get("webdataset") or ""), root)[1]
        self.options = options
        self.listed: set[str] = set()
        self.ranges = RangeReader({}, options)

    def list_for(self, files: Sequence[str]) -> None:
        from clipindex.sources.shards import IMAGE_MEMBERS, list_shard

        for file in files:
            name = file.rsplit("#", 1)[0]
            if name in self.listed or "#" not in file:
                continue
            self.listed.add(name)
            shard = join(self.base, name)
            try:
                samples = list(list_shard(shard, self.options))
            except (OSError, DataError, ValueError):
                continue  # its members read as missing
            for sample in samples:
                ext = next((e for e in IMAGE_MEMBERS if e in sample), None)
                if ext is not None:
                    offset, size = sample[ext][:2]
                    self.ranges.spans[f"{name}#{sample['__key__']}"] = (shard, offset, size)
