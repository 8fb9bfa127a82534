"""``clipindex explain``: Grad-CAM overlays for one image or for a benchmark's errors."""

from __future__ import annotations

import json

import click

from clipindex.cli._app import main
from clipindex.cli._choices import EXPLAIN_METHODS


@main.command("explain")
@click.argument("image", required=False, type=click.Path(dir_okay=False))
@click.option("--index", "index_dir", type=click.Path(file_okay=False),
              help="Dataset folder of the store, OUT/<dataset> (with --errors: overrides "
                   "the one in RESULTS/run.json).")
@click.option("--errors", "results", type=click.Path(file_okay=False),
              help="A benchmark results folder: explain the first misclassified rows of "
                   "its errors.csv (instead of IMAGE).")
@click.option("--backbone", required=True, help="Backbone whose model is explained.")
@click.option("--class", "target", default=None,
              help="Class to explain (default: the predicted class). With IMAGE only.")
@click.option("--layer", default=None,
              help="Module to take the CAM at, e.g. visual.layer2 or "
                   "visual.transformer.resblocks[-1].ln_1 (default: per architecture).")
@click.option("--method", type=click.Choice(EXPLAIN_METHODS), default=None,
              help="Class vectors: prompt 'a photo of a {}' or caption prototypes "
                   "[default: prompt]. With --errors it also filters errors.csv.")
@click.option("--limit", type=click.IntRange(min=1), default=8, show_default=True,
              help="How many errors to explain (with --errors).")
@click.option("--out", type=click.Path(), default=None,
              help="PNG to write (IMAGE; default ./<stem>_gradcam.png) or folder "
                   "(--errors; default RESULTS/gradcam/<backbone>).")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON document on stdout (notes go to stderr).")
def explain_command(
    image: str | None, index_dir: str | None, results: str | None, backbone: str,
    target: str | None, layer: str | None, method: str | None, limit: int, out: str | None,
    as_json: bool,
) -> None:
    """Grad-CAM: where in IMAGE a backbone sees a class.

    \b
    clipindex explain IMG.jpg --index indexes/demo --backbone tiny-rn [--class cat]
    clipindex explain --errors results/demo --backbone tiny-vit --limit 8
    """
    from clipindex.explain import explain_errors, write_explanation

    if (image is None) == (results is None):
        raise click.UsageError("Give either IMAGE (with --index) or --errors RESULTS.")
    if results is not None:
        if target is not None:
            raise click.UsageError("--class goes with IMAGE; --errors explains both classes.")
        paths = explain_errors(results, backbone, method=method, limit=limit, out_dir=out,
                               layer=layer, index=index_dir, progress=True)
        if as_json:
            click.echo(json.dumps({"pngs": [str(p) for p in paths]}))
            return
        for path in paths:
            click.echo(str(path))
        return
    if image is None or index_dir is None:
        raise click.BadParameter("IMAGE needs the store: --index DIR.", param_hint="--index")
    result, path = write_explanation(image, index_dir, backbone=backbone, target=target,
                                     method=method or "prompt", layer=layer, out=out)
    if as_json:
        click.echo(json.dumps({"png": str(path), "caption": result.caption(),
                               "target": result.target, "predicted": result.predicted,
                               "prob": None if result.prob is None else float(result.prob),
                               "true": result.true}))
        return
    click.echo(f"{path}\t{result.caption()}")
