"""Data sources: COCO JSON, class folders and manifests become a :class:`Dataset`.

A :class:`Dataset` is two tables and a record of how they were made:

``images``
    ``row_id`` (0..n-1, the table's order), ``file`` (relative to ``root``),
    ``width``, ``height``, ``label``, ``split`` (``support``/``test``), and for
    COCO sources ``coco_id``, ``bbox`` (``[x, y, w, h]`` of the subject: the
    largest box of the image's class) and ``area_frac`` (bbox area / image area),
    plus ``causes`` (comma-joined failure causes, '' when clean) when the demo
    world's sidecar ``causes_<split>.json`` lies beside ``instances_<split>.json``.
``captions``
    ``row_id``, ``image_row_id``, ``text``, ``label``.
``info``
    the content of ``dataset.json``: source kind, config, classes, a fingerprint
    of the tables (independent of ``root``) and the per-class funnel.

Row order (documented because row ids are the join key for every vector):

- COCO: by class in config order, then by COCO image id.
- folder: by class (config order, else sorted folder names), then ``support``
  before ``test`` (``train/``/``test/`` layout), then by path.
- manifest: the order in which each path first appears in the manifest.

Funnel (COCO): ``all_images`` (images in the instances JSON), ``with_class`` (images
with an annotation of the class), ``without_person`` (of those, none of an excluded
class), ``single_target`` (of those, no other target class) and ``sampled``. Folder
and manifest sources give ``all_images``, ``with_class`` and ``sampled``.

Random draws use ``numpy.random.default_rng(seed)`` over candidates sorted as above:
first ``per_class`` images per class (classes in order), then ``support_per_class``
support images per class from that sample; the rest are ``test``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from clipindex.config import DatasetConfig, apply_overrides, load_dataset_config
from clipindex.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "fingerprint",
    "load_dataset",
]

#: File extensions (lower case) a folder source picks up.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

INFO_FORMAT_VERSION = 1
_SPLIT_ALIASES = {
    "support": "support",
    "train": "support",
    "test": "test",
    "val": "test",
    "query": "test",
}


@dataclass
class Dataset:
    """Images and captions tables of one dataset, with their provenance.

    Examples
    --------
    >>> ds = load_dataset("configs/datasets/demo.yaml", root="worlds/demo")  # doctest: +SKIP
    >>> ds.images.groupby("label").size().tolist()  # doctest: +SKIP
    [200, 200, 200, 200, 200]
    >>> ds.image_paths()[0]  # doctest: +SKIP
    PosixPath('/.../worlds/demo/val/000123.jpg')
    """

    name: str
    root: Path
    images: pd.DataFrame
    captions: pd.DataFrame
    info: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return list(self.info["classes"])

    def image_paths(self) -> list[Path]:
        """Absolute path of each image, in row-id order."""
        return [self.root / f for f in self.images["file"]]


def load_dataset(
    source: str | Path, *, root: str | Path | None = None, **overrides: Any
) -> Dataset:
    """Load a dataset from a YAML config, a class-folder tree or a manifest.

    Parameters
    ----------
    source : str or Path
        A ``.yaml`` dataset config, a folder of class sub-folders (optionally under
        ``train/`` and ``test/``), or a ``.csv``/``.parquet`` manifest with columns
        ``path``, ``label`` and optionally ``split`` and ``caption``.
    root : str or Path, optional
        Data root replacing the config's ``root`` (manifests: the base of their
        paths, default the manifest's folder).
    **overrides
        Fields of :class:`~clipindex.config.DatasetConfig` to replace, e.g.
        ``per_class=50`` or ``split="val2017"``.

    Examples
    --------
    >>> ds = load_dataset("data/fields_roads")  # doctest: +SKIP
    >>> ds = load_dataset("configs/datasets/coco-animals.yaml", root="~/data/coco",
    ...                   seed=0)  # doctest: +SKIP
    """
    cfg, data_root, origin = _resolve(Path(source).expanduser(), root, overrides)
    built = _BUILDERS[cfg.source](cfg, data_root, origin)
    return _assemble(cfg, data_root, built)


def fingerprint(images: pd.DataFrame, captions: pd.DataFrame) -> str:
    """sha256 of a canonical serialisation of both tables' content.

    Paths in the tables are relative to the data root, so the same data under
    another root has the same fingerprint.

    Examples
    --------
    >>> fingerprint(ds.images, ds.captions)[:12]  # doctest: +SKIP
    '3f9a0c6e1b2d'
    """
    h = hashlib.sha256(b"clipindex-tables-v1")
    for name, table in (("images", images), ("captions", captions)):
        payload = {
            "table": name,
            "columns": [str(c) for c in table.columns],
            "rows": table.to_dict(orient="split")["data"],
        }
        text = json.dumps(payload, separators=(",", ":"), default=_json_native, allow_nan=True)
        h.update(text.encode("utf-8"))
    return h.hexdigest()


# --- resolving what `source` is ------------------------------------------------


def _resolve(
    path: Path, root: str | Path | None, overrides: dict[str, Any]
) -> tuple[DatasetConfig, Path, str]:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        cfg = load_dataset_config(path, **overrides)
        chosen = root if root is not None else cfg.root
        if chosen is None:
            raise ConfigError(f"{path} sets no 'root': give the data root (--root DATA_DIR)")
        data_root = Path(chosen).expanduser().absolute()
        cfg = dataclasses.replace(cfg, root=str(chosen))
        origin = str(path)
    elif path.is_dir():
        if root is not None:
            raise ConfigError(f"--root does not apply to a folder source ({path}): drop it")
        cfg = DatasetConfig(name=_safe_name(path.name), source="folder")
        cfg = apply_overrides(cfg, overrides)
        data_root, origin = path.absolute(), str(path)
    elif suffix in _MANIFEST_READERS:
        if not path.is_file():
            raise DataError(f"Manifest {path} does not exist")
        manifest = path.name if root is None else str(path.absolute())
        cfg = DatasetConfig(name=_safe_name(path.stem), source="manifest", manifest=manifest)
        cfg = apply_overrides(cfg, overrides)
        data_root = (
            Path(root).expanduser().absolute() if root is not None else path.parent.absolute()
        )
        origin = str(path)
    elif not path.exists():
        raise ConfigError(f"{path} does not exist: give a YAML config, a folder or a manifest")
    else:
        raise ConfigError(
            f"Cannot tell what {path} is: give a .yaml dataset config, a folder of class "
            "sub-folders, or a .csv/.parquet manifest"
        )
    if not data_root.is_dir():
        raise DataError(f"Data root {data_root} is not a folder: set 'root' in {origin} or --root")
    return cfg, data_root, origin


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return cleaned or "dataset"


# --- what every builder returns ------------------------------------------------


@dataclass
class _Built:
    """Rows of one source before row ids and info are attached."""

    classes: list[str]
    records: list[dict[str, Any]]
    captions: list[tuple[int, str]]  # (index into records, caption text)
    funnel: dict[str, Any]
    split_from: str  # "drawn", "given" or "none"
    columns: list[str] = field(default_factory=list)


_BASE_COLUMNS = ["row_id", "file", "width", "height", "label", "split"]
_DTYPES = {
    "row_id": "int64",
    "width": "int64",
    "height": "int64",
    "coco_id": "int64",
    "area_frac": "float64",
}


def _assemble(cfg: DatasetConfig, root: Path, built: _Built) -> Dataset:
    columns = _BASE_COLUMNS + built.columns
    images = pd.DataFrame(
        [{"row_id": i, **rec} for i, rec in enumerate(built.records)], columns=columns
    )
    images = images.astype({c: t for c, t in _DTYPES.items() if c in columns})
    labels = images["label"].tolist()
    captions = pd.DataFrame(
        [(i, r, text, labels[r]) for i, (r, text) in enumerate(built.captions)],
        columns=["row_id", "image_row_id", "text", "label"],
    ).astype({"row_id": "int64", "image_row_id": "int64"})
    per_split = {
        s: {c: int(((images["label"] == c) & (images["split"] == s)).sum()) for c in built.classes}
        for s in ("support", "test")
    }
    info = {
        "format_version": INFO_FORMAT_VERSION,
        "name": cfg.name,
        "source": cfg.source,
        "root": str(root),
        "config": cfg.to_dict(),
        "classes": list(built.classes),
        "fingerprint": fingerprint(images, captions),
        "funnel": built.funnel,
        "counts": {"images": len(images), "captions": len(captions), **per_split},
        "split_from": built.split_from,
    }
    return Dataset(name=cfg.name, root=root, images=images, captions=captions, info=info)


def _select(
    pools: dict[str, list[Any]], cfg: DatasetConfig, origin: str, *, given_split: bool = False
) -> tuple[dict[str, list[Any]], dict[str, set[int]]]:
    """Seeded per-class sample, then the support draw (indexes into each sample)."""
    if not any(pools.values()):
        raise DataError(
            f"The selection in {origin} leaves no images (classes: {', '.join(pools)}): "
            "check classes, exclude and the data root"
        )
    empty = [c for c, pool in pools.items() if not pool]
    if empty:
        raise DataError(f"Class '{empty[0]}' has no images left after the filters in {origin}")
    k = cfg.support_per_class
    if k is not None and given_split:
        raise ConfigError(
            f"support_per_class conflicts with the train/test split given by {origin}: "
            "drop one of them"
        )
    rng = np.random.default_rng(cfg.seed)
    sampled: dict[str, list[Any]] = {}
    for c, pool in pools.items():
        n = cfg.per_class
        if n is not None and len(pool) < n:
            raise DataError(
                f"Class '{c}' has {len(pool)} images after the filters in {origin}, fewer than "
                f"per_class={n}: lower per_class or set it to null to take all"
            )
        keep = range(len(pool)) if n is None else sorted(rng.choice(len(pool), n, replace=False))
        sampled[c] = [pool[i] for i in keep]
    support: dict[str, set[int]] = {c: set() for c in pools}
    for c, rows in sampled.items():
        if k is None:
            continue
        if k > len(rows):
            raise DataError(
                f"Class '{c}' has {len(rows)} images in {origin}, fewer than "
                f"support_per_class={k}: lower support_per_class"
            )
        support[c] = {int(i) for i in rng.choice(len(rows), k, replace=False)}
    return sampled, support


def _unknown_class(name: str, field_name: str, origin: str, available: Iterable[str]) -> DataError:
    return DataError(
        f"Unknown class '{name}' in '{field_name}' of {origin}. Available: {', '.join(available)}"
    )


def _require_file(root: Path, cfg: DatasetConfig, field_name: str, origin: str) -> Path:
    rel = cfg.path(field_name)
    path = root / str(rel)
    if not path.is_file():
        raise DataError(f"File {path} (field '{field_name}' of {origin}) does not exist")
    return path


# --- COCO ----------------------------------------------------------------------


def _read_json(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path} is not valid JSON ({type(exc).__name__}): fix or replace it"
        ) from None
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


def _coco_index(path: Path) -> Any:
    """pycocotools' index over an already validated instances JSON (its prints silenced)."""
    from pycocotools.coco import COCO

    data = _read_json(path, ("images", "annotations", "categories"))
    _check_entries(path, data, "images", ("id", "file_name"))
    _check_entries(path, data, "annotations", ("id", "image_id", "category_id", "bbox"))
    _check_entries(path, data, "categories", ("id", "name"))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def _load_coco(cfg: DatasetConfig, root: Path, origin: str) -> _Built:
    inst_path = _require_file(root, cfg, "instances", origin)
    coco = _coco_index(inst_path)
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    cat_id = {c["name"]: c["id"] for c in cats}
    classes = list(cfg.classes) or [c["name"] for c in cats if c["name"] not in cfg.exclude]
    for name, field_name in [(c, "classes") for c in classes] + [
        (e, "exclude") for e in cfg.exclude
    ]:
        if name not in cat_id:
            raise _unknown_class(name, field_name, f"{origin} ({inst_path.name})", cat_id)
    target_ids = {cat_id[c] for c in classes}
    excluded = {cat_id[e] for e in cfg.exclude}
    cats_of = {i: {a["category_id"] for a in anns} for i, anns in coco.imgToAnns.items()}
    funnel: dict[str, Any] = {"all_images": len(coco.imgs)}
    with_class = {c: sorted(set(coco.catToImgs.get(cat_id[c], []))) for c in classes}
    clean = {c: [i for i in ids if not cats_of[i] & excluded] for c, ids in with_class.items()}
    funnel["with_class"] = {c: len(v) for c, v in with_class.items()}
    funnel["without_person"] = {c: len(v) for c, v in clean.items()}
    if cfg.drop_multi_target:
        pools = {
            c: [i for i in ids if len(cats_of[i] & target_ids) == 1] for c, ids in clean.items()
        }
        funnel["single_target"] = {c: len(v) for c, v in pools.items()}
    else:
        owner = {i: _largest_class(coco, i, target_ids) for ids in clean.values() for i in ids}
        pools = {c: [i for i in ids if owner[i] == cat_id[c]] for c, ids in clean.items()}
        funnel["assigned"] = {c: len(v) for c, v in pools.items()}
    sampled, support = _select(pools, cfg, origin)
    funnel["sampled"] = {c: len(v) for c, v in sampled.items()}

    causes = _read_causes(root, cfg, inst_path, origin)
    image_dir = PurePosixPath(cfg.path("images") or ".")
    records, order = [], []
    for c, ids in sampled.items():
        for j, img_id in enumerate(ids):
            records.append(_coco_record(coco, img_id, cat_id[c], c, image_dir))
            records[-1]["split"] = "support" if j in support[c] else "test"
            if causes is not None:
                records[-1]["causes"] = ",".join(causes.get(img_id, []))
            order.append(img_id)
    columns = ["coco_id", "bbox", "area_frac"] + (["causes"] if causes is not None else [])
    captions = _coco_captions(root, cfg, origin, order)
    split_from = "none" if cfg.support_per_class is None else "drawn"
    return _Built(classes, records, captions, funnel, split_from, columns)


def _box_area(ann: dict[str, Any]) -> float:
    return float(ann["bbox"][2]) * float(ann["bbox"][3])


def _largest_class(coco: Any, img_id: int, target_ids: set[int]) -> int:
    anns = [a for a in coco.imgToAnns[img_id] if a["category_id"] in target_ids]
    return max(anns, key=lambda a: (_box_area(a), -a["id"]))["category_id"]


def _coco_record(
    coco: Any, img_id: int, class_id: int, label: str, image_dir: PurePosixPath
) -> dict[str, Any]:
    img = coco.imgs[img_id]
    width, height = int(img.get("width") or 0), int(img.get("height") or 0)
    anns = [a for a in coco.imgToAnns[img_id] if a["category_id"] == class_id]
    best = max(anns, key=lambda a: (_box_area(a), -a["id"]))
    bbox = [float(v) for v in best["bbox"]]
    area = width * height
    return {
        "file": (image_dir / img["file_name"]).as_posix(),
        "width": width,
        "height": height,
        "label": label,
        "coco_id": int(img_id),
        "bbox": bbox,
        "area_frac": _box_area(best) / area if area > 0 else math.nan,
    }


def _coco_captions(
    root: Path, cfg: DatasetConfig, origin: str, order: list[int]
) -> list[tuple[int, str]]:
    if cfg.captions is None:
        return []
    path = _require_file(root, cfg, "captions", origin)
    data = _read_json(path, ("annotations",))
    _check_entries(path, data, "annotations", ("image_id", "caption"))
    by_image: dict[Any, list[str]] = {img_id: [] for img_id in order}
    for ann in data["annotations"]:
        texts = by_image.get(ann["image_id"])
        if texts is not None:
            texts.append(str(ann["caption"]).strip())
    return [(r, text) for r, img_id in enumerate(order) for text in by_image[img_id]]


def _read_causes(
    root: Path, cfg: DatasetConfig, inst_path: Path, origin: str
) -> dict[int, list[str]] | None:
    """The demo world's sidecar: image id -> failure causes (None when absent)."""
    if cfg.causes is not None:
        path = _require_file(root, cfg, "causes", origin)
    else:
        path = inst_path.with_name(re.sub(r"^instances", "causes", inst_path.name))
        if path == inst_path or not path.is_file():
            return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is not valid JSON: fix or delete it") from None
    return _parse_causes(data, path)


def _parse_causes(data: Any, path: Path) -> dict[int, list[str]]:
    if isinstance(data, dict) and ("images" in data or "causes" in data):
        data = data.get("images", data.get("causes"))
    if isinstance(data, list):  # [{"image_id": 1, "causes": [...]}, ...]
        try:
            data = {e.get("image_id", e.get("id")): e["causes"] for e in data}
        except (AttributeError, KeyError, TypeError):
            raise DataError(f"{path}: entries need 'image_id' and 'causes'") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of image id to causes")
    out: dict[int, list[str]] = {}
    for key, value in data.items():
        try:
            img_id = int(key)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {key!r} is not an image id") from None
        items = value.split(",") if isinstance(value, str) else list(value or [])
        out[img_id] = [str(v).strip() for v in items if str(v).strip()]
    return out


# --- class folders -------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; (0, 0) when unreadable (kept, not dropped)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Exception:  # any decoder failure: the encoder records the reason later
        return 0, 0


def _load_folder(cfg: DatasetConfig, root: Path, origin: str) -> _Built:
    base = root / cfg.path("images") if cfg.images else root
    if not base.is_dir():
        raise DataError(f"Image folder {base} (from {origin}) does not exist")
    given = (base / "train").is_dir() and (base / "test").is_dir()
    parts = [("support", base / "train"), ("test", base / "test")] if given else [("test", base)]
    found: dict[str, list[tuple[int, str, Path]]] = {}
    for rank, (split, folder) in enumerate(parts):
        for cls_dir in _class_dirs(folder):
            files = _image_files(cls_dir)
            found.setdefault(cls_dir.name, []).extend((rank, split, f) for f in files)
    found = {c: sorted(v, key=lambda t: (t[0], t[2])) for c, v in found.items() if v}
    classes = list(cfg.classes) or sorted(found)
    for c in classes:
        if c not in found:
            raise _unknown_class(c, "classes", origin, sorted(found) or ["(no class folders)"])
    if len(classes) < 2:
        raise DataError(
            f"{base} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}): "
            "a classifier needs at least two, one sub-folder of images per class"
        )
    pools = {c: found[c] for c in classes}
    sampled, support = _select(pools, cfg, origin, given_split=given)
    records, index = [], {}
    for c, items in sampled.items():
        for j, (_, split, path) in enumerate(items):
            width, height = _header_size(path)
            if not given:
                split = "support" if j in support[c] else "test"
            rel = path.relative_to(root).as_posix()
            index[rel] = len(records)
            records.append(
                {"file": rel, "width": width, "height": height, "label": c, "split": split}
            )
    funnel = {
        "all_images": sum(len(v) for v in found.values()),
        "with_class": {c: len(pools[c]) for c in classes},
        "sampled": {c: len(v) for c, v in sampled.items()},
    }
    known = {p.relative_to(root).as_posix() for v in found.values() for _, _, p in v}
    captions = _folder_captions(base, root, index, known)
    split_from = "given" if given else ("drawn" if cfg.support_per_class is not None else "none")
    return _Built(classes, records, captions, funnel, split_from)


def _folder_captions(
    base: Path, root: Path, index: dict[str, int], known: set[str]
) -> list[tuple[int, str]]:
    path = base / "captions.csv"
    if not path.is_file():
        return []
    table = _read_table(path)
    for col in ("file", "caption"):
        if col not in table.columns:
            raise DataError(f"{path} has no '{col}' column (columns: {', '.join(table.columns)})")
    out = []
    for i, (file, text) in enumerate(zip(table["file"], table["caption"], strict=True)):
        if _missing(file) or _missing(text):
            continue
        rel = (base / str(file)).relative_to(root).as_posix()
        if rel not in known:
            raise DataError(f"{path} row {i + 2}: '{file}' is not an image of the class folders")
        if rel in index:
            out.append((index[rel], str(text).strip()))
    return sorted(out, key=lambda t: t[0])


# --- manifests -----------------------------------------------------------------


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


_MANIFEST_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def _read_table(path: Path) -> pd.DataFrame:
    reader = _MANIFEST_READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: a manifest must be .csv or .parquet")
    try:
        return reader(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"Cannot read {path}: {str(exc).splitlines()[0]}") from None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == ""


def _manifest_rows(
    path: Path, root: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Group manifest rows by path: {rel: {"label", "split"}}, {rel: [captions]}."""
    table = _read_table(path)
    for col in ("path", "label"):
        if col not in table.columns:
            raise DataError(
                f"Manifest {path} has no '{col}' column (columns: "
                f"{', '.join(map(str, table.columns))}); it needs 'path' and 'label', "
                "optionally 'split' and 'caption'"
            )
    rows: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}

    def column(name: str) -> list[Any]:
        return table[name].tolist() if name in table.columns else [None] * len(table)

    split_col = column("split")
    for i, (p, label, split, cap) in enumerate(
        zip(column("path"), column("label"), split_col, column("caption"), strict=True)
    ):
        line = f"{path} row {i + 2}" if path.suffix.lower() == ".csv" else f"{path} row {i}"
        if _missing(p) or _missing(label):
            raise DataError(f"{line}: empty path or label")
        rel = _relative(Path(str(p)).expanduser(), root)
        split = None if _missing(split) else _SPLIT_ALIASES.get(str(split).strip().lower())
        if split is None and "split" in table.columns and not _missing(split_col[i]):
            raise DataError(f"{line}: unknown split {split_col[i]!r}; use support/train or test")
        entry = rows.setdefault(rel, {"label": str(label), "split": split})
        if entry["label"] != str(label) or entry["split"] != split:
            raise DataError(f"{line}: '{p}' appears again with another label or split")
        if not _missing(cap):
            texts.setdefault(rel, []).append(str(cap).strip())
    return rows, texts


def _relative(path: Path, root: Path) -> str:
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()  # outside the root: kept absolute


def _load_manifest(cfg: DatasetConfig, root: Path, origin: str) -> _Built:
    path = _require_file(root, cfg, "manifest", origin)
    rows, texts = _manifest_rows(path, root)
    if not rows:
        raise DataError(f"Manifest {path} has no rows")
    splits = {e["split"] for e in rows.values()}
    if None in splits and len(splits) > 1:
        raise DataError(f"Manifest {path}: some rows have a split and others none; fill them all")
    given = None not in splits
    labels = list(dict.fromkeys(e["label"] for e in rows.values()))
    classes = list(cfg.classes) or sorted(labels)
    for c in classes:
        if c not in labels:
            raise _unknown_class(c, "classes", origin, sorted(labels))
    if len(classes) < 2:
        raise DataError(f"Manifest {path} has {len(classes)} class(es): a classifier needs two")
    pools = {c: [rel for rel, e in rows.items() if e["label"] == c] for c in classes}
    sampled, support = _select(pools, cfg, origin, given_split=given)
    chosen = {rel: (c, j) for c, rels in sampled.items() for j, rel in enumerate(rels)}
    records, captions = [], []
    for rel, entry in rows.items():  # manifest order
        if rel not in chosen:
            continue
        c, j = chosen[rel]
        split = entry["split"] if given else ("support" if j in support[c] else "test")
        width, height = _header_size(root / rel)
        captions += [(len(records), t) for t in texts.get(rel, [])]
        records.append({"file": rel, "width": width, "height": height, "label": c, "split": split})
    funnel = {
        "all_images": len(rows),
        "with_class": {c: len(v) for c, v in pools.items()},
        "sampled": {c: len(v) for c, v in sampled.items()},
    }
    split_from = "given" if given else ("drawn" if cfg.support_per_class is not None else "none")
    return _Built(classes, records, captions, funnel, split_from)


_BUILDERS: dict[str, Callable[[DatasetConfig, Path, str], _Built]] = {
    "coco": _load_coco,
    "folder": _load_folder,
    "manifest": _load_manifest,
}


def _json_native(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
