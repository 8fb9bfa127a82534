"""The build side of :mod:`clipindex.store`: atomic writes, resumable shards, encoding
loops, the dataset tables, FAISS files and the manifest (private; the public entry
point is :func:`clipindex.store.build_store`).

A shard is ``<kind>-NNNNN.npy`` (float32 rows ``start..stop``) plus a ``.json`` written
after it, which marks it finished and records what it was built from (its *stamp*:
dataset fingerprint, backbone, weights, dim) and the files it skipped. A rerun reuses
a shard only when its stamp, bounds and sha256 all match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import DataError, UserInputError
from clipindex.files import atomic_write

log = logging.getLogger("clipindex.store")


#: Bumped whenever the on-disk layout or manifest fields change incompatibly.
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
_RECALL_K = 10
#: Seed of the weights of random-init (``--pretrained none``) backbones.
RANDOM_INIT_SEED = 0


class BuildInterrupted(RuntimeError):
    """Raised by the ``_stop_after_shards`` test hook of :func:`clipindex.store.build_store`."""


# ----------------------------------------------------------------------------- lock
LOCK_NAME = ".clipindex-build.lock"


@contextmanager
def build_lock(dataset_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``dataset_dir`` while a build writes into it.

    A second build of the same folder (another process or the same one) fails at once
    with a :class:`UserInputError` naming the holder's pid, instead of interleaving
    shards and tables. The lock is ``flock`` on a hidden file, released by the kernel
    when its holder exits, killed or not, so it never goes stale. Where ``fcntl`` is
    missing (Windows) builds are not locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    dataset_dir.mkdir(parents=True, exist_ok=True)
    path = dataset_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise UserInputError(
                f"another clipindex build (pid {holder}) is writing {dataset_dir}; wait "
                "for it to finish, or build into another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- files
def write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode()
    atomic_write(path, lambda fh: fh.write(data))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda fh: frame.to_parquet(fh, index=False))


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1), 0).astype(np.float32)


# ----------------------------------------------------------------------------- shards
@dataclass
class Shards:
    """The shard plan of one matrix (images or captions) and what is already done."""

    kind: str
    folder: Path
    n: int
    size: int
    stamp: dict[str, Any]
    done: dict[int, dict[str, Any]] = field(default_factory=dict)

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.size, min(self.n, (i + 1) * self.size)

    @property
    def count(self) -> int:
        return -(-self.n // self.size) if self.n else 0

    def paths(self, i: int) -> tuple[Path, Path]:
        stem = self.folder / f"{self.kind}-{i:05d}"
        return stem.with_suffix(".npy"), stem.with_suffix(".json")

    def scan(self) -> None:
        """Record finished shards whose stamp (dataset, backbone, bounds) matches."""
        for i in range(self.count):
            npy, meta = self.paths(i)
            if not (npy.exists() and meta.exists()):
                continue
            try:
                rec = read_json(meta)
            except (OSError, ValueError):
                continue
            start, stop = self.bounds(i)
            if (rec.get("stamp") == self.stamp and rec.get("start") == start
                    and rec.get("stop") == stop and rec.get("sha256") == sha256_file(npy)):
                self.done[i] = rec

    def save(self, i: int, vectors: np.ndarray, skipped: list[dict[str, Any]]) -> None:
        npy, meta = self.paths(i)
        start, stop = self.bounds(i)
        if vectors.shape[0] != stop - start:
            raise RuntimeError(f"shard {i} has {vectors.shape[0]} rows, expected {stop - start}")
        write_npy(npy, vectors.astype(np.float32))
        rec = {"stamp": self.stamp, "start": start, "stop": stop,
               "sha256": sha256_file(npy), "skipped": skipped}
        write_json(meta, rec)  # the json marks the shard finished
        self.done[i] = rec

    def assemble(self, dim: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        out = np.zeros((self.n, dim), dtype=np.float32)
        skipped: list[dict[str, Any]] = []
        for i in range(self.count):
            start, stop = self.bounds(i)
            out[start:stop] = np.load(self.paths(i)[0], allow_pickle=False)
            skipped.extend(self.done[i]["skipped"])
        return out, skipped


class ShardCounter:
    """Counts shards finished in this run; the test hook stops after N of them."""

    def __init__(self, stop_after: int | None) -> None:
        self.stop_after = stop_after
        self.finished = 0

    def tick(self, label: str) -> None:
        self.finished += 1
        log.info("encoded shard %s", label)
        if self.stop_after is not None and self.finished >= self.stop_after:
            raise BuildInterrupted(f"stopped after {self.finished} shard(s) (test hook)")


# ----------------------------------------------------------------------------- encoding
def batch_skips(batch: Any) -> list[tuple[int, str]]:
    """``(index into the encoded files, reason)`` of every file a batch skipped."""
    return [(int(pos), str(reason)) for pos, reason in getattr(batch, "skipped", None) or ()]


def encode_images(
    encoder: Any, shards: Shards, files: Sequence[Any], rel: Sequence[str], *,
    batch_size: int, workers: int | None, strict: bool, counter: ShardCounter, bar: Any,
) -> int:
    """Encode every unfinished image shard; returns the number of rows encoded."""
    pending = [i for i in range(shards.count) if i not in shards.done]
    if not pending:
        return 0
    rows = np.concatenate([np.arange(*shards.bounds(i)) for i in pending])
    todo = [files[r] for r in rows]
    kwargs: dict[str, Any] = {"batch_size": batch_size, "progress": False}
    if workers is not None:
        kwargs["workers"] = workers
    buf: list[np.ndarray] = []
    skipped: list[dict[str, Any]] = []
    for batch in encoder.iter_image_batches(todo, **kwargs):
        vectors = np.asarray(batch.vectors, dtype=np.float32)
        for pos, reason in batch_skips(batch):
            row = int(rows[pos])
            if strict:
                raise DataError(f"cannot use image {rel[row]}: {reason} (--strict)")
            skipped.append({"row_id": row, "file": rel[row], "reason": reason})
            vectors[pos - batch.start] = 0.0
        buf.append(vectors)
        bar.update(len(vectors))
        _flush_full(shards, pending, buf, skipped, counter)
    if pending or buf:  # a broken encoder, never a user mistake
        raise RuntimeError(f"the encoder did not return one vector per file ({len(todo)})")
    return len(rows)


def _flush_full(
    shards: Shards, pending: list[int], buf: list[np.ndarray],
    skipped: list[dict[str, Any]], counter: ShardCounter,
) -> None:
    """Save every pending shard that the buffered vectors complete."""
    have = sum(len(b) for b in buf)
    while pending:
        start, stop = shards.bounds(pending[0])
        if have < stop - start:
            break
        block = np.concatenate(buf) if len(buf) > 1 else buf[0]
        part, rest = block[: stop - start], block[stop - start:]
        mine = [s for s in skipped if start <= s["row_id"] < stop]
        shards.save(pending[0], normalise_rows(part), mine)
        skipped[:] = [s for s in skipped if not start <= s["row_id"] < stop]
        buf[:] = [rest] if len(rest) else []
        have -= stop - start
        counter.tick(f"{shards.kind}-{pending.pop(0):05d}")


def encode_captions(
    encoder: Any, shards: Shards, texts: Sequence[str], counter: ShardCounter, bar: Any
) -> int:
    n = 0
    for i in range(shards.count):
        if i in shards.done:
            continue
        start, stop = shards.bounds(i)
        vectors = np.asarray(encoder.encode_texts(list(texts[start:stop])), dtype=np.float32)
        shards.save(i, normalise_rows(vectors), [])
        n += stop - start
        bar.update(stop - start)
        counter.tick(f"{shards.kind}-{i:05d}")
    return n


# ----------------------------------------------------------------------------- dataset
def dataset_fingerprint(dataset: Any) -> str:
    info = getattr(dataset, "info", None) or {}
    if info.get("fingerprint"):
        return str(info["fingerprint"])
    # Sources record one; this fallback hashes what the vectors depend on.
    digest = hashlib.sha256()
    for frame, cols in ((dataset.images, ["row_id", "file"]),
                        (dataset.captions, ["row_id", "image_row_id", "text"])):
        part = frame[[c for c in cols if c in frame.columns]]
        digest.update(pd.util.hash_pandas_object(part, index=False).values.tobytes())
    return digest.hexdigest()[:16]


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


# ----------------------------------------------------------------------------- backbones
@dataclass(frozen=True)
class _Target:
    """Everything a build needs to know about one backbone before encoding."""

    name: str  # as the user typed it (reopening resolves it again)
    folder: str
    identity: dict[str, Any]
    spec: Any
    pretrained: str


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


def resolve_targets(names: Sequence[str], pretrained: str) -> list[_Target]:
    from clipindex.encode import backbones

    if isinstance(names, str):
        names = [names]
    if not names:
        raise UserInputError("Name at least one backbone (--backbone NAME)")
    targets = []
    for name in names:
        spec = backbones.resolve_backbone(name, pretrained=pretrained)
        targets.append(_Target(name=name, folder=spec.name, identity=identity(spec),
                               spec=spec, pretrained=pretrained))
    return targets


# ----------------------------------------------------------------------------- indexes
def _build_faiss(
    vectors: np.ndarray, valid: np.ndarray, kind: str, path: Path
) -> dict[str, Any]:
    from clipindex.store import indexes

    ids = np.flatnonzero(valid)
    use = kind if len(ids) else "flat"
    try:
        index = indexes.build_index(vectors[ids], ids, kind=use)
    except RuntimeError as exc:  # too few vectors to train an approximate index
        log.warning("%s: %s index failed (%s); using exact flat", path.name, kind, exc)
        use, index = "flat", indexes.build_index(vectors[ids], ids)
    desc = indexes.describe_index(index)
    if use != "flat":
        rng = np.random.default_rng(0)
        sample = rng.choice(ids, size=min(200, len(ids)), replace=False)
        exact = indexes.build_index(vectors[ids], ids)
        desc[f"recall_at_{_RECALL_K}"] = indexes.measure_recall(
            index, exact, vectors[np.sort(sample)], _RECALL_K)
    indexes.save_index(index, path)
    return desc


def _finish(
    bdir: Path, target: _Target, encoder: Any, img: Shards, cap: Shards, *,
    fingerprint: str, dtype: str, index_kind: str, timings: dict[str, Any],
    device: str | None,
) -> dict[str, Any]:
    """Assemble the matrices, write npy + faiss, then (last, atomically) the manifest."""
    dim = int(encoder.embed_dim)
    images, skipped = img.assemble(dim)
    captions, _ = cap.assemble(dim)
    valid = np.ones(len(images), dtype=bool)
    valid[[s["row_id"] for s in skipped]] = False
    index_desc = _write_outputs(bdir, images, captions, valid, dtype, index_kind)
    from clipindex import __version__

    manifest = {
        "format_version": FORMAT_VERSION,
        "clipindex_version": __version__,
        "backbone_folder": target.folder,
        **target.identity,
        "display_name": target.spec.display,
        "model_name": target.spec.model,
        "pretrained": target.spec.pretrained,
        "weights_source": target.spec.source,
        "checkpoint_sha256": _checkpoint_sha(target.identity),
        "random_init_seed": RANDOM_INIT_SEED if target.spec.source == "none" else None,
        "requested": _requested(target),
        "dim": dim,
        "dtype": dtype,
        "n_images": int(len(images)),
        "n_captions": int(len(captions)),
        "n_skipped": len(skipped),
        "dataset_fingerprint": fingerprint,
        "index": index_desc,
        "files": _file_records(bdir),
        "timings": timings,
        "params": _int_or_none(getattr(encoder, "params", None)),
        "image_size": _jsonable(getattr(encoder, "image_size", None)),
        "context_length": _int_or_none(getattr(encoder, "context_length", None)),
        "device": str(getattr(encoder, "device", device) or "cpu"),
        "skipped": sorted(skipped, key=lambda s: s["row_id"]),
    }
    write_json(bdir / "manifest.json", manifest)
    shutil.rmtree(bdir / "shards", ignore_errors=True)
    return manifest


_OUTPUT_FILES = ("images.npy", "captions.npy", "images.faiss", "captions.faiss")


def _write_outputs(folder: Path, images: np.ndarray | None, captions: np.ndarray | None,
                   valid: np.ndarray, dtype: str, index_kind: str) -> dict[str, Any]:
    """Write the two matrices in ``dtype`` (``None``: already in ``folder``) and their
    FAISS indexes; return the index description for the manifest."""
    for name, matrix in (("images.npy", images), ("captions.npy", captions)):
        if matrix is not None:
            write_npy(folder / name, matrix.astype(dtype))
    # Index what a reader will load: the stored (possibly float16) values.
    stored_i = np.load(folder / "images.npy").astype(np.float32)
    stored_c = np.load(folder / "captions.npy").astype(np.float32)
    return {
        "kind": index_kind,
        "images": _build_faiss(stored_i, valid, index_kind, folder / "images.faiss"),
        "captions": _build_faiss(stored_c, np.ones(len(stored_c), bool), index_kind,
                                 folder / "captions.faiss"),
    }


def _file_records(folder: Path) -> dict[str, dict[str, Any]]:
    return {f: {"sha256": sha256_file(folder / f), "bytes": (folder / f).stat().st_size}
            for f in _OUTPUT_FILES}


# ----------------------------------------------------------------------------- re-index
_REINDEX_DIR = ".reindex"


def _reusable(bdir: Path, target: _Target, fingerprint: str, opts: BuildOptions
              ) -> dict[str, Any] | None:
    """The finished manifest of ``bdir`` when its stored vectors can serve a build that
    asks only for another ``dtype`` or index kind; None when encoding is needed.

    The vectors must be of the same dataset and weights and pass their sha256. A
    float16 store cannot become float32 without re-encoding (the dropped bits are gone).
    """
    try:
        m = read_json(bdir / "manifest.json")
    except (OSError, ValueError):
        return None
    if not _same_source(m, target, fingerprint):
        return None
    if m.get("dtype") == "float16" and opts.dtype == "float32":
        log.info("%s: stored vectors are float16; re-encoding for float32", target.name)
        return None
    files = m.get("files") or {}
    for name in ("images.npy", "captions.npy"):
        path = bdir / name
        if not path.is_file() or sha256_file(path) != (files.get(name) or {}).get("sha256"):
            return None
    return m


def reindex(bdir: Path, target: _Target, old: dict[str, Any], opts: BuildOptions
            ) -> dict[str, Any]:
    """Rewrite a finished store in another dtype / index kind from its stored vectors.

    The new files are made in ``bdir/.reindex`` while the old store stays whole and
    openable; only then is the old manifest removed, the files moved in and the new
    manifest written (last, atomically). Nothing is encoded.
    """
    t0 = time.perf_counter()
    tmp = bdir / _REINDEX_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    matrices: list[np.ndarray | None] = []
    for name in ("images.npy", "captions.npy"):
        if old.get("dtype") == opts.dtype:  # same values: link, do not rewrite them
            try:
                os.link(bdir / name, tmp / name)
            except OSError:
                shutil.copyfile(bdir / name, tmp / name)
            matrices.append(None)
        else:
            matrices.append(np.load(bdir / name))
    valid = np.ones(int(old["n_images"]), dtype=bool)
    valid[[int(s["row_id"]) for s in old.get("skipped", [])]] = False
    index_desc = _write_outputs(tmp, *matrices, valid, opts.dtype, opts.index_kind)
    from clipindex import __version__

    manifest = {
        **old,
        "clipindex_version": __version__,
        "dtype": opts.dtype,
        "index": index_desc,
        "files": _file_records(tmp),
        "reindexed": {
            "from_dtype": old.get("dtype"),
            "from_index_kind": (old.get("index") or {}).get("kind"),
            "seconds": round(time.perf_counter() - t0, 4),
        },
    }
    (bdir / "manifest.json").unlink()
    for name in _OUTPUT_FILES:
        os.replace(tmp / name, bdir / name)
    write_json(bdir / "manifest.json", manifest)
    shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _requested(target: _Target) -> dict[str, Any]:
    """What reopening passes to resolve_backbone: local weights by absolute path."""
    local = target.spec.source in ("file", "dir") and target.pretrained != "default"
    return {"backbone": target.name,
            "pretrained": target.spec.pretrained if local else target.pretrained}


def _checkpoint_sha(identity: dict[str, Any]) -> str | None:
    weights = str(identity["weights"])
    return weights.split(":", 1)[1] if weights.startswith("sha256:") else None


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [int(v) for v in value]
    return _int_or_none(value)


# ----------------------------------------------------------------------------- build
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


def _up_to_date(bdir: Path, target: _Target, fingerprint: str, opts: BuildOptions) -> bool:
    path = bdir / "manifest.json"
    if not path.exists():
        return False
    try:
        m = read_json(path)
    except (OSError, ValueError):
        return False
    same = (_same_source(m, target, fingerprint)
            and m.get("dtype") == opts.dtype
            and (m.get("index") or {}).get("kind") == opts.index_kind)
    return same and all((bdir / f).exists() for f in m.get("files", {}))


def _same_source(m: dict[str, Any], target: _Target, fingerprint: str) -> bool:
    """Whether manifest ``m`` holds vectors of this dataset by these weights."""
    return (m.get("format_version") == FORMAT_VERSION
            and m.get("dataset_fingerprint") == fingerprint
            and all(m.get(k) == v for k, v in target.identity.items()))


def _sizes(opts: BuildOptions, encoder: Any) -> tuple[int, int]:
    """Batch size (the encoder's default when not given) and a shard size aligned to it."""
    batch = opts.batch_size or int(encoder.default_batch_size)
    shard = opts.shard_size or batch * max(1, 4096 // batch)
    if shard % batch:
        raise UserInputError(
            f"shard_size ({shard}) must be a positive multiple of batch_size ({batch})")
    return batch, shard


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


def build_one(dataset: Any, target: _Target, fingerprint: str, opts: BuildOptions,
              counter: ShardCounter) -> Path:
    """Build (or resume, or leave alone when up to date) one backbone's store."""
    bdir = opts.out / dataset.name / target.folder
    if _up_to_date(bdir, target, fingerprint, opts):
        log.info("%s: up to date (%s)", target.name, bdir)
        for leftover in ("shards", _REINDEX_DIR):  # killed right after the manifest
            shutil.rmtree(bdir / leftover, ignore_errors=True)
        return bdir
    shutil.rmtree(bdir / _REINDEX_DIR, ignore_errors=True)  # an interrupted re-index
    old = _reusable(bdir, target, fingerprint, opts)
    if old is not None:
        reindex(bdir, target, old, opts)
        log.info("%s: re-indexed %s from its stored vectors (%s %s -> %s %s), nothing "
                 "encoded", target.name, bdir, old.get("dtype"),
                 (old.get("index") or {}).get("kind"), opts.dtype, opts.index_kind)
        return bdir
    (bdir / "manifest.json").unlink(missing_ok=True)  # stale: rebuild, never half-open
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
                       dtype=opts.dtype, index_kind=opts.index_kind, timings=timings,
                       device=opts.device)
    log.info("%s: built %s (%d images, %d captions, %d skipped)", target.name, bdir,
             img.n, cap.n, len(manifest["skipped"]))
    return bdir


def _encode_all(dataset: Any, target: _Target, encoder: Any, img: Shards, cap: Shards,
                opts: BuildOptions, batch: int, counter: ShardCounter) -> dict[str, Any]:
    from tqdm.auto import tqdm

    rel = dataset.images["file"].astype(str).tolist()
    files = [str(f) for f in dataset.image_paths()]
    done_rows = sum(img.bounds(i)[1] - img.bounds(i)[0] for i in img.done)
    with tqdm(total=img.n, initial=done_rows, desc=f"{target.name} images", unit="img",
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
    if kw["index_kind"] not in INDEX_KINDS:
        raise UserInputError(
            f"Unknown index kind {kw['index_kind']!r}. Known: {', '.join(INDEX_KINDS)}")
    if kw["dtype"] not in DTYPES:
        raise UserInputError(f"dtype must be one of {', '.join(DTYPES)}, got {kw['dtype']!r}")
    return BuildOptions(out=Path(out), batch_size=batch_size and int(batch_size),
                        shard_size=shard_size and int(shard_size), **kw)
