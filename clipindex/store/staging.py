"""clip-retrieval folders kept in object storage: ``clipindex import s3://...`` and
``clipindex export ... --out s3://...``.

An import from a URL first copies the folder's three sub-folders (``img_emb/``,
``text_emb/``, ``metadata/``; nothing else) into a hidden staging folder beside the
store being written (``OUT/.<name>.fetch-<pid>/``), imports from there and removes it:
:func:`~clipindex.store.imported.import_store` memory-maps the vectors, which a remote
file cannot be. An export to a URL is written to a local temporary folder as for a
local ``--out``, then uploaded (``fs.put``, recursive); the URL must not hold anything.
Both go through fsspec with the caller's ``storage_options`` (and the environment's
credentials); nothing of them is written to the store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from clipindex.errors import DataError, UserInputError
from clipindex.sources.storage import filesystem, remote_errors

__all__ = ["SUBFOLDERS", "check_empty_target", "fetched_folder", "upload_folder"]

#: The sub-folders of clip-retrieval's output that an import reads.
SUBFOLDERS = ("img_emb", "text_emb", "metadata")


@contextlib.contextmanager
def fetched_folder(url: str, beside: Path, name: str,
                   options: Mapping[str, Any] | None) -> Iterator[Path]:
    """A local copy of the clip-retrieval folder at ``url`` (removed on exit)."""
    fs, path = filesystem(url, options)
    path = path.rstrip("/")
    with remote_errors(url):
        is_folder = fs.isdir(path)
    if not is_folder:
        raise DataError(f"{url} is not a folder (give clip-retrieval's output folder, "
                        "holding img_emb/ and metadata/)")
    local = beside / f".{name}.fetch-{os.getpid()}"
    try:
        local.mkdir(parents=True)
        with remote_errors(url):
            for sub in SUBFOLDERS:
                if fs.isdir(f"{path}/{sub}"):
                    fs.get(f"{path}/{sub}/", str(local / sub) + "/", recursive=True)
        yield local
    finally:
        shutil.rmtree(local, ignore_errors=True)


def check_empty_target(url: str, options: Mapping[str, Any] | None) -> None:
    """A one-line error unless nothing lies at ``url`` yet."""
    fs, path = filesystem(url, options)
    with remote_errors(url):
        taken = fs.exists(path.rstrip("/")) and (not fs.isdir(path) or bool(fs.ls(path)))
    if taken:
        raise UserInputError(f"{url} already exists and is not an empty folder; choose "
                             "another --out or remove it first")


def upload_folder(local: Path, url: str, options: Mapping[str, Any] | None) -> None:
    """Every file under ``local`` to the same relative path under ``url``."""
    fs, path = filesystem(url, options)
    path = path.rstrip("/")
    with remote_errors(url):
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            fs.put_file(str(file), f"{path}/{file.relative_to(local).as_posix()}")
