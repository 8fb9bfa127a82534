"""Building a store: :func:`build_store` and the steps of one backbone's build.

A build validates every knob and backbone name, and the knobs against the settings it
will use (:mod:`clipindex.store.plan`), before writing anything, holds the
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
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from clipindex.errors import DataError, UserInputError, os_faults
from clipindex.index.tuning import (
    DEFAULT_TARGET_RECALL,
    choose_index,
)
from clipindex.sources import dataset_fingerprint
from clipindex.store.engines import image_inputs
from clipindex.store.generations import publish, snapshot_build, store_view, tombstones
from clipindex.store.lock import build_lock
from clipindex.store.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    READERS,
    TEXT_CACHE,
    Target,
    build_manifest,
    file_records,
    load_encoder_for,
    read_json,
    read_manifest,
    resolve_targets,
    same_source,
    stored_route,
    table_records,
    write_dataset_info,
    write_manifest,
    write_parquet,
)
from clipindex.store.outputs import write_outputs
from clipindex.store.owned import refuse_store_path
from clipindex.store.plan import (
    BuildOptions,
    EncodePlan,
    build_options,
    chosen_settings,
    options,
    plan_encoding,
)
from clipindex.store.reindex import REINDEX_DIR, reindex, reusable
from clipindex.store.routes import build_route
from clipindex.store.shards import ShardCounter, Shards
from clipindex.store.space import check_space, matrix_bytes, naming_needs
from clipindex.store.verify import check_backbone

if TYPE_CHECKING:
    from clipindex.sources import Dataset

__all__ = [
    "BuildOptions",
    "build_one",
    "build_store",
    "build_with_options",
    "check_rows",
    "image_inputs",
    "options",
    "source_overrides",
    "write_tables",
]

log = logging.getLogger("clipindex.store")


# ----------------------------------------------------------------------------- dataset
def check_rows(frame: pd.DataFrame, what: str) -> None:
    if not np.array_equal(frame["row_id"].to_numpy(), np.arange(len(frame))):
        raise DataError(f"{what} row_id must run 0..n-1 in order; the source produced others")


def _tables_intact(dataset_dir: Path, info: dict[str, Any]) -> bool:
    """Whether the tables on disk are the ones ``dataset.json`` records (format 1,
    without table hashes: whether they still match its fingerprint)."""
    from clipindex.store.verify import read_tables, table_damage

    if "tables" in info:
        return not table_damage(dataset_dir, info)
    try:
        read_tables(dataset_dir, info)
    except UserInputError:
        return False
    return True


def write_tables(dataset: Any, dataset_dir: Path, fingerprint: str, rebuild: bool) -> None:
    """Write the dataset-level tables (and their sha256 in ``dataset.json``), refusing to
    mix two datasets in one folder. Damaged tables of the same dataset are rewritten."""
    meta = dataset_dir / "dataset.json"
    if meta.exists():
        try:
            recorded = read_json(meta)
        except (OSError, ValueError):
            recorded = None
        recorded = recorded if isinstance(recorded, dict) else {}
        old = recorded.get("fingerprint")
        if old == fingerprint:
            if _tables_intact(dataset_dir, recorded):
                return
            log.info("%s: the tables in %s are damaged; rewriting them", dataset.name,
                     dataset_dir)
        elif old is None:
            log.info("%s: %s is unreadable; rewriting it", dataset.name, meta)
        elif not rebuild:
            raise DataError(
                f"{dataset_dir} already holds another version of dataset "
                f"{dataset.name!r} (fingerprint {old} != {fingerprint}); run `clipindex "
                f"add SOURCE --index {dataset_dir}` to add the new images, or pass --rebuild "
                "(rebuild=True) to replace it"
            )
        else:
            log.info("%s: dataset changed; rewriting the tables (rebuild)", dataset.name)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(dataset_dir / "images.parquet", dataset.images)
    write_parquet(dataset_dir / "captions.parquet", dataset.captions)
    info = dict(getattr(dataset, "info", None) or {})
    info.setdefault("name", dataset.name)
    info["fingerprint"] = fingerprint
    info["tables"] = table_records(dataset_dir)
    write_dataset_info(meta, info)


# ----------------------------------------------------------------------------- one backbone
def _up_to_date(bdir: Path, target: Target, fingerprint: str, opts: BuildOptions) -> bool:
    path = bdir / MANIFEST
    if not path.exists():
        return False
    try:
        m = read_manifest(bdir)
    except UserInputError:  # damaged: rebuilt (or re-indexed from intact vectors)
        return False
    # A store of an older format that holds these vectors stays as it is (it opens).
    current = {**m, "format_version": FORMAT_VERSION} if m["format_version"] in READERS else m
    same = (same_source(current, target, fingerprint)
            and m.get("dtype") == opts.dtype
            and stored_route(m) == build_route(bdir, opts.decode, opts.rebuild)
            and _same_index(m, opts))
    return same and not check_backbone(bdir, m, verify=False)


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


def _kept(bdir: Path, target: Target, fingerprint: str, opts: BuildOptions) -> bool:
    """Leave a finished store alone, or re-index it from its stored vectors; False
    when it must be encoded."""
    if _up_to_date(bdir, target, fingerprint, opts):
        draft = opts.decode is None and build_route(bdir, None, opts.rebuild) == "draft"
        log.info("%s: up to date (%s)%s", target.name, bdir, "; decoded in draft mode: "
                 "--rebuild re-encodes it the reference way" if draft else "")
        for leftover in ("shards", REINDEX_DIR):  # killed right after the manifest
            shutil.rmtree(bdir / leftover, ignore_errors=True)
        return True
    shutil.rmtree(bdir / REINDEX_DIR, ignore_errors=True)  # an interrupted re-index
    old = reusable(bdir, target, fingerprint, opts.dtype)
    if old is None or stored_route(old) != build_route(bdir, opts.decode, opts.rebuild):
        return False
    reindex(bdir, old, dtype=opts.dtype, index_kind=opts.index_kind, settings=opts.auto)
    log.info("%s: re-indexed %s from its stored vectors (%s %s -> %s %s), nothing "
             "encoded", target.name, bdir, old.get("dtype"),
             (old.get("index") or {}).get("kind"), opts.dtype, opts.index_kind)
    return True


def build_one(dataset: Any, target: Target, fingerprint: str, opts: BuildOptions,
              counter: ShardCounter, before_encode: Any = None,
              plan: EncodePlan | None = None) -> Path:
    """Build (or resume, re-index, or leave alone when up to date) one backbone's store;
    ``before_encode()`` runs only when it must be encoded (a build enters its engine's
    session there: a Ray build starts Ray); the engine (``opts.runner``) encodes;
    ``plan`` is what :func:`~clipindex.store.plan.plan_encoding` checked (default: made
    and checked now)."""
    if plan is None:
        plan = plan_encoding(opts, [target], n_images=len(dataset.images),
                             n_captions=len(dataset.captions))[target.folder]
    bdir = opts.out / dataset.name / target.folder
    route = build_route(bdir, opts.decode, opts.rebuild)
    if _kept(bdir, target, fingerprint, opts):
        return bdir
    if before_encode is not None:
        before_encode()
    (bdir / MANIFEST).unlink(missing_ok=True)  # stale: rebuild, never half-open
    (bdir / TEXT_CACHE).unlink(missing_ok=True)  # derived from the old weights
    encoder = load_encoder_for(target.spec, opts.runner.encoder_device(opts))
    encoder.decode_route = route  # no --decode: draft for a draft route (Ray's tasks too)
    settings = chosen_settings(opts, encoder, plan)
    batch, shard = plan.sizes(settings["batch_size"])
    stamp = {"dataset_fingerprint": fingerprint, **target.identity,
             "dim": int(encoder.embed_dim)}
    sdir = bdir / "shards"
    sdir.mkdir(parents=True, exist_ok=True)
    img = Shards("images", sdir, len(dataset.images), shard, {**stamp, "decode_route": route})
    cap = Shards("captions", sdir, len(dataset.captions), shard, stamp)
    img.scan()
    cap.scan()
    needs = _needs(img, cap, int(encoder.embed_dim), opts.dtype)
    check_space(bdir, needs)
    reused = len(img.done) + len(cap.done)
    if reused:
        log.info("%s: reusing %d finished shard(s) (%d image, %d caption)",
                 target.name, reused, len(img.done), len(cap.done))
    with os_faults(bdir, needs=needs):  # a full disk names what the whole build needs
        timings = opts.runner.encode(dataset, target, encoder, img, cap, opts, settings,
                                     counter)
        timings.update(shards_reused=reused, batch_size=batch, shard_size=shard,
                       workers=settings.get("workers"), settings=settings)
        manifest = _finish(bdir, target, encoder, img, cap, fingerprint=fingerprint,
                           opts=opts, timings=timings, route=route)
    log.info("%s: built %s (%d images, %d captions, %d skipped)", target.name, bdir,
             img.n, cap.n, len(manifest["skipped"]))
    return bdir


def _needs(img: Shards, cap: Shards, dim: int, dtype: str) -> int:
    """Bytes a backbone's build still writes: the unfinished shards, then both matrices
    and their indexes (about as large as flat ones) beside the shards."""
    todo = img.n + cap.n - img.done_rows - cap.done_rows
    return matrix_bytes(todo, dim) + 2 * matrix_bytes(img.n + cap.n, dim, dtype)


def _build_needs(dataset: Any, targets: Sequence[Target], dtype: str) -> int:
    """Bytes a whole build writes (shards, matrices, indexes of every backbone), from
    each model's skeleton (named when the disk fills before a model is loaded)."""
    from clipindex.encode import facts

    rows = len(dataset.images) + len(dataset.captions)
    dims = [facts.model_facts(t.spec).embed_dim for t in targets]
    return sum(matrix_bytes(rows, d) + 2 * matrix_bytes(rows, d, dtype) for d in dims)


def _finish(bdir: Path, target: Target, encoder: Any, img: Shards, cap: Shards, *,
            fingerprint: str, opts: BuildOptions, timings: dict[str, Any], route: str
            ) -> dict[str, Any]:
    """Assemble the matrices, write npy + faiss, then (last, atomically) the manifest."""
    dim = int(encoder.embed_dim)
    images, skipped = img.assemble(dim)
    captions, _ = cap.assemble(dim)
    valid = np.ones(len(images), dtype=bool)
    valid[[s["row_id"] for s in skipped]] = False
    dead_images, dead_captions = tombstones(read_json(bdir.parent / "dataset.json"))
    valid[dead_images] = False  # rows `clipindex add` removed: never indexed
    cap_valid = np.ones(len(captions), dtype=bool)
    cap_valid[dead_captions] = False
    t0 = time.perf_counter()
    index = write_outputs(bdir, images, captions, valid, opts.dtype, opts.index_kind,
                          opts.auto, caption_valid=cap_valid)
    ray_record = timings.pop("ray", None)
    if ray_record is not None:
        ray_record["stage_seconds"]["index"] = round(time.perf_counter() - t0, 4)
    manifest = build_manifest(
        target, encoder, fingerprint=fingerprint, dtype=opts.dtype,
        counts=(len(images), len(captions)), index=index, files=file_records(bdir),
        timings=timings, device=opts.device, skipped=skipped, decode_route=route)
    manifest["engine"] = opts.engine
    if ray_record is not None:
        manifest["ray"] = ray_record
        manifest["device"] = ray_record["device"]
    manifest = write_manifest(bdir, manifest)
    shutil.rmtree(bdir / "shards", ignore_errors=True)
    return manifest


# ----------------------------------------------------------------------------- entry point
def _once(action: Any) -> Any:
    """``action`` wrapped so that only its first call runs it."""
    done: list[bool] = []

    def run() -> None:
        if not done:
            done.append(True)
            action()
    return run


def source_overrides(allow_outside_root: bool, storage_options: dict[str, Any] | None,
                     label_field: str | None) -> dict[str, Any]:
    """The dataset fields a build or an add given a source path replaces."""
    extra: dict[str, Any] = {"allow_outside_root": True} if allow_outside_root else {}
    if storage_options:
        extra["storage_options"] = dict(storage_options)
    if label_field:
        extra["label_field"] = label_field
    return extra


def _prepare(dataset: Any, backbones: Sequence[str] | str, pretrained: str,
             root: str | os.PathLike[str] | None, extra: dict[str, Any]
             ) -> tuple[Any, list[Target]]:
    """Load the dataset (when given a source) and resolve every backbone; check the
    tables. With :func:`~clipindex.store.plan.plan_encoding` (the knobs against what
    each backbone will use), everything that can fail on the user's input fails here,
    before writing."""
    if isinstance(dataset, (str, os.PathLike)):
        from clipindex.sources import load_dataset

        given = None if root is None else (str(root) if "://" in str(root) else Path(root))
        dataset = load_dataset(dataset, root=given, **extra)
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
    threads: int | None = None,
    text_batch_size: int | None = None,
    decode: str | None = None,
    strict: bool = False,
    index_kind: str = "auto",
    target_recall: float = DEFAULT_TARGET_RECALL,
    max_index_memory: int | str | None = None,
    dtype: str = "float32",
    shard_size: int | None = None,
    rebuild: bool = False,
    progress: bool = True,
    allow_outside_root: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    encoders: int | None = None,
    gpus_per_encoder: float = 0.0,
    storage_options: dict[str, Any] | None = None,
    label_field: str | None = None,
    _stop_after_shards: int | None = None,
    _ray_hooks: dict[str, Any] | None = None,
) -> list[Path]:
    """Encode a dataset once per backbone into ``OUT/<dataset>/<backbone>/``.

    ``dataset`` is a :class:`clipindex.sources.Dataset` or a source
    :func:`clipindex.sources.load_dataset` reads (YAML config, class-folder tree,
    CSV/parquet manifest; ``root`` overrides its data root). ``backbones`` are names
    :func:`clipindex.encode.resolve_backbone` knows, with ``pretrained`` (``"default"``,
    a tag, ``"none"`` or a checkpoint path). ``batch_size``, ``workers``, ``threads``
    (torch threads while encoding), ``text_batch_size``, ``decode`` and ``device`` are
    encoding knobs (``None``: chosen per backbone from
    the cores, the model's GFLOPs and the device, :meth:`Encoder.settings`, and logged
    in one line; the manifest's ``timings.settings`` records them). ``decode``: ``"pil"``
    or ``"nvjpeg"`` (full decodes: open_clip's vectors, ``decode_route: reference``) or
    ``"draft"`` (faster, not open_clip's pixels); ``None`` keeps a finished store's route
    (:mod:`clipindex.store.routes`). ``strict`` makes the first
    unreadable image a :class:`DataError` instead of a skipped row; ``index_kind`` is
    ``"auto"`` (exact ``flat`` for small stores, else an IVF kind chosen from N, dim and
    ``max_index_memory`` (bytes or ``"4GB"``) and tuned to ``target_recall`` recall@10 on
    the store's own held-out vectors: :mod:`clipindex.index.tuning`), ``"flat"``,
    ``"ivf"``, ``"hnsw"``, ``"pq"`` or ``"ivfpq"`` (approximate kinds record recall@10);
    ``dtype`` (``"float32"``/``"float16"``) is the stored precision; ``shard_size`` the
    rows per resumable shard (a multiple of ``batch_size``, default ~4096); ``rebuild``
    replaces the tables of a folder holding another version of the dataset and
    re-encodes a draft store the reference way (unless ``decode="draft"``);
    ``allow_outside_root`` accepts image paths outside the data root (a source given by
    path; recorded in ``dataset.json``). A source, and ``root``, may be fsspec URLs or
    webdataset shards (``shards/{00000..00009}.tar``); ``storage_options`` (fsspec
    options, over the config's) and ``label_field`` (shards) apply to a source path.
    ``engine="ray"`` encodes on Ray Data (:mod:`clipindex.store.ray_engine`): it joins
    the cluster at ``ray_address`` (or ``RAY_ADDRESS``), else starts a local Ray; the
    pool has ``encoders`` actors (default: one per GPU when ``gpus_per_encoder > 0``,
    else 1) and writes the same shards, matrices, indexes and manifest as ``"local"``.

    Returns the backbone folders in the order asked: finished stores are left alone
    ("up to date"), unfinished ones resume from their finished shards.

    Example
    -------
    >>> paths = build_store("demo", ["tiny-vit"],
    ...                     root="worlds/demo", out="indexes")  # doctest: +SKIP
    """
    opts = build_options(out, batch_size=batch_size, shard_size=shard_size, workers=workers,
                         threads=threads, text_batch_size=text_batch_size, decode=decode,
                         device=device, strict=strict, index_kind=index_kind,
                         target_recall=target_recall, max_index_memory=max_index_memory,
                         dtype=dtype, rebuild=rebuild, progress=progress, engine=engine,
                         ray_address=ray_address, encoders=encoders,
                         gpus_per_encoder=gpus_per_encoder, ray_hooks=_ray_hooks)
    return build_with_options(dataset, backbones, opts, root=root, pretrained=pretrained,
                              allow_outside_root=allow_outside_root,
                              storage_options=storage_options, label_field=label_field,
                              _stop_after_shards=_stop_after_shards)


def build_with_options(
    dataset: Dataset | str | os.PathLike[str],
    backbones: Sequence[str] | str,
    opts: BuildOptions,
    *,
    root: str | os.PathLike[str] | None = None,
    pretrained: str = "default",
    allow_outside_root: bool = False,
    storage_options: dict[str, Any] | None = None,
    label_field: str | None = None,
    _stop_after_shards: int | None = None,
) -> list[Path]:
    """:func:`build_store` with its settings already made (and checked) as
    :class:`~clipindex.store.plan.BuildOptions`
    (:func:`~clipindex.store.plan.build_options`): what ``clipindex build`` calls."""
    refuse_store_path(opts.out)  # OUT holds dataset folders and is never inside one
    source = dataset if isinstance(dataset, (str, os.PathLike)) else "SOURCE"
    loaded, targets = _prepare(dataset, backbones, pretrained, root, source_overrides(
        allow_outside_root, storage_options, label_field))
    fingerprint = dataset_fingerprint(loaded)
    # The knobs against what each backbone will use: nothing is written before this.
    ddir = opts.out / loaded.name
    plans = plan_encoding(opts, targets, n_images=len(loaded.images),
                          n_captions=len(loaded.captions), dataset_dir=ddir)
    with naming_needs(ddir, lambda: _build_needs(loaded, targets, opts.dtype)), \
            build_lock(ddir):  # one build per dataset folder
        publish(ddir)  # an add killed after its commit: finish it first
        loaded, fingerprint = store_view(loaded, ddir, fingerprint, opts.rebuild, source)
        write_tables(loaded, ddir, fingerprint, opts.rebuild)
        counter = ShardCounter(_stop_after_shards)
        with ExitStack() as stack:  # the session (Ray) starts once a backbone needs encoding
            start = _once(lambda: stack.enter_context(opts.runner.session(opts)))
            paths = [build_one(loaded, t, fingerprint, opts, counter, start, plans[t.folder])
                     for t in targets]
        snapshot_build(ddir, {"built": [t.folder for t in targets], "time": time.time()})
        return paths
