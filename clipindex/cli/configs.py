"""``clipindex configs``: list the dataset and bench configs shipped with clipindex, or copy
them into a folder to edit."""

from __future__ import annotations

import json

import click

from clipindex.cli._app import main


@main.command("configs")
@click.option("--copy", "copy_to", default=None, type=click.Path(file_okay=False),
              help="Copy them into this folder (datasets/ and bench/), to edit.")
@click.option("--force", is_flag=True, help="With --copy: overwrite files already there.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def configs_command(copy_to: str | None, force: bool, as_json: bool) -> None:
    """List the configs shipped with clipindex (a bare NAME stands for one).

    \b
    A dataset config name works wherever a config path does (clipindex build demo,
    load_dataset("coco-animals")), a bench config name likewise (clipindex bench demo);
    a file or folder of the same name in the working folder must then be written
    ./NAME, and builtin:NAME always means the shipped config.
      clipindex configs
      clipindex configs --copy my-configs   # then edit my-configs/datasets/demo.yaml
    """
    from clipindex.config import copy_builtin_configs, describe_builtin_configs

    if copy_to is not None:
        written = copy_builtin_configs(copy_to, force=force)
        if as_json:
            click.echo(json.dumps({"copied": [str(p) for p in written]}))
        else:
            click.echo(f"copied {len(written)} configs to {copy_to}: "
                       + ", ".join(str(p) for p in written))
        return
    rows = describe_builtin_configs()
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['kind']:<8} {row['name']:<20} {row['summary']}")
