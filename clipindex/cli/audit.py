"""``clipindex audit``: rank a store's labelled images by how likely their label is wrong."""

from __future__ import annotations

import json

import click

from clipindex.cli._app import main
from clipindex.cli._choices import DEDUP_THRESHOLD


@main.command("audit")
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False),
              help="Dataset folder of the store, OUT/<dataset>.")
@click.option("--backbone", "backbones", required=True, multiple=True,
              help="Backbone whose stored vectors vote (repeat: each one adds two signals).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for label_issues.csv, duplicates.csv, outliers.csv, audit.md, "
                   "audit.json (e.g. RESULTS/audit, where `clipindex report` finds it).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Cross-validation folds: no image is scored by a probe that saw its label.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the folds.")
@click.option("--captions/--no-captions", default=True, show_default=True,
              help="Let each image's captions vote (a probe over their stored vectors).")
@click.option("--dup-threshold", type=float, default=DEDUP_THRESHOLD, show_default=True,
              help="Cosine at or above which two images are near-duplicates.")
@click.option("--outlier-z", type=float, default=3.5, show_default=True,
              help="Robust z-score below the median best class cosine that makes an outlier.")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="Data root of the image files (default: the one dataset.json records).")
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True,
              help="Suspects printed (all of them are in label_issues.csv).")
@click.option("--json", "as_json", is_flag=True,
              help="Print only audit.json's document on stdout.")
def audit(index_dir: str, backbones: tuple[str, ...], out: str, folds: int, seed: int,
          captions: bool, dup_threshold: float, outlier_z: float, root: str | None, top: int,
          as_json: bool) -> None:
    """Rank every labelled image by how likely its label is wrong, from out-of-fold
    probes over each backbone's stored image vectors and over the image's captions,
    and list near-duplicates with conflicting labels and outliers.

    \b
    Examples:
      clipindex audit --index indexes/demo --backbone tiny-vit --backbone tiny-rn \\
          --backbone tiny-vit-s --out results/demo/audit
      clipindex audit --index indexes/demo --backbone tiny-vit --out audit --json
    """
    from clipindex.audit import AuditSettings, audit_store
    from clipindex.audit.outputs import to_json

    settings = AuditSettings(folds=folds, seed=seed, captions=captions,
                             dup_threshold=dup_threshold, outlier_z=outlier_z)
    res = audit_store(index_dir, list(backbones), out, settings=settings, root=root)
    if as_json:
        doc = to_json(res.issues, res.duplicates, res.outliers, res.summary)
        click.echo(json.dumps({**doc, "out": str(out)}))
        return
    n_issue = int(res.issues["issue"].sum())
    click.echo(f"{len(res.issues)} labelled images audited with {len(res.summary['signals'])} "
               f"signals; {n_issue} with another suggested label, "
               f"{res.duplicates['group'].nunique()} conflicting duplicate group(s), "
               f"{len(res.outliers)} outlier(s)")
    cols = ["rank", "row_id", "file", "split", "label", "suggested", "score", "votes_against"]
    if top and len(res.issues):
        click.echo(res.issues[cols].head(top).to_string(index=False))
    click.echo(f"results in {out}: " + ", ".join(sorted(res.files)))
