"""Grad-CAM from a store: class vectors, one image, and the errors of a benchmark run.

Class vectors come from the store (no image is re-encoded for them): the prompt vector
``"a photo of a {c}"`` from the store's cached text vectors, or the caption prototype of
the class's support images (mean of their normalised caption vectors).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipindex.checks import positive_int
from clipindex.errors import DataError, UserInputError
from clipindex.explain.cam import explain, image_embedding, load_image
from clipindex.explain.pictures import gradcam_panel, overlay

if TYPE_CHECKING:
    from clipindex.store import BackboneIndex

__all__ = [
    "METHODS",
    "ClassVectors",
    "Explanation",
    "class_vectors",
    "explain_errors",
    "explain_image",
    "explain_rows",
    "save_png",
    "stored_label",
    "write_explanation",
]

PROMPT_TEMPLATE = "a photo of a {}"
_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class ClassVectors:
    """Unit class vectors (rows follow ``classes``) and how they were made."""

    classes: tuple[str, ...]
    vectors: np.ndarray = field(repr=False)
    method: str

    def vector(self, name: str) -> np.ndarray:
        if name not in self.classes:
            raise UserInputError(f"Unknown class {name!r}. Known: {', '.join(self.classes)}")
        return self.vectors[self.classes.index(name)]

    def probabilities(self, embedding: np.ndarray) -> np.ndarray:
        """Softmax over ``100 * cosine``, as the prompt classifier scores."""
        logits = _LOGIT_SCALE * (self.vectors @ embedding)
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _classes(index: Any) -> tuple[str, ...]:
    info = getattr(index, "dataset_info", None) or {}
    if info.get("classes"):
        return tuple(str(c) for c in info["classes"])
    labels = index.images["label"].dropna().astype(str).unique()
    if len(labels) == 0:
        raise DataError("The store's images carry no labels, so there are no classes to explain.")
    return tuple(sorted(labels))


def _prompt_vectors(index: Any, classes: Sequence[str], *, k: int, seed: int) -> np.ndarray:
    return np.asarray(index.text_vectors([PROMPT_TEMPLATE.format(c) for c in classes]))


def _prototype_vectors(index: Any, classes: Sequence[str], *, k: int, seed: int) -> np.ndarray:
    """Caption prototypes of ``k`` seeded support images per class, drawn from the
    ``support`` split the source chose (else ``train``, else every row)."""
    from clipindex.classifiers import PrototypeClassifier

    images, captions = index.images, index.captions
    pool = images
    for split in ("support", "train"):
        if "split" in images and (images["split"] == split).any():
            pool = images[images["split"] == split]
            break
    rng = np.random.default_rng(seed)
    support = np.concatenate([
        rng.permutation(np.sort(pool.loc[pool["label"] == c, "row_id"].to_numpy()))[:k]
        for c in classes
    ])
    valid = np.asarray(getattr(index, "caption_valid", np.ones(len(captions), bool)))
    chosen = captions[captions["image_row_id"].isin(support).to_numpy() & valid]
    labels = images.set_index("row_id").loc[chosen["image_row_id"], "label"].astype(str)
    missing = sorted(set(classes) - set(labels))
    if missing:
        raise DataError(f"No captioned support images for {', '.join(missing)}: a prototype "
                        "needs some; use --method prompt.")
    clf = PrototypeClassifier().fit(
        np.asarray(index.caption_vectors)[chosen["row_id"].to_numpy()], labels.to_numpy())
    order = [list(clf.classes_).index(c) for c in classes]
    return clf.prototypes_[order]


#: How a class vector is made, by ``--method``.
METHODS: dict[str, Callable[..., np.ndarray]] = {
    "prompt": _prompt_vectors,
    "prototype": _prototype_vectors,
}


def class_vectors(index: Any, method: str = "prompt", *, k: int = 10, seed: int = 42
                  ) -> ClassVectors:
    """The class vectors of a store for ``method`` (``prompt`` or ``prototype``).

    Example
    -------
    >>> cv = class_vectors(open_index("indexes/demo", "tiny-rn"), "prompt")  # doctest: +SKIP
    >>> cv.classes                                                           # doctest: +SKIP
    ('cat', 'cow', 'dog', 'horse', 'sheep')
    """
    if method not in METHODS:
        raise UserInputError(f"Unknown method {method!r}. Known: {', '.join(METHODS)}")
    classes = _classes(index)
    vectors = _unit(METHODS[method](index, classes, k=k, seed=seed))
    return ClassVectors(classes, vectors, method)


@dataclass(frozen=True, eq=False)
class Explanation:
    """One Grad-CAM map with what it explains."""

    image: Image.Image = field(repr=False)
    cam: np.ndarray = field(repr=False)
    target: str
    predicted: str
    prob: float
    true: str | None = None

    def caption(self) -> str:
        true = f"true {self.true} / " if self.true is not None else ""
        return f"{true}pred {self.predicted} {self.prob:.2f} / cam: {self.target}"


def _open(index_or_dir: Any, backbone: str | None) -> Any:
    if hasattr(index_or_dir, "text_vectors"):
        return index_or_dir
    if backbone is None:
        raise UserInputError("Give --backbone NAME together with --index DIR.")
    from clipindex.store import open_index

    return open_index(Path(index_or_dir), backbone)


def explain_image(
    image: str | Path | Image.Image,
    index: BackboneIndex | str | Path,
    *,
    backbone: str | None = None,
    target: str | None = None,
    method: str = "prompt",
    layer: str | None = None,
    true: str | None = None,
    vectors: ClassVectors | None = None,
) -> Explanation:
    """Grad-CAM of one image toward a class of a store (default: its predicted class).

    ``index`` is a ``BackboneIndex`` or a dataset folder (then ``backbone`` is needed).
    ``true`` defaults to the stored label when ``image`` is a file of the store
    (:func:`stored_label`).

    Example
    -------
    >>> e = explain_image("cat.jpg", "indexes/demo", backbone="tiny-rn")  # doctest: +SKIP
    >>> e.predicted, round(e.prob, 2)                                     # doctest: +SKIP
    ('cat', 0.91)
    """
    opened = _open(index, backbone)
    vectors = vectors or class_vectors(opened, method)
    if target is not None:
        vectors.vector(target)  # unknown class: fail before loading the model
    encoder = opened.encoder()
    img = load_image(image)
    probs = vectors.probabilities(image_embedding(img, encoder))
    best = int(np.argmax(probs))
    target = target or vectors.classes[best]
    cam = explain(img, encoder, vectors.vector(target), layer=layer)
    if true is None and not isinstance(image, Image.Image):
        true = stored_label(opened, image)
    return Explanation(img, cam, target, vectors.classes[best], float(probs[best]), true)


def stored_label(index: Any, image: str | Path) -> str | None:
    """The images table's label of ``image`` when it is one of the store's files (its
    path, resolved, is the data root's ``file``), else None (not in the store, unlabelled).

    Example
    -------
    >>> stored_label(index, "worlds/demo/val/000123.jpg")  # doctest: +SKIP
    'cow'
    """
    table = getattr(index, "images", None)
    if table is None or "file" not in table.columns or "label" not in table.columns:
        return None
    path = Path(image).expanduser().resolve()
    names = {path.as_posix()}
    root = (getattr(index, "dataset_info", None) or {}).get("root")
    if root:
        try:
            names.add(path.relative_to(Path(str(root)).expanduser().resolve()).as_posix())
        except ValueError:
            pass  # outside the data root: only an absolute ``file`` can match
    hits = table.loc[table["file"].astype(str).isin(names), "label"].dropna().astype(str)
    hits = hits[hits != ""]
    return hits.iloc[0] if len(hits) else None


def _stored_images(index: Any, data_root: str | None = None) -> Any:
    """The store's :class:`~clipindex.sources.StoredImages` (made once per run: a shard
    is listed once, not once per image)."""
    from clipindex.sources import StoredImages

    return StoredImages(getattr(index, "dataset_info", None) or {}, data_root)


def _image_path(index: Any, file: str, data_root: str | None = None,
                stored: Any = None) -> Any:
    """A file of the images table as a path (tables hold paths relative to the data root),
    or, when the store's images are not local files (object storage, webdataset shards,
    an image-bytes parquet), the decoded image read through ``stored``
    (:func:`_stored_images`)."""
    path = Path(file)
    if path.is_absolute():
        return path
    info = getattr(index, "dataset_info", None) or {}
    stored = stored if stored is not None else _stored_images(index, data_root)
    if stored.remote:
        from clipindex.encode import decode_rgb_bytes

        return decode_rgb_bytes(stored.read(file), name=file)
    for base in (data_root, info.get("root"), getattr(index, "root", None)):
        if base and (Path(base) / path).is_file():
            return Path(base) / path
    return path


def explain_rows(
    index: Any,
    rows: Sequence[int],
    *,
    backbone: str | None = None,
    method: str = "prompt",
    layer: str | None = None,
    targets: Sequence[str | None] | None = None,
) -> list[Explanation]:
    """Grad-CAM of rows of the store's images table (true label from the table).

    Example
    -------
    >>> ex = explain_rows(index, [0, 5, 9])                            # doctest: +SKIP
    >>> gradcam_panel([(e.image, e.cam, e.caption()) for e in ex])    # doctest: +SKIP
    """
    index = _open(index, backbone)
    vectors = class_vectors(index, method)
    table = index.images.set_index("row_id", drop=False)
    stored = _stored_images(index)
    out = []
    for i, row in enumerate(rows):
        rec = table.loc[int(row)]
        true = None if rec.get("label") is None or rec["label"] != rec["label"] else rec["label"]
        target = targets[i] if targets is not None else None
        out.append(explain_image(_image_path(index, str(rec["file"]), stored=stored), index,
                                 target=target, layer=layer, true=true, vectors=vectors))
    return out


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically (:func:`clipindex.files.atomic_write_bytes`); encoded
    first, so a full disk's error names the bytes it needs."""
    import io

    from clipindex.files import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def write_explanation(
    image: str | Path,
    index: Any,
    *,
    backbone: str | None = None,
    target: str | None = None,
    method: str = "prompt",
    layer: str | None = None,
    out: str | Path | None = None,
) -> tuple[Explanation, Path]:
    """:func:`explain_image`, then the overlay written as a PNG at the image's size
    (default ``./<image stem>_gradcam.png``). Returns the explanation and the path.

    Example
    -------
    >>> e, path = write_explanation("cat.jpg", "indexes/demo", backbone="tiny-vit")
    ... # doctest: +SKIP
    """
    from clipindex.store.owned import refuse_store_path

    path = refuse_store_path(Path(out) if out is not None
                             else Path(f"{Path(image).stem}_gradcam.png"))
    result = explain_image(image, index, backbone=backbone, target=target, method=method,
                           layer=layer)
    return result, save_png(overlay(result.image, result.cam), path)


def _read_run(results: Path) -> dict[str, Any]:
    run = results / "run.json"
    if not run.is_file():
        raise DataError(f"{run} not found: pass the folder `clipindex bench` wrote.")
    return json.loads(run.read_text(encoding="utf-8"))


def _run_index_dir(results: Path) -> Path:
    """The dataset folder of the store a benchmark run read (``dataset_dir`` of run.json)."""
    info = _read_run(results)
    for key in ("dataset_dir", "index_dir"):
        if isinstance(info.get(key), str):
            return Path(info[key])
    raise DataError(f"{results / 'run.json'} does not say which store the run read "
                    "(no 'dataset_dir'); pass --index DIR.")


def _error_rows(results: Path, backbone: str, method: str | None, limit: int) -> Any:
    import pandas as pd

    path = results / "errors.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: pass the folder `clipindex bench` wrote.")
    frame = pd.read_csv(path)
    missing = {"file", "true", "predicted"} - set(frame.columns)
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(sorted(missing))}.")
    if "backbone" in frame:
        frame = frame[frame["backbone"].astype(str) == backbone]
    if method is not None and "method" in frame:
        frame = frame[frame["method"].astype(str) == method]
    frame = frame[frame["true"].astype(str) != frame["predicted"].astype(str)]
    frame = frame.drop_duplicates(subset=["file", "true", "predicted"])
    if frame.empty:
        what = f"backbone {backbone!r}" + (f", method {method!r}" if method else "")
        raise DataError(f"{path} has no misclassified rows for {what}.")
    return frame.head(limit)


def explain_errors(
    results: str | Path,
    backbone: str,
    *,
    method: str | None = None,
    limit: int = 8,
    out_dir: str | Path | None = None,
    layer: str | None = None,
    index: Any = None,
    progress: bool = False,
) -> list[Path]:
    """Grad-CAM pictures of the first ``limit`` misclassified rows of a benchmark run.

    Each PNG shows the image twice: the CAM toward the true class and toward the
    predicted one. ``method`` filters ``errors.csv`` (when it has a ``method`` column) and
    picks the class vectors (``prompt`` unless ``prototype``). The store is the one named
    in ``RESULTS/run.json`` unless ``index`` is given. Returns the written paths.

    Example
    -------
    >>> explain_errors("results/demo", "tiny-rn", limit=4)   # doctest: +SKIP
    [PosixPath('results/demo/gradcam/tiny-rn/000_val_000123.png'), ...]
    """
    positive_int("--limit", limit)
    from clipindex.progress import bar as tqdm
    from clipindex.store.owned import refuse_store_path

    results = Path(results)
    out = refuse_store_path(Path(out_dir) if out_dir is not None
                            else results / "gradcam" / backbone)
    rows = _error_rows(results, backbone, method, limit)
    index = _open(index if index is not None else _run_index_dir(results), backbone)
    vectors = class_vectors(index, method if method in METHODS else "prompt")
    written = []
    records = rows.to_dict("records")
    data_root = (_read_run(results) if (results / "run.json").is_file() else {}).get("data_root")
    stored = _stored_images(index, data_root)
    for i, rec in enumerate(tqdm(records, desc=f"gradcam {backbone}", disable=not progress)):
        path = _image_path(index, str(rec["file"]), data_root, stored)
        true, pred = str(rec["true"]), str(rec["predicted"])
        shown = [explain_image(path, index, target=t, layer=layer, true=true, vectors=vectors)
                 for t in (true, pred)]
        items = [(e.image, e.cam, f"CAM for {label} {e.target}")
                 for e, label in zip(shown, ("true", "predicted"), strict=True)]
        title = f"{Path(str(rec['file'])).name}: true {true}, predicted {pred}"
        prob = next((rec[k] for k in ("p_predicted", "prob") if k in rec), None)
        title += f" (p={float(prob):.2f})" if prob is not None else ""
        written.append(save_png(gradcam_panel(items, columns=2, title=title),
                                out / f"{i:03d}_{Path(str(rec['file'])).stem}.png"))
    return written
