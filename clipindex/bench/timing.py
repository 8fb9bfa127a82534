"""The study's own columns: input resolution (Res), feature dimension (D_feat) and a
"time from JPEG" comparable with the study's Prediction Time.

The study re-ran every experiment from the JPEG files: load the model, encode the rows
the experiment needs, classify. clipindex encodes once, so ``time_from_jpeg_s`` is put
together from measured parts, per (backbone, method)::

    time_from_jpeg_s = load_s                                  # measured here: the bench
                                                               # loads each backbone once
                     + n_images_needed   * image_encode_s / images_encoded   # the build's
                     + n_captions_needed * caption_encode_s / captions_encoded  # measured rates
                     + classify_ms / 1000                      # measured per run

Rows needed: every method encodes the images it predicts (``n``); ``prototype`` and
``caption-knn`` also the captions of their support images (``n_support`` times the
store's captions per image), the image methods (``image-knn``, ``linear-probe``,
``mlp``) the support images; ``prompt`` no support row. An ensemble row sums its members'
times (each backbone loads and encodes on its own). ``res`` is the model's input side in
pixels and ``d_feat`` its embedding dimension (the study's setup table), from the store's
manifest.

Example
-------
>>> needed_rows("prototype", n=950, n_support=50, captions_per_image=5.0)
(950, 250.0)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipindex.bench.outputs import TIME_DIGITS, round_or_none

__all__ = ["CAPTION_SUPPORT", "IMAGE_SUPPORT", "add_study_columns", "needed_rows"]

CAPTION_SUPPORT = ("prototype", "caption-knn")
IMAGE_SUPPORT = ("image-knn", "linear-probe", "mlp")


def needed_rows(method: str, *, n: int, n_support: int, captions_per_image: float
                ) -> tuple[int, float]:
    """(images, captions) an experiment would encode from the files."""
    if method in CAPTION_SUPPORT:
        return n, n_support * captions_per_image
    if method in IMAGE_SUPPORT:
        return n + n_support, 0.0
    return n, 0.0


def _backbone(ddir: Path, folder: str) -> dict[str, Any]:
    from clipindex.store import open_index
    from clipindex.store.manifest import read_json

    m = read_json(ddir / folder / "manifest.json")
    t = m.get("timings") or {}
    t0 = time.perf_counter()
    open_index(ddir, folder).encoder()  # what the study paid first: load the model
    load_s = time.perf_counter() - t0

    def rate(seconds: str, count: str) -> float:
        n = t.get(count) or 0
        return float(t.get(seconds) or 0.0) / n if n else 0.0

    n_img, n_cap = m.get("n_images") or 0, m.get("n_captions") or 0
    return {"res": m.get("image_size"), "d_feat": m.get("dim"), "load_s": load_s,
            "per_image": rate("image_encode_seconds", "images_encoded"),
            "per_caption": rate("caption_encode_seconds", "captions_encoded"),
            "captions_per_image": n_cap / n_img if n_img else 0.0}


def add_study_columns(records: Mapping[str, dict[str, Any]], ddir: Path,
                      folders: Sequence[str]) -> None:
    """Set ``res``, ``d_feat``, ``load_s`` and ``time_from_jpeg_s`` on every record.

    A record that already has them (reused by ``--skip-existing``) keeps its values: it
    was not re-run. The libraries are imported before the first load is timed, so
    ``load_s`` is the model's own load (weights, model build), not Python's first import
    of torch.
    """
    import importlib

    for name in ("torch", "open_clip"):
        try:
            importlib.import_module(name)
        except ImportError:  # a store of stand-in encoders (tests) needs neither
            pass
    facts: dict[str, dict[str, Any]] = {}
    single: dict[tuple[str, str], float | None] = {}
    for rec in records.values():
        backbone = str(rec["backbone"])
        if backbone not in folders:
            continue
        key = (backbone, str(rec["method"]))
        if "time_from_jpeg_s" in rec:  # reused as it was written
            single[key] = rec["time_from_jpeg_s"]
            continue
        if backbone not in facts:
            facts[backbone] = _backbone(ddir, backbone)
        f = facts[backbone]
        imgs, caps = needed_rows(str(rec["method"]), n=int(rec["n"]),
                                 n_support=int(rec.get("n_support") or 0),
                                 captions_per_image=f["captions_per_image"])
        total = (f["load_s"] + imgs * f["per_image"] + caps * f["per_caption"]
                 + float(rec.get("classify_ms") or 0.0) / 1000.0)
        single[key] = round_or_none(total, TIME_DIGITS)
        rec.update(res=f["res"], d_feat=f["d_feat"],
                   load_s=round_or_none(f["load_s"], TIME_DIGITS),
                   time_from_jpeg_s=single[key])
    for rec in records.values():
        members = rec.get("members") or []
        if members:
            parts = [single.get((m, str(rec["method"]))) for m in members]
            total = None if any(p is None for p in parts) else sum(parts)  # type: ignore[misc]
            rec.update(res=None, d_feat=None, load_s=None,
                       time_from_jpeg_s=round_or_none(total, TIME_DIGITS))
