"""What every source builder returns, and the helpers the builders share.

A builder (``coco.load_coco``, ``folder.load_folder``, ``manifest.load_manifest``) maps
``(DatasetConfig, data root, origin)`` to :class:`Built`: the rows of one source before
row ids and ``info`` are attached by :func:`clipindex.sources.dataset.assemble`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipindex.config import DatasetConfig
from clipindex.errors import DataError

__all__ = ["Built", "header_size", "locate_file", "require_file", "under_root",
           "unknown_class"]


@dataclass
class Built:
    """Rows of one source before row ids and info are attached."""

    classes: list[str]
    records: list[dict[str, Any]]
    captions: list[tuple[int, str]]  # (index into records, caption text)
    funnel: dict[str, Any]
    split_from: str  # "drawn", "given" or "none"
    columns: list[str] = field(default_factory=list)
    #: Extra ``dataset.json`` entries (e.g. ``unknown_category_ids`` of a COCO source).
    extra: dict[str, Any] = field(default_factory=dict)
    #: What reads the images' bytes when they are not local files (shards, parquet, URLs):
    #: an object with ``read_many(files) -> [bytes | Exception]`` (:mod:`.storage`).
    reader: Any = None


def unknown_class(name: str, field_name: str, origin: str, available: Iterable[str]) -> DataError:
    return DataError(
        f"Unknown class '{name}' in '{field_name}' of {origin}. Available: {', '.join(available)}"
    )


def require_file(root: Path, cfg: DatasetConfig, field_name: str, origin: str) -> Path:
    rel = cfg.path(field_name)
    path = root / str(rel)
    if not path.is_file():
        raise DataError(f"File {path} (field '{field_name}' of {origin}) does not exist")
    return path


def locate_file(root: Path | str, cfg: DatasetConfig, field_name: str, origin: str
                ) -> Path | str:
    """The file a config field names: a URL as given (``file://`` as a local path), under
    a URL root as a URL (its existence is checked when it is read), else
    :func:`require_file`'s checked local path."""
    from clipindex.sources.storage import is_url, join

    rel = str(cfg.path(field_name))
    if rel.startswith("file://"):
        rel = rel[len("file://"):]
    if is_url(rel) or is_url(root):
        return join(str(root), rel)
    path = Path(root) / rel
    if not path.is_file():
        raise DataError(f"File {path} (field '{field_name}' of {origin}) does not exist")
    return path


def under_root(root: Path, path: str | os.PathLike[str], where: str, *,
               base: Path | None = None, allow: bool = False) -> str:
    """``path`` (relative to ``base``, default ``root``, or absolute) as a POSIX path
    relative to ``root``; a relative ``path`` under ``root`` keeps its own spelling.

    One that leads outside the root (``..``, an absolute path elsewhere) is a one-line
    :class:`DataError`, unless ``allow`` (then it is kept absolute). The check is
    lexical (``a/../b`` is ``b``); symlinks inside the root are followed by the decoder.
    """
    text = os.fspath(path)
    if "\0" in text:
        raise DataError(f"{where}: the path {text!r} holds a NUL byte")
    full = Path(os.path.normpath(Path(base if base is not None else root) / Path(text)))
    top = Path(os.path.normpath(root))
    try:
        rel = full.relative_to(top).as_posix()
    except ValueError:
        if allow:
            return full.as_posix()
        raise DataError(
            f"{where}: {text!r} resolves to {full}, outside the data root {top}; move the "
            "file under the root, or pass --allow-outside-root (recorded in dataset.json) "
            "to accept it") from None
    # inside the root: a relative path keeps its own spelling (the tables, and so the
    # fingerprints of existing stores, stay as they were)
    given = Path(text)
    return given.as_posix() if base is None and not given.is_absolute() else rel


#: EXIF orientations that turn the image a quarter: the displayed size is transposed.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied, as the encoder decodes
    it) from the image header; (0, 0) when unreadable (kept, not dropped)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                width, height = int(im.size[0]), int(im.size[1])
                try:
                    orientation = im.getexif().get(0x0112)
                except Exception:  # a corrupt EXIF block: the stored size, unrotated
                    orientation = None
    except Exception:  # any decoder failure: the encoder records the reason later
        return 0, 0
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)
