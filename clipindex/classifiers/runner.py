"""Run a classifier on a store: support/test rows, shots, ensembles, abstention, metrics.

Everything here reads stored vectors (:func:`clipindex.store.open_index`); only prompt
texts are encoded (and cached in the store), and :func:`classify_images` encodes just
the new files it is given.

Rows (:mod:`clipindex.classifiers.rows`): images whose vector is valid in every backbone
asked for (skipped images are neither support nor test) and whose label is one of the
classes. Support rows are the stored ``split == "support"`` rows and test rows the
``split == "test"`` ones; with ``shots=K``, K rows per class are drawn (seeded) from all
those rows instead and every other row is a test row. ``rows="all"`` predicts every
usable row instead of the test rows (the study protocol's zero-shot).

Example
-------
>>> from clipindex.classifiers.runner import classify
>>> res = classify("indexes/demo", ["tiny-vit"], "prototype")  # doctest: +SKIP
>>> round(res.metrics["accuracy"], 3), res.predictions.columns[:4].tolist()  # doctest: +SKIP
(0.83, ['row_id', 'file', 'true', 'predicted'])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.checks import positive_int
from clipindex.classifiers import abstain as A
from clipindex.classifiers import ensemble as E
from clipindex.classifiers.base import normalise
from clipindex.classifiers.ensemble import ENSEMBLES
from clipindex.classifiers.groups import check_group_column, group_table
from clipindex.classifiers.heads import LinearProbeClassifier, MLPClassifier
from clipindex.classifiers.knn import KNN_WEIGHTS, CaptionKNNClassifier, ImageKNNClassifier
from clipindex.classifiers.predictions import (
    PREDICTION_WRITERS,
    prediction_table,
    write_predictions,
)
from clipindex.classifiers.prompt import PromptClassifier
from clipindex.classifiers.prototype import PrototypeClassifier
from clipindex.classifiers.rows import (
    ROWS,
    caption_columns,
    image_labels,
    parse_classes,
    pick_classes,
    split_rows,
)
from clipindex.classifiers.templates import DEFAULT_TEMPLATE, check_template, get_templates
from clipindex.errors import DataError, UserInputError
from clipindex.metrics import Vector, classification_metrics

__all__ = [
    "METHODS",
    "CAPTION_METHODS",
    "ENSEMBLES",
    "MethodOptions",
    "ClassifyResult",
    "PREDICTION_WRITERS",
    "ROWS",
    "classify",
    "classify_images",
    "parse_classes",
    "write_predictions",
]

CAPTION_METHODS = ("prototype", "caption-knn")

# A predictor maps (query vectors, query row ids or None) to probabilities (n, C) with
# columns in the evaluation's class order.
Predictor = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class MethodOptions:
    """Hyperparameters shared by the methods (each reads the ones it needs)."""

    k: int = 10
    weights: str = "uniform"
    seed: int = 0
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    class_names: tuple[tuple[str, str], ...] = ()
    class_weight: str | None = "auto"


@dataclass(frozen=True)
class ClassifyResult:
    """What :func:`classify` returns: the metrics dict and one predictions row per test row.

    ``metrics`` holds ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``n``,
    ``classes``, ``per_class``, ``confusion`` (rows = true), ``coverage``,
    ``accuracy_covered`` and the run's settings; ``predictions`` has ``row_id``, ``file``,
    ``true``, ``predicted``, one ``p_<class>`` column per class and ``uncertain``.
    """

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    per_backbone: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Things the user should know (a ``k`` capped to the support set), for stderr.
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The metrics (with ``per_backbone`` when ensembling), JSON-ready."""
        out = dict(self.metrics)
        if self.per_backbone:
            out["per_backbone"] = self.per_backbone
        return _jsonable(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if np.isnan(obj) else float(obj)
    return obj


# --------------------------------------------------------------------------- methods
def _align(proba: np.ndarray, have: Vector, want: Sequence[str]) -> np.ndarray:
    """Reorder probability columns from ``have`` to ``want`` (0 for missing classes)."""
    pos = {str(c): i for i, c in enumerate(have)}
    out = np.zeros((len(proba), len(want)))
    for j, c in enumerate(want):
        if c in pos:
            out[:, j] = proba[:, pos[c]]
    return out


def _support_captions(bi: Any, rows: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    owner, cap_ids, cap_valid = caption_columns(bi)
    if len(owner) == 0:
        raise DataError(
            f"the store {bi.path.parent} has no captions, so caption methods "
            f"({', '.join(CAPTION_METHODS)}) cannot run; use prompt, image-knn, "
            "linear-probe or mlp"
        )
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    code_of = np.full(len(bi.image_valid), -1, dtype=np.int64)  # image row -> class code
    code_of[rows] = codes.ravel()
    cap_code = code_of[owner]
    keep = (cap_code >= 0) & cap_valid
    kept = cap_code[keep]
    missing = classes[np.bincount(kept, minlength=len(classes)) == 0].tolist()
    if missing:
        raise DataError(
            f"no support image of class(es) {', '.join(sorted(missing))} has a caption; "
            "caption methods need captions for every class (or use another --method)"
        )
    return bi.caption_vectors[cap_ids[keep]], classes[kept], owner[keep]


def _prompt(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
            o: MethodOptions) -> Predictor:
    clf = PromptClassifier(classes, encode_text=bi.text_vectors, templates=o.templates,
                           class_names=dict(o.class_names)).fit()
    return lambda x, q: _align(clf.predict_proba(x), clf.classes_, classes)


def _prototype(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
               o: MethodOptions) -> Predictor:
    vecs, cap_labels, _ = _support_captions(bi, rows, labels)
    clf = PrototypeClassifier().fit(vecs, cap_labels)
    return lambda x, q: _align(clf.predict_proba(x), clf.classes_, classes)


def _caption_knn(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
                 o: MethodOptions) -> Predictor:
    vecs, cap_labels, owners = _support_captions(bi, rows, labels)
    clf = CaptionKNNClassifier(k=o.k, weights=o.weights).fit(vecs, cap_labels,
                                                              image_rows=owners)
    return lambda x, q: _align(clf.predict_proba(x, query_rows=q), clf.classes_, classes)


def _image_knn(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
               o: MethodOptions) -> Predictor:
    clf = ImageKNNClassifier(k=o.k, weights=o.weights)
    clf.fit(bi.image_vectors[rows], labels, row_ids=rows)
    return lambda x, q: _align(clf.predict_proba(x, query_rows=q), clf.classes_, classes)


def _linear_probe(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
                  o: MethodOptions) -> Predictor:
    clf = LinearProbeClassifier(class_weight=o.class_weight)
    clf.fit(bi.image_vectors[rows], labels)
    return lambda x, q: _align(clf.predict_proba(x), clf.classes_, classes)


def _mlp(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
         o: MethodOptions) -> Predictor:
    clf = MLPClassifier(seed=o.seed).fit(bi.image_vectors[rows], labels)
    return lambda x, q: _align(clf.predict_proba(x), clf.classes_, classes)


METHODS: dict[str, Callable[..., Predictor]] = {
    "prompt": _prompt,
    "prototype": _prototype,
    "caption-knn": _caption_knn,
    "image-knn": _image_knn,
    "linear-probe": _linear_probe,
    "mlp": _mlp,
}


# --------------------------------------------------------------------------- API
@dataclass(frozen=True)
class _Request:
    """The keyword options of :func:`classify` (``classify_images`` takes all but ``rows``)."""

    ensemble: str | None = None
    shots: int | None = None
    k: int = 10
    seed: int = 0
    classes: str | Sequence[str] | None = None
    prompt: str | None = None
    templates: str | None = None
    reject_below: float | None = None
    weights: str = "uniform"
    class_weight: str | None = "auto"
    uncertain_band: str | tuple[float, float] | None = None
    rows: str = "test"


def _options(req: _Request, names: Mapping[str, str]) -> MethodOptions:
    k = req.k
    positive_int("k", k)
    if req.weights not in KNN_WEIGHTS:
        raise UserInputError(
            f"Unknown weights {req.weights!r}. Known: {', '.join(KNN_WEIGHTS)}")
    if req.prompt is not None and req.templates is not None:
        raise UserInputError("give either a prompt or a template set, not both")
    tpl = ((check_template(req.prompt),) if req.prompt is not None
           else get_templates(req.templates or "default"))
    return MethodOptions(k=int(k), weights=req.weights, seed=int(req.seed), templates=tpl,
                         class_names=tuple(sorted(names.items())),
                         class_weight=req.class_weight)


def _open(index_dir: str | os.PathLike[str], backbones: Sequence[str] | str) -> list[Any]:
    from clipindex.store import open_index

    names = [backbones] if isinstance(backbones, str) else list(backbones)
    if not names:
        raise UserInputError("give at least one backbone (--backbone NAME)")
    if len(set(names)) != len(names):
        raise UserInputError(f"a backbone is listed twice: {names}")
    return [b if hasattr(b, "image_vectors") else open_index(index_dir, b) for b in names]


@dataclass(frozen=True)
class _Run:
    bis: list[Any]
    method: str
    req: _Request
    classes: list[str]
    support: np.ndarray
    test: np.ndarray  # the rows to predict (``rows="all"``: every usable row)
    options: MethodOptions
    notes: tuple[str, ...] = ()


def _cap_k(bis: list[Any], method: str, support: np.ndarray, opts: MethodOptions
           ) -> tuple[MethodOptions, tuple[str, ...]]:
    """A k-NN ``k`` larger than the support set is capped to it, with a note."""
    if method not in ("caption-knn", "image-knn"):
        return opts, ()
    if method == "image-knn":
        n, noun = len(support), "support images"
    else:
        own = np.isin(bis[0].captions["image_row_id"].to_numpy(), support)
        n, noun = int(own.sum()), "support captions"
    if opts.k <= n or n == 0:
        return opts, ()
    note = (f"k={opts.k} is larger than the {n} {noun}; using k={n} (every one of them "
            "votes, so predictions lean to the largest class)")
    return replace(opts, k=n), (note,)


def _check_request(method: str, req: _Request) -> None:
    if method not in METHODS:
        raise UserInputError(f"Unknown method {method!r}. Known: {', '.join(METHODS)}")
    if req.ensemble is not None and req.ensemble not in ENSEMBLES:
        raise UserInputError(f"Unknown ensemble {req.ensemble!r}. Known: {', '.join(ENSEMBLES)}")
    if req.rows not in ROWS:
        raise UserInputError(f"Unknown rows {req.rows!r}. Known: {', '.join(ROWS)}")
    if req.reject_below is not None:
        E.reject_below(np.zeros((0, 2)), req.reject_below)  # validates the threshold
    if req.uncertain_band is not None:
        A.parse_band(req.uncertain_band)


def _prepare(index_dir: Any, backbones: Any, method: str, req: _Request) -> _Run:
    _check_request(method, req)
    _options(req, parse_classes(req.classes)[1])  # bad options fail before any store opens
    return _prepare_opened(_open(index_dir, backbones), method, req)


def _prepare_opened(bis: list[Any], method: str, req: _Request) -> _Run:
    """The run of ``method`` on already opened stores (``_prepare`` after opening)."""
    _check_request(method, req)
    wanted, names = parse_classes(req.classes)
    opts = _options(req, names)
    if len(bis) > 1 and req.ensemble is None:
        raise UserInputError(
            f"{len(bis)} backbones given: choose how to combine them with --ensemble "
            f"{' or '.join(ENSEMBLES)}")
    if method in CAPTION_METHODS and len(bis[0].captions) == 0:
        raise DataError(
            f"the store {bis[0].path.parent} has no captions, so --method {method} cannot run; "
            "use prompt, image-knn, linear-probe or mlp")
    cls = pick_classes(bis[0], wanted)
    if method == "prompt" and req.rows == "all":  # zero-shot on every row: no support
        support, test = split_rows(bis, cls, None, req.seed, "all")
        return _Run(bis, method, req, cls, support[:0], test, opts)
    support, test = split_rows(bis, cls, req.shots, req.seed, req.rows)
    if method != "prompt":
        have = set(image_labels(bis[0])[support].tolist())
        lacking = [c for c in cls if c not in have]
        if lacking:
            raise DataError(
                f"no support rows for class(es) {', '.join(lacking)}; the store has no "
                "split == 'support' rows for them: use --shots K to draw K per class")
    opts, notes = _cap_k(bis, method, support, opts)
    return _Run(bis, method, req, cls, support, test, opts, notes)


def _predictors(run: _Run) -> list[Predictor]:
    labels = image_labels(run.bis[0])[run.support]
    return [METHODS[run.method](bi, run.support, labels, run.classes, run.options)
            for bi in run.bis]


def _combine(run: _Run, probas: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(probas) == 1:
        p = probas[0]
        pred = np.asarray(run.classes)[p.argmax(axis=1)]
    else:
        pred, p = ENSEMBLES[run.req.ensemble or "majority"](probas, run.classes)
    threshold = run.req.reject_below
    uncertain = (E.reject_below(p, threshold) if threshold is not None
                 else np.zeros(len(p), dtype=bool))
    if run.req.uncertain_band is not None:  # two classes: positive = the second class
        uncertain |= A.uncertain_band(p, *A.parse_band(run.req.uncertain_band))
    return pred, p, uncertain


def _settings(run: _Run) -> dict[str, Any]:
    """The run's settings, recorded beside the metrics."""
    req, o, knn = run.req, run.options, run.method in ("caption-knn", "image-knn")
    return dict(
        method=run.method, backbones=[bi.name for bi in run.bis],
        ensemble=req.ensemble if len(run.bis) > 1 else None,
        n_support=int(len(run.support)), shots=req.shots, seed=req.seed,
        reject_below=req.reject_below,
        uncertain_band=None if req.uncertain_band is None else list(
            A.parse_band(req.uncertain_band)),
        positive_class=run.classes[1] if req.uncertain_band is not None else None,
        k=o.k if knn else None,
        weights=o.weights if knn else None,
        templates=len(o.templates) if run.method == "prompt" else None,
    )


def _per_backbone(run: _Run, true: np.ndarray, probas: list[np.ndarray]
                  ) -> dict[str, dict[str, float]]:
    """Each backbone's own metrics before the vote (empty for one backbone)."""
    out = {}
    if len(run.bis) > 1:
        for bi, p in zip(run.bis, probas, strict=True):
            one = classification_metrics(true, np.asarray(run.classes)[p.argmax(1)],
                                         run.classes)
            out[bi.name] = {key: one[key] for key in
                            ("accuracy", "balanced_accuracy", "macro_f1")}
    return out


def classify(
    index_dir: str | os.PathLike[str],
    backbones: Sequence[str] | str,
    method: str,
    *,
    ensemble: str | None = None,
    shots: int | None = None,
    k: int = 10,
    seed: int = 0,
    classes: str | Sequence[str] | None = None,
    prompt: str | None = None,
    templates: str | None = None,
    reject_below: float | None = None,
    weights: str = "uniform",
    class_weight: str | None = "auto",
    rows: str = "test",
    uncertain_band: str | tuple[float, float] | None = None,
    group_by: str | None = None,
) -> ClassifyResult:
    """Fit ``method`` on the support rows of a store and evaluate it on the test rows.

    Parameters
    ----------
    index_dir : path
        The store's dataset folder (``OUT/<dataset>``).
    backbones : str or list of str (or of stores ``open_index`` opened: not reopened)
        One backbone, or several combined by ``ensemble``.
    method : {"prompt", "prototype", "caption-knn", "image-knn", "linear-probe", "mlp"}
    ensemble : {"majority", "soft"}, optional
        Required with several backbones. ``majority``: probability columns are the
        backbones' vote shares; ``soft``: the mean probability.
    shots : int, optional
        Draw this many support rows per class (``seed``) from all usable rows and test
        on the rest, instead of the stored ``split``.
    k, weights
        k-NN neighbours and vote weighting (``uniform`` / ``similarity``).
    classes : "a,b" or list, optional
        Restrict to these labels; ``label=name`` puts ``name`` in the prompts.
    prompt, templates
        One prompt template with ``{}``, or a template set (``default`` / ``imagenet``).
    reject_below : float, optional
        Mark rows whose top probability is below this as uncertain.
    uncertain_band : "LO,HI" or (lo, hi), optional
        Two classes only: mark rows whose positive-class probability (the second class
        of the run's order) is in [LO, HI] as uncertain (:mod:`.abstain`).
    group_by : str, optional
        A column of ``images.parquet``: ``metrics["groups"]`` gets accuracy and n per
        group, the gap and the bias (:func:`clipindex.classifiers.groups.group_table`).
    class_weight : {"auto", "balanced", None}
        Linear probe only; ``auto`` balances when the support classes differ in size.
    rows : {"test", "all"}
        Predict the test rows, or every usable row (support rows included; the study
        protocol's zero-shot). With ``"all"``, ``prompt`` fits on no row
        (``n_support`` 0) and a fitted method also predicts its own support rows.

    Returns
    -------
    ClassifyResult

    Example
    -------
    >>> res = classify("indexes/demo", ["tiny-vit", "tiny-rn", "tiny-vit-s"], "prompt",
    ...                ensemble="majority", reject_below=0.9)  # doctest: +SKIP
    >>> res.metrics["coverage"] <= 1.0  # doctest: +SKIP
    True
    """
    req = _Request(ensemble=ensemble, shots=shots, k=k, seed=seed, classes=classes,
                   prompt=prompt, templates=templates, reject_below=reject_below,
                   weights=weights, class_weight=class_weight, rows=rows,
                   uncertain_band=uncertain_band)
    run = _prepare(index_dir, backbones, method, req)
    if group_by is not None:
        check_group_column(run.bis[0].images, group_by)
    if len(run.test) == 0:
        raise DataError(
            "no test rows: the store has no split == 'test' rows for these classes; use "
            "--shots K to draw a support set and test on the rest")
    images = run.bis[0].images
    true = image_labels(run.bis[0])[run.test]
    probas = [p(bi.image_vectors[run.test], run.test)
              for p, bi in zip(_predictors(run), run.bis, strict=True)]
    pred, proba, uncertain = _combine(run, probas)
    metrics = classification_metrics(true, pred, run.classes, uncertain)
    metrics.update(_settings(run))
    table = prediction_table(run.test, images["file"].array.take(run.test), true, pred, proba,
                             run.classes, uncertain=uncertain)
    if group_by is not None:
        metrics["groups"] = group_table(table, images, group_by).to_dict(orient="records")
    return ClassifyResult(metrics=metrics, predictions=table,
                          per_backbone=_per_backbone(run, true, probas), notes=run.notes)


def _encode_files(bi: Any, paths: Sequence[Path]) -> np.ndarray:
    vectors, skipped = bi.encoder().encode_images([str(p) for p in paths], workers=0,
                                                  progress=False)
    if skipped:
        i, reason = skipped[0]
        raise DataError(f"cannot classify {paths[i]}: {reason}")
    return normalise(vectors)


#: The keyword options :func:`classify_images` takes (those of :func:`classify` but rows).
IMAGE_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(_Request) if f.name != "rows")


def classify_images(
    index_dir: str | os.PathLike[str],
    backbones: Sequence[str] | str,
    method: str,
    paths: Sequence[str | os.PathLike[str]],
    **options: Any,
) -> pd.DataFrame:
    """Classify new image files with ``method`` fitted on the store's support rows.

    Only ``paths`` are encoded (with each backbone's own encoder); takes the keyword
    options of :func:`classify` (all but ``rows``). Returns ``row_id`` (-1), ``file``,
    ``predicted``, ``p_<class>`` and ``uncertain`` per file, in the order given.

    Example
    -------
    >>> classify_images("indexes/demo", "tiny-vit", "prototype",
    ...                 ["my_cat.jpg"])["predicted"].tolist()  # doctest: +SKIP
    ['cat']
    """
    files = [Path(p) for p in paths]
    if not files:
        raise UserInputError("give at least one image file (--image PATH)")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise UserInputError(f"image file(s) not found: {', '.join(missing)}")
    unknown = set(options) - set(IMAGE_OPTIONS)
    if unknown:
        raise UserInputError(
            f"unknown option(s) {sorted(unknown)}; known: {', '.join(IMAGE_OPTIONS)}")
    run = _prepare(index_dir, backbones, method, _Request(**options))
    probas = [p(_encode_files(bi, files), None)
              for p, bi in zip(_predictors(run), run.bis, strict=True)]
    pred, proba, uncertain = _combine(run, probas)
    table = prediction_table(np.full(len(files), -1, dtype=np.int64), [str(p) for p in files],
                             None, pred, proba, run.classes, uncertain=uncertain)
    table.attrs["notes"] = list(run.notes)
    return table
