"""``clipindex search``: text→image, image→image and →text search of a store."""

from __future__ import annotations

import json
import math

import click
import pandas as pd

from clipindex.cli._app import echo_err, main
from clipindex.search import RRF_K, TARGETS, SearchResult, search_store

_TEXT_WIDTH = 60


def _short(text: object, width: int = _TEXT_WIDTH) -> str:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _grid(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return [line(header)] + [line(r) for r in rows]


def _table(result: SearchResult, target: str) -> str:
    """Plain-text tables, one per query, for stdout."""
    frame = result.frame
    lines = []
    if result.score_kind == "rrf":
        lines.append(f"# reciprocal rank fusion (k={RRF_K}): score is the RRF score, not a cosine")
    text_col = "caption" if target == "images" else "text"
    columns = ["rank", "score", "row_id"] + (["image_row_id"] if target == "captions" else [])
    columns += ["file", "label", text_col]
    header = [c.replace("_", " ").replace("image row id", "image row") for c in columns]
    right = set(range(len(columns) - 3))  # the numeric columns come first
    for n, (_, group) in enumerate(frame.groupby("query_id", sort=True)):
        if n:
            lines.append("")
        lines.append(f"query: {group['query'].iloc[0]}")
        rows = [
            [str(r.rank), f"{r.score:.4f}", str(r.row_id)]
            + ([str(r.image_row_id)] if target == "captions" else [])
            + [_short(r.file, 40), _short(r.label, 20), _short(getattr(r, text_col))]
            for r in group.itertuples(index=False)
        ]
        lines.extend(_grid(header, rows, right))
    return "\n".join(lines)


def _records(result: SearchResult) -> str:
    frame = result.frame.copy()
    frame["score_kind"] = result.score_kind
    # "exact": the score is an exact cosine from the stored vectors (an RRF score is not
    # a cosine); "exhaustive": the rows are the exact top-k (False on approximate indexes).
    frame["exact"] = result.score_kind == "cosine"
    frame["exhaustive"] = result.exhaustive
    frame = frame.astype(object).where(pd.notna(frame), None)
    return json.dumps(frame.to_dict(orient="records"), ensure_ascii=False, default=str)


@main.command("search")
@click.argument("query", required=False)
@click.option(
    "--index",
    "index_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset folder of the store, OUT/<dataset>.",
)
@click.option(
    "--backbone",
    "backbones",
    required=True,
    multiple=True,
    help="Backbone to search; give several to fuse them by reciprocal rank fusion.",
)
@click.option("-k", "k", type=int, default=10, show_default=True, help="Hits per query.")
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(),
    help="Query image (image→image or, with --to captions, image→text). Repeatable.",
)
@click.option(
    "--queries-file",
    type=click.Path(),
    default=None,
    help="Text queries, one per line, searched in one batched call.",
)
@click.option(
    "--to",
    "target",
    type=click.Choice(TARGETS),
    default="images",
    show_default=True,
    help="Return images or captions.",
)
@click.option(
    "--where",
    "where",
    multiple=True,
    help="Filter rows before ranking: col=v, col!=v, col=a,b, col<n. Repeatable (AND).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print only a JSON list of hits on stdout (notes go to stderr).",
)
def search_command(
    query: str | None,
    index_dir: str,
    backbones: tuple[str, ...],
    k: int,
    images: tuple[str, ...],
    queries_file: str | None,
    target: str,
    where: tuple[str, ...],
    as_json: bool,
) -> None:
    """Search a store by text QUERY, by --image, or by a --queries-file.

    \b
    Examples:
      clipindex search "a dog carrying a frisbee" --index indexes/demo --backbone tiny-vit
      clipindex search --image q.jpg --index indexes/demo --backbone tiny-vit --to captions
      clipindex search "a photo of a cow" --index indexes/demo --backbone tiny-vit \\
          --backbone tiny-rn --where split=test -k 5 --json
    """
    result = search_store(
        index_dir,
        list(backbones),
        texts=[query] if query is not None else None,
        images=list(images),
        queries_file=queries_file,
        k=k,
        target=target,
        where=list(where),
    )
    for note in result.notes:
        echo_err(f"Note: {note}")
    click.echo(_records(result) if as_json else _table(result, target))
