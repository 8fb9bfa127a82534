"""What every source builder returns, and the helpers the builders share.

A builder (``coco.load_coco``, ``folder.load_folder``, ``manifest.load_manifest``) maps
``(DatasetConfig, data root, origin)`` to :class:`Built`: the rows of one source before
row ids and ``info`` are attached by :func:`clipindex.sources.dataset.assemble`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipindex.config import DatasetConfig
from clipindex.errors import DataError

__all__ = ["Built", "header_size", "require_file", "unknown_class"]


@dataclass
class Built:
    """Rows of one source before row ids and info are attached."""

    classes: list[str]
    records: list[dict[str, Any]]
    captions: list[tuple[int, str]]  # (index into records, caption text)
    funnel: dict[str, Any]
    split_from: str  # "drawn", "given" or "none"
    columns: list[str] = field(default_factory=list)


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


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; (0, 0) when unreadable (kept, not dropped)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Exception:  # any decoder failure: the encoder records the reason later
        return 0, 0
