"""``clipindex report``: the self-contained HTML dashboard of a results folder."""

from __future__ import annotations

import json

import click

from clipindex.cli._app import main
from clipindex.cli._choices import PROJECTIONS


@main.command("report")
@click.argument("results", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False),
              help="Where to write the HTML file. [default: RESULTS/report.html]")
@click.option("--projection", type=click.Choice(PROJECTIONS), default="pca",
              show_default=True, help="2-D projection of the image vectors.")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON document on stdout (notes go to stderr).")
def report(results: str, out: str | None, projection: str, as_json: bool) -> None:
    """Write ONE self-contained HTML report of a benchmark RESULTS folder.

    \b
    Every picture is embedded; the file opens from file:// with no network.
    Sections: overview, eda, pipeline, results, retrieval, confusion, errors,
    gradcam, projection. A missing part (no retrieval table, no store, no
    Grad-CAM capable backbone) is named in its section instead of failing.
    """
    from clipindex.report import write_report

    path = write_report(results, out, projection=projection)
    click.echo(json.dumps({"report": str(path)}) if as_json else path)
