"""scikit-learn's estimator contract (``sklearn.utils.estimator_checks``), check by check,
for every classifier fitted on plain vectors; any check one of them cannot pass is listed,
with its reason, in ``clipindex.classifiers.EXPECTED_FAILED_CHECKS``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from clipindex.classifiers import (
    EXPECTED_FAILED_CHECKS,
    CaptionKNNClassifier,
    ImageKNNClassifier,
    LinearProbeClassifier,
    MLPClassifier,
    PrototypeClassifier,
)
from clipindex.errors import NotFittedError, UserInputError

# Small MLP: the checks' data sets are tiny, and 20 epochs learn them (check_classifiers_train
# wants > 0.83 accuracy) in about a second for all checks together.
ESTIMATORS = [
    PrototypeClassifier(),
    CaptionKNNClassifier(),
    ImageKNNClassifier(),
    LinearProbeClassifier(),
    MLPClassifier(max_epochs=20, hidden=16),
]


def _expected_failed(estimator: object) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS[type(estimator).__name__]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed,
                         xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


def test_expected_failed_checks_cover_these_estimators_with_reasons() -> None:
    assert set(EXPECTED_FAILED_CHECKS) == {type(e).__name__ for e in ESTIMATORS}
    for name, checks in EXPECTED_FAILED_CHECKS.items():
        assert len(checks) <= 3, name
        assert all(c.startswith("check_") and reason for c, reason in checks.items()), name


def _data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    return x, np.array(["a", "b", "c"] * 4)


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_inputs_scikit_learn_refuses_are_one_line_user_errors(est) -> None:
    x, y = _data()
    bad = {
        "no features": (x[:, :0], y, "0 feature"),
        "complex X": (x.astype(np.complex64), y, "Complex data not supported"),
        "continuous y": (x, np.linspace(0, 1, len(x)), "Unknown label type"),
        "infinite y": (x, np.where(np.arange(len(x)) == 0, np.inf, 1.0), "infinity"),
        "NaN in X": (np.where(x > 1, np.nan, x), y, "NaN"),
        "1-D X": (x[0], y[:1], "Reshape your data"),
    }
    for what, (bx, by, match) in bad.items():
        with pytest.raises(UserInputError, match=match) as caught:
            type(est)(**est.get_params()).fit(bx, by)
        message = str(caught.value)
        assert "\n" not in message and "array=" not in message, (what, message)
    fitted = type(est)(**est.get_params()).fit(x, y)
    assert fitted.n_features_in_ == 4
    with pytest.raises(UserInputError, match="expecting 4 features.*same backbone"):
        fitted.predict(x[:, :3])
    with pytest.raises(TypeError, match="[Ss]parse"):  # scikit-learn's TypeError, kept
        import scipy.sparse
        type(est)(**est.get_params()).fit(scipy.sparse.csr_array(x), y)
    with pytest.raises(NotFittedError):
        type(est)(**est.get_params()).predict(x)


def test_linear_probe_class_weight_dict_and_n_iter() -> None:
    x, y = _data()
    heavy = LinearProbeClassifier(class_weight={"a": 100.0}).fit(x, y)
    assert heavy.class_weight_ == {"a": 100.0}
    assert (heavy.predict(x) == "a").mean() > (LinearProbeClassifier().fit(x, y).predict(x)
                                               == "a").mean()
    assert np.all(heavy.n_iter_ >= 1) and np.all(heavy.n_iter_ <= heavy.max_iter)
    with pytest.raises(UserInputError, match=r"labels \['z'\] that are not support classes"):
        LinearProbeClassifier(class_weight={"z": 2.0}).fit(x, y)
    mlp = MLPClassifier(max_epochs=7, patience=100).fit(x, y)
    assert mlp.n_iter_ == mlp.n_epochs_ == 7


@pytest.mark.parametrize("make", [PrototypeClassifier, LinearProbeClassifier, ImageKNNClassifier])
def test_the_stored_vector_fast_path_answers_as_the_checked_path(make) -> None:
    # float32 C-contiguous arrays skip scikit-learn's array checks (their cost is several
    # times the classifier's own work); other inputs take the full checks: same answers.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 12)).astype(np.float32)
    y = np.array(["a", "b", "c"] * 20)
    q = rng.standard_normal((25, 12)).astype(np.float32)
    fast, checked = make().fit(x, y), make().fit(x.astype(np.float64).tolist(), list(y))
    assert fast.n_features_in_ == checked.n_features_in_ == 12
    np.testing.assert_array_equal(fast.predict(q), checked.predict(q.tolist()))
    np.testing.assert_allclose(fast.predict_proba(q), checked.predict_proba(q.tolist()),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(fast.predict(q), fast.classes_[fast.predict_proba(q).argmax(1)])
    with pytest.raises(UserInputError, match="X has 11 features"):
        fast.predict(q[:, :11].copy())
    with pytest.raises(UserInputError):
        make().fit(np.where(x > 2, np.nan, x).astype(np.float32), y)
