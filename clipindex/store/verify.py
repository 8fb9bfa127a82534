"""Checking a store against what its build recorded: every file a query reads.

What an open checks (:func:`check_backbone`, :func:`read_tables`), and what it costs:

- ``dataset.json`` and ``manifest.json`` must parse as the objects they are; a format-2
  manifest must match its seal (``manifest_sha256``), and so must ``dataset.json``
  (``dataset_sha256``: its tombstones, fingerprint, table hashes and root change
  answers). A ``dataset.json`` written before it had a seal still opens;
  ``verify=True`` then checks its tombstones against its fingerprint, which covers
  them (:func:`unsealed_damage`), and the next add, compact or build seals it.
- The two parquet tables (small: a few bytes per row) are hashed on every open against
  ``dataset.json``'s ``tables``; a format-1 store, which has no table hashes, has its
  tables checked against the dataset fingerprint instead (slower: it serialises rows).
- The large files (``images.npy``, ``captions.npy``, the FAISS indexes) are checked by
  size and mtime against the manifest; one whose mtime moved (a copy without ``-p``, an
  edit) or that has no recorded mtime (format 1) is hashed. ``verify=True`` (``clipindex
  info --verify``) hashes every file.

Any mismatch, missing or unreadable file is a :class:`DamagedStoreError` naming the file
and the fix. This module never imports FAISS or a model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clipindex.errors import DamagedStoreError, UserInputError
from clipindex.store.manifest import (
    DATASET_SEAL,
    MANIFEST,
    OUTPUT_FILES,
    TABLE_FILES,
    check_seal,
    read_json,
    sha256_file,
    store_fingerprint,
    tombstones,
)
from clipindex.store.tables import StoreTable

__all__ = ["FIX", "Damage", "check_backbone", "check_file", "orphan_damage", "orphaned",
           "read_dataset_info", "read_store_tables", "read_tables", "table_damage",
           "unsealed_damage"]

#: What every damage message tells the user to do.
FIX = ("rerun `clipindex build ... --rebuild` to rewrite it (`clipindex info --verify DIR` "
       "lists every damaged file)")


@dataclass(frozen=True)
class Damage:
    """One damaged file of a store and what is wrong with it."""

    path: Path
    problem: str

    def message(self) -> str:
        return f"{self.path} {self.problem}; {FIX}"

    def error(self) -> DamagedStoreError:
        return DamagedStoreError(self.message())


def check_file(path: Path, record: Any, verify: bool) -> str | None:
    """What is wrong with ``path`` against its ``{sha256, bytes[, mtime_ns]}`` record
    (None: nothing). Hashes it when ``verify``, when it has no recorded mtime or when its
    mtime moved; otherwise size and mtime vouch for it."""
    if not isinstance(record, dict):
        return "has no usable record in its manifest"
    try:
        st = path.stat()
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"is unreadable ({exc.strerror or exc})"
    if not path.is_file():
        return "is not a file"
    if st.st_size != record.get("bytes"):
        return (f"has {st.st_size} bytes, not the {record.get('bytes')} its build recorded "
                "(truncated or replaced)")
    if verify or record.get("mtime_ns") is None or st.st_mtime_ns != record["mtime_ns"]:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            return f"is unreadable ({exc.strerror or exc})"
        if digest != record.get("sha256"):
            return "does not match its recorded sha256 (changed or corrupted since the build)"
    return None


def read_dataset_info(dataset_dir: Path) -> dict[str, Any]:
    """``dataset.json`` of a store, or a one-line error (not a store / damaged)."""
    meta = dataset_dir / "dataset.json"
    if not meta.is_file():
        hint = (" (that is a backbone folder; pass its parent)"
                if (dataset_dir / MANIFEST).exists() else "")
        raise UserInputError(
            f"{dataset_dir} is not a clipindex store: it has no dataset.json{hint}. Pass the "
            "OUT/<dataset> folder that `clipindex build` wrote.")
    try:
        info = read_json(meta)
    except (OSError, ValueError):
        raise Damage(meta, "is unreadable (not valid JSON)").error() from None
    if not isinstance(info, dict) or not isinstance(info.get("fingerprint"), str):
        raise Damage(meta, "is damaged (not an object with a fingerprint)").error()
    if DATASET_SEAL in info and not check_seal(info, DATASET_SEAL):
        raise Damage(meta, f"is damaged (its content, e.g. its tombstones, does not match "
                     f"its {DATASET_SEAL} seal: edited since it was written)").error()
    return info


def unsealed_damage(dataset_dir: Path, info: dict[str, Any]) -> list[Damage]:
    """For a ``dataset.json`` without a seal (written before it had one): whether its
    tombstones are the ones its fingerprint covers (it is the tables' fingerprint with
    the tombstones, :func:`clipindex.store.manifest.store_fingerprint`). Reads and
    serialises the tables: ``verify`` only. [] for a sealed one."""
    from clipindex.sources import fingerprint

    if DATASET_SEAL in info:
        return []
    try:
        images, captions = read_tables(dataset_dir, info)
        dead_i, dead_c = tombstones(info)
    except (DamagedStoreError, TypeError, ValueError):
        return []  # the tables' own damage is reported by their check
    if store_fingerprint(fingerprint(images, captions), dead_i, dead_c) != info["fingerprint"]:
        return [Damage(dataset_dir / "dataset.json",
                       "is damaged (its tombstones or tables do not match its fingerprint: "
                       "edited since it was written)")]
    return []


def table_damage(dataset_dir: Path, info: dict[str, Any], verify: bool = True
                 ) -> list[Damage]:
    """Damaged tables of a format-2 store (hashed: they are small); [] for format 1,
    whose tables :func:`read_tables` checks against the fingerprint."""
    tables = info.get("tables")
    if tables is None:
        return [Damage(dataset_dir / f, "is missing") for f in TABLE_FILES
                if not (dataset_dir / f).is_file()]
    if not isinstance(tables, dict):
        return [Damage(dataset_dir / "dataset.json", "is damaged (its tables entry)")]
    out = []
    for name in TABLE_FILES:
        problem = check_file(dataset_dir / name, tables.get(name), verify=True)
        if problem:
            out.append(Damage(dataset_dir / name, problem))
    return out


def read_tables(dataset_dir: Path, info: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables, checked (format 2: sha256; format 1: the dataset fingerprint)."""
    images, captions = read_store_tables(dataset_dir, info)
    return images.frame, captions.frame


def _table_bytes(dataset_dir: Path, name: str, record: Any) -> bytes:
    """The bytes of one format-2 table, checked against its record (the bytes parsed are
    the bytes hashed); a missing or unreadable file gets :func:`check_file`'s message."""
    path = dataset_dir / name
    try:
        data = path.read_bytes()
    except OSError:
        data = None
    problem = None
    if data is None or not isinstance(record, dict):
        problem = check_file(path, record, verify=True) or "is unreadable"
    elif len(data) != record.get("bytes"):
        problem = (f"has {len(data)} bytes, not the {record.get('bytes')} its build "
                   "recorded (truncated or replaced)")
    elif hashlib.sha256(data).hexdigest() != record.get("sha256"):
        problem = "does not match its recorded sha256 (changed or corrupted since the build)"
    if problem or data is None:
        raise Damage(path, problem or "is unreadable").error()
    return data


def read_store_tables(dataset_dir: Path, info: dict[str, Any]) -> tuple[StoreTable, StoreTable]:
    """Both tables as :class:`~clipindex.store.tables.StoreTable` (format 2: their bytes
    hashed and kept, columns decoded on first use; format 1: decoded and checked against
    the dataset fingerprint)."""
    from clipindex.sources import fingerprint

    tables = info.get("tables")
    if isinstance(tables, dict):
        out = []
        for name in TABLE_FILES:
            data = _table_bytes(dataset_dir, name, tables.get(name))
            try:
                out.append(StoreTable.from_parquet(data))
            except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds on bad bytes
                raise Damage(dataset_dir / name,
                             f"is unreadable ({type(exc).__name__})").error() from None
        return out[0], out[1]
    damage = table_damage(dataset_dir, info)
    if damage:
        raise damage[0].error()
    frames = []
    for name in TABLE_FILES:
        try:
            frames.append(pd.read_parquet(dataset_dir / name))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds on bad bytes
            raise Damage(dataset_dir / name,
                         f"is unreadable ({type(exc).__name__})").error() from None
    images, captions = frames
    if fingerprint(images, captions) != info["fingerprint"]:
        raise Damage(dataset_dir / "images.parquet",
                     "or captions.parquet does not match dataset.json's fingerprint "
                     "(edited since the build)").error()
    return StoreTable.from_frame(images), StoreTable.from_frame(captions)


def check_backbone(bdir: Path, manifest: dict[str, Any], verify: bool) -> list[Damage]:
    """Damaged output files of a backbone folder (size + mtime, or sha256 when
    ``verify``)."""
    files = manifest.get("files") or {}
    out = []
    for name in sorted(files):
        if os.sep in name or name.startswith("."):
            out.append(Damage(bdir / MANIFEST, f"is damaged (file entry {name!r})"))
            continue
        problem = check_file(bdir / name, files[name], verify)
        if problem:
            out.append(Damage(bdir / name, problem))
    return out


def orphaned(bdir: Path) -> bool:
    """A folder without a manifest that holds a finished build's files and no shards:
    its manifest was lost (a build writes the manifest before it removes its shards)."""
    return (not (bdir / MANIFEST).exists() and not (bdir / "shards").exists()
            and any((bdir / f).exists() for f in OUTPUT_FILES))


def orphan_damage(bdir: Path) -> Damage:
    return Damage(bdir / MANIFEST, "is missing, but the folder holds a finished build's "
                  "files")
