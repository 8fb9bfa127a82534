"""``clipindex add``: new images of a changed source appended to a store, removed ones
tombstoned, as a new store generation (only the new rows are encoded)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from clipindex.cli._app import main
from clipindex.cli._choices import DECODES
from clipindex.cli.build import (
    BATCH_HELP,
    SHARD_HELP,
    _config_source,
    _root,
    _store_notes,
    storage_option_flags,
)


@main.command("add")
@click.argument("source", callback=_config_source)
@click.option("--index", "index", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The store to update: OUT/<dataset> as `clipindex build` wrote it.")
@click.option("--backbone", "backbones", multiple=True,
              help="Backbone to update (repeatable; default every backbone of the store). "
                   "One left out is marked stale until an add names it.")
@click.option("--root", callback=_root,
              help="Data root (a folder or a URL), replacing the source's root.")
@click.option("--pretrained", default="default", show_default=True,
              help="With --backbone: the pretrained tag or checkpoint the store was built with.")
@click.option("--batch-size", type=int, help=BATCH_HELP)
@click.option("--workers", type=click.IntRange(min=0), help="Decoding processes.")
@click.option("--threads", type=int, help="torch threads while encoding.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda if available.")
@click.option("--decode", type=click.Choice(DECODES),
              help="Decoder of the new images; it must give the store's decode route "
                   "(draft for a draft store; default: the store's route).")
@click.option("--shard-size", type=int, help=SHARD_HELP)
@click.option("--allow-outside-root", is_flag=True,
              help="Accept image paths that resolve outside the data root.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bars on stderr.")
@click.option("--verbose", "-v", is_flag=True, help="Log every finished shard.")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON document on stdout (notes go to stderr).")
@storage_option_flags
def add_command(source: str, index: Path, backbones: tuple[str, ...], root: str | None,
                pretrained: str, batch_size: int | None, workers: int | None,
                threads: int | None, device: str | None, decode: str | None,
                shard_size: int | None,
                allow_outside_root: bool, progress: bool, verbose: bool,
                as_json: bool, storage_options: dict, label_field: str | None) -> None:
    """Bring the store --index up to date with SOURCE (what `clipindex build` takes):
    images SOURCE has and the store lacks are encoded and appended as new row ids;
    images the store has and SOURCE lost are tombstoned (never returned, never
    renumbered; `clipindex compact` drops them). An image is its path relative to the
    source's root. Each add writes a new store generation atomically; a killed add
    leaves the previous one whole and rerunning it finishes it. For a store made by
    `clipindex import`, SOURCE is the grown clip-retrieval output folder (or URL):
    new image_path rows are added from its vectors, nothing is encoded.

    \b
      clipindex add photos/ --index indexes/photos
      clipindex add photos/ --index indexes/photos --backbone tiny-vit --json
      clipindex add clip_out --index indexes/laion-part
    """
    from clipindex.store.adding import add_to_store

    with _store_notes(verbose):
        # embeddings for an imported store (no encoder settings made) or images to encode;
        # the library's settings are made and checked there: click checked only types
        result = add_to_store(source, index=index, backbones=list(backbones) or None,
                              root=root, pretrained=pretrained, batch_size=batch_size,
                              workers=workers, device=device, threads=threads,
                              shard_size=shard_size, progress=progress,
                              allow_outside_root=allow_outside_root,
                              storage_options=storage_options or None,
                              label_field=label_field, decode=decode)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    for folder in result.stale:
        click.echo(f"{folder}: stale (left out of this add); update it with `clipindex add "
                   f"{source} --index {index} --backbone {folder}`", err=True)
    click.echo(result.line(), err=True)
