"""Building a store: :func:`build_store` and the steps of one backbone's build.

A build validates every knob and backbone name before writing anything, holds the
dataset folder's lock (:mod:`clipindex.store.lock`), writes the dataset tables, then per
backbone: leaves a finished store alone ("up to date"), re-indexes one that only needs
another index kind or dtype (:mod:`clipindex.store.reindex`), or encodes it shard by
shard (:mod:`clipindex.store.shards`, resumable) and writes the matrices, FAISS indexes
(:mod:`clipindex.store.outputs`) and, last, the manifest (:mod:`clipindex.store.manifest`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from clipindex.errors import DataError, UserInputError
from clipindex.sources import dataset_fingerprint
from clipindex.store.lock import build_lock
from clipindex.store.manifest import (
    DTYPES,
    MANIFEST,
    Target,
    build_manifest,
    file_records,
    load_encoder_for,
    read_json,
    resolve_targets,
    same_source,
    write_json,
    write_parquet,
)
from clipindex.store.outputs import write_outputs
from clipindex.store.reindex import REINDEX_DIR, reindex, reusable
from clipindex.store.shards import ShardCounter, Shards, encode_captions, encode_images
from clipindex.store.tuning import (
    DEFAULT_TARGET_RECALL,
    AutoSettings,
    choose_index,
    parse_memory,
)

if TYPE_CHECKING:
    from clipindex.sources import Dataset

__all__ = [
    "BuildOptions",
    "build_one",
    "build_store",
    "check_rows",
    "options",
    "write_tables",
]

log = logging.getLogger("clipindex.store")


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    batch_size: int | None
    shard_size: int | None
    workers: int | None
    device: str | None
    strict: bool
    index_kind: str
    dtype: str
    progress: bool
    auto: AutoSettings = AutoSettings()


def options(out: Any, batch_size: int | None, shard_size: int | None, **kw: Any
            ) -> BuildOptions:
    """Validate the build knobs before anything is read or written."""
    from clipindex.store.indexes import INDEX_KINDS

    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if value is not None and int(value) < 1:
            raise UserInputError(f"{name} must be >= 1, got {value}")
    if batch_size and shard_size and int(shard_size) % int(batch_size):
        raise UserInputError(
            f"shard_size ({shard_size}) must be a positive multiple of batch_size ({batch_size})")
    if kw["index_kind"] not in (*INDEX_KINDS, "auto"):
        raise UserInputError(
            f"Unknown index kind {kw['index_kind']!r}. Known: auto, {', '.join(INDEX_KINDS)}")
    if kw["dtype"] not in DTYPES:
        raise UserInputError(f"dtype must be one of {', '.join(DTYPES)}, got {kw['dtype']!r}")
    return BuildOptions(out=Path(out), batch_size=batch_size and int(batch_size),
                        shard_size=shard_size and int(shard_size), **kw)


# ----------------------------------------------------------------------------- dataset
def check_rows(frame: pd.DataFrame, what: str) -> None:
    if not np.array_equal(frame["row_id"].to_numpy(), np.arange(len(frame))):
        raise DataError(f"{what} row_id must run 0..n-1 in order; the source produced others")


def write_tables(dataset: Any, dataset_dir: Path, fingerprint: str, rebuild: bool) -> None:
    """Write the dataset-level tables, refusing to mix two datasets in one folder."""
    meta = dataset_dir / "dataset.json"
    if meta.exists():
        old = read_json(meta).get("fingerprint")
        if old == fingerprint:
            return
        if not rebuild:
            raise DataError(
                f"{dataset_dir} already holds another version of dataset "
                f"{dataset.name!r} (fingerprint {old} != {fingerprint}); pass --rebuild "
                "(rebuild=True) to replace it, or choose another --out"
            )
        log.info("%s: dataset changed; rewriting the tables (rebuild)", dataset.name)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(dataset_dir / "images.parquet", dataset.images)
    write_parquet(dataset_dir / "captions.parquet", dataset.captions)
    info = dict(getattr(dataset, "info", None) or {})
    info.setdefault("name", dataset.name)
    info["fingerprint"] = fingerprint
    write_json(meta, info)


# ----------------------------------------------------------------------------- one backbone
def _up_to_date(bdir: Path, target: Target, fingerprint: str, opts: BuildOptions) -> bool:
    path = bdir / MANIFEST
    if not path.exists():
        return False
    try:
        m = read_json(path)
    except (OSError, ValueError):
        return False
    same = (same_source(m, target, fingerprint)
            and m.get("dtype") == opts.dtype
            and _same_index(m, opts))
    return same and all((bdir / f).exists() for f in m.get("files", {}))


def _same_index(m: dict[str, Any], opts: BuildOptions) -> bool:
    """Whether the stored index is what ``opts`` asks for. ``auto`` keeps a store built
    with the same target and budget, and an exact flat store auto would leave flat."""
    index = m.get("index") or {}
    if opts.index_kind != "auto":
        return index.get("kind") == opts.index_kind
    if index.get("kind") == "auto":
        return (index.get("target_recall") == opts.auto.target_recall
                and index.get("max_memory") == opts.auto.max_memory)
    dim = int(m.get("dim") or 0)
    return index.get("kind") == "flat" and all(
        choose_index(int(m.get(f"n_{t}") or 0), dim, opts.auto)[0] == "flat"
        for t in ("images", "captions"))


def _sizes(opts: BuildOptions, encoder: Any) -> tuple[int, int]:
    """Batch size (the encoder's default when not given) and a shard size aligned to it."""
    batch = opts.batch_size or int(encoder.default_batch_size)
    shard = opts.shard_size or batch * max(1, 4096 // batch)
    if shard % batch:
        raise UserInputError(
            f"shard_size ({shard}) must be a positive multiple of batch_size ({batch})")
    return batch, shard


def _kept(bdir: Path, target: Target, fingerprint: str, opts: BuildOptions) -> bool:
    """Leave a finished store alone, or re-index it from its stored vectors; False
    when it must be encoded."""
    if _up_to_date(bdir, target, fingerprint, opts):
        log.info("%s: up to date (%s)", target.name, bdir)
        for leftover in ("shards", REINDEX_DIR):  # killed right after the manifest
            shutil.rmtree(bdir / leftover, ignore_errors=True)
        return True
    shutil.rmtree(bdir / REINDEX_DIR, ignore_errors=True)  # an interrupted re-index
    old = reusable(bdir, target, fingerprint, opts.dtype)
    if old is None:
        return False
    reindex(bdir, old, dtype=opts.dtype, index_kind=opts.index_kind, settings=opts.auto)
    log.info("%s: re-indexed %s from its stored vectors (%s %s -> %s %s), nothing "
             "encoded", target.name, bdir, old.get("dtype"),
             (old.get("index") or {}).get("kind"), opts.dtype, opts.index_kind)
    return True


def build_one(dataset: Any, target: Target, fingerprint: str, opts: BuildOptions,
              counter: ShardCounter) -> Path:
    """Build (or resume, re-index, or leave alone when up to date) one backbone's store."""
    bdir = opts.out / dataset.name / target.folder
    if _kept(bdir, target, fingerprint, opts):
        return bdir
    (bdir / MANIFEST).unlink(missing_ok=True)  # stale: rebuild, never half-open
    encoder = load_encoder_for(target.spec, opts.device)
    batch, shard = _sizes(opts, encoder)
    stamp = {"dataset_fingerprint": fingerprint, **target.identity,
             "dim": int(encoder.embed_dim)}
    sdir = bdir / "shards"
    sdir.mkdir(parents=True, exist_ok=True)
    img = Shards("images", sdir, len(dataset.images), shard, stamp)
    cap = Shards("captions", sdir, len(dataset.captions), shard, stamp)
    img.scan()
    cap.scan()
    reused = len(img.done) + len(cap.done)
    if reused:
        log.info("%s: reusing %d finished shard(s) (%d image, %d caption)",
                 target.name, reused, len(img.done), len(cap.done))
    timings = _encode_all(dataset, target, encoder, img, cap, opts, batch, counter)
    timings.update(shards_reused=reused, batch_size=batch, shard_size=shard,
                   workers=opts.workers)
    manifest = _finish(bdir, target, encoder, img, cap, fingerprint=fingerprint,
                       opts=opts, timings=timings)
    log.info("%s: built %s (%d images, %d captions, %d skipped)", target.name, bdir,
             img.n, cap.n, len(manifest["skipped"]))
    return bdir


def _encode_all(dataset: Any, target: Target, encoder: Any, img: Shards, cap: Shards,
                opts: BuildOptions, batch: int, counter: ShardCounter) -> dict[str, Any]:
    from tqdm.auto import tqdm

    rel = dataset.images["file"].astype(str).tolist()
    files = [str(f) for f in dataset.image_paths()]
    with tqdm(total=img.n, initial=img.done_rows, desc=f"{target.name} images", unit="img",
              disable=not opts.progress, file=sys.stderr) as bar:
        t0 = time.perf_counter()
        n_img = encode_images(encoder, img, files, rel, batch_size=batch,
                              workers=opts.workers, strict=opts.strict, counter=counter,
                              bar=bar)
        t_img = time.perf_counter() - t0
    with tqdm(total=cap.n, desc=f"{target.name} captions", unit="txt",
              disable=not opts.progress, file=sys.stderr) as bar:
        t0 = time.perf_counter()
        texts = dataset.captions["text"].astype(str).tolist()
        n_cap = encode_captions(encoder, cap, texts, counter, bar)
        t_cap = time.perf_counter() - t0
    return {
        "image_encode_seconds": round(t_img, 4), "images_encoded": n_img,
        "images_per_s": round(n_img / t_img, 2) if n_img and t_img > 0 else None,
        "caption_encode_seconds": round(t_cap, 4), "captions_encoded": n_cap,
    }


def _finish(bdir: Path, target: Target, encoder: Any, img: Shards, cap: Shards, *,
            fingerprint: str, opts: BuildOptions, timings: dict[str, Any]) -> dict[str, Any]:
    """Assemble the matrices, write npy + faiss, then (last, atomically) the manifest."""
    dim = int(encoder.embed_dim)
    images, skipped = img.assemble(dim)
    captions, _ = cap.assemble(dim)
    valid = np.ones(len(images), dtype=bool)
    valid[[s["row_id"] for s in skipped]] = False
    index = write_outputs(bdir, images, captions, valid, opts.dtype, opts.index_kind,
                          opts.auto)
    manifest = build_manifest(
        target, encoder, fingerprint=fingerprint, dtype=opts.dtype,
        counts=(len(images), len(captions)), index=index, files=file_records(bdir),
        timings=timings, device=opts.device, skipped=skipped)
    write_json(bdir / MANIFEST, manifest)
    shutil.rmtree(bdir / "shards", ignore_errors=True)
    return manifest


# ----------------------------------------------------------------------------- entry point
def _prepare(dataset: Any, backbones: Sequence[str] | str, pretrained: str,
             root: str | os.PathLike[str] | None) -> tuple[Any, list[Target]]:
    """Load the dataset (when given a source) and resolve every backbone; check the
    tables. Everything that can fail on the user's input fails here, before writing."""
    if isinstance(dataset, (str, os.PathLike)):
        from clipindex.sources import load_dataset

        dataset = load_dataset(Path(dataset), root=None if root is None else Path(root))
    targets = resolve_targets(backbones, pretrained)
    check_rows(dataset.images, "images")
    check_rows(dataset.captions, "captions")
    if len(dataset.images) == 0:
        raise DataError(f"dataset {dataset.name!r} has no images; nothing to encode")
    return dataset, targets


def build_store(
    dataset: Dataset | str | os.PathLike[str],
    backbones: Sequence[str] | str,
    *,
    out: str | os.PathLike[str] = "indexes",
    root: str | os.PathLike[str] | None = None,
    pretrained: str = "default",
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    strict: bool = False,
    index_kind: str = "auto",
    target_recall: float = DEFAULT_TARGET_RECALL,
    max_index_memory: int | str | None = None,
    dtype: str = "float32",
    shard_size: int | None = None,
    rebuild: bool = False,
    progress: bool = True,
    _stop_after_shards: int | None = None,
) -> list[Path]:
    """Encode a dataset once per backbone into ``OUT/<dataset>/<backbone>/``.

    ``dataset`` is a :class:`clipindex.sources.Dataset` or a source
    :func:`clipindex.sources.load_dataset` reads (YAML config, class-folder tree,
    CSV/parquet manifest; ``root`` overrides its data root). ``backbones`` are names
    :func:`clipindex.encode.resolve_backbone` knows, with ``pretrained`` (``"default"``,
    a tag, ``"none"`` or a checkpoint path). ``batch_size``, ``workers`` and ``device``
    are encoding knobs (``None``: the encoder's defaults); ``strict`` makes the first
    unreadable image a :class:`DataError` instead of a skipped row; ``index_kind`` is
    ``"auto"`` (exact ``flat`` for small stores, else an IVF kind chosen from N, dim and
    ``max_index_memory`` (bytes or ``"4GB"``) and tuned to ``target_recall`` recall@10 on
    the store's own held-out vectors: :mod:`clipindex.store.tuning`), ``"flat"``,
    ``"ivf"``, ``"hnsw"``, ``"pq"`` or ``"ivfpq"`` (approximate kinds record recall@10);
    ``dtype`` (``"float32"``/``"float16"``) is the stored precision; ``shard_size`` the
    rows per resumable shard (a multiple of ``batch_size``, default ~4096); ``rebuild``
    replaces the tables of a folder holding another version of the dataset.

    Returns the backbone folders in the order asked: finished stores are left alone
    ("up to date"), unfinished ones resume from their finished shards.

    Example
    -------
    >>> paths = build_store("configs/datasets/demo.yaml", ["tiny-vit"],
    ...                     root="worlds/demo", out="indexes")  # doctest: +SKIP
    """
    auto = AutoSettings(target_recall=float(target_recall),
                        max_memory=parse_memory(max_index_memory))
    opts = options(out, batch_size, shard_size, workers=workers, device=device,
                   strict=strict, index_kind=index_kind, dtype=dtype, progress=progress,
                   auto=auto)
    dataset, targets = _prepare(dataset, backbones, pretrained, root)
    fingerprint = dataset_fingerprint(dataset)
    with build_lock(opts.out / dataset.name):  # one build per dataset folder
        write_tables(dataset, opts.out / dataset.name, fingerprint, rebuild)
        counter = ShardCounter(_stop_after_shards)
        return [build_one(dataset, t, fingerprint, opts, counter) for t in targets]
