"""Classifiers: queries against stored vectors, in scikit-learn's shape.

Owns: the estimators (``prompt``, ``prototype``, caption/image ``knn``, the trained
``heads``: linear probe and MLP), the ``ensemble`` votes and abstention, the shared
``base`` (checks, ``normalise``/``softmax``, the base class), the prompt ``templates``,
the ``rows`` a run uses, the one ``predictions`` table, the ``runner`` that
evaluates a method on a store (support/test split, shots, ensembles), and ``fitted``
(a method fitted once on opened stores, for a long-running service).
May import: ``clipindex.errors``, ``clipindex.metrics``, ``clipindex.files``,
``clipindex.store``. Never decoding (``clipindex.encode.decode``), search, bench,
report or the CLI.

Every classifier class is a :class:`sklearn.base.BaseEstimator` with
:class:`~sklearn.base.ClassifierMixin`: ``clone(Cls())`` works, and so do
``cross_val_score`` and ``Pipeline`` on stored vectors. Those fitted on plain vectors
(prototype, caption/image k-NN, linear probe, MLP) pass scikit-learn's
``check_estimator``; ``EXPECTED_FAILED_CHECKS`` lists any check one of them may fail, and
why.
"""

from clipindex.classifiers.base import (
    EXPECTED_FAILED_CHECKS,
    VectorClassifier,
    normalise,
    softmax,
)
from clipindex.classifiers.ensemble import (
    MajorityVoteClassifier,
    SoftVoteClassifier,
    majority_vote,
    reject_below,
    soft_vote,
    vote_shares,
)
from clipindex.classifiers.fitted import FittedClassifier, fit_classifier
from clipindex.classifiers.heads import LinearProbeClassifier, MLPClassifier
from clipindex.classifiers.knn import KNN_WEIGHTS, CaptionKNNClassifier, ImageKNNClassifier
from clipindex.classifiers.predictions import ensemble_table, prediction_table, write_predictions
from clipindex.classifiers.prompt import PromptClassifier
from clipindex.classifiers.prototype import PrototypeClassifier

__all__ = [
    "EXPECTED_FAILED_CHECKS",
    "KNN_WEIGHTS",
    "CaptionKNNClassifier",
    "FittedClassifier",
    "ImageKNNClassifier",
    "LinearProbeClassifier",
    "MLPClassifier",
    "MajorityVoteClassifier",
    "PromptClassifier",
    "PrototypeClassifier",
    "SoftVoteClassifier",
    "VectorClassifier",
    "ensemble_table",
    "fit_classifier",
    "majority_vote",
    "normalise",
    "prediction_table",
    "reject_below",
    "soft_vote",
    "softmax",
    "vote_shares",
    "write_predictions",
]
