"""What :meth:`~clipindex.store.BackboneIndex.search` and :func:`open_index` accept, checked
before any FAISS call: a query matrix of the store's dim with finite values, a backbone
named by a non-empty string. A wrong one is a one-line clipindex error naming the fix.
What it returns: :class:`Hits`."""

from __future__ import annotations

from typing import Any

import numpy as np

from clipindex.errors import IndexMismatchError, UserInputError

__all__ = ["Hits", "check_backbone_name", "query_matrix"]


def query_matrix(queries: Any, dim: int, name: str) -> np.ndarray:
    """``queries`` as a float32 ``(n, dim)`` matrix (one vector becomes one row)."""
    if isinstance(queries, (str, bytes)) or (
            isinstance(queries, (list, tuple)) and queries
            and all(isinstance(q, str) for q in queries)):
        raise UserInputError(
            "search takes query vectors, not text: encode it first with "
            "index.text_vectors([...]) (or use clipindex.search for text queries)")
    try:
        q = np.asarray(queries, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"query vectors must be numbers, got {type(queries).__name__} "
                             f"({exc})".splitlines()[0]) from None
    q = q[None, :] if q.ndim == 1 else q
    if q.ndim != 2 or q.shape[1] != dim:
        raise IndexMismatchError(
            f"query vectors have shape {q.shape} but {name} stores dim {dim}; "
            "encode queries with the same backbone (index.encoder() / text_vectors())")
    if not np.isfinite(q).all():
        bad = int((~np.isfinite(q)).any(axis=1).sum())
        raise UserInputError(f"{bad} query vector(s) hold NaN or infinite values")
    return q


def check_backbone_name(backbone: Any) -> str:
    """``backbone`` if it is a non-empty string (a folder or a backbone name)."""
    if not isinstance(backbone, str) or not backbone.strip():
        raise UserInputError(f"backbone must be a name such as 'tiny-vit' or 'ViT-B-32', "
                             f"got {backbone!r}")
    return backbone


class Hits(tuple):
    """``(scores, ids)`` of :meth:`BackboneIndex.search`, unpacking as a plain pair, plus
    what they are: ``exact`` (the scores are exact cosines computed from the stored
    vectors) and ``exhaustive`` (the ids are the exact top-k: a flat index; on an
    approximate index they are its top candidates, recall@10 in the manifest);
    ``rescored``: the scores were computed here from the stored vectors (float32 numpy
    dot products, :func:`~clipindex.index.topk.top_k`), not by FAISS, so a
    caller that rescores the same ids the same way would get the very same numbers."""

    exact: bool
    exhaustive: bool
    rescored: bool

    def __new__(cls, scores: np.ndarray, ids: np.ndarray, *, exact: bool,
                exhaustive: bool, rescored: bool = False) -> Hits:
        self = super().__new__(cls, (scores, ids))
        self.exact, self.exhaustive = bool(exact), bool(exhaustive)
        self.rescored = bool(rescored)
        return self

    @property
    def scores(self) -> np.ndarray:
        return self[0]

    @property
    def ids(self) -> np.ndarray:
        return self[1]
