"""Heads trained on support image vectors: linear probe and MLP (d -> 256 -> classes)."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from clipindex.classifiers.base import (
    VectorClassifier,
    _check_choice,
    _check_positive_int,
    softmax,
)
from clipindex.errors import UserInputError
from clipindex.metrics import Vector

__all__ = ["LinearProbeClassifier", "MLPClassifier"]


class LinearProbeClassifier(VectorClassifier):
    """Logistic regression on support image vectors (scikit-learn, lbfgs).

    Parameters
    ----------
    C : float
        Inverse regularisation strength (scikit-learn's default 1.0; with few support
        rows per class, strong regularisation generalises better than a large C).
    class_weight : {"auto", "balanced", None} or dict
        ``auto`` resolves to ``"balanced"`` when the support classes have different
        counts and to ``None`` when they are equal (``class_weight_`` records which); a
        dict ``{label: weight}`` is passed to scikit-learn as it is (labels missing from
        it weigh 1).
    max_iter : int
        lbfgs iterations; ``n_iter_`` records how many ran.

    Example
    -------
    >>> import numpy as np
    >>> clf = LinearProbeClassifier().fit(np.eye(2).repeat(3, 0), list("aaabbb"))
    >>> clf.class_weight_ is None, clf.predict(np.eye(2)).tolist()
    (True, ['a', 'b'])
    """

    _fitted_attr = "model_"

    def __init__(self, *, C: float = 1.0,  # noqa: N803
                 class_weight: str | Mapping[Hashable, float] | None = "auto",
                 max_iter: int = 2000) -> None:
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, y: Vector) -> LinearProbeClassifier:  # noqa: N803
        """Fit the logistic regression; needs at least two classes."""
        if not isinstance(self.class_weight, Mapping):
            _check_choice(self.class_weight, ("auto", "balanced", None), "class_weight")
        if not self.C > 0:
            raise UserInputError(f"C must be > 0, got {self.C!r}")
        max_iter = _check_positive_int(self.max_iter, "max_iter")
        x, yy = self._fit_data(X, y, "image vectors")
        classes, counts = np.unique(yy, return_counts=True)
        if len(classes) < 2:
            raise UserInputError("a linear probe needs support rows of at least two classes; "
                                 f"got one class ({classes[0]!r})")
        cw = self.class_weight
        if isinstance(cw, Mapping):
            known = set(classes.tolist())
            unknown = [c for c in cw if c not in known]
            if unknown:
                raise UserInputError(f"class_weight names labels {unknown} that are not "
                                     f"support classes {classes.tolist()}")
            cw = dict(cw)
        elif cw == "auto":
            cw = "balanced" if counts.min() != counts.max() else None
        model = LogisticRegression(C=float(self.C), class_weight=cw, max_iter=max_iter)
        model.fit(x, yy)
        self.class_weight_ = cw
        self.n_iter_ = model.n_iter_
        self.classes_ = model.classes_
        self.model_ = model
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Class probabilities, columns in ``classes_`` order."""
        x = self._predict_data(X, "image vectors")
        return self.model_.predict_proba(x)


class MLPClassifier(VectorClassifier):
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
        x, yy = self._fit_data(X, y, "image vectors")
        self.classes_, target = np.unique(yy, return_inverse=True)
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
        self.n_iter_ = done  # scikit-learn's name for the epochs run
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

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Softmax of the head's logits, columns in ``classes_`` order."""
        x = self._predict_data(X, "image vectors")
        with torch.no_grad():
            logits = self.model_(torch.from_numpy(x)).numpy()
        return softmax(logits)
