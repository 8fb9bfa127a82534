"""Re-indexing: a finished store asked for another index kind (or float32 -> float16)
is rewritten from its stored vectors, nothing encoded.

The new files are made in ``<backbone>/.reindex/`` while the old store stays whole and
openable; they are swapped in before the new manifest, which is written last.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.errors import UserInputError
from clipindex.index.tuning import AutoSettings
from clipindex.store.generations import tombstones
from clipindex.store.manifest import (
    MANIFEST,
    OUTPUT_FILES,
    Target,
    file_records,
    read_json,
    read_manifest,
    same_source,
    sha256_file,
    write_manifest,
)
from clipindex.store.outputs import write_outputs

__all__ = ["REINDEX_DIR", "reindex", "reusable"]

log = logging.getLogger("clipindex.store")

REINDEX_DIR = ".reindex"


def reusable(bdir: Path, target: Target, fingerprint: str, dtype: str
             ) -> dict[str, Any] | None:
    """The finished manifest of ``bdir`` when its stored vectors can serve a build that
    asks only for another ``dtype`` or index kind; None when encoding is needed.

    The vectors must be of the same dataset and weights and pass their sha256. A
    float16 store cannot become float32 without re-encoding (the dropped bits are gone).
    """
    try:
        m = read_manifest(bdir)
    except UserInputError:  # missing, unreadable or damaged: encode again
        return None
    if not same_source(m, target, fingerprint):
        return None
    if m.get("dtype") == "float16" and dtype == "float32":
        log.info("%s: stored vectors are float16; re-encoding for float32", target.name)
        return None
    files = m.get("files") or {}
    for name in ("images.npy", "captions.npy"):
        path = bdir / name
        if not path.is_file() or sha256_file(path) != (files.get(name) or {}).get("sha256"):
            return None
    return m


def _stage_matrices(bdir: Path, tmp: Path, old: dict[str, Any], dtype: str
                    ) -> list[np.ndarray | None]:
    """Link (same dtype: the same values) or load each stored matrix for the rewrite."""
    matrices: list[np.ndarray | None] = []
    for name in ("images.npy", "captions.npy"):
        if old.get("dtype") == dtype:  # same values: link, do not rewrite them
            try:
                os.link(bdir / name, tmp / name)
            except OSError:
                shutil.copyfile(bdir / name, tmp / name)
            matrices.append(None)
        else:
            matrices.append(np.load(bdir / name))
    return matrices


def reindex(bdir: Path, old: dict[str, Any], *, dtype: str, index_kind: str,
            settings: AutoSettings | None = None) -> dict[str, Any]:
    """Rewrite a finished store in another dtype / index kind from its stored vectors.

    The new files are made in ``bdir/.reindex`` while the old store stays whole and
    openable; only then is the old manifest removed, the files moved in and the new
    manifest written (last, atomically). Nothing is encoded.
    """
    from clipindex import __version__

    t0 = time.perf_counter()
    tmp = bdir / REINDEX_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    matrices = _stage_matrices(bdir, tmp, old, dtype)
    valid = np.ones(int(old["n_images"]), dtype=bool)
    valid[[int(s["row_id"]) for s in old.get("skipped", [])]] = False
    dead_images, dead_captions = tombstones(read_json(bdir.parent / "dataset.json"))
    valid[dead_images] = False  # rows `clipindex add` removed
    cap_valid = np.ones(int(old["n_captions"]), dtype=bool)
    cap_valid[dead_captions] = False
    images, captions = matrices
    index_desc = write_outputs(tmp, images, captions, valid, dtype, index_kind, settings,
                               caption_valid=cap_valid)
    manifest = {
        **old,
        "clipindex_version": __version__,
        "dtype": dtype,
        "index": index_desc,
        "files": file_records(tmp),
        "reindexed": {
            "from_dtype": old.get("dtype"),
            "from_index_kind": (old.get("index") or {}).get("kind"),
            "seconds": round(time.perf_counter() - t0, 4),
        },
    }
    (bdir / MANIFEST).unlink()
    for name in OUTPUT_FILES:
        os.replace(tmp / name, bdir / name)
    manifest = write_manifest(bdir, manifest)
    shutil.rmtree(tmp, ignore_errors=True)
    return manifest
