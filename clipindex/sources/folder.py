"""The class-folder source: ``DIR/<class>/*.jpg`` (or ``DIR/{train,test}/<class>/``).

Row order: by class (config order, else sorted folder names), then ``support`` before
``test`` (``train/``/``test/`` layout), then by path. An optional ``captions.csv``
(``file``, ``caption``) beside the class folders gives captions. An image (or class
folder) that is a symlink leading outside the data root is refused unless
``allow_outside_root``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipindex.config import DatasetConfig
from clipindex.errors import DataError
from clipindex.sources.filters import select
from clipindex.sources.manifest import missing, read_table
from clipindex.sources.records import Built, header_size, under_root, unknown_class

__all__ = ["IMAGE_EXTENSIONS", "MARKERS", "load_folder", "refuse_clipindex_folders"]

#: File extensions (lower case) a folder source picks up.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (p.is_file() or p.is_symlink())  # a dangling link: a recorded skip at build
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


#: Files that mark a folder clipindex wrote, which is never a class-folder dataset:
#: marker -> (what the folder is, what to give instead).
MARKERS: dict[str, tuple[str, str]] = {
    "world.json": ("a demo world", "its dataset config (clipindex build demo --root WORLD)"),
    "dataset.json": ("a clipindex store", "the images' own source, or search it with --index"),
    "CURRENT": ("a clipindex store", "the images' own source, or search it with --index"),
    "manifest.json": ("a clipindex store's backbone folder", "the images' own source"),
    "run.json": ("a clipindex results folder", "the images' own source (clipindex report "
                                                "reads this folder)"),
}


def refuse_clipindex_folders(folders: list[Path], origin: str) -> None:
    """A folder (or class sub-folder) that clipindex wrote is refused in one line naming
    the marker file found, instead of encoding its PNGs as a class."""
    for folder in folders:
        for marker, (what, instead) in MARKERS.items():
            if (folder / marker).is_file():
                raise DataError(f"{folder} is {what} (it holds {marker}), not a folder of class "
                                f"sub-folders ({origin}): give {instead}")


def _refuse_outside(files: list[Path], root: Path, origin: str, allow: bool) -> None:
    """A file (or class folder) that is a symlink leading outside the data root is
    refused as COCO files, manifests and ``captions.csv`` refuse a path outside it (a
    one-line :class:`DataError`), unless ``allow_outside_root``."""
    if allow:
        return
    top = root.resolve()
    for path in files:
        real = path.resolve()
        if not real.is_relative_to(top):
            raise DataError(
                f"{origin}: {path.relative_to(root).as_posix()!r} is a link to {real}, "
                f"outside the data root {top}; move the file under the root, or pass "
                "--allow-outside-root (recorded in dataset.json) to accept it")


def load_folder(cfg: DatasetConfig, root: Path, origin: str) -> Built:
    """One class sub-folder per label (optionally under ``train/`` and ``test/``)."""
    base = root / (cfg.path("images") or ".")
    if not base.is_dir():
        raise DataError(f"Image folder {base} (from {origin}) does not exist")
    given = (base / "train").is_dir() and (base / "test").is_dir()
    parts = [("support", base / "train"), ("test", base / "test")] if given else [("test", base)]
    refuse_clipindex_folders([base, *(folder for _, folder in parts)], origin)
    found: dict[str, list[tuple[int, str, Path]]] = {}
    for rank, (split, folder) in enumerate(parts):
        refuse_clipindex_folders(_class_dirs(folder), origin)
        for cls_dir in _class_dirs(folder):
            files = _image_files(cls_dir)
            _refuse_outside(files, root, origin, cfg.allow_outside_root)
            found.setdefault(cls_dir.name, []).extend((rank, split, f) for f in files)
    found = {c: sorted(v, key=lambda t: (t[0], t[2])) for c, v in found.items() if v}
    classes = list(cfg.classes) or sorted(found)
    for c in classes:
        if c not in found:
            raise unknown_class(c, "classes", origin, sorted(found) or ["(no class folders)"])
    if len(classes) < 2:
        raise DataError(
            f"{base} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}): "
            "a classifier needs at least two, one sub-folder of images per class"
        )
    pools = {c: found[c] for c in classes}
    sampled, support = select(pools, cfg, origin, given_split=given)
    records: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for c, items in sampled.items():
        for j, (_, split, path) in enumerate(items):
            width, height = header_size(path)
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
    return Built(classes, records, captions, funnel, split_from)


def _folder_captions(
    base: Path, root: Path, index: dict[str, int], known: set[str]
) -> list[tuple[int, str]]:
    path = base / "captions.csv"
    if not path.is_file():
        return []
    table = read_table(path)
    for col in ("file", "caption"):
        if col not in table.columns:
            raise DataError(f"{path} has no '{col}' column (columns: {', '.join(table.columns)})")
    out = []
    for i, (file, text) in enumerate(zip(table["file"], table["caption"], strict=True)):
        if missing(file) or missing(text):
            continue
        rel = under_root(root, str(file), f"{path} row {i + 2}", base=base)
        if rel not in known:
            raise DataError(f"{path} row {i + 2}: '{file}' is not an image of the class folders")
        if rel in index:
            out.append((index[rel], str(text).strip()))
    return sorted(out, key=lambda t: t[0])
