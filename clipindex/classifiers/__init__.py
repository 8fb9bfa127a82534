"""Classifiers: queries against stored vectors, in scikit-learn's shape.

Owns: the estimators (prompt, prototype, caption/image k-NN, linear probe, MLP), the
ensembles and abstention, the prompt template sets, and the runner that evaluates a
method on a store (support/test split, shots, ensembles) into one predictions table.
May import: ``clipindex.errors``, ``clipindex.metrics``, ``clipindex.files``,
``clipindex.store``. Never decoding (``clipindex.encode.decode``), search, bench,
report or the CLI.
"""

from clipindex.classifiers.estimators import (
    KNN_WEIGHTS,
    CaptionKNNClassifier,
    ImageKNNClassifier,
    LinearProbeClassifier,
    MLPClassifier,
    PromptClassifier,
    PrototypeClassifier,
    majority_vote,
    normalise,
    reject_below,
    soft_vote,
    softmax,
    vote_shares,
)

__all__ = [
    "KNN_WEIGHTS",
    "CaptionKNNClassifier",
    "ImageKNNClassifier",
    "LinearProbeClassifier",
    "MLPClassifier",
    "PromptClassifier",
    "PrototypeClassifier",
    "majority_vote",
    "normalise",
    "reject_below",
    "soft_vote",
    "softmax",
    "vote_shares",
]
