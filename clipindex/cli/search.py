"""``clipindex search``: text→image, image→image and →text search of a store."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import click

from clipindex.cli._app import echo_err, main
from clipindex.cli._choices import SEARCH_TARGETS

if TYPE_CHECKING:
    from clipindex.search import SearchResult

_TEXT_WIDTH = 60


def _short(text: object, width: int = _TEXT_WIDTH) -> str:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


_QUERY_WIDTH = 200  # characters of a query shown in its table's header


def _query_header(query: object) -> str:
    """The query as its table's header: one line, long ones cut with their length."""
    text = " ".join(str(query).split())
    if len(text) <= _QUERY_WIDTH:
        return text
    return f"{_short(text, _QUERY_WIDTH)} ({len(str(query)):,} characters)"


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
        from clipindex.search import RRF_K

        lines.append(f"# reciprocal rank fusion (k={RRF_K}): score is the RRF score, not a cosine")
    text_col = "caption" if target == "images" else "text"
    columns = ["rank", "score", "row_id"] + (["image_row_id"] if target == "captions" else [])
    columns += ["file", "label", text_col]
    header = [c.replace("_", " ").replace("image row id", "image row") for c in columns]
    right = set(range(len(columns) - 3))  # the numeric columns come first
    for n, (_, group) in enumerate(frame.groupby("query_id", sort=True)):
        if n:
            lines.append("")
        lines.append(f"query: {_query_header(group['query'].iloc[0])}")
        rows = [
            [str(r.rank), f"{r.score:.4f}", str(r.row_id)]
            + ([str(r.image_row_id)] if target == "captions" else [])
            + [_short(r.file, 40), _short(r.label, 20), _short(getattr(r, text_col))]
            for r in group.itertuples(index=False)
        ]
        lines.extend(_grid(header, rows, right))
    return "\n".join(lines)


def _every_backbone(index_dir: str) -> list[str]:
    """The store's finished backbones (no ``--backbone``): all of them, fused by RRF."""
    from clipindex.errors import UserInputError
    from clipindex.store import list_backbones

    names = list_backbones(index_dir)
    if not names:
        raise UserInputError(
            f"{index_dir} holds no finished backbone: build one with `clipindex build`, "
            "or give --index the dataset folder of a store (OUT/<dataset>)")
    if len(names) > 1:
        echo_err(f"Note: no --backbone: searching all {len(names)} backbones of the store "
                 f"({', '.join(names)}), fused by reciprocal rank fusion")
    return names


def _records(result: SearchResult) -> str:
    return json.dumps(result.records(), ensure_ascii=False, default=str)


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
    multiple=True,
    help="Backbone to search; give several to fuse them by reciprocal rank fusion. "
    "[default: every backbone of the store, fused, as `clipindex serve` does]",
)
@click.option("-k", "k", type=int, default=10, show_default=True, help="Hits per query.")
@click.option("--offset", "offset", type=int, default=0, show_default=True,
              help="Paging: skip each query's first N hits (ranks kept; serve's offset).")
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(),
    help="Query image (image→image or, with --to captions, image→text). Repeatable.",
)
@click.option(
    "--like",
    "like",
    multiple=True,
    type=click.IntRange(min=0),
    help="Search by a stored image: its row id (its stored vector; no file read, no model "
    "call; the row itself is the first hit, cosine 1). Repeatable.",
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
    type=click.Choice(SEARCH_TARGETS),
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
@click.option("--add", "add", multiple=True,
              help="Text term added to every query vector (rclip's +). Repeatable.")
@click.option("--subtract", "subtract", multiple=True,
              help="Text term subtracted from every query vector (rclip's -). Repeatable.")
@click.option("--add-image", "add_images", multiple=True, type=click.Path(),
              help="Image term added to every query vector. Repeatable.")
@click.option("--subtract-image", "subtract_images", multiple=True, type=click.Path(),
              help="Image term subtracted from every query vector. Repeatable.")
@click.option("--term-weight", "term_weight", type=float, default=1.0, show_default=True,
              help="Weight of every --add/--subtract term against the query's 1.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    help="Where to search: cpu (the FAISS index, default) or cuda (faiss-gpu when "
    "installed, else exact torch matmul + top-k).",
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
    offset: int,
    images: tuple[str, ...],
    like: tuple[int, ...],
    queries_file: str | None,
    target: str,
    where: tuple[str, ...],
    device: str | None,
    add: tuple[str, ...],
    subtract: tuple[str, ...],
    add_images: tuple[str, ...],
    subtract_images: tuple[str, ...],
    term_weight: float,
    as_json: bool,
) -> None:
    """Search a store by text QUERY, by --image, by a stored image (--like ROW_ID), or by a
    --queries-file.

    \b
    Examples:
      clipindex search "a dog carrying a frisbee" --index indexes/demo
      clipindex search "a dog carrying a frisbee" --index indexes/demo --backbone tiny-vit
      clipindex search --image q.jpg --index indexes/demo --backbone tiny-vit --to captions
      clipindex search --like 42 --index indexes/demo --backbone tiny-vit -k 5
      clipindex search "a photo of a cow" --index indexes/demo --backbone tiny-vit \\
          --backbone tiny-rn --where split=test -k 5 --json
      clipindex search "a photo of a cow" --subtract "grass" --index indexes/demo \
          --backbone tiny-rn
    """
    from clipindex.search import search_store
    from clipindex.search.arithmetic import Terms

    terms = Terms(add=add, subtract=subtract, add_images=add_images,
                  subtract_images=subtract_images, weight=term_weight)
    names = list(backbones) or _every_backbone(index_dir)
    result = search_store(
        index_dir,
        names,
        texts=[query] if query is not None else None,
        images=list(images),
        queries_file=queries_file,
        k=k,
        target=target,
        where=list(where),
        device=device,
        terms=terms,
        offset=offset,
        like=list(like),
    )
    for note in result.notes:
        echo_err(f"Note: {note}")
    click.echo(_records(result) if as_json else _table(result, target))
