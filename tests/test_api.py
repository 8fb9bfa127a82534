"""The public API: pinned like httpx pins its exports, and light to import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import clipindex

EXPECTED = {
    "__version__",
    "ClipindexError", "ConfigError", "DataError", "IncompleteIndexError",
    "IndexMismatchError", "MissingExtraError", "ModelLoadError", "NotFittedError",
    "UserInputError",
    "Dataset", "load_dataset", "make_world",
    "Encoder", "load_encoder", "resolve_backbone",
    "BackboneIndex", "build_store", "add_to_store", "compact_store", "open_index",
    "store_info", "import_store", "export_store",
    "PromptClassifier", "PrototypeClassifier", "CaptionKNNClassifier", "ImageKNNClassifier",
    "LinearProbeClassifier", "MLPClassifier", "MajorityVoteClassifier", "SoftVoteClassifier",
    "majority_vote", "soft_vote", "reject_below", "classify", "classify_images",
    "accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix", "classification_metrics",
    "recall_at_k_text_to_image", "recall_at_k_image_to_text",
    "search_text", "search_image", "search_captions", "audit_store", "run_bench", "run_demo",
    "write_report",
    "explain_image",
}
CLASSIFIERS = ("PromptClassifier", "PrototypeClassifier", "CaptionKNNClassifier",
               "ImageKNNClassifier", "LinearProbeClassifier", "MLPClassifier",
               "MajorityVoteClassifier", "SoftVoteClassifier")


def test_public_api_is_pinned() -> None:
    assert set(clipindex.__all__) == EXPECTED


def test_every_export_resolves_to_a_callable_or_class() -> None:
    for name in clipindex.__all__:
        value = getattr(clipindex, name)
        if name != "__version__":
            assert callable(value), name


def test_exported_classifiers_are_sklearn_estimators_cloned_with_no_arguments() -> None:
    from sklearn.base import BaseEstimator, ClassifierMixin, clone

    for name in CLASSIFIERS:
        cls = getattr(clipindex, name)
        assert issubclass(cls, BaseEstimator) and issubclass(cls, ClassifierMixin), name
        twin = clone(cls())
        assert type(twin) is cls and twin.get_params() == cls().get_params(), name


def test_not_fitted_is_both_sklearns_error_and_ours() -> None:
    import numpy as np
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    assert issubclass(clipindex.NotFittedError, clipindex.ClipindexError)
    assert issubclass(clipindex.NotFittedError, SklearnNotFittedError)
    for name in CLASSIFIERS:
        with pytest.raises(clipindex.NotFittedError):
            getattr(clipindex, name)().predict(np.ones((2, 4), dtype="float32"))


def _annotation_uses_any(annotation: object) -> bool:
    import re

    # JSON documents (manifests, records) are ``dict[str, Any]``: their values have no
    # narrower type. Anything else that says Any could say more.
    text = str(annotation).replace("dict[str, Any]", "JSONDict")
    return bool(re.search(r"\bAny\b", text))


def test_public_signatures_are_typed_without_any() -> None:
    """Every parameter and return of an exported function (and class ``__init__``) is
    annotated, and with a concrete type where one exists: ``Any`` is allowed only inside
    ``dict[str, Any]`` (a JSON document) and for ``**overrides`` passed to a config."""
    import inspect

    untyped = []
    for name in sorted(clipindex.__all__):
        value = getattr(clipindex, name)
        if name == "__version__" or (inspect.isclass(value) and issubclass(value,
                                                                       BaseException)):
            continue
        func = value.__init__ if inspect.isclass(value) else value
        sig = inspect.signature(func)
        for pname, param in sig.parameters.items():
            if pname == "self" or param.kind is param.VAR_KEYWORD:
                continue
            if param.annotation is inspect.Parameter.empty or _annotation_uses_any(
                    param.annotation):
                untyped.append(f"{name}({pname}: {param.annotation})")
        if not inspect.isclass(value) and (sig.return_annotation is inspect.Signature.empty
                                           or _annotation_uses_any(sig.return_annotation)):
            untyped.append(f"{name} -> {sig.return_annotation}")
    assert not untyped, "\n".join(untyped)


def test_import_is_light_and_side_effect_free() -> None:
    code = ("import sys, logging, clipindex; "
            "heavy = [m for m in ('torch', 'faiss', 'open_clip') if m in sys.modules]; "
            "print(heavy, logging.getLogger().handlers)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[] []"


def test_library_never_imports_the_cli() -> None:
    code = ("import sys, clipindex, clipindex.store, clipindex.classifiers.runner, "
            "clipindex.search, clipindex.bench; "
            " print(any(m.startswith('clipindex.cli') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_errors_are_value_errors_where_the_user_is_at_fault() -> None:
    assert issubclass(clipindex.UserInputError, ValueError)
    assert issubclass(clipindex.DataError, clipindex.UserInputError)
    assert issubclass(clipindex.MissingExtraError, ImportError)


def test_atomic_writes_get_ordinary_permissions(tmp_path) -> None:
    import os
    import stat

    from clipindex.files import atomic_write_bytes

    mask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_usage_errors_are_one_line_with_exit_2(tmp_path) -> None:
    from click.testing import CliRunner

    from clipindex.cli import main

    cases = [
        ["build", str(tmp_path / "missing.yaml"), "--backbone", "tiny-rn"],
        ["classify", "--index", str(tmp_path), "--backbone", "tiny-rn"],
        ["classify", "--index", str(tmp_path), "--backbone", "tiny-rn", "--method", "foo"],
        ["no-such-command"],
    ]
    for args in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)
        assert "--help" in lines[0] and "Traceback" not in result.output


def _readme_block(heading: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "python-api.md").read_text()
    section = text.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_sklearn_route_runs_on_a_store(demo_store) -> None:
    """The docs' scikit-learn example (docs/python-api.md), run as written on the demo
    store: the probe and the prototypes it fits beat chance on the rows it did not fit on."""
    code = _readme_block("## The scikit-learn route").replace('"indexes/demo"',
                                                               repr(str(demo_store)))
    scope: dict = {}
    exec(compile(code, "python-api.md", "exec"), scope)  # noqa: S102 - our own docs
    assert scope["accuracy"] > 0.5  # five classes: chance is 0.2
    held = scope["usable"] & ~scope["support"]
    proto_acc = (scope["proto"].predict(scope["X"][held]) == scope["y"][held]).mean()
    zero_acc = (scope["zero"].predict(scope["X"][held]) == scope["y"][held]).mean()
    assert proto_acc > 0.5 and zero_acc > 0.5, (proto_acc, zero_acc)


@pytest.mark.parametrize("backbone", [None, "", 3, "   "])
def test_open_index_refuses_a_backbone_that_is_not_a_name(demo_store, backbone) -> None:
    with pytest.raises(clipindex.UserInputError, match="backbone must be a name"):
        clipindex.open_index(demo_store, backbone)


@pytest.mark.parametrize(("queries", "error", "needle"), [
    ("a photo of a cow", clipindex.UserInputError, "not text: encode it first"),
    (["a cow", "a dog"], clipindex.UserInputError, "not text: encode it first"),
    ({"a": 1}, clipindex.UserInputError, "must be numbers, got dict"),
    ("nan", clipindex.UserInputError, "1 query vector(s) hold NaN"),
    ("wrong dim", clipindex.IndexMismatchError, "stores dim"),
])
def test_search_refuses_queries_that_are_not_vectors_of_its_dim(demo_store, queries, error,
                                                                needle) -> None:
    import numpy as np

    idx = clipindex.open_index(demo_store, "tiny-vit")
    good = idx.image_vectors[:2]
    if queries == "nan":
        queries = np.vstack([good[:1], np.full((1, idx.dim), np.nan)])
    elif queries == "wrong dim":
        queries = np.zeros((1, idx.dim + 1), dtype=np.float32)
    with pytest.raises(error) as err:
        idx.search(queries, 3)
    assert needle in str(err.value) and "\n" not in str(err.value)
    scores, ids = idx.search(good, 3)  # the same index still answers vectors
    assert ids[:, 0].tolist() == [0, 1] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
