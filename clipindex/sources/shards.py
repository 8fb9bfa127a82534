"""The webdataset source: tar shards (``shards/{00000..00099}.tar``, local or URLs).

Members are grouped into samples by key exactly as webdataset does
(``webdataset.tariterators.base_plus_ext``: the key is the member name up to the first
dot of its base name; ``__*__`` members and non-files are skipped): ``.jpg``/``.jpeg``/
``.png``/``.webp`` (first found) is the image, ``caption_field`` (``txt``) the caption,
``label_field`` (``cls``) the label -- a member's text, or else a key of the sample's
``.json`` -- and the other scalar keys of the ``.json`` become columns of the images
table (``--where`` filters them).

Why the shards are listed with :mod:`tarfile` rather than read through
``webdataset.WebDataset``: the listing records each image member's byte offset and size,
so the encoder reads any row by one range request (:class:`~.storage.RangeReader`). A
build then resumes mid-shard, ``clipindex add`` reads only the new samples, and each Ray
decode task reads its own rows from the shard's URL, instead of every reader streaming
whole shards. The grouping rules are webdataset's own functions.

Row order: shard order (the pattern's expansion), then member order in the shard. A
row's ``file`` is ``<shard>#<key>`` with the shard relative to the pattern's folder: its
identity, with ``bytes`` (the image member's size) and ``etag`` (the shard's ETag or
mtime).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from clipindex.config import DatasetConfig
from clipindex.errors import DataError, MissingExtraError
from clipindex.sources.filters import select
from clipindex.sources.records import Built, header_size, unknown_class
from clipindex.sources.storage import (
    REMOTE_INSTALL,
    RangeReader,
    expand_braces,
    filesystem,
    is_url,
    join,
    object_identity,
)

__all__ = ["IMAGE_MEMBERS", "RESERVED_COLUMNS", "list_shard", "load_webdataset",
           "shard_locations"]

#: Member extensions taken as the sample's image, in order of preference.
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
#: Images-table columns a ``.json`` key never overwrites.
RESERVED_COLUMNS = frozenset({"row_id", "file", "width", "height", "label", "split", "bytes",
                              "etag", "caption"})
_SMALL = 1 << 20  # members read while listing (texts, json, cls); images are not
_HEAD = 1 << 16  # bytes of an image member read for its size while listing


def _webdataset_rules() -> tuple[Any, str, str]:
    try:
        from webdataset.tariterators import base_plus_ext, meta_prefix, meta_suffix
    except ImportError as exc:
        raise MissingExtraError(f"webdataset shards need webdataset: {REMOTE_INSTALL}") from exc
    return base_plus_ext, meta_prefix, meta_suffix


def _open(location: str, options: Mapping[str, Any]) -> Any:
    if not is_url(location):
        return open(location, "rb")
    fs, path = filesystem(location, options)
    return fs.open(path, "rb", block_size=1 << 22)


def list_shard(location: str, options: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The samples of one shard: ``{"__key__", "<ext>": (offset, size) for images,
    "<ext>": bytes for small members}``, in member order."""
    split, prefix, suffix = _webdataset_rules()
    sample: dict[str, Any] = {}
    with _open(location, options) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        for info in tar:
            name = info.name
            if not info.isreg() or name.startswith("__") or (
                    "/" not in name and name.startswith(prefix) and name.endswith(suffix)):
                continue
            key, ext = split(name)
            if key is None:
                continue
            ext = ext.lower()
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample.setdefault("__key__", key)
            if ext in sample:
                raise DataError(f"{location}: member {name} appears twice in sample {key}")
            if ext in IMAGE_MEMBERS:
                member = tar.extractfile(info)
                head = member.read(_HEAD) if member is not None else b""
                width, height = header_size(io.BytesIO(head))  # type: ignore[arg-type]
                sample[ext] = (int(info.offset_data), int(info.size), width, height)
            elif info.size > _SMALL:
                continue
            else:
                member = tar.extractfile(info)
                sample[ext] = member.read() if member is not None else b""
            tar.members = []  # type: ignore[attr-defined]  # stream mode: no history
    if sample:
        yield sample


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip()
    return None


def _field(sample: dict[str, Any], meta: dict[str, Any], name: str) -> str | None:
    """A member's text (``cls``, ``txt``, ...), else a key of the sample's json."""
    text = _text(sample.get(name.lower()))
    if text is not None:
        return text
    value = meta.get(name)
    return None if value is None or isinstance(value, (dict, list)) else str(value).strip()


def _meta(sample: dict[str, Any], where: str) -> dict[str, Any]:
    raw = sample.get("json")
    if not isinstance(raw, bytes):
        return {}
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise DataError(f"{where}: its .json member is not valid JSON") from None
    return meta if isinstance(meta, dict) else {}


def shard_locations(pattern: str, root: Path | str) -> tuple[list[str], str]:
    """Shard locations of ``pattern`` (under ``root`` unless a URL / absolute) and the
    folder their names are relative to."""
    full = join(str(root), os.path.expanduser(pattern))
    shards = expand_braces(full)
    if any(s.lower().endswith((".tar.gz", ".tgz", ".tar.zst", ".tar.xz")) for s in shards):
        raise DataError(f"{pattern}: compressed shards cannot be read by range; recompress "
                        "them as plain .tar")
    base = posixpath.commonpath([s.replace("://", ":/") for s in shards]) if shards else ""
    base = base.replace(":/", "://", 1) if is_url(full) else base
    if base in shards:  # one shard: its folder
        base = base.rsplit("/", 1)[0]
    return shards, base


def _scan(shards: list[str], base: str, cfg: DatasetConfig) -> tuple[
        list[dict[str, Any]], dict[str, tuple[str, int, int]]]:
    """One entry per sample with an image (and the spans the reader needs)."""
    rows: list[dict[str, Any]] = []
    spans: dict[str, tuple[str, int, int]] = {}
    tags = object_identity(shards, cfg.storage_options)
    for shard in shards:
        if shard not in tags:
            raise DataError(f"shard {shard} does not exist (from the pattern {cfg.webdataset})")
        name = shard[len(base):].lstrip("/")
        for sample in list_shard(shard, cfg.storage_options):
            ext = next((e for e in IMAGE_MEMBERS if e in sample), None)
            if ext is None:
                continue
            file = f"{name}#{sample['__key__']}"
            meta = _meta(sample, file)
            offset, size, width, height = sample[ext]
            spans[file] = (shard, offset, size)
            rows.append({"file": file, "meta": meta, "bytes": size, "etag": tags[shard][1],
                         "width": width, "height": height,
                         "label": _field(sample, meta, cfg.label_field),
                         "caption": _field(sample, meta, cfg.caption_field)})
    return rows, spans


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        for key, value in row["meta"].items():
            if key not in RESERVED_COLUMNS and not isinstance(value, (dict, list)):
                keys.setdefault(str(key))
    return list(keys)


def load_webdataset(cfg: DatasetConfig, root: Path | str, origin: str) -> Built:
    """Every sample with an image and a label, by shard then member order."""
    shards, base = shard_locations(str(cfg.webdataset), root)
    rows, spans = _scan(shards, base, cfg)
    missing = next((r["file"] for r in rows if not r["label"]), None)
    if missing is not None:
        raise DataError(f"sample {missing} has no label field {cfg.label_field!r} (a member "
                        f"or a key of its .json); name it with label_field / --label-field")
    labels = list(dict.fromkeys(r["label"] for r in rows))
    classes = list(cfg.classes) or sorted(labels)
    for c in classes:
        if c not in labels:
            raise unknown_class(c, "classes", origin, sorted(labels))
    if len(classes) < 2:
        raise DataError(f"the shards {cfg.webdataset} hold {len(classes)} class(es) in "
                        f"{cfg.label_field!r}: a classifier needs two")
    pools = {c: [i for i, r in enumerate(rows) if r["label"] == c] for c in classes}
    sampled, support = select(pools, cfg, origin, given_split=False)
    chosen = {i: (c, j) for c, items in sampled.items() for j, i in enumerate(items)}
    extra = _columns(rows)
    records: list[dict[str, Any]] = []
    captions: list[tuple[int, str]] = []
    reader = RangeReader({}, cfg.storage_options)
    for i, row in enumerate(rows):
        if i not in chosen:
            continue
        c, j = chosen[i]
        if row["caption"]:
            captions.append((len(records), row["caption"]))
        reader.spans[row["file"]] = spans[row["file"]]
        records.append({"file": row["file"], "width": row["width"],
                        "height": row["height"], "label": c,
                        "split": "support" if j in support[c] else "test",
                        "bytes": row["bytes"], "etag": row["etag"],
                        **{k: _scalar(row["meta"].get(k)) for k in extra}})
    funnel = {"all_images": len(rows), "shards": len(shards),
              "with_class": {c: len(v) for c, v in pools.items()},
              "sampled": {c: len(v) for c, v in sampled.items()}}
    split_from = "drawn" if cfg.support_per_class is not None else "none"
    return Built(classes, records, captions, funnel, split_from, columns=["bytes", "etag",
                                                                         *extra],
                 reader=reader)


def _scalar(value: Any) -> Any:
    return None if value is None else str(value)
