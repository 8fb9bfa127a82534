"""The report's analysis sections: error analysis, Grad-CAM and the 2-D projection."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from clipindex.report import _charts as charts
from clipindex.report._data import ENSEMBLE_PREFIX, Missing, ResultsData
from clipindex.report._html import esc, figure, img_tag, notice, pil_png, table
from clipindex.report._sections import num, thumbnail

__all__ = ["errors", "gradcam", "projection", "PROJECTIONS", "CAM_TOWERS"]

#: Visual tower class name -> the family the Grad-CAM section shows one backbone of.
CAM_TOWERS: dict[str, str] = {"ModifiedResNet": "ResNet", "VisionTransformer": "ViT"}
_NO_CAUSE = "(none)"


def _single(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[~frame["backbone"].astype(str).str.startswith(ENSEMBLE_PREFIX)]


def _gallery_method(data: ResultsData, frame: pd.DataFrame) -> str:
    methods = [m for m in data.methods if m in set(frame["method"])]
    methods = methods or list(dict.fromkeys(frame["method"]))
    return "prompt" if "prompt" in methods else methods[0]


# --------------------------------------------------------------------------- errors
def _confusions(single: pd.DataFrame, methods: list[str]) -> str:
    blocks = []
    for m in methods[:2]:
        wrong = single[single["method"] == m]
        pairs = Counter(zip(wrong["true"].astype(str), wrong["predicted"].astype(str),
                            strict=True)).most_common(6)
        items = "".join(f"<li>True <b>{esc(t)}</b> &rarr; predicted <b>{esc(p)}</b>: {n}</li>"
                        for (t, p), n in pairs) or "<li>no errors</li>"
        blocks.append(f"<div><h3>Most common confusions, <code>{esc(m)}</code></h3>"
                      f"<ul class=tight>{items}</ul></div>")
    return f'<div class="grid2">{"".join(blocks)}</div>'


def _per_model(data: ResultsData, methods: list[str]) -> str:
    models: dict[str, dict[str, str]] = {}
    for r in data.records.values():
        n, acc = r.get("n"), r.get("accuracy")
        if n is None or acc is None:
            continue
        wrong = int(round(int(n) * (1.0 - float(acc))))
        models.setdefault(str(r.get("display", r["backbone"])), {})[r["method"]] = \
            f"{wrong} / {int(n)}"
    if not models:
        return ""
    return ("<h3>Errors per model (wrong / evaluated)</h3>"
            + table(["Model", *methods], [[m, *(v.get(x, "") for x in methods)]
                                          for m, v in models.items()],
                    numeric=[False] + [True] * len(methods)))


def _cause_rates(data: ResultsData, methods: list[str]) -> tuple[dict, dict]:
    """Error rate and image count by cause (single backbones pooled) per method."""
    images = data.images
    if "causes" not in images.columns:
        raise Missing("failure causes (this data set's images carry no 'causes' column)")
    causes = images.set_index("row_id")["causes"].fillna("").astype(str)
    rates: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for m in methods:
        parts = [data.predictions(b["backbone"], m) for b in data.backbones]
        pred = pd.concat(parts, ignore_index=True)
        tags = causes.reindex(pred["row_id"].to_numpy()).fillna("").to_numpy()
        pred = pred.assign(error=pred["true"].astype(str) != pred["predicted"].astype(str),
                           cause=[[t.strip() for t in s.split(",") if t.strip()] or [_NO_CAUSE]
                                  for s in tags]).explode("cause")
        for cause, grp in pred.groupby("cause"):
            rates.setdefault(str(cause), {})[m] = float(grp["error"].mean())
            counts[str(cause)] = max(counts.get(str(cause), 0), int(grp["row_id"].nunique()))
    order = sorted(c for c in rates if c != _NO_CAUSE) + ([_NO_CAUSE] if _NO_CAUSE in rates
                                                          else [])
    return {c: rates[c] for c in order}, counts


def _causes_html(data: ResultsData, methods: list[str]) -> str:
    try:
        rates, counts = _cause_rates(data, methods)
    except Missing as exc:
        return "<h3>Error rate by cause</h3>" + notice(exc.what, exc.detail)
    rows = [[c, counts[c], *(num(r.get(m), ".2f") for m in methods)] for c, r in rates.items()]
    return ("<h3>Error rate by cause</h3>"
            + figure(charts.cause_chart(rates, methods),
                     "Share of wrong predictions among the images of each cause (an image "
                     "with several causes counts under each). 'mislabeled' images carry a "
                     "wrong label: an 'error' there often means the model saw the true animal.")
            + table(["cause", "images", *methods], rows,
                    numeric=[False, True] + [True] * len(methods)))


def _gallery(data: ResultsData, single: pd.DataFrame, method: str, limit: int) -> str:
    part = single[single["method"] == method].copy()
    if "p_predicted" not in part.columns:
        part["p_predicted"] = np.nan
    part = part.sort_values("p_predicted", ascending=False, kind="stable")
    # Round-robin over the backbones, most confident errors first, each image once.
    queues = [g for _, g in part.groupby("backbone", sort=False)]
    picked: list[pd.Series] = []
    seen: set[str] = set()
    for i in range(max((len(q) for q in queues), default=0)):
        for q in queues:
            if i < len(q) and len(picked) < limit and q.iloc[i]["file"] not in seen:
                seen.add(q.iloc[i]["file"])
                picked.append(q.iloc[i])
    cards = []
    for r in picked:
        png = thumbnail(data.image_source(str(r["file"])), 220)
        pic = img_tag(png, f"error {r['file']}") if png else \
            '<div class="noimg">image file not found</div>'
        cause = r.get("causes")
        cause = ("" if cause is None or cause != cause or not str(cause)
                 else " · " + str(cause).replace(",", ", "))
        cards.append(
            f'<div class="thumb">{pic}<div class="cap">true <span class="t">'
            f'{esc(r["true"])}</span> &rarr; <span class="p">{esc(r["predicted"])}</span> '
            f'p={num(r["p_predicted"], ".2f")}<br><span class="m">'
            f"{esc(data.display(str(r['backbone'])))}{esc(cause)}</span></div></div>")
    return (f"<h3>Error gallery: the most confident <code>{esc(method)}</code> errors</h3>"
            f'<div class="gallery">{"".join(cards)}</div>')


def errors(data: ResultsData, opts: Any) -> str:
    """Confusions, errors per model, error rate by cause and a thumbnail gallery."""
    frame = data.table("errors.csv", "Rerun `clipindex bench`.")
    if not len(frame):
        return "<p>No errors: every prediction of the run was right.</p>"
    single = _single(frame)
    methods = [m for m in data.methods if m in set(frame["method"])] or \
        list(dict.fromkeys(frame["method"]))
    html = [_confusions(single, methods), _per_model(data, methods)]
    try:
        html.append(_causes_html(data, methods))
    except Missing as exc:
        html.append("<h3>Error rate by cause</h3>" + notice(exc.what, exc.detail))
    html.append(_gallery(data, single, _gallery_method(data, frame), opts.gallery))
    return "\n".join(html)


# --------------------------------------------------------------------------- Grad-CAM
def _cam_backbones(data: ResultsData) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """One backbone per tower family (ResNet, ViT) whose model can be loaded."""
    from clipindex.errors import ClipindexError

    found: dict[str, tuple[str, Any]] = {}
    reasons = []
    for b in data.backbones:
        name = b["backbone"]
        try:
            index = data.open_index(name)
            model = getattr(index.encoder(), "model", None)
        except Missing as exc:
            reasons.append(f"{name}: {exc.what}")
            continue
        except (ClipindexError, OSError) as exc:
            reasons.append(f"{name}: {exc}")
            continue
        family = CAM_TOWERS.get(type(getattr(model, "visual", None)).__name__)
        if family is None:
            reasons.append(f"{name}: not an open_clip ResNet or ViT model")
        elif family not in found:
            found[family] = (name, index)
        if len(found) == len(set(CAM_TOWERS.values())):
            break
    return found, reasons


def _cam_rows(preds: pd.DataFrame, n: int, seed: int) -> list[tuple[str, pd.Series]]:
    wrong = preds["true"].astype(str) != preds["predicted"].astype(str)
    p = np.array([r[f"p_{r['predicted']}"] if f"p_{r['predicted']}" in r else np.nan
                  for _, r in preds.iterrows()], dtype=float)
    preds = preds.assign(p_predicted=p)
    errs = preds[wrong].sort_values("p_predicted", ascending=False, kind="stable").head(n)
    right = preds[~wrong]
    right = right.iloc[np.sort(np.random.default_rng(seed).permutation(len(right))[:n])]
    return [("error", r) for _, r in errs.iterrows()] + [("correct", r)
                                                         for _, r in right.iterrows()]


def _cam_card(data: ResultsData, index: Any, vectors: Any, kind: str, r: pd.Series,
              bbox: dict[int, Any]) -> tuple[str, tuple[float, float] | None]:
    from PIL import ImageDraw

    from clipindex.explain import box_mass, explain_image, overlay

    found = data.image_source(str(r["file"]))
    if found is None:
        return '<div class="thumb"><div class="noimg">image file not found</div></div>', None
    picture: Any = found
    if isinstance(found, bytes):  # object storage, a shard member, a parquet cell
        from clipindex.encode import DecodeError, decode_rgb_bytes

        try:
            picture = decode_rgb_bytes(found, name=str(r["file"]))
        except DecodeError:
            return '<div class="thumb"><div class="noimg">image not decodable</div></div>', None
    e = explain_image(picture, index, target=str(r["predicted"]), vectors=vectors,
                      true=str(r["true"]))
    size = (200, 200)
    orig, cam = e.image.copy(), overlay(e.image, e.cam)
    masses, extra = None, ""
    box = bbox.get(int(r["row_id"]))
    if box is not None and len(box) == 4:
        share = float(box[2]) * float(box[3]) / float(e.image.width * e.image.height)
        masses = (box_mass(e.cam, tuple(box)), share)
        extra = (f"<br><span class=m>CAM mass in the white box {masses[0]:.2f} "
                 f"(box {share:.2f} of the image)</span>")
        x, y, w, h = (float(v) for v in box)
        ImageDraw.Draw(cam).rectangle((x, y, x + w, y + h), outline="white",
                                      width=max(2, round(max(cam.size) / 100)))
    orig.thumbnail(size)
    cam.thumbnail(size)
    cls = "p" if kind == "error" else "t"
    return (f'<div class="thumb"><div class="pair">{img_tag(pil_png(orig), "original")}'
            f'{img_tag(pil_png(cam), "Grad-CAM")}</div><div class="cap">{kind}: true '
            f'<span class="t">{esc(r["true"])}</span>, predicted <span class="{cls}">'
            f'{esc(r["predicted"])}</span> p={num(r["p_predicted"], ".2f")}<br>'
            f'<span class="m">CAM toward {esc(r["predicted"])}</span>{extra}</div></div>',
            masses)


def gradcam(data: ResultsData, opts: Any) -> str:
    """Grad-CAM of a few errors and a few correct predictions, one ResNet and one ViT."""
    from clipindex.explain import class_vectors

    _ = data.dataset_dir  # no store: say so plainly (Missing)
    found, reasons = _cam_backbones(data)
    if not found:
        raise Missing("a Grad-CAM capable backbone (an open_clip ResNet or ViT whose model "
                      "loads)", "; ".join(reasons))
    images = data.images
    bbox = (dict(zip(images["row_id"].astype(int), images["bbox"], strict=True))
            if "bbox" in images.columns else {})
    bbox = {k: list(v) for k, v in bbox.items() if v is not None and len(v) == 4}
    html = ['<p>Grad-CAM of the zero-shot predictions: the target is the cosine between the '
            "image embedding and the predicted class's prompt vector, so warm regions are "
            "where the backbone sees that class. Left: the image; right: the map.</p>"]
    for family in dict.fromkeys(CAM_TOWERS.values()):
        if family not in found:
            names = ", ".join(b["backbone"] for b in data.backbones)
            html.append(f"<h3>{family}</h3>" + notice(
                f"a {family} backbone that loads among {names}", "; ".join(reasons)))
            continue
        name, index = found[family]
        preds = data.predictions(name, "prompt")
        vectors = class_vectors(index, "prompt")
        cards, masses = [], []
        for kind, r in _cam_rows(preds, opts.gradcam_per_kind, opts.seed):
            card, m = _cam_card(data, index, vectors, kind, r, bbox)
            cards.append(card)
            if m is not None:
                masses.append(m)
        summary = ""
        if masses:
            inside, share = np.mean(masses, axis=0)
            summary = (f'<p class="note">Mean share of CAM mass inside the subject\'s box: '
                       f"<b>{inside:.2f}</b>, against {share:.2f} for a map spread evenly "
                       f"({len(masses)} images).</p>")
        html.append(f"<h3>{family}: {esc(data.display(name))}</h3>"
                    f'<div class="camrow">{"".join(cards)}</div>{summary}')
    return "\n".join(html)


# --------------------------------------------------------------------------- projection
def _pca(x: np.ndarray, seed: int) -> np.ndarray:
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:2]
    # SVD signs are arbitrary: make each component's largest loading positive.
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    return x @ (comps * signs[:, None]).T


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
                ).fit_transform(x.astype(np.float64))


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    """UMAP (``umap-learn``, the ``clipindex[umap]`` extra), cosine metric, seeded."""
    import warnings

    try:
        with warnings.catch_warnings():  # umap warns at import that TensorFlow is absent
            warnings.simplefilter("ignore", ImportWarning)
            import umap
    except ImportError:
        from clipindex.errors import UserInputError

        raise UserInputError("--projection umap needs umap-learn: pip install "
                             "'clipindex[umap]'") from None
    neighbours = int(min(15, max(2, len(x) - 1)))
    return umap.UMAP(n_components=2, n_neighbors=neighbours, metric="cosine",
                     random_state=seed, n_jobs=1).fit_transform(x.astype(np.float32))


#: 2-D projections by ``--projection`` name.
PROJECTIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"pca": _pca, "tsne": _tsne,
                                                                   "umap": _umap}
MAX_POINTS = 5000


def projection(data: ResultsData, opts: Any) -> str:
    """2-D projection of each backbone's image vectors, coloured by class."""
    classes = data.classes
    _ = data.dataset_dir  # no store: say so plainly (Missing)
    panels, notes = [], []
    for b in data.backbones:
        try:
            index = data.open_index(b["backbone"])
        except Missing as exc:
            notes.append(notice(exc.what, exc.detail))
            continue
        labels = index.images["label"].astype(str).to_numpy()
        keep = np.flatnonzero(np.asarray(index.image_valid, bool) & np.isin(labels, classes))
        if len(keep) > MAX_POINTS:
            keep = np.sort(np.random.default_rng(opts.seed).choice(keep, MAX_POINTS,
                                                                   replace=False))
        if len(keep) < 3:
            notes.append(notice(f"labelled image vectors of {b['backbone']} (fewer than 3)"))
            continue
        xy = PROJECTIONS[opts.projection](np.asarray(index.image_vectors)[keep], opts.seed)
        panels.append((str(b.get("display") or b["backbone"]), xy, labels[keep]))
    if not panels:
        raise Missing("image vectors (no backbone's index could be opened)",
                      " ".join(n for n in notes))
    n = sum(len(p[1]) for p in panels) // len(panels)
    return figure(charts.projection_chart(panels, classes, opts.projection),
                  f"{opts.projection.upper()} of the stored image vectors ({n} images per "
                  "backbone), coloured by the labelled class: well separated colours mean "
                  "the classes are easy for that backbone.") + "".join(notes)

