"""The COCO source: the one place COCO JSON is read, and the builder of COCO datasets.

Validated reading (a malformed file is a one-line :class:`DataError` naming it),
pycocotools' index with its prints silenced, the subject box of an image, captions and
the demo world's failure-cause sidecar; :func:`load_coco` applies the study's filters
(:mod:`clipindex.sources.filters`) and draws the sample. Row order: by class in config
order, then by COCO image id.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from clipindex.config import DatasetConfig
from clipindex.errors import DataError
from clipindex.sources.filters import box_area, class_pools, largest_annotation, select
from clipindex.sources.records import Built, locate_file, under_root
from clipindex.sources.storage import (
    FileReader,
    filesystem,
    is_url,
    join,
    object_identity,
    read_bytes,
)

__all__ = ["captions_for", "causes_beside", "image_record", "load_coco", "load_instances",
           "read_captions", "read_json", "read_tags", "remote_images", "sidecar_tags",
           "tag_rows", "unknown_categories"]

log = logging.getLogger(__name__)


#: A local annotation file, or a URL read through fsspec (``storage_options``).
Location = Path | str


def _load(path: Location, options: Mapping[str, Any] | None) -> Any:
    if is_url(path):
        return json.loads(read_bytes(str(path), options))
    with Path(path).open("rb") as fh:
        return json.load(fh)


def read_json(path: Location, keys: tuple[str, ...],
              options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON object holding a list under each of ``keys`` (a local file or a URL)."""
    try:
        data = _load(path, options)
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


def _check_entries(path: Location, data: dict[str, Any], key: str, needed: tuple[str, ...]) -> None:
    need = frozenset(needed)
    for i, entry in enumerate(data[key]):
        if not (isinstance(entry, dict) and need <= entry.keys()):
            raise DataError(f"{path}: entry {i} of '{key}' lacks one of {', '.join(needed)}")


_NUMBERS = (int, float)


def _whole(value: Any) -> bool:
    """A JSON whole number (not a boolean)."""
    return type(value) is int


def _box(box: Any) -> bool:
    """``[x, y, w, h]``: four finite JSON numbers, ``w`` and ``h`` not negative."""
    return (type(box) is list and len(box) == 4 and type(box[0]) in _NUMBERS
            and type(box[1]) in _NUMBERS and type(box[2]) in _NUMBERS
            and type(box[3]) in _NUMBERS and box[2] >= 0 and box[3] >= 0
            and math.isfinite(box[0] + box[1] + box[2] + box[3]))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_images(path: Location, images: list[dict[str, Any]]) -> set[int]:
    """Types of each image's ``id``, ``file_name``, ``width`` and ``height``; the ids."""
    for i, img in enumerate(images):
        iid = img["id"]
        if not _whole(iid):
            raise DataError(f"{path}: entry {i} of 'images' has a bad id {_show(iid)}: COCO "
                            "ids are whole numbers")
        name = img["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{path}: image {iid} has a bad file_name {_show(name)}: give "
                            "the image's path under the images folder")
        for key in ("width", "height"):
            v = img.get(key)  # optional: null or absent is an unknown size
            if v is not None and not (type(v) in _NUMBERS and math.isfinite(v) and v >= 0
                                      and float(v).is_integer()):
                raise DataError(f"{path}: image {iid} has a bad {key} {_show(v)}: give a "
                                "whole number of pixels, or leave it out")
    ids = {img["id"] for img in images}
    if len(ids) < len(images):  # pycocotools would keep the last one, silently
        seen: set[int] = set()
        twice = next(img["id"] for img in images if img["id"] in seen or seen.add(img["id"]))
        raise DataError(f"{path}: image id {twice} is used by more than one image: COCO "
                        "image ids are unique, give each image its own")
    return ids


def _annotation_error(path: Location, i: int, ann: dict[str, Any], image_ids: set[int]) -> None:
    """Raise the one-line error of the first bad field of annotation entry ``i``."""
    aid = ann["id"]
    if not _whole(aid):
        raise DataError(f"{path}: entry {i} of 'annotations' has a bad id {_show(aid)}: "
                        "COCO ids are whole numbers")
    for key in ("image_id", "category_id"):
        if not _whole(ann[key]):
            raise DataError(f"{path}: annotation {aid} has a bad {key} {_show(ann[key])}: "
                            "give a whole number")
    if ann["image_id"] not in image_ids:
        raise DataError(f"{path}: annotation {aid} names image {ann['image_id']}, which is "
                        "not in 'images'")
    raise DataError(f"{path}: annotation {aid} has a bad bbox {_show(ann['bbox'])}: give "
                    "[x, y, width, height], four numbers (width and height not negative)")


def _check_annotations(path: Location, data: dict[str, Any]) -> None:
    """Types of each image's and annotation's fields and each category's id and name,
    and that every annotation names an image of the file (0.4 s for a file the size of
    COCO train2017: 118k images, 860k annotations); a bad value is a one-line
    :class:`DataError`."""
    image_ids = _check_images(path, data["images"])
    for i, ann in enumerate(data["annotations"]):
        if not (type(ann["id"]) is int and type(ann["category_id"]) is int
                and type(ann["image_id"]) is int and ann["image_id"] in image_ids
                and _box(ann["bbox"])):
            _annotation_error(path, i, ann, image_ids)
    for cat in data["categories"]:
        if not _whole(cat["id"]) or not isinstance(cat["name"], str) or not cat["name"]:
            raise DataError(f"{path}: category {_show(cat['id'])} ({_show(cat['name'])}) "
                            "needs a whole-number id and a name")


def load_instances(path: Location, options: Mapping[str, Any] | None = None) -> Any:
    """pycocotools ``COCO`` index of a validated instances JSON (its prints silenced)."""
    from pycocotools.coco import COCO

    data = read_json(path, ("images", "annotations", "categories"), options)
    _check_entries(path, data, "images", ("id", "file_name"))
    _check_entries(path, data, "annotations", ("id", "image_id", "category_id", "bbox"))
    _check_entries(path, data, "categories", ("id", "name"))
    _check_annotations(path, data)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def image_record(coco: Any, img_id: int, label: str, image_dir: PurePosixPath,
                 root: Path | str | None = None, allow_outside: bool = False
                 ) -> dict[str, Any]:
    """Row fields of one image: file, size, label, COCO id, subject box and its area share.

    With ``root``, a ``file_name`` leading outside it is refused (unless ``allow_outside``;
    under a URL root the check is lexical: no ``..`` and no absolute path).
    """
    img = coco.imgs[img_id]
    file = (image_dir / img["file_name"]).as_posix()
    if is_url(root):
        file = _url_relative(str(root), file, img_id, allow_outside)
    elif root is not None:
        file = under_root(Path(root), file, f"COCO image {img_id} ('file_name')",
                          allow=allow_outside)
    width, height = int(img.get("width") or 0), int(img.get("height") or 0)
    class_id = next(c["id"] for c in coco.dataset["categories"] if c["name"] == label)
    best = largest_annotation(coco, img_id, {class_id})
    area = width * height
    return {
        "file": file, "width": width, "height": height,
        "label": label, "coco_id": int(img_id), "bbox": [float(v) for v in best["bbox"]],
        "area_frac": box_area(best) / area if area > 0 else math.nan,
    }  # fmt: skip


def _url_relative(root: str, file: str, img_id: int, allow: bool) -> str:
    norm = posixpath.normpath(file)
    if norm == ".." or norm.startswith("../") or posixpath.isabs(norm):
        if allow:
            return join(root, norm) if not posixpath.isabs(norm) else norm
        raise DataError(f"COCO image {img_id} ('file_name'): {file!r} leads outside the data "
                        f"root {root}; pass --allow-outside-root to accept it")
    return file


def captions_for(path: Location, image_ids: Sequence[int],
                 options: Mapping[str, Any] | None = None) -> list[tuple[int, str]]:
    """``(position in image_ids, caption)`` pairs from a COCO captions JSON, file order."""
    by_image: dict[Any, list[str]] = {img_id: [] for img_id in image_ids}
    for ann in read_captions(path, options)["annotations"]:
        texts = by_image.get(ann["image_id"])
        if texts is not None:
            texts.append(ann["caption"].strip())
    return [(r, text) for r, img_id in enumerate(image_ids) for text in by_image[img_id]]


def read_captions(path: Location, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A validated COCO captions JSON: each annotation has a whole-number ``image_id``
    and a non-empty text ``caption`` (else a one-line :class:`DataError` naming it)."""
    data = read_json(path, ("annotations",), options)
    _check_entries(path, data, "annotations", ("image_id", "caption"))
    for i, ann in enumerate(data["annotations"]):
        text = ann["caption"]
        if type(ann["image_id"]) is int and type(text) is str and text.strip():
            continue
        name = f"caption annotation {_show(ann['id'])}" if "id" in ann else f"entry {i}"
        if not _whole(ann["image_id"]):
            raise DataError(f"{path}: {name} has a bad image_id {_show(ann['image_id'])}: "
                            "give a whole number")
        raise DataError(f"{path}: {name} (image {ann['image_id']}) has a bad caption "
                        f"{_show(text)}: give a non-empty text, or remove the annotation")
    return data


def causes_beside(instances: Location, options: Mapping[str, Any] | None = None
                  ) -> Location | None:
    """``causes_<x>.json`` beside ``instances_<x>.json`` when it exists."""
    if is_url(instances):
        folder, _, name = str(instances).rpartition("/")
        url = f"{folder}/{re.sub(r'^instances', 'causes', name)}"
        if url == instances:
            return None
        try:
            fs, inside = filesystem(url, options)
            return url if fs.isfile(inside) else None
        except (OSError, ValueError):
            return None
    path = Path(instances)
    path = path.with_name(re.sub(r"^instances", "causes", path.name))
    return path if path != Path(instances) and path.is_file() else None


def read_tags(path: Location, options: Mapping[str, Any] | None = None
              ) -> dict[int, dict[str, Any]]:
    """The sidecar's tags per image id: ``causes`` (a list) and ``context`` (the
    scene's context, ``field``/``road``/``indoor``/``beach``/``snow``; None when the
    entry has none, as in the plain mapping format).

    Format (the demo world's, ``clipindex.demo.world``): ``{"images": {"<image id>":
    {"causes": [...], ...}}}``; a plain ``{"<image id>": [...]}`` mapping is read too.
    """
    try:
        data = _load(path, options)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is not valid JSON: fix or delete it") from None
    if isinstance(data, dict) and isinstance(data.get("images"), dict):
        data = data["images"]
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {{'images': {{image id: {{'causes': [...]}}}}}}")
    out: dict[int, dict[str, Any]] = {}
    for key, value in data.items():
        context = value.get("context") if isinstance(value, dict) else None
        if isinstance(value, dict):
            value = value.get("causes")
        if not isinstance(value, list) or not str(key).isdigit():
            raise DataError(f"{path}: entry {key!r} is not an image id with a list of causes")
        out[int(key)] = {"causes": [str(v) for v in value],
                         "context": None if context is None else str(context)}
    return out


#: Unknown category ids listed in dataset.json and the build's warning.
_FIRST_IDS = 10


def unknown_categories(coco: Any, where: str) -> dict[str, Any] | None:
    """Annotations whose ``category_id`` names no category: their count and the first
    ids (sorted), logged as one warning; None when there are none."""
    known = {c["id"] for c in coco.dataset["categories"]}
    bad = [a["category_id"] for a in coco.dataset["annotations"] if a["category_id"] not in known]
    if not bad:
        return None
    ids = sorted(set(bad), key=str)
    log.warning("%s: %d annotation(s) name unknown category ids (first: %s); they are "
                "ignored", where, len(bad), ", ".join(map(str, ids[:_FIRST_IDS])))
    return {"annotations": len(bad), "ids": len(ids), "first_ids": ids[:_FIRST_IDS]}


def sidecar_tags(cfg: DatasetConfig, root: Path | str, origin: str, instances: Location
                 ) -> dict[int, dict[str, Any]] | None:
    """The failure-cause sidecar's tags (``causes`` given, or the one beside the
    instances file), or None when there is none."""
    opts = cfg.storage_options
    path = locate_file(root, cfg, "causes", origin) if cfg.causes else None
    path = path or causes_beside(instances, opts)
    return read_tags(path, opts) if path is not None else None


def tag_rows(records: list[dict[str, Any]], ids: Sequence[int],
             tags: dict[int, dict[str, Any]] | None) -> list[str]:
    """Add ``causes`` (and ``context`` when the sidecar has one: the demo world's) to
    each record of image ``ids``; returns the columns added."""
    if tags is None:
        return []
    contexts = any(t["context"] is not None for t in tags.values())
    for rec, img_id in zip(records, ids, strict=True):
        tag = tags.get(img_id, {})
        rec["causes"] = ",".join(tag.get("causes", []))
        if contexts:
            rec["context"] = tag.get("context")
    return ["causes", "context"] if contexts else ["causes"]


def load_coco(cfg: DatasetConfig, root: Path | str, origin: str) -> Built:
    """The images (with subject box, area share, causes) and captions of a COCO config;
    any of its files may be a URL, and a URL root reads its images through fsspec."""
    inst_path = locate_file(root, cfg, "instances", origin)
    coco = load_instances(inst_path, cfg.storage_options)
    where = f"{origin} ({str(inst_path).rsplit('/', 1)[-1]})"
    classes, pools, funnel = class_pools(
        coco, cfg.classes, cfg.exclude, cfg.drop_multi_target, where
    )
    sampled, support = select(pools, cfg, origin)
    funnel["sampled"] = {c: len(v) for c, v in sampled.items()}
    image_dir = PurePosixPath(cfg.path("images") or ".")
    records, order = [], []
    for c, ids in sampled.items():
        for j, img_id in enumerate(ids):
            rec = image_record(coco, img_id, c, image_dir, root, cfg.allow_outside_root)
            rec["split"] = "support" if j in support[c] else "test"
            records.append(rec)
            order.append(img_id)
    tagged = tag_rows(records, order, sidecar_tags(cfg, root, origin, inst_path))
    columns = ["coco_id", "bbox", "area_frac"] + tagged
    captions = []
    if cfg.captions is not None:
        captions = captions_for(locate_file(root, cfg, "captions", origin), order,
                                cfg.storage_options)
    split_from = "none" if cfg.support_per_class is None else "drawn"
    unknown = unknown_categories(coco, where)
    extra = {"unknown_category_ids": unknown} if unknown else {}
    built = Built(classes, records, captions, funnel, split_from, columns, extra)
    return remote_images(built, cfg, root)


def remote_images(built: Built, cfg: DatasetConfig, root: Path | str) -> Built:
    """Under a URL root: each row's ``bytes`` and ``etag`` (one listing per folder) and the
    reader that fetches the images; a local root: ``built`` as it is."""
    if not is_url(root):
        return built
    tags = object_identity([join(str(root), r["file"]) for r in built.records],
                           cfg.storage_options)
    for rec in built.records:
        rec["bytes"], rec["etag"] = tags.get(join(str(root), rec["file"]), (0, ""))
    built.columns = [*built.columns, "bytes", "etag"]
    built.reader = FileReader(str(root), cfg.storage_options)
    return built
