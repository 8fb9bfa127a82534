"""Store generations: every ``clipindex add`` (and a build or compact of a store that has
generations) writes a complete new generation, committed atomically.

Layout::

    OUT/<dataset>/CURRENT                     {"generation": N}: the committed generation
    OUT/<dataset>/.generations/g<N>/          immutable: tables, dataset.json, every
                                              backbone folder (files hard-linked when
                                              unchanged, copied where linking fails)
    OUT/<dataset>/.generations/g<N>.tmp/      being staged (never read)
    OUT/<dataset>/images.parquet, <backbone>/... the published copy of generation N

Generation 0 is a store never added to: no ``CURRENT``, read at the top level as
always. An add stages ``g<N>.tmp``, renames it to ``g<N>`` and commits by writing
``CURRENT`` atomically; only then are the top-level paths replaced, each by rename
(:func:`publish`), so numpy/pandas/faiss users reading them see the current
generation, and a reader opened before keeps the inodes it mapped. Everything before
the ``CURRENT`` write is staging: a killed add leaves the previous generation whole.
Readers (:func:`clipindex.store.open_index`, ``store_info``, ``list_backbones``)
resolve :func:`generation_dir` first.

A generation a reader resolved may vanish under it: ``clipindex compact`` commits a new
one and then drops every older one. Readers go through :func:`read_committed`, which
*retries on vanish*: a read that fails while ``CURRENT`` moved is done again on the new
generation (a failure with ``CURRENT`` unchanged is a real one and raised as it was).
Chosen over a grace period or reader leases because it needs no clock, writes nothing
(a read-only store, or one shared over NFS, is read as it is) and cannot leak: the
writer always commits ``CURRENT`` before it removes anything, so every vanish is seen
as a move of ``CURRENT``. A reader that already opened keeps its memory-mapped files
(their inodes live on) and never writes into a dropped folder (its text cache is not
saved there, see :mod:`clipindex.store.textcache`).

Tombstones (rows removed from the source) live in ``dataset.json``'s ``tombstones``
(``{"images": [...], "captions": [...]}``, cumulative, row ids never reused); the store's
``fingerprint`` then covers the tables and the tombstones (:func:`store_fingerprint`), so
a backbone left out of an add no longer matches it and is *stale*.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from clipindex.errors import IndexMismatchError
from clipindex.files import read_json
from clipindex.store.manifest import (
    MANIFEST,
    OUTPUT_FILES,
    TABLE_FILES,
    TEXT_CACHE,
    store_fingerprint,
    tombstones,
    write_dataset_info,
    write_json,
)

__all__ = ["CURRENT", "GENERATIONS", "RETRAIN_FACTOR", "commit", "current_generation",
           "disk_bytes", "drop_generations", "generation_dir", "generation_facts",
           "generations_on_disk", "link_or_copy", "link_unchanged", "publish",
           "read_committed", "snapshot_build", "stage",
           "stale_error", "stale_reason", "store_fingerprint", "store_view", "tombstones",
           "StoreView"]

log = logging.getLogger("clipindex.store")

CURRENT = "CURRENT"
GENERATIONS = ".generations"
#: An IVF/PQ index (or what ``auto`` chose) is re-trained (auto: re-chosen and re-tuned)
#: by an add only once its vectors exceed this many times the count it was trained on.
RETRAIN_FACTOR = 2.0
#: The files of a store that a generation holds (dataset level, then per backbone).
_DATASET_FILES = (*TABLE_FILES, "dataset.json")
_BACKBONE_FILES = (*OUTPUT_FILES, TEXT_CACHE, MANIFEST)

Hook = Callable[[str], None]


def generations_on_disk(dataset_dir: Path) -> list[int]:
    """The committed-looking generations of a store (``.generations/g<N>`` folders that
    hold a ``dataset.json``), oldest first."""
    base = Path(dataset_dir) / GENERATIONS
    try:
        found = [int(d.name[1:]) for d in base.iterdir()
                 if d.name[:1] == "g" and d.name[1:].isdigit() and d.is_dir()]
    except OSError:
        return []
    return sorted(g for g in found if (base / f"g{g}" / "dataset.json").is_file())


def _current_error(dataset_dir: Path, what: str) -> IndexMismatchError:
    """A damaged ``CURRENT``, naming the generations on disk and the write that fixes it
    (rerunning add or compact cannot: they read ``CURRENT`` first)."""
    path = Path(dataset_dir) / CURRENT
    gens = generations_on_disk(Path(dataset_dir))
    if not gens:
        fix = (f"the store holds no generation folder: remove {path} (the top-level files "
               "are then read as generation 0) or rebuild with `clipindex build ... "
               "--rebuild`")
    else:
        listed = ", ".join(f"g{g}" for g in gens[-5:])
        fix = (f"the store holds generation(s) {listed} under {path.parent / GENERATIONS}; "
               f"point CURRENT at the newest with `echo '{{\"generation\": {gens[-1]}}}' > "
               f"{path}` (then check it with `clipindex info --verify {path.parent}`)")
    return IndexMismatchError(f"{path} {what}; {fix}")


def current_generation(dataset_dir: Path) -> int:
    """The committed generation of a store (0: never added to, no ``CURRENT``)."""
    try:
        rec = read_json(Path(dataset_dir) / CURRENT)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError):
        raise _current_error(Path(dataset_dir), "is unreadable (not JSON)") from None
    gen = rec.get("generation") if isinstance(rec, dict) else None
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
        shown = repr(rec) if len(repr(rec)) <= 60 else repr(rec)[:59] + "…"
        raise _current_error(Path(dataset_dir), f"is damaged ({shown} names no generation)")
    return gen


T = TypeVar("T")
#: How many times :func:`read_committed` reads again after ``CURRENT`` moved.
READ_ATTEMPTS = 8


def _current_marker(dataset_dir: Path) -> bytes | None:
    try:
        return (dataset_dir / CURRENT).read_bytes()
    except OSError:
        return None


def read_committed(dataset_dir: str | os.PathLike[str], read: Callable[[Path], T]) -> T:
    """``read(generation_dir(dataset_dir))``, done again when it fails while ``CURRENT``
    moved (a compact dropped the generation it was reading; see the module docstring).
    A failure with ``CURRENT`` unchanged is raised as it is."""
    root = Path(dataset_dir)
    for attempt in range(READ_ATTEMPTS):
        before = _current_marker(root)
        try:
            return read(generation_dir(root))
        except Exception:
            if attempt == READ_ATTEMPTS - 1 or _current_marker(root) == before:
                raise
            log.debug("%s: CURRENT moved during a read; reading the new generation", root)
    raise AssertionError("unreachable")  # pragma: no cover


def generation_dir(dataset_dir: str | os.PathLike[str]) -> Path:
    """Where the committed generation of ``dataset_dir`` is read: ``.generations/g<N>``
    when ``CURRENT`` names one, else ``dataset_dir`` itself."""
    root = Path(dataset_dir)
    if not (root / CURRENT).exists():
        return root
    gen = current_generation(root)
    path = root / GENERATIONS / f"g{gen}"
    if gen == 0 or not path.is_dir():
        return root
    return path


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (the same inode: no bytes written); copy (with its
    dates, which the store's checks compare) where the file system cannot link."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _store_files(root: Path) -> Iterable[Path]:
    """Relative paths of a generation's files, dataset files and manifests last."""
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for name in _BACKBONE_FILES:
            if (d / name).is_file():
                yield Path(d.name) / name
    for name in _DATASET_FILES:
        if (root / name).is_file():
            yield Path(name)


def stage(dataset_dir: Path, generation: int) -> Path:
    """A fresh, empty ``.generations/g<N>.tmp`` (a leftover of a killed run is removed,
    and so is an uncommitted ``g<N>`` that no ``CURRENT`` names)."""
    base = dataset_dir / GENERATIONS
    tmp = base / f"g{generation}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if generation > current_generation(dataset_dir):
        shutil.rmtree(base / f"g{generation}", ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def link_unchanged(src_root: Path, dst_root: Path, skip: Iterable[Path] = ()) -> None:
    """Link every store file of ``src_root`` into ``dst_root`` except ``skip`` and
    those already there."""
    skipped = {Path(p) for p in skip}
    for rel in _store_files(src_root):
        dst = dst_root / rel
        if rel in skipped or dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(src_root / rel, dst)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(dataset_dir: Path, generation: int, staged: Path, hook: Hook | None = None) -> Path:
    """Rename ``staged`` to ``g<N>`` and commit it by writing ``CURRENT`` atomically."""
    final = dataset_dir / GENERATIONS / f"g{generation}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staged, final)
    _fsync_dir(final.parent)
    if hook:
        hook("renamed")
    write_json(dataset_dir / CURRENT, {"generation": generation})
    if hook:
        hook("committed")
    return final


def publish(dataset_dir: Path) -> int:
    """Make the top-level paths the committed generation's files, each replaced by
    rename (a link under a temporary name renamed over it); returns how many were
    replaced. Idempotent: a rerun finishes an interrupted publish."""
    gen_dir = generation_dir(dataset_dir)
    if gen_dir == dataset_dir:
        return 0
    replaced = 0
    for rel in _store_files(gen_dir):
        src, top = gen_dir / rel, dataset_dir / rel
        try:
            if top.exists() and os.path.samefile(src, top):
                continue
        except OSError:
            pass
        top.parent.mkdir(parents=True, exist_ok=True)
        tmp = top.with_name(f".{top.name}.publish.tmp")
        tmp.unlink(missing_ok=True)
        link_or_copy(src, tmp)
        os.replace(tmp, top)
        replaced += 1
    return replaced


def snapshot_build(dataset_dir: Path, note: dict[str, Any]) -> int | None:
    """After a build on a store with generations: when the top level differs from the
    committed generation, snapshot it (links) as a new generation; returns its number
    (None: nothing changed, or a store without generations)."""
    cur = current_generation(dataset_dir)
    gen_dir = generation_dir(dataset_dir)
    if cur == 0 or gen_dir == dataset_dir:
        return None
    top = [r for r in _store_files(dataset_dir) if r.name != TEXT_CACHE]
    old = [r for r in _store_files(gen_dir) if r.name != TEXT_CACHE]
    if top == old and all(os.path.samefile(dataset_dir / r, gen_dir / r) for r in top):
        return None
    new = cur + 1
    staged = stage(dataset_dir, new)
    link_unchanged(dataset_dir, staged)
    info = read_json(staged / "dataset.json")
    (staged / "dataset.json").unlink()
    history = [*info.get("history", []), {"generation": new, **note}]
    write_dataset_info(staged / "dataset.json",
                       {**info, "generation": new, "history": history})
    commit(dataset_dir, new, staged)
    publish(dataset_dir)
    return new


def drop_generations(dataset_dir: Path, keep: int | None = None) -> None:
    """Remove every generation but ``keep`` (None: all of them, and ``CURRENT``)."""
    base = dataset_dir / GENERATIONS
    if keep is None:
        (dataset_dir / CURRENT).unlink(missing_ok=True)
    if not base.is_dir():
        return
    for d in base.iterdir():
        if keep is None or d.name != f"g{keep}":
            shutil.rmtree(d, ignore_errors=True)
    if keep is None:
        shutil.rmtree(base, ignore_errors=True)


def disk_bytes(path: Path) -> int:
    """Bytes of every file under ``path``, each inode counted once (hard links)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


class StoreView:
    """A source seen through the store it was added to: the store's tables (its row
    order, tombstoned rows included) under the source's data root."""

    def __init__(self, dataset: Any, dataset_dir: Path, info: dict[str, Any]) -> None:
        from clipindex.store.verify import read_tables

        self.name, self.root, self.info = dataset.name, dataset.root, info
        self.reader = getattr(dataset, "reader", None)  # shards, parquet, URLs
        self.images, self.captions = read_tables(dataset_dir, info)

    def image_paths(self) -> list[Path]:
        return [Path(self.root) / f for f in self.images["file"]]


def store_view(dataset: Any, dataset_dir: Path, fingerprint: str, rebuild: bool,
               source: Any = "SOURCE") -> tuple[Any, str]:
    """What a build of ``dataset`` into ``dataset_dir`` encodes, and its fingerprint.

    A source the store was last added from (``source_fingerprint``) is the store itself
    (:class:`StoreView`: "up to date", a new backbone gets the store's rows; ``rebuild``
    too, there being no other version to replace). A changed source is a
    :class:`DataError` naming ``clipindex add`` (``rebuild``: the store's generations are
    dropped and the build replaces it). Damaged tables of a store that has generations
    are a :class:`DamagedStoreError` naming ``--rebuild``; with ``rebuild`` the source
    replaces the store as for a changed source."""
    from clipindex.errors import DamagedStoreError, DataError

    meta = dataset_dir / "dataset.json"
    try:
        recorded = read_json(meta)
    except (OSError, ValueError):
        return dataset, fingerprint  # no store yet, or damaged: write_tables decides
    if not isinstance(recorded, dict) or recorded.get("fingerprint") == fingerprint:
        return dataset, fingerprint
    if recorded.get("source_fingerprint") == fingerprint:  # the store is this source's
        try:
            return StoreView(dataset, dataset_dir, recorded), str(recorded["fingerprint"])
        except DamagedStoreError:
            if not rebuild:  # names `--rebuild`
                raise
            # Its rows (appended, tombstoned) exist only in the damaged tables: the
            # source replaces the store and every backbone is encoded again.
            log.warning("%s: the store's tables are damaged; --rebuild replaces the store "
                        "from the source (every backbone is encoded again)", dataset_dir)
    if rebuild:
        drop_generations(dataset_dir)
        return dataset, fingerprint
    raise DataError(
        f"{dataset_dir} holds another version of dataset {dataset.name!r}: its source "
        f"changed since the store was built; run `clipindex add {source} --index "
        f"{dataset_dir}` to encode the new images and tombstone the removed ones, or pass "
        "--rebuild (rebuild=True) to replace the store")


# ----------------------------------------------------------------------------- tombstones
def stale_reason(manifest: dict[str, Any], info: dict[str, Any]) -> str | None:
    """Why a backbone's rows are not the store's (None: current)."""
    if manifest.get("dataset_fingerprint") == info.get("fingerprint"):
        return None
    have, now = int(manifest.get("generation") or 0), int(info.get("generation") or 0)
    if now > have:
        return (f"left out of an add: it holds generation {have}'s "
                f"{manifest.get('n_images')} image rows, the store is at generation {now}")
    return "the dataset changed since it was built"


def stale_error(bdir: Path, manifest: dict[str, Any], info: dict[str, Any]
                ) -> IndexMismatchError:
    """The one-line error of opening a stale backbone, naming the fix."""
    reason = stale_reason(manifest, info) or "stale"
    store = bdir.parent
    if store.parent.name == GENERATIONS:
        store = store.parent.parent
    if int(info.get("generation") or 0) > int(manifest.get("generation") or 0):
        return IndexMismatchError(
            f"backbone {bdir.name} is stale ({reason}); update it with `clipindex add "
            f"SOURCE --index {store} --backbone {bdir.name}`")
    return IndexMismatchError(
        f"{bdir} was built for another version of dataset {info.get('name')!r} (the "
        "tables changed since); rebuild it with `clipindex build ... --rebuild`")


def generation_facts(info: dict[str, Any]) -> dict[str, Any]:
    """What ``store_info`` reports about generations and tombstones."""
    dead_i, dead_c = tombstones(info)
    return {"generation": int(info.get("generation") or 0),
            "history": list(info.get("history") or []),
            "tombstoned_images": int(len(dead_i)), "tombstoned_captions": int(len(dead_c))}
