"""What a store's files are, shared by building and reading: the format version, the
JSON / npy / parquet IO, file hashes, a backbone's identity and the manifest itself.

Store format 2 (``FORMAT_VERSION``; CHANGELOG.md records every version)::

    OUT/<dataset>/images.parquet, captions.parquet, dataset.json  (``tables``: sha256)
    OUT/<dataset>/<backbone>/images.npy, captions.npy, images.faiss, captions.faiss
    OUT/<dataset>/<backbone>/manifest.json      written last, atomically, sealed

Format 2 adds, over format 1: ``tables`` in ``dataset.json`` (sha256 + bytes of both
parquet tables), ``mtime_ns`` beside each file's sha256 and bytes (so an open checks
large files by size and date and hashes only those whose date moved),
``checkpoint_stamp`` (size and date of local weights: a reopen re-hashes them only when
they moved) and ``manifest_sha256``, the manifest's seal (:func:`seal`). Within format 2,
``dataset.json`` gained its own seal, ``dataset_sha256`` (:func:`write_dataset_info`);
one without it (written before) is read as before.

A reader goes through :func:`read_manifest`, which refuses a manifest of a newer format
("upgrade clipindex") and brings every older format it knows (``READERS``) to the
current shape, so a store built by an older clipindex keeps opening.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import DamagedStoreError, IndexMismatchError, UserInputError
from clipindex.files import atomic_write, read_json, write_json_atomic

__all__ = [
    "store_fingerprint",
    "tombstones",
    "DATASET_SEAL",
    "DTYPES",
    "FORMAT_VERSION",
    "MANIFEST",
    "OUTPUT_FILES",
    "RANDOM_INIT_SEED",
    "READERS",
    "TABLE_FILES",
    "TEXT_CACHE",
    "Target",
    "build_manifest",
    "check_seal",
    "file_records",
    "identity",
    "json_default",
    "load_encoder_for",
    "normalise_rows",
    "read_json",
    "read_manifest",
    "resolve_targets",
    "same_source",
    "seal",
    "sha256_file",
    "stored_route",
    "table_records",
    "text_cache_key",
    "weights_identity",
    "weights_stamp",
    "upgrade_manifest",
    "write_dataset_info",
    "write_json",
    "write_manifest",
    "write_npy",
    "write_parquet",
]

#: Bumped whenever the on-disk layout or manifest fields change; a reader keeps a path
#: (``READERS``) for every older version and refuses newer ones.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: The dataset-level tables ``dataset.json`` hashes (format 2).
TABLE_FILES = ("images.parquet", "captions.parquet")
SEAL = "manifest_sha256"
#: The seal of ``dataset.json`` (:func:`write_dataset_info`); a store written before it
#: has none and still opens (see :mod:`clipindex.store.verify`).
DATASET_SEAL = "dataset_sha256"
#: Query texts a backbone folder encoded on demand (derived data: rebuilt when stale).
TEXT_CACHE = "text_cache.npz"
DTYPES = ("float32", "float16")
#: The files of a finished backbone folder that its manifest hashes.
OUTPUT_FILES = ("images.npy", "captions.npy", "images.faiss", "captions.faiss")
#: Seed of the weights of random-init (``--pretrained none``) backbones.
RANDOM_INIT_SEED = 0


# ----------------------------------------------------------------------------- files
def json_default(obj: Any) -> Any:
    """JSON for the values a store's records hold besides plain JSON (numpy, paths)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_json(path: Path, obj: Any) -> Path:
    """A store JSON file (manifest, shard record, ``dataset.json``): insertion order,
    indent 2, trailing newline, atomic (:func:`clipindex.files.write_json_atomic`)."""
    return write_json_atomic(path, obj, sort_keys=False, default=json_default)


def write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda fh: frame.to_parquet(fh, index=False))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 rows of unit length, as every stored vector is (zero rows, the
    skipped inputs, stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1), 0).astype(np.float32)


def _record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"sha256": sha256_file(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files``: sha256, size and mtime of every output file of ``folder``."""
    return {f: _record(folder / f) for f in OUTPUT_FILES}


def table_records(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    """``dataset.json``'s ``tables``: sha256 and size of both parquet tables."""
    return {f: {"sha256": sha256_file(dataset_dir / f),
                "bytes": (dataset_dir / f).stat().st_size} for f in TABLE_FILES}


def _canonical(manifest: dict[str, Any], key: str = SEAL) -> bytes:
    body = {k: v for k, v in manifest.items() if k != key}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      default=json_default).encode("utf-8")


def seal(manifest: dict[str, Any], key: str = SEAL) -> dict[str, Any]:
    """``manifest`` with ``manifest_sha256`` (or ``key``): the sha256 of its other keys
    (canonical JSON), so a changed byte that still parses is caught on open."""
    return {**{k: v for k, v in manifest.items() if k != key},
            key: hashlib.sha256(_canonical(manifest, key)).hexdigest()}


def check_seal(manifest: dict[str, Any], key: str = SEAL) -> bool:
    """Whether ``manifest``'s seal (``key``) matches its content."""
    return manifest.get(key) == hashlib.sha256(_canonical(manifest, key)).hexdigest()


def write_dataset_info(path: Path, info: dict[str, Any]) -> Path:
    """Write ``dataset.json`` sealed (``dataset_sha256``, :data:`DATASET_SEAL`): every
    field that changes answers (the tombstones, the fingerprint, the tables' hashes, the
    data root) is covered, so an edit is caught on open (an older seal is replaced)."""
    return write_json(path, seal(info, DATASET_SEAL))


# ----------------------------------------------------------------------------- versions
def _read_v1(manifest: dict[str, Any]) -> dict[str, Any]:
    """Format 1 has no seal, no file dates and no checkpoint stamp: an open hashes its
    files (no date to trust) and its weights."""
    return manifest


def _read_v2(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest  # the current shape


#: One reader per format version this clipindex opens: it returns the manifest in the
#: current shape. A new version adds its reader here and keeps the old ones.
READERS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _read_v1, 2: _read_v2}

#: Keys every readable manifest has, with their JSON types.
_REQUIRED = {"backbone_folder": str, "backbone": str, "weights": str, "dim": int,
             "dtype": str, "n_images": int, "n_captions": int, "files": dict,
             "dataset_fingerprint": str, "skipped": list}
_FIX = "rebuild it with `clipindex build ... --rebuild`"


def upgrade_manifest(manifest: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """``manifest`` in the current shape, or :class:`IndexMismatchError` for a format
    this clipindex cannot read (newer: upgrade clipindex; unknown: rebuild)."""
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise IndexMismatchError(
            f"{where} was written by a newer clipindex (store format {version}; this "
            f"clipindex {_version()} reads formats up to {FORMAT_VERSION}); upgrade "
            "clipindex to open it")
    reader = READERS.get(version) if isinstance(version, int) else None
    if reader is None:
        raise IndexMismatchError(
            f"{where} has store format {version!r}, which this clipindex cannot read "
            f"(known: {', '.join(map(str, sorted(READERS)))}); rebuild it with "
            "`clipindex build`")
    return reader(manifest)


def read_manifest(bdir: Path) -> dict[str, Any]:
    """The manifest of a finished backbone folder, checked and upgraded.

    An unreadable manifest (not JSON, not an object, a key missing or of the wrong
    type, a broken seal) is a :class:`DamagedStoreError` naming the file and the fix.
    """
    path = bdir / MANIFEST
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        why = "missing" if isinstance(exc, FileNotFoundError) else "not valid JSON"
        raise DamagedStoreError(f"{path} is unreadable ({why}); {_FIX}") from None
    if not isinstance(manifest, dict):
        raise DamagedStoreError(
            f"{path} is unreadable (a JSON {type(manifest).__name__}, not an object); {_FIX}")
    manifest = upgrade_manifest(manifest, bdir)
    bad = [k for k, t in _REQUIRED.items()
           if not isinstance(manifest.get(k), t) or isinstance(manifest.get(k), bool)]
    if bad:
        raise DamagedStoreError(
            f"{path} is damaged ({', '.join(bad)} missing or of the wrong type); {_FIX}")
    if manifest["format_version"] >= 2 and not check_seal(manifest):
        raise DamagedStoreError(
            f"{path} is damaged (its content does not match its manifest_sha256 seal); {_FIX}")
    if manifest["backbone_folder"] != bdir.name:
        raise DamagedStoreError(
            f"{path} is the manifest of {manifest['backbone_folder']!r}, not of "
            f"{bdir.name!r}; {_FIX}")
    return manifest


def _version() -> str:
    from clipindex import __version__

    return __version__


# ----------------------------------------------------------------------------- identity
@dataclass(frozen=True)
class Target:
    """Everything a build needs to know about one backbone before encoding."""

    name: str  # as the user typed it (reopening resolves it again)
    folder: str
    identity: dict[str, Any]
    spec: Any
    pretrained: str

    def requested(self) -> dict[str, Any]:
        """What reopening passes to resolve_backbone: local weights by absolute path."""
        local = self.spec.source in ("file", "dir") and self.pretrained != "default"
        return {"backbone": self.name,
                "pretrained": self.spec.pretrained if local else self.pretrained}


def _weights_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, or of every file (name + bytes) in a checkpoint folder."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()


def identity(spec: Any) -> dict[str, Any]:
    """What a stored vector depends on: the backbone and its exact weights.

    Local weights are identified by content (sha256), not path, so a store survives
    the checkpoint (or the package with the tiny backbones) moving elsewhere.
    """
    ckpt = spec.checkpoint_path
    sha = _weights_sha256(ckpt) if ckpt is not None else None
    weights = f"sha256:{sha}" if sha else (spec.pretrained or "none")
    return {"backbone": spec.name, "weights": weights}


def weights_stamp(path: Path | None) -> list[list[Any]] | None:
    """Size and mtime of local weights (every file of a checkpoint folder): what a
    reopen compares instead of re-hashing them. None for weights that are not files."""
    if path is None or not path.exists():
        return None
    files = ([path] if path.is_file() else
             sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
    out = []
    for f in files:
        st = f.stat()
        out.append([f.relative_to(path).as_posix() if f != path else "", st.st_size,
                    st.st_mtime_ns])
    return out


def weights_identity(spec: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """:func:`identity` of ``spec``, without re-hashing local weights whose size and
    mtime are those ``manifest`` recorded at build (``checkpoint_stamp``)."""
    recorded = manifest.get("checkpoint_stamp")
    if recorded is not None and recorded == weights_stamp(spec.checkpoint_path):
        return {"backbone": spec.name, "weights": manifest["weights"]}
    return identity(spec)


def text_cache_key(manifest: dict[str, Any]) -> str:
    """What a cached text vector derives from: the exact weights (a checkpoint's sha256
    or a tag), the model and tokenizer, the dimension and the context length."""
    ident = {k: manifest.get(k) for k in ("weights", "backbone", "model_name", "pretrained",
                                          "weights_source", "random_init_seed", "dim",
                                          "context_length")}
    ident["tokenizer"] = manifest.get("tokenizer") or manifest.get("model_name")
    text = json.dumps(ident, sort_keys=True, default=json_default)
    return hashlib.sha256(b"clipindex-text-cache-v2" + text.encode()).hexdigest()


def resolve_targets(names: Sequence[str] | str, pretrained: str) -> list[Target]:
    from clipindex.encode import backbones

    if isinstance(names, str):
        names = [names]
    if not names:
        raise UserInputError("Name at least one backbone (--backbone NAME)")
    targets = []
    for name in names:
        spec = backbones.resolve_backbone(name, pretrained=pretrained)
        targets.append(Target(name=name, folder=spec.name, identity=identity(spec),
                              spec=spec, pretrained=pretrained))
    return targets


def load_encoder_for(spec: Any, device: str | None) -> Any:
    """Load a backbone's encoder; random-init weights come from a fixed seed.

    Seeding (inside a forked RNG, so the caller's torch RNG is untouched) makes a
    ``--pretrained none`` store reproducible: reopening it loads the same weights, so
    text queries land in the same space as the stored vectors.
    """
    from clipindex.encode import encoder as encoders

    if getattr(spec, "source", None) != "none":
        return encoders.load_encoder(spec, device=device)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return encoders.load_encoder(spec, device=device)


def same_source(m: dict[str, Any], target: Target, fingerprint: str) -> bool:
    """Whether manifest ``m`` holds vectors of this dataset by these weights (and of
    this format: a store of an older format is rebuilt, never extended)."""
    return (m.get("format_version") == FORMAT_VERSION
            and m.get("dataset_fingerprint") == fingerprint
            and all(m.get(k) == v for k, v in target.identity.items()))


# ----------------------------------------------------------------------------- manifest
def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [int(v) for v in value]
    return _int_or_none(value)


def stored_route(manifest: dict[str, Any]) -> str:
    """How a store's image vectors were decoded (its ``decode_route``): ``reference``
    (open_clip's transform on a full decode) or ``draft``; a manifest written before
    clipindex recorded it holds draft-decoded vectors (the only route there was).

    Examples
    --------
    >>> stored_route({}), stored_route({"decode_route": "reference"})
    ('draft', 'reference')
    """
    return str(manifest.get("decode_route") or "draft")


def build_manifest(target: Target, encoder: Any, *, fingerprint: str, dtype: str,
                   counts: tuple[int, int], index: dict[str, Any],
                   files: dict[str, Any], timings: dict[str, Any], device: str | None,
                   skipped: list[dict[str, Any]], decode_route: str = "reference"
                   ) -> dict[str, Any]:
    """The manifest of a freshly encoded backbone folder (keys in their stored order)."""
    weights = str(target.identity["weights"])
    return {
        "format_version": FORMAT_VERSION,
        "clipindex_version": _version(),
        "backbone_folder": target.folder,
        **target.identity,
        "display_name": target.spec.display,
        "model_name": target.spec.model,
        "pretrained": target.spec.pretrained,
        "weights_source": target.spec.source,
        "checkpoint_sha256": weights.split(":", 1)[1] if weights.startswith("sha256:") else None,
        "random_init_seed": RANDOM_INIT_SEED if target.spec.source == "none" else None,
        "requested": target.requested(),
        "dim": int(encoder.embed_dim),
        "dtype": dtype,
        "n_images": int(counts[0]),
        "n_captions": int(counts[1]),
        "n_skipped": len(skipped),
        "dataset_fingerprint": fingerprint,
        "decode_route": decode_route,
        "index": index,
        "files": files,
        "timings": timings,
        "params": _int_or_none(getattr(encoder, "params", None)),
        "image_size": _jsonable(getattr(encoder, "image_size", None)),
        "context_length": _int_or_none(getattr(encoder, "context_length", None)),
        "device": str(getattr(encoder, "device", device) or "cpu"),
        "skipped": sorted(skipped, key=lambda s: s["row_id"]),
        "checkpoint_stamp": weights_stamp(target.spec.checkpoint_path),
        "tokenizer": (f"registered:{target.spec.display}" if getattr(target.spec, "tiny", False)
                      else f"open_clip:{target.spec.model}"),
    }


def write_manifest(bdir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Seal (:func:`seal`) and write ``bdir/manifest.json`` atomically; returns it sealed."""
    sealed = seal(manifest)
    write_json(bdir / MANIFEST, sealed)
    return sealed


def tombstones(info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Tombstoned image and caption row ids recorded in ``dataset.json``."""
    rec = info.get("tombstones") or {}
    return (np.asarray(rec.get("images", []), dtype=np.int64),
            np.asarray(rec.get("captions", []), dtype=np.int64))


def store_fingerprint(table_fingerprint: str, dead_images: Iterable[int],
                      dead_captions: Iterable[int]) -> str:
    """The fingerprint of a store's rows: the tables' fingerprint alone without
    tombstones (a store never added to), else the tables and the tombstones."""
    dead_i, dead_c = sorted(int(r) for r in dead_images), sorted(int(r) for r in dead_captions)
    if not dead_i and not dead_c:
        return table_fingerprint
    text = json.dumps({"tables": table_fingerprint, "images": dead_i, "captions": dead_c},
                      separators=(",", ":"))
    return hashlib.sha256(b"clipindex-store-v1" + text.encode()).hexdigest()
