"""``clipindex import``: a store from embeddings made elsewhere (clip-retrieval's output)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from clipindex.cli._app import main
from clipindex.cli.build import storage_option_flag

_INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "pq", "ivfpq")


@main.command("import")
@click.argument("folder", type=str)
@click.option("--backbone", required=True,
              help="The model the vectors came from (it encodes text queries; its dim must "
                   "match), e.g. ViT-B-32 or tiny-vit.")
@click.option("--pretrained", default="default", show_default=True,
              help="Its weights: 'default', an open_clip tag, 'none' or a checkpoint path.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="indexes",
              show_default=True, help="Where the store goes: OUT/<name>/<backbone>/.")
@click.option("--name", default=None, help="The dataset folder name (default: FOLDER's name).")
@click.option("--root", type=str, default=None,
              help="Data root of relative image_path values (default: FOLDER; a URL for "
                   "images in object storage).")
@click.option("--index-kind", type=click.Choice(_INDEX_KINDS), default="auto", show_default=True,
              help="FAISS index, as for `clipindex build`.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=0.95,
              show_default=True, help="auto: recall@10 vs exact search the knobs are tuned to.")
@click.option("--max-index-memory", default=None,
              help="auto: memory budget of each FAISS index (e.g. 4GB); over it, IVF-PQ.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Storage precision of the vectors.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@storage_option_flag
def import_command(folder: str, backbone: str, pretrained: str, out: Path, name: str | None,
                   root: str | None, index_kind: str, target_recall: float,
                   max_index_memory: str | None, dtype: str, as_json: bool,
                   storage_options: dict) -> None:
    """Import clip-retrieval's output FOLDER (img_emb/img_emb_N.npy, optional
    text_emb/text_emb_N.npy, metadata/metadata_N.parquet with image_path, caption and
    any other columns) as the store OUT/NAME/BACKBONE: nothing is encoded, vectors are
    L2-normalised, metadata columns become --where filters, a `label` column gives
    `classify` its classes. Image files need not exist (searched, never opened).

    \b
      clipindex import clip_out --backbone ViT-B-32 --out indexes --name laion-part
      clipindex import s3://bucket/clip_out --backbone ViT-B-32 \
          --storage-option endpoint_url=http://127.0.0.1:9000
      clipindex search "a dog on a beach" --index indexes/laion-part --backbone ViT-B-32
    """
    from clipindex.store import import_store

    result = import_store(folder, backbone, out=out, name=name, pretrained=pretrained,
                          root=root, index_kind=index_kind, dtype=dtype,
                          max_index_memory=max_index_memory, target_recall=target_recall,
                          storage_options=storage_options or None)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(f"imported {result.n_images:,} images and {result.n_captions:,} captions "
                   f"(dim {result.dim}, {result.n_skipped} zero vectors skipped, index "
                   f"{result.index.get('kind')}) into {result.path} in {result.seconds:.1f} s")
