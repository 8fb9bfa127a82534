"""What the benchmark writes: JSON/CSV files, the retrieval table, tables.md, errors, PNGs.

:mod:`clipindex.bench` runs the evaluations; this module turns its records (one dict per
(backbone, method), see ``records/*.json``) and prediction tables into files:

- :func:`tables_frame` -> ``tables.csv`` (:data:`TABLE_COLUMNS`; floats rounded so a
  rerun differs only in :data:`TIMING_COLUMNS`);
- :func:`retrieval_table` -> ``retrieval.csv`` (Recall@K over the captions);
- :func:`tables_markdown` -> ``tables.md`` (the study's tables);
- :func:`write_errors` -> ``errors.csv``, ``errors.md``;
- :func:`write_confusions` -> ``confusion_zero_shot.png``, ``confusion_few_shot.png``.

Every file is written atomically (temp file in the same folder, fsync, rename).

Example
-------
>>> from clipindex.bench.outputs import tables_frame
>>> tables_frame({}).columns.tolist()[:3]
['backbone', 'method', 'accuracy']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.files import atomic_write_bytes, write_json_atomic

__all__ = [
    "TABLE_COLUMNS",
    "TIMING_COLUMNS",
    "METRIC_DIGITS",
    "TIME_DIGITS",
    "Context",
    "atomic_write_bytes",
    "write_json",
    "write_csv",
    "clean_json",
    "round_or_none",
    "tables_frame",
    "retrieval_table",
    "tables_markdown",
    "write_errors",
    "write_confusions",
]

TABLE_COLUMNS: tuple[str, ...] = ("backbone", "method", "accuracy", "balanced_accuracy",
                                  "macro_f1", "params_m", "res", "d_feat", "encode_s",
                                  "images_per_s", "classify_ms", "time_from_jpeg_s", "n")
#: The only tables.csv columns that may differ between two runs of the same config.
TIMING_COLUMNS: tuple[str, ...] = ("encode_s", "images_per_s", "classify_ms",
                                   "time_from_jpeg_s")
METRIC_DIGITS = 6  # metrics are rounded so reruns write identical text
TIME_DIGITS = 3
ZERO_SHOT, FEW_SHOT = "prompt", "prototype"
METHOD_TITLES = {
    "prompt": "Zero-shot (one text prompt per class)",
    "prototype": "Few-shot (caption prototypes of the support images)",
    "caption-knn": "k-NN over support captions",
    "image-knn": "k-NN over support images",
    "linear-probe": "linear probe on support images",
    "mlp": "MLP head on support images",
}


# --------------------------------------------------------------------------- files
def write_json(path: Path, obj: Any) -> Path:
    """Write a JSON file atomically (sorted keys, NaN as null)."""
    return write_json_atomic(path, clean_json(obj), sort_keys=True, allow_nan=False)


def clean_json(obj: Any) -> Any:
    """``obj`` with numpy scalars, paths and tuples made JSON-ready (NaN/inf as None)."""
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    return obj




def tables_frame(records: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``tables.csv``: one row per (backbone, method) record, :data:`TABLE_COLUMNS`.

    Example
    -------
    >>> tables_frame({}).columns.tolist()[:3]
    ['backbone', 'method', 'accuracy']
    """
    rows = [{c: r.get(c) for c in TABLE_COLUMNS} for r in records.values()]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


# --------------------------------------------------------------------------- retrieval
def retrieval_table(ddir: Path, folders: Sequence[str], ks: Sequence[int] = (1, 5, 10),
                    chunk: int = 2048) -> pd.DataFrame:
    """Text→image and image→text Recall@K over a store's captions, one row per backbone.

    Definition for images with several (COCO: five) captions, CLIP_benchmark's
    convention, as :mod:`clipindex.metrics` computes it:

    - text→image: every caption is a query; a hit at K if ITS image is among the K
      images most similar to it. Recall@K = mean over captions.
    - image→text: every image is a query; a hit at K if ANY of its captions is among
      the K captions most similar to it. Recall@K = mean over images with a caption.

    The gallery is every image of the store with a valid vector (skipped images and
    their captions are left out). Scores are computed ``chunk`` queries at a time.

    Example
    -------
    >>> retrieval_table("indexes/demo", ["tiny-vit"])  # doctest: +SKIP
    """
    from clipindex.store import open_index

    rows = []
    for folder in folders:
        bi = open_index(ddir, folder)
        ivalid = np.asarray(bi.image_valid, bool)
        img = bi.image_vectors[ivalid].astype(np.float64)
        pos = np.full(len(ivalid), -1, np.int64)
        pos[ivalid] = np.arange(int(ivalid.sum()))
        owner_rows = bi.captions["image_row_id"].to_numpy(np.int64)
        keep = np.asarray(bi.caption_valid, bool) & ivalid[owner_rows] if len(owner_rows) else \
            np.zeros(0, bool)
        cap = bi.caption_vectors[keep].astype(np.float64)
        owner = pos[owner_rows[keep]]
        row: dict[str, Any] = {"backbone": bi.name,
                               "display": bi.manifest.get("display_name") or bi.name,
                               "images": int(len(img)), "captions": int(len(cap))}
        for k in ks:
            row[f"t2i_R@{k}"] = round_or_none(_t2i(img, cap, owner, k, chunk), METRIC_DIGITS)
        for k in ks:
            row[f"i2t_R@{k}"] = round_or_none(_i2t(img, cap, owner, k, chunk), METRIC_DIGITS)
        rows.append(row)
    return pd.DataFrame(rows)


def _t2i(img: np.ndarray, cap: np.ndarray, owner: np.ndarray, k: int, chunk: int) -> float:
    from clipindex.metrics import recall_at_k_text_to_image

    if len(cap) == 0 or len(img) == 0:
        return float("nan")
    hits = 0.0
    for s in range(0, len(cap), chunk):
        part = slice(s, s + chunk)
        scores = cap[part] @ img.T
        hits += recall_at_k_text_to_image(scores, owner[part], k) * len(scores)
    return hits / len(cap)


def _i2t(img: np.ndarray, cap: np.ndarray, owner: np.ndarray, k: int, chunk: int) -> float:
    from clipindex.metrics import recall_at_k_image_to_text

    if len(cap) == 0 or len(img) == 0:
        return float("nan")
    hits, queries = 0.0, 0
    for s in range(0, len(img), chunk):
        scores = img[s:s + chunk] @ cap.T
        # image j of this chunk is image s + j: shift the owners into chunk positions
        n_q = int(np.isin(np.arange(s, s + len(scores)), owner).sum())
        if n_q:
            hits += recall_at_k_image_to_text(scores, owner - s, k) * n_q
            queries += n_q
    return hits / queries if queries else float("nan")


def round_or_none(value: Any, digits: int) -> float | None:
    """``round(value, digits)``, or None for None / NaN / inf."""
    if value is None or not np.isfinite(float(value)):
        return None
    return round(float(value), digits)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write a CSV file atomically with ``\\n`` line ends."""
    return atomic_write_bytes(path, frame.to_csv(index=False, lineterminator="\n")
                              .encode("utf-8"))


# --------------------------------------------------------------------------- tables.md
@dataclass(frozen=True)
class Context:
    """What the markdown titles and notes say about the run."""

    name: str
    dataset: str
    protocol: str
    methods: Sequence[str]
    recall_ks: Sequence[int]
    n_images: int


def _num(value: Any, fmt: str = ".3f") -> str:
    return "n/a" if value is None or not np.isfinite(float(value)) else format(value, fmt)


def _int(v: Any) -> str:
    return "-" if v is None else str(int(v))


def _params(m: Any) -> str:
    if m is None:
        return "n/a"
    return f"{m:.1f}M" if m >= 10 else f"{m:.2f}M" if m >= 0.1 else f"{m:.4f}M"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _model(rec: Mapping[str, Any]) -> str:
    return f"**{rec['display']}**" if rec.get("members") else str(rec["display"])


def _study_table(recs: list[Mapping[str, Any]]) -> list[str]:
    """The study's shape: one row per model, best first, ensembles included."""
    recs = sorted(recs, key=lambda r: (-(r["accuracy"] or 0.0), str(r["display"])))
    header = ("Model", "Accuracy", "Balanced acc.", "Macro-F1", "Parameters", "Res",
              "D_feat", "Encode once (s)", "Images/s", "Classify (ms)", "Time from JPEG (s)",
              "n")
    rows = [(_model(r), _num(r["accuracy"]), _num(r["balanced_accuracy"]),
             _num(r["macro_f1"]), _params(r["params_m"]), _int(r.get("res")),
             _int(r.get("d_feat")), _num(r["encode_s"], ".2f"),
             _num(r["images_per_s"], ".1f"), _num(r["classify_ms"], ".1f"),
             _num(r.get("time_from_jpeg_s"), ".2f"), str(r["n"]))
            for r in recs]
    return _md_table(header, rows)


def _other_table(records: Mapping[str, Mapping[str, Any]], methods: Sequence[str]) -> list[str]:
    """Accuracy (macro-F1) per model and method, for the k-NN / probe / MLP methods."""
    models: dict[str, Mapping[str, Any]] = {}
    cells: dict[tuple[str, str], str] = {}
    for r in records.values():
        if r["method"] in methods:
            models.setdefault(r["backbone"], r)
            cells[(r["backbone"], r["method"])] = (f"{_num(r['accuracy'])} "
                                                   f"({_num(r['macro_f1'])})")
    rows = [[_model(rec)] + [cells.get((b, m), "") for m in methods] for b, rec in models.items()]
    return _md_table(["Model"] + list(methods), rows)


def _retrieval_md(retrieval: pd.DataFrame, ks: Sequence[int]) -> list[str]:
    header = (["Model"] + [f"T→I R@{k}" for k in ks] + [f"I→T R@{k}" for k in ks]
              + ["images", "captions"])
    rows = [[str(r["display"])] + [_num(r[f"t2i_R@{k}"]) for k in ks]
            + [_num(r[f"i2t_R@{k}"]) for k in ks] + [str(r["images"]), str(r["captions"])]
            for _, r in retrieval.iterrows()]
    return _md_table(header, rows)


_PROTOCOL_NOTES = {
    "same-rows": "every method is evaluated on the same rows (the test rows)",
    "study": "as the study: zero-shot on ALL sampled images (support + test), every other "
             "method on the test rows",
}

_NOTES = [
    "Encode once (s), Images/s: image encoding when the store was built (from its "
    "manifest); every method reuses the stored vectors. Classify (ms): fit + predict from "
    "the store, opening it included. Ensemble rows sum their members' parameters and times.",
    "Res, D_feat: the backbone's input side (px) and embedding dimension. Time from JPEG "
    "(s): what the study's Prediction Time measured, from measured parts: model load (timed "
    "by this run) + the rows the experiment needs at the build's measured encode rates "
    "(images it predicts, plus support captions or images) + classify.",
]

_RETRIEVAL_NOTE = (
    "Retrieval, CLIP_benchmark's convention for images with several (here five) captions: "
    "text→image Recall@K = share of captions whose own image is among the K most similar "
    "images; image→text Recall@K = share of images with ANY of their captions among the K "
    "most similar captions. Gallery: every image of the store (skipped images left out).")


def tables_markdown(records: Mapping[str, Mapping[str, Any]], retrieval: pd.DataFrame,
                    ctx: Context) -> str:
    """``tables.md``: zero-shot, few-shot, other methods and retrieval tables.

    Example
    -------
    >>> ctx = Context("demo", "demo", "same-rows", ["prompt"], [1], 0)
    >>> tables_markdown({}, pd.DataFrame(), ctx).splitlines()[0]
    '# Benchmark demo on dataset demo'
    """
    lines = [f"# Benchmark {ctx.name} on dataset {ctx.dataset}", "",
             f"{ctx.n_images} images; protocol `{ctx.protocol}`: "
             f"{_PROTOCOL_NOTES.get(ctx.protocol, '')}.", ""]
    for method in (ZERO_SHOT, FEW_SHOT):
        recs = [r for r in records.values() if r["method"] == method]
        if recs:
            extra = ""
            n_sup, n_cls = recs[0].get("n_support"), len(recs[0]["classes"])
            if method == FEW_SHOT and n_sup:
                each = f" ({n_sup // n_cls} per class)" if n_sup % n_cls == 0 else ""
                extra = f", {n_sup} support images{each}"
            lines += [f"## {METHOD_TITLES[method]}{extra}", "", *_study_table(recs), ""]
    others = [m for m in ctx.methods if m not in (ZERO_SHOT, FEW_SHOT)]
    if others:
        lines += ["## Other methods: accuracy (macro-F1)", "",
                  *_other_table(records, others), "",
                  "; ".join(f"`{m}`: {METHOD_TITLES.get(m, m)}" for m in others) + ".", ""]
    if len(retrieval):
        lines += ["## Retrieval over the captions", "", *_retrieval_md(retrieval, ctx.recall_ks),
                  "", _RETRIEVAL_NOTE, ""]
    lines += [f"Note: {n}" for n in _NOTES]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- errors
_SIZE_BINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0001)
_SIZE_LABELS = ("< 2%", "2-5%", "5-10%", "10-20%", "20-40%", ">= 40%")


def errors_frame(records: Mapping[str, Mapping[str, Any]],
                 tables: Mapping[str, pd.DataFrame], images: pd.DataFrame) -> pd.DataFrame:
    """Every evaluated row with ``backbone``, ``method``, ``error`` and the image's
    ``causes`` / ``area_frac`` where the data has them (ensemble rows included)."""
    extra = [c for c in ("causes", "area_frac") if c in images.columns]
    parts = []
    for key, rec in records.items():
        t = tables[key].copy()
        classes = rec["classes"]
        p = t[[f"p_{c}" for c in classes]].to_numpy(np.float64)
        col = {c: j for j, c in enumerate(classes)}
        idx = np.arange(len(t))
        t["p_true"] = p[idx, [col.get(v, 0) for v in t["true"]]]
        t["p_predicted"] = p[idx, [col.get(v, 0) for v in t["predicted"]]]
        t.insert(0, "method", rec["method"])
        t.insert(0, "backbone", rec["backbone"])
        t["ensemble"] = bool(rec.get("members"))
        t["error"] = t["true"].astype(str) != t["predicted"].astype(str)
        parts.append(t)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if extra and len(frame):
        frame = frame.merge(images[["row_id", *extra]], on="row_id", how="left")
    return frame


def _causes(series: pd.Series) -> pd.Series:
    tags = series.fillna("").astype(str).str.split(",")
    return tags.map(lambda ts: [t.strip() for t in ts if t.strip()] or ["(none)"])


def _rate_table(frame: pd.DataFrame, group: pd.Series, methods: Sequence[str],
                label: str, order: Sequence[str]) -> list[str]:
    rows = []
    for g in order:
        sel = frame[group == g]
        if not len(sel):
            continue
        cells = []
        for m in methods:
            one = sel[sel["method"] == m]
            cells.append(f"{one['error'].mean():.2f} ({int(one['error'].sum())}/{len(one)})"
                         if len(one) else "")
        rows.append([g, str(sel["row_id"].nunique())] + cells)
    return _md_table([label, "images"] + list(methods), rows)


def errors_markdown(frame: pd.DataFrame, methods: Sequence[str], ctx: Context) -> str:
    """``errors.md``: most common confusions, errors per model, rates by cause and size."""
    lines = [f"# Errors: benchmark {ctx.name} on dataset {ctx.dataset}", ""]
    if not len(frame):
        return "\n".join(lines + ["No predictions.", ""])
    single, ens = frame[~frame["ensemble"]], frame[frame["ensemble"]]
    lines += ["## Most common confusions (true → predicted)", ""]
    for m in methods:
        wrong = single[(single["method"] == m) & single["error"]]
        pairs = Counter(zip(wrong["true"], wrong["predicted"], strict=True)).most_common(8)
        lines += [f"### `{m}`: {METHOD_TITLES.get(m, m)}; single backbones together", ""]
        lines += [f"- {t} → {p}: {n}" for (t, p), n in pairs] or ["- no errors"]
        lines.append("")
    lines += ["## Errors per model (wrong / evaluated)", ""]
    models = list(dict.fromkeys(frame["backbone"]))
    rows = []
    for b in models:
        sel = frame[frame["backbone"] == b]
        rows.append([b] + [f"{int(s['error'].sum())} / {len(s)}" if len(s) else ""
                           for s in (sel[sel["method"] == m] for m in methods)])
    lines += _md_table(["Model"] + list(methods), rows) + [""]
    note = ("Rates pool the single backbones' predictions: error rate (wrong/evaluated); "
            "an image with several causes counts under each. `mislabeled` images carry a "
            "wrong label, so an 'error' there often means the model saw the true animal.")
    if "causes" in single.columns:
        exploded = single.assign(cause=_causes(single["causes"])).explode("cause")
        order = sorted(set(exploded["cause"]) - {"(none)"}) + ["(none)"]
        lines += ["## Error rate by cause", "", note, ""]
        lines += _rate_table(exploded, exploded["cause"], methods, "cause", order) + [""]
    if "area_frac" in single.columns and single["area_frac"].notna().any():
        size = pd.cut(single["area_frac"], _SIZE_BINS, labels=_SIZE_LABELS, right=False)
        lines += ["## Error rate by subject size (box area / image area)", ""]
        lines += _rate_table(single, size.astype(str), methods, "subject size",
                             _SIZE_LABELS) + [""]
    if len(ens):
        lines += ["Ensemble errors are in errors.csv (their probabilities are the ensemble's)."]
    return "\n".join(lines) + "\n"


def write_errors(records: Mapping[str, Mapping[str, Any]], tables: Mapping[str, pd.DataFrame],
                 images: pd.DataFrame, out: Path, ctx: Context) -> dict[str, Path]:
    """Write ``errors.csv`` (misclassified rows) and ``errors.md``; return their paths."""
    frame = errors_frame(records, tables, images)
    methods = list(dict.fromkeys(r["method"] for r in records.values()))
    wrong = frame[frame["error"]] if len(frame) else frame
    drop = [c for c in ("error", "ensemble", "uncertain") if c in wrong.columns]
    csv = wrong.drop(columns=drop)
    pcols = [c for c in csv.columns if c.startswith("p_")]
    csv[pcols] = csv[pcols].round(METRIC_DIGITS)
    return {"errors.csv": write_csv(csv, out / "errors.csv"),
            "errors.md": atomic_write_bytes(out / "errors.md", errors_markdown(
                frame, methods, ctx).encode("utf-8"))}


# --------------------------------------------------------------------------- confusions
CONFUSION_FILES = {ZERO_SHOT: "confusion_zero_shot.png", FEW_SHOT: "confusion_few_shot.png"}


def write_confusions(records: Mapping[str, Mapping[str, Any]], out: Path) -> dict[str, Path]:
    """The study's confusion grids for zero-shot and few-shot (backbones, then ensembles)."""
    from clipindex.bench.plots import ConfusionPanel, confusion_grid

    files = {}
    for method, name in CONFUSION_FILES.items():
        recs = [r for r in records.values() if r["method"] == method]
        if not recs:
            continue
        recs.sort(key=lambda r: bool(r.get("members")))  # stable: backbones first
        panels = [ConfusionPanel(str(r["display"]), np.asarray(r["confusion"]), r["classes"],
                                 ensemble=bool(r.get("members"))) for r in recs]
        files[name] = confusion_grid(panels, out / name, title=METHOD_TITLES[method])
    return files


def package_versions() -> dict[str, str | None]:
    """The versions of Python and the packages a run's numbers depend on (``run.json``)."""
    import sys
    from importlib import metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in ("clipindex", "torch", "open_clip_torch", "faiss-cpu", "numpy", "pandas",
                 "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
