"""``clipindex world DIR``: write the synthetic COCO-format demo world."""

from __future__ import annotations

import json

import click

from clipindex.cli._app import main
from clipindex.cli._choices import WORLD_SCALES
from clipindex.errors import UserInputError


class _OneLineErrors(click.Command):
    """Bad option values become one ``Error: ...`` line and exit code 2 (the group's
    handling of clipindex errors) instead of click's three-line usage message."""

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[no-untyped-def]
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.BadParameter as exc:
            raise UserInputError(exc.format_message()) from None


@main.command("world", cls=_OneLineErrors)
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Random seed; the same seed gives byte-identical files.",
)
@click.option(
    "--scale",
    type=click.Choice(WORLD_SCALES),
    default="default",
    show_default=True,
    help="'small' for tests (seconds), 'default' for demos, 'training': default's val "
    "split with a 4x train split (what the tiny ViTs were trained on).",
)
@click.option("--force", is_flag=True, help="Overwrite the world files of a non-empty DIR.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON document on stdout (notes go to stderr).")
def world(directory: str, seed: int, scale: str, force: bool, progress: bool,
          as_json: bool) -> None:
    """Write the synthetic COCO-format demo world into DIRECTORY.

    \b
    DIRECTORY/annotations/instances_{train,val}.json, captions_{train,val}.json,
    causes_{train,val}.json, DIRECTORY/{train,val}/*.jpg and DIRECTORY/world.json.
    """
    from clipindex.demo.world import make_world

    root = make_world(directory, seed=seed, scale=scale, force=force, progress=progress)
    record = json.loads((root / "world.json").read_text(encoding="utf-8"))
    if as_json:
        click.echo(json.dumps({"path": str(root), "world": record}))
        return
    for split, info in record["splits"].items():
        kept = info["funnel"]["single_target"]
        per_class = ", ".join(f"{c} {n}" for c, n in kept.items())
        click.echo(
            f"{split}: {info['images']} images, {info['captions']} captions; "
            f"after the study's filters: {per_class}"
        )
    click.echo(f"world v{record['generator_version']} (seed {seed}, scale {scale}) in {root}")
