"""The report's abstention, per-group, leakage and label-audit sections.

``abstention``: one risk-coverage panel per method (accuracy of the kept rows against the
share kept, a line per backbone and ensemble) and the table of the smallest threshold
reaching ``run.json``'s ``target_accuracy``. ``groups``: accuracy per group of the
``--group-by`` column per model and method, with the gap and the bias.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from clipindex.bench.breakdowns import DEFAULT_TARGET, coverage_targets
from clipindex.report import _charts as charts
from clipindex.report._data import Missing, ResultsData
from clipindex.report._html import figure, table

__all__ = ["abstention", "audit", "groups", "leakage", "coverage_chart"]


def _num(v: Any) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{float(v):.3f}"


def coverage_chart(cov: pd.DataFrame, methods: list[str]) -> bytes:
    """Risk-coverage curves: a panel per method, a line per model."""
    fig = charts._figure(4.2 * len(methods), 3.4)
    for i, method in enumerate(methods, start=1):
        ax = fig.add_subplot(1, len(methods), i)
        part = cov[cov["method"] == method]
        for model, curve in part.groupby("backbone", sort=False):
            c = curve.dropna(subset=["accuracy"]).sort_values("threshold")
            style = "--" if str(model).startswith("ensemble-") else "-"
            ax.plot(c["coverage"], c["accuracy"], style, label=str(model), linewidth=1.6)
        ax.set_xlim(1.02, 0.0)
        ax.set_xlabel("coverage (share of rows kept)")
        ax.set_ylabel("accuracy of the kept rows")
        ax.set_title(method)
        charts._clean(ax)
        ax.legend(fontsize=7, frameon=False)
    return charts._png(fig)


def abstention(data: ResultsData, opts: Any) -> str:
    """Risk-coverage curves and the thresholds for the target accuracy."""
    cov = data.table("coverage.csv", "run `clipindex bench` again: it writes coverage.csv")
    if cov.empty:
        raise Missing("rows in coverage.csv")
    methods = list(dict.fromkeys(cov["method"]))
    target = float(data.run.get("target_accuracy") or DEFAULT_TARGET)
    targets = coverage_targets(cov, target)
    rows = [(r.backbone, r.method, _num(r.accuracy_all),
             "not reached" if pd.isna(r.threshold) else f"{r.threshold:.2f}",
             _num(r.coverage), _num(r.accuracy)) for r in targets.itertuples()]
    return (figure(coverage_chart(cov, methods),
                   "Risk-coverage: rows whose confidence (top probability; a majority vote's "
                   "vote share) is under a threshold are left to a person. Reading left to "
                   "right, the threshold rises and fewer rows are kept.")
            + f"<h3>The smallest threshold whose kept rows reach accuracy {target:g}</h3>"
            + table(["Model", "Method", "Accuracy (all rows)", "Threshold", "Coverage",
                     "Accuracy (kept)"], rows, numeric=[False, False, True, True, True, True]))


def groups(data: ResultsData, opts: Any) -> str:
    """Accuracy per group of the ``--group-by`` column."""
    if not (data.results / "groups.csv").is_file():  # optional: only with --group-by
        return ("<p>No per-group table in this run: <code>clipindex bench ... --group-by "
                "COLUMN</code> writes <code>groups.csv</code> (any column of images.parquet, "
                "e.g. <code>context</code> or <code>causes</code> on the demo world).</p>")
    g = data.table("groups.csv")
    if g.empty:
        raise Missing("rows in groups.csv")
    column = str(g["column"].iloc[0])
    names = sorted(g["group"].astype(str).unique())
    n_of = g.groupby("group")["n"].first()
    rows = []
    for (model, method), part in g.groupby(["backbone", "method"], sort=False):
        acc = dict(zip(part["group"].astype(str), part["accuracy"], strict=True))
        rows.append([model, method, *[_num(acc.get(n)) for n in names],
                     _num(part["gap"].iloc[0]), _num(part["bias"].iloc[0])])
    header = ["Model", "Method", *[f"{n} (n={int(n_of[n])})" for n in names], "Gap", "Bias"]
    return (f"<p>Accuracy per value of <code>{column}</code>. Gap: the best group's accuracy "
            "minus the worst's; bias: the mean absolute difference between a group's "
            "accuracy and the overall accuracy (the fairness tables of the multimodal "
            "course work).</p>"
            + table(header, rows, numeric=[False, False] + [True] * (len(names) + 2)))


def leakage(data: ResultsData, opts: Any) -> str:
    """Duplicate pairs that straddle support and test, as thumbnails side by side."""
    from clipindex.report._html import esc, img_tag
    from clipindex.report._sections import thumbnail

    pairs = data.table("leakage.csv", "run `clipindex bench` again: it writes leakage.csv")
    if pairs.empty:
        return ("<p>No duplicate pair straddles support and test (exact file hashes, and "
                "near-duplicates at the default cosine threshold of <code>clipindex "
                "dedup</code>): the few-shot results are not inflated by copies.</p>")
    cards = []
    for r in pairs.head(opts.gallery).itertuples():
        thumbs = []
        for f in (r.file_a, r.file_b):
            png = thumbnail(data.image_source(str(f)), 140)
            thumbs.append(img_tag(png, str(f)) if png else f"<i>{esc(f)} unreadable</i>")
        cards.append(f'<div class="thumb"><div class="pair">{"".join(thumbs)}</div>'
                     f'<div class="cap">{esc(r.kind)}, cosine {float(r.cosine):.4f}<br>'
                     f'{esc(r.file_a)} ({esc(r.split_a)})<br>{esc(r.file_b)} '
                     f'({esc(r.split_b)})</div></div>')
    return (f"<p><b>{len(pairs)} duplicate pair(s) straddle support and test</b>: a few-shot "
            "method is tested on a copy of an image it was fitted on, so its accuracy is "
            "optimistic (<code>clipindex dedup</code> lists every pair).</p>"
            f'<div class="gallery">{"".join(cards)}</div>')


def audit(data: ResultsData, opts: Any) -> str:
    """The top suspects of ``RESULTS/audit/label_issues.csv`` (``clipindex audit --out
    RESULTS/audit``, or ``bench --drop-suspects``) as thumbnails."""
    from clipindex.report._html import esc, img_tag
    from clipindex.report._sections import thumbnail

    if not (data.results / "audit" / "label_issues.csv").is_file():  # optional
        return ("<p>No label audit in this run: <code>clipindex audit --index STORE "
                "--backbone B --out RESULTS/audit</code> (or <code>clipindex bench ... "
                "--drop-suspects N</code>) writes <code>audit/label_issues.csv</code>, and "
                "this section then shows the images most likely mislabeled.</p>")
    issues = data.table("audit/label_issues.csv")
    if issues.empty:
        raise Missing("rows in audit/label_issues.csv")
    flagged = issues[issues["issue"].astype(bool)] if "issue" in issues else issues
    cards = []
    for r in flagged.head(opts.gallery).itertuples():
        png = thumbnail(data.image_source(str(r.file)), 160)
        pic = img_tag(png, str(r.file)) if png else f"<i>{esc(r.file)} unreadable</i>"
        cards.append(f'<div class="thumb">{pic}<div class="cap">#{int(r.rank)} label '
                     f'<span class="p">{esc(r.label)}</span> &rarr; suggested <span class="t">'
                     f'{esc(r.suggested)}</span><br><span class="m">score {float(r.score):.3f}, '
                     f'{esc(r.file)} ({esc(r.split)})</span></div></div>')
    return (f"<p><b>{len(flagged)} of {len(issues)} audited images</b> have a suggested label "
            "other than their own (out-of-fold probes over each backbone's image vectors "
            "and over the images' captions; <code>audit/audit.md</code> has the evidence "
            "per signal, near-duplicates with conflicting labels and outliers). The most "
            "suspect first:</p>"
            f'<div class="gallery">{"".join(cards)}</div>')
