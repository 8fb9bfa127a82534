"""Typed, frozen configs built from YAML files (dataset and bench configs).

The package ships its own configs (``clipindex/configs/{datasets,bench}/*.yaml``): a bare
name such as ``demo`` or ``coco-animals`` stands for one of them wherever a config path is
taken (:func:`resolve_config_source`), unless a file or folder of that name exists, and
``builtin:NAME`` always does (``clipindex configs`` lists and copies them).

Every config is a frozen dataclass. YAML files are read by one pattern that
other config kinds reuse::

    read_yaml_mapping(path)            -> dict (the file's top-level mapping)
    build_config(cls, mapping, origin) -> cls  (unknown keys, missing fields, types)
    apply_overrides(cfg, overrides)    -> cfg  (``dataclasses.replace``, validated)

and each kind adds a ``load_<kind>_config(path, **overrides)`` function and an
entry in :data:`CONFIG_LOADERS`. Unknown keys fail with the list of valid ones::

    ConfigError: Unknown key 'clases' in configs/x.yaml. Valid: name, source, ...

Paths inside a dataset config are relative to its ``root``; ``root`` itself is
relative to the current directory (``~`` is expanded). ``{split}`` in a path is
replaced by the ``split`` field, so one override (``split: val2017``) moves a
COCO config from ``train2017`` to ``val2017``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from clipindex.config.shipped import (
    BUILTIN_PREFIX,
    builtin_configs,
    copy_builtin_configs,
    describe_builtin_configs,
    is_bare_name,
    resolve_config_source,
)
from clipindex.errors import ConfigError

__all__ = [
    "BUILTIN_PREFIX",
    "BenchConfig",
    "CONFIG_LOADERS",
    "DatasetConfig",
    "SAMPLERS",
    "SOURCE_KINDS",
    "apply_overrides",
    "build_config",
    "builtin_configs",
    "copy_builtin_configs",
    "describe_builtin_configs",
    "load_bench_config",
    "load_config",
    "load_dataset_config",
    "read_yaml_mapping",
    "resolve_config_source",
]

C = TypeVar("C")

#: Source kinds a dataset config may name (``clipindex.sources`` has one builder per kind).
SOURCE_KINDS: tuple[str, ...] = ("coco", "folder", "manifest", "webdataset", "parquet")
#: How a dataset config draws its per-class sample (``sampler``).
SAMPLERS: tuple[str, ...] = ("numpy", "study")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PATH_FIELDS = ("instances", "captions", "images", "causes", "manifest", "webdataset",
                "parquet")
#: The field that names each source kind's data, so ``source`` may be left out.
_KIND_FIELDS = {"webdataset": "webdataset", "parquet": "parquet"}


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset's images and labels come from, and which rows to keep.

    Parameters
    ----------
    name : str
        Folder name of the dataset in the store (``OUT/<name>/``).
    source : str
        ``coco``, ``folder``, ``manifest``, ``webdataset`` or ``parquet`` (may be left
        out when ``webdataset`` or ``parquet`` is given).
    root : str, optional
        Data root; every other path is relative to it. ``None`` means "given
        on the command line" (``--root``) or, for folders/manifests, their own place.
        Any path field (``root`` included) may be an fsspec URL (``s3://``, ``gs://``,
        ``http(s)://``, ``file://``).
    instances, captions : str, optional
        COCO instances / captions JSON (``captions`` optional).
    images : str, optional
        Image directory (COCO ``file_name`` is relative to it; for a folder
        source, the directory that holds the class folders; default: root).
    causes : str, optional
        Demo-world sidecar of failure causes; default: ``causes_<x>.json``
        beside ``instances_<x>.json`` when that file exists.
    manifest : str, optional
        CSV/parquet manifest (``manifest`` sources).
    split : str, optional
        Substituted for ``{split}`` in the paths above (e.g. ``train2017``).
    classes : tuple of str
        Target classes in output order (empty: all categories / folders).
    exclude : tuple of str
        COCO categories whose images are dropped (default ``person``).
    drop_multi_target : bool
        Drop images carrying more than one target class (default True). When
        False, such an image is labelled with the class of its largest box.
    per_class : int, optional
        Images sampled per class (``None``: all).
    seed : int
        Seed of every random draw (sampling, support split).
    support_per_class : int, optional
        Support images drawn per class; the rest are ``test``.
    allow_outside_root : bool
        Accept image paths (COCO ``file_name``, manifest ``path``) that resolve outside
        the data root (default False: such a path is refused). Recorded in
        ``dataset.json``.
    sampler : str
        ``numpy`` (default: ``per_class`` images per class drawn with
        ``numpy.random.default_rng(seed)``) or ``study`` (COCO only: the reference study's
        own pandas selection of caption rows, :mod:`clipindex.sources.study`).
    webdataset : str, optional
        Shards (``webdataset`` sources): a path or URL with webdataset's brace notation,
        ``shards/{00000..00099}.tar``.
    label_field, caption_field : str
        webdataset: the sample member (``cls``, ``txt``, any extension) or key of the
        sample's ``.json`` holding the label (default ``cls``) / caption (default ``txt``).
    parquet : str, optional
        A parquet file of image bytes (``parquet`` sources; the Hugging Face ``datasets``
        layout: an ``image`` struct of ``bytes``/``path``, or a binary column).
    image_column, label_column, caption_column : str
        parquet: the columns of the image (default ``image``), label (default ``label``;
        class-label integers are named by the file's ``datasets`` features) and caption
        (default: none).
    storage_options : mapping
        fsspec options of every URL (``endpoint_url``, ``key``, ``anon``, ...); also
        ``--storage-option KEY=VALUE``. Secrets are never written to ``dataset.json``.

    Examples
    --------
    >>> cfg = DatasetConfig(name="pets", source="folder", root="data/pets")
    >>> dataclasses.replace(cfg, per_class=50).per_class
    50
    """

    name: str
    source: str | None = None
    root: str | None = None
    instances: str | None = None
    captions: str | None = None
    images: str | None = None
    causes: str | None = None
    manifest: str | None = None
    split: str | None = None
    classes: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ("person",)
    drop_multi_target: bool = True
    per_class: int | None = None
    seed: int = 0
    support_per_class: int | None = None
    allow_outside_root: bool = False
    sampler: str = "numpy"
    webdataset: str | None = None
    label_field: str = "cls"
    caption_field: str = "txt"
    parquet: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    caption_column: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source is None:
            given = [kind for kind, key in _KIND_FIELDS.items() if getattr(self, key)]
            if len(given) != 1:
                raise ConfigError("Missing required field 'source' (coco, folder, manifest, "
                                  "webdataset or parquet)")
            object.__setattr__(self, "source", given[0])
        if not isinstance(self.storage_options, Mapping):
            raise ConfigError("Field 'storage_options' must be a mapping of fsspec options, "
                              "e.g. {endpoint_url: 'http://127.0.0.1:9000'}")
        object.__setattr__(self, "storage_options",
                           {str(k): v for k, v in self.storage_options.items()})
        _check_dataset_config(self)

    def path(self, field: str) -> str | None:
        """The path stored in ``field`` with ``{split}`` substituted.

        Examples
        --------
        >>> DatasetConfig(name="c", source="coco", split="val2017",
        ...               instances="annotations/instances_{split}.json").path("instances")
        'annotations/instances_val2017.json'
        """
        value = getattr(self, field)
        if value is None or "{split}" not in value:
            return value
        if self.split is None:
            raise ConfigError(f"Field '{field}' uses {{split}} but 'split' is not set: set split.")
        return value.replace("{split}", self.split)

    def __hash__(self) -> int:  # storage_options is a dict
        return hash(tuple((k, repr(v)) for k, v in sorted(self.to_dict().items())))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _check_dataset_config(cfg: DatasetConfig) -> None:
    if not isinstance(cfg.name, str) or not _NAME_RE.match(cfg.name):
        raise ConfigError(
            f"Field 'name' must be a folder name (letters, digits, '.', '_', '-'), got {cfg.name!r}"
        )
    if cfg.source not in SOURCE_KINDS:
        raise ConfigError(
            f"Unknown source {cfg.source!r} in field 'source'. Known: {', '.join(SOURCE_KINDS)}"
        )
    if cfg.per_class is not None and cfg.per_class < 1:
        raise ConfigError(f"Field 'per_class' must be at least 1 or null, got {cfg.per_class}")
    if cfg.support_per_class is not None and cfg.support_per_class < 0:
        raise ConfigError(
            f"Field 'support_per_class' must be 0 or more, got {cfg.support_per_class}"
        )
    if len(set(cfg.classes)) != len(cfg.classes):
        raise ConfigError(f"Field 'classes' lists a class twice: {list(cfg.classes)}")
    clash = sorted(set(cfg.classes) & set(cfg.exclude))
    if clash:
        raise ConfigError(f"Classes {clash} are both in 'classes' and 'exclude': remove one")
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"Unknown sampler {cfg.sampler!r} in field 'sampler'. "
                          f"Known: {', '.join(SAMPLERS)}")
    if cfg.sampler == "study" and (cfg.source != "coco" or cfg.drop_multi_target
                                   or cfg.per_class is None or cfg.captions is None):
        raise ConfigError("sampler 'study' is the study's selection of COCO caption rows: it "
                          "needs source coco, captions, per_class and drop_multi_target: false "
                          "(its frame keeps an image with two animals in both classes)")
    if cfg.source == "coco" and cfg.instances is None:
        raise ConfigError("Missing field 'instances' (the COCO instances JSON) for source coco")
    if cfg.source == "manifest" and cfg.manifest is None:
        raise ConfigError("Missing field 'manifest' (a .csv or .parquet file) for source manifest")
    for kind, key in _KIND_FIELDS.items():
        if cfg.source == kind and not getattr(cfg, key):
            raise ConfigError(f"Missing field '{key}' for source {kind}")


# --- the shared loader pattern -------------------------------------------------


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping.

    Examples
    --------
    >>> read_yaml_mapping("demo")["name"]  # doctest: +SKIP
    'demo'
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        tag = re.search(r"tag '([^']*)'", str(getattr(exc, "problem", "") or ""))
        if isinstance(exc, yaml.constructor.ConstructorError) and tag:
            raise ConfigError(
                f"{path} uses the YAML tag {tag.group(1)!r}{where}, which is not allowed: "
                "configs hold plain values only (strings, numbers, lists, mappings); "
                "remove the tag") from None
        raise ConfigError(f"{path} is not valid YAML{where}: fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {_kind(data)}")
    return data


def build_config(cls: type[C], mapping: Mapping[str, Any], origin: str | Path) -> C:
    """Build the frozen dataclass ``cls`` from a mapping read from ``origin``.

    Unknown keys, missing required fields and values of the wrong type raise
    :class:`ConfigError` naming ``origin`` and the field.

    Examples
    --------
    >>> build_config(DatasetConfig, {"name": "x", "source": "folder"}, "x.yaml").source
    'folder'
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in mapping:
        if key not in fields:
            raise ConfigError(f"Unknown key {key!r} in {origin}. Valid: {', '.join(fields)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in mapping
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"Missing required field '{missing[0]}' in {origin}")
    hints = typing.get_type_hints(cls)
    values = {key: _coerce(value, hints[key], key, origin) for key, value in mapping.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def apply_overrides(cfg: C, overrides: Mapping[str, Any], origin: str | Path = "overrides") -> C:
    """``dataclasses.replace`` with checked keys and types.

    Examples
    --------
    >>> cfg = DatasetConfig(name="x", source="folder")
    >>> apply_overrides(cfg, {"seed": 3, "classes": ["a", "b"]}).classes
    ('a', 'b')
    """
    if not overrides:
        return cfg
    fields = [f.name for f in dataclasses.fields(cfg)]  # type: ignore[arg-type]
    hints = typing.get_type_hints(type(cfg))
    values = {}
    for key, value in overrides.items():
        if key not in hints:
            raise ConfigError(f"Unknown override {key!r}. Valid: {', '.join(fields)}")
        values[key] = _coerce(value, hints[key], key, origin)
    try:
        return dataclasses.replace(cfg, **values)  # type: ignore[type-var]
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def load_dataset_config(path: str | Path, **overrides: Any) -> DatasetConfig:
    """Read a dataset config YAML, then apply ``overrides``.

    Examples
    --------
    >>> cfg = load_dataset_config("demo", per_class=20)
    >>> cfg.per_class
    20
    """
    path = resolve_config_source(path, "dataset")
    cfg = build_config(DatasetConfig, read_yaml_mapping(path), path)
    return apply_overrides(cfg, overrides, "overrides")


# --- bench configs (read by clipindex.bench) ------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What a benchmark runs: one dataset, backbones, methods and ensembles.

    Parameters
    ----------
    dataset : str or DatasetConfig
        A dataset config path (relative paths in a bench YAML are relative to that
        YAML's folder), or the dataset config's fields inline.
    backbones, methods : tuple of str
        Backbone names (:func:`clipindex.encode.backbones.resolve_backbone`) and method names
        (:data:`clipindex.classifiers.runner.METHODS`).
    name : str
        A label for the tables' titles.
    dataset_overrides : mapping
        Dataset config fields to replace (e.g. ``{"per_class": 40}``).
    pretrained : str
        Weights of every backbone (``default``, a tag, ``none``, a checkpoint path).
    ensembles : tuple of str
        Ensemble kinds (:data:`clipindex.classifiers.runner.ENSEMBLES`) built over all backbones
        for every method (needs at least two backbones).
    shots, k, weights, seed, templates, prompt, class_weight
        As :func:`clipindex.classifiers.runner.classify` takes them (``shots: null`` uses the
        stored support/test split).
    retrieval : bool
        Measure text↔image Recall@K over the captions.
    recall_ks : tuple of int
        The K of Recall@K.

    Example
    -------
    >>> cfg = BenchConfig(dataset="demo", backbones=("tiny-vit",),
    ...                   methods=("prompt",))
    >>> dataclasses.replace(cfg, ensembles=()).ensembles
    ()
    """

    dataset: Any
    backbones: tuple[str, ...]
    methods: tuple[str, ...]
    name: str = "bench"
    dataset_overrides: Any = field(default_factory=dict)
    pretrained: str = "default"
    ensembles: tuple[str, ...] = ("majority",)
    shots: int | None = None
    k: int = 10
    weights: str = "uniform"
    seed: int = 0
    templates: str | None = None
    prompt: str | None = None
    class_weight: str | None = "auto"
    retrieval: bool = True
    recall_ks: tuple[int, ...] = (1, 5, 10)

    def __post_init__(self) -> None:
        ds = self.dataset
        if isinstance(ds, Mapping):
            ds = build_config(DatasetConfig, dict(ds), "the bench config's inline dataset")
        elif isinstance(ds, os.PathLike):
            ds = os.fspath(ds)
        if not isinstance(ds, (str, DatasetConfig)):
            raise ConfigError("Field 'dataset' must be a dataset config path or a mapping of "
                              "its fields")
        object.__setattr__(self, "dataset", ds)
        over = self.dataset_overrides if self.dataset_overrides is not None else {}
        if not isinstance(over, Mapping):
            raise ConfigError("Field 'dataset_overrides' must be a mapping, e.g. {per_class: 40}")
        object.__setattr__(self, "dataset_overrides", dict(over))
        for name in ("backbones", "methods"):
            if not getattr(self, name):
                raise ConfigError(f"Field '{name}' must list at least one name")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (an inline dataset becomes its fields)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.dataset, DatasetConfig):
            out["dataset"] = self.dataset.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def load_bench_config(path: str | Path, **overrides: Any) -> BenchConfig:
    """Read a bench config YAML, then apply ``overrides``.

    A relative ``dataset`` path is relative to the bench YAML's own folder, so
    ``dataset: ../datasets/demo.yaml`` works from any current directory. ``name``
    defaults to the file's stem.

    Examples
    --------
    >>> load_bench_config("demo").methods[:2]
    ('prompt', 'prototype')
    """
    path = resolve_config_source(path, "bench")
    mapping = read_yaml_mapping(path)
    mapping.setdefault("name", path.stem)
    ds = mapping.get("dataset")
    if isinstance(ds, str) and ds.startswith(BUILTIN_PREFIX):
        pass
    elif isinstance(ds, str) and is_bare_name(ds) and not (path.parent / ds).exists() \
            and ds in builtin_configs("dataset"):
        mapping["dataset"] = BUILTIN_PREFIX + ds  # a shipped dataset config by name
    elif isinstance(ds, str) and not Path(ds).expanduser().is_absolute():
        mapping["dataset"] = os.path.normpath(path.parent / ds)
    cfg = build_config(BenchConfig, mapping, path)
    return apply_overrides(cfg, overrides, "overrides")


#: Config kinds by name; bench and other kinds add their loader here.
CONFIG_LOADERS: dict[str, Callable[..., Any]] = {
    "dataset": load_dataset_config,
    "bench": load_bench_config,
}


def load_config(kind: str, path: str | Path, **overrides: Any) -> Any:
    """Load a config of the given kind (a key of :data:`CONFIG_LOADERS`).

    Examples
    --------
    >>> load_config("dataset", "demo").name  # doctest: +SKIP
    'demo'
    """
    try:
        loader = CONFIG_LOADERS[kind]
    except KeyError:
        raise ConfigError(
            f"Unknown config kind {kind!r}. Known: {', '.join(CONFIG_LOADERS)}"
        ) from None
    return loader(path, **overrides)


# --- type coercion -------------------------------------------------------------


def _kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        tuple: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _coerce(value: Any, hint: Any, key: str, origin: str | Path) -> Any:
    """Check ``value`` against a field's type hint; lists become tuples."""
    origin_type = typing.get_origin(hint)
    if origin_type in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(value, inner[0], key, origin)
    if origin_type is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise _type_error(key, "a list", value, origin)
        return tuple(_coerce(v, item, key, origin) for v in value)
    checker = _SCALARS.get(hint)
    if checker is None:
        return value
    ok, converted = checker(value)
    if not ok:
        raise _type_error(key, _WANTED[hint], value, origin)
    return converted


def _type_error(key: str, wanted: str, value: Any, origin: str | Path) -> ConfigError:
    return ConfigError(f"Field '{key}' in {origin} must be {wanted}, got {_kind(value)} {value!r}")


def _as_str(v: Any) -> tuple[bool, Any]:
    # YAML reads `split: 2017` as an int; a bare number is a fine name or path.
    if isinstance(v, str):
        return True, v
    if isinstance(v, int | float) and not isinstance(v, bool):
        return True, str(v)
    return False, None


def _as_int(v: Any) -> tuple[bool, Any]:
    if isinstance(v, bool):
        return False, None
    if isinstance(v, int):
        return True, v
    if isinstance(v, float) and v.is_integer():
        return True, int(v)
    return False, None


def _as_float(v: Any) -> tuple[bool, Any]:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return True, float(v)
    return False, None


def _as_bool(v: Any) -> tuple[bool, Any]:
    return (True, v) if isinstance(v, bool) else (False, None)


_WANTED = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}

_SCALARS: dict[Any, Callable[[Any], tuple[bool, Any]]] = {
    str: _as_str,
    int: _as_int,
    float: _as_float,
    bool: _as_bool,
}
