"""What every classifier shares: input checks, ``normalise``/``softmax`` and the base class.

Every classifier is a scikit-learn estimator (:class:`sklearn.base.ClassifierMixin` +
:class:`sklearn.base.BaseEstimator`), so ``get_params``/``set_params``, ``clone``,
``cross_val_score`` and ``Pipeline`` work on stored vectors:

- ``__init__`` only stores its arguments, each under its own name and unchanged, and
  every argument has a default (``clone(Cls())`` works);
- ``fit(X, y)`` validates, learns and returns ``self``; learned state ends in ``_``
  (``classes_``, ``prototypes_``, ...);
- ``predict_proba(X)`` columns follow ``classes_``; ``predict(X)`` returns
  ``classes_[argmax(predict_proba(X))]`` (a tie goes to the first class in order);
- using an unfitted model raises :class:`clipindex.errors.NotFittedError`, which is
  also scikit-learn's :class:`~sklearn.exceptions.NotFittedError`;
- the estimators fitted on plain vectors (prototype, k-NN, linear probe, MLP) validate
  ``X``/``y`` with scikit-learn's own ``validate_data`` and
  ``check_classification_targets`` (:meth:`VectorClassifier._fit_data`,
  :meth:`VectorClassifier._predict_data`), so they set ``n_features_in_`` and refuse what
  scikit-learn refuses (sparse or complex ``X``, no features, NaN/inf, a continuous ``y``)
  with scikit-learn's messages; a ``ValueError`` among those becomes a one-line
  :class:`~clipindex.errors.UserInputError` (still a ``ValueError``) naming the input.

Example
-------
>>> import numpy as np
>>> normalise(np.array([[3.0, 4.0]])).astype(np.float64).round(2).tolist()
[[0.6, 0.8]]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from clipindex import errors
from clipindex.checks import positive_int
from clipindex.errors import UserInputError

__all__ = ["EXPECTED_FAILED_CHECKS", "LOGIT_SCALE", "VectorClassifier", "normalise", "softmax"]

#: CLIP's logit scale: ``proba = softmax(LOGIT_SCALE * cosine)`` for prompts and prototypes.
LOGIT_SCALE = 100.0

#: The estimators fitted on plain vectors, each with the scikit-learn checks
#: (``sklearn.utils.estimator_checks``) it is known to fail and why (class name -> check
#: name -> reason; ``parametrize_with_checks(expected_failed_checks=...)`` in
#: tests/test_sklearn_contract.py). Empty: every check passes. The prompt and vote
#: classifiers are not listed: their ``X`` is not a plain vector matrix they learn from
#: (a prompt classifier learns nothing from ``X``; a vote's ``X`` is M probability blocks).
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {
    "CaptionKNNClassifier": {},
    "ImageKNNClassifier": {},
    "LinearProbeClassifier": {},
    "MLPClassifier": {},
    "PrototypeClassifier": {},
}


def normalise(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """L2-normalise along ``axis`` (float32); all-zero vectors stay zero.

    Example
    -------
    >>> normalise(np.array([[3.0, 4.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    a = np.asarray(a, dtype=np.float64)
    norm = np.linalg.norm(a, axis=axis, keepdims=True)
    return (a / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably in float64.

    Example
    -------
    >>> softmax(np.zeros((1, 2))).tolist()
    [[0.5, 0.5]]
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2 and z.shape[1] < 8 < z.shape[0]:
        # Few classes, many rows: numpy's row-wise reductions over a short C-ordered axis
        # cost ~10x their work (30 us for 950 x 5); a column-major copy reduces column by
        # column. Sums of <= 8 terms are sequential in both layouts: the same bits.
        z = np.array(z, order="F", copy=True)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return np.ascontiguousarray(z)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a finite, C-contiguous float32 ``(n, dim)`` array (or a one-line error)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise UserInputError(f"{name} must be a 2-D array (n, dim), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise UserInputError(
            f"{name} have dim {x.shape[1]} but the classifier was fitted on dim {dim}; "
            "use vectors of the same backbone"
        )
    if not np.isfinite(x).all():
        raise UserInputError(f"{name} contain NaN or infinite values")
    return np.ascontiguousarray(x)


def _labels(y: Any, n: int, name: str = "labels") -> np.ndarray:
    """``y`` as a 1-D array with one label per vector (at least one)."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise UserInputError(f"{name} must be 1-D with one entry per vector ({n}), got {y.shape}")
    if n == 0:
        raise UserInputError("cannot fit on zero support vectors; give at least one per class")
    return y


# scikit-learn's "Expected 2D array, got 1D array instead" prints the whole array; a user's
# 512-float vector would fill the one-line error.
_ARRAY_DUMP = re.compile(r"array=.*?(?=Reshape your data)", re.S)


def _input_error(exc: ValueError, what: str) -> UserInputError:
    """scikit-learn's input error as one line naming the input (``what``)."""
    message = " ".join(_ARRAY_DUMP.sub("", str(exc)).split())
    if "features, but" in message:
        message += " Use vectors of the same backbone."
    return UserInputError(f"{what}: {message}")


def _check_positive_int(value: Any, name: str) -> int:
    return positive_int(name, value)


def _check_choice(value: Any, choices: Sequence[Any], name: str) -> Any:
    if value not in choices:
        known = ", ".join(str(c) for c in choices)
        raise UserInputError(f"Unknown {name} {value!r}. Known: {known}")
    return value


def _plain_vectors(X: Any) -> bool:  # noqa: N803
    """A finite, C-contiguous float32 ``(n, d)`` ndarray with ``n, d >= 1``: exactly what
    scikit-learn's checks would return unchanged."""
    return (type(X) is np.ndarray and X.dtype == np.float32 and X.ndim == 2
            and X.shape[0] > 0 and X.shape[1] > 0 and X.flags.c_contiguous
            and bool(np.isfinite(X).all()))


def _plain_labels(y: Any, n: int) -> bool:
    """A 1-D ndarray of ``n`` strings, integers or booleans: class labels for certain."""
    return type(y) is np.ndarray and y.ndim == 1 and len(y) == n and y.dtype.kind in "USiub"


class VectorClassifier(ClassifierMixin, BaseEstimator):
    """Base of the classifiers: the fitted check and ``predict`` from ``predict_proba``.

    Subclasses set ``_fitted_attr`` (the attribute ``fit`` sets last) and implement
    ``fit(X, y)`` and ``predict_proba(X)``. ``score(X, y)`` is scikit-learn's accuracy.
    """

    _fitted_attr = "classes_"

    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, self._fitted_attr)
        except SklearnNotFittedError as exc:
            raise errors.NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit(...) before "
                "predict or predict_proba."
            ) from exc

    def _fit_data(self, X: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        """``(X, y)`` checked by scikit-learn for ``fit``: C-contiguous finite float32
        ``(n, d)`` with ``n, d >= 1``, ``y`` 1-D class labels; sets ``n_features_in_``.

        A ``ValueError`` becomes a :class:`UserInputError` naming ``what``; a
        ``TypeError`` (sparse ``X``, objects that are no numbers) stays scikit-learn's,
        as its contract asks.
        """
        if _plain_vectors(X) and _plain_labels(y, len(X)):
            # The stored-vector path (what classify runs): already what the checks below
            # would return, so only n_features_in_ is set (skip_check_array); the full
            # checks cost 0.2-0.5 ms a call, several times the classifier's own work.
            x, yy = validate_data(self, X, y, reset=True, skip_check_array=True)
            return x, yy
        try:
            x, yy = validate_data(self, X, y, reset=True, dtype=np.float32, order="C")
            check_classification_targets(yy)
        except ValueError as exc:
            raise _input_error(exc, what) from exc
        return x, yy

    def _predict_data(self, X: Any, what: str) -> np.ndarray:  # noqa: N803
        """``X`` checked for ``predict``: as in :meth:`_fit_data`, with the fitted
        ``n_features_in_`` columns (the classifier must be fitted)."""
        self._check_fitted()
        if (_plain_vectors(X) and X.shape[1] == getattr(self, "n_features_in_", None)
                and not hasattr(self, "feature_names_in_")):
            return X  # as validate_data would return it (see _fit_data)
        try:
            x: np.ndarray = validate_data(self, X, reset=False, dtype=np.float32, order="C")
        except ValueError as exc:
            raise _input_error(exc, what) from exc
        return x

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Probabilities ``(n, len(classes_))``, columns in ``classes_`` order."""
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Labels ``classes_[argmax(predict_proba(X))]`` (ties: first class in order)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]  # type: ignore[attr-defined]
