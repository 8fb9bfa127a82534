"""COCO annotation files, for :mod:`clipindex.sources`: the one place COCO JSON is read.

Validated reading (a malformed file is a one-line :class:`DataError` naming it),
pycocotools' index with its prints silenced, the per-class funnel, the subject box
of an image, captions and the demo world's failure-cause sidecar.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from clipindex.errors import DataError

__all__ = ["captions_for", "causes_beside", "class_pools", "image_record", "load_instances"]


def read_json(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object holding a list under each of ``keys``."""
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        kind = type(exc).__name__
        raise DataError(f"{path} is not valid JSON ({kind}): fix or replace it") from None
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a COCO annotation file (top level is not an object)")
    for key in keys:
        if not isinstance(data.get(key), list):
            raise DataError(f"{path} is not a COCO annotation file: no '{key}' list")
    return data


def _check_entries(path: Path, data: dict[str, Any], key: str, needed: tuple[str, ...]) -> None:
    need = frozenset(needed)
    for i, entry in enumerate(data[key]):
        if not (isinstance(entry, dict) and need <= entry.keys()):
            raise DataError(f"{path}: entry {i} of '{key}' lacks one of {', '.join(needed)}")


def load_instances(path: Path) -> Any:
    """pycocotools ``COCO`` index of a validated instances JSON (its prints silenced)."""
    from pycocotools.coco import COCO

    data = read_json(path, ("images", "annotations", "categories"))
    _check_entries(path, data, "images", ("id", "file_name"))
    _check_entries(path, data, "annotations", ("id", "image_id", "category_id", "bbox"))
    _check_entries(path, data, "categories", ("id", "name"))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def class_pools(
    coco: Any, classes: Sequence[str], exclude: Sequence[str], drop_multi_target: bool, where: str
) -> tuple[list[str], dict[str, list[int]], dict[str, Any]]:
    """Candidate image ids per class (sorted) and the funnel counts that led to them.

    ``classes`` empty means every category not excluded, in category-id order. With
    ``drop_multi_target`` False an image with several target classes goes to the class
    of its largest box (funnel stage ``assigned`` instead of ``single_target``).
    """
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    cat_id = {c["name"]: c["id"] for c in cats}
    classes = list(classes) or [c["name"] for c in cats if c["name"] not in exclude]
    for name, field in [(c, "classes") for c in classes] + [(e, "exclude") for e in exclude]:
        if name not in cat_id:
            raise DataError(
                f"Unknown class '{name}' in '{field}' of {where}. Available: {', '.join(cat_id)}"
            )
    target_ids = {cat_id[c] for c in classes}
    excluded = {cat_id[e] for e in exclude}
    cats_of = {i: {a["category_id"] for a in anns} for i, anns in coco.imgToAnns.items()}
    with_class = {c: sorted(set(coco.catToImgs.get(cat_id[c], []))) for c in classes}
    clean = {c: [i for i in ids if not cats_of[i] & excluded] for c, ids in with_class.items()}
    if drop_multi_target:
        stage = "single_target"
        pools = {c: [i for i in v if len(cats_of[i] & target_ids) == 1] for c, v in clean.items()}
    else:
        stage = "assigned"
        owner = {i: _largest(coco, i, target_ids)["category_id"] for v in clean.values() for i in v}
        pools = {c: [i for i in ids if owner[i] == cat_id[c]] for c, ids in clean.items()}
    funnel: dict[str, Any] = {"all_images": len(coco.imgs)}
    for name, table in (("with_class", with_class), ("without_person", clean), (stage, pools)):
        funnel[name] = {c: len(v) for c, v in table.items()}
    return classes, pools, funnel


def _box_area(ann: dict[str, Any]) -> float:
    return float(ann["bbox"][2]) * float(ann["bbox"][3])


def _largest(coco: Any, img_id: int, category_ids: set[int]) -> dict[str, Any]:
    anns = [a for a in coco.imgToAnns[img_id] if a["category_id"] in category_ids]
    return max(anns, key=lambda a: (_box_area(a), -a["id"]))  # ties: the first annotation


def image_record(coco: Any, img_id: int, label: str, image_dir: PurePosixPath) -> dict[str, Any]:
    """Row fields of one image: file, size, label, COCO id, subject box and its area share."""
    img = coco.imgs[img_id]
    width, height = int(img.get("width") or 0), int(img.get("height") or 0)
    class_id = next(c["id"] for c in coco.dataset["categories"] if c["name"] == label)
    best = _largest(coco, img_id, {class_id})
    area = width * height
    return {
        "file": (image_dir / img["file_name"]).as_posix(), "width": width, "height": height,
        "label": label, "coco_id": int(img_id), "bbox": [float(v) for v in best["bbox"]],
        "area_frac": _box_area(best) / area if area > 0 else math.nan,
    }  # fmt: skip


def captions_for(path: Path, image_ids: Sequence[int]) -> list[tuple[int, str]]:
    """``(position in image_ids, caption)`` pairs from a COCO captions JSON, file order."""
    data = read_json(path, ("annotations",))
    _check_entries(path, data, "annotations", ("image_id", "caption"))
    by_image: dict[Any, list[str]] = {img_id: [] for img_id in image_ids}
    for ann in data["annotations"]:
        texts = by_image.get(ann["image_id"])
        if texts is not None:
            texts.append(str(ann["caption"]).strip())
    return [(r, text) for r, img_id in enumerate(image_ids) for text in by_image[img_id]]


def causes_beside(instances: Path) -> Path | None:
    """``causes_<x>.json`` beside ``instances_<x>.json`` when it exists."""
    path = instances.with_name(re.sub(r"^instances", "causes", instances.name))
    return path if path != instances and path.is_file() else None


def read_causes(path: Path) -> dict[int, list[str]]:
    """The demo world's sidecar: image id -> failure causes applied to it.

    Format (``clipindex.world``): ``{"images": {"<image id>": {"causes": [...], ...}}}``;
    a plain ``{"<image id>": [...]}`` mapping is read too.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is not valid JSON: fix or delete it") from None
    if isinstance(data, dict) and isinstance(data.get("images"), dict):
        data = data["images"]
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {{'images': {{image id: {{'causes': [...]}}}}}}")
    out: dict[int, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = value.get("causes")
        if not isinstance(value, list) or not str(key).isdigit():
            raise DataError(f"{path}: entry {key!r} is not an image id with a list of causes")
        out[int(key)] = [str(v) for v in value]
    return out
