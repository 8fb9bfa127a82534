"""Batched zero-shot evaluation of tiny backbone folders on the demo world.

Pure functions: :func:`zero_shot_predictions` takes image paths, class names and model
folders and returns predicted class indices per folder (each image is decoded once for
all folders); :func:`summarize` turns predictions, labels and cause tags into the figures
the tiny backbones are held to (accuracy, pairwise disagreement, accuracy per failure
cause vs clean images). :func:`study_images` applies the study's filters to a world split.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.errors import DataError

__all__ = [
    "TARGET_CLASSES",
    "STUDY_TEMPLATE",
    "StudyImages",
    "study_images",
    "zero_shot_predictions",
    "summarize",
    "evaluate_world",
]

TARGET_CLASSES: tuple[str, ...] = ("cat", "dog", "cow", "sheep", "horse")
STUDY_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class StudyImages:
    """The images of one world split that pass the study's filters."""

    paths: tuple[Path, ...]
    labels: np.ndarray  # index into ``classes`` (the instances label, wrong or not)
    classes: tuple[str, ...]
    causes: tuple[tuple[str, ...], ...]  # failure causes the generator applied


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing: is this a demo world folder?") from exc


def _causes_by_id(sidecar: Any) -> dict[int, tuple[str, ...]]:
    """Read the world's causes sidecar: ``{"images": {id: {"causes": [...], ...}}}``."""
    if isinstance(sidecar, dict) and isinstance(sidecar.get("images"), dict):
        sidecar = sidecar["images"]
    if not isinstance(sidecar, dict):
        raise DataError("causes sidecar: expected {'images': {image id: {'causes': [...]}}}")
    return {int(k): tuple(v["causes"] if isinstance(v, dict) else v)
            for k, v in sidecar.items()}


def study_images(
    world_dir: str | Path, split: str = "val", classes: Sequence[str] = TARGET_CLASSES
) -> StudyImages:
    """Return ``split``'s images with no ``person`` and exactly one target class.

    Examples
    --------
    >>> imgs = study_images("demo_world", "val")  # doctest: +SKIP
    >>> len(imgs.paths) == len(imgs.labels)  # doctest: +SKIP
    True
    """
    world = Path(world_dir)
    inst = _read_json(world / "annotations" / f"instances_{split}.json")
    causes = _causes_by_id(_read_json(world / "annotations" / f"causes_{split}.json"))
    cat_name = {c["id"]: c["name"] for c in inst["categories"]}
    names_by_image: dict[int, set[str]] = {}
    for ann in inst["annotations"]:
        names_by_image.setdefault(ann["image_id"], set()).add(cat_name[ann["category_id"]])
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, tags = [], [], []
    for img in sorted(inst["images"], key=lambda r: r["id"]):
        names = names_by_image.get(img["id"], set())
        targets = names & index.keys()
        if "person" in names or len(targets) != 1:
            continue
        paths.append(world / split / img["file_name"])
        labels.append(index[targets.pop()])
        tags.append(tuple(sorted(causes.get(img["id"], ()))))
    labels_arr = np.asarray(labels, dtype=np.int64)
    return StudyImages(tuple(paths), labels_arr, tuple(classes), tuple(tags))


def _load(folder: Path):  # noqa: ANN202
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model, preprocess, tokenizer, torch


def _decode(path: Path, size: int):  # noqa: ANN202
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale >= size
        return im.convert("RGB")


def zero_shot_predictions(
    model_dirs: Sequence[str | Path],
    image_paths: Sequence[str | Path],
    classnames: Sequence[str],
    *,
    template: str = STUDY_TEMPLATE,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Predict a class index per image with each model folder's zero-shot classifier.

    Class weights are the normalised text vectors of ``template.format(c)``; an image's
    prediction is the class of highest cosine similarity. Each image is decoded once and
    preprocessed by every model's own open_clip transform. Returns ``{folder name: preds}``.

    Examples
    --------
    >>> preds = zero_shot_predictions([checkpoint_dir("tiny-vit")], paths, TARGET_CLASSES)
    ... # doctest: +SKIP
    """
    if not model_dirs:
        raise DataError("No model folders given")
    loaded = {Path(d).name: _load(Path(d)) for d in model_dirs}
    torch = next(iter(loaded.values()))[3]
    texts = [template.format(c) for c in classnames]
    weights, preds = {}, {name: [] for name in loaded}
    with torch.inference_mode():
        for name, (model, _, tok, _) in loaded.items():
            w = model.encode_text(tok(texts))
            weights[name] = w / w.norm(dim=-1, keepdim=True)
        draft = max(m.visual.image_size[0] if isinstance(m.visual.image_size, tuple)
                    else m.visual.image_size for m, *_ in loaded.values())
        for start in range(0, len(image_paths), batch_size):
            images = [_decode(Path(p), draft) for p in image_paths[start:start + batch_size]]
            for name, (model, preprocess, _, _) in loaded.items():
                x = model.encode_image(torch.stack([preprocess(im) for im in images]))
                x = x / x.norm(dim=-1, keepdim=True)
                preds[name].append((x @ weights[name].T).argmax(dim=-1).numpy())
    return {n: np.concatenate(p) if p else np.zeros(0, np.int64) for n, p in preds.items()}


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
    imgs = study_images(world_dir, split)
    if not imgs.paths:
        raise DataError(f"No study images in {world_dir} split {split!r}")
    preds = zero_shot_predictions(model_dirs, imgs.paths, imgs.classes)
    return summarize(preds, imgs.labels, imgs.causes)
