"""Zero-shot classification from prompt text vectors (:class:`PromptClassifier`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from clipindex.classifiers.base import (
    LOGIT_SCALE,
    VectorClassifier,
    _matrix,
    normalise,
    softmax,
)
from clipindex.classifiers.templates import DEFAULT_TEMPLATE, fill_templates
from clipindex.errors import UserInputError
from clipindex.metrics import Vector

__all__ = ["PromptClassifier"]

TextEncoder = Callable[[list[str]], np.ndarray]


class PromptClassifier(VectorClassifier):
    """Zero-shot classification from prompt text vectors.

    ``w_c = normalise(mean over templates t of normalise(text(t(c))))``;
    ``proba = softmax(100 * X @ W.T)``. Nothing is learned from images: ``fit`` only
    builds ``W`` from the text side given to ``__init__``, either the class vectors
    themselves or a text encoder that ``fit`` calls once with every prompt.

    Parameters
    ----------
    classes : sequence of str, optional
        The class labels, in ``classes_`` order. Default: the sorted distinct labels of
        the ``y`` given to ``fit``. Required with ``class_vectors``.
    class_vectors : (len(classes), d) array, optional
        One text vector per class, row i for ``classes[i]`` (normalised by ``fit``).
        Give these, precomputed, when the model will be cloned (``cross_val_score``).
    encode_text : callable, optional
        ``encode_text(list[str]) -> (n, d)``: one text vector per prompt (a store's
        ``BackboneIndex.text_vectors`` caches them in the store). Used when
        ``class_vectors`` is not given.
    templates : sequence of str
        Templates with one ``{}`` each; default the study's ``("a photo of a {}",)``.
    class_names : mapping, optional
        Text to put in the templates for a class label (default: the label itself).
    prompts : mapping, optional
        Full prompt(s) for a class, overriding the templates for that class.

    Example
    -------
    >>> import numpy as np
    >>> enc = lambda texts: np.array([[1.0, 0.0] if "cat" in t else [0.0, 1.0] for t in texts])
    >>> clf = PromptClassifier(["cat", "dog"], encode_text=enc).fit()
    >>> clf.predict(np.array([[0.0, 1.0]])).tolist()
    ['dog']
    >>> PromptClassifier(["cat", "dog"], class_vectors=np.eye(2)).fit().prompts_ is None
    True
    """

    _fitted_attr = "class_vectors_"

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        *,
        class_vectors: np.ndarray | None = None,
        encode_text: TextEncoder | None = None,
        templates: Sequence[str] = (DEFAULT_TEMPLATE,),
        class_names: Mapping[str, str] | None = None,
        prompts: Mapping[str, str | Sequence[str]] | None = None,
    ) -> None:
        self.classes = classes
        self.class_vectors = class_vectors
        self.encode_text = encode_text
        self.templates = templates
        self.class_names = class_names
        self.prompts = prompts

    def _prompts_for(self, classes: Sequence[Any]) -> list[list[str]]:
        names = dict(self.class_names or {})
        filled = fill_templates(self.templates, [names.get(str(c), str(c)) for c in classes])
        for i, c in enumerate(classes):
            given = (self.prompts or {}).get(str(c))
            if given is not None:
                filled[i] = [given] if isinstance(given, str) else list(given)
                if not filled[i]:
                    raise UserInputError(f"the prompt list for class {c!r} is empty")
        return filled

    def _classes(self, y: Vector | None) -> np.ndarray:
        if self.classes is not None:
            classes = [str(c) for c in self.classes]
            if not classes or len(set(classes)) != len(classes):
                raise UserInputError(f"classes must be non-empty and distinct, got {classes}")
            out = np.asarray(classes, dtype=object)
            if y is not None:
                unknown = sorted({str(v) for v in np.asarray(y)} - set(classes))
                if unknown:
                    raise UserInputError(f"labels {unknown} are not among classes {classes}")
            return out
        if y is None:
            raise UserInputError("give PromptClassifier(classes=...) or the labels y to fit")
        return np.unique(np.asarray(y))

    def _encode(self, classes: np.ndarray) -> np.ndarray:
        if self.encode_text is None:
            raise UserInputError("give PromptClassifier(class_vectors=...) or encode_text=...")
        per_class = self._prompts_for(classes)
        flat = [p for ps in per_class for p in ps]
        vectors = normalise(_matrix(self.encode_text(flat), "text vectors"))
        if len(vectors) != len(flat):
            raise UserInputError(
                f"encode_text returned {len(vectors)} vectors for {len(flat)} prompts"
            )
        bounds = np.cumsum([0] + [len(ps) for ps in per_class])
        means = [vectors[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.prompts_: list[list[str]] | None = per_class
        return normalise(np.stack(means))

    def fit(self, X: np.ndarray | None = None, y: Vector | None = None  # noqa: N803
            ) -> PromptClassifier:
        """Build the class vectors ``W`` (from ``class_vectors`` or by encoding prompts).

        ``X`` (support image vectors) is optional and only checked against ``W``'s
        dimension; ``y`` gives the classes when ``classes`` is not set.
        """
        if self.class_vectors is not None and self.classes is None:
            raise UserInputError("class_vectors need classes=... (one label per row)")
        classes = self._classes(y)
        if self.class_vectors is not None:
            w = _matrix(self.class_vectors, "class vectors")
            if len(w) != len(classes):
                raise UserInputError(
                    f"class_vectors has {len(w)} rows for {len(classes)} classes")
            self.prompts_ = None
            w = normalise(w)
        else:
            w = self._encode(classes)
        if X is not None:
            _matrix(X, "image vectors", w.shape[1])
        self.classes_ = classes
        self.class_vectors_ = w
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """``softmax(100 * X @ W.T)``, columns in ``classes_`` order."""
        self._check_fitted()
        x = _matrix(X, "image vectors", self.class_vectors_.shape[1])
        return softmax(LOGIT_SCALE * (x.astype(np.float64) @ self.class_vectors_.T))

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """The class of the largest logit: ``argmax(predict_proba)`` without the softmax."""
        self._check_fitted()
        x = _matrix(X, "image vectors", self.class_vectors_.shape[1])
        return self.classes_[np.argmax(x.astype(np.float64) @ self.class_vectors_.T, axis=1)]
