"""``clipindex classify``: evaluate a classifier on a store, or classify new images."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import click

from clipindex.cli._app import echo_err, main
from clipindex.cli._choices import CLASSIFY_METHODS, ENSEMBLES, KNN_WEIGHTS, TEMPLATE_SETS
from clipindex.errors import UserInputError

if TYPE_CHECKING:
    from clipindex.classifiers.runner import ClassifyResult

_CLASS_WEIGHTS = {"auto": "auto", "balanced": "balanced", "none": None}


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def _report(result: ClassifyResult) -> str:
    """A readable plain-text report for stdout."""
    import pandas as pd

    m = result.metrics
    head = f"method {m['method']} on {', '.join(m['backbones'])}"
    if m.get("ensemble"):
        head += f" ({m['ensemble']} vote)"
    lines = [head, f"support rows {m['n_support']}, test rows {m['n']}", ""]
    for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                       ("macro_f1", "macro-F1"), ("coverage", "coverage"),
                       ("accuracy_covered", "accuracy on covered rows")):
        lines.append(f"{label:<26}{_num(m[key])}")
    if result.per_backbone:
        lines += ["", "per backbone (before the vote):"]
        for name, one in result.per_backbone.items():
            lines.append(f"  {name:<24}accuracy {_num(one['accuracy'])}  balanced "
                         f"{_num(one['balanced_accuracy'])}  macro-F1 {_num(one['macro_f1'])}")
    per = pd.DataFrame(m["per_class"]).T[["precision", "recall", "f1", "support"]]
    per[["precision", "recall", "f1"]] = per[["precision", "recall", "f1"]].map(_num)
    per["support"] = per["support"].astype(int)
    lines += ["", "per class:", per.to_string()]
    conf = pd.DataFrame(m["confusion"], index=m["classes"], columns=m["classes"])
    lines += ["", "confusion matrix (rows = true, columns = predicted):", conf.to_string()]
    if m.get("groups"):
        g = pd.DataFrame(m["groups"])
        lines += ["", f"per {g['column'][0]} (gap {_num(g['gap'][0])}, bias "
                  f"{_num(g['bias'][0])}):",
                  g[["group", "n", "accuracy"]].assign(accuracy=g["accuracy"].map(_num))
                  .to_string(index=False)]
    return "\n".join(lines)


@main.command("classify")
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False),
              help="Dataset folder of the store, OUT/<dataset>.")
@click.option("--backbone", "backbones", required=True, multiple=True,
              help="Backbone to use; give several with --ensemble to combine them.")
@click.option("--method", required=True, type=click.Choice(CLASSIFY_METHODS),
              help="Classifier to fit on the support rows.")
@click.option("--ensemble", type=click.Choice(ENSEMBLES), default=None,
              help="How two or more backbones vote: majority (ties by summed "
                   "probability) or soft (mean probability).")
@click.option("--shots", type=int, default=None,
              help="Draw K support images per class (with --seed) and test on the rest.")
@click.option("--k", "k", type=int, default=10, show_default=True,
              help="Neighbours for caption-knn / image-knn.")
@click.option("--weights", type=click.Choice(KNN_WEIGHTS), default="uniform",
              show_default=True, help="k-NN votes: uniform or similarity-weighted.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for --shots and the MLP.")
@click.option("--classes", default=None,
              help="Comma-separated labels to classify between; 'label=name' puts name "
                   "in the prompts (e.g. fields=field,roads=road).")
@click.option("--prompt", default=None, help='One prompt template, e.g. "a photo of a {}".')
@click.option("--templates", type=click.Choice(TEMPLATE_SETS), default=None,
              help="Prompt template set (default: 'a photo of a {}'; imagenet: CLIP's 80).")
@click.option("--class-weight", "class_weight", type=click.Choice(list(_CLASS_WEIGHTS)),
              default="auto", show_default=True,
              help="Linear probe class weights (auto balances imbalanced support).")
@click.option("--reject-below", "reject_below", type=float, default=None,
              help="Mark predictions whose top probability is under P as uncertain.")
@click.option("--uncertain-band", "uncertain_band", default=None, metavar="LO,HI",
              help="Two classes: mark rows whose positive-class (second class) "
                   "probability is in [LO, HI] as uncertain, e.g. 0.3,0.7.")
@click.option("--group-by", "group_by", default=None, metavar="COLUMN",
              help="Accuracy and n per value of this images.parquet column "
                   "(e.g. context, causes), with the gap and the bias.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the predictions table (.parquet or .csv).")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON object on stdout (notes go to stderr).")
@click.option("--image", "images", multiple=True, type=click.Path(),
              help="Classify these new image files instead of evaluating (repeatable).")
def classify_command(index_dir: str, backbones: tuple[str, ...], method: str,
                     ensemble: str | None, shots: int | None, k: int, weights: str,
                     seed: int, classes: str | None, prompt: str | None,
                     templates: str | None, class_weight: str, reject_below: float | None,
                     uncertain_band: str | None, group_by: str | None,
                     out: str | None, as_json: bool, images: tuple[str, ...]) -> None:
    """Fit a classifier on a store's support rows and evaluate it on the test rows,
    or classify new files with --image.

    \b
    Examples:
      clipindex classify --index indexes/demo --backbone tiny-vit --method prompt
      clipindex classify --index indexes/demo --backbone tiny-vit --backbone tiny-rn \\
          --backbone tiny-vit-s --method prototype --ensemble majority --json
      clipindex classify --index indexes/fields --backbone ViT-B-32 --method linear-probe \\
          --reject-below 0.8 --out predictions.parquet
      clipindex classify --index indexes/demo --backbone tiny-vit --method prototype \\
          --image photo.jpg
    """
    from clipindex.classifiers.runner import classify, classify_images, write_predictions
    from clipindex.store.owned import refuse_store_path

    if ensemble and len(set(backbones)) < 2:
        raise UserInputError(
            f"--ensemble {ensemble} combines two or more backbones, and one is given "
            f"({backbones[0]}): add --backbone NAME, or drop --ensemble")
    if out:
        refuse_store_path(out)  # before the work: write_predictions checks again
    options: dict[str, Any] = dict(ensemble=ensemble, shots=shots, k=k, seed=seed, classes=classes,
                   prompt=prompt, templates=templates, reject_below=reject_below,
                   weights=weights, class_weight=_CLASS_WEIGHTS[class_weight],
                   uncertain_band=uncertain_band)
    if images:
        if group_by:
            raise UserInputError("--group-by needs the store's rows; it does not apply "
                                 "to --image files")
        frame = classify_images(index_dir, list(backbones), method, list(images), **options)
        for note in frame.attrs.get("notes", []):
            echo_err(f"Note: {note}")
        if out:
            echo_err(f"Wrote {write_predictions(frame, out)}")
        if as_json:
            click.echo(json.dumps({"predictions": frame.to_dict(orient="records")}))
        else:
            click.echo(frame.drop(columns=["row_id"]).to_string(index=False))
        return
    result = classify(index_dir, list(backbones), method, group_by=group_by, **options)
    for note in result.notes:
        echo_err(f"Note: {note}")
    if out:
        echo_err(f"Wrote {write_predictions(result.predictions, out)}")
    click.echo(json.dumps(result.to_dict()) if as_json else _report(result))
