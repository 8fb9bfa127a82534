"""``clipindex dedup``: exact and near-duplicate images of a store, and few-shot leakage."""

from __future__ import annotations

import json

import click

from clipindex.cli._app import echo_err, main
from clipindex.cli._choices import DEDUP_THRESHOLD
from clipindex.cli.build import storage_option_flag


@main.command("dedup")
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False),
              help="Dataset folder of the store, OUT/<dataset>.")
@click.option("--backbone", required=True, help="Backbone whose image vectors to compare.")
@click.option("--threshold", type=float, default=DEDUP_THRESHOLD, show_default=True,
              help="Cosine at or above which two images are near-duplicates.")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="Data root of the image files (default: the one dataset.json records; "
                   "a URL for images in object storage).")
@click.option("--json", "as_json", is_flag=True,
              help="Print only a JSON list of pairs on stdout.")
@storage_option_flag
def dedup(index_dir: str, backbone: str, threshold: float, root: str | None,
          as_json: bool, storage_options: dict) -> None:
    """List exact duplicates (same file sha256) and near-duplicate pairs (cosine >=
    --threshold, through the store's index) and flag pairs that straddle support and
    test (few-shot leakage).

    \b
    Examples:
      clipindex dedup --index indexes/demo --backbone tiny-vit
      clipindex dedup --index indexes/demo --backbone tiny-rn --threshold 0.9995 --json
    """
    from clipindex.search.dedup import find_duplicates, pairs_to_json
    from clipindex.store import open_index

    pairs = find_duplicates(open_index(index_dir, backbone), threshold=threshold, root=root,
                            storage_options=storage_options or None)
    if as_json:
        click.echo(json.dumps(pairs_to_json(pairs)))
        return
    n_leak = int(pairs["leakage"].sum()) if len(pairs) else 0
    n_exact = int((pairs["kind"] == "exact").sum()) if len(pairs) else 0
    click.echo(f"{n_exact} exact and {len(pairs) - n_exact} near-duplicate pair(s) at "
               f"cosine >= {threshold:g}; {n_leak} straddle support and test (leakage)")
    if len(pairs):
        shown = pairs.assign(cosine=pairs["cosine"].map(lambda v: f"{v:.4f}"),
                             leakage=pairs["leakage"].map({True: "LEAKAGE", False: ""}))
        click.echo(shown.to_string(index=False))
    if n_leak:
        echo_err(f"Warning: {n_leak} pair(s) have one image in support and one in test: "
                 "few-shot results are optimistic")
