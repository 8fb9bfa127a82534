"""Classifiers vs short independent numpy computations of DESIGN.md's definitions, and
as scikit-learn estimators (clone, cross_val_score, Pipeline, GridSearchCV)."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.exceptions
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from clipindex.classifiers import (
    CaptionKNNClassifier,
    ImageKNNClassifier,
    LinearProbeClassifier,
    MajorityVoteClassifier,
    MLPClassifier,
    PromptClassifier,
    PrototypeClassifier,
    SoftVoteClassifier,
    majority_vote,
    normalise,
    reject_below,
    soft_vote,
    softmax,
    vote_shares,
)
from clipindex.classifiers.templates import IMAGENET_TEMPLATES, get_templates
from clipindex.errors import ClipindexError, NotFittedError, UserInputError
from clipindex.metrics import balanced_accuracy


def unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class FakeText:
    """A deterministic 'text encoder': a fixed random vector per string (unnormalised)."""

    def __init__(self, d: int = 16) -> None:
        self.d, self.calls, self.table = d, 0, {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = []
        for t in texts:
            if t not in self.table:
                seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(t)) % (2**31)
                self.table[t] = np.random.default_rng(seed).standard_normal(self.d) * 3.0
            out.append(self.table[t])
        return np.array(out, dtype=np.float32)


def test_templates_sets() -> None:
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert get_templates("default") == ("a photo of a {}",)
    with pytest.raises(UserInputError, match="Known: default, imagenet"):
        get_templates("nope")


@pytest.mark.parametrize("templates", [("a photo of a {}",), IMAGENET_TEMPLATES[:7]])
def test_prompt_matches_numpy(templates: tuple[str, ...]) -> None:
    rng = np.random.default_rng(0)
    x, enc, classes = unit(rng, 20), FakeText(), ["cat", "dog", "cow"]
    clf = PromptClassifier(classes, encode_text=enc, templates=templates).fit()
    w = []
    for c in classes:
        t = np.stack([enc.table[tpl.format(c)] for tpl in templates]).astype(np.float64)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        m = t.mean(axis=0)
        w.append(m / np.linalg.norm(m))
    expect = np_softmax(100.0 * x.astype(np.float64) @ np.stack(w).T)
    np.testing.assert_allclose(clf.predict_proba(x), expect, rtol=1e-4, atol=1e-6)
    assert clf.predict(x).tolist() == [classes[i] for i in expect.argmax(1)]
    assert enc.calls == 1  # every prompt encoded in one call


def test_prompt_overrides_and_bad_template() -> None:
    enc = FakeText()
    clf = PromptClassifier(
        ["n01", "road"], encode_text=enc, templates=["this is a photo of a {}."],
        class_names={"n01": "field"}, prompts={"road": ["a road", "a street"]},
    ).fit()
    assert clf.prompts_ == [["this is a photo of a field."], ["a road", "a street"]]
    with pytest.raises(UserInputError, match=r"\{\}"):
        PromptClassifier(["a"], encode_text=enc, templates=["a photo"]).fit()
    with pytest.raises(UserInputError, match="distinct"):
        PromptClassifier(["a", "a"], encode_text=enc).fit()
    with pytest.raises(UserInputError, match="encode_text"):
        PromptClassifier(["a", "b"]).fit()
    with pytest.raises(UserInputError, match="not among classes"):
        PromptClassifier(["a", "b"], encode_text=enc).fit(None, ["a", "c"])


def test_prompt_from_class_vectors_or_labels() -> None:
    enc, rng = FakeText(), np.random.default_rng(10)
    x = unit(rng, 9)
    by_text = PromptClassifier(["dog", "cat"], encode_text=enc).fit()
    given = PromptClassifier(["dog", "cat"], class_vectors=by_text.class_vectors_ * 5).fit(x)
    np.testing.assert_allclose(given.predict_proba(x), by_text.predict_proba(x), atol=1e-6)
    assert given.prompts_ is None and given.classes_.tolist() == ["dog", "cat"]
    # without classes, the labels of fit give them (sorted), as scikit-learn does
    from_y = PromptClassifier(encode_text=enc).fit(x, ["dog", "cat", "dog"] * 3)
    assert from_y.classes_.tolist() == ["cat", "dog"]
    np.testing.assert_allclose(from_y.predict_proba(x), by_text.predict_proba(x)[:, ::-1],
                               atol=1e-6)
    with pytest.raises(UserInputError, match="dim 16"):
        given.fit(x[:, :8])


def test_prototype_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    caps = unit(rng, 30) * rng.uniform(0.5, 2, (30, 1)).astype(np.float32)  # not unit
    y = np.array(["b", "a", "c"] * 10)
    x = unit(rng, 12)
    clf = PrototypeClassifier().fit(caps, y)
    w = []
    for c in ["a", "b", "c"]:
        v = caps[y == c].astype(np.float64)
        m = (v / np.linalg.norm(v, axis=1, keepdims=True)).mean(axis=0)
        w.append(m / np.linalg.norm(m))
    assert clf.classes_.tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(clf.prototypes_, np.stack(w), atol=1e-6)
    np.testing.assert_allclose(
        clf.predict_proba(x), np_softmax(100 * x.astype(np.float64) @ np.stack(w).T), atol=1e-5
    )


def np_knn(support, labels, owners, x, qrows, k, weights, classes):
    out = np.zeros((len(x), len(classes)))
    for i, q in enumerate(x):
        s = support.astype(np.float64) @ q
        order = [j for j in np.argsort(-s, kind="stable") if qrows is None or owners[j] != qrows[i]]
        for j in order[:k]:
            w = 1.0 if weights == "uniform" else max(s[j], 0.0)
            out[i, classes.index(labels[j])] += w
        out[i] /= out[i].sum()
    return out


@pytest.mark.parametrize("weights", ["uniform", "similarity"])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_caption_knn_matches_numpy(weights: str, k: int) -> None:
    rng = np.random.default_rng(2)
    n_img = 30
    owners = np.repeat(np.arange(n_img), 3)  # three captions per image
    caps = unit(rng, len(owners), 8)
    img_label = rng.choice(["a", "b", "c"], n_img)
    labels = img_label[owners]
    x, qrows = unit(rng, 10, 8), rng.choice(n_img, 10, replace=False)
    clf = CaptionKNNClassifier(k=k, weights=weights).fit(caps, labels, image_rows=owners)
    got = clf.predict_proba(x, query_rows=qrows)
    np.testing.assert_allclose(got, np_knn(caps, labels, owners, x, qrows, k, weights,
                                           ["a", "b", "c"]), atol=1e-5)
    got_new = clf.predict_proba(x)  # new images: nothing excluded
    np.testing.assert_allclose(got_new, np_knn(caps, labels, owners, x, None, k, weights,
                                               ["a", "b", "c"]), atol=1e-5)


def test_caption_knn_never_uses_own_captions() -> None:
    # Image 0 (class "dog") has 5 captions right on top of it; the other support
    # captions (class "cat") are farther away. Without exclusion "dog" would win.
    rng = np.random.default_rng(3)
    q = unit(rng, 1)
    own = q + 0.01 * rng.standard_normal((5, 16)).astype(np.float32)
    others = q + 0.5 * rng.standard_normal((6, 16)).astype(np.float32)
    caps = np.vstack([own, others])
    rows = np.array([0] * 5 + [1, 1, 1, 2, 2, 2])
    labels = np.array(["dog"] * 5 + ["cat"] * 6)
    clf = CaptionKNNClassifier(k=3).fit(caps, labels, image_rows=rows)
    assert clf.predict(q).tolist() == ["dog"]                       # sanity: own are nearest
    assert clf.predict(q, query_rows=[0]).tolist() == ["cat"]
    np.testing.assert_allclose(clf.predict_proba(q, query_rows=[0]), [[1.0, 0.0]])


def test_image_knn_matches_numpy_and_excludes_self() -> None:
    rng = np.random.default_rng(4)
    sup, y = unit(rng, 40), rng.choice(["x", "y"], 40)
    clf = ImageKNNClassifier(k=4, weights="similarity").fit(sup, y, row_ids=np.arange(40))
    got = clf.predict_proba(sup[:6], query_rows=np.arange(6))
    ref = np_knn(sup, y, np.arange(40), sup[:6], np.arange(6), 4, "similarity", ["x", "y"])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_knn_bad_hyperparameters() -> None:
    rng = np.random.default_rng(5)
    sup, y = unit(rng, 10), ["a"] * 5 + ["b"] * 5
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UserInputError, match="k must be a positive integer"):
            ImageKNNClassifier(k=bad).fit(sup, y)
    with pytest.raises(UserInputError, match="Known: uniform, similarity"):
        CaptionKNNClassifier(weights="distance").fit(sup, y)


@pytest.mark.parametrize(
    "clf,fit_args",
    [
        (PromptClassifier(), None),
        (PrototypeClassifier(), "xy"),
        (CaptionKNNClassifier(), "xy"),
        (ImageKNNClassifier(), "xy"),
        (LinearProbeClassifier(), "xy"),
        (MLPClassifier(), "xy"),
        (MajorityVoteClassifier(), "xy"),
        (SoftVoteClassifier(), "xy"),
    ],
)
def test_unfitted_raises(clf, fit_args) -> None:
    with pytest.raises(NotFittedError, match="not fitted") as caught:
        clf.predict(np.zeros((1, 4), dtype=np.float32))
    # one error, in both trees: scikit-learn's and clipindex's (the CLI's one-line errors)
    assert isinstance(caught.value, sklearn.exceptions.NotFittedError)
    assert isinstance(caught.value, ClipindexError)
    with pytest.raises(sklearn.exceptions.NotFittedError):
        clf.predict_proba(np.zeros((1, 4), dtype=np.float32))


def imbalanced(seed: int, n_a: int = 45, n_b: int = 108, noise: float = 0.45):
    """Two overlapping classes around fixed means; ``seed`` only draws the noise."""
    d = 16
    mu = unit(np.random.default_rng(99), 2, d).astype(np.float64)
    rng = np.random.default_rng(seed)

    def draw(m, n):
        v = m + noise * rng.standard_normal((n, d))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    x = np.vstack([draw(mu[0], n_a), draw(mu[1], n_b)])
    return x, np.array(["field"] * n_a + ["road"] * n_b)


def test_linear_probe_class_weight_on_imbalanced() -> None:
    # Train 45 vs 108 (the fields-vs-roads counts), test on a balanced set.
    x, y = imbalanced(6)
    xt, yt = imbalanced(7, 300, 300)
    weighted = LinearProbeClassifier(C=1.0).fit(x, y)
    plain = LinearProbeClassifier(C=1.0, class_weight=None).fit(x, y)
    assert weighted.class_weight_ == "balanced" and plain.class_weight_ is None
    ba_w = balanced_accuracy(yt, weighted.predict(xt))
    ba_p = balanced_accuracy(yt, plain.predict(xt))
    assert ba_w > ba_p, (ba_w, ba_p)
    # The probe is sklearn's LogisticRegression; its probabilities follow classes_.
    np.testing.assert_allclose(weighted.predict_proba(xt).sum(1), 1.0)
    assert weighted.classes_.tolist() == ["field", "road"]


def test_linear_probe_errors() -> None:
    with pytest.raises(UserInputError, match="two classes"):
        LinearProbeClassifier().fit(np.eye(3, dtype=np.float32), ["a"] * 3)
    with pytest.raises(UserInputError, match="class_weight"):
        LinearProbeClassifier(class_weight="heavy").fit(np.eye(2), ["a", "b"])


def test_mlp_seeded_learns_and_leaves_torch_globals() -> None:
    x, y = imbalanced(8, 60, 60)
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    a = MLPClassifier(seed=3).fit(x, y)
    b = MLPClassifier(seed=3).fit(x, y)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    # early stopping stopped it well before max_epochs, at a held-out loss below chance's
    assert a.n_validation_ == 24 and a.n_epochs_ < 200 and a.best_val_loss_ < np.log(2) / 2
    assert a.model_[0].out_features == 256
    xt, yt = imbalanced(9, 60, 60)  # held out: another seed's noise than training's
    assert not np.isin(xt, x).any()
    assert np.mean(a.predict(xt) == yt) > 0.8
    with pytest.raises(UserInputError, match="lr"):
        MLPClassifier(lr=0).fit(x, y)


def test_majority_vote_with_constructed_tie() -> None:
    classes = ["a", "b", "c"]
    p1 = np.array([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2], [0.4, 0.35, 0.25]])
    p2 = np.array([[0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.3, 0.4, 0.3]])
    p3 = np.array([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    got = majority_vote([p1, p2, p3], classes).tolist()
    # row 0: a/b/c one vote each; sums a .8, b 1.2, c 1.0 -> b
    # row 1: a has 2 votes -> a, although b has the largest summed probability (1.4)
    # row 2: a/b/c one vote each; sums a 1.0, b 1.05, c .95 -> b
    assert got == ["b", "a", "b"]
    # independent numpy: votes, then summed probability among the tied classes
    stack = np.stack([p1, p2, p3])
    votes = np.stack([(stack.argmax(2) == j).sum(0) for j in range(3)], 1)
    sums = stack.sum(0)
    ref = [classes[int(np.argmax(np.where(v == v.max(), s, -1)))]
           for v, s in zip(votes, sums, strict=True)]
    assert got == ref
    # exact tie on votes and on sums -> first class in order
    e = np.array([[0.5, 0.5]])
    assert majority_vote([np.array([[0.6, 0.4]]), np.array([[0.4, 0.6]])], ["x", "y"]).tolist() \
        == ["x"]
    assert majority_vote([e], ["x", "y"]).tolist() == ["x"]
    np.testing.assert_allclose(vote_shares([p1, p2, p3], classes)[1], [2 / 3, 1 / 3, 0])


def test_soft_vote_and_reject_below() -> None:
    p1, p2 = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.5, 0.5], [0.4, 0.6]])
    np.testing.assert_allclose(soft_vote([p1, p2], ["a", "b"]), (p1 + p2) / 2)
    assert reject_below(np.array([[0.9, 0.1], [0.89, 0.11]]), 0.9).tolist() == [False, True]
    with pytest.raises(UserInputError, match=r"\[0, 1\]"):
        reject_below(p1, 1.5)
    with pytest.raises(UserInputError, match="same n"):
        soft_vote([p1, p1[:1]], ["a", "b"])


# ----------------------------------------------------------------------------- scikit-learn
ALL_CLASSES = [PromptClassifier, PrototypeClassifier, CaptionKNNClassifier, ImageKNNClassifier,
               LinearProbeClassifier, MLPClassifier, MajorityVoteClassifier, SoftVoteClassifier]


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_clone_with_no_arguments_and_params_round_trip(cls) -> None:
    from sklearn.base import BaseEstimator, ClassifierMixin, is_classifier

    est = cls()
    assert isinstance(est, BaseEstimator) and isinstance(est, ClassifierMixin)
    assert is_classifier(est)
    twin = clone(est)
    assert type(twin) is cls and twin is not est
    assert twin.get_params() == est.get_params()
    for name, value in est.get_params().items():  # every argument stored under its name
        assert getattr(est, name) is value


def test_set_params_and_clone_keep_the_values() -> None:
    knn = ImageKNNClassifier().set_params(k=3, weights="similarity")
    assert clone(knn).get_params() == {"k": 3, "weights": "similarity"}
    mlp = clone(MLPClassifier(seed=7, hidden=32))
    assert (mlp.seed, mlp.hidden, mlp.lr) == (7, 32, 3e-3)
    assert repr(LinearProbeClassifier(C=0.5)) == "LinearProbeClassifier(C=0.5)"


def _probas(y: np.ndarray, classes: list[str], seed: int, models: int = 3) -> np.ndarray:
    """``models`` noisy classifiers' probabilities side by side, (n, models * C)."""
    rng = np.random.default_rng(seed)
    onehot = (y[:, None] == np.asarray(classes)[None, :]).astype(float)
    return np.hstack([np_softmax(2.0 * onehot + rng.standard_normal(onehot.shape))
                      for _ in range(models)])


def _estimators(x: np.ndarray, y: np.ndarray) -> dict:
    mu = np.stack([x[y == c].mean(0) for c in ("field", "road")])
    return {
        "prompt-vectors": PromptClassifier(["field", "road"], class_vectors=mu),
        "prompt-text": PromptClassifier(encode_text=FakeText()),
        "prototype": PrototypeClassifier(),
        "caption-knn": CaptionKNNClassifier(k=5),
        "image-knn": ImageKNNClassifier(k=5, weights="similarity"),
        "linear-probe": LinearProbeClassifier(),
        "mlp": MLPClassifier(max_epochs=40, hidden=32),
    }


@pytest.mark.parametrize("name", ["prompt-vectors", "prompt-text", "prototype", "caption-knn",
                                  "image-knn", "linear-probe", "mlp"])
def test_cross_val_score_equals_a_manual_fold_loop(name: str) -> None:
    x, y = imbalanced(11, 60, 60)
    est = _estimators(x, y)[name]
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scores = cross_val_score(est, x, y, cv=folds)
    manual = []
    for train, test in folds.split(x, y):
        fitted = clone(est).fit(x[train], y[train])
        manual.append(np.mean(fitted.predict(x[test]) == y[test]))
    np.testing.assert_allclose(scores, manual)
    assert not hasattr(est, "classes_")  # cross_val_score fitted clones, not est
    if name != "prompt-text":  # random text vectors know nothing of the classes
        assert scores.mean() > 0.8, (name, scores)


@pytest.mark.parametrize("cls,vote", [(MajorityVoteClassifier, majority_vote),
                                      (SoftVoteClassifier, None)])
def test_vote_estimators_cross_validate(cls, vote) -> None:
    classes = ["a", "b", "c"]
    y = np.array(classes * 30)
    X = _probas(y, classes, seed=12)  # noqa: N806
    blocks = [X[:, m * 3:(m + 1) * 3] for m in range(3)]
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=1)
    scores = cross_val_score(cls(), X, y, cv=folds)
    expect = (vote(blocks, classes) if vote is not None
              else np.asarray(classes)[soft_vote(blocks, classes).argmax(1)])
    np.testing.assert_allclose(scores, [np.mean(expect[t] == y[t]) for _, t in
                                        folds.split(X, y)])
    assert 0.6 < scores.mean() < 1.0  # the vote is right more often than not, not always
    fitted = cls(classes).fit(X)
    assert fitted.n_models_ == 3
    np.testing.assert_allclose(
        fitted.predict_proba(X),
        vote_shares(blocks, classes) if vote is not None else soft_vote(blocks, classes))
    with pytest.raises(UserInputError, match=r"M \* 3"):
        cls(classes).fit(X[:, :4])


def test_pipeline_and_grid_search() -> None:
    x, y = imbalanced(13, 60, 60)
    raw = x * np.random.default_rng(14).uniform(0.2, 5.0, (len(x), 1)).astype(np.float32)
    pipe = make_pipeline(FunctionTransformer(normalise), ImageKNNClassifier(k=5))
    scores = cross_val_score(pipe, raw, y, cv=3)
    np.testing.assert_allclose(scores, cross_val_score(ImageKNNClassifier(k=5), x, y, cv=3),
                               atol=1e-12)
    grid = GridSearchCV(pipe, {"imageknnclassifier__k": [1, 9]}, cv=3).fit(raw, y)
    assert grid.best_estimator_[-1].k == grid.best_params_["imageknnclassifier__k"]
    xt, yt = imbalanced(15, 60, 60)
    assert grid.score(xt, yt) > 0.8


@pytest.mark.parametrize("shape", [(950, 5), (20, 8), (3, 5), (10, 9), (400, 2)])
def test_softmax_column_major_path_gives_the_same_bits(shape) -> None:
    # Few classes and many rows take a column-major route (numpy's short row-wise
    # reductions are slow); its sums of < 8 terms must equal the plain formula bit for bit.
    z = np.random.default_rng(3).normal(0, 30, shape)
    plain = np.exp(z - z.max(axis=1, keepdims=True))
    plain = plain / plain.sum(axis=1, keepdims=True)
    got = softmax(z)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, plain)


def test_prototype_means_are_the_masked_means_bit_for_bit() -> None:
    # fit groups each class's rows by one stable sort: the same rows in the same order as
    # a boolean mask per class, so the prototypes are exactly those of the mask means.
    rng = np.random.default_rng(5)
    caps = unit(rng, 300) * rng.uniform(0.5, 2, (300, 1)).astype(np.float32)
    y = rng.choice(["sheep", "cat", "dog", "cow", "horse"], 300)
    clf = PrototypeClassifier().fit(caps, y)
    v = normalise(caps)
    ref = normalise(np.stack([v[y == c].mean(axis=0) for c in np.unique(y)]))
    np.testing.assert_array_equal(clf.prototypes_, ref)
    assert clf.n_captions_.tolist() == [int((y == c).sum()) for c in np.unique(y)]
