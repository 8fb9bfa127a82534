"""``clipindex add``: bring a store up to date with its changed source, as a new
generation (:mod:`clipindex.store.generations`), encoding only the new rows.

An image's identity is its file path relative to the source's root (with, for remote
objects and shard members, its ``etag``: a changed object is a new image). Images of the
source the store lacks become new row ids after the last row; images of the store the
source lacks are *tombstoned*: they keep their row id, their vectors are zeroed, their
FAISS entries removed, and no query returns them (``dataset.json``'s ``tombstones``).
Captions follow their image. Each chosen backbone encodes the rows it lacks (a backbone
left out of an earlier add catches up across generations) into resumable shards
(``<backbone>/add-shards/``, stamped with the target generation and first row), then the
new generation is staged, committed and published. A backbone left out is *stale*.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipindex.errors import (
    IndexMismatchError,
    UserInputError,
    os_fault,
    os_faults,
)
from clipindex.store.addplan import RowPlan, plan_rows
from clipindex.store.build import check_rows, image_inputs, source_overrides
from clipindex.store.generations import (
    commit,
    current_generation,
    generation_dir,
    link_or_copy,
    link_unchanged,
    publish,
    stage,
)
from clipindex.store.lock import build_lock
from clipindex.store.manifest import (
    TEXT_CACHE,
    Target,
    file_records,
    load_encoder_for,
    read_manifest,
    resolve_targets,
    table_records,
    write_dataset_info,
    write_manifest,
    write_parquet,
)
from clipindex.store.plan import BuildOptions, EncodePlan, chosen_settings, options, plan_encoding
from clipindex.store.routes import add_decoder
from clipindex.store.shards import ShardCounter, Shards, encode_captions, encode_images
from clipindex.store.space import check_space, matrix_bytes, reserved_memmap
from clipindex.store.update import update_index
from clipindex.store.verify import read_dataset_info, read_tables

if TYPE_CHECKING:
    from clipindex.sources import Dataset

__all__ = ["ADD_SHARDS", "AddResult", "NewRows", "RowPlan", "add_options", "add_with_options",
           "plan_rows", "write_backbone"]

log = logging.getLogger("clipindex.store")

ADD_SHARDS = "add-shards"
Hook = Callable[[str], None]


@dataclass
class AddResult:
    """What an add did: ``added`` / ``removed`` image rows (and captions), the
    generation it wrote (the old one when nothing changed), what each backbone
    encoded, and the backbones left stale."""

    path: str
    generation: int
    added: int
    removed: int
    added_captions: int
    removed_captions: int
    encoded: dict[str, int] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    seconds: float = 0.0
    from_embeddings: bool = False  # the rows' vectors were read, not encoded

    def line(self) -> str:
        """What was encoded (per backbone where they differ: a catch-up add encodes the
        rows a stale backbone lacks, not only the rows added now) and removed."""
        if self.from_embeddings:
            return (f"added {self.added} rows from embeddings (nothing encoded), "
                    f"removed {self.removed}")
        counts = set(self.encoded.values())
        if len(counts) <= 1:
            return f"encoded {counts.pop() if counts else 0} new images, removed {self.removed}"
        each = ", ".join(f"{k} {v}" for k, v in sorted(self.encoded.items()))
        return f"encoded new images ({each}), removed {self.removed}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.line()}


def _load_source(source: Any, root: Any, extra: dict[str, Any]) -> Any:
    if isinstance(source, (str, os.PathLike)):
        from clipindex.sources import load_dataset

        given = None if root is None else (str(root) if "://" in str(root) else Path(root))
        source = load_dataset(source, root=given, **extra)
    check_rows(source.images, "images")
    check_rows(source.captions, "captions")
    return source


def _targets(cdir: Path, ddir: Path, names: Sequence[str] | None, pretrained: str
             ) -> list[tuple[Target, dict[str, Any]]]:
    """(target, current manifest) of every backbone the add updates."""
    from clipindex.store.reader import list_backbones

    built = list_backbones(ddir)
    if names:
        wanted = resolve_targets(list(names), pretrained)
        absent = [t for t in wanted if t.folder not in built]
        missing = [t.name for t in absent]
        others = [f for f in built if absent
                  and f.split("__")[0] == absent[0].folder.split("__")[0]]
        if others:  # the backbone is built, with other weights than --pretrained names
            raise UserInputError(
                f"backbone {missing[0]!r} is built in {ddir} ({', '.join(others)}) with "
                f"other weights than --pretrained {pretrained}; give the --pretrained it "
                f"was built with, or build these weights first with `clipindex build "
                f"SOURCE --backbone {missing[0]} --pretrained {pretrained} --out "
                f"{ddir.parent}`")
        if missing:
            raise UserInputError(
                f"backbone {missing[0]!r} is not built in {ddir} (built: "
                f"{', '.join(built) or 'none'}); build it first with `clipindex build SOURCE "
                f"--backbone {missing[0]} --out {ddir.parent}`")
    else:
        wanted = []
        for folder in built:
            req = read_manifest(cdir / folder).get("requested") or {}
            wanted += resolve_targets([req.get("backbone", folder)],
                                      req.get("pretrained", "default"))
    out = []
    for t in wanted:
        m = read_manifest(cdir / t.folder)
        if m.get("weights") != t.identity["weights"]:
            raise IndexMismatchError(
                f"the weights of {t.folder} differ from those its store holds; rebuild it "
                f"with `clipindex build SOURCE --backbone {t.name} --rebuild`")
        out.append((t, m))
    return out


class _HookCounter(ShardCounter):
    def __init__(self, hook: Hook | None) -> None:
        super().__init__(None)
        self.hook = hook

    def tick(self, label: str) -> None:
        super().tick(label)
        if self.hook:
            self.hook(f"shard:{label}")


def _encode_new(target: Target, m: dict[str, Any], plan: RowPlan, source: Any, ddir: Path,
                stamp: dict[str, Any], opts: BuildOptions, encoding: EncodePlan,
                hook: Hook | None
                ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], int]:
    """Encode the image and caption rows ``target`` lacks into its add-shards; return
    them, their skipped inputs (store row ids) and the image rows encoded now."""
    from clipindex.progress import bar as tqdm

    have_i, have_c = int(m["n_images"]), int(m["n_captions"])
    if have_i > len(plan.images) or have_c > len(plan.captions):
        raise IndexMismatchError(
            f"{target.folder} holds more rows than the store's tables; rebuild it with "
            f"`clipindex build SOURCE --backbone {target.name} --rebuild`")
    dim = int(m["dim"])
    if have_i == len(plan.images) and have_c == len(plan.captions):
        return np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32), [], 0
    encoder = load_encoder_for(target.spec, opts.device)
    settings = chosen_settings(opts, encoder, encoding)
    batch, shard = encoding.sizes(settings["batch_size"])
    sdir = ddir / target.folder / ADD_SHARDS
    sdir.mkdir(parents=True, exist_ok=True)
    img = Shards("images", sdir, len(plan.images) - have_i, shard, {**stamp, "first": have_i})
    cap = Shards("captions", sdir, len(plan.captions) - have_c, shard,
                 {**stamp, "first": have_c})
    img.scan()
    cap.scan()
    rel = plan.images["file"].astype(str).tolist()[have_i:]
    counter = _HookCounter(hook)
    with tqdm(total=img.n, initial=img.done_rows, desc=f"{target.name} new images",
              unit="img", disable=not opts.progress, file=sys.stderr) as bar:
        knobs = {k: settings.get(k) for k in ("threads", "decode") if settings.get(k)}
        files, reader = image_inputs(source, rel)
        if reader is not None:
            knobs["reader"] = reader
        n_img = encode_images(encoder, img, files, rel,
                              batch_size=batch, workers=settings.get("workers"),
                              strict=False, counter=counter, bar=bar, **knobs)
    with tqdm(total=cap.n, desc=f"{target.name} new captions", unit="txt",
              disable=not opts.progress, file=sys.stderr) as bar:
        texts = plan.captions["text"].astype(str).tolist()[have_c:]
        encode_captions(encoder, cap, texts, counter, bar,
                        batch_size=settings.get("text_batch_size"),
                        threads=settings.get("threads"))
    new_i, skipped = img.assemble(dim)
    new_c, _ = cap.assemble(dim)
    skipped = [{**s, "row_id": int(s["row_id"]) + have_i} for s in skipped]
    return new_i, new_c, skipped, n_img


def _stage_backbone(staged: Path, target: Target, m: dict[str, Any], *, ddir: Path,
                    cdir: Path, plan: RowPlan, fingerprint: str, generation: int,
                    source: Any, opts: BuildOptions, encoding: EncodePlan,
                    hook: Hook | None) -> int:
    """Write one backbone's folder of the new generation into ``staged``; returns the
    image rows it encoded in this run."""
    t0 = time.perf_counter()
    stamp = {"generation": generation, "dataset_fingerprint": fingerprint,
             **target.identity, "dim": int(m["dim"])}
    rows = NewRows(*_encode_new(target, m, plan, source, ddir, stamp, opts, encoding, hook))
    write_backbone(cdir / target.folder, staged / target.folder, m, plan, fingerprint,
                   generation, rows, t0)
    return rows.encoded


@dataclass
class NewRows:
    """A backbone's vectors of the rows new in a generation: arrays, or functions that
    fill the new rows of the stored matrix in place (an add of imported embeddings),
    with the new rows' skipped inputs and invalid captions (store row ids)."""

    images: np.ndarray | Callable[[np.ndarray], None]
    captions: np.ndarray | Callable[[np.ndarray], None]
    skipped: list[dict[str, Any]]
    encoded: int
    invalid_captions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    note: dict[str, Any] = field(default_factory=dict)  # more of the manifest's last_add


def write_backbone(old: Path, out: Path, m: dict[str, Any], plan: RowPlan,
                   fingerprint: str, generation: int, rows: NewRows, t0: float) -> None:
    """The backbone folder ``out`` of generation ``generation``: ``old``'s matrices
    extended by ``rows``, tombstoned and skipped rows zeroed, the FAISS indexes updated
    (:func:`~clipindex.store.update.update_index`), the text cache kept, the manifest
    (``m`` updated) written last."""
    from clipindex import __version__

    out.mkdir(parents=True)
    skipped = sorted([*m.get("skipped", []), *rows.skipped], key=lambda s: s["row_id"])
    valid = np.ones(len(plan.images), dtype=bool)
    valid[[int(s["row_id"]) for s in skipped]] = False
    valid[plan.dead_images] = False
    cap_valid = np.ones(len(plan.captions), dtype=bool)
    cap_valid[plan.dead_captions] = False
    cap_valid[rows.invalid_captions] = False
    matrices = {name: _extend(old / f"{name}.npy", out / f"{name}.npy", new, ok, m["dtype"])
                for name, new, ok in (("images", rows.images, valid),
                                      ("captions", rows.captions, cap_valid))}
    crosses = {"images": lambda: {"text_to_image": matrices["captions"]},
               "captions": lambda: {"image_to_text": matrices["images"][valid]}}
    index = dict(m.get("index") or {})
    for name, ok in (("images", valid), ("captions", cap_valid)):
        index[name] = update_index(old / f"{name}.faiss", out / f"{name}.faiss",
                                   matrices[name], ok, int(m[f"n_{name}"]), index, name,
                                   crosses[name], generation)
    if (old / TEXT_CACHE).is_file():
        link_or_copy(old / TEXT_CACHE, out / TEXT_CACHE)
    seconds = time.perf_counter() - t0
    manifest = {**m, "clipindex_version": __version__, "n_images": len(plan.images),
                "n_captions": len(plan.captions), "n_skipped": len(skipped),
                "skipped": skipped, "dataset_fingerprint": fingerprint,
                "generation": generation, "n_tombstoned": int(len(plan.dead_images)),
                "index": index, "files": file_records(out),
                "last_add": {"generation": generation, "images_encoded": rows.encoded,
                             "rows_added": len(plan.images) - int(m["n_images"]),
                             "seconds": round(seconds, 4), **rows.note}}
    write_manifest(out, manifest)


def _extend(old: Path, path: Path, new: np.ndarray | Callable[[np.ndarray], None],
            ok: np.ndarray, dtype: str) -> np.ndarray:
    """Write ``path``: the stored rows of ``old`` (copied file to file by the kernel,
    :func:`_copy_rows`), then ``new`` (or what ``new(rows)`` writes into the new rows),
    with the rows not ``ok`` (tombstoned, skipped) zeroed; returns it memory-mapped
    read-only."""
    stored = np.load(old, mmap_mode="r")
    out = reserved_memmap(path, dtype, (len(ok), stored.shape[1]))  # never a SIGBUS
    if stored.dtype == out.dtype:
        _copy_rows(old, int(stored.offset), path, int(out.offset), stored.nbytes)
    else:  # another dtype: converted block by block through the maps
        for start in range(0, len(stored), 65536):
            stop = min(start + 65536, len(stored))
            out[start:stop] = stored[start:stop]
    if callable(new):
        new(out[len(stored):])
    elif len(new):
        out[len(stored):] = new.astype(dtype)
    out[np.flatnonzero(~ok)] = 0  # tombstoned (and skipped) rows hold zero vectors
    out.flush()
    del out
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return np.load(path, mmap_mode="r")


def _copy_rows(src: Path, src_at: int, dst: Path, dst_at: int, size: int) -> None:
    """Copy ``size`` bytes of ``src`` from ``src_at`` into ``dst`` at ``dst_at`` with
    ``os.copy_file_range`` (else reads and writes of 64 MB): no page of either matrix is
    mapped into this process. Copying through the memory maps made a 1% add to a 10M x
    512 float16 store hold 21.8 GB resident (both 10 GB matrices' pages) on a 24 GB
    machine."""
    with open(src, "rb") as fin, open(dst, "rb+") as fout:
        done = 0
        while done < size:
            step = min(size - done, 64 << 20)
            try:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), step,
                                       src_at + done, dst_at + done)
            except (AttributeError, OSError):  # no such call here, or not across these
                n = os.pwrite(fout.fileno(), os.pread(fin.fileno(), step, src_at + done),
                              dst_at + done)
            if n <= 0:
                raise OSError(f"copying {src} to {dst} stopped at byte {done} of {size}")
            done += n


def _stage_tables(cdir: Path, staged: Path, info: dict[str, Any], plan: RowPlan,
                  source_fp: str, fingerprint: str, generation: int,
                  backbones: list[str]) -> None:
    if plan.changed:
        write_parquet(staged / "images.parquet", plan.images)
        write_parquet(staged / "captions.parquet", plan.captions)
        tables = table_records(staged)
    else:
        for name in ("images.parquet", "captions.parquet"):
            link_or_copy(cdir / name, staged / name)
        tables = info.get("tables") or table_records(staged)
    entry = {"generation": generation, "added": plan.added, "removed": plan.removed,
             "added_captions": plan.added_captions,
             "removed_captions": plan.removed_captions, "backbones": backbones,
             "time": round(time.time(), 3)}
    write_dataset_info(staged / "dataset.json", {
        **info, "fingerprint": fingerprint, "source_fingerprint": source_fp,
        "tables": tables, "generation": generation,
        "tombstones": {"images": plan.dead_images.tolist(),
                       "captions": plan.dead_captions.tolist()},
        "history": [*info.get("history", []), entry]})


def add_options(index: str | os.PathLike[str], *, batch_size: int | None = None,
                shard_size: int | None = None, workers: int | None = None,
                threads: int | None = None, device: str | None = None,
                decode: str | None = None, progress: bool = True) -> BuildOptions:
    """The :class:`~clipindex.store.plan.BuildOptions` of an add to the store ``index``
    from :func:`~clipindex.store.adding.add_to_store`'s encoding keywords, checked once,
    for :func:`add_with_options`."""
    return options(Path(index).parent, batch_size, shard_size, workers=workers,
                   threads=threads, text_batch_size=None, decode=decode, device=device,
                   strict=False, index_kind="flat", dtype="float32", progress=progress)


def add_with_options(
    source: Dataset | str | os.PathLike[str],
    opts: BuildOptions,
    *,
    index: str | os.PathLike[str],
    backbones: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    pretrained: str = "default",
    allow_outside_root: bool = False,
    storage_options: dict[str, Any] | None = None,
    label_field: str | None = None,
    _hook: Hook | None = None,
) -> AddResult:
    """An encoding add (:func:`~clipindex.store.adding.add_to_store`) with its settings
    made (and checked) by :func:`add_options`.

    One sequence from the checks to the published generation: lock, plan, stage,
    commit, publish. (A clip-retrieval folder for a store made by ``clipindex import`` is
    :func:`~clipindex.store.adding.add_to_store`'s to route, before any encoder setting.)"""
    t0 = time.perf_counter()
    ddir = Path(index)
    decode = opts.decode
    dataset, source_fp, encodings = _checked(
        source, ddir, opts, backbones, pretrained, root,
        source_overrides(allow_outside_root, storage_options, label_field))
    with build_lock(ddir):
        publish(ddir)  # an add killed after its commit: finish it first
        cur = current_generation(ddir)
        cdir = generation_dir(ddir)
        info = read_dataset_info(cdir)
        images, captions = read_tables(cdir, info)
        chosen = _targets(cdir, ddir, backbones, pretrained)
        encodings = _plans(opts, chosen, dataset, encodings)  # an add came in between
        decoders = {t.folder: add_decoder(m, decode, t.folder) for t, m in chosen}
        plan = plan_rows(images, captions, info, dataset)
        fp = plan.fingerprint(str(info["fingerprint"]))
        result = AddResult(str(ddir), cur, plan.added, plan.removed, plan.added_captions,
                           plan.removed_captions)
        behind = [(t, m) for t, m in chosen if m.get("dataset_fingerprint") != fp]
        if not plan.changed and not behind:  # nothing to do (or a rerun after the commit)
            for t, _ in chosen:
                shutil.rmtree(ddir / t.folder / ADD_SHARDS, ignore_errors=True)
            _record_source(cdir, ddir, info, source_fp, cur)
            result.stale = _stale(cdir, ddir, fp)
            result.seconds = round(time.perf_counter() - t0, 3)
            return result
        new = cur + 1
        one = partial(_stage_backbone, ddir=ddir, cdir=cdir, plan=plan, fingerprint=fp,
                      generation=new, source=dataset, hook=_hook)
        staged = _stage_generation(
            ddir, cdir, new, chosen, plan, info, source_fp, fp, result,
            lambda staged, t, m: one(staged, t, m, opts=replace(opts, decode=decoders[t.folder]),
                                     encoding=encodings[t.folder]), _hook)
        if _hook:
            _hook("staged")
        commit(ddir, new, staged, _hook)
        publish(ddir)
        if _hook:
            _hook("published")
        for t, _ in chosen:
            shutil.rmtree(ddir / t.folder / ADD_SHARDS, ignore_errors=True)
        result.generation = new
        result.stale = _stale(generation_dir(ddir), ddir, fp)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _stage_generation(ddir: Path, cdir: Path, new: int,
                      chosen: list[tuple[Target, dict[str, Any]]], plan: RowPlan,
                      info: dict[str, Any], source_fp: str, fp: str, result: AddResult,
                      stage_one: Callable[[Path, Target, dict[str, Any]], int],
                      hook: Hook | None) -> Path:
    """Write generation ``new`` into its staging folder: the tables, then each chosen
    backbone's folder by ``stage_one(staged, target, manifest)`` (what it returns, the
    rows it encoded, counted in ``result``); a failure removes the staging folder, and a
    full disk names the space the add needs."""
    needs = _needs(chosen, plan)
    check_space(ddir, needs)
    with os_faults(ddir, needs=needs):  # a full disk names what the add needs
        staged = stage(ddir, new)
    try:
        _stage_tables(cdir, staged, info, plan, source_fp, fp, new,
                      [t.folder for t, _ in chosen])
        for t, m in chosen:
            result.encoded[t.folder] = stage_one(staged, t, m)
            if hook:
                hook(f"staged:{t.folder}")
        link_unchanged(cdir, staged)  # backbones left out (stale), unchanged tables
    except Exception as exc:  # a full disk, say: the half-staged generation is no use
        shutil.rmtree(staged, ignore_errors=True)
        fault = os_fault(exc, staged, needs=needs)
        if fault is None or fault is exc:
            raise
        raise fault from exc
    return staged


def _needs(chosen: list[tuple[Target, dict[str, Any]]], plan: RowPlan) -> int:
    """Bytes a new generation writes: each chosen backbone's two matrices, their
    indexes (about as large as flat ones) and the new rows' shards."""
    rows = len(plan.images) + len(plan.captions)
    added = plan.added + plan.added_captions
    return sum(2 * matrix_bytes(rows, int(m["dim"]), str(m.get("dtype", "float32")))
               + matrix_bytes(added, int(m["dim"])) for _, m in chosen)


def _checked(source: Any, ddir: Path, opts: BuildOptions, backbones: Sequence[str] | None,
             pretrained: str, root: Any, extra: dict[str, Any]
             ) -> tuple[Any, str, dict[str, EncodePlan]]:
    """The source, its fingerprint and each backbone's checked plan, read before the
    lock (a file it writes): bad input leaves the store exactly as it was."""
    from clipindex.sources import dataset_fingerprint

    read_dataset_info(generation_dir(ddir))  # not a store: one line, before the source
    dataset = _load_source(source, root, extra)
    source_fp = dataset_fingerprint(dataset)
    plans = _plans(opts, _targets(generation_dir(ddir), ddir, backbones, pretrained),
                   dataset, {})
    return dataset, source_fp, plans


def _plans(opts: BuildOptions, chosen: list[tuple[Target, dict[str, Any]]], dataset: Any,
           known: dict[str, EncodePlan]) -> dict[str, EncodePlan]:
    """``known`` with the checked :class:`EncodePlan` of every chosen backbone it lacks."""
    todo = [t for t, _ in chosen if t.folder not in known]
    if not todo:
        return known
    return {**known, **plan_encoding(opts, todo, n_images=len(dataset.images),
                                     n_captions=len(dataset.captions))}


def _stale(cdir: Path, ddir: Path, fingerprint: str) -> list[str]:
    from clipindex.store.reader import list_backbones

    return [f for f in list_backbones(ddir)
            if read_manifest(cdir / f).get("dataset_fingerprint") != fingerprint]


def _record_source(cdir: Path, ddir: Path, info: dict[str, Any], source_fp: str,
                   cur: int) -> None:
    """Nothing to add, but the source differs in what is not an image's identity (row
    order, labels, captions of kept images): remember it as the store's source, so a
    later build of it is "up to date" (metadata only, replaced by rename; the rows and
    their fingerprint are unchanged)."""
    if info.get("source_fingerprint") == source_fp or info.get("fingerprint") == source_fp:
        return
    write_dataset_info(cdir / "dataset.json", {**info, "source_fingerprint": source_fp})
    if cur:
        publish(ddir)
