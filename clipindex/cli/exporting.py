"""``clipindex export``: one backbone of a store in clip-retrieval's layout."""

from __future__ import annotations

import json
from pathlib import Path

import click

from clipindex.cli._app import main
from clipindex.cli.build import storage_option_flag


@main.command("export")
@click.argument("dataset_dir", metavar="DS", type=click.Path(path_type=Path))
@click.option("--backbone", required=True, help="The backbone whose vectors are written.")
@click.option("--out", required=True, type=str,
              help="The folder to write (must not exist, or be empty; a URL such as "
                   "s3://bucket/clip-out is written locally first, then uploaded).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@storage_option_flag
def export_command(dataset_dir: Path, backbone: str, out: str, as_json: bool,
                   storage_options: dict) -> None:
    """Write store DS's BACKBONE as clip-retrieval's output folder OUT
    (img_emb/img_emb_0.npy, text_emb/text_emb_0.npy: each image's first caption,
    metadata/metadata_0.parquet: image_path, caption and the store's columns), for
    autofaiss, clip-retrieval or `clipindex import`. Removed and skipped images are
    left out (rows renumbered).

    \b
      clipindex export indexes/demo --backbone tiny-vit --out demo-clip
      clipindex import demo-clip --backbone tiny-vit --out elsewhere
    """
    from clipindex.store import export_store

    result = export_store(dataset_dir, backbone, out=out,
                          storage_options=storage_options or None)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(f"exported {result.n_images:,} images (dim {result.dim}; "
                   f"{result.n_removed} removed and {result.n_skipped} skipped left out) "
                   f"to {result.path} in {result.seconds:.1f} s")
