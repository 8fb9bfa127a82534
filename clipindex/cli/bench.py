"""``clipindex bench CONFIG --out RESULTS``: the study's tables from a store."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from clipindex.cli._app import main
from clipindex.cli._choices import BENCH_PROTOCOLS

if TYPE_CHECKING:
    from clipindex.bench import BenchResult


def where(res: BenchResult) -> str:
    """Where the outputs are, for stdout after the tables."""
    run = res.run
    extra = "".join(f", {n}" for n in ("groups.csv", "suspects.csv") if n in res.files)
    lines = [f"results in {res.out}: tables.md, tables.csv, retrieval.csv, coverage.csv"
             f"{extra}, errors.md, errors.csv, confusion_*.png, records/, predictions/, "
             "run.json",
             f"stores in {run['dataset_dir']} ("
             + ", ".join(f"{b['backbone']} {b['store']}" for b in run["backbones"]) + ")"]
    if run.get("reused_records"):
        lines.append(f"reused {len(run['reused_records'])} existing record(s) (--skip-existing)")
    return "\n".join(lines)


def as_document(res: BenchResult) -> dict:
    """``--json``: where the results are, the tables and run.json, JSON-ready."""
    from clipindex.bench.outputs import clean_json

    tables = res.tables.astype(object).where(res.tables.notna(), None)
    return clean_json({"out": str(res.out), "files": sorted(str(p) for p in res.files.values()),
                       "tables": tables.to_dict(orient="records"), "run": res.run})


@main.command("bench")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Results folder (RESULTS).")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="Data root replacing the dataset config's root.")
@click.option("--index-root", default=None, type=click.Path(file_okay=False),
              help="Store root; missing or stale stores are built there. "
                   "[default: RESULTS/indexes]")
@click.option("--protocol", type=click.Choice(BENCH_PROTOCOLS), default="same-rows",
              show_default=True,
              help="same-rows: every method on the test rows; study: zero-shot on all "
                   "sampled images, the other methods on the test rows.")
@click.option("--skip-existing", is_flag=True,
              help="Reuse records/ and predictions/ in RESULTS whose settings match.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers when a store is built.")
@click.option("--group-by", "group_by", default=None, metavar="COLUMN",
              help="Accuracy per value of this images.parquet column (e.g. context, "
                   "causes) per method: groups.csv, with the gap and the bias.")
@click.option("--target-accuracy", "target_accuracy", type=float, default=0.99,
              show_default=True,
              help="tables.md names the abstention threshold whose kept rows reach it.")
@click.option("--drop-suspects", "drop_suspects", type=click.IntRange(min=1), default=None,
              metavar="N",
              help="Also report accuracy without the N images an audit finds most likely "
                   "mislabeled (suspects.csv); runs `clipindex audit` into RESULTS/audit "
                   "unless --audit names one.")
@click.option("--audit", "audit", default=None, type=click.Path(exists=True),
              help="An audit folder (or its label_issues.csv) for --drop-suspects.")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON document on stdout (notes go to stderr).")
def bench(config: str, out: str, root: str | None, index_root: str | None, protocol: str,
          skip_existing: bool, workers: int | None, group_by: str | None,
          target_accuracy: float, drop_suspects: int | None, audit: str | None,
          progress: bool, as_json: bool) -> None:
    """Run the benchmark CONFIG (a YAML file, or a shipped name: demo, study); write to RESULTS.

    \b
    Every (backbone, method) is evaluated from stored vectors; missing stores are
    built first (encode once). Writes records/, predictions/, tables.csv, tables.md,
    retrieval.csv, coverage.csv (risk-coverage curves), confusion_zero_shot.png,
    confusion_few_shot.png, errors.csv, errors.md, run.json, and with --group-by
    groups.csv, with --drop-suspects suspects.csv.
    """
    from clipindex.bench import run_bench

    res = run_bench(config, out, root=root, index_root=index_root, protocol=protocol,
                    skip_existing=skip_existing, workers=workers, progress=progress,
                    group_by=group_by, target_accuracy=target_accuracy,
                    drop_suspects=drop_suspects, audit=audit)
    if as_json:
        click.echo(json.dumps(as_document(res)))
        return
    click.echo(res.markdown)
    click.echo(where(res))
