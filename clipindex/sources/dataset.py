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

import dataclasses
import hashlib
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
from clipindex.sources import coco as _coco

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
_DTYPES = {"row_id": "int64", "width": "int64", "height": "int64", "coco_id": "int64",
           "area_frac": "float64"}  # fmt: skip


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


# --- COCO (the JSON itself is read in clipindex.sources.coco) ---------------------------


def _load_coco(cfg: DatasetConfig, root: Path, origin: str) -> _Built:
    inst_path = _require_file(root, cfg, "instances", origin)
    coco = _coco.load_instances(inst_path)
    where = f"{origin} ({inst_path.name})"
    classes, pools, funnel = _coco.class_pools(
        coco, cfg.classes, cfg.exclude, cfg.drop_multi_target, where
    )
    sampled, support = _select(pools, cfg, origin)
    funnel["sampled"] = {c: len(v) for c, v in sampled.items()}
    causes_path = _require_file(root, cfg, "causes", origin) if cfg.causes else None
    causes_path = causes_path or _coco.causes_beside(inst_path)
    causes = _coco.read_causes(causes_path) if causes_path is not None else None
    image_dir = PurePosixPath(cfg.path("images") or ".")
    records, order = [], []
    for c, ids in sampled.items():
        for j, img_id in enumerate(ids):
            rec = _coco.image_record(coco, img_id, c, image_dir)
            rec["split"] = "support" if j in support[c] else "test"
            if causes is not None:
                rec["causes"] = ",".join(causes.get(img_id, []))
            records.append(rec)
            order.append(img_id)
    columns = ["coco_id", "bbox", "area_frac"] + (["causes"] if causes is not None else [])
    captions = []
    if cfg.captions is not None:
        captions = _coco.captions_for(_require_file(root, cfg, "captions", origin), order)
    split_from = "none" if cfg.support_per_class is None else "drawn"
    return _Built(classes, records, captions, funnel, split_from, columns)


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
    base = root / (cfg.path("images") or ".")
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
    records: list[dict[str, Any]] = []
    index: dict[str, int] = {}
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


_MANIFEST_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".csv": lambda path: pd.read_csv(path, dtype=str, keep_default_na=False),
    ".parquet": pd.read_parquet,
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
    records: list[dict[str, Any]] = []
    captions: list[tuple[int, str]] = []
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
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
