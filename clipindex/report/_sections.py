"""The report's descriptive sections: overview, EDA, pipeline, results, retrieval, confusion.

Each builder takes the :class:`~clipindex.report._data.ResultsData` and the options and
returns the section's inner HTML; it raises :class:`~clipindex.report._data.Missing`
when the whole section lacks its input, or shows a notice for a missing part.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipindex.bench.outputs import FEW_SHOT, ZERO_SHOT
from clipindex.report import _charts as charts
from clipindex.report._data import ENSEMBLE_PREFIX, Missing, ResultsData
from clipindex.report._html import Markup, esc, figure, img_tag, notice, table

__all__ = ["overview", "eda", "pipeline", "results", "retrieval", "confusion", "num",
           "thumbnail", "STOP_WORDS", "top_words"]

# The report's own (longer) section titles; the method names are bench's.
METHOD_TITLES = {
    "prompt": "Zero-shot: one text prompt per class",
    "prototype": "Few-shot: caption prototypes of the support images",
    "caption-knn": "k-NN over the support images' captions",
    "image-knn": "k-NN over the support images",
    "linear-probe": "linear probe (logistic regression) on the support images",
    "mlp": "MLP head on the support images",
}
FUNNEL_TITLES = {"with_class": "with a target class", "without_person": "without person",
                 "single_target": "one target class only", "sampled": "sampled"}
# A small English stop-word list: the top-words chart is about content words.
STOP_WORDS = frozenset("""a an the and or but of in on at to for from with without by as is
are was were be been being it its this that these those there here some two three four five
one into onto over under near next up down out off while his her their them they he she we
you i my your our has have had do does did not no very just also than then so such can
could will would should may might must what which who whom whose where when how all any
each both few more most other own same only too s t""".split())


def num(value: Any, fmt: str = ".3f") -> str:
    """A number for a table cell ("n/a" for None/NaN)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not np.isfinite(v) else format(v, fmt)


def params_text(m: Any) -> str:
    """Millions of parameters as the study wrote them."""
    try:
        v = float(m)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.1f}M" if v >= 10 else f"{v:.2f}M" if v >= 0.1 else f"{v:.4f}M"


def thumbnail(path: Path | bytes | None, size: int = 200) -> bytes | None:
    """A PNG thumbnail of an image file or of image bytes (None when it cannot be read)."""
    if path is None:
        return None
    from clipindex.encode import DecodeError, decode_rgb_bytes, load_rgb
    from clipindex.report._html import pil_png

    try:  # decoded as the encoder decodes it (EXIF rotation, modes, bomb guard)
        rgb = decode_rgb_bytes(path) if isinstance(path, bytes) else load_rgb(path)
    except (DecodeError, OSError):
        return None
    rgb.thumbnail((size, size))
    return pil_png(rgb)


def top_words(texts: Sequence[str], n: int = 20) -> list[tuple[str, int]]:
    """The ``n`` most common words (lower case, letters only) without stop-words.

    Example
    -------
    >>> top_words(["A dog and a cat", "the dog runs"], 2)
    [('dog', 2), ('cat', 1)]
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w in re.findall(r"[a-z]+", str(text).lower())
                      if w not in STOP_WORDS and len(w) > 1)
    return counts.most_common(n)


# --------------------------------------------------------------------------- overview
def _source_items(data: ResultsData, info: Mapping[str, Any]) -> list[str]:
    cfg = info.get("config") or {}
    items = [f"<b>Data set</b> {esc(info.get('name'))} from a <b>{esc(info.get('source'))}</b> "
             f"source at <code>{esc(info.get('root') or data.run.get('data_root'))}</code>"]
    if cfg.get("split"):
        items.append(f"<b>Split</b> {esc(cfg['split'])}; <b>excluded</b> "
                     f"{esc(', '.join(cfg.get('exclude') or []) or 'nothing')}; "
                     f"<b>images with several target classes</b> "
                     f"{'dropped' if cfg.get('drop_multi_target') else 'kept'}")
    if cfg.get("per_class") or cfg.get("support_per_class"):
        items.append(f"<b>Sample</b> {esc(cfg.get('per_class') or 'all')} images per class "
                     f"(seed {esc(cfg.get('seed'))}), {esc(cfg.get('support_per_class'))} "
                     "support images per class for the few-shot methods")
    world = Path(str(data.run.get("data_root") or info.get("root") or "")) / "world.json"
    if world.is_file():
        import json

        w = json.loads(world.read_text(encoding="utf-8"))
        items.append(f"<b>Synthetic demo world</b> generator version "
                     f"{esc(w.get('generator_version') or w.get('version'))}, seed "
                     f"{esc(w.get('seed'))}, scale {esc(w.get('scale'))}")
    return items


def _funnel(info: Mapping[str, Any], classes: Sequence[str]) -> str:
    funnel = info.get("funnel") or {}
    stages = {FUNNEL_TITLES.get(k, k): v for k, v in funnel.items() if isinstance(v, Mapping)}
    if not stages:
        return notice("the filter funnel (dataset.json has no 'funnel')")
    rows = [[name, *(int(v.get(c, 0)) for c in classes), sum(int(x) for x in v.values())]
            for name, v in stages.items()]
    if "all_images" in funnel:
        rows.insert(0, ["all images of the source", *([""] * len(classes)),
                        int(funnel["all_images"])])
    return (figure(charts.funnel_chart(stages, classes),
                   "Images per class at each filter stage (dataset.json's funnel). Until the "
                   "single-class filter, an image showing several target classes counts once "
                   "for each, so a row's sum can exceed the number of distinct images.")
            + table(["stage", *classes, "sum over classes"], rows,
                    numeric=[False] + [True] * (len(classes) + 1)))


def _sample(data: ResultsData) -> str:
    """One image with its captions (the study's '1 image = 5 captions')."""
    images, caps = data.images, data.captions
    if not len(images) or not len(caps):
        return ""
    per = caps.groupby("image_row_id").size()
    best = int(per.idxmax())
    rec = images.set_index("row_id").loc[best]
    texts = caps.loc[caps["image_row_id"] == best, "text"].astype(str).tolist()
    png = thumbnail(data.image_source(str(rec["file"])), 260)
    pic = img_tag(png, f"sample image {rec['file']}") if png else notice(
        f"the image file {rec['file']}", "The data root of run.json is not on this machine.")
    items = "".join(f"<li>&ldquo;{esc(t)}&rdquo;</li>" for t in texts)
    return (f"<h3>A sample: 1 image &rarr; {len(texts)} captions</h3>"
            f'<div class="grid2"><div>{pic}<p class="note">{esc(rec["file"])} '
            f"(label <b>{esc(rec.get('label'))}</b>)</p></div><div><ul class=tight>{items}"
            "</ul></div></div>")


def overview(data: ResultsData, opts: Any) -> str:
    """Data source, classes, counts and the filter funnel."""
    classes = data.classes
    try:
        info = data.dataset_info
    except Missing as exc:
        return (f"<p>Classes: <b>{esc(', '.join(classes) or 'unknown')}</b>.</p>"
                + notice(exc.what, exc.detail))
    counts = info.get("counts") or {}
    stats = [(len(classes), "classes"), (counts.get("images", "?"), "images in the store"),
             (counts.get("captions", "?"), "captions"),
             (len(data.backbones), "backbones")]
    if counts.get("images") and counts.get("captions"):
        stats.insert(3, (f"{counts['captions'] / counts['images']:.1f}", "captions per image"))
    html = ['<div class="stats">' + "".join(f"<div class=stat><b>{esc(v)}</b><span>{esc(k)}"
                                            "</span></div>" for v, k in stats) + "</div>"]
    html.append("<ul class=tight>" + "".join(f"<li>{i}</li>" for i in
                                             _source_items(data, info)) + "</ul>")
    html.append(f"<p>Classes: <b>{esc(', '.join(classes))}</b>.</p>")
    html.append("<h3>Filter funnel</h3>" + _funnel(info, classes))
    splits = {k: counts[k] for k in ("support", "test") if isinstance(counts.get(k), Mapping)}
    if splits:
        html.append(table(["split", *classes, "total"],
                          [[k, *(v.get(c, 0) for c in classes), sum(v.values())]
                           for k, v in splits.items()],
                          numeric=[False] + [True] * (len(classes) + 1)))
    try:
        html.append(_sample(data))
    except Missing as exc:
        html.append(notice(exc.what, exc.detail))
    return "\n".join(html)


# --------------------------------------------------------------------------- EDA
def eda(data: ResultsData, opts: Any) -> str:
    """Image sizes, caption lengths, top words."""
    images = data.images
    classes = data.classes
    html = []
    counts = images["label"].astype(str).value_counts()
    html.append("<p>Images per class in the store: " + ", ".join(
        f"<b>{esc(c)}</b> {int(counts.get(c, 0))}" for c in classes) + ".</p>")
    left = right = ""
    if {"width", "height"} <= set(images.columns):
        w, h = images["width"].to_numpy(float), images["height"].to_numpy(float)
        left = figure(charts.size_scatter(w, h, images["label"].astype(str), classes),
                      f"Image width x height: {int(w.min())}-{int(w.max())} x "
                      f"{int(h.min())}-{int(h.max())} px; every image is resized and "
                      "centre-cropped to the backbone's input size.")
    else:
        left = notice("image sizes (the images table has no width/height columns)")
    try:
        caps = data.captions
    except Missing as exc:
        caps = None
        right = notice(exc.what, exc.detail)
    if caps is not None and len(caps):
        lengths = caps["text"].astype(str).str.len().to_numpy()
        right = figure(charts.caption_hist(lengths),
                       f"Caption length: {len(lengths)} captions, median "
                       f"{int(np.median(lengths))} characters.")
    elif caps is not None:
        right = notice("captions (this data set has none)")
    html.append(f'<div class="grid2"><div>{left}</div><div>{right}</div></div>')
    if caps is not None and len(caps):
        words = top_words(caps["text"].astype(str).tolist(), 20)
        html.append("<h3>Top 20 words (stop-words removed)</h3>"
                    + figure(charts.words_chart(words), "Most common caption words: "
                             + ", ".join(w for w, _ in words[:8]) + ", ..."))
    return "\n".join(html)


# --------------------------------------------------------------------------- pipeline
_PROTOCOLS = {
    "same-rows": "every method is evaluated on the same rows (the test rows)",
    "study": "as the study: zero-shot on all sampled images, every other method on the "
             "test rows",
}


def pipeline(data: ResultsData, opts: Any) -> str:
    """How the numbers were made: protocol, methods, backbones, versions."""
    run, records = data.run, data.records
    bad = "; ".join(f"{name} is {why}" for name, why in data.unreadable.items())
    if not run and not records:
        raise Missing("run.json and records/" + (f" (unreadable: {bad})" if bad else ""),
                      "Rerun `clipindex bench`.")
    proto = run.get("protocol", "?")
    html = [notice(f"{name} (unreadable: it is {why})", "Rerun `clipindex bench`.")
            for name, why in data.unreadable.items()]
    html += [f"<p>Each image is encoded <b>once per backbone</b> into the store; every method "
            f"below reads the stored vectors. Protocol <code>{esc(proto)}</code>: "
            f"{esc(_PROTOCOLS.get(proto, ''))}.</p>"]
    html.append("<ul class=tight>" + "".join(
        f"<li><code>{esc(m)}</code>: {esc(METHOD_TITLES.get(m, m))}</li>"
        for m in data.methods) + "".join(
        f"<li><code>{ENSEMBLE_PREFIX}{esc(e)}</code>: {esc(e)} vote over the backbones</li>"
        for e in run.get("ensembles") or []) + "</ul>")
    rows = [[b.get("display", b["backbone"]), Markup(f"<code>{esc(b['backbone'])}</code>"),
             params_text(b.get("params_m")), b.get("res") or "n/a", b.get("dim", "n/a"),
             num(b.get("encode_s"), ".2f"),
             num(b.get("images_per_s"), ".1f"), b.get("n_images", "n/a"),
             b.get("n_skipped", "n/a"), b.get("store", "n/a")] for b in data.backbones]
    if rows:
        html.append(table(["Backbone", "store folder", "parameters", "Res (px)", "D_feat",
                           "encode (s)", "images/s", "images", "skipped", "store"], rows,
                          numeric=[False, False, True, True, True, True, True, True, True,
                                   False]))
    versions = run.get("versions") or {}
    if versions:
        html.append('<p class="note">' + ", ".join(f"{esc(k)} {esc(v)}" for k, v in
                                                  versions.items() if v) + "</p>")
    return "\n".join(html)


# --------------------------------------------------------------------------- results
def _frame(data: ResultsData) -> pd.DataFrame:
    """One row per record (display names, ensembles flagged); else tables.csv."""
    if data.records:
        rows = [{**r, "ensemble": bool(r.get("members"))} for r in data.records.values()]
        return pd.DataFrame(rows)
    frame = data.table("tables.csv", "Rerun `clipindex bench`.")
    if not len(frame):
        raise Missing("results (tables.csv is empty)")
    frame["display"] = [data.display(b) for b in frame["backbone"]]
    frame["ensemble"] = frame["backbone"].astype(str).str.startswith(ENSEMBLE_PREFIX)
    return frame


def _study_table(frame: pd.DataFrame) -> str:
    frame = frame.sort_values(["accuracy", "display"], ascending=[False, True],
                              na_position="last").reset_index(drop=True)
    rows, classes = [], []
    for i, r in frame.iterrows():
        badge = ' <span class="badge gold">best</span>' if i == 0 else ""
        badge += ' <span class="badge ens">ensemble</span>' if r["ensemble"] else ""
        rows.append([Markup(esc(r["display"]) + badge), num(r["accuracy"]),
                     num(r.get("balanced_accuracy")), num(r.get("macro_f1")),
                     params_text(r.get("params_m")), num(r.get("encode_s"), ".2f"),
                     num(r.get("images_per_s"), ".1f"), num(r.get("classify_ms"), ".1f"),
                     num(r.get("time_from_jpeg_s"), ".2f"), r.get("n", "")])
        classes.append(" ".join(x for x in ("best" if i == 0 else "",
                                            "ensemble" if r["ensemble"] else "") if x))
    return table(["Model", "Accuracy", "Balanced acc.", "Macro-F1", "Parameters",
                  "Encode once (s)", "Images/s", "Classify (ms)", "Time from JPEG (s)", "n"],
                 rows, numeric=[False] + [True] * 9, row_classes=classes)


def results(data: ResultsData, opts: Any) -> str:
    """Zero-shot, few-shot, ensemble and other-method tables, and an accuracy chart."""
    frame = _frame(data)
    methods = [m for m in data.methods if m in set(frame["method"])] or \
        list(dict.fromkeys(frame["method"]))
    acc: dict[str, dict[str, float]] = {}
    frame = frame.sort_values("ensemble", kind="stable")  # backbones first, then ensembles
    for _, r in frame.iterrows():
        acc.setdefault(str(r["display"]), {})[str(r["method"])] = float(r["accuracy"] or 0.0)
    ensembles = [str(d) for d in frame.loc[frame["ensemble"], "display"]]
    html = [figure(charts.accuracy_chart(acc, methods, ensembles),
                   "Accuracy of every backbone and ensemble (bold) by method.")]
    for method in (ZERO_SHOT, FEW_SHOT):
        part = frame[frame["method"] == method]
        if len(part):
            html.append(f"<h3>{esc(METHOD_TITLES[method])}</h3>" + _study_table(part))
        else:
            html.append(notice(f"{method} results (the run did not evaluate {method})"))
    others = [m for m in methods if m not in (ZERO_SHOT, FEW_SHOT)]
    if others:
        models = list(dict.fromkeys(frame["display"]))
        cell = {(str(r["display"]), str(r["method"])):
                f"{num(r['accuracy'])} ({num(r.get('macro_f1'))})" for _, r in frame.iterrows()}
        ens = set(ensembles)
        html.append("<h3>Other methods: accuracy (macro-F1)</h3>" + table(
            ["Model", *others], [[m, *(cell.get((m, o), "") for o in others)] for m in models],
            numeric=[False] + [True] * len(others),
            row_classes=["ensemble" if m in ens else "" for m in models]))
        html.append('<p class="note">' + "; ".join(
            f"<code>{esc(m)}</code>: {esc(METHOD_TITLES.get(m, m))}" for m in others) + ".</p>")
    html.append('<p class="note">Encode once: image encoding when the store was built (every '
                "method reuses the stored vectors). Classify: fit + predict from the store. "
                "Ensemble rows sum their members' parameters and times.</p>")
    return "\n".join(html)


def retrieval(data: ResultsData, opts: Any) -> str:
    """The Recall@K table of retrieval.csv."""
    frame = data.table("retrieval.csv", "Run the bench with 'retrieval: true'.")
    if not len(frame):
        raise Missing("retrieval results (retrieval.csv is empty: the run set "
                      "'retrieval: false')", "Run the bench with 'retrieval: true'.")
    t2i = [c for c in frame.columns if c.startswith("t2i_R@")]
    i2t = [c for c in frame.columns if c.startswith("i2t_R@")]
    header = (["Model", *(f"Text→image R@{c.split('@')[1]}" for c in t2i),
               *(f"Image→text R@{c.split('@')[1]}" for c in i2t), "images", "captions"])
    rows = [[r.get("display", r.get("backbone")), *(num(r[c]) for c in t2i + i2t),
             r.get("images", ""), r.get("captions", "")] for _, r in frame.iterrows()]
    return (table(header, rows, numeric=[False] + [True] * (len(header) - 1))
            + '<p class="note">Text→image Recall@K: share of captions whose own image is '
              "among the K most similar images. Image→text Recall@K: share of images with "
              "any of their captions among the K most similar captions (CLIP_benchmark's "
              "convention).</p>")


def confusion(data: ResultsData, opts: Any) -> str:
    """The confusion-matrix grids the bench drew."""
    html = []
    for name, title in (("confusion_zero_shot.png", "Zero-shot"),
                        ("confusion_few_shot.png", "Few-shot")):
        try:
            png = data.path(name, "Rerun `clipindex bench` with the prompt and prototype "
                                  "methods.").read_bytes()
        except Missing as exc:
            html.append(notice(exc.what, exc.detail))
            continue
        html.append(f"<h3>{title}</h3>" + figure(
            png, f"{title}: rows are the true class, columns the predicted one; single "
                 "backbones in blue, ensembles in their own colours."))
    return "\n".join(html)
