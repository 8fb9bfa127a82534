"""What the report reads from a results folder, each part loaded once and allowed to be
missing: :class:`Missing` says which file is absent, and the section shows it.

A bench results folder (``clipindex bench`` / ``clipindex demo``) holds ``run.json``,
``tables.csv``, ``records/``, ``predictions/``, ``retrieval.csv``, ``errors.csv`` and the
confusion PNGs; ``run.json`` names the store (``dataset_dir``: ``dataset.json``,
``images.parquet``, ``captions.parquet``, one folder per backbone) and the images
(``data_root``).
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from clipindex.errors import UserInputError

__all__ = ["Missing", "ResultsData", "ENSEMBLE_PREFIX", "KNOWN_FILES", "check_results_folder"]

ENSEMBLE_PREFIX = "ensemble-"
#: Files whose presence says "this is a bench results folder".
KNOWN_FILES = ("run.json", "tables.csv", "records", "retrieval.csv", "errors.csv",
               "confusion_zero_shot.png", "confusion_few_shot.png")


class Missing(Exception):  # noqa: N818 - a signal inside the report, never raised to users
    """A part the section needs is absent: ``what`` names it, ``detail`` says how to get it."""

    def __init__(self, what: str, detail: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.detail = detail


#: Types of the run.json and record fields the report reads (null is always allowed).
_RUN_FIELDS: dict[str, tuple[type, ...]] = {
    "config": (dict,), "backbones": (list,), "methods": (list,), "ensembles": (list,),
    "versions": (dict,), "dataset_dir": (str,), "data_root": (str,), "dataset": (str,),
    "protocol": (str,), "target_accuracy": (int, float),
}
_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "method": (str,), "backbone": (str,), "display": (str,), "members": (list,),
    "classes": (list,), "n": (int, float), "accuracy": (int, float),
}


def _shape_problem(obj: Any, fields: dict[str, tuple[type, ...]]) -> str:
    """Why ``obj`` is not a JSON object with these field types ("" when it is)."""
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object"
    for key, types in fields.items():
        value = obj.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return f"a JSON object whose {key!r} is a {type(value).__name__}"
    return ""


_RESULTS_FOLDER = ("a results folder is what `clipindex bench CONFIG --out RESULTS` or "
                   "`clipindex demo` writes (run.json, tables.csv, records/, ...)")


def check_results_folder(results: str | os.PathLike[str]) -> Path:
    """``results`` as a Path when it looks like a bench results folder; else a one-line
    :class:`UserInputError` saying what it is instead (no folder, a store, or neither)."""
    from clipindex.store.owned import store_folder_of

    path = Path(results)
    if not path.is_dir():
        raise UserInputError(f"{path} is not a folder: pass a RESULTS folder; "
                             f"{_RESULTS_FOLDER}.")
    store = store_folder_of(path)
    if store is not None:
        inside = "" if store == path.resolve() else f" (inside the store {store})"
        raise UserInputError(
            f"{path} is a store{inside}, not a results folder: {_RESULTS_FOLDER}; "
            "run `clipindex bench` on this store's config first.")
    if not any((path / f).exists() for f in KNOWN_FILES):
        raise UserInputError(
            f"{path} is not a results folder (it holds none of {', '.join(KNOWN_FILES)}): "
            f"{_RESULTS_FOLDER}.")
    return path


class ResultsData:
    """Lazy access to a results folder and the store its ``run.json`` names."""

    def __init__(self, results: str | os.PathLike[str]) -> None:
        self.results = check_results_folder(results)

    # ------------------------------------------------------------------ results folder
    def path(self, name: str, detail: str = "") -> Path:
        """``RESULTS/name``, or :class:`Missing` when it does not exist."""
        p = self.results / name
        if not p.exists():
            raise Missing(f"{name} is not in {self.results}", detail)
        return p

    def _json_object(self, name: str, fields: dict[str, tuple[type, ...]]) -> dict[str, Any]:
        """``RESULTS/name`` as a JSON object whose known ``fields`` have their types (or
        are null); {} when absent, and {} with the reason in :attr:`unreadable` when it is
        not JSON or not of that shape (a list, ``"config": [1]``, ...)."""
        p = self.results / name
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self.unreadable[name] = f"not JSON ({type(exc).__name__})"
            return {}
        why = _shape_problem(obj, fields)
        if why:
            self.unreadable[name] = why
            return {}
        return obj

    @cached_property
    def unreadable(self) -> dict[str, str]:
        """Files of the results folder that exist but could not be used, and why."""
        return {}

    @cached_property
    def run(self) -> dict[str, Any]:
        """``run.json`` ({} when absent or unreadable: see :attr:`unreadable`)."""
        run = self._json_object("run.json", _RUN_FIELDS)
        if any(not isinstance(b, dict) for b in run.get("backbones") or []):
            self.unreadable["run.json"] = "a JSON object whose 'backbones' are not all objects"
            return {}
        return run

    @cached_property
    def records(self) -> dict[str, dict[str, Any]]:
        """``records/<backbone>__<method>.json`` by key (run.json's order when known);
        one that is unreadable or not a record's JSON object is left out (and named in
        :attr:`unreadable`)."""
        folder = self.results / "records"
        out: dict[str, dict[str, Any]] = {}
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = self._json_object(f"records/{p.name}", _RECORD_FIELDS)
            if record:
                out[p.stem] = record
        return out

    def table(self, name: str, detail: str = "") -> pd.DataFrame:
        """A CSV of the results folder (an empty file gives an empty frame)."""
        p = self.path(name, detail)
        try:
            return pd.read_csv(p)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def predictions(self, backbone: str, method: str) -> pd.DataFrame:
        """``predictions/<backbone>__<method>.parquet``."""
        return pd.read_parquet(self.path(f"predictions/{backbone}__{method}.parquet"))

    @cached_property
    def methods(self) -> list[str]:
        """Methods of the run, in its order."""
        found = list(dict.fromkeys(r.get("method") for r in self.records.values()))
        listed = [m for m in self.run.get("methods") or [] if m in found]
        return listed + [m for m in found if m not in listed and m]

    @cached_property
    def backbones(self) -> list[dict[str, Any]]:
        """Single backbones (run.json facts, else from the records), no ensembles."""
        facts = [dict(b) for b in self.run.get("backbones") or [] if b.get("backbone")]
        if facts:
            return facts
        seen: dict[str, dict[str, Any]] = {}
        for r in self.records.values():
            if not r.get("members") and r.get("backbone"):
                seen.setdefault(r["backbone"], {"backbone": r["backbone"],
                                                "display": r.get("display", r["backbone"])})
        return list(seen.values())

    def display(self, backbone: str) -> str:
        """The study's name of a backbone folder (``tiny-vit``, ``ViT-B/32``)."""
        for b in self.backbones:
            if b["backbone"] == backbone:
                return str(b.get("display") or backbone)
        for r in self.records.values():
            if r.get("backbone") == backbone:
                return str(r.get("display") or backbone)
        return backbone

    # ------------------------------------------------------------------ the store
    @cached_property
    def dataset_dir(self) -> Path:
        """The store's dataset folder named by run.json, or :class:`Missing`."""
        name = self.run.get("dataset_dir")
        if not name and "run.json" in self.unreadable:
            raise Missing(f"a readable run.json (it is {self.unreadable['run.json']}; it "
                          "names the store the run read)", "Rerun `clipindex bench`.")
        if not name:
            raise Missing("run.json (it names the store the run read)",
                          "Rerun `clipindex bench` to write it.")
        ddir = Path(name)
        if not (ddir / "dataset.json").is_file():
            raise Missing(f"the store {ddir} (its dataset.json)",
                          "Rebuild it with `clipindex bench` or `clipindex build`.")
        return ddir

    @cached_property
    def dataset_info(self) -> dict[str, Any]:
        from clipindex.store.verify import read_dataset_info

        return read_dataset_info(self.dataset_dir)  # a damaged one: DamagedStoreError

    @cached_property
    def _tables(self) -> dict[str, pd.DataFrame]:
        """Both tables, checked as every reader of a store checks them (a damaged
        table is a :class:`~clipindex.errors.DamagedStoreError`, never drawn)."""
        from clipindex.store.verify import read_tables

        images, captions = read_tables(self.dataset_dir, self.dataset_info)
        return {"images": images, "captions": captions}

    def store_table(self, name: str) -> pd.DataFrame:
        p = self.dataset_dir / f"{name}.parquet"
        if not p.is_file() and "tables" not in self.dataset_info:
            raise Missing(f"{p}", "Rebuild the store with `clipindex bench`.")
        return self._tables[name]

    @cached_property
    def images(self) -> pd.DataFrame:
        return self.store_table("images")

    @cached_property
    def captions(self) -> pd.DataFrame:
        return self.store_table("captions")

    @cached_property
    def classes(self) -> list[str]:
        """Classes of the run (dataset.json, else the records, else the config)."""
        try:
            found = self.dataset_info.get("classes")
        except Missing:
            found = None
        if found:
            return [str(c) for c in found]
        for r in self.records.values():
            if r.get("classes"):
                return [str(c) for c in r["classes"]]
        ds = (self.run.get("config") or {}).get("dataset")
        return [str(c) for c in ds.get("classes") or []] if isinstance(ds, dict) else []

    @cached_property
    def _stored_images(self) -> Any:
        """The store's :class:`~clipindex.sources.StoredImages` (one per report: a shard
        is listed once, not once per thumbnail); None without a store."""
        from clipindex.sources import StoredImages

        try:
            info = self.dataset_info
        except Missing:
            return None
        return StoredImages(info)

    def image_source(self, file: str) -> Path | bytes | None:
        """An images-table image: its local path resolved against the data root, or, for
        a store whose images are not local files (object storage, webdataset shards, an
        image-bytes parquet), its bytes read through
        :class:`~clipindex.sources.StoredImages`; None when it cannot be found or read."""
        from clipindex.errors import DataError

        path = Path(file)
        if path.is_absolute():
            return path if path.is_file() else None
        try:
            info = self.dataset_info
        except Missing:
            info = {}
        stored = self._stored_images
        if stored is not None and stored.remote:
            try:
                return stored.read(file)
            except DataError:
                return None
        for root in (self.run.get("data_root"), info.get("root")):
            if root and (Path(root) / path).is_file():
                return Path(root) / path
        return None

    def open_index(self, backbone: str) -> Any:
        """``open_index`` on the run's store; :class:`Missing` when that backbone is absent."""
        from clipindex.errors import ClipindexError, DamagedStoreError
        from clipindex.store import open_index

        try:
            return open_index(self.dataset_dir, backbone)
        except DamagedStoreError:
            raise  # damaged, not absent: the report refuses it
        except ClipindexError as exc:
            raise Missing(f"the index of {backbone} in {self.dataset_dir}", str(exc)) from exc
