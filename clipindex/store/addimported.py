"""``clipindex add FOLDER --index STORE`` of a store made by ``clipindex import``: its
clip-retrieval output grew (or shrank), and the store follows, as a new generation,
with nothing encoded.

FOLDER is the layout :func:`~clipindex.store.imported.scan_layout` reads (a URL is
fetched to a staging folder first, as ``clipindex import`` does). Each metadata row's
``image_path`` becomes the store's ``file`` the way the import mapped it: relative to the
data root ``dataset.json`` records (an absolute path or URL must lie under it; a relative
one is already relative to it). Rows the store lacks (by that identity, :func:`~clipindex.
store.addplan.plan_rows`) become new row ids after the last; their vectors are read from
FOLDER's parts (new rows only, part by part, memory-mapped), L2-normalised; an all-zero
vector is a skipped row; a NaN or infinite value is a one-line :class:`DataError` raised
before anything is written. With caption vectors in the store, text_emb row i is new
image i's caption (a folder without text_emb is then an error; a store without captions
ignores text_emb). Rows the store has and FOLDER lacks are tombstoned. The generation is
staged, committed and published by :mod:`clipindex.store.add`'s own machinery (FAISS
indexes updated by :func:`~clipindex.store.update.update_index`, held-out recall
re-measured, manifest sealed). Metadata columns the store lacks are added to its images
table (empty for the older rows); columns FOLDER lacks are empty for the new rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from clipindex.errors import DataError, IndexMismatchError, UserInputError
from clipindex.store.add import (
    AddResult,
    NewRows,
    _stage_generation,
    _stale,
    _targets,
    write_backbone,
)
from clipindex.store.addplan import RowPlan, plan_rows
from clipindex.store.generations import (
    commit,
    current_generation,
    generation_dir,
    publish,
)
from clipindex.store.imported import (
    PATH_COLUMN,
    Part,
    metadata_tables,
    read_metadata,
    scan_layout,
)
from clipindex.store.lock import build_lock
from clipindex.store.verify import read_dataset_info, read_tables

__all__ = ["add_embeddings", "is_embeddings_add", "relative_files"]

_ROWS = 65536  # new rows read and normalised at a time
_URL = r"^[A-Za-z][A-Za-z0-9+.-]*://"


def is_embeddings_add(source: str | os.PathLike[str], index: str | os.PathLike[str]
                      ) -> bool:
    """Whether ``clipindex add SOURCE --index INDEX`` reads embeddings: SOURCE is a
    local folder holding ``img_emb/``, or a URL while the store was imported."""
    text = os.fspath(source)
    if re_url(text):
        try:
            info = read_dataset_info(generation_dir(Path(index)))
        except (UserInputError, IndexMismatchError):
            return False  # not a store: the ordinary add says so in one line
        return bool(info.get("imported"))
    return (Path(text).expanduser() / "img_emb").is_dir()


def re_url(text: str) -> bool:
    import re

    return re.match(_URL, text) is not None


def relative_files(paths: pd.Series, root: str) -> pd.Series:
    """``image_path`` values as the store's ``file`` (relative to the recorded ``root``,
    as the import mapped them); a path outside it is a :class:`DataError`."""
    text = paths.astype(str)
    anchored = text.str.match(_URL) | text.str.startswith("/")
    if not bool(anchored.any()):
        return text
    if not bool(anchored.all()):
        raise DataError("image_path mixes absolute paths, URLs and relative paths; give one "
                        "kind")
    base = str(root).rstrip("/") + "/"
    inside = text.str.startswith(base)
    if not bool(inside.all()):
        raise DataError(f"image_path {text[~inside].iloc[0]!r} is not under the store's data "
                        f"root {root}; an add keeps the root the import recorded")
    return text.str.slice(len(base))


def add_embeddings(
    folder: str | os.PathLike[str],
    *,
    index: str | os.PathLike[str],
    backbones: Sequence[str] | None = None,
    pretrained: str = "default",
    storage_options: dict[str, Any] | None = None,
    root: str | os.PathLike[str] | None = None,
    label_field: str | None = None,
    _hook: Callable[[str], None] | None = None,
) -> AddResult:
    """Bring the imported store ``index`` (``OUT/<dataset>``) up to date with the
    clip-retrieval output ``folder``, as a new generation; nothing is encoded (see the
    module docstring). ``backbones`` (default: every imported backbone of the store)
    are updated; ``folder`` may be a URL (read with ``storage_options``). ``root`` and
    ``label_field`` (an ordinary add's) are refused: the store keeps its recorded root.

    Example
    -------
    >>> add_embeddings("clip_out", index="indexes/laion-part").line()  # doctest: +SKIP
    'added 20 rows from embeddings (nothing encoded), removed 0'
    """
    t0 = time.perf_counter()
    if root is not None or label_field is not None:
        raise UserInputError("--root and --label-field do not apply to an add of "
                             "embeddings: the store keeps the root its import recorded")
    ddir = Path(index)
    info = read_dataset_info(generation_dir(ddir))
    if not info.get("imported"):
        raise UserInputError(
            f"{ddir} was built by encoding images, not by `clipindex import`; add to it "
            f"with the source it was built from (an add of embeddings needs an imported "
            f"store)")
    text = os.fspath(folder)
    if not re_url(text):
        return _add_folder(Path(text).expanduser(), text, ddir, backbones, pretrained,
                           t0, _hook)
    from clipindex.store.staging import fetched_folder

    with fetched_folder(text.rstrip("/"), ddir.parent, f"{ddir.name}.add",
                        storage_options) as local:
        return _add_folder(local, text, ddir, backbones, pretrained, t0, _hook)


def _source(folder: Path, info: dict[str, Any]) -> SimpleNamespace:
    """The folder's parts, dim, tables (files relative to the store's root) and a
    fingerprint of its files, all checked before the store is locked."""
    parts, dim = scan_layout(folder)
    meta = read_metadata(parts)
    files = relative_files(meta[PATH_COLUMN], str(info.get("root", "")))
    has_text = parts[0].captions is not None
    images, captions = metadata_tables(meta, files, has_text)
    del meta, files
    stamp = [[p.suffix, p.rows, *((os.stat(f).st_size, os.stat(f).st_mtime_ns)
                                  for f in (p.images, p.metadata))] for p in parts]
    digest = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    return SimpleNamespace(parts=parts, dim=dim, images=images, captions=captions,
                           has_text=has_text, fingerprint=f"embeddings:{digest}")


def _chosen(cdir: Path, ddir: Path, backbones: Sequence[str] | None, pretrained: str,
            src: SimpleNamespace, images: pd.DataFrame, captions: pd.DataFrame
            ) -> list[tuple[Any, dict[str, Any]]]:
    """The imported backbones the add updates, checked against the folder (dim, caption
    vectors) and the tables (a backbone behind them cannot catch up from embeddings)."""
    if backbones:
        chosen: list[tuple[Any, dict[str, Any]]] = _targets(cdir, ddir, backbones, pretrained)
    else:  # every imported backbone, by its folder: no model (nor torch) is resolved
        from clipindex.store.manifest import read_manifest
        from clipindex.store.reader import list_backbones

        chosen = [(SimpleNamespace(folder=f, name=f), m) for f in list_backbones(ddir)
                  if (m := read_manifest(cdir / f)).get("imported")]
    if not chosen:
        raise UserInputError(f"{ddir} has no imported backbone to add embeddings to")
    for t, m in chosen:
        if not m.get("imported"):
            raise UserInputError(f"{t.folder} in {ddir} was encoded, not imported; an add of "
                                 "embeddings updates only imported backbones")
        if int(m["dim"]) != src.dim:
            raise DataError(f"the folder holds vectors of dim {src.dim} but {t.folder} in "
                            f"{ddir} holds dim {m['dim']}; add the vectors of the model "
                            f"the store was imported with")
        if (int(m["n_images"]), int(m["n_captions"])) != (len(images), len(captions)):
            raise IndexMismatchError(f"{t.folder} is behind the store's tables (stale); "
                                     "import the folder again to rebuild it")
        if int(m["n_captions"]) and not src.has_text:
            raise DataError(f"{t.folder} holds caption vectors but the folder has no "
                            "text_emb/; give text_emb_<N>.npy for every part")
    return chosen


def _with_new_columns(images: pd.DataFrame, source: pd.DataFrame) -> pd.DataFrame:
    """The store's images table with the folder's metadata columns it lacks (empty)."""
    extra = [c for c in source.columns if c not in images.columns]
    return images.reindex(columns=[*images.columns, *extra]) if extra else images


def _add_folder(folder: Path, given: str, ddir: Path, backbones: Sequence[str] | None,
                pretrained: str, t0: float, hook: Callable[[str], None] | None
                ) -> AddResult:
    """:func:`add_embeddings` of a local folder (``given``: as the user named it).
    long because: one sequence from the checks to the published generation, as
    :func:`clipindex.store.add.add_with_options` takes it."""
    src = _source(folder, read_dataset_info(generation_dir(ddir)))
    with build_lock(ddir):
        publish(ddir)  # an add killed after its commit: finish it first
        cur = current_generation(ddir)
        cdir = generation_dir(ddir)
        info = read_dataset_info(cdir)
        images, captions = read_tables(cdir, info)
        chosen = _chosen(cdir, ddir, backbones, pretrained, src, images, captions)
        source = SimpleNamespace(images=src.images,
                                 captions=src.captions if len(captions) else
                                 src.captions.iloc[:0])
        plan = plan_rows(_with_new_columns(images, src.images), captions, info, source)
        fp = plan.fingerprint(str(info["fingerprint"]))
        result = AddResult(str(ddir), cur, plan.added, plan.removed, plan.added_captions,
                           plan.removed_captions, encoded={t.folder: 0 for t, _ in chosen},
                           from_embeddings=True)
        behind = [t for t, m in chosen if m.get("dataset_fingerprint") != fp]
        if not plan.changed and not behind:
            result.stale = _stale(cdir, ddir, fp)
            result.seconds = round(time.perf_counter() - t0, 3)
            return result
        rows = _new_rows(src, plan, len(images), len(captions))  # NaN: nothing written yet
        parts = [p.suffix for p in src.parts]
        imported = {**info["imported"], "folder": given if re_url(given)
                    else str(folder.resolve()), "parts": parts}
        note = {"from_embeddings": True, "parts": parts}
        chosen = [(t, {**m, "imported": {**m["imported"], "parts": parts}})
                  for t, m in chosen]

        def stage_one(staged: Path, t: Any, m: dict[str, Any]) -> int:
            write_backbone(cdir / t.folder, staged / t.folder, m, plan, fp, cur + 1,
                           NewRows(**rows, encoded=0, note=note), time.perf_counter())
            return 0

        staged = _stage_generation(ddir, cdir, cur + 1, chosen, plan,
                                   {**info, "imported": imported}, src.fingerprint, fp,
                                   result, stage_one, hook)
        commit(ddir, cur + 1, staged, hook)
        publish(ddir)
        result.generation = cur + 1
        result.stale = _stale(generation_dir(ddir), ddir, fp)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


# ----------------------------------------------------------------------------- vectors
def _blocks(parts: list[Part], role: str, positions: np.ndarray
            ) -> Iterator[tuple[Path, np.ndarray, int, np.ndarray]]:
    """(file, its rows, offset into ``positions``, float32 block) of the rows at
    ``positions`` (ascending, into the parts' concatenation), a part at a time."""
    starts = np.cumsum([0, *(p.rows for p in parts)])
    for i, part in enumerate(parts):
        lo, hi = np.searchsorted(positions, starts[i:i + 2])
        if lo == hi:
            continue
        path = part.images if role == "images" else part.captions
        assert path is not None  # scan_layout: text parts exist for every part or none
        array = np.load(path, mmap_mode="r")
        for at in range(lo, hi, _ROWS):
            local = positions[at:min(at + _ROWS, hi)] - starts[i]
            yield path, local, int(at), np.asarray(array[local], dtype=np.float32)
        del array


def _checked_zero_rows(parts: list[Part], role: str, positions: np.ndarray) -> np.ndarray:
    """Indices into ``positions`` whose vectors are all zero; NaN/inf is a DataError."""
    zero = []
    for path, local, at, block in _blocks(parts, role, positions):
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise DataError(f"{path} row {int(local[np.flatnonzero(~finite)[0]])} holds NaN "
                            "or infinite values; nothing was added")
        zero.append(at + np.flatnonzero(~block.any(axis=1)))
    return np.concatenate(zero) if zero else np.zeros(0, np.int64)


def _filler(parts: list[Part], role: str, positions: np.ndarray
            ) -> Callable[[np.ndarray], None]:
    """What writes the normalised vectors at ``positions`` into the new rows."""
    def fill(rows: np.ndarray) -> None:
        for _, _, at, block in _blocks(parts, role, positions):
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            rows[at:at + len(block)] = block / np.where(norms > 0, norms, 1)
    return fill


def _new_rows(src: SimpleNamespace, plan: RowPlan, n0: int, nc0: int) -> dict[str, Any]:
    """:class:`~clipindex.store.add.NewRows` keywords of the rows this add appends,
    every vector checked first (a NaN is an error before anything is written)."""
    pos = plan.source_rows
    zero = _checked_zero_rows(src.parts, "images", pos)
    skipped = [{"row_id": n0 + int(r), "file": str(plan.images["file"].iat[n0 + int(r)]),
                "reason": "zero vector in the imported embeddings"} for r in zero]
    with_text = plan.added_captions > 0
    if with_text and plan.added_captions != len(pos):
        raise DataError("the store's captions are not one per image; an add of embeddings "
                        "cannot extend them")
    invalid_c = nc0 + _checked_zero_rows(src.parts, "captions", pos) if with_text \
        else np.zeros(0, np.int64)
    return {"images": _filler(src.parts, "images", pos),
            "captions": _filler(src.parts, "captions", pos) if with_text
            else np.zeros((0, src.dim), np.float32),
            "skipped": skipped, "invalid_captions": invalid_c}
