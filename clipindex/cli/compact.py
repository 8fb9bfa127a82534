"""``clipindex compact``: drop a store's tombstoned rows and old generations."""

from __future__ import annotations

import json
from pathlib import Path

import click

from clipindex.cli._app import main


@main.command("compact")
@click.option("--index", "index", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The store: OUT/<dataset>.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def compact_command(index: Path, as_json: bool) -> None:
    """Write a new generation of --index without its tombstoned rows (row ids renumbered
    0..n-1 in the tables and every backbone's vectors and indexes) and remove every
    older generation; say how much disk it freed. A stale backbone must be updated
    with `clipindex add` first.

    \b
      clipindex compact --index indexes/photos
    """
    from clipindex.store import compact_store

    result = compact_store(index)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(result.line())
