"""Zero-shot figures of tiny backbone folders on a demo world, by the product's own route.

No parallel pipeline: the study images of a world split are a :class:`~clipindex.sources.
Dataset` (:func:`study_dataset`: the study's filters of :mod:`clipindex.sources`, all
rows ``test``, no captions), encoded into a store (:func:`clipindex.store.build_store`)
and classified by the product's ``prompt`` method (:class:`~clipindex.classifiers.
PromptClassifier` through :func:`clipindex.classifiers.runner.classify`, template "a
photo of a {}"): the same figures ``clipindex demo`` reports.
:func:`summarize` turns predictions, labels and cause tags into the figures the tiny
backbones are held to (accuracy, pairwise disagreement, accuracy per failure cause vs
clean images).

Part of the demo package (above store and classifiers, docs/architecture.md); the
product path never imports it.
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.config import DatasetConfig
from clipindex.errors import DataError
from clipindex.sources import Dataset, load_dataset

__all__ = [
    "TARGET_CLASSES",
    "STUDY_TEMPLATE",
    "StudyPredictions",
    "study_dataset",
    "zero_shot_predictions",
    "summarize",
    "evaluate_world",
]

TARGET_CLASSES: tuple[str, ...] = ("cat", "dog", "cow", "sheep", "horse")
STUDY_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class StudyPredictions:
    """Zero-shot predictions of each backbone folder on a world split's study images."""

    classes: tuple[str, ...]
    labels: np.ndarray  # index into ``classes`` (the instances label, wrong or not)
    causes: tuple[tuple[str, ...], ...]  # failure causes the generator applied (sorted)
    predictions: dict[str, np.ndarray]  # folder name -> predicted class index per image
    files: tuple[str, ...]  # relative to the world folder, in the rows' order


def study_dataset(world_dir: str | Path, split: str = "val",
                  classes: Sequence[str] = TARGET_CLASSES) -> Dataset:
    """The images of ``split`` with no ``person`` and exactly one target class, all rows
    ``test`` (no sample, no support draw), with the world's ``causes`` column.

    Examples
    --------
    >>> ds = study_dataset("demo_world", "val")  # doctest: +SKIP
    >>> set(ds.images["split"])  # doctest: +SKIP
    {'test'}
    """
    world = Path(world_dir)
    if not (world / "annotations" / f"instances_{split}.json").is_file():
        raise DataError(f"{world} has no annotations/instances_{split}.json: is it a demo world?")
    cfg = DatasetConfig(
        name=f"study-{split}", source="coco", root=str(world), split=split,
        instances="annotations/instances_{split}.json", images="{split}",
        classes=tuple(classes), exclude=("person",), drop_multi_target=True,
        per_class=None, support_per_class=None,
    )
    return load_dataset(cfg)


def _check_versions(world_dir: Path, folders: Sequence[Path]) -> None:
    """Warn for each shipped-format folder trained on another generator than the world's."""
    from clipindex import tiny

    version = tiny.world_version_of(world_dir)
    for folder in folders:
        if (folder / tiny.RECORD_FILE).is_file():
            tiny.check_world_version(folder, version)


def zero_shot_predictions(
    world_dir: str | Path, model_dirs: Sequence[str | Path], *, split: str = "val",
    out: str | Path | None = None, workers: int = 0,
) -> StudyPredictions:
    """Build a store of the study images with every model folder and classify them with
    the product's ``prompt`` method, one backbone at a time.

    ``out`` keeps the store (default: a temporary folder, removed afterwards). Folders
    are loaded as open_clip ``local-dir:`` folders (weights and tokenizer their own).
    """
    from clipindex.classifiers.runner import classify
    from clipindex.store import build_store

    folders = [Path(d).resolve() for d in model_dirs]
    if not folders:
        raise DataError("No model folders given")
    _check_versions(Path(world_dir), folders)
    dataset = study_dataset(world_dir, split)
    with tempfile.TemporaryDirectory(prefix="clipindex-tiny-eval-") as tmp:
        root = Path(out) if out is not None else Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. torch's thread notices
            built = build_store(dataset, [f"local-dir:{f}" for f in folders], out=root,
                                workers=workers, progress=False)
        index = {c: i for i, c in enumerate(TARGET_CLASSES)}
        rows = dataset.images["row_id"].to_numpy()
        predictions = {}
        for folder in built:
            table = classify(folder.parent, folder.name, "prompt", prompt=STUDY_TEMPLATE)
            table = table.predictions.set_index("row_id").reindex(rows)
            predictions[folder.name] = np.array([index[c] for c in table["predicted"]])
    labels = np.array([index[c] for c in dataset.images["label"]], dtype=np.int64)
    tags = dataset.images["causes"] if "causes" in dataset.images else [""] * len(labels)
    causes = tuple(tuple(sorted(filter(None, str(c).split(",")))) for c in tags)
    return StudyPredictions(TARGET_CLASSES, labels, causes, predictions,
                            tuple(dataset.images["file"]))


def summarize(
    predictions: dict[str, np.ndarray],
    labels: np.ndarray,
    causes: Sequence[Sequence[str]],
) -> dict[str, Any]:
    """Accuracy per model, pairwise disagreement, and accuracy per cause vs clean images.

    ``disagreement[a|b]`` is the share of images on which models a and b predict different
    classes; ``by_cause[cause][model]`` is the accuracy on images tagged with that cause,
    ``clean[model]`` the accuracy on images with no cause tag (NaN where there are none).

    Examples
    --------
    >>> s = summarize({"a": np.array([0, 1]), "b": np.array([0, 0])}, np.array([0, 1]),
    ...               [(), ("tiny",)])
    >>> s["accuracy"], s["disagreement"]["a|b"], s["by_cause"]["tiny"]["b"]
    ({'a': 1.0, 'b': 0.5}, 0.5, 0.0)
    """
    labels = np.asarray(labels)

    def acc(pred: np.ndarray, mask: np.ndarray) -> float:
        return float((pred[mask] == labels[mask]).mean()) if mask.any() else float("nan")

    everything = np.ones(len(labels), dtype=bool)
    clean = np.array([not c for c in causes], dtype=bool)
    all_causes = sorted({c for tags in causes for c in tags})
    return {
        "n_images": int(len(labels)),
        "accuracy": {m: acc(p, everything) for m, p in predictions.items()},
        "disagreement": {
            f"{a}|{b}": float((predictions[a] != predictions[b]).mean())
            for a, b in itertools.combinations(predictions, 2)
        },
        "clean": {m: acc(p, clean) for m, p in predictions.items()},
        "n_clean": int(clean.sum()),
        "by_cause": {
            c: {m: acc(p, np.array([c in t for t in causes])) for m, p in predictions.items()}
            for c in all_causes
        },
        "n_by_cause": {c: int(sum(c in t for t in causes)) for c in all_causes},
    }


def evaluate_world(
    world_dir: str | Path, model_dirs: Sequence[str | Path], *, split: str = "val"
) -> dict[str, Any]:
    """Zero-shot figures of ``model_dirs`` on the study images of a world split."""
    result = zero_shot_predictions(world_dir, model_dirs, split=split)
    if not len(result.labels):
        raise DataError(f"No study images in {world_dir} split {split!r}")
    return summarize(result.predictions, result.labels, result.causes)
