"""The audit's per-image evidence, each computed from a store's stored vectors.

Every signal is a matrix ``(n rows, n classes)`` of class probabilities (columns in the
audit's class order) for the audited rows, and none of them lets a row's own label
speak for it:

- :func:`out_of_fold_probe`: a linear probe (:class:`~clipindex.classifiers.
  LinearProbeClassifier`) over the image vectors, fitted ``folds`` times, each time on
  the other folds (stratified, seeded); a row is scored only by the probe that never saw
  it. The same function over the mean of an image's caption vectors gives the captions'
  vote: the captions describe what is drawn, independently of the label.
- :func:`caption_prompt_vote`: the captions against the class prompts (text against
  text, no label used at all), the zero-shot form of the captions' vote.
- :func:`prototype_distance`: the cosine of each image to the nearest out-of-fold class
  prototype, for outliers (images far from every class).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from clipindex.classifiers import LinearProbeClassifier, PrototypeClassifier, normalise, softmax

__all__ = ["caption_means", "caption_prompt_vote", "fold_ids", "out_of_fold_probe",
           "prototype_distance"]

#: CLIP's logit scale, used for text-against-text cosines as for image-against-text.
LOGIT_SCALE = 100.0


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold number of every row (seeded): each class spread over the folds."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        out[rows] = np.arange(len(rows)) % folds
    return out


def _aligned(proba: np.ndarray, have: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """``proba``'s columns (``have``) put in ``classes`` order (absent classes: 0)."""
    out = np.zeros((len(proba), len(classes)), dtype=np.float64)
    where = {str(c): i for i, c in enumerate(classes)}
    for j, c in enumerate(have):
        out[:, where[str(c)]] = proba[:, j]
    return out


def out_of_fold_probe(x: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                      fold: np.ndarray, *, C: float = 1.0) -> np.ndarray:  # noqa: N803
    """Class probabilities of every row from the probe fitted on the other folds."""
    proba = np.zeros((len(x), len(classes)), dtype=np.float64)
    for f in np.unique(fold):
        test = fold == f
        probe = LinearProbeClassifier(C=C, class_weight="balanced").fit(x[~test], labels[~test])
        proba[test] = _aligned(probe.predict_proba(x[test]), list(probe.classes_), classes)
    return proba


def caption_means(captions: pd.DataFrame, vectors: np.ndarray, valid: np.ndarray,
                  rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The normalised mean caption vector of each image row, and whether it has one."""
    cap = captions[np.asarray(valid, bool)[captions["row_id"].to_numpy()]]
    owner = cap["image_row_id"].to_numpy()
    pos = {int(r): i for i, r in enumerate(rows)}
    keep = np.array([int(o) in pos for o in owner], dtype=bool)
    where = np.array([pos[int(o)] for o in owner[keep]], dtype=np.int64)
    sums = np.zeros((len(rows), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, where, np.asarray(vectors, np.float64)[cap["row_id"].to_numpy()[keep]])
    has = np.bincount(where, minlength=len(rows)) > 0
    return normalise(sums.astype(np.float32)), has


def caption_prompt_vote(means: np.ndarray, class_vectors: np.ndarray) -> np.ndarray:
    """Softmax of the captions' mean vector against each class's prompt vector."""
    return softmax(LOGIT_SCALE * means @ np.asarray(class_vectors, np.float32).T)


def prototype_distance(x: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                       fold: np.ndarray) -> np.ndarray:
    """The highest cosine of each row to an out-of-fold class prototype (image vectors):
    an image far from every class has a low one."""
    best = np.zeros(len(x), dtype=np.float64)
    for f in np.unique(fold):
        test = fold == f
        proto = PrototypeClassifier().fit(x[~test], labels[~test])
        best[test] = (x[test] @ np.asarray(proto.prototypes_, np.float32).T).max(axis=1)
    return best
