"""Updating a backbone's FAISS index for ``clipindex add``: the index file updated in
place of a rebuild (:func:`clipindex.index.update.updated_index`: new rows added,
tombstoned rows removed, recall@10 re-measured); re-trained (``auto``: re-chosen and
re-tuned) only when the index holds more than
:data:`~clipindex.store.generations.RETRAIN_FACTOR` times the vectors it was trained on
(``trained_n`` in its description).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.index.build import build_faiss
from clipindex.index.tuning import AutoSettings
from clipindex.index.update import trained_n, updated_index
from clipindex.store.generations import RETRAIN_FACTOR

__all__ = ["update_index"]

log = logging.getLogger("clipindex.store")


def _settings(meta: dict[str, Any]) -> AutoSettings:
    return AutoSettings(target_recall=float(meta.get("target_recall") or 0.95),
                        max_memory=meta.get("max_memory"))


def update_index(old_path: Path, new_path: Path, matrix: np.ndarray, valid: np.ndarray,
                 n_have: int, meta: dict[str, Any], name: str,
                 cross: Callable[[], dict[str, np.ndarray]], generation: int
                 ) -> dict[str, Any]:
    """Write ``new_path``: the index of ``old_path`` (rows ``0..n_have-1``) with the
    valid rows of ``matrix`` (the stored matrix, memory-mapped) from ``n_have`` on added
    and the invalid ones removed; returns its description for the manifest (``meta``:
    the manifest's ``index``; ``cross``: the other matrices' tuning queries, asked for
    only when ``auto`` re-tunes)."""
    desc = dict(meta.get(name) or {"kind": "flat"})
    kind, auto = str(desc.get("kind", "flat")), meta.get("kind") == "auto"
    live = np.flatnonzero(valid)
    base = trained_n(desc)
    self_name = "image_to_image" if name == "images" else "text_to_text"
    if (auto or kind != "flat") and base and len(live) > RETRAIN_FACTOR * base:
        log.info("%s: %d vectors > %.0fx the %d it was trained on: re-training",
                 new_path.parent.name, len(live), RETRAIN_FACTOR, base)
        out = build_faiss(np.asarray(matrix, dtype=np.float32), valid,
                          "auto" if auto else kind, new_path,
                          cross=cross() if auto else None, self_name=self_name,
                          settings=_settings(meta))
        out.update(trained_n=int(len(live)), trained_at_generation=generation)
        return out
    return updated_index(old_path, new_path, matrix, valid, n_have, desc, generation,
                         self_name=self_name)
