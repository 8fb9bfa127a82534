"""The study's few-shot caption prototypes (:class:`PrototypeClassifier`)."""

from __future__ import annotations

import numpy as np

from clipindex.classifiers.base import (
    LOGIT_SCALE,
    VectorClassifier,
    normalise,
    softmax,
)
from clipindex.metrics import Vector

__all__ = ["PrototypeClassifier"]


class PrototypeClassifier(VectorClassifier):
    """The study's few-shot caption prototypes.

    ``w_c = normalise(mean of the normalised vectors X of class c)``;
    ``proba = softmax(100 * X @ W.T)``.

    The ``X`` of ``fit`` is not that of ``predict``: the study fits on the support
    images' *caption* vectors, each labelled (``y``) with its image's class, and
    predicts *image* vectors (one CLIP space, so both are comparable). Fitted on image
    vectors instead, it is a nearest-class-mean classifier on images.

    Example
    -------
    >>> import numpy as np
    >>> clf = PrototypeClassifier().fit(np.eye(2), ["a", "b"])
    >>> clf.prototypes_.tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """

    _fitted_attr = "prototypes_"

    def __init__(self) -> None:
        pass

    def fit(self, X: np.ndarray, y: Vector) -> PrototypeClassifier:  # noqa: N803
        """Average the normalised vectors ``X`` (captions) of each class; normalise again."""
        x, labels = self._fit_data(X, y, "caption vectors")
        v = normalise(x)
        self.classes_, codes = np.unique(labels, return_inverse=True)
        counts = np.bincount(codes.ravel(), minlength=len(self.classes_))
        # Each class's rows as one slice of a stable sort: the same rows in the same
        # order as v[labels == c], without comparing every label to every class.
        grouped = v[np.argsort(codes.ravel(), kind="stable")]
        ends = np.cumsum(counts)
        self.prototypes_ = normalise(
            np.stack([grouped[e - n:e].mean(axis=0) for n, e in zip(counts, ends, strict=True)]))
        self.n_captions_ = counts
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """``softmax(100 * X @ W.T)``, columns in ``classes_`` order."""
        x = self._predict_data(X, "image vectors")
        return softmax(LOGIT_SCALE * (x.astype(np.float64) @ self.prototypes_.T))

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """The class of the nearest prototype: ``argmax(predict_proba)`` without the
        softmax."""
        x = self._predict_data(X, "image vectors")
        return self.classes_[np.argmax(x.astype(np.float64) @ self.prototypes_.T, axis=1)]
