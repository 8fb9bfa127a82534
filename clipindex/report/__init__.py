"""``clipindex report``: one self-contained HTML dashboard of a benchmark results folder.

:func:`write_report` reads what ``clipindex bench`` / ``clipindex demo`` wrote (and the
store its ``run.json`` names) and writes ONE HTML file: every picture is embedded as a
``data:image/png;base64,...`` URI, the CSS is inline, there is no script and nothing is
fetched, so it opens from ``file://`` anywhere. Sections (their ``id`` in brackets):

- data overview [``overview``]: source, classes, counts at each filter stage (funnel);
- EDA [``eda``]: image width x height, caption lengths, top 20 words;
- pipeline [``pipeline``]: protocol, methods, backbones;
- results [``results``]: zero-shot, few-shot, ensemble and other-method tables;
- retrieval [``retrieval``]: the Recall@K table;
- confusion matrices [``confusion``];
- error analysis [``errors``]: confusions, error rate by cause, a thumbnail gallery;
- abstention [``abstention``]: risk-coverage curves and the threshold for a target accuracy;
- accuracy per group [``groups``]: ``groups.csv`` of ``bench --group-by COLUMN``;
- leakage [``leakage``]: duplicate pairs straddling support and test, as thumbnails;
- label audit [``audit``]: the top suspects of ``RESULTS/audit/label_issues.csv``;
- Grad-CAM [``gradcam``]: a few errors and correct predictions, one ResNet and one ViT;
- projection [``projection``]: 2-D PCA (or t-SNE) of the image vectors by class.

A part that is missing (no retrieval table, no store, no Grad-CAM capable backbone...)
never stops the report: its section says what is missing and how to get it.

Example
-------
>>> from clipindex.report import write_report
>>> write_report("demo-out/results")  # doctest: +SKIP
PosixPath('demo-out/results/report.html')
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipindex.errors import DamagedStoreError, UserInputError
from clipindex.report import _analysis, _sections, _study
from clipindex.report._analysis import PROJECTIONS
from clipindex.report._data import Missing, ResultsData, check_results_folder
from clipindex.report._html import notice, page, section

__all__ = ["PROJECTIONS", "SECTIONS", "ReportOptions", "Section", "build_report",
           "write_report"]


@dataclass(frozen=True)
class ReportOptions:
    """Report settings: the projection, how many pictures, the seed of every draw."""

    projection: str = "pca"
    gallery: int = 12
    gradcam_per_kind: int = 3
    seed: int = 0


@dataclass(frozen=True)
class Section:
    """One section of the page: its id, title and builder (``data, options -> HTML``)."""

    sid: str
    title: str
    build: Callable[[ResultsData, ReportOptions], str]


#: The sections in page order.
SECTIONS: tuple[Section, ...] = (
    Section("overview", "Dataset overview", _sections.overview),
    Section("eda", "Exploratory data analysis", _sections.eda),
    Section("pipeline", "Setup and pipeline", _sections.pipeline),
    Section("results", "Classification results", _sections.results),
    Section("retrieval", "Retrieval", _sections.retrieval),
    Section("confusion", "Confusion matrices", _sections.confusion),
    Section("errors", "Error analysis", _analysis.errors),
    Section("abstention", "Abstention: accuracy against coverage", _study.abstention),
    Section("groups", "Accuracy per group", _study.groups),
    Section("leakage", "Duplicates across support and test", _study.leakage),
    Section("audit", "Label audit: likely mislabeled images", _study.audit),
    Section("gradcam", "Interpretability: Grad-CAM", _analysis.gradcam),
    Section("projection", "Embedding projection", _analysis.projection),
)


def _render(sec: Section, data: ResultsData, opts: ReportOptions) -> tuple[str, str | None]:
    """The section's HTML and, when it could not be drawn in full, why."""
    try:
        return sec.build(data, opts), None
    except Missing as exc:
        return notice(exc.what, exc.detail), exc.what
    except DamagedStoreError:
        raise  # a damaged store is refused, never drawn from
    except Exception as exc:  # noqa: BLE001 - one broken part must not cost the whole page
        what = f"this section could not be drawn ({type(exc).__name__}: {exc})"
        return notice(what), what


def _check_store(data: ResultsData) -> None:
    """Refuse (one line) a store the run names that is there but damaged; an absent one
    leaves its sections saying what is missing."""
    from clipindex.store import store_info

    try:
        ddir = data.dataset_dir
    except Missing:
        return
    damaged = store_info(ddir)["damaged"]
    if damaged:
        raise DamagedStoreError(damaged[0])


def build_report(results: str | os.PathLike[str], *, projection: str = "pca",
                 options: ReportOptions | None = None) -> tuple[str, dict[str, str]]:
    """The report's HTML and ``{section id: what is missing}`` for incomplete sections.

    Example
    -------
    >>> html, missing = build_report("demo-out/results")  # doctest: +SKIP
    >>> missing  # doctest: +SKIP
    {}
    """
    opts = options or ReportOptions(projection=projection)
    if opts.projection not in PROJECTIONS:
        raise UserInputError(f"Unknown projection {opts.projection!r}. "
                             f"Known: {', '.join(PROJECTIONS)}")
    data = ResultsData(results)
    _check_store(data)
    t0 = time.perf_counter()
    parts, missing = [], {}
    for i, sec in enumerate(SECTIONS, start=1):
        body, why = _render(sec, data, opts)
        if why is not None:
            missing[sec.sid] = why
        parts.append(section(sec.sid, i, sec.title, body))
    name = (data.run.get("config") or {}).get("name") or data.results.name
    dataset = data.run.get("dataset") or "?"
    subtitle = (f"Benchmark {name} on data set {dataset}: {len(data.backbones)} backbones, "
                f"{len(data.methods)} methods, protocol {data.run.get('protocol', '?')}.")
    from clipindex import __version__

    footer = (f"clipindex {__version__} report of {data.results.absolute()} "
              f"({time.perf_counter() - t0:.1f} s). Self-contained: no network needed.")
    html = page(f"clipindex report: {name}", subtitle,
                [(s.sid, s.title.split(":")[0]) for s in SECTIONS], parts, footer)
    return html, missing


def write_report(results: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                 projection: str = "pca", *, options: ReportOptions | None = None) -> Path:
    """Write the HTML report of a results folder (default ``RESULTS/report.html``).

    Parameters
    ----------
    results : path
        The folder ``clipindex bench`` or ``clipindex demo`` wrote.
    out : path, optional
        Where to write the HTML file (atomically).
    projection : {"pca", "tsne"}
        The 2-D projection of the image vectors.
    options : ReportOptions, optional
        Overrides ``projection`` and sets gallery sizes and the seed.

    Returns
    -------
    Path of the written file.

    Example
    -------
    >>> write_report("demo-out/results", projection="tsne")  # doctest: +SKIP
    PosixPath('demo-out/results/report.html')
    """
    from clipindex.files import atomic_write_bytes
    from clipindex.store.owned import refuse_store_path

    check_results_folder(results)  # a store passed as RESULTS is named as such, first
    path = refuse_store_path(Path(out) if out is not None else Path(results) / "report.html")
    html, _ = build_report(results, projection=projection, options=options)
    return atomic_write_bytes(path, html.encode("utf-8"))

