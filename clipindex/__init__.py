"""clipindex: CLIP embeddings encoded once per backbone into FAISS indexes.

Everything after the store (classifiers, search, benchmarks, reports) reads
stored vectors; nothing re-encodes an image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from clipindex.errors import (  # noqa: E402
    ClipindexError,
    ConfigError,
    DataError,
    IncompleteIndexError,
    IndexMismatchError,
    MissingExtraError,
    ModelLoadError,
    UserInputError,
)

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from clipindex.audit import audit_store
    from clipindex.bench import run_bench
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
        reject_below,
        soft_vote,
    )
    from clipindex.classifiers.runner import classify, classify_images
    from clipindex.demo import run_demo
    from clipindex.demo.world import make_world
    from clipindex.encode import Encoder, load_encoder, resolve_backbone
    from clipindex.errors import NotFittedError
    from clipindex.explain import explain_image
    from clipindex.metrics import (
        accuracy,
        balanced_accuracy,
        classification_metrics,
        confusion_matrix,
        macro_f1,
        recall_at_k_image_to_text,
        recall_at_k_text_to_image,
    )
    from clipindex.report import write_report
    from clipindex.search import search_captions, search_image, search_text
    from clipindex.sources import Dataset, load_dataset
    from clipindex.store import (
        BackboneIndex,
        add_to_store,
        build_store,
        compact_store,
        export_store,
        import_store,
        open_index,
        store_info,
    )

# The public API, pinned (tests/test_api.py): the pipeline's stages in order.
__all__ = [
    "__version__",
    # errors
    "ClipindexError",
    "ConfigError",
    "DataError",
    "IncompleteIndexError",
    "IndexMismatchError",
    "MissingExtraError",
    "ModelLoadError",
    "NotFittedError",
    "UserInputError",
    # sources
    "Dataset",
    "load_dataset",
    "make_world",
    # encode
    "Encoder",
    "load_encoder",
    "resolve_backbone",
    # store
    "BackboneIndex",
    "build_store",
    "add_to_store",
    "compact_store",
    "export_store",
    "import_store",
    "open_index",
    "store_info",
    # classifiers (scikit-learn estimators on stored vectors)
    "PromptClassifier",
    "PrototypeClassifier",
    "CaptionKNNClassifier",
    "ImageKNNClassifier",
    "LinearProbeClassifier",
    "MLPClassifier",
    "MajorityVoteClassifier",
    "SoftVoteClassifier",
    "majority_vote",
    "soft_vote",
    "reject_below",
    "classify",
    "classify_images",
    # metrics
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "confusion_matrix",
    "classification_metrics",
    "recall_at_k_text_to_image",
    "recall_at_k_image_to_text",
    # search, audit, bench, report, explain
    "search_text",
    "search_image",
    "search_captions",
    "audit_store",
    "run_bench",
    "run_demo",
    "write_report",
    "explain_image",
]

# Everything but the errors comes from modules that import torch, faiss or sklearn, so it
# is imported on first use and ``import clipindex`` stays light. Name -> module.
_LAZY: dict[str, str] = {
    "NotFittedError": "clipindex.errors",
    "Dataset": "clipindex.sources",
    "load_dataset": "clipindex.sources",
    "make_world": "clipindex.demo.world",
    "Encoder": "clipindex.encode",
    "load_encoder": "clipindex.encode",
    "resolve_backbone": "clipindex.encode",
    "BackboneIndex": "clipindex.store",
    "build_store": "clipindex.store",
    "add_to_store": "clipindex.store",
    "compact_store": "clipindex.store",
    "export_store": "clipindex.store",
    "import_store": "clipindex.store",
    "open_index": "clipindex.store",
    "store_info": "clipindex.store",
    **{name: "clipindex.classifiers" for name in (
        "PromptClassifier", "PrototypeClassifier", "CaptionKNNClassifier",
        "ImageKNNClassifier", "LinearProbeClassifier", "MLPClassifier",
        "MajorityVoteClassifier", "SoftVoteClassifier", "majority_vote", "soft_vote",
        "reject_below")},
    "classify": "clipindex.classifiers.runner",
    "classify_images": "clipindex.classifiers.runner",
    **{name: "clipindex.metrics" for name in (
        "accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix",
        "classification_metrics", "recall_at_k_text_to_image", "recall_at_k_image_to_text")},
    "search_text": "clipindex.search",
    "search_image": "clipindex.search",
    "search_captions": "clipindex.search",
    "audit_store": "clipindex.audit",
    "run_bench": "clipindex.bench",
    "run_demo": "clipindex.demo",
    "write_report": "clipindex.report",
    "explain_image": "clipindex.explain",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clipindex' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
