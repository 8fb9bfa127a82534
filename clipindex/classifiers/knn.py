"""k nearest support vectors vote: :class:`CaptionKNNClassifier`, :class:`ImageKNNClassifier`."""

from __future__ import annotations

import numpy as np

from clipindex.classifiers.base import (
    VectorClassifier,
    _check_choice,
    _check_positive_int,
)
from clipindex.errors import UserInputError
from clipindex.index.kinds import build_index, search_index
from clipindex.metrics import Vector

__all__ = ["KNN_WEIGHTS", "CaptionKNNClassifier", "ImageKNNClassifier"]

KNN_WEIGHTS = ("uniform", "similarity")


class _KNNVoter(VectorClassifier):
    """k nearest support vectors vote; rows owned by the query are excluded.

    Votes: ``uniform`` gives each neighbour 1; ``similarity`` gives it
    ``max(cosine, 0)`` (if all of a query's weights are 0 its votes fall back to
    uniform). ``proba[c] = votes[c] / sum(votes)``; a query with no neighbour left
    gets a uniform row.
    """

    _fitted_attr = "index_"

    def __init__(self, *, k: int = 10, weights: str = "uniform") -> None:
        self.k = k
        self.weights = weights

    def _fit(self, vectors: np.ndarray, labels: Vector, owners: Vector | None) -> None:
        k = _check_positive_int(self.k, "k")
        _check_choice(self.weights, KNN_WEIGHTS, "weights")
        v, y = self._fit_data(vectors, labels, "support vectors")
        self.classes_, self.label_index_ = np.unique(y, return_inverse=True)
        own = np.arange(len(v)) if owners is None else np.asarray(owners, dtype=np.int64)
        if own.shape != (len(v),):
            raise UserInputError(f"owner rows must have one entry per vector ({len(v)})")
        self.owners_ = own
        # A query can own at most this many support rows; fetch that many extra.
        self.max_owned_ = int(np.unique(own, return_counts=True)[1].max())
        self.k_ = k
        self.index_ = build_index(v)

    def predict_proba(self, X: np.ndarray, *,  # noqa: N803
                      query_rows: Vector | None = None) -> np.ndarray:
        """Normalised (weighted) votes of the ``k`` nearest support rows.

        ``query_rows`` (keyword) are the queries' own row ids: support rows owned by the
        same row id (see ``fit``) never vote for it. Leave ``None`` for new images.
        """
        x = self._predict_data(X, "query vectors")
        extra = 0 if query_rows is None else self.max_owned_
        fetch = min(self.k_ + extra, self.index_.ntotal)
        scores, ids = search_index(self.index_, x, fetch)
        valid = ids >= 0
        if query_rows is not None:
            q = np.asarray(query_rows, dtype=np.int64).reshape(-1, 1)
            if len(q) != len(x):
                raise UserInputError(f"query_rows must have one id per query ({len(x)})")
            valid &= self.owners_[np.where(valid, ids, 0)] != q
        return self._vote(scores, ids, valid)

    def predict(self, X: np.ndarray, *,  # noqa: N803
                query_rows: Vector | None = None) -> np.ndarray:
        """Labels ``classes_[argmax(predict_proba(X, query_rows=...))]``."""
        proba = self.predict_proba(X, query_rows=query_rows)
        return self.classes_[np.argmax(proba, axis=1)]

    def _vote(self, scores: np.ndarray, ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
        # Keep the first k valid neighbours of every query (search order = best first).
        keep = valid & (np.cumsum(valid, axis=1) <= self.k_)
        labels = self.label_index_[np.where(keep, ids, 0)]
        w = np.where(keep, 1.0, 0.0)
        if self.weights == "similarity":
            sim = np.where(keep, np.maximum(scores.astype(np.float64), 0.0), 0.0)
            w = np.where(sim.sum(axis=1, keepdims=True) > 0, sim, w)
        votes = np.zeros((len(ids), len(self.classes_)))
        np.add.at(votes, (np.repeat(np.arange(len(ids)), ids.shape[1]), labels.ravel()), w.ravel())
        total = votes.sum(axis=1, keepdims=True)
        return np.where(total > 0, votes / np.where(total > 0, total, 1), 1 / len(self.classes_))


class CaptionKNNClassifier(_KNNVoter):
    """The ``k`` nearest support captions vote for their image's class.

    ``fit(X, y, *, image_rows=None)``: ``X`` are the support *caption* vectors, ``y``
    each caption's image class and ``image_rows[i]`` caption i's image row id.
    ``predict_proba(X, *, query_rows=None)`` takes *image* vectors; with
    ``query_rows`` (the query images' row ids) a query image's own captions never count
    (it fetches ``k + max captions per image`` neighbours, filters, keeps the first ``k``).

    Parameters
    ----------
    k : int
        Neighbours that vote (> 0).
    weights : {"uniform", "similarity"}
        ``similarity`` weighs a vote by ``max(cosine, 0)``.

    Example
    -------
    >>> import numpy as np
    >>> caps = np.eye(3, dtype="float32")
    >>> clf = CaptionKNNClassifier(k=1).fit(caps, ["a", "b", "b"], image_rows=[0, 1, 1])
    >>> clf.predict(caps[:1], query_rows=[0]).tolist()   # its own caption is skipped
    ['b']
    """

    def fit(self, X: np.ndarray, y: Vector, *,  # noqa: N803
            image_rows: Vector | None = None) -> CaptionKNNClassifier:
        """Index the support captions ``X`` with labels ``y``; ``image_rows[i]`` is
        caption i's image row id (default: every caption its own owner)."""
        self._fit(X, y, image_rows)
        return self


class ImageKNNClassifier(_KNNVoter):
    """The ``k`` nearest support images vote for their class.

    ``fit(X, y, *, row_ids=None)`` indexes support image vectors; with ``row_ids``
    given to ``fit`` and ``query_rows`` (keyword) to ``predict_proba``/``predict``, a
    query never votes for itself (useful when queries are also support rows).

    Example
    -------
    >>> import numpy as np
    >>> clf = ImageKNNClassifier(k=1).fit(np.eye(2), ["a", "b"])
    >>> clf.predict(np.array([[0.1, 0.9]])).tolist()
    ['b']
    """

    def fit(self, X: np.ndarray, y: Vector, *,  # noqa: N803
            row_ids: Vector | None = None) -> ImageKNNClassifier:
        """Index the support image vectors ``X`` with their labels ``y`` (and row ids)."""
        self._fit(X, y, row_ids)
        return self
