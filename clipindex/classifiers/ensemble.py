"""Ensembles across backbones and abstention, on ``predict_proba`` outputs.

Functions take a list of per-model probability matrices (columns in ``classes``
order): :func:`majority_vote`, :func:`vote_shares`, :func:`soft_vote`, and the
abstention mask :func:`reject_below`. The estimators :class:`MajorityVoteClassifier`
and :class:`SoftVoteClassifier` are the same votes in scikit-learn's shape: their ``X``
is the models' probabilities side by side, ``np.hstack([p_1, ..., p_M])``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from clipindex.classifiers.base import VectorClassifier, _labels, _matrix
from clipindex.errors import UserInputError
from clipindex.metrics import Vector

__all__ = [
    "ENSEMBLES",
    "majority_vote",
    "soft_vote",
    "vote_shares",
    "reject_below",
    "MajorityVoteClassifier",
    "SoftVoteClassifier",
]


def _stack(probas: Sequence[np.ndarray], classes: Vector) -> np.ndarray:
    if len(probas) == 0:
        raise UserInputError("an ensemble needs the probabilities of at least one model")
    shapes = [np.shape(a) for a in probas]
    if len(set(shapes)) != 1 or len(shapes[0]) != 2 or shapes[0][1] != len(classes):
        raise UserInputError(
            f"every probability matrix must be (n, {len(classes)}) with the same n; "
            f"got {shapes}"
        )
    return np.stack([np.asarray(a, dtype=np.float64) for a in probas])


def majority_vote(probas: Sequence[np.ndarray], classes: Vector) -> np.ndarray:
    """Majority vote across models; returns one label per row.

    Each model votes for its top class (``argmax`` of its row; a tie inside one model
    goes to the first class in ``classes`` order). The class with the most votes wins.
    Tie rule, exactly: among the classes sharing the most votes, the one with the
    largest probability summed over all models wins; if that is tied too, the first
    of them in ``classes`` order.

    Parameters
    ----------
    probas : list of (n, C) arrays
        One ``predict_proba`` output per model, columns in ``classes`` order.
    classes : sequence
        The class labels of the columns.

    Example
    -------
    >>> import numpy as np
    >>> a, b = np.array([[0.6, 0.4]]), np.array([[0.1, 0.9]])
    >>> majority_vote([a, b], ["cat", "dog"]).tolist()   # 1-1 tie; dog sums 1.3
    ['dog']
    """
    p = _stack(probas, classes)
    votes = np.zeros(p.shape[1:])
    np.add.at(votes, (np.arange(p.shape[1])[None, :].repeat(len(p), 0), p.argmax(axis=2)), 1.0)
    summed = p.sum(axis=0)
    tied = votes == votes.max(axis=1, keepdims=True)
    best = np.where(tied, summed, -np.inf).argmax(axis=1)  # argmax: first on equal sums
    return np.asarray(classes, dtype=object)[best]


def vote_shares(probas: Sequence[np.ndarray], classes: Vector) -> np.ndarray:
    """Share of models whose top class is each class, ``(n, C)`` (rows sum to 1).

    Example
    -------
    >>> import numpy as np
    >>> vote_shares([np.array([[0.6, 0.4]]), np.array([[0.1, 0.9]])], ["a", "b"]).tolist()
    [[0.5, 0.5]]
    """
    p = _stack(probas, classes)
    onehot = np.eye(len(classes))[p.argmax(axis=2)]
    return onehot.mean(axis=0)


def soft_vote(probas: Sequence[np.ndarray], classes: Vector | None = None) -> np.ndarray:
    """Soft vote ("late fusion"): the mean probability over models, ``(n, C)``.

    Example
    -------
    >>> import numpy as np
    >>> soft_vote([np.array([[0.6, 0.4]]), np.array([[0.2, 0.8]])]).round(2).tolist()
    [[0.4, 0.6]]
    """
    cols = np.shape(probas[0])[1] if len(probas) else 0
    p = _stack(probas, classes if classes is not None else range(cols))
    return p.mean(axis=0)


def reject_below(proba: np.ndarray, threshold: float) -> np.ndarray:
    """Abstention mask: True ("uncertain") where a row's top probability is < ``threshold``.

    Example
    -------
    >>> import numpy as np
    >>> reject_below(np.array([[0.95, 0.05], [0.6, 0.4]]), 0.9).tolist()
    [False, True]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
            or not 0.0 <= float(threshold) <= 1.0:
        raise UserInputError(f"the rejection threshold must be in [0, 1], got {threshold!r}")
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise UserInputError(f"probabilities must be a 2-D array (n, C), got shape {p.shape}")
    return p.max(axis=1) < float(threshold)


def _majority(probas: list[np.ndarray], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote; its probability columns are the backbones' vote shares."""
    return majority_vote(probas, classes).astype(str), vote_shares(probas, classes)


def _soft(probas: list[np.ndarray], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Soft vote: the mean probability, and its top class (ties: first in order)."""
    p = soft_vote(probas, classes)
    return np.asarray(classes)[p.argmax(axis=1)], p


#: How ``classify(ensemble=...)`` and the bench combine backbones: (probas, classes) ->
#: (predicted labels, probability columns).
ENSEMBLES: dict[str, Callable[[list[np.ndarray], list[str]], tuple[np.ndarray, np.ndarray]]] = {
    "majority": _majority,
    "soft": _soft,
}


# --------------------------------------------------------------------------- estimators
class _Vote(VectorClassifier):
    """A vote over M models' probabilities given side by side as ``X`` (n, M * C).

    ``fit(X, y)`` learns nothing but ``classes_`` (``classes``, else the sorted
    distinct ``y``) and how many models ``X`` holds (``n_models_``); block ``m`` of
    ``X``'s columns, ``X[:, m*C:(m+1)*C]``, is model m's ``predict_proba``.
    """

    _fitted_attr = "n_models_"

    def __init__(self, classes: Sequence[str] | None = None) -> None:
        self.classes = classes

    def fit(self, X: np.ndarray, y: Vector | None = None) -> _Vote:  # noqa: N803
        """Check ``X``'s shape against the classes (from ``classes`` or ``y``)."""
        x = _matrix(X, "probabilities")
        if self.classes is not None:
            classes = np.asarray(list(self.classes), dtype=object)
        elif y is not None:
            classes = np.unique(_labels(y, len(x)))
        else:
            raise UserInputError(f"give {type(self).__name__}(classes=...) or the labels y")
        if len(classes) == 0 or x.shape[1] == 0 or x.shape[1] % len(classes):
            raise UserInputError(f"X must hold (n, M * {len(classes)}) probabilities, "
                                 f"got {x.shape[1]} columns")
        self.classes_ = classes
        self.n_models_ = x.shape[1] // len(classes)
        return self

    def _split(self, X: np.ndarray) -> list[np.ndarray]:  # noqa: N803
        self._check_fitted()
        c = len(self.classes_)
        x = _matrix(X, "probabilities", c * self.n_models_).astype(np.float64)
        return [x[:, m * c:(m + 1) * c] for m in range(self.n_models_)]


class MajorityVoteClassifier(_Vote):
    """Majority vote of M models (:func:`majority_vote`, its tie rule included).

    ``predict_proba`` gives the vote shares (:func:`vote_shares`).

    Example
    -------
    >>> import numpy as np
    >>> X = np.hstack([np.array([[0.6, 0.4]]), np.array([[0.1, 0.9]])])
    >>> clf = MajorityVoteClassifier(["cat", "dog"]).fit(X)   # 1-1 tie; dog sums 1.3
    >>> clf.n_models_, clf.predict(X).tolist(), clf.predict_proba(X).tolist()
    (2, ['dog'], [[0.5, 0.5]])
    """

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """The share of models whose top class is each class, ``(n, C)``."""
        return vote_shares(self._split(X), self.classes_)

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """The majority class (ties: summed probability, then ``classes_`` order)."""
        return majority_vote(self._split(X), self.classes_)


class SoftVoteClassifier(_Vote):
    """Soft vote of M models: the mean probability (:func:`soft_vote`).

    Example
    -------
    >>> import numpy as np
    >>> X = np.hstack([np.array([[0.6, 0.4]]), np.array([[0.2, 0.8]])])
    >>> SoftVoteClassifier(["a", "b"]).fit(X).predict_proba(X).round(2).tolist()
    [[0.4, 0.6]]
    """

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """The mean of the models' probabilities, ``(n, C)``."""
        return soft_vote(self._split(X), self.classes_)
