"""Describing a store: :func:`store_info` (``clipindex info``): funnel, counts, backbones,
generations, stale backbones and every damaged file, checked as
:func:`clipindex.store.open_index` checks them (``verify``: every file hashed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clipindex.errors import DamagedStoreError
from clipindex.store import generations as gens
from clipindex.store.manifest import read_manifest, stored_route
from clipindex.store.reader import list_backbones
from clipindex.store.verify import (
    check_backbone,
    orphan_damage,
    orphaned,
    read_dataset_info,
    read_tables,
    table_damage,
    unsealed_damage,
)

__all__ = ["store_info"]


def _table_rows(root: Path, damaged: bool) -> tuple[int | None, int | None]:
    if damaged:
        return None, None
    import pyarrow.parquet as pq

    rows = []
    for name in ("images", "captions"):
        try:
            rows.append(pq.ParquetFile(root / f"{name}.parquet").metadata.num_rows)
        except Exception:  # noqa: BLE001 - reported through the tables' check
            rows.append(None)
    return rows[0], rows[1]


def _dataset_damage(root: Path, info: dict[str, Any], verify: bool) -> list[str]:
    damage = [d.message() for d in table_damage(root, info)]
    if not damage and verify and "tables" not in info:  # format 1: the fingerprint
        try:
            read_tables(root, info)
        except DamagedStoreError as exc:
            damage = [str(exc)]
    if not damage and verify:  # written before dataset.json had a seal
        damage = [d.message() for d in unsealed_damage(root, info)]
    return damage


def _backbone_entry(bdir: Path, info: dict[str, Any], verify: bool) -> dict[str, Any]:
    keys = ("backbone_folder", "display_name", "model_name", "pretrained", "weights", "dim",
            "dtype", "n_images", "n_captions", "n_skipped", "params", "image_size",
            "context_length", "device", "index", "timings", "skipped", "format_version")
    try:
        manifest = read_manifest(bdir)
    except DamagedStoreError as exc:
        return {"backbone_folder": bdir.name, "stale": False, "damaged": [str(exc)]}
    entry = {k: manifest.get(k) for k in keys}
    entry["decode_route"], entry["decode_route_recorded"] = (stored_route(manifest),
                                                             "decode_route" in manifest)
    entry["stale_reason"] = gens.stale_reason(manifest, info)
    entry["stale"], entry["generation"] = bool(entry["stale_reason"]), manifest.get("generation", 0)
    entry["damaged"] = [d.message() for d in check_backbone(bdir, manifest, verify)]
    return entry


def store_info(dataset_dir: str | os.PathLike[str], *, verify: bool = False) -> dict[str, Any]:
    """A JSON-ready summary of a dataset store: funnel, counts, backbones, skipped inputs,
    and what is damaged.

    Every file is checked as :func:`open_index` checks it (tables and manifests hashed,
    large files by size and mtime); ``verify=True`` hashes every file against its
    recorded sha256 (``clipindex info --verify``). ``damaged`` lists one message per
    damaged file (each backbone entry has its own ``damaged`` too); ``verified`` says
    whether the contents were hashed. A format-1 store has no table hashes: its tables
    are checked against the dataset fingerprint with ``verify`` only
    (``tables_verified``).

    Example
    -------
    >>> [b["backbone_folder"] for b in store_info("indexes/demo")["backbones"]]
    ... # doctest: +SKIP
    ['tiny-rn', 'tiny-vit', 'tiny-vit2']
    """
    return gens.read_committed(dataset_dir,
                               lambda root: _generation_info(dataset_dir, root, verify))


def _generation_info(dataset_dir: str | os.PathLike[str], root: Path, verify: bool
                     ) -> dict[str, Any]:
    top = Path(dataset_dir)
    info = read_dataset_info(root)
    tables = _dataset_damage(root, info, verify)
    n_images, n_captions = _table_rows(root, bool(tables))
    backbones = [_backbone_entry(root / f, info, verify) for f in list_backbones(root)]
    damaged = tables + [m for b in backbones for m in b["damaged"]]
    # unfinished builds run at the top level
    damaged += [orphan_damage(top / f).message()
                for f in list_backbones(top, unfinished=True) if orphaned(top / f)]
    return {"path": str(dataset_dir), "dataset": info, **gens.generation_facts(info),
            "n_images": n_images, "n_captions": n_captions,
            "backbones": backbones, "unfinished": list_backbones(top, unfinished=True),
            "verified": bool(verify), "tables_verified": "tables" in info or bool(verify),
            "damaged": damaged}
