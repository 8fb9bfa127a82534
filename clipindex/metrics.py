"""Classification and retrieval metrics: pure functions with their exact definitions.

Classification (``y_true``, ``y_pred`` label arrays; ``classes`` fixes the order of
per-class outputs and of the confusion matrix):

- accuracy = mean over rows of [y_pred == y_true].
- per-class precision_c = TP_c / (TP_c + FP_c), recall_c = TP_c / (TP_c + FN_c),
  F1_c = 2 P R / (P + R); any 0/0 is 0 (scikit-learn's ``zero_division=0``).
- balanced accuracy = mean of recall_c over the classes that occur in ``y_true``
  (scikit-learn's ``balanced_accuracy_score``).
- macro-F1 = mean of F1_c over ``classes`` (every listed class counts, also one
  with no rows: scikit-learn's ``f1_score(labels=classes, average="macro")``).
- confusion[i, j] = number of rows with true class ``classes[i]`` predicted as
  ``classes[j]`` (rows = true, columns = predicted).
- with an abstention mask ``uncertain``: coverage = share of rows not uncertain;
  accuracy_covered = accuracy over the rows not uncertain (NaN when none is covered).

Retrieval with several captions per image (CLIP_benchmark's convention): ranking is by
descending score; equal scores keep the lower id first.

- text→image: each caption is a query; it is a hit at K if its own image is among the
  K highest-scoring images. Recall@K = mean over captions.
- image→text: each image is a query; it is a hit at K if ANY of its captions is among
  the K highest-scoring captions. Recall@K = mean over images that have at least one
  caption (an image without captions cannot be a query).

Example
-------
>>> from clipindex.metrics import accuracy, confusion_matrix
>>> accuracy(["a", "b", "b"], ["a", "b", "a"])
0.6666666666666666
>>> confusion_matrix(["a", "b", "b"], ["a", "b", "a"], ["a", "b"]).tolist()
[[1, 0], [1, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clipindex.checks import positive_int
from clipindex.errors import UserInputError

# A 1-D run of labels, row ids or flags: a list, tuple or numpy array.
Vector = Sequence[Any] | np.ndarray

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "per_class",
    "confusion_matrix",
    "coverage",
    "accuracy_covered",
    "classification_metrics",
    "recall_at_k_text_to_image",
    "recall_at_k_image_to_text",
    "retrieval_recall",
]


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if not (t.dtype.kind == "U" and p.dtype.kind == "U"):  # strings compare as they are
        t, p = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    if t.ndim != 1 or t.shape != p.shape:
        raise UserInputError(
            f"y_true and y_pred must be 1-D and equally long: {t.shape} vs {p.shape}"
        )
    return t, p


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)  # 0/0 -> 0


def accuracy(y_true: Vector, y_pred: Vector) -> float:
    """Mean over rows of ``y_pred == y_true`` (NaN for no rows).

    Example
    -------
    >>> accuracy([1, 2], [1, 1])
    0.5
    """
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p)) if len(t) else float("nan")


def confusion_matrix(
    y_true: Vector, y_pred: Vector, classes: Vector
) -> np.ndarray:
    """``C[i, j]`` = rows of true ``classes[i]`` predicted ``classes[j]`` (int64).

    Labels outside ``classes`` are not counted.

    Example
    -------
    >>> confusion_matrix(["x", "y"], ["y", "y"], ["x", "y"]).tolist()
    [[0, 1], [0, 1]]
    """
    t, p = _pair(y_true, y_pred)
    return _confusion(_codes(t, classes), _codes(p, classes), len(classes))


def _confusion(ti: np.ndarray, pi: np.ndarray, n: int) -> np.ndarray:
    """The confusion matrix of coded labels (-1: outside the classes, not counted)."""
    ok = (ti >= 0) & (pi >= 0)
    return np.bincount(ti[ok] * n + pi[ok], minlength=n * n).reshape(n, n).astype(np.int64)


def _balanced_from_codes(ti: np.ndarray, cm: np.ndarray) -> float:
    """:func:`balanced_accuracy` over listed classes from the true labels' codes and the
    confusion matrix: recall_c = rows of c predicted c / rows of c, over present c."""
    support = np.bincount(ti[ti >= 0], minlength=len(cm))
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def _codes(values: np.ndarray, classes: Vector) -> np.ndarray:
    """The position of each value in ``classes`` (-1 when absent), vectorised for
    string labels (a search in the sorted classes) and by a dict otherwise."""
    listed = list(classes)
    if values.dtype.kind in "US" and all(isinstance(c, str) for c in listed) and listed:
        cls = np.asarray(listed)
        order = np.argsort(cls, kind="stable")
        ranked = cls[order]
        at = np.minimum(np.searchsorted(ranked, values), len(ranked) - 1)
        return np.where(ranked[at] == values, order[at], -1).astype(np.int64)
    pos = {c: i for i, c in enumerate(listed)}
    return np.array([pos.get(v, -1) for v in values], dtype=np.int64)


def per_class(
    y_true: Vector, y_pred: Vector, classes: Vector
) -> dict[Any, dict[str, float]]:
    """``{c: {precision, recall, f1, support}}`` with 0/0 read as 0.

    Example
    -------
    >>> per_class(["a", "b"], ["a", "a"], ["a", "b"])["a"]
    {'precision': 0.5, 'recall': 1.0, 'f1': 0.6666666666666666, 'support': 1}
    """
    return _per_class(confusion_matrix(y_true, y_pred, classes), classes)


def _per_class(cm: np.ndarray, classes: Vector) -> dict[Any, dict[str, float]]:
    tp = np.diag(cm).astype(np.float64)
    precision = _ratio(tp, cm.sum(axis=0))
    recall = _ratio(tp, cm.sum(axis=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {
        c: {"precision": float(precision[i]), "recall": float(recall[i]),
            "f1": float(f1[i]), "support": int(cm[i].sum())}
        for i, c in enumerate(classes)
    }


def balanced_accuracy(
    y_true: Vector, y_pred: Vector, classes: Vector | None = None
) -> float:
    """Mean recall over the classes present in ``y_true``.

    Example
    -------
    >>> balanced_accuracy(["a", "a", "a", "b"], ["a", "a", "a", "a"])
    0.5
    """
    t, p = _pair(y_true, y_pred)
    present = [c for c in (classes if classes is not None else np.unique(t)) if np.any(t == c)]
    if not present:
        return float("nan")
    # recall_c = rows of c predicted c / rows of c (whatever the other predictions are)
    return float(np.mean([np.mean(p[t == c] == c) for c in present]))


def macro_f1(y_true: Vector, y_pred: Vector, classes: Vector) -> float:
    """Mean F1 over ``classes`` (every listed class counts).

    Example
    -------
    >>> macro_f1(["a", "b"], ["a", "a"], ["a", "b"])
    0.3333333333333333
    """
    pc = per_class(y_true, y_pred, classes)
    return float(np.mean([pc[c]["f1"] for c in classes])) if len(classes) else float("nan")


def coverage(uncertain: Vector) -> float:
    """Share of rows that are not marked uncertain (1.0 for no rows).

    Example
    -------
    >>> coverage([True, False, False, False])
    0.75
    """
    u = np.asarray(uncertain, dtype=bool)
    return float(1.0 - u.mean()) if len(u) else 1.0


def accuracy_covered(
    y_true: Vector, y_pred: Vector, uncertain: Vector
) -> float:
    """Accuracy over the rows not marked uncertain (NaN when every row is uncertain).

    Example
    -------
    >>> accuracy_covered([1, 2], [1, 1], [False, True])
    1.0
    """
    t, p = _pair(y_true, y_pred)
    keep = ~np.asarray(uncertain, dtype=bool)
    return float(np.mean(t[keep] == p[keep])) if keep.any() else float("nan")


def classification_metrics(
    y_true: Vector,
    y_pred: Vector,
    classes: Vector,
    uncertain: Vector | None = None,
) -> dict[str, Any]:
    """All classification metrics in one JSON-ready dict.

    Keys: ``n``, ``classes``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
    ``per_class`` ({c: precision, recall, f1, support}), ``confusion`` (list of
    lists, rows = true), ``coverage``, ``accuracy_covered``, ``n_uncertain``.

    Example
    -------
    >>> m = classification_metrics(["a", "b"], ["a", "b"], ["a", "b"], [False, True])
    >>> m["accuracy"], m["coverage"], m["accuracy_covered"]
    (1.0, 0.5, 1.0)
    """
    t, p = _pair(y_true, y_pred)
    u = np.zeros(len(t), dtype=bool) if uncertain is None else np.asarray(uncertain, bool)
    if u.shape != t.shape:
        raise UserInputError(f"uncertain must have one flag per row ({len(t)})")
    classes = list(classes)
    # The labels are coded once; every figure below is read from the codes' counts (the
    # same numbers as accuracy / balanced_accuracy / per_class computed one by one).
    ti = _codes(t, classes)
    cm = _confusion(ti, _codes(p, classes), len(classes))
    pc = _per_class(cm, classes)
    return {
        "n": int(len(t)),
        "classes": classes,
        "accuracy": accuracy(t, p),
        "balanced_accuracy": _balanced_from_codes(ti, cm),
        "macro_f1": float(np.mean([pc[c]["f1"] for c in classes])) if classes else float("nan"),
        "per_class": pc,
        "confusion": cm.tolist(),
        "coverage": coverage(u),
        "accuracy_covered": accuracy_covered(t, p, u),
        "n_uncertain": int(u.sum()),
    }


# --------------------------------------------------------------------------- retrieval
def _ranks_topk(scores: np.ndarray, k: int) -> np.ndarray:
    positive_int("K", k)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise UserInputError(f"scores must be a 2-D array, got shape {s.shape}")
    # Stable sort on -score: equal scores keep the lower id first.
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def recall_at_k_text_to_image(
    scores: np.ndarray, caption_image: Vector, k: int
) -> float:
    """Text→image Recall@K: share of captions whose own image is in their top K images.

    ``scores[i, j]`` is the similarity of caption ``i`` to image ``j``;
    ``caption_image[i]`` is the index of caption ``i``'s image.

    Example
    -------
    >>> import numpy as np
    >>> s = np.array([[0.9, 0.1], [0.8, 0.2]])      # both captions prefer image 0
    >>> recall_at_k_text_to_image(s, [0, 1], 1)
    0.5
    """
    owner = np.asarray(caption_image, dtype=np.int64)
    top = _ranks_topk(scores, k)
    if len(owner) != len(top):
        raise UserInputError(f"caption_image must have one entry per caption ({len(top)})")
    return float(np.mean((top == owner[:, None]).any(axis=1))) if len(top) else float("nan")


def recall_at_k_image_to_text(
    scores: np.ndarray, caption_image: Vector, k: int
) -> float:
    """Image→text Recall@K: share of images with ANY of their captions in their top K.

    ``scores[j, i]`` is the similarity of image ``j`` to caption ``i``; images with no
    caption are not queries.

    Example
    -------
    >>> import numpy as np
    >>> s = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])   # 2 images, 3 captions
    >>> recall_at_k_image_to_text(s, [0, 0, 1], 1)        # image 1's top is caption 0
    0.5
    """
    owner = np.asarray(caption_image, dtype=np.int64)
    top = _ranks_topk(scores, k)
    if len(owner) != np.shape(scores)[1]:
        raise UserInputError(f"caption_image must have one entry per caption ({len(owner)})")
    hit = (owner[top] == np.arange(len(top))[:, None]).any(axis=1)
    has_caption = np.isin(np.arange(len(top)), owner)
    return float(np.mean(hit[has_caption])) if has_caption.any() else float("nan")


def retrieval_recall(
    image_vectors: np.ndarray,
    caption_vectors: np.ndarray,
    caption_image: Vector,
    ks: Vector = (1, 5, 10),
) -> dict[str, float]:
    """Both directions' Recall@K from normalised vectors (cosine = inner product).

    Returns ``{"text_to_image_R@K": ..., "image_to_text_R@K": ...}`` for each K.

    Example
    -------
    >>> import numpy as np
    >>> r = retrieval_recall(np.eye(2), np.eye(2), [0, 1], ks=(1,))
    >>> r["text_to_image_R@1"], r["image_to_text_R@1"]
    (1.0, 1.0)
    """
    img = np.asarray(image_vectors, dtype=np.float64)
    cap = np.asarray(caption_vectors, dtype=np.float64)
    s = cap @ img.T
    out: dict[str, float] = {}
    for k in ks:
        out[f"text_to_image_R@{k}"] = recall_at_k_text_to_image(s, caption_image, k)
        out[f"image_to_text_R@{k}"] = recall_at_k_image_to_text(s.T, caption_image, k)
    return out
