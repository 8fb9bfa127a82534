"""Bring your own embeddings: an ordinary store from clip-retrieval's output
(``clipindex import``, :func:`import_store`).

The layout read (clip-retrieval ``inference``'s output; parts matched and ordered by
their numeric suffix, so ``img_emb_10`` follows ``img_emb_9``)::

    DIR/img_emb/img_emb_<i>.npy          (n_i, dim) image vectors        required
    DIR/text_emb/text_emb_<i>.npy        (n_i, dim) caption vectors      optional
    DIR/metadata/metadata_<i>.parquet    n_i rows: image_path, caption, any other column

What is written is the store a build writes (``OUT/<dataset>/`` tables, ``dataset.json``,
``<backbone>/`` matrices, FAISS indexes and sealed manifest, through the build's own
writers), so ``info``, ``search``, ``classify``, ``serve``, ``add`` and ``compact`` treat it
as any store. Row i of the images table is row i of the concatenated parts; its ``file``
is ``image_path`` (relative to the data root recorded in ``dataset.json``: the common
folder of absolute paths, else ``root`` or DIR); ``label`` and ``split`` come from the
metadata when it has them (``split`` defaults to ``test``); every other metadata column
is kept, so ``--where`` filters on it. With ``text_emb``, caption row i is image i's
``caption``. Vectors are L2-normalised on import (clip-retrieval's already are); an
all-zero vector is a skipped row (never returned). The dataset fingerprint is the one
every store records, :func:`clipindex.sources.fingerprint` of the two tables; the
manifest's ``imported`` says where the vectors came from (nothing was encoded).

Nothing is half-written: everything is checked (layout, row counts, dims against the
backbone's config) before writing, vectors are copied part by part (one part in memory
at a time) into the store's memory-mapped matrix inside ``OUT/.<dataset>.import-<pid>/``,
and that folder is renamed to ``OUT/<dataset>`` only once the manifest is written. A
failure (a NaN vector found while copying) removes it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import DataError, UserInputError
from clipindex.index.tuning import DEFAULT_TARGET_RECALL, AutoSettings, parse_memory
from clipindex.store.manifest import (
    DTYPES,
    Target,
    build_manifest,
    file_records,
    load_encoder_for,
    resolve_targets,
    write_manifest,
)
from clipindex.store.outputs import write_outputs
from clipindex.store.owned import refuse_store_path

__all__ = ["LAYOUT", "ImportResult", "Part", "import_store", "scan_layout"]

log = logging.getLogger("clipindex.store")

#: The folders and file name patterns of clip-retrieval's output, by role.
LAYOUT = {"images": ("img_emb", r"img_emb_(\d+)\.npy"),
          "captions": ("text_emb", r"text_emb_(\d+)\.npy"),
          "metadata": ("metadata", r"metadata_(\d+)\.parquet")}
PATH_COLUMN = "image_path"
CAPTION_COLUMN = "caption"
_ROWS = 65536  # rows normalised and copied at a time


@dataclass(frozen=True)
class Part:
    """One numbered part of the layout: its files and its row count."""

    suffix: int
    images: Path
    captions: Path | None
    metadata: Path
    rows: int


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_store` wrote: the backbone folder and its counts."""

    path: Path
    n_images: int
    n_captions: int
    n_skipped: int
    dim: int
    seconds: float
    index: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "dataset_dir": str(self.path.parent),
                "n_images": self.n_images, "n_captions": self.n_captions,
                "n_skipped": self.n_skipped, "dim": self.dim,
                "seconds": round(self.seconds, 3), "index_kind": self.index.get("kind")}


# ----------------------------------------------------------------------------- layout
def _numbered(folder: Path, role: str) -> dict[int, Path]:
    sub, pattern = LAYOUT[role]
    found: dict[int, Path] = {}
    for path in (folder / sub).iterdir() if (folder / sub).is_dir() else ():
        match = re.fullmatch(pattern, path.name)
        if match:
            if int(match.group(1)) in found:
                raise DataError(f"{folder / sub} has two parts numbered {int(match.group(1))}: "
                                f"{found[int(match.group(1))].name} and {path.name}")
            found[int(match.group(1))] = path
    return found


def _npy_shape(path: Path) -> tuple[int, int]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npy file ({exc})") from None
    if array.ndim != 2 or array.dtype.kind != "f":
        raise DataError(f"{path} holds a {array.dtype} array of shape {array.shape}; "
                        "expected a 2-D float matrix (one vector per row)")
    return int(array.shape[0]), int(array.shape[1])


def _parquet_facts(path: Path) -> tuple[int, list[str]]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds on bad bytes
        raise DataError(f"{path} is not a readable parquet file ({type(exc).__name__})"
                        ) from None
    return int(meta.metadata.num_rows), list(meta.schema_arrow.names)


def scan_layout(folder: str | os.PathLike[str]) -> tuple[list[Part], int]:
    """The parts of a clip-retrieval output folder and the vectors' dim, checked (files,
    numbering, row counts, columns, dims) without reading any vector; a
    :class:`DataError` names the first problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (give clip-retrieval's output folder, "
                        "holding img_emb/ and metadata/)")
    images, captions, meta = (_numbered(folder, r) for r in ("images", "captions", "metadata"))
    if not images:
        raise DataError(f"{folder} has no img_emb/img_emb_<N>.npy: not a clip-retrieval "
                        "output folder")
    if set(meta) != set(images):
        raise DataError(f"{folder}: img_emb parts {sorted(images)} and metadata parts "
                        f"{sorted(meta)} differ (each img_emb_N.npy needs metadata_N.parquet)")
    if captions and set(captions) != set(images):
        raise DataError(f"{folder}: text_emb parts {sorted(captions)} and img_emb parts "
                        f"{sorted(images)} differ")
    parts, dims = [], set()
    for i in sorted(images):
        n, dim = _npy_shape(images[i])
        rows, columns = _parquet_facts(meta[i])
        if rows != n:
            raise DataError(f"{meta[i]} has {rows} rows but {images[i].name} has {n} vectors")
        need = [PATH_COLUMN] + ([CAPTION_COLUMN] if captions else [])
        missing = [c for c in need if c not in columns]
        if missing:
            raise DataError(f"{meta[i]} has no {', '.join(missing)} column (columns: "
                            f"{', '.join(columns)})")
        dims.add(dim)
        if captions:
            shape = _npy_shape(captions[i])
            if shape != (n, dim):
                raise DataError(f"{captions[i]} has shape {shape} but {images[i].name} has "
                                f"{(n, dim)}")
        parts.append(Part(i, images[i], captions.get(i), meta[i], n))
    if len(dims) > 1:
        raise DataError(f"{folder}: the parts have different dims {sorted(dims)}")
    if sum(p.rows for p in parts) == 0:
        raise DataError(f"{folder}: the parts hold no vectors")
    return parts, dims.pop()


# ----------------------------------------------------------------------------- tables
def _root_and_files(paths: pd.Series, root: Path | str) -> tuple[Path | str, pd.Series]:
    """The data root and the files relative to it: absolute paths (or URLs: a store of
    images in object storage) become relative to their common folder, relative ones stay
    relative to ``root``."""
    from clipindex.sources.storage import is_url

    text = paths.astype(str)
    urls = text.map(is_url)
    if len(text) and bool(urls.all()):
        base = os.path.commonpath([t.replace("://", ":/", 1) for t in text.unique()])
        base = base.replace(":/", "://", 1)
        if base in set(text.unique().tolist()):
            base = base.rsplit("/", 1)[0]
        return base, text.str.slice(len(base.rstrip("/")) + 1)
    absolute = text.str.startswith("/")
    if len(text) and bool(absolute.all()):
        base = Path(os.path.commonpath(text.unique().tolist()))
        if str(base) in set(text.unique().tolist()):  # one file: its folder is the root
            base = base.parent
        prefix = len(str(base).rstrip("/")) + 1
        return base, text.str.slice(prefix)
    if bool(absolute.any()) or bool(urls.any()):
        raise DataError("image_path mixes absolute paths, URLs and relative paths; give one "
                        "kind")
    return root, text


def read_metadata(parts: list[Part]) -> pd.DataFrame:
    """Every part's metadata in row order, checked: each row has an ``image_path``, and
    no column is named as the store's own (``row_id``, ``file``)."""
    meta = pd.concat([pd.read_parquet(p.metadata) for p in parts], ignore_index=True)
    if meta[PATH_COLUMN].isna().any():
        raise DataError(f"metadata: {int(meta[PATH_COLUMN].isna().sum())} row(s) have no "
                        f"{PATH_COLUMN}")
    if "row_id" in meta or "file" in meta:
        raise DataError("metadata columns row_id and file are the store's own; rename them")
    return meta


def metadata_tables(meta: pd.DataFrame, files: pd.Series, captions: bool
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The images and captions tables of ``meta`` (row i: metadata row i, its ``file``
    ``files[i]``); with ``captions``, caption i is image i's ``caption``."""
    images = pd.DataFrame({"row_id": np.arange(len(meta), dtype=np.int64),
                           "file": files.to_numpy()})
    images["label"] = meta["label"].astype(str) if "label" in meta else None
    images["split"] = meta["split"].astype(str) if "split" in meta else "test"
    extra = meta.drop(columns=[c for c in (PATH_COLUMN, "label", "split") if c in meta])
    images = pd.concat([images, extra], axis=1)
    if not captions:
        return images, pd.DataFrame({"row_id": pd.Series([], dtype="int64"),
                                     "image_row_id": pd.Series([], dtype="int64"),
                                     "text": pd.Series([], dtype=str), "label": []})
    return images, pd.DataFrame({"row_id": images["row_id"], "image_row_id": images["row_id"],
                                 "text": meta[CAPTION_COLUMN].fillna("").astype(str),
                                 "label": images["label"]})


def _tables(parts: list[Part], root: Path | str
            ) -> tuple[pd.DataFrame, pd.DataFrame, Path | str]:
    meta = read_metadata(parts)
    base, files = _root_and_files(meta[PATH_COLUMN], root)
    images, captions = metadata_tables(meta, files, parts[0].captions is not None)
    return images, captions, base


# ----------------------------------------------------------------------------- vectors
def _copy_vectors(parts: list[Part], role: str, path: Path, n: int, dim: int, dtype: str
                  ) -> np.ndarray:
    """Normalise every part's vectors into ``path`` (a memory-mapped ``(n, dim)`` npy),
    a block at a time; return the rows that are all zero. NaN/inf is a DataError."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=(n, dim))
    zero = np.zeros(n, dtype=bool)
    start = 0
    for part in parts:
        source = part.images if role == "images" else part.captions
        assert source is not None  # scan_layout: text parts exist for every part or none
        array = np.load(source, mmap_mode="r")
        for lo in range(0, part.rows, _ROWS):
            block = np.asarray(array[lo:lo + _ROWS], dtype=np.float32)
            if not np.isfinite(block).all():
                bad = lo + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                raise DataError(f"{source} row {bad} holds NaN or infinite values")
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            zero[start + lo:start + lo + len(block)] = norms[:, 0] == 0
            out[start + lo:start + lo + len(block)] = block / np.where(norms > 0, norms, 1)
        start += part.rows
        del array
    out.flush()
    del out
    return np.flatnonzero(zero)


# ----------------------------------------------------------------------------- entry point
def _check_options(dtype: str, index_kind: str) -> None:
    from clipindex.index.kinds import INDEX_KINDS

    if dtype not in DTYPES:
        raise UserInputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if index_kind not in (*INDEX_KINDS, "auto"):
        raise UserInputError(
            f"Unknown index kind {index_kind!r}. Known: auto, {', '.join(INDEX_KINDS)}")


def _facts(target: Target) -> SimpleNamespace:
    """What the manifest records of the model, from its config (no weights read); the
    model is loaded only for a backbone whose config says nothing."""
    from clipindex.encode.backbones import config_facts

    facts = config_facts(target.spec)
    if facts is None:
        encoder = load_encoder_for(target.spec, "cpu")
        return SimpleNamespace(embed_dim=int(encoder.embed_dim), params=encoder.params,
                               image_size=encoder.image_size,
                               context_length=encoder.context_length, device=None)
    return SimpleNamespace(embed_dim=facts["dim"], params=None, image_size=facts["image_size"],
                           context_length=facts["context_length"], device=None)


def _dataset_name(folder: Path, name: str | None) -> str:
    chosen = folder.resolve().name if name is None else str(name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", chosen) or len(chosen) > 100:
        raise UserInputError(f"Dataset name {chosen!r} must be letters, digits, '.', '_' "
                             "or '-' (pass --name NAME)")
    return chosen


def import_store(
    folder: str | os.PathLike[str],
    backbone: str,
    *,
    out: str | os.PathLike[str] = "indexes",
    name: str | None = None,
    pretrained: str = "default",
    root: str | os.PathLike[str] | None = None,
    index_kind: str = "auto",
    dtype: str = "float32",
    max_index_memory: int | str | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    storage_options: dict[str, Any] | None = None,
) -> ImportResult:
    """Write the store ``OUT/<name>/<backbone>/`` from clip-retrieval's output ``folder``.

    ``backbone`` (with ``pretrained``, as for :func:`build_store`) is the model whose
    space the vectors are in: it encodes text queries, and its dim must be the vectors'
    (read from its open_clip config, no weights loaded). ``name`` is the dataset folder
    (default: ``folder``'s name); ``root`` is the data root relative image paths are
    under (default ``folder``). ``index_kind``, ``dtype``, ``max_index_memory`` and
    ``target_recall`` are :func:`build_store`'s. ``OUT/<name>`` must not exist; nothing
    is left behind on failure. See the module docstring for the layout. ``folder`` may
    be a URL (``s3://bucket/clip-out``, read with ``storage_options``; copied to a
    staging folder in ``out`` first, :mod:`clipindex.store.staging`); relative image
    paths are then under that URL unless ``root`` says otherwise.

    Example
    -------
    >>> import_store("clip_out", "ViT-B-32", out="indexes", name="laion-part")
    ... # doctest: +SKIP
    """
    from clipindex.sources.storage import is_url

    t0 = time.perf_counter()
    _check_options(dtype, index_kind)
    auto = AutoSettings(target_recall=float(target_recall),
                        max_memory=parse_memory(max_index_memory))
    job = SimpleNamespace(backbone=backbone, out=out, name=name, pretrained=pretrained,
                          root=root, index_kind=index_kind, dtype=dtype, auto=auto, t0=t0,
                          options=dict(storage_options or {}))
    if is_url(os.fspath(folder)):
        return _import_url(os.fspath(folder), job, storage_options)
    return _import_folder(Path(folder).expanduser(), None, job)


def _import_folder(folder: Path, origin: str | None, job: SimpleNamespace) -> ImportResult:
    """:func:`import_store` of a local folder (``origin``: the URL it was fetched from)."""
    backbone, out, name, root = job.backbone, job.out, job.name, job.root
    dtype, index_kind, auto = job.dtype, job.index_kind, job.auto
    target = resolve_targets([backbone], job.pretrained)[0]
    facts = _facts(target)
    parts, dim = scan_layout(folder)
    if dim != facts.embed_dim:
        raise DataError(f"{folder} holds vectors of dim {dim} but {target.spec.display} "
                        f"encodes dim {facts.embed_dim}; name the backbone that made them")
    dataset = _dataset_name(folder, name)
    out_dir = refuse_store_path(Path(out).expanduser())
    final = out_dir / dataset
    if final.exists():
        raise UserInputError(f"{final} already exists; choose another --name or --out, or "
                             "remove it first")
    created = not out_dir.exists()
    tmp = out_dir / f".{dataset}.import-{os.getpid()}"
    try:
        result = _write(tmp, folder, parts, dim, target, facts, dataset,
                        _chosen_root(root, origin, folder), dtype, index_kind, auto,
                        (origin, job.options))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    seconds = time.perf_counter() - job.t0
    log.info("%s: imported %d image vectors (%d captions) into %s in %.1f s", dataset,
             result["n_images"], result["n_captions"], final / target.folder, seconds)
    return ImportResult(path=final / target.folder, seconds=seconds, dim=dim, **result)


def _chosen_root(root: str | os.PathLike[str] | None, origin: str | None,
                 folder: Path) -> Path | str:
    """Where relative image paths live: ``root``, else the folder (its URL if staged)."""
    from clipindex.sources.storage import is_url

    if root is not None:
        return os.fspath(root) if is_url(os.fspath(root)) else Path(root)
    return origin if origin is not None else folder


def _import_url(url: str, job: SimpleNamespace, storage_options: Mapping[str, Any] | None
                ) -> ImportResult:
    """:func:`import_store` of a clip-retrieval folder at a URL, through a staged copy."""
    from clipindex.store.staging import fetched_folder

    url = url.rstrip("/")
    dataset = job.name if job.name is not None else url.rsplit("/", 1)[-1]
    _dataset_name(Path(dataset), dataset)  # a bad name fails before anything is fetched
    out_dir = refuse_store_path(Path(job.out).expanduser())
    if (out_dir / dataset).exists():
        raise UserInputError(f"{out_dir / dataset} already exists; choose another --name or "
                             "--out, or remove it first")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with fetched_folder(url, out_dir, dataset, storage_options) as local:
            return _import_folder(local, url, SimpleNamespace(**{**vars(job),
                                                                 "name": dataset}))
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _write(tmp: Path, folder: Path, parts: list[Part], dim: int, target: Target,
           facts: SimpleNamespace, dataset: str, root: Path | str, dtype: str,
           index_kind: str, auto: AutoSettings,
           remote: tuple[str | None, dict[str, Any]] = (None, {})) -> dict[str, Any]:
    """Tables, matrices, indexes and manifest into ``tmp`` (renamed by the caller).
    long because: the steps of one store write, in the order a build takes them.
    ``remote``: the URL the folder was fetched from and the storage options (recorded
    redacted, as a build records them, so the images' endpoint is found again)."""
    from clipindex.sources import fingerprint as table_fingerprint
    from clipindex.sources.storage import redact
    from clipindex.store.build import write_tables

    images, captions, base = _tables(parts, root if isinstance(root, str)
                                     else root.expanduser().absolute())
    bdir = tmp / target.folder
    bdir.mkdir(parents=True)
    t0 = time.perf_counter()
    zero = _copy_vectors(parts, "images", bdir / "images.npy", len(images), dim, dtype)
    cap_valid = np.ones(len(captions), dtype=bool)
    if parts[0].captions is not None:
        cap_valid[_copy_vectors(parts, "captions", bdir / "captions.npy", len(captions), dim,
                                dtype)] = False
    else:
        np.save(bdir / "captions.npy", np.zeros((0, dim), dtype=dtype))
    copy_s = time.perf_counter() - t0
    valid = np.ones(len(images), dtype=bool)
    valid[zero] = False
    index = write_outputs(bdir, None, None, valid, dtype, index_kind, auto,
                          caption_valid=cap_valid)
    fp = table_fingerprint(images, captions)
    classes = sorted(images["label"].dropna().astype(str).unique().tolist()) \
        if images["label"].notna().any() else []
    origin, options = remote
    source = {"layout": "clip-retrieval", "folder": origin or str(folder.resolve()),
              "parts": [p.suffix for p in parts], "captions": parts[0].captions is not None,
              "normalised": True}
    info = {"format_version": 1, "name": dataset, "source": "import", "root": str(base),
            "classes": classes, "imported": source,
            "counts": {"images": len(images), "captions": len(captions)},
            **({"config": {"storage_options": redact(options)}} if options else {})}
    write_tables(SimpleNamespace(name=dataset, images=images, captions=captions, info=info),
                 tmp, fp, rebuild=False)
    skipped = [{"row_id": int(r), "file": str(images["file"].iat[r]),
                "reason": "zero vector in the imported embeddings"} for r in zero]
    manifest = build_manifest(
        target, facts, fingerprint=fp, dtype=dtype, counts=(len(images), len(captions)),
        index=index, files=file_records(bdir),
        timings={"import_seconds": round(copy_s, 4), "images_per_s": None},
        device=None, skipped=skipped)
    manifest.update(engine="import", device=None, imported=source)
    write_manifest(bdir, manifest)
    return {"n_images": len(images), "n_captions": len(captions), "n_skipped": len(skipped),
            "index": index}
