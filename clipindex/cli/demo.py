"""``clipindex demo``: world, tiny backbones' stores and the demo bench in one command."""

from __future__ import annotations

import json

import click

from clipindex.cli._app import main
from clipindex.cli._choices import DEMO_SCALES
from clipindex.cli.bench import as_document, where


@main.command("demo")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Folder for indexes/ and results/ (and world/). [default: demo-out]")
@click.option("--world", "world", default=None, type=click.Path(file_okay=False),
              help="The demo world (made if missing). [default: worlds/demo, or OUT/world "
                   "when --out is given]")
@click.option("--scale", type=click.Choice(DEMO_SCALES), default="default",
              show_default=True,
              help="default: 200 images per class (1,000, the study's size); small: a "
                   "small world for quick checks.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="World seed (when the world is made).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers for encoding.")
@click.option("--skip-existing", is_flag=True,
              help="Reuse records/ and predictions/ of an earlier demo run.")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON document on stdout (notes go to stderr).")
def demo(out: str | None, world: str | None, scale: str, seed: int, workers: int | None,
         skip_existing: bool, progress: bool, as_json: bool) -> None:
    """Run the whole study offline on the demo world with the three tiny backbones.

    \b
    Makes the world if it is missing, builds the tiny backbones' stores (encode once),
    runs every method with majority and soft ensembles, then prints the tables and
    where the files are.
    """
    from clipindex.demo import run_demo

    if world is None and out is None:
        world = "worlds/demo"
    res = run_demo(out or "demo-out", world=world, scale=scale, seed=seed, workers=workers,
                   skip_existing=skip_existing, progress=progress)
    if as_json:
        doc = {"world": str(res.world), "made_world": res.made_world,
               "world_scale": res.world_scale, "seconds": round(res.seconds, 2),
               "report": None if res.report is None else str(res.report),
               "bench": as_document(res.bench)}
        click.echo(json.dumps(doc))
        return
    click.echo(res.bench.markdown)
    made = "made" if res.made_world else "reused"
    click.echo(f"world {res.world} ({made}, scale {res.world_scale})")
    click.echo(where(res.bench))
    if res.report is not None:
        click.echo(f"report: {res.report}")
    click.echo(f"demo finished in {res.seconds:.0f} s")
    click.echo(next_commands(res))


def _quoted(path: object) -> str:
    import shlex

    return shlex.quote(str(path))


def next_commands(res) -> str:  # noqa: ANN001 - a clipindex.demo.DemoResult
    """What to run next, with this run's real paths (the README's Quick start goes on so)."""
    store = _quoted(res.bench.run["dataset_dir"])
    names = [b["backbone"] for b in res.bench.run["backbones"]]
    each = " ".join(f"--backbone {n}" for n in names)
    lines = ["next:",
             f"  clipindex info {store}",
             f"  clipindex classify --index {store} --backbone {names[0]} --method prompt",
             f"  clipindex classify --index {store} {each} --method prototype "
             "--ensemble majority",
             f"  clipindex search \"a photo of a cow in a field\" --index {store} "
             f"--backbone {names[0]}",
             f"  clipindex serve --index {store}"]
    return "\n".join(lines)
