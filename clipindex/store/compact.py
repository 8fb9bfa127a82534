"""``clipindex compact``: a new generation without the tombstoned rows (renumbered
``0..n-1``: tables, every backbone's vectors and FAISS indexes, ``auto`` re-chosen and
re-tuned), then every older generation is dropped and the disk it held is freed.

A stale backbone (left out of an add) makes compact refuse: its rows are not the
store's, so they cannot be renumbered with them; update it first with ``clipindex add``.

With no tombstoned row, compact writes no generation: it only drops the generations
older than the current one, and with none of those it says there is nothing to do and
writes nothing.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import UserInputError, os_faults
from clipindex.index.tuning import AutoSettings
from clipindex.store.generations import (
    commit,
    current_generation,
    disk_bytes,
    drop_generations,
    generation_dir,
    generations_on_disk,
    link_or_copy,
    publish,
    stage,
    tombstones,
)
from clipindex.store.lock import build_lock
from clipindex.store.manifest import (
    TEXT_CACHE,
    file_records,
    read_manifest,
    table_records,
    write_dataset_info,
    write_manifest,
    write_parquet,
)
from clipindex.store.outputs import write_outputs
from clipindex.store.space import check_space, matrix_bytes
from clipindex.store.verify import read_dataset_info, read_tables

__all__ = ["CompactResult", "compact_store"]


@dataclass
class CompactResult:
    """What compact did: rows dropped, the generation it leaves current (a new one when
    rows were dropped), the older generations it removed, bytes before / after (each
    inode counted once) and freed."""

    path: str
    generation: int
    removed_images: int
    removed_captions: int
    dropped_generations: list[int]
    bytes_before: int
    bytes_after: int

    @property
    def freed_bytes(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def changed(self) -> bool:
        """Whether compact removed anything (False: it wrote nothing)."""
        return bool(self.removed_images or self.removed_captions or self.dropped_generations)

    def _size(self) -> str:
        freed = self.freed_bytes
        if freed >= 0:
            return f"freed {freed / 1e6:,.2f} MB ({freed:,} bytes)"
        return f"used {-freed / 1e6:,.2f} MB more ({-freed:,} bytes)"

    def line(self) -> str:
        if not self.changed:
            return (f"nothing to compact in {self.path}: no tombstoned rows and no older "
                    f"generation (generation {self.generation} kept as it is; nothing "
                    "written)")
        dropped = (f"dropped {len(self.dropped_generations)} old generation(s) "
                   f"({', '.join(f'g{g}' for g in self.dropped_generations)})"
                   if self.dropped_generations else "dropped no old generation")
        if not (self.removed_images or self.removed_captions):
            return (f"compacted {self.path}: no tombstoned rows (generation "
                    f"{self.generation} kept), {dropped}, {self._size()}")
        return (f"compacted {self.path} into generation {self.generation}: removed "
                f"{self.removed_images} tombstoned images and {self.removed_captions} "
                f"captions, {dropped}, {self._size()}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "freed_bytes": self.freed_bytes, "changed": self.changed}


def _renumber(images: pd.DataFrame, captions: pd.DataFrame, dead_i: np.ndarray,
              dead_c: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    keep_i = np.ones(len(images), dtype=bool)
    keep_i[dead_i] = False
    keep_c = np.ones(len(captions), dtype=bool)
    keep_c[dead_c] = False
    keep_c &= keep_i[captions["image_row_id"].to_numpy(dtype=np.int64)]
    new_id = np.cumsum(keep_i) - 1
    imgs = images[keep_i].reset_index(drop=True).assign(
        row_id=np.arange(int(keep_i.sum()), dtype=np.int64))
    caps = captions[keep_c].reset_index(drop=True)
    caps = caps.assign(row_id=np.arange(len(caps), dtype=np.int64),
                       image_row_id=new_id[caps["image_row_id"].to_numpy(dtype=np.int64)])
    return imgs, caps, keep_i, keep_c


def _compact_backbone(cdir: Path, staged: Path, folder: str, m: dict[str, Any],
                      keep_i: np.ndarray, keep_c: np.ndarray, fingerprint: str,
                      generation: int) -> None:
    old, out = cdir / folder, staged / folder
    out.mkdir(parents=True)
    new_id = np.cumsum(keep_i) - 1
    skipped = [{**s, "row_id": int(new_id[int(s["row_id"])])} for s in m.get("skipped", [])
               if keep_i[int(s["row_id"])]]
    valid = np.ones(int(keep_i.sum()), dtype=bool)
    valid[[s["row_id"] for s in skipped]] = False
    images = np.load(old / "images.npy")[keep_i]
    captions = np.load(old / "captions.npy")[keep_c]
    meta = m.get("index") or {}
    settings = AutoSettings(target_recall=float(meta.get("target_recall") or 0.95),
                            max_memory=meta.get("max_memory"))
    index = write_outputs(out, images, captions, valid, m["dtype"],
                          str(meta.get("kind") or "flat"), settings)
    if (old / TEXT_CACHE).is_file():
        link_or_copy(old / TEXT_CACHE, out / TEXT_CACHE)
    write_manifest(out, {
        **m, "n_images": int(len(images)), "n_captions": int(len(captions)),
        "n_skipped": len(skipped), "skipped": skipped, "dataset_fingerprint": fingerprint,
        "generation": generation, "n_tombstoned": 0, "index": index,
        "files": file_records(out),
        "compacted": {"generation": generation,
                      "removed_images": int((~keep_i).sum()),
                      "removed_captions": int((~keep_c).sum())}})


def compact_store(index: str | Path) -> CompactResult:
    """Drop the tombstoned rows of the store ``index`` (``OUT/<dataset>``) into a new,
    renumbered generation and remove every older generation; returns what it freed.

    Example
    -------
    >>> compact_store("indexes/photos").line()  # doctest: +SKIP
    'compacted indexes/photos into generation 3: removed 2 tombstoned images ...'
    """
    from clipindex.store.reader import list_backbones

    ddir = Path(index)
    read_dataset_info(generation_dir(ddir))  # not a store: one line
    with build_lock(ddir):
        publish(ddir)
        before = disk_bytes(ddir)
        cur, cdir = current_generation(ddir), generation_dir(ddir)
        info = read_dataset_info(cdir)
        manifests = {f: read_manifest(cdir / f) for f in list_backbones(ddir)}
        stale = [f for f, m in manifests.items()
                 if m.get("dataset_fingerprint") != info.get("fingerprint")]
        if stale:
            raise UserInputError(
                f"backbone {stale[0]} of {ddir} is stale (left out of an add); update it "
                f"first with `clipindex add SOURCE --index {ddir} --backbone {stale[0]}`, "
                "then compact")
        dead_i, dead_c = tombstones(info)
        if not len(dead_i) and not len(dead_c):  # no row to drop: no new generation
            older = [g for g in generations_on_disk(ddir) if g != cur]
            if older:
                drop_generations(ddir, keep=cur)
            return CompactResult(str(ddir), cur, 0, 0, older, before, disk_bytes(ddir))
        images, captions = read_tables(cdir, info)
        imgs, caps, keep_i, keep_c = _renumber(images, captions, dead_i, dead_c)
        new = cur + 1
        rows = int(keep_i.sum() + keep_c.sum())
        needs = sum(2 * matrix_bytes(rows, int(m["dim"]), str(m["dtype"]))
                    for m in manifests.values())
        check_space(ddir, needs)
        with os_faults(ddir, needs=needs):  # a full disk names what compacting needs
            staged = stage(ddir, new)
            try:
                fp = _stage_compacted(staged, info, imgs, caps, keep_i, keep_c, new)
                for folder, m in manifests.items():
                    _compact_backbone(cdir, staged, folder, m, keep_i, keep_c, fp, new)
            except Exception:  # a full disk, say: the half-staged generation is no use
                shutil.rmtree(staged, ignore_errors=True)
                raise
        commit(ddir, new, staged)
        publish(ddir)
        older = [g for g in generations_on_disk(ddir) if g != new]
        drop_generations(ddir, keep=new)
        return CompactResult(str(ddir), new, int((~keep_i).sum()), int((~keep_c).sum()),
                             older, before, disk_bytes(ddir))


def _stage_compacted(staged: Path, info: dict[str, Any], imgs: pd.DataFrame,
                     caps: pd.DataFrame, keep_i: np.ndarray, keep_c: np.ndarray,
                     new: int) -> str:
    """Write the renumbered tables and ``dataset.json`` into ``staged``; their
    fingerprint."""
    from clipindex.sources import fingerprint as table_fingerprint

    write_parquet(staged / "images.parquet", imgs)
    write_parquet(staged / "captions.parquet", caps)
    fp = table_fingerprint(imgs, caps)
    entry = {"generation": new, "compacted": True, "removed": int((~keep_i).sum()),
             "removed_captions": int((~keep_c).sum()), "time": round(time.time(), 3)}
    write_dataset_info(staged / "dataset.json", {
        **{k: v for k, v in info.items() if k != "tombstones"}, "fingerprint": fp,
        "source_fingerprint": info.get("source_fingerprint", info["fingerprint"]),
        "tables": table_records(staged), "generation": new,
        "history": [*info.get("history", []), entry]})
    return fp

