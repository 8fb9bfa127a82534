"""The dataset: :class:`Dataset`, :func:`load_dataset` (what ``source`` is) and assembly.

A :class:`Dataset` is two tables and a record of how they were made:

``images``
    ``row_id`` (0..n-1, the table's order), ``file`` (relative to ``root``),
    ``width``, ``height``, ``label``, ``split`` (``support``/``test``), and for
    COCO sources ``coco_id``, ``bbox`` (``[x, y, w, h]`` of the subject: the
    largest box of the image's class) and ``area_frac`` (bbox area / image area),
    plus ``causes`` (comma-joined failure causes, '' when clean) and ``context``
    (the scene's context tag: field, road, indoor, beach, snow) when the demo
    world's sidecar ``causes_<split>.json`` lies beside ``instances_<split>.json``.
``captions``
    ``row_id``, ``image_row_id``, ``text``, ``label``.
``info``
    the content of ``dataset.json``: source kind, config, classes, a fingerprint
    of the tables (independent of ``root``) and the per-class funnel.

Row order (documented because row ids are the join key for every vector) is each
source's: :mod:`~clipindex.sources.coco`, :mod:`~clipindex.sources.folder`,
:mod:`~clipindex.sources.manifest`; the funnel and the seeded draws are
:mod:`~clipindex.sources.filters`'; the fingerprint :mod:`~clipindex.sources.fingerprint`'.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clipindex.config import (
    DatasetConfig,
    apply_overrides,
    build_config,
    load_dataset_config,
    resolve_config_source,
)
from clipindex.errors import ConfigError, DataError, UserInputError
from clipindex.sources.coco import load_coco
from clipindex.sources.fingerprint import fingerprint
from clipindex.sources.folder import IMAGE_EXTENSIONS, load_folder
from clipindex.sources.manifest import MANIFEST_READERS, load_manifest
from clipindex.sources.parquet import load_parquet_images
from clipindex.sources.records import Built
from clipindex.sources.remote import load_remote_folder, load_remote_manifest
from clipindex.sources.shards import load_webdataset
from clipindex.sources.storage import ImageReader, is_url, redact
from clipindex.sources.study import load_study

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "assemble",
    "fingerprint",
    "load_dataset",
]

INFO_FORMAT_VERSION = 1


@dataclass
class Dataset:
    """Images and captions tables of one dataset, with their provenance.

    Examples
    --------
    >>> ds = load_dataset("demo", root="worlds/demo")  # doctest: +SKIP
    >>> ds.images.groupby("label").size().tolist()  # doctest: +SKIP
    [200, 200, 200, 200, 200]
    >>> ds.image_paths()[0]  # doctest: +SKIP
    PosixPath('/.../worlds/demo/val/000123.jpg')
    """

    name: str
    root: Path | str  # a URL (str) for remote data
    images: pd.DataFrame
    captions: pd.DataFrame
    info: dict[str, Any]
    #: Reads the image bytes of rows that are not local files (webdataset shards,
    #: parquet, URLs): ``read_many(files) -> [bytes | Exception]``; None: local files.
    reader: ImageReader | None = None

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return list(self.info["classes"])

    def image_paths(self) -> list[Path]:
        """Absolute path of each image, in row-id order (local files only)."""
        if self.reader is not None:
            raise UserInputError(f"dataset {self.name!r} is not local files: read its "
                                 "images with dataset.reader.read_many(files)")
        return [Path(self.root) / f for f in self.images["file"]]


def load_dataset(
    source: str | os.PathLike[str] | DatasetConfig, *, root: str | Path | None = None,
    **overrides: Any
) -> Dataset:
    """Load a dataset from a YAML config, a class-folder tree or a manifest.

    Parameters
    ----------
    source : str, Path or DatasetConfig
        A ``.yaml`` dataset config (or the :class:`~clipindex.config.DatasetConfig`
        itself), a folder of class sub-folders (optionally under ``train/`` and
        ``test/``), or a ``.csv``/``.parquet`` manifest with columns ``path``,
        ``label`` and optionally ``split`` and ``caption``; or webdataset shards
        (a pattern ending in ``.tar``: ``shards/{00000..00009}.tar``); any of them may be
        an fsspec URL (``s3://``, ``gs://``, ``http(s)://``, ``file://``).
    root : str or Path, optional
        Data root replacing the config's ``root`` (manifests: the base of their
        paths, default the manifest's folder).
    **overrides
        Fields of :class:`~clipindex.config.DatasetConfig` to replace, e.g.
        ``per_class=50`` or ``split="val2017"``; ``storage_options`` (fsspec options,
        merged over the config's) and ``label_field``.

    Examples
    --------
    >>> ds = load_dataset("data/fields_roads")  # doctest: +SKIP
    >>> ds = load_dataset("coco-animals", root="~/data/coco",
    ...                   seed=0)  # doctest: +SKIP
    """
    if not isinstance(source, str | os.PathLike | DatasetConfig):
        hint = " (for config fields, pass DatasetConfig(name=..., source=..., ...))" \
            if isinstance(source, dict) else ""
        raise UserInputError(f"load_dataset: source must be a path (str or Path) to a YAML "
                             f"config, a folder or a manifest, or a DatasetConfig; got "
                             f"{type(source).__name__}{hint}")
    if isinstance(source, str) and not source.strip():  # Path("") is the working folder
        raise UserInputError("load_dataset: source is an empty path; give a YAML config, a "
                             "folder or a manifest (\".\" for the working folder)")
    if root is not None and not isinstance(root, str | os.PathLike):
        raise UserInputError(f"load_dataset: root must be a path (str or Path) or None; got "
                             f"{type(root).__name__}")
    options = overrides.pop("storage_options", None) or {}
    if isinstance(source, DatasetConfig):
        cfg, data_root, origin = _from_config(source, root, overrides)
    elif _remote_or_shards(source):
        cfg, data_root, origin = _resolve_location(str(source), root, overrides)
    else:
        path = resolve_config_source(source, "dataset").expanduser()
        cfg, data_root, origin = _resolve(path, root, overrides)
    if options:  # --storage-option: on top of the config's
        cfg = dataclasses.replace(cfg, storage_options={**cfg.storage_options, **options})
    if isinstance(data_root, str):
        builder = _REMOTE_BUILDERS.get(str(cfg.source))
        if builder is None:
            raise ConfigError(f"source {cfg.source} cannot read a URL root ({data_root}): "
                              f"sources that can: {', '.join(sorted(_REMOTE_BUILDERS))}")
    else:
        builder = _BUILDERS[str(cfg.source)]
    built = builder(cfg, data_root, origin)
    return assemble(cfg, data_root, built)


def _remote_or_shards(source: Any) -> bool:
    """A URL, or a webdataset shard pattern (``shards/{00000..00009}.tar``)."""
    text = os.fspath(source)
    return is_url(text) or text.lower().endswith(".tar")


def _data_root(chosen: str | Path) -> Path | str:
    """A local root as an absolute Path; a URL root as a string (``file://`` is local)."""
    text = os.fspath(chosen)
    if text.startswith("file://"):
        return Path(text[len("file://"):]).absolute()
    if is_url(text):
        return text.rstrip("/")
    return Path(text).expanduser().absolute()


def _resolve_location(source: str, root: str | Path | None, overrides: dict[str, Any]
                      ) -> tuple[DatasetConfig, Path | str, str]:
    """A shard pattern, or a URL of a manifest / parquet file / class-folder tree."""
    text = source[len("file://"):] if source.startswith("file://") else source
    parent, _, leaf = text.rstrip("/").rpartition("/")
    stem = leaf.split(".")[0] if "{" not in leaf else (parent.rsplit("/", 1)[-1] or "shards")
    lower = leaf.lower()
    if lower.endswith(".tar"):
        cfg = DatasetConfig(name=_safe_name(stem), source="webdataset", webdataset=text)
        chosen: Any = root if root is not None else "."
    elif lower.endswith(".parquet") and "image_column" in overrides:
        cfg = DatasetConfig(name=_safe_name(stem), source="parquet", parquet=text)
        chosen = root if root is not None else "."
    elif lower.endswith((".csv", ".parquet")):
        cfg = DatasetConfig(name=_safe_name(stem), source="manifest", manifest=leaf)
        chosen = root if root is not None else parent
    else:
        cfg = DatasetConfig(name=_safe_name(leaf), source="folder")
        chosen = text
    return apply_overrides(cfg, overrides), _data_root(chosen), source


# --- resolving what `source` is ------------------------------------------------


def _resolve(
    path: Path, root: str | Path | None, overrides: dict[str, Any]
) -> tuple[DatasetConfig, Path | str, str]:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        cfg = load_dataset_config(path, **overrides)
        chosen = root if root is not None else cfg.root
        if chosen is None and cfg.source in ("webdataset", "parquet"):
            chosen = "."  # their own paths are relative to the working folder
        if chosen is None:
            raise ConfigError(f"{path} sets no 'root': give the data root (--root DATA_DIR)")
        data_root = _data_root(chosen)
        cfg = dataclasses.replace(cfg, root=str(chosen))
        origin = str(path)
        if isinstance(data_root, str):
            return cfg, data_root, origin
    elif path.is_dir():
        if root is not None:
            raise ConfigError(f"--root does not apply to a folder source ({path}): drop it")
        cfg = DatasetConfig(name=_safe_name(path.name), source="folder")
        cfg = apply_overrides(cfg, overrides)
        data_root, origin = path.absolute(), str(path)
    elif suffix in MANIFEST_READERS:
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


def _from_config(
    cfg: DatasetConfig, root: str | Path | None, overrides: dict[str, Any]
) -> tuple[DatasetConfig, Path | str, str]:
    origin = f"dataset config {cfg.name!r}"
    # a DatasetConfig made in Python is not type-checked: check its fields as a YAML's
    cfg = apply_overrides(build_config(DatasetConfig, cfg.to_dict(), origin), overrides)
    chosen = root if root is not None else cfg.root
    if chosen is None and cfg.source in ("webdataset", "parquet"):
        chosen = "."
    if chosen is None:
        raise ConfigError(f"The {origin} sets no 'root': give the data root (--root DATA_DIR)")
    data_root = _data_root(chosen)
    if isinstance(data_root, str):
        return dataclasses.replace(cfg, root=str(chosen)), data_root, origin
    if not data_root.is_dir():
        raise DataError(f"Data root {data_root} is not a folder: set 'root' in the {origin}")
    return dataclasses.replace(cfg, root=str(chosen)), data_root, origin


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return cleaned or "dataset"


_BASE_COLUMNS = ["row_id", "file", "width", "height", "label", "split"]
_DTYPES = {"row_id": "int64", "width": "int64", "height": "int64", "coco_id": "int64",
           "bytes": "int64",
           "area_frac": "float64"}  # fmt: skip


def assemble(cfg: DatasetConfig, root: Path | str, built: Built) -> Dataset:
    """Row ids, the two tables in their dtypes, and ``info`` (``dataset.json``)."""
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
        "config": {**cfg.to_dict(), "storage_options": redact(cfg.storage_options)},
        "classes": list(built.classes),
        "fingerprint": fingerprint(images, captions),
        "funnel": built.funnel,
        "counts": {"images": len(images), "captions": len(captions), **per_split},
        "split_from": built.split_from,
        **built.extra,
    }
    return Dataset(name=cfg.name, root=root, images=images, captions=captions, info=info,
                   reader=built.reader)


def _coco(cfg: DatasetConfig, root: Path | str, origin: str) -> Built:
    """COCO with the default numpy sampler, or the study's own (``sampler: study``)."""
    return (load_study if cfg.sampler == "study" else load_coco)(cfg, root, origin)


_BUILDERS: dict[str, Callable[[DatasetConfig, Any, str], Built]] = {
    "coco": _coco,
    "folder": load_folder,
    "manifest": load_manifest,
    "webdataset": load_webdataset,
    "parquet": load_parquet_images,
}
#: Builders of a URL data root (``root: s3://...``).
_REMOTE_BUILDERS: dict[str, Callable[[DatasetConfig, Any, str], Built]] = {
    "coco": _coco,
    "folder": load_remote_folder,
    "manifest": load_remote_manifest,
    "webdataset": load_webdataset,
    "parquet": load_parquet_images,
}
