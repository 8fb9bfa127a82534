"""The stores a server answers from: one :class:`Snapshot` at a time, swapped on reload.

A :class:`Snapshot` is every served backbone's :class:`~clipindex.store.BackboneIndex`
opened once, with its encoder loaded and its text tower warmed, plus bounded in-memory
caches (query text vectors, fitted classifiers). A request takes the current snapshot
when it starts and keeps it to the end, so a reload never changes the store under a
request in flight: it finishes on the old snapshot, the next request gets the new one.

:class:`ServedStore` checks, between requests and at most every ``reload_interval``
seconds, the signature of the files a new build or generation rewrites (the generation
``CURRENT`` names, each served backbone's ``manifest.json`` in it, which is written last
and atomically, and the dataset's ``dataset.json`` / tables); when it changed, the
first request to notice opens a new snapshot while the others go on with the old one.
``POST /reload`` forces the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.errors import UserInputError
from clipindex.serve.errors import ApiError
from clipindex.serve.options import ServeOptions

__all__ = ["LRU", "ServedIndex", "ServedStore", "Snapshot", "open_snapshot",
           "store_signature"]

log = logging.getLogger(__name__)
_DATASET_FILES = ("dataset.json", "images.parquet", "captions.parquet")


class LRU:
    """A small thread-safe least-recently-used map with a fixed capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Any) -> bool:
        return key in self._data


class ServedIndex:
    """A :class:`BackboneIndex` whose query text vectors come from a bounded LRU.

    Texts the store's own ``text_cache.npz`` holds are read from it; others are
    encoded once (under the snapshot's model lock) and kept in memory only, so queries
    never grow the store's files. Everything else is the wrapped index's.
    """

    def __init__(self, index: Any, capacity: int, model_lock: threading.Lock) -> None:
        self._index = index
        self._texts = LRU(capacity)
        self._model_lock = model_lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)

    @property
    def index(self) -> Any:
        """The wrapped :class:`~clipindex.store.BackboneIndex`."""
        return self._index

    def knows_text(self, text: str) -> bool:
        """Whether the vector of ``text`` is in memory (no model call, no file read)."""
        return text in self._texts

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        found = {t: self._texts.get(t) for t in dict.fromkeys(texts)}
        missing = [t for t, v in found.items() if v is None]
        if missing:
            with self._model_lock:
                vectors = self._index.text_vectors(missing, save=False)
            for t, v in zip(missing, vectors, strict=True):
                self._texts.put(t, v)
                found[t] = v
        if not texts:
            return np.zeros((0, self._index.dim), dtype=np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32)


@dataclass
class Snapshot:
    """The stores as one request sees them (see the module docstring)."""

    generation: int
    names: tuple[str, ...]
    indexes: dict[str, ServedIndex]
    data_root: Path | None
    signature: tuple[Any, ...]
    opened_at: float
    threads: int = 1
    model_lock: threading.Lock = field(default_factory=threading.Lock)
    #: The memory-mapped files (:func:`~clipindex.store.loading.mapped_files`).
    mapped: list[Any] = field(default_factory=list)
    #: Reads the stored images (local files, URLs, shard members, parquet cells).
    images: Any = None
    #: Set once one of them is found truncated: the snapshot never reads them again.
    damage: str | None = None
    classifiers: LRU = field(default_factory=lambda: LRU(32))

    @property
    def first(self) -> ServedIndex:
        return self.indexes[self.names[0]]

    def pick(self, backbones: Sequence[str] | None) -> list[ServedIndex]:
        """The served indexes of ``backbones`` (None or empty: every served one)."""
        names = list(dict.fromkeys(backbones or ())) or list(self.names)
        unknown = [b for b in names if b not in self.indexes]
        if unknown:
            raise UserInputError(
                f"Unknown backbone {unknown[0]!r}. Served: {', '.join(self.names)}.")
        return [self.indexes[b] for b in names]

    def classifier(self, key: tuple[Any, ...], fit: Callable[[], Any]) -> Any:
        """The fitted classifier for ``key``, fitted (under the model lock) on first use."""
        found = self.classifiers.get(key)
        if found is None:
            with self.model_lock:
                found = self.classifiers.get(key)
                if found is None:
                    found = fit()
                    self.classifiers.put(key, found)
        return found


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def store_signature(index_dir: str | Path, folders: Sequence[str]) -> tuple[Any, ...]:
    """What changes when a build, a re-index or a new generation finishes: the folder
    ``CURRENT`` names (a generation is committed by that one write, before the top-level
    copies are replaced: an add killed in between is still seen) and the (mtime, size)
    of its dataset files and of each backbone's ``manifest.json``."""
    from clipindex.store.generations import CURRENT, generation_dir

    top = Path(index_dir)
    try:
        root = generation_dir(top)
    except Exception as exc:  # noqa: BLE001 - a damaged CURRENT: a reload says why
        return ("CURRENT unreadable", str(exc))
    parts: list[Any] = [str(root), _stat(top / CURRENT)]
    parts += [_stat(root / name) for name in _DATASET_FILES]
    parts += [_stat(root / folder / "manifest.json") for folder in folders]
    return tuple(parts)


def _open_one_generation(index_dir: str, names: Sequence[str], open_index: Callable[..., Any]
                         ) -> tuple[list[Any], tuple[Any, ...]]:
    """Every backbone of ``names`` opened from one generation, and the signature of that
    generation: opened again (a few times) when a commit came between two opens. Past
    that, the signature of the last try, which the next check sees change."""
    for _ in range(5):
        opened = [open_index(index_dir, name) for name in names]
        signature = store_signature(index_dir, [bi.name for bi in opened])
        where = {str(Path(bi.path).parent) for bi in opened}
        if where == {signature[0]}:
            break
        log.info("%s: a new generation was committed while opening; opening it", index_dir)
    return opened, signature


def open_snapshot(options: ServeOptions, generation: int = 1) -> Snapshot:
    """Open every served backbone once, load its encoder and warm its text tower."""
    import torch

    from clipindex.store import list_backbones, open_index
    from clipindex.store.loading import mapped_files

    names = list(options.backbones) or list_backbones(options.index_dir)
    if not names:
        raise UserInputError(
            f"{options.index_dir} holds no finished backbone: build one with `clipindex build`")
    torch.set_num_threads(options.threads)
    lock = threading.Lock()
    opened, signature = _open_one_generation(options.index_dir, names, open_index)
    served = {}
    for name, bi in zip(names, opened, strict=True):
        bi.encoder()
        bi.text_vectors(["a photo"], save=False)  # the text tower is warm from here on
        served[name] = ServedIndex(bi, options.text_cache, lock)
    from clipindex.sources import StoredImages

    images = StoredImages(opened[0].dataset_info, options.data_root,
                          dict(options.storage_options))
    root = options.data_root or opened[0].dataset_info.get("root")
    local = root and not images.remote
    return Snapshot(generation=generation, names=tuple(names), indexes=served,
                    data_root=Path(root).expanduser().resolve() if local else None,
                    images=images,
                    signature=signature, opened_at=time.time(), threads=options.threads,
                    model_lock=lock,
                    mapped=[m for bi in opened for m in mapped_files(bi)])


class ServedStore:
    """The current :class:`Snapshot` and its reloads (see the module docstring)."""

    def __init__(self, options: ServeOptions,
                 opener: Callable[[ServeOptions, int], Snapshot] = open_snapshot) -> None:
        self.options = options
        self._opener = opener
        self._snapshot = opener(options, 1)
        self._reloading = threading.Lock()
        self._checked = time.monotonic()
        self.last_error: str | None = None

    @property
    def snapshot(self) -> Snapshot:
        """The current snapshot, without checking the store for changes."""
        return self._snapshot

    def _folders(self) -> list[str]:
        snap = self._snapshot
        return [snap.indexes[n].name for n in snap.names]

    def changed(self) -> bool:
        """Whether the store's files changed since the current snapshot was opened."""
        return store_signature(self.options.index_dir, self._folders()) != \
            self._snapshot.signature

    def current(self) -> Snapshot:
        """The snapshot a request should use; reloads first if the store changed.

        Before every request it also checks that no file the snapshot memory-maps was
        truncated in place (reading past a mapping's end would kill the server with
        SIGBUS): if one was, it tries a reload and, while that fails, answers 503 with
        what is damaged instead of touching the mapping."""
        now = time.monotonic()
        if now - self._checked >= self.options.reload_interval:
            self._checked = now
            if self.changed() or self.mapping_damage():
                self.reload(wait=False)
        damage = self.mapping_damage()
        if damage:
            raise ApiError(503, f"{damage}; rebuild the store (`clipindex build ... "
                                "--rebuild`) and the server reopens it")
        return self._snapshot

    def mapping_damage(self) -> str | None:
        """What :func:`~clipindex.store.loading.shrunk_in_place` says of the current
        snapshot's memory-mapped files (None: they are whole); kept once found."""
        from clipindex.store.loading import shrunk_in_place

        snap = self._snapshot
        if snap.damage is None:
            snap.damage = shrunk_in_place(snap.mapped)
        return snap.damage

    def reload(self, *, wait: bool = True) -> bool:
        """Open a new snapshot and swap it in; False if another reload is running and
        ``wait`` is False. A failed open keeps the old snapshot (``last_error``); with
        ``wait`` it also raises."""
        if not self._reloading.acquire(blocking=wait):
            return False
        try:
            new = self._opener(self.options, self._snapshot.generation + 1)
        except Exception as exc:  # noqa: BLE001 - the old snapshot keeps serving
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("reload failed, still serving generation %d: %s",
                        self._snapshot.generation, self.last_error)
            if wait:
                raise
            return False
        finally:
            self._reloading.release()
        self._snapshot = new
        self.last_error = None
        log.info("serving store generation %d", new.generation)
        return True
