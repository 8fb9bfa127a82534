"""Reading a store: :func:`open_index` (a :class:`BackboneIndex`) and
:func:`list_backbones` (:func:`clipindex.store.summary.store_info` describes a store).

Layout::

    OUT/<dataset>/images.parquet, captions.parquet, dataset.json
    OUT/<dataset>/<backbone>/shards/                      (only while building)
    OUT/<dataset>/<backbone>/images.npy, captions.npy      row i = row id i
    OUT/<dataset>/<backbone>/images.faiss, captions.faiss  ids = row ids
    OUT/<dataset>/<backbone>/manifest.json                 written last, atomically
    OUT/<dataset>/<backbone>/text_cache.npz                query texts encoded on demand

A backbone folder without ``manifest.json`` is an unfinished build: nothing opens it,
and :func:`clipindex.store.build_store` resumes it shard by shard. Every manifest is
read through :func:`clipindex.store.manifest.read_manifest`: a newer store format is
refused ("upgrade clipindex"), every older one still opens. Searching by text or image
is :mod:`clipindex.search`'s (``search_text(index, ...)``); the store never imports it.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import (
    IncompleteIndexError,
    IndexMismatchError,
    ResourceError,
    UserInputError,
)
from clipindex.store import generations as gens
from clipindex.store.loading import LazyFaiss, advise_random, load_matrix
from clipindex.store.manifest import (
    MANIFEST,
    TEXT_CACHE,
    load_encoder_for,
    normalise_rows,
    read_manifest,
    stored_route,
    text_cache_key,
    weights_identity,
)
from clipindex.store.queries import Hits, check_backbone_name, query_matrix
from clipindex.store.tables import FirstCaptions, StoreTable
from clipindex.store.textcache import TextCache
from clipindex.store.verify import (
    Damage,
    check_backbone,
    orphan_damage,
    orphaned,
    read_dataset_info,
    read_store_tables,
)

__all__ = ["BackboneIndex", "Hits", "advise_random", "list_backbones", "open_index"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- reading
_TARGETS = ("images", "captions")


class BackboneIndex:
    """One backbone's finished store: tables, vectors, FAISS indexes and manifest.

    Built by :func:`open_index`. The stored matrices are memory-mapped read-only
    (``np.load(mmap_mode="r")``: opening a store of any size costs almost no resident
    memory) and so are the FAISS indexes (``index_mmapped`` says which), each read on
    its first query (:class:`~clipindex.store.loading.LazyFaiss`: from the file checked
    at open). ``image_vectors``
    / ``caption_vectors`` are float32 (row i = row id i, zero rows for skipped images):
    the memory map itself for a float32 store, a float32 copy made on first use for a
    float16 one (searching never makes it). ``image_valid`` / ``caption_valid`` are
    False for rows a query must never return; ``image_removed`` / ``caption_removed``
    are True for the tombstoned ones among them (removed from the source by ``clipindex
    add``: no route or command shows them, not even by row id).

    Example
    -------
    >>> idx = open_index("indexes/demo", "tiny-vit")  # doctest: +SKIP
    >>> scores, ids = idx.search(idx.image_vectors[:1], 5)  # doctest: +SKIP
    """

    def __init__(self, path: Path, manifest: dict[str, Any], dataset_info: dict[str, Any],
                 images: pd.DataFrame | StoreTable, captions: pd.DataFrame | StoreTable,
                 vectors: dict[str, np.ndarray], faiss_indexes: dict[str, Any],
                 index_mmapped: dict[str, bool] | None = None) -> None:
        # faiss_indexes: LazyFaiss files (open_index) or indexes already in memory
        self.path = path
        self.manifest = manifest
        self.dataset_info = dataset_info
        self._tables = {t: v if isinstance(v, StoreTable) else StoreTable.from_frame(v)
                        for t, v in (("images", images), ("captions", captions))}
        #: The stored matrices as on disk (memory maps; float16 for a float16 store).
        self.stored = dict(vectors)
        self._float32: dict[str, np.ndarray] = {}
        mapped = dict(index_mmapped or {})
        #: The FAISS file of each target, read on first use.
        self.faiss_files = {t: v if isinstance(v, LazyFaiss) else
                            LazyFaiss.loaded(v, bool(mapped.get(t)), path / f"{t}.faiss")
                            for t, v in faiss_indexes.items()}
        self.image_valid = np.ones(len(images), dtype=bool)
        self.image_valid[[int(s["row_id"]) for s in manifest.get("skipped", [])]] = False
        self.caption_valid = np.ones(len(captions), dtype=bool)
        dead_images, dead_captions = gens.tombstones(dataset_info)  # removed by `clipindex add`
        for dead, n in ((dead_images, len(images)), (dead_captions, len(captions))):
            if len(dead) and (dead.min() < 0 or dead.max() >= n):
                raise Damage(path.parent / "dataset.json",
                             f"is damaged (a tombstone names row {int(dead.max())} of {n})"
                             ).error()
        self.image_valid[dead_images], self.caption_valid[dead_captions] = False, False
        #: Rows removed from the source (tombstoned): no query, route or command shows them.
        self.image_removed = np.zeros(len(images), dtype=bool)
        self.image_removed[dead_images] = True
        self.caption_removed = np.zeros(len(captions), dtype=bool)
        self.caption_removed[dead_captions] = True
        # Fixed from here on: a query counts them once (n_valid), never per query.
        self.image_valid.flags.writeable = self.caption_valid.flags.writeable = False
        self._n_valid = {"images": int(self.image_valid.sum()),
                         "captions": int(self.caption_valid.sum())}
        self._first_captions: FirstCaptions | None = None
        self._device_copies: dict[tuple[str, str, str], Any] = {}
        self._encoders: dict[str | None, Any] = {}
        self._text_cache: dict[str, np.ndarray] | None = None

    # The tables as DataFrames, decoded on first use (a query reads rows by id: `table`).
    images = property(lambda self: self._tables["images"].frame, doc="The image table.")
    captions = property(lambda self: self._tables["captions"].frame, doc="The caption table.")

    @property
    def index_mmapped(self) -> dict[str, bool]:
        """Whether each FAISS index is memory-mapped (reads the ones not read yet)."""
        return {t: f.mapped for t, f in self.faiss_files.items()}

    def faiss_index(self, target: str) -> Any:
        """The FAISS index of ``target``, read on first use."""
        return self.faiss_files[target].get()

    def table(self, target: str) -> StoreTable:
        """The ``images`` or ``captions`` table, read by row id (:mod:`clipindex.store.tables`)."""
        return self._tables[target]

    def n_valid(self, target: str) -> int:
        """How many ``target`` rows a query may return (counted once at open)."""
        return self._n_valid[target]

    def first_captions(self, image_rows: np.ndarray) -> np.ndarray:
        """The first valid caption row of each of ``image_rows`` (-1: none); a tombstoned
        caption is never one. Nothing is scanned per query (see
        :class:`~clipindex.store.tables.FirstCaptions`)."""
        if self._first_captions is None:
            caps = self._tables["captions"]
            owner = caps.ints("image_row_id") if "image_row_id" in caps else np.zeros(0, int)
            self._first_captions = FirstCaptions(owner, self.caption_valid[:len(owner)],
                                                 len(self.image_valid))
        return self._first_captions(image_rows)

    def _vectors(self, target: str) -> np.ndarray:
        if target not in self._float32:
            m = self.stored[target]
            self._float32[target] = m if m.dtype == np.float32 else m.astype(np.float32)
        return self._float32[target]

    @property
    def image_vectors(self) -> np.ndarray:
        """Image vectors, float32, row i = row id i (read-only)."""
        return self._vectors("images")

    @image_vectors.setter
    def image_vectors(self, value: np.ndarray) -> None:
        self.stored["images"] = self._float32["images"] = np.asarray(value, np.float32)

    @property
    def caption_vectors(self) -> np.ndarray:
        """Caption vectors, float32, row i = row id i (read-only)."""
        return self._vectors("captions")

    @caption_vectors.setter
    def caption_vectors(self, value: np.ndarray) -> None:
        self.stored["captions"] = self._float32["captions"] = np.asarray(value, np.float32)

    def index_description(self, target: str = "images") -> dict[str, Any]:
        """The manifest's description of ``target``'s FAISS index (kind, knobs, recall)."""
        desc = (self.manifest.get("index") or {}).get(target)
        return desc if isinstance(desc, dict) else {"kind": "flat"}

    @property
    def name(self) -> str:
        """The backbone folder name (``tiny-vit``, ``ViT-B-32__none``)."""
        return str(self.manifest["backbone_folder"])

    @property
    def dim(self) -> int:
        """Embedding dimension of every stored vector."""
        return int(self.manifest["dim"])

    def __repr__(self) -> str:
        return (f"BackboneIndex({self.name!r}, images={len(self.images)}, "
                f"captions={len(self.captions)}, dim={self.dim})")

    def search(self, queries: np.ndarray, k: int, *, target: str = "images",
               rows: Sequence[int] | np.ndarray | None = None,
               device: str | None = None, rerank_factor: int | None = None) -> Hits:
        """Top-``k`` of each query among ``target`` rows (optionally only ``rows``).

        On a flat index the result is the exact cosine top-k. On an approximate index
        (ivf, hnsw, pq, ivfpq, or what ``auto`` chose) FAISS returns ``k *
        rerank_factor`` candidates (default: the manifest's ``rerank_factor`` for the
        kind, 4 for HNSW, 16 for PQ kinds) and they are rescored exactly from the
        stored vectors; IVF-Flat (factor 1) already scores its candidates with the
        stored vectors, so its answer needs no rescoring. The *scores* are exact
        cosines, the *set* of rows is the index's best guess (recall@10 against exact
        search is in the manifest).
        ``rerank_factor=0`` returns the index's own scores, which are approximate for
        PQ kinds. The result unpacks as ``(scores, ids)`` of shape ``(n_queries, k)``
        and says ``.exact`` (scores are exact cosines) and ``.exhaustive`` (ids are the
        exact top-k). Ids are row ids, -1 (score ``-inf``) where fewer than ``k`` rows
        qualify. Skipped rows never come back.
        ``device`` ``None``/``"cpu"`` searches the FAISS index as above; ``"cuda"`` (or
        ``"torch"`` to run the same code on CPU) searches the stored vectors exactly on
        that device: faiss-gpu for a flat index when installed, else torch matmul +
        top-k (:func:`clipindex.index.kinds.torch_search`).

        Example
        -------
        >>> scores, ids = idx.search(idx.text_vectors(["a photo of a cat"]), 10,
        ...                          rows=idx.images.index[idx.images.split == "test"])
        ... # doctest: +SKIP
        """
        from clipindex.index.kinds import scores_are_exact, search_index
        from clipindex.index.topk import top_k

        q, sel = self._checked(queries, target, rows)
        if device is not None and str(device) != "cpu":
            return Hits(*self._device_search(q, k, target, sel, str(device)), exact=True,
                        exhaustive=True)
        kind, factor = self._kind_and_factor(target, rerank_factor)
        index = self.faiss_index(target)
        if kind == "flat":
            return Hits(*search_index(index, q, k, rows=sel), exact=True, exhaustive=True)
        if factor <= 0:
            return Hits(*search_index(index, q, k, rows=sel),
                        exact=scores_are_exact(index), exhaustive=False)
        found = top_k(index, self.stored[target], q, k, rerank=factor, rows=sel, fill=False)
        # top_k returns FAISS's own answer for IVF-Flat at factor 1
        return Hits(*found, exact=True, exhaustive=False, rescored=found.rescored)

    def top_k(self, queries: np.ndarray, k: int, *, target: str = "images",
              rows: Sequence[int] | np.ndarray | None = None,
              device: str | None = None) -> Hits:
        """The ranking of a search (:func:`clipindex.search.ranking.rank`): like
        :meth:`search`, but every score is recomputed from the stored vectors (float32
        dot products, the same numbers on every kind and device) and a query an
        approximate index answers with fewer than ``k`` allowed rows (a selective
        ``rows`` filter) gets the exact top-``k`` of every allowed row. One over-fetch
        (the kind's rerank factor), one rescoring and one sort:
        :func:`clipindex.index.topk.top_k`."""
        from clipindex.index.topk import rank_candidates, top_k

        q, sel = self._checked(queries, target, rows)
        valid = self.image_valid if target == "images" else self.caption_valid
        allowed = self.n_valid(target) if sel is None else int(valid[sel].sum())
        if device is not None and str(device) != "cpu":
            ids = self._device_search(q, k, target, sel, str(device))[1]
            found = rank_candidates(q, ids, self.stored[target], k, valid=valid, rows=sel,
                                    n_allowed=allowed)
            return Hits(*found, exact=True, exhaustive=True, rescored=True)
        kind, factor = self._kind_and_factor(target, None)
        found = top_k(self.faiss_index(target), self.stored[target], q, k,
                      rerank=max(1, factor), rows=sel, valid=valid, rescore=True,
                      n_allowed=allowed)
        return Hits(*found, exact=True, exhaustive=kind == "flat", rescored=True)

    def _checked(self, queries: np.ndarray, target: str,
                 rows: Sequence[int] | np.ndarray | None) -> tuple[np.ndarray, Any]:
        if target not in _TARGETS:
            raise UserInputError(f"target must be one of {', '.join(_TARGETS)}, got {target!r}")
        q = query_matrix(queries, self.dim, self.name)
        sel = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64).ravel())
        return q, sel

    def _kind_and_factor(self, target: str, rerank_factor: int | None) -> tuple[str, int]:
        from clipindex.index.tuning import RERANK_FACTOR

        desc = self.index_description(target)
        kind = str(desc.get("kind", "flat"))
        if kind == "flat":
            return kind, 1
        factor = desc.get("rerank_factor", RERANK_FACTOR.get(kind, 4)) \
            if rerank_factor is None else int(rerank_factor)
        return kind, int(factor)

    def _device_search(self, q: np.ndarray, k: int, target: str, rows: np.ndarray | None,
                       device: str) -> tuple[np.ndarray, np.ndarray]:
        from clipindex.encode import resolve_device
        from clipindex.index.kinds import search_index, to_faiss_gpu, torch_search
        from clipindex.index.torchsearch import read_only_tensor

        where = "cpu" if device == "torch" else str(resolve_device(device))
        copies = self._device_copies
        if where != "cpu" and rows is None:  # faiss-gpu has no id selectors: rows go to torch
            if (target, "faiss", where) not in copies:
                copies[(target, "faiss", where)] = to_faiss_gpu(self.faiss_index(target))
            gpu = copies[(target, "faiss", where)]
            if gpu is not None:
                return search_index(gpu, q, k)
        if (target, "torch", where) not in copies:

            vectors = self.image_vectors if target == "images" else self.caption_vectors
            copies[(target, "torch", where)] = read_only_tensor(vectors).to(where)
        valid = self.image_valid if target == "images" else self.caption_valid
        return torch_search(copies[(target, "torch", where)], q, k, valid, rows=rows,
                            device=where)

    def encoder(self, device: str | None = None) -> Any:
        """The :class:`~clipindex.encode.encoder.Encoder` these vectors came from (loaded once)."""
        if device not in self._encoders:
            self._encoders[device] = _load_matching_encoder(self.manifest, device)
        return self._encoders[device]

    def text_vectors(self, texts: Sequence[str], *, save: bool = True) -> np.ndarray:
        """Normalised text vectors, encoded once and cached in ``text_cache.npz``.

        With ``save=False`` texts already cached are read from the cache and the others
        are encoded but neither kept nor written (a long-running service keeps its own
        bounded cache instead of growing the store's file with every query).

        Example
        -------
        >>> idx.text_vectors(["a photo of a dog"]).shape  # doctest: +SKIP
        (1, 64)
        """
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        cache = self._load_text_cache()
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        for t in dict.fromkeys(t for t in texts if t in cache):
            cache[t] = cache.pop(t)  # most recently used last: the size cap drops the oldest
        if missing:
            vectors = normalise_rows(self.encoder().encode_texts(missing))
            if vectors.shape != (len(missing), self.dim):
                raise IndexMismatchError(
                    f"the encoder returned text vectors of shape {vectors.shape}; the store "
                    f"{self.name} expects dim {self.dim}")
            if not save:
                fresh = dict(zip(missing, vectors, strict=True))
                return np.stack([cache[t] if t in cache else fresh[t]
                                 for t in texts]).astype(np.float32)
            cache.update(zip(missing, vectors, strict=True))
            self._save_text_cache(cache)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([cache[t] for t in texts]).astype(np.float32)

    def _load_text_cache(self) -> dict[str, np.ndarray]:
        if self._text_cache is None:
            self._text_cache = self._cache_file().load()
        return self._text_cache

    def _cache_file(self) -> TextCache:
        return TextCache(self.path / TEXT_CACHE, text_cache_key(self.manifest), self.dim)

    def _save_text_cache(self, cache: dict[str, np.ndarray]) -> None:
        """Write the cache; a store that cannot be written (read-only, no permission,
        full disk) keeps the vectors in memory for this run and says so once."""
        if getattr(self, "_cache_unwritable", False):
            return
        try:
            self._cache_file().save(cache)
        except ResourceError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.EIO):
                raise
            self._cache_unwritable = True
            log.warning("query text vectors are not cached on disk: %s", exc)


def _load_matching_encoder(manifest: dict[str, Any], device: str | None) -> Any:
    from clipindex.encode import backbones

    req = manifest.get("requested") or {}
    spec = backbones.resolve_backbone(req.get("backbone", manifest["backbone"]),
                                      pretrained=req.get("pretrained", "default"))
    if weights_identity(spec, manifest)["weights"] != manifest["weights"]:
        raise IndexMismatchError(
            f"the weights of {spec.name} differ from those the store was built with "
            f"({manifest['weights']}); rebuild the store with clipindex build")
    encoder = load_encoder_for(spec, device)
    if int(encoder.embed_dim) != int(manifest["dim"]):
        raise IndexMismatchError(
            f"{spec.name} encodes dim {encoder.embed_dim} but the store holds dim "
            f"{manifest['dim']}; rebuild the store with clipindex build")
    encoder.decode_route = stored_route(manifest)  # query files decoded as the store's were
    return encoder


def list_backbones(dataset_dir: str | os.PathLike[str], *, unfinished: bool = False
                   ) -> list[str]:
    """Backbone folders of a dataset store that hold a finished build (or, with
    ``unfinished=True``, those that do not).

    Example
    -------
    >>> list_backbones("indexes/demo")  # doctest: +SKIP
    ['tiny-rn', 'tiny-vit', 'tiny-vit2']
    """
    def listed(root: Path) -> list[str]:
        if not root.is_dir():
            return []
        return sorted(d.name for d in root.iterdir() if d.is_dir()
                      and not d.name.startswith(".") and (d / MANIFEST).is_file() != unfinished)

    if unfinished:  # builds run at the top level
        return listed(Path(dataset_dir))
    return gens.read_committed(dataset_dir, listed)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _backbone_dir(dataset_dir: Path, backbone: str, pretrained: str) -> Path:
    """The folder of ``backbone``: a folder name, or a name resolve_backbone knows."""
    direct = dataset_dir / backbone
    if pretrained == "default" and backbone and "/" not in backbone and _is_dir(direct):
        return direct
    try:
        from clipindex.encode.backbones import resolve_backbone

        folder = resolve_backbone(backbone, pretrained=pretrained).name
    except UserInputError:
        folder = None
    if folder and _is_dir(dataset_dir / folder):
        return dataset_dir / folder
    built = list_backbones(dataset_dir)
    shown = backbone if len(backbone) <= 80 else backbone[:79] + "…"
    raise IndexMismatchError(
        f"backbone {shown!r} is not built in {dataset_dir}. Built: "
        f"{', '.join(built) if built else 'none'}. Build it with `clipindex build CONFIG "
        f"--backbone {shown} --out {dataset_dir.parent}`.")


def open_index(dataset_dir: str | os.PathLike[str], backbone: str, *,
               pretrained: str = "default", verify: bool = False, mmap: bool = True
               ) -> BackboneIndex:
    """Open one backbone's finished store under ``dataset_dir`` (``OUT/<dataset>``).

    Parameters
    ----------
    dataset_dir : path
        The dataset folder written by :func:`build_store`.
    backbone : str
        A backbone folder name (``tiny-vit``, ``ViT-B-32__none``) or a name
        :func:`~clipindex.encode.backbones.resolve_backbone` knows (with ``pretrained``).
    verify : bool
        Hash every stored file against the manifest. Without it (the default, fast on
        any size of store) the tables and the manifest are hashed and the large files
        are checked by size and mtime (hashed when their mtime moved), see
        :mod:`clipindex.store.verify`.
    mmap : bool
        Memory-map the FAISS indexes (``IO_FLAG_MMAP_IFC``) instead of reading them;
        the vectors are always memory-mapped.

    Raises
    ------
    IncompleteIndexError
        The folder has no ``manifest.json`` (an interrupted or running build).
    IndexMismatchError
        The backbone is not built here or the dataset changed since the build.
    DamagedStoreError
        A file a query reads is missing, unreadable or not what the build recorded
        (an ``IndexMismatchError``; the message names the file and the fix).

    Example
    -------
    >>> idx = open_index("indexes/demo", "tiny-vit")  # doctest: +SKIP
    >>> idx.image_vectors.shape  # doctest: +SKIP
    (1000, 64)
    """
    # The committed generation (`clipindex add`), read again if a compact drops it.
    return gens.read_committed(
        dataset_dir, lambda root: _open_generation(root, backbone, pretrained, verify, mmap))


def _open_generation(root: Path, backbone: str, pretrained: str, verify: bool, mmap: bool
                     ) -> BackboneIndex:
    info = read_dataset_info(root)
    bdir = _backbone_dir(root, check_backbone_name(backbone), pretrained)
    if not (bdir / MANIFEST).is_file():
        if orphaned(bdir):
            raise orphan_damage(bdir).error()
        raise IncompleteIndexError(
            f"{bdir} was not finished (no manifest.json); rerun `clipindex build ... "
            f"--backbone {backbone}` with the same --out to resume it")
    manifest = read_manifest(bdir)  # refuses a newer format, upgrades an older one
    if manifest.get("dataset_fingerprint") != info.get("fingerprint"):
        raise gens.stale_error(bdir, manifest, info)  # another dataset, or left out of an add
    damage = check_backbone(bdir, manifest, verify)
    if damage:
        raise damage[0].error()
    images, captions = read_store_tables(root, info)  # columns decoded on first use
    vectors = {t: load_matrix(bdir / f"{t}.npy") for t in _TARGETS}
    for t, table in (("images", images), ("captions", captions)):
        if vectors[t].shape != (len(table), manifest["dim"]):
            raise Damage(bdir / f"{t}.npy",
                         f"has shape {vectors[t].shape} but {t}.parquet has {len(table)} "
                         f"rows of dim {manifest['dim']}").error()
    # Opened now, read on first use (a query of images never reads captions.faiss).
    faiss_files = {t: LazyFaiss(bdir / f"{t}.faiss", mmap) for t in _TARGETS}
    return BackboneIndex(bdir, manifest, info, images, captions, vectors, faiss_files)
