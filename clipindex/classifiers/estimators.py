"""Classifiers that work on stored CLIP embeddings (never on images).

Every classifier has scikit-learn's shape: ``__init__`` only stores keyword-only
hyperparameters, ``fit(...)`` validates, learns and returns ``self``, learned state
ends in ``_`` (``classes_``, ``prototypes_``, ...), ``predict_proba`` columns follow
``classes_`` and ``predict`` returns ``classes_[argmax(predict_proba)]`` (a tie goes to
the first class in ``classes_`` order). Using an unfitted model raises
:class:`sklearn.exceptions.NotFittedError`.

The definitions (X: L2-normalised image vectors of the query rows, one row each):

- :class:`PromptClassifier` (zero-shot): ``w_c = normalise(mean_t normalise(text(t(c))))``;
  ``logits = 100 * X @ W.T``; softmax.
- :class:`PrototypeClassifier` (the study's few-shot): ``w_c = normalise(mean of the
  normalised caption vectors of the support images of class c)``; logits and softmax as
  above.
- :class:`CaptionKNNClassifier` / :class:`ImageKNNClassifier`: the ``k`` nearest support
  vectors (exact inner product) vote for their class; rows owned by the query itself (a
  query image's own captions, or the image itself) never count. Probabilities are the
  normalised votes.
- :class:`LinearProbeClassifier`: logistic regression on support image vectors.
- :class:`MLPClassifier`: the fields-vs-roads head, d -> 256 -> ReLU -> classes.

Ensembles across backbones (:func:`majority_vote`, :func:`soft_vote`) and abstention
(:func:`reject_below`) work on ``predict_proba`` outputs.

Example
-------
>>> import numpy as np
>>> from clipindex.classifiers import PrototypeClassifier
>>> caps = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype="float32")
>>> clf = PrototypeClassifier().fit(caps, ["cat", "cat", "dog"])
>>> clf.predict(np.array([[0.8, 0.6]], dtype="float32")).tolist()
['cat']
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

from clipindex.classifiers.templates import DEFAULT_TEMPLATE, fill_templates
from clipindex.errors import UserInputError
from clipindex.metrics import Vector
from clipindex.store.indexes import build_index, search_index

__all__ = [
    "PromptClassifier",
    "PrototypeClassifier",
    "CaptionKNNClassifier",
    "ImageKNNClassifier",
    "LinearProbeClassifier",
    "MLPClassifier",
    "KNN_WEIGHTS",
    "majority_vote",
    "soft_vote",
    "vote_shares",
    "reject_below",
    "normalise",
    "softmax",
]

LOGIT_SCALE = 100.0
KNN_WEIGHTS = ("uniform", "similarity")


# --------------------------------------------------------------------------- helpers
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
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
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
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise UserInputError(f"{name} must be 1-D with one entry per vector ({n}), got {y.shape}")
    if n == 0:
        raise UserInputError("cannot fit on zero support vectors; give at least one per class")
    return y


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UserInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_choice(value: Any, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        known = ", ".join(str(c) for c in choices)
        raise UserInputError(f"Unknown {name} {value!r}. Known: {known}")
    return str(value)


class _Classifier:
    """Shared fitted-check, ``predict`` and ``get_params`` for the classifiers below."""

    _fitted_attr = "classes_"

    def _check_fitted(self) -> None:
        if not hasattr(self, self._fitted_attr):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit(...) before "
                "predict or predict_proba."
            )

    def predict_proba(
        self, X: np.ndarray, *, query_rows: Vector | None = None  # noqa: N803
    ) -> np.ndarray:
        """Probabilities ``(n, len(classes_))``; ``query_rows`` only matters for k-NN."""
        raise NotImplementedError

    def predict(
        self, X: np.ndarray, *, query_rows: Vector | None = None  # noqa: N803
    ) -> np.ndarray:
        """Labels ``classes_[argmax(predict_proba(X))]`` (ties: first class in order)."""
        proba = self.predict_proba(X, query_rows=query_rows)
        return self.classes_[np.argmax(proba, axis=1)]  # type: ignore[attr-defined]

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters given to ``__init__``."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- text-based
class PromptClassifier(_Classifier):
    """Zero-shot classification from prompt text vectors.

    ``w_c = normalise(mean over templates t of normalise(text(t(c))))``;
    ``proba = softmax(100 * X @ W.T)``.

    Parameters
    ----------
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
    >>> clf = PromptClassifier().fit(["cat", "dog"], encode_text=enc)
    >>> clf.predict(np.array([[0.0, 1.0]])).tolist()
    ['dog']
    """

    def __init__(
        self,
        *,
        templates: Sequence[str] = (DEFAULT_TEMPLATE,),
        class_names: Mapping[str, str] | None = None,
        prompts: Mapping[str, str | Sequence[str]] | None = None,
    ) -> None:
        self.templates = templates
        self.class_names = class_names
        self.prompts = prompts

    def _prompts_for(self, classes: Sequence[str]) -> list[list[str]]:
        names = dict(self.class_names or {})
        filled = fill_templates(self.templates, [names.get(c, c) for c in classes])
        for i, c in enumerate(classes):
            given = (self.prompts or {}).get(c)
            if given is not None:
                filled[i] = [given] if isinstance(given, str) else list(given)
                if not filled[i]:
                    raise UserInputError(f"the prompt list for class {c!r} is empty")
        return filled

    def fit(
        self, classes: Sequence[str], *, encode_text: Callable[[list[str]], np.ndarray]
    ) -> PromptClassifier:
        """Encode every class's prompts once and build the class vectors ``W``.

        ``encode_text(list[str]) -> (n, d)`` gives one text vector per prompt (the store
        gives one that caches in the store).
        """
        classes = [str(c) for c in classes]
        if not classes or len(set(classes)) != len(classes):
            raise UserInputError(f"classes must be non-empty and distinct, got {classes}")
        per_class = self._prompts_for(classes)
        flat = [p for ps in per_class for p in ps]
        vectors = normalise(_matrix(encode_text(flat), "text vectors"))
        if len(vectors) != len(flat):
            raise UserInputError(
                f"encode_text returned {len(vectors)} vectors for {len(flat)} prompts"
            )
        bounds = np.cumsum([0] + [len(ps) for ps in per_class])
        means = [vectors[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.prompts_ = per_class
        self.class_vectors_ = normalise(np.stack(means))
        self.classes_ = np.asarray(classes, dtype=object)
        return self

    def predict_proba(
        self, X: np.ndarray, *, query_rows: Vector | None = None  # noqa: N803
    ) -> np.ndarray:
        """``softmax(100 * X @ W.T)``, columns in ``classes_`` order."""
        self._check_fitted()
        x = _matrix(X, "image vectors", self.class_vectors_.shape[1])
        return softmax(LOGIT_SCALE * (x.astype(np.float64) @ self.class_vectors_.T))


class PrototypeClassifier(_Classifier):
    """The study's few-shot caption prototypes.

    ``w_c = normalise(mean of the normalised caption vectors of the support images of
    class c)``; ``proba = softmax(100 * X @ W.T)``. ``fit`` takes the support images'
    caption vectors, each labelled with its image's class.

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

    def fit(
        self, caption_vectors: np.ndarray, caption_labels: Vector
    ) -> PrototypeClassifier:
        """Average the normalised caption vectors of each class and normalise again."""
        v = normalise(_matrix(caption_vectors, "caption vectors"))
        y = _labels(caption_labels, len(v), "caption labels")
        self.classes_ = np.unique(y)
        self.prototypes_ = normalise(np.stack([v[y == c].mean(axis=0) for c in self.classes_]))
        self.n_captions_ = np.array([(y == c).sum() for c in self.classes_])
        return self

    def predict_proba(
        self, X: np.ndarray, *, query_rows: Vector | None = None  # noqa: N803
    ) -> np.ndarray:
        """``softmax(100 * X @ W.T)``, columns in ``classes_`` order."""
        self._check_fitted()
        x = _matrix(X, "image vectors", self.prototypes_.shape[1])
        return softmax(LOGIT_SCALE * (x.astype(np.float64) @ self.prototypes_.T))


# --------------------------------------------------------------------------- k-NN
class _KNNVoter(_Classifier):
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

    def _fit(self, vectors: np.ndarray, labels: Any, owners: Any) -> None:
        k = _check_positive_int(self.k, "k")
        _check_choice(self.weights, KNN_WEIGHTS, "weights")
        v = _matrix(vectors, "support vectors")
        y = _labels(labels, len(v))
        self.classes_, self.label_index_ = np.unique(y, return_inverse=True)
        own = np.arange(len(v)) if owners is None else np.asarray(owners, dtype=np.int64)
        if own.shape != (len(v),):
            raise UserInputError(f"owner rows must have one entry per vector ({len(v)})")
        self.owners_ = own
        # A query can own at most this many support rows; fetch that many extra.
        self.max_owned_ = int(np.unique(own, return_counts=True)[1].max())
        self.k_ = k
        self.index_ = build_index(v)

    def predict_proba(
        self, X: np.ndarray, *, query_rows: Vector | None = None  # noqa: N803
    ) -> np.ndarray:
        """Normalised (weighted) votes of the ``k`` nearest support rows.

        ``query_rows`` are the queries' own row ids: support rows owned by the same row
        id never vote for it. Leave ``None`` for new images.
        """
        self._check_fitted()
        x = _matrix(X, "query vectors", self.index_.d)
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

    A query image's own captions never count: ``predict_proba(X, query_rows=...)``
    drops captions whose ``image_row_id`` equals the query's row id (it fetches
    ``k + max captions per image`` neighbours, filters, keeps the first ``k``).

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

    def fit(
        self,
        caption_vectors: np.ndarray,
        caption_labels: Vector,
        *,
        image_rows: Vector | None = None,
    ) -> CaptionKNNClassifier:
        """Index the support captions; ``image_rows[i]`` is caption i's image row id."""
        self._fit(caption_vectors, caption_labels, image_rows)
        return self


class ImageKNNClassifier(_KNNVoter):
    """The ``k`` nearest support images vote for their class.

    With ``row_ids`` given to ``fit`` and ``query_rows`` to ``predict_proba``, a query
    never votes for itself (useful when queries are also support rows).

    Example
    -------
    >>> import numpy as np
    >>> clf = ImageKNNClassifier(k=1).fit(np.eye(2), ["a", "b"])
    >>> clf.predict(np.array([[0.1, 0.9]])).tolist()
    ['b']
    """

    def fit(
        self, X: np.ndarray, y: Vector, *, row_ids: Vector | None = None  # noqa: N803
    ) -> ImageKNNClassifier:
        """Index the support image vectors with their labels."""
        self._fit(X, y, row_ids)
        return self


# --------------------------------------------------------------------------- trained heads
class LinearProbeClassifier(_Classifier):
    """Logistic regression on support image vectors (scikit-learn, lbfgs).

    Parameters
    ----------
    C : float
        Inverse regularisation strength (scikit-learn's default 1.0; with few support
        rows per class, strong regularisation generalises better than a large C).
    class_weight : {"auto", "balanced", None}
        ``auto`` resolves to ``"balanced"`` when the support classes have different
        counts and to ``None`` when they are equal (``class_weight_`` records which).
    max_iter : int
        lbfgs iterations.

    Example
    -------
    >>> import numpy as np
    >>> clf = LinearProbeClassifier().fit(np.eye(2).repeat(3, 0), list("aaabbb"))
    >>> clf.class_weight_ is None, clf.predict(np.eye(2)).tolist()
    (True, ['a', 'b'])
    """

    _fitted_attr = "model_"

    def __init__(self, *, C: float = 1.0, class_weight: str | None = "auto",  # noqa: N803
                 max_iter: int = 2000) -> None:
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, y: Vector) -> LinearProbeClassifier:  # noqa: N803
        """Fit the logistic regression; needs at least two classes."""
        _check_choice(self.class_weight, ("auto", "balanced", None), "class_weight")  # type: ignore[arg-type]
        if not self.C > 0:
            raise UserInputError(f"C must be > 0, got {self.C!r}")
        x = _matrix(X, "image vectors")
        yy = _labels(y, len(x))
        classes, counts = np.unique(yy, return_counts=True)
        if len(classes) < 2:
            raise UserInputError("a linear probe needs support rows of at least two classes")
        cw = self.class_weight
        if cw == "auto":
            cw = "balanced" if counts.min() != counts.max() else None
        self.class_weight_ = cw
        max_iter = _check_positive_int(self.max_iter, "max_iter")
        self.model_ = LogisticRegression(C=float(self.C), class_weight=cw, max_iter=max_iter)
        self.model_.fit(x, yy)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(
        self, X: np.ndarray, *, query_rows: Vector | None = None  # noqa: N803
    ) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        self._check_fitted()
        return self.model_.predict_proba(_matrix(X, "image vectors", self.model_.n_features_in_))



class MLPClassifier(_Classifier):
    """The fields-vs-roads head on support image vectors: d -> 256 -> ReLU -> classes.

    Trained with cross-entropy and Adam (``lr``), mini-batches of ``batch_size``, on
    CPU. Early stopping: a seeded, per-class share ``validation_fraction`` of the
    support rows is held out; training stops after ``patience`` epochs without a lower
    held-out loss and the best epoch's weights are kept. With fewer than two rows to
    hold out it trains ``max_epochs`` epochs on everything. All randomness (weights,
    split, shuffling) comes from a local ``torch.Generator`` / numpy generator seeded
    with ``seed``; torch's global RNG is never drawn from. Training runs on
    ``num_threads`` threads (default 1: such a small head is fastest on one, and extra
    threads only contend on a shared machine); torch's thread count is restored after.

    Example
    -------
    >>> import numpy as np
    >>> clf = MLPClassifier(max_epochs=30).fit(np.eye(2).repeat(10, 0), ["a"] * 10 + ["b"] * 10)
    >>> clf.predict(np.eye(2)).tolist()
    ['a', 'b']
    """

    _fitted_attr = "model_"

    def __init__(self, *, hidden: int = 256, lr: float = 3e-3, batch_size: int = 32,
                 max_epochs: int = 200, patience: int = 10,
                 validation_fraction: float = 0.2, seed: int = 0, num_threads: int = 1) -> None:
        self.hidden = hidden
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.num_threads = num_threads

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= self.validation_fraction < 1:
            raise UserInputError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}"
            )
        rng = np.random.default_rng(self.seed)
        held: list[np.ndarray] = []
        for c in np.unique(y):
            rows = rng.permutation(np.flatnonzero(y == c))
            n_val = min(int(len(rows) * self.validation_fraction), len(rows) - 1)
            held.append(rows[:n_val])
        val = np.sort(np.concatenate(held)).astype(np.int64)
        if len(val) < 2:
            return np.arange(len(y)), np.zeros(0, dtype=np.int64)
        return np.setdiff1d(np.arange(len(y)), val), val

    def _build(self, d: int, n_classes: int, gen: torch.Generator) -> torch.nn.Module:
        hidden = _check_positive_int(self.hidden, "hidden")
        # skip_init: nn.Linear's own init would draw from torch's global RNG.
        first = torch.nn.utils.skip_init(torch.nn.Linear, d, hidden)
        last = torch.nn.utils.skip_init(torch.nn.Linear, hidden, n_classes)
        with torch.no_grad():  # PyTorch's default init, drawn from the local generator
            for layer in (first, last):
                bound = 1.0 / float(np.sqrt(layer.in_features))
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
        return torch.nn.Sequential(first, torch.nn.ReLU(), last)

    def fit(self, X: np.ndarray, y: Vector) -> MLPClassifier:  # noqa: N803
        """Train with early stopping on the held-out support rows."""
        if not self.lr > 0:
            raise UserInputError(f"lr must be > 0, got {self.lr!r}")
        x = _matrix(X, "image vectors")
        self.classes_, target = np.unique(_labels(y, len(x)), return_inverse=True)
        train, val = self._split(target)
        gen = torch.Generator().manual_seed(int(self.seed))
        model = self._build(x.shape[1], len(self.classes_), gen)
        threads = torch.get_num_threads()
        torch.set_num_threads(_check_positive_int(self.num_threads, "num_threads"))
        try:
            done, best = self._train(model, torch.from_numpy(x),
                                     torch.from_numpy(target.astype(np.int64)), train, val, gen)
        finally:
            torch.set_num_threads(threads)
        self.n_epochs_, self.best_val_loss_, self.n_validation_ = done, best, len(val)
        self.n_features_in_ = x.shape[1]
        self.model_ = model.eval()
        return self

    def _train(self, model: torch.nn.Module, xt: torch.Tensor, yt: torch.Tensor,
               train: np.ndarray, val: np.ndarray, gen: torch.Generator) -> tuple[int, float]:
        batch = _check_positive_int(self.batch_size, "batch_size")
        epochs = _check_positive_int(self.max_epochs, "max_epochs")
        patience = _check_positive_int(self.patience, "patience")
        opt = torch.optim.Adam(model.parameters(), lr=float(self.lr))
        loss_fn = torch.nn.CrossEntropyLoss()
        best, best_state, since, done = np.inf, copy.deepcopy(model.state_dict()), 0, 0
        for _ in range(epochs):
            done += 1
            model.train()
            order = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
            for start in range(0, len(order), batch):
                rows = order[start:start + batch]
                opt.zero_grad()
                loss_fn(model(xt[rows]), yt[rows]).backward()
                opt.step()
            if len(val) == 0:
                continue
            model.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(model(xt[val]), yt[val]))
            if val_loss < best - 1e-6:
                best, best_state, since = val_loss, copy.deepcopy(model.state_dict()), 0
            else:
                since += 1
                if since >= patience:
                    break
        if len(val):
            model.load_state_dict(best_state)
        return done, float(best)

    def predict_proba(
        self, X: np.ndarray, *, query_rows: Vector | None = None  # noqa: N803
    ) -> np.ndarray:
        """Softmax of the head's logits, columns in ``classes_`` order."""
        self._check_fitted()
        x = _matrix(X, "image vectors", self.n_features_in_)
        with torch.no_grad():
            logits = self.model_(torch.from_numpy(x)).numpy()
        return softmax(logits)


# --------------------------------------------------------------------------- ensembles
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
