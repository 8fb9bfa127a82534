"""Run a classifier on a store: support/test rows, shots, ensembles, abstention, metrics.

Everything here reads stored vectors (:func:`clipindex.store.open_index`); only prompt
texts are encoded (and cached in the store), and :func:`classify_images` encodes just
the new files it is given.

Rows: images whose vector is valid in every backbone asked for (skipped images are
neither support nor test) and whose label is one of the classes. Support rows are the
stored ``split == "support"`` rows and test rows the ``split == "test"`` ones; with
``shots=K``, K rows per class are drawn (seeded) from all those rows instead and every
other row is a test row.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex import classifiers as C
from clipindex.classifiers.templates import DEFAULT_TEMPLATE, check_template, get_templates
from clipindex.errors import DataError, UserInputError
from clipindex.files import atomic_write
from clipindex.metrics import Vector, classification_metrics

__all__ = [
    "METHODS",
    "CAPTION_METHODS",
    "ENSEMBLES",
    "MethodOptions",
    "ClassifyResult",
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
    caps = bi.captions
    if len(caps) == 0:
        raise DataError(
            f"the store {bi.path.parent} has no captions, so caption methods "
            f"({', '.join(CAPTION_METHODS)}) cannot run; use prompt, image-knn, "
            "linear-probe or mlp"
        )
    label_of = dict(zip(rows.tolist(), labels.tolist(), strict=True))
    owner = caps["image_row_id"].to_numpy(np.int64)
    keep = np.isin(owner, rows) & np.asarray(bi.caption_valid, bool)
    missing = sorted(set(labels) - {label_of[r] for r in owner[keep]})
    if missing:
        raise DataError(
            f"no support image of class(es) {', '.join(missing)} has a caption; caption "
            "methods need captions for every class (or use another --method)"
        )
    cap_rows = caps["row_id"].to_numpy(np.int64)[keep]
    return (bi.caption_vectors[cap_rows], np.array([label_of[r] for r in owner[keep]]),
            owner[keep])


def _prompt(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
            o: MethodOptions) -> Predictor:
    clf = C.PromptClassifier(templates=o.templates, class_names=dict(o.class_names))
    clf.fit(classes, encode_text=bi.text_vectors)
    return lambda x, q: _align(clf.predict_proba(x), clf.classes_, classes)


def _prototype(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
               o: MethodOptions) -> Predictor:
    vecs, cap_labels, _ = _support_captions(bi, rows, labels)
    clf = C.PrototypeClassifier().fit(vecs, cap_labels)
    return lambda x, q: _align(clf.predict_proba(x), clf.classes_, classes)


def _caption_knn(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
                 o: MethodOptions) -> Predictor:
    vecs, cap_labels, owners = _support_captions(bi, rows, labels)
    clf = C.CaptionKNNClassifier(k=o.k, weights=o.weights).fit(vecs, cap_labels,
                                                                image_rows=owners)
    return lambda x, q: _align(clf.predict_proba(x, query_rows=q), clf.classes_, classes)


def _image_knn(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
               o: MethodOptions) -> Predictor:
    clf = C.ImageKNNClassifier(k=o.k, weights=o.weights)
    clf.fit(bi.image_vectors[rows], labels, row_ids=rows)
    return lambda x, q: _align(clf.predict_proba(x, query_rows=q), clf.classes_, classes)


def _linear_probe(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
                  o: MethodOptions) -> Predictor:
    clf = C.LinearProbeClassifier(class_weight=o.class_weight)
    clf.fit(bi.image_vectors[rows], labels)
    return lambda x, q: _align(clf.predict_proba(x), clf.classes_, classes)


def _mlp(bi: Any, rows: np.ndarray, labels: np.ndarray, classes: list[str],
         o: MethodOptions) -> Predictor:
    clf = C.MLPClassifier(seed=o.seed).fit(bi.image_vectors[rows], labels)
    return lambda x, q: _align(clf.predict_proba(x), clf.classes_, classes)


METHODS: dict[str, Callable[..., Predictor]] = {
    "prompt": _prompt,
    "prototype": _prototype,
    "caption-knn": _caption_knn,
    "image-knn": _image_knn,
    "linear-probe": _linear_probe,
    "mlp": _mlp,
}


def _majority(probas: list[np.ndarray], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    # Probability columns of a majority vote are the backbones' vote shares.
    return C.majority_vote(probas, classes).astype(str), C.vote_shares(probas, classes)


def _soft(probas: list[np.ndarray], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    p = C.soft_vote(probas, classes)
    return np.asarray(classes)[p.argmax(axis=1)], p


ENSEMBLES: dict[str, Callable[[list[np.ndarray], list[str]], tuple[np.ndarray, np.ndarray]]] = {
    "majority": _majority,
    "soft": _soft,
}


# --------------------------------------------------------------------------- rows
def parse_classes(spec: str | Sequence[str] | None) -> tuple[list[str] | None, dict[str, str]]:
    """``"cat,dog"`` or ``"fields=field,roads=road"`` -> (labels, {label: prompt name}).

    Example
    -------
    >>> parse_classes("fields=field,roads")
    (['fields', 'roads'], {'fields': 'field'})
    """
    if spec is None:
        return None, {}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    labels, names = [], {}
    for item in (s.strip() for s in items):
        label, _, name = item.partition("=")
        if not label.strip():
            raise UserInputError(f"empty class in {spec!r}; give e.g. 'cat,dog'")
        labels.append(label.strip())
        if name.strip():
            names[label.strip()] = name.strip()
    if len(set(labels)) != len(labels):
        raise UserInputError(f"a class is listed twice in {spec!r}")
    return labels, names


def _store_classes(bi: Any) -> list[str]:
    known = [str(c) for c in bi.dataset_info.get("classes") or []]
    seen = set(known)
    known += sorted({str(v) for v in bi.images["label"]} - seen)
    return known


def _pick_classes(bi: Any, wanted: list[str] | None) -> list[str]:
    known = _store_classes(bi)
    if wanted is None:
        return known
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise UserInputError(
            f"Unknown class(es) {', '.join(map(repr, unknown))}. Known: {', '.join(known)}")
    if len(wanted) < 2:
        raise UserInputError("give at least two classes to classify between")
    return wanted


def _draw_shots(labels: np.ndarray, rows: np.ndarray, classes: list[str], shots: int,
                seed: int) -> np.ndarray:
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise UserInputError(f"--shots must be a positive integer, got {shots!r}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        pool = np.sort(rows[labels == c])
        if shots >= len(pool):
            raise UserInputError(
                f"--shots {shots} is too many: class {c!r} has only {len(pool)} usable "
                f"images (at least one must stay for testing); use --shots {max(len(pool) - 1, 1)}"
                " or fewer")
        picked.append(rng.choice(pool, size=shots, replace=False))
    return np.sort(np.concatenate(picked))


def _split_rows(bi_list: list[Any], classes: list[str], shots: int | None,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    images = bi_list[0].images
    valid = np.logical_and.reduce([np.asarray(b.image_valid, bool) for b in bi_list])
    labels = images["label"].astype(str).to_numpy()
    usable = valid & np.isin(labels, classes)
    rows = images["row_id"].to_numpy(np.int64)[usable]
    if shots is not None:
        support = _draw_shots(labels[usable], rows, classes, shots, seed)
        return support, np.setdiff1d(rows, support)
    split = images["split"].astype(str).to_numpy()[usable]
    return rows[split == "support"], rows[split == "test"]


# --------------------------------------------------------------------------- API
def _options(k: int, weights: str, seed: int, prompt: str | None, templates: str | None,
             names: Mapping[str, str], class_weight: str | None) -> MethodOptions:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserInputError(f"k must be a positive integer, got {k!r}")
    if weights not in C.KNN_WEIGHTS:
        raise UserInputError(f"Unknown weights {weights!r}. Known: {', '.join(C.KNN_WEIGHTS)}")
    if prompt is not None and templates is not None:
        raise UserInputError("give either a prompt or a template set, not both")
    tpl = (check_template(prompt),) if prompt is not None else get_templates(templates or "default")
    return MethodOptions(k=int(k), weights=weights, seed=int(seed), templates=tpl,
                         class_names=tuple(sorted(names.items())), class_weight=class_weight)


def _open(index_dir: str | os.PathLike[str], backbones: Sequence[str] | str) -> list[Any]:
    from clipindex.store import open_index

    names = [backbones] if isinstance(backbones, str) else list(backbones)
    if not names:
        raise UserInputError("give at least one backbone (--backbone NAME)")
    if len(set(names)) != len(names):
        raise UserInputError(f"a backbone is listed twice: {names}")
    return [open_index(index_dir, b) for b in names]


@dataclass(frozen=True)
class _Run:
    bis: list[Any]
    method: str
    ensemble: str | None
    classes: list[str]
    support: np.ndarray
    test: np.ndarray
    options: MethodOptions
    threshold: float | None


def _prepare(index_dir: Any, backbones: Any, method: str, ensemble: str | None,
             shots: int | None, k: int, seed: int, classes: Any, prompt: str | None,
             templates: str | None, reject_below: float | None, weights: str,
             class_weight: str | None) -> _Run:
    if method not in METHODS:
        raise UserInputError(f"Unknown method {method!r}. Known: {', '.join(METHODS)}")
    if ensemble is not None and ensemble not in ENSEMBLES:
        raise UserInputError(f"Unknown ensemble {ensemble!r}. Known: {', '.join(ENSEMBLES)}")
    if reject_below is not None:
        C.reject_below(np.zeros((0, 2)), reject_below)  # validates the threshold
    wanted, names = parse_classes(classes)
    opts = _options(k, weights, seed, prompt, templates, names, class_weight)
    bis = _open(index_dir, backbones)
    if len(bis) > 1 and ensemble is None:
        raise UserInputError(
            f"{len(bis)} backbones given: choose how to combine them with --ensemble "
            f"{' or '.join(ENSEMBLES)}")
    if method in CAPTION_METHODS and len(bis[0].captions) == 0:
        raise DataError(
            f"the store {Path(index_dir)} has no captions, so --method {method} cannot run; "
            "use prompt, image-knn, linear-probe or mlp")
    cls = _pick_classes(bis[0], wanted)
    support, test = _split_rows(bis, cls, shots, seed)
    if method != "prompt":
        have = set(bis[0].images["label"].astype(str).to_numpy()[support])
        lacking = [c for c in cls if c not in have]
        if lacking:
            raise DataError(
                f"no support rows for class(es) {', '.join(lacking)}; the store has no "
                "split == 'support' rows for them: use --shots K to draw K per class")
    return _Run(bis, method, ensemble, cls, support, test, opts, reject_below)


def _predictors(run: _Run) -> list[Predictor]:
    labels = run.bis[0].images["label"].astype(str).to_numpy()[run.support]
    return [METHODS[run.method](bi, run.support, labels, run.classes, run.options)
            for bi in run.bis]


def _combine(run: _Run, probas: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(probas) == 1:
        p = probas[0]
        pred = np.asarray(run.classes)[p.argmax(axis=1)]
    else:
        pred, p = ENSEMBLES[run.ensemble or "majority"](probas, run.classes)
    uncertain = (C.reject_below(p, run.threshold) if run.threshold is not None
                 else np.zeros(len(p), dtype=bool))
    return pred, p, uncertain


def _table(ids: Any, files: Sequence[str], true: Any, pred: np.ndarray, proba: np.ndarray,
           uncertain: np.ndarray, classes: list[str]) -> pd.DataFrame:
    cols: dict[str, Any] = {"row_id": ids, "file": list(files)}
    if true is not None:
        cols["true"] = true
    cols["predicted"] = pred.astype(str)
    for j, c in enumerate(classes):
        cols[f"p_{c}"] = proba[:, j].astype(np.float64)
    cols["uncertain"] = uncertain.astype(bool)
    return pd.DataFrame(cols)


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
) -> ClassifyResult:
    """Fit ``method`` on the support rows of a store and evaluate it on the test rows.

    Parameters
    ----------
    index_dir : path
        The store's dataset folder (``OUT/<dataset>``).
    backbones : str or list of str
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
    class_weight : {"auto", "balanced", None}
        Linear probe only; ``auto`` balances when the support classes differ in size.

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
    run = _prepare(index_dir, backbones, method, ensemble, shots, k, seed, classes, prompt,
                   templates, reject_below, weights, class_weight)
    if len(run.test) == 0:
        raise DataError(
            "no test rows: the store has no split == 'test' rows for these classes; use "
            "--shots K to draw a support set and test on the rest")
    images = run.bis[0].images
    true = images["label"].astype(str).to_numpy()[run.test]
    probas = [p(bi.image_vectors[run.test], run.test)
              for p, bi in zip(_predictors(run), run.bis, strict=True)]
    pred, proba, uncertain = _combine(run, probas)
    metrics = classification_metrics(true, pred, run.classes, uncertain)
    metrics.update(
        method=method, backbones=[bi.name for bi in run.bis], ensemble=run.ensemble
        if len(run.bis) > 1 else None, n_support=int(len(run.support)), shots=shots,
        seed=seed, reject_below=reject_below,
        k=run.options.k if method in ("caption-knn", "image-knn") else None,
        weights=run.options.weights if method in ("caption-knn", "image-knn") else None,
        templates=len(run.options.templates) if method == "prompt" else None,
    )
    per_backbone = {}
    if len(run.bis) > 1:
        for bi, p in zip(run.bis, probas, strict=True):
            one = classification_metrics(true, np.asarray(run.classes)[p.argmax(1)],
                                         run.classes)
            per_backbone[bi.name] = {key: one[key] for key in
                                     ("accuracy", "balanced_accuracy", "macro_f1")}
    table = _table(run.test, images["file"].to_numpy()[run.test], true, pred, proba,
                   uncertain, run.classes)
    return ClassifyResult(metrics=metrics, predictions=table, per_backbone=per_backbone)


def _encode_files(bi: Any, paths: Sequence[Path]) -> np.ndarray:
    vectors, skipped = bi.encoder().encode_images([str(p) for p in paths], workers=0,
                                                  progress=False)
    if skipped:
        i, reason = skipped[0]
        raise DataError(f"cannot classify {paths[i]}: {reason}")
    return C.normalise(vectors)


def classify_images(
    index_dir: str | os.PathLike[str],
    backbones: Sequence[str] | str,
    method: str,
    paths: Sequence[str | os.PathLike[str]],
    **options: Any,
) -> pd.DataFrame:
    """Classify new image files with ``method`` fitted on the store's support rows.

    Only ``paths`` are encoded (with each backbone's own encoder); takes the keyword
    options of :func:`classify`. Returns ``row_id`` (-1), ``file``, ``predicted``,
    ``p_<class>`` and ``uncertain`` per file, in the order given.

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
    keys = ("ensemble", "shots", "k", "seed", "classes", "prompt", "templates",
            "reject_below", "weights", "class_weight")
    unknown = set(options) - set(keys)
    if unknown:
        raise UserInputError(f"unknown option(s) {sorted(unknown)}; known: {', '.join(keys)}")
    defaults = dict(ensemble=None, shots=None, k=10, seed=0, classes=None, prompt=None,
                    templates=None, reject_below=None, weights="uniform", class_weight="auto")
    o = {**defaults, **options}
    run = _prepare(index_dir, backbones, method, o["ensemble"], o["shots"], o["k"], o["seed"],
                   o["classes"], o["prompt"], o["templates"], o["reject_below"], o["weights"],
                   o["class_weight"])
    probas = [p(_encode_files(bi, files), None)
              for p, bi in zip(_predictors(run), run.bis, strict=True)]
    pred, proba, uncertain = _combine(run, probas)
    return _table(np.full(len(files), -1, dtype=np.int64), [str(p) for p in files], None,
                  pred, proba, uncertain, run.classes)


def _write_parquet(frame: pd.DataFrame, fh: Any) -> None:
    frame.to_parquet(fh, index=False)


def _write_csv(frame: pd.DataFrame, fh: Any) -> None:
    fh.write(frame.to_csv(index=False).encode("utf-8"))


PREDICTION_WRITERS: dict[str, Callable[[pd.DataFrame, Any], None]] = {
    ".parquet": _write_parquet,
    ".csv": _write_csv,
}


def write_predictions(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a predictions table atomically, as parquet or CSV by the file's extension.

    Example
    -------
    >>> write_predictions(res.predictions, "preds.parquet")  # doctest: +SKIP
    PosixPath('preds.parquet')
    """
    out = Path(path)
    writer = PREDICTION_WRITERS.get(out.suffix.lower())
    if writer is None:
        raise UserInputError(
            f"cannot write predictions to {out}: use a .parquet or .csv file name")
    return atomic_write(out, lambda fh: writer(frame, fh))
