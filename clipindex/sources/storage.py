"""Where the bytes live: local paths and fsspec URLs (``s3://``, ``gs://``, ``http(s)://``,
``file://``), and the readers the encoder gets bytes from.

A location is a string: a local path, or a URL with a scheme. URLs go through fsspec
(``fsspec.core.url_to_fs``) with the dataset's ``storage_options`` (and whatever the
filesystem reads from the environment: s3fs reads ``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ...). Local paths are read with plain ``open``.

An image reader is what a source hands the encoder for rows that are not local files:
a picklable object with ``read_many(locators) -> [bytes | Exception]`` that reads one
batch at once, in parallel and bounded (an async filesystem's concurrent requests, at
most :data:`MAX_CONCURRENCY` at a time; no per-file ``stat`` before a read). Three kinds:

- :class:`FileReader`: one object per image under a root (a URL root; its ``file`` column
  is relative to it, or a URL of its own);
- :class:`RangeReader`: an image is a byte range of a bigger object (a webdataset tar
  member at the offset recorded when the shards were listed); neighbouring ranges of one
  object are merged into one request;
- ``parquet.ParquetReader``: an image is a cell of a parquet file's image column.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from clipindex.errors import ClipindexError, DataError, MissingExtraError

__all__ = [
    "remote_errors",
    "MAX_CONCURRENCY",
    "REDACTED",
    "REMOTE_INSTALL",
    "FileReader",
    "ImageReader",
    "RangeReader",
    "ReadAhead",
    "expand_braces",
    "filesystem",
    "is_url",
    "join",
    "object_identity",
    "read_bytes",
    "redact",
]

#: Requests in flight at once per ``read_many`` call (one batch of images).
MAX_CONCURRENCY = 32
REMOTE_INSTALL = "pip install 'clipindex[remote]'"
#: What a secret storage option is recorded as in ``dataset.json``.
REDACTED = "***"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET = re.compile(r"secret|key|token|password|session|credential", re.IGNORECASE)


@runtime_checkable
class ImageReader(Protocol):
    """What a source hands the encoder for images that are not local files."""

    def read_many(self, files: Sequence[str]) -> list[bytes | BaseException]:
        """The bytes of each file (or the exception its read raised), in order."""
        ...


def is_url(location: Any) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a local path.

    Examples
    --------
    >>> is_url("s3://bucket/a.jpg"), is_url("data/a.jpg")
    (True, False)
    """
    return isinstance(location, str) and bool(_SCHEME.match(location))


def join(root: str, rel: str) -> str:
    """``rel`` under ``root`` (a URL or a local path); a URL ``rel`` stands alone.

    Examples
    --------
    >>> join("s3://b/data/", "cat/1.jpg")
    's3://b/data/cat/1.jpg'
    """
    if is_url(rel) or os.path.isabs(rel):
        return rel
    if is_url(root):
        return root.rstrip("/") + "/" + rel.lstrip("/")
    return os.path.join(root, rel)


def redact(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Storage options as recorded in ``dataset.json``: secrets replaced by ``***``, at
    any depth (``client_kwargs: {aws_secret_access_key: ...}`` too).

    Examples
    --------
    >>> redact({"endpoint_url": "http://h", "client_kwargs": {"aws_session_token": "t"}})
    {'endpoint_url': 'http://h', 'client_kwargs': {'aws_session_token': '***'}}
    """
    def one(key: Any, value: Any) -> Any:
        if _SECRET.search(str(key)):
            return REDACTED
        return redact(value) if isinstance(value, Mapping) else value

    return {str(k): one(k, v) for k, v in (options or {}).items()}


def filesystem(url: str, options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` of a URL, or a one-line error naming the
    extra that installs the protocol's package."""
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec comes with datasets/ray
        raise MissingExtraError(f"reading {url} needs fsspec: {REMOTE_INSTALL}") from exc
    try:
        return fsspec.core.url_to_fs(url, **dict(options or {}))
    except ImportError as exc:
        raise MissingExtraError(f"reading {url} needs {exc.name or 'a filesystem package'}: "
                                f"{REMOTE_INSTALL}") from exc
    except (ValueError, TypeError) as exc:
        raise DataError(f"cannot open {url}: {str(exc).splitlines()[0]}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Any failure of the object store behind ``url`` (no credentials, access denied, an
    unreachable endpoint: botocore's and gcsfs's own exceptions, not OSErrors) as one
    ``DataError`` line; clipindex's own errors pass as they are."""
    try:
        yield
    except ClipindexError:
        raise
    except Exception as exc:  # noqa: BLE001 - a store's SDK raises its own classes
        raise DataError(f"cannot reach {url}: {_one_line(exc)}") from None


def read_bytes(location: str, options: Mapping[str, Any] | None = None) -> bytes:
    """The whole content of a local file or URL; any failure is a one-line DataError."""
    try:
        if not is_url(location):
            with open(os.path.expanduser(location), "rb") as fh:
                return fh.read()
        fs, path = filesystem(location, options)
        return fs.cat_file(path)
    except FileNotFoundError:
        raise DataError(f"{location} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {location}: {_one_line(exc)}") from None


def expand_braces(pattern: str) -> list[str]:
    """``shards/{00000..00009}.tar`` → ten names (webdataset's brace notation).

    Examples
    --------
    >>> expand_braces("s/{0..2}.tar")
    ['s/0.tar', 's/1.tar', 's/2.tar']
    """
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def object_identity(locations: Sequence[str], options: Mapping[str, Any] | None = None
                    ) -> dict[str, tuple[int, str]]:
    """``{location: (size in bytes, ETag or mtime)}``: what identifies the content of each
    object besides its name. Remote objects are listed folder by folder (one listing per
    folder, not one request per object); local files are ``stat``-ed. Missing: absent."""
    out: dict[str, tuple[int, str]] = {}
    remote = [loc for loc in locations if is_url(loc)]
    for loc in locations:
        if not is_url(loc):
            try:
                st = os.stat(loc)
            except OSError:
                continue
            out[loc] = (int(st.st_size), f"mtime:{st.st_mtime_ns}")
    by_folder: dict[str, list[str]] = {}
    for loc in remote:
        by_folder.setdefault(loc.rsplit("/", 1)[0], []).append(loc)
    for folder, members in by_folder.items():
        fs, _ = filesystem(folder, options)
        listing = _listing(fs, folder, members)
        for loc in members:
            entry = listing.get(fs._strip_protocol(loc))
            if entry is not None:
                out[loc] = (int(entry.get("size") or 0), _tag(entry))
    return out


def _listing(fs: Any, folder: str, members: list[str]) -> dict[str, dict[str, Any]]:
    try:
        return {e["name"].rstrip("/"): e for e in fs.ls(folder, detail=True)}
    except (OSError, NotImplementedError, ValueError):  # http: no listing, one info each
        found = {}
        for loc in members:
            try:
                found[fs._strip_protocol(loc)] = fs.info(loc)
            except (OSError, ValueError):
                pass
        return found


def _tag(entry: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified",
                "created"):
        if entry.get(key) not in (None, ""):
            return f"{key.lower()}:{str(entry[key]).strip(chr(34))}"
    return ""


# ----------------------------------------------------------------------------- readers
class ReadAhead:
    """One batch of reads ahead of the decoder: while a batch is decoded, the next one
    (the caller's guess) is read in a background thread, so a remote read's latency is
    hidden behind decoding instead of added to it.

    Reads never overlap (a reader need not be thread-safe: a parquet file, a cache): a
    read waits for the read-ahead in flight; a guess that was wrong costs one batch read
    for nothing. Picklable (the thread is made on first use, in the process that reads).
    """

    def __init__(self, reader: ImageReader) -> None:
        self.reader = reader
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[list[str], Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"reader": self.reader, "_pool": None, "_pending": None}

    def read_many(self, files: Sequence[str], ahead: Sequence[str] = ()
                  ) -> list[bytes | BaseException]:
        """``reader.read_many(files)``, then start reading ``ahead``."""
        files = list(files)
        got: list[bytes | BaseException] | None = None
        if self._pending is not None:
            names, future = self._pending
            self._pending = None
            done = future.result()  # also when unused: reads never overlap
            got = done if names == files else None
        if got is None:
            got = self.reader.read_many(files)
        if ahead:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="clipindex-read-ahead")
            self._pending = (list(ahead), self._pool.submit(self.reader.read_many,
                                                            list(ahead)))
        return got


class FileReader:
    """Images that are whole objects: ``read_many(files)`` reads ``join(root, file)``.

    Remote files of one batch are fetched with one ``fs.cat`` call (concurrent requests
    on async filesystems such as s3fs and http, :data:`MAX_CONCURRENCY` at a time);
    local files with ``open``."""

    def __init__(self, root: str, options: Mapping[str, Any] | None = None) -> None:
        self.root = root
        self.options = dict(options or {})

    def locate(self, file: str) -> str:
        return join(self.root, file)

    def read_many(self, files: Sequence[str]) -> list[bytes | BaseException]:
        urls = [self.locate(f) for f in files]
        out: list[bytes | BaseException] = [b""] * len(urls)
        remote = [i for i, u in enumerate(urls) if is_url(u)]
        for i, u in enumerate(urls):
            if not is_url(u):
                out[i] = _read_local(u)
        if remote:
            fs, _ = filesystem(urls[remote[0]], self.options)
            got = _cat(fs, [urls[i] for i in remote])
            for i, data in zip(remote, got, strict=True):
                out[i] = data
        return out


def _read_local(path: str) -> bytes | BaseException:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        return exc


def _cat(fs: Any, urls: list[str]) -> list[bytes | BaseException]:
    """One batched ``cat``: concurrent on async filesystems, a bounded thread pool else."""
    paths = [fs._strip_protocol(u) for u in urls]
    if getattr(fs, "async_impl", False):
        got = fs.cat(paths, on_error="return", batch_size=MAX_CONCURRENCY)
        return [got.get(p, FileNotFoundError(p)) for p in paths]

    def one(path: str) -> bytes | BaseException:
        try:
            return fs.cat_file(path)
        except Exception as exc:  # noqa: BLE001 - a failed read is the row's skip reason
            return exc

    with ThreadPoolExecutor(min(MAX_CONCURRENCY, len(paths))) as pool:
        return list(pool.map(one, paths))


class RangeReader:
    """Images that are byte ranges of bigger objects (webdataset tar members).

    ``spans`` maps a locator to ``(object location, offset, size)``. One batch's ranges
    are grouped by object and neighbours (gap < ``max_gap`` bytes) merged, so a batch of
    consecutive members of one shard is a single range request."""

    def __init__(self, spans: Mapping[str, tuple[str, int, int]],
                 options: Mapping[str, Any] | None = None, max_gap: int = 1 << 16) -> None:
        self.spans = dict(spans)
        self.options = dict(options or {})
        self.max_gap = int(max_gap)

    def read_many(self, locators: Sequence[str]) -> list[bytes | BaseException]:
        out: list[bytes | BaseException] = [b""] * len(locators)
        groups: dict[str, list[tuple[int, int, int]]] = {}
        for i, loc in enumerate(locators):
            span = self.spans.get(loc)
            if span is None:
                out[i] = KeyError(f"{loc} is not a member of the listed shards")
                continue
            groups.setdefault(span[0], []).append((span[1], span[2], i))
        for obj, members in groups.items():
            blocks = _merge(sorted(members), self.max_gap)
            try:
                datas = self._ranges(obj, [(a, b) for a, b, _ in blocks])
            except Exception as exc:  # noqa: BLE001 - every member of the object is skipped
                datas = [exc] * len(blocks)
            for (start, _, parts), data in zip(blocks, datas, strict=True):
                for offset, size, i in parts:
                    out[i] = data if isinstance(data, BaseException) else \
                        _member(data, offset - start, size)
        return out

    def _ranges(self, obj: str, ranges: list[tuple[int, int]]
                ) -> list[bytes | BaseException]:
        if not is_url(obj):
            with open(obj, "rb") as fh:
                return [_pread(fh, a, b) for a, b in ranges]
        fs, path = filesystem(obj, self.options)
        if getattr(fs, "async_impl", False):
            return list(fs.cat_ranges([path] * len(ranges), [a for a, _ in ranges],
                                      [b for _, b in ranges], on_error="return",
                                      batch_size=MAX_CONCURRENCY))
        return [fs.cat_file(path, start=a, end=b) for a, b in ranges]


def _pread(fh: Any, start: int, stop: int) -> bytes:
    fh.seek(start)
    return fh.read(stop - start)


def _member(data: bytes, at: int, size: int) -> bytes | BaseException:
    piece = data[at:at + size]
    if len(piece) != size:
        return OSError(f"truncated shard: {len(piece)} of {size} bytes")
    return piece


def _merge(members: Iterable[tuple[int, int, int]], max_gap: int
           ) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Sorted ``(offset, size, index)`` → ``(start, stop, members)`` blocks."""
    blocks: list[tuple[int, int, list[tuple[int, int, int]]]] = []
    for offset, size, i in members:
        if blocks and offset - blocks[-1][1] <= max_gap:
            start, stop, parts = blocks[-1]
            blocks[-1] = (start, max(stop, offset + size), [*parts, (offset, size, i)])
        else:
            blocks.append((offset, offset + size, [(offset, size, i)]))
    return blocks
