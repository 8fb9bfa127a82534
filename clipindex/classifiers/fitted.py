"""A classifier fitted once on opened stores, then asked about new query vectors.

What a long-running process (``clipindex serve``) needs: :func:`classify_images`
opens the store and fits the method on every call; :func:`fit_classifier` fits it
once on :class:`~clipindex.store.BackboneIndex` objects already open, and
:meth:`FittedClassifier.predict` then turns each backbone's query vectors into the
same labels, probabilities and abstentions that :func:`classify_images` gives.

Example
-------
>>> from clipindex.store import open_index
>>> bis = [open_index("indexes/demo", "tiny-vit")]              # doctest: +SKIP
>>> clf = fit_classifier(bis, "prototype", reject_below=0.5)    # doctest: +SKIP
>>> clf.predict([bis[0].image_vectors[:2]])["predicted"].tolist()  # doctest: +SKIP
['cat', 'dog']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clipindex.classifiers.base import normalise
from clipindex.classifiers.predictions import prediction_table
from clipindex.classifiers.runner import (
    IMAGE_OPTIONS,
    Predictor,
    _combine,
    _predictors,
    _prepare_opened,
    _Request,
    _Run,
)
from clipindex.errors import UserInputError

__all__ = ["FittedClassifier", "fit_classifier"]


@dataclass(frozen=True)
class FittedClassifier:
    """``method`` fitted on the support rows of ``backbones`` (see :func:`fit_classifier`).

    Attributes
    ----------
    method, backbones, ensemble, classes
        What was fitted, on which backbones (in order), how they are combined, and the
        class order of every probability row.
    """

    method: str
    backbones: tuple[str, ...]
    ensemble: str | None
    classes: tuple[str, ...]
    _run: _Run = field(repr=False)
    _predictors: tuple[Predictor, ...] = field(repr=False)

    def predict(self, vectors: Sequence[np.ndarray], files: Sequence[str] | None = None
                ) -> pd.DataFrame:
        """Predict query vectors given per backbone (``vectors[i]``: ``(n, dim_i)``).

        Returns the table of :func:`classify_images`: ``row_id`` (-1), ``file``,
        ``predicted``, ``p_<class>`` and ``uncertain``, one row per query.
        """
        if len(vectors) != len(self._predictors):
            raise UserInputError(
                f"give one vector matrix per backbone ({len(self._predictors)}), "
                f"got {len(vectors)}")
        mats = [normalise(np.atleast_2d(np.asarray(v, dtype=np.float32))) for v in vectors]
        n = len(mats[0])
        if any(len(m) != n for m in mats):
            raise UserInputError("every backbone needs the same number of query vectors")
        probas = [p(m, None) for p, m in zip(self._predictors, mats, strict=True)]
        pred, proba, uncertain = _combine(self._run, probas)
        names = list(files) if files is not None else [""] * n
        return prediction_table(np.full(n, -1, dtype=np.int64), names, None, pred, proba,
                                list(self.classes), uncertain=uncertain)


def fit_classifier(indexes: Sequence[Any], method: str, **options: Any) -> FittedClassifier:
    """Fit ``method`` once on opened stores (``BackboneIndex`` objects of one dataset).

    Takes the keyword options of :func:`classify_images` (``ensemble``, ``shots``,
    ``k``, ``seed``, ``classes``, ``prompt``, ``templates``, ``reject_below``,
    ``weights``, ``class_weight``); fitting is what :func:`classify_images` does before
    it encodes its files, so :meth:`FittedClassifier.predict` of the same files'
    vectors gives the same table.
    """
    bis = list(indexes)
    if not bis:
        raise UserInputError("give at least one backbone")
    names = [bi.name for bi in bis]
    if len(set(names)) != len(names):
        raise UserInputError(f"a backbone is listed twice: {names}")
    unknown = set(options) - set(IMAGE_OPTIONS)
    if unknown:
        raise UserInputError(
            f"unknown option(s) {sorted(unknown)}; known: {', '.join(IMAGE_OPTIONS)}")
    run = _prepare_opened(bis, method, _Request(**options))
    return FittedClassifier(method=method, backbones=tuple(names),
                            ensemble=run.req.ensemble if len(bis) > 1 else None,
                            classes=tuple(run.classes), _run=run,
                            _predictors=tuple(_predictors(run)))
