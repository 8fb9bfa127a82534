"""Metrics vs scikit-learn and brute-force loops."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm

from clipindex.errors import UserInputError
from clipindex.metrics import (
    accuracy,
    accuracy_covered,
    balanced_accuracy,
    classification_metrics,
    confusion_matrix,
    coverage,
    macro_f1,
    per_class,
    recall_at_k_image_to_text,
    recall_at_k_text_to_image,
    retrieval_recall,
)

CLASSES = ["cat", "dog", "cow", "sheep", "horse"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = rng.choice(CLASSES, 200)
    p = np.where(rng.random(200) < 0.6, t, rng.choice(CLASSES, 200))
    if seed == 2:  # a class never predicted, and one never true: 0/0 cases
        p[p == "horse"] = "cow"
        t[t == "sheep"] = "dog"
    assert accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p))
    with warnings.catch_warnings():  # sklearn warns about the class with no true rows
        warnings.simplefilter("ignore")
        ref_bal = skm.balanced_accuracy_score(t, p)
    assert balanced_accuracy(t, p, CLASSES) == pytest.approx(ref_bal)
    assert macro_f1(t, p, CLASSES) == pytest.approx(
        skm.f1_score(t, p, labels=CLASSES, average="macro", zero_division=0)
    )
    np.testing.assert_array_equal(
        confusion_matrix(t, p, CLASSES), skm.confusion_matrix(t, p, labels=CLASSES)
    )
    prec, rec, _, sup = skm.precision_recall_fscore_support(
        t, p, labels=CLASSES, zero_division=0
    )
    pc = per_class(t, p, CLASSES)
    for i, c in enumerate(CLASSES):
        assert pc[c]["precision"] == pytest.approx(prec[i])
        assert pc[c]["recall"] == pytest.approx(rec[i])
        assert pc[c]["support"] == sup[i]


def test_coverage_and_covered_accuracy() -> None:
    t = np.array(["a", "a", "b", "b"])
    p = np.array(["a", "b", "b", "a"])
    u = np.array([False, True, False, True])
    assert coverage(u) == 0.5
    assert accuracy_covered(t, p, u) == 1.0
    assert math.isnan(accuracy_covered(t, p, np.ones(4, bool)))
    m = classification_metrics(t, p, ["a", "b"], u)
    assert (m["n"], m["accuracy"], m["coverage"], m["accuracy_covered"], m["n_uncertain"]) == (
        4, 0.5, 0.5, 1.0, 2)
    assert m["confusion"] == [[1, 1], [1, 1]]
    with pytest.raises(UserInputError, match="equally long"):
        accuracy(["a"], ["a", "b"])


def brute_t2i(scores, owner, k):
    hits = 0
    for i in range(scores.shape[0]):
        ranked = sorted(range(scores.shape[1]), key=lambda j: (-scores[i, j], j))
        hits += owner[i] in ranked[:k]
    return hits / scores.shape[0]


def brute_i2t(scores, owner, k):
    hits, n = 0, 0
    for j in range(scores.shape[0]):
        mine = {i for i in range(len(owner)) if owner[i] == j}
        if not mine:
            continue
        n += 1
        ranked = sorted(range(scores.shape[1]), key=lambda i: (-scores[j, i], i))
        hits += bool(mine & set(ranked[:k]))
    return hits / n


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_recall_at_k_vs_brute_force(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n_img = 20
    # 1 to 5 captions per image; image 19 has none (not an image->text query)
    owner = np.concatenate([np.full(rng.integers(1, 6), j) for j in range(n_img - 1)])
    img = rng.standard_normal((n_img, 8))
    cap = img[owner] + 1.2 * rng.standard_normal((len(owner), 8))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    cap /= np.linalg.norm(cap, axis=1, keepdims=True)
    s = cap @ img.T
    s[0, :3] = s[0, 0]  # a tie: lower id ranks first
    t2i = recall_at_k_text_to_image(s, owner, k)
    i2t = recall_at_k_image_to_text(s.T, owner, k)
    assert t2i == pytest.approx(brute_t2i(s, owner, k))
    assert i2t == pytest.approx(brute_i2t(s.T, owner, k))
    # Recall@K never falls as K grows, and with K = every candidate it is exactly 1
    assert recall_at_k_text_to_image(s, owner, k + 1) >= t2i
    assert recall_at_k_image_to_text(s.T, owner, k + 1) >= i2t
    assert recall_at_k_text_to_image(s, owner, n_img) == 1.0
    assert recall_at_k_image_to_text(s.T, owner, len(owner)) == 1.0
    if k == 1:  # the noisy captions make top-1 retrieval imperfect
        assert t2i < 1.0 and i2t < 1.0
    r = retrieval_recall(img, cap, owner, ks=(k,))
    assert r[f"text_to_image_R@{k}"] == pytest.approx(brute_t2i(cap @ img.T, owner, k))


def test_recall_any_caption_counts() -> None:
    # image 0 has captions 0 and 1; only caption 1 is its top-1 -> still a hit
    s = np.array([[0.1, 0.9, 0.5], [0.2, 0.3, 0.8]])
    assert recall_at_k_image_to_text(s, [0, 0, 1], 1) == 1.0
    with pytest.raises(UserInputError, match="K must be a positive integer"):
        recall_at_k_image_to_text(s, [0, 0, 1], 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_metrics_equal_the_one_by_one_functions(seed: int) -> None:
    # classification_metrics codes the labels once; each figure must be what the
    # single-purpose function gives, labels outside the classes included.
    rng = np.random.default_rng(seed)
    t = rng.choice(CLASSES + ["person"], 300)
    p = np.where(rng.random(300) < 0.5, t, rng.choice(CLASSES + ["bird"], 300))
    u = rng.random(300) < 0.2
    m = classification_metrics(t, p, CLASSES, u)
    assert m["accuracy"] == accuracy(t, p)
    assert m["balanced_accuracy"] == balanced_accuracy(t, p, CLASSES)
    assert m["macro_f1"] == macro_f1(t, p, CLASSES)
    assert m["confusion"] == confusion_matrix(t, p, CLASSES).tolist()
    assert m["per_class"] == per_class(t, p, CLASSES)
    assert m["accuracy_covered"] == accuracy_covered(t, p, u)
    assert m["coverage"] == coverage(u)
    assert math.isnan(classification_metrics(["x"], ["x"], CLASSES)["balanced_accuracy"])
