"""Search a store: text→image, image→image, image→text and text→text.

Every search reads the stored vectors of one or more backbones of one dataset
(``OUT/<dataset>``); only the *queries* are encoded (text prompts through the
store's cached :meth:`BackboneIndex.text_vectors`, query images through the
backbone's encoder). Results are pandas DataFrames, one row per hit, grouped per
query in the order the queries were given::

    query_id  query  rank  score  row_id  file  label  caption        (target="images")
    query_id  query  rank  score  row_id  image_row_id  file  label  text   (target="captions")

Scores are exact cosine similarities: the candidates FAISS returns are rescored
from the stored vectors (and, for an approximate index, over-fetched first), so a
score never depends on the index kind. Rows a build skipped never appear.

Several backbones are fused by reciprocal rank fusion (RRF, Cormack et al. 2009):
every backbone ranks the same (filtered) rows and a row's fused score is
``sum_b 1 / (RRF_K + rank_b)`` over the backbones whose top ``max(k, depth)`` list
holds it (ranks start at 1, ``RRF_K = 60``). A fused score is *not* a cosine.

Notes a user should see (k larger than the collection, fusion) are returned in
:attr:`SearchResult.notes` and, for the DataFrame helpers, in ``frame.attrs["notes"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd

from clipindex.errors import DataError, UserInputError
from clipindex.search.filters import where_mask

__all__ = [
    "RRF_K",
    "RRF_DEPTH",
    "TARGETS",
    "SearchResult",
    "rrf_fuse",
    "search_indexes",
    "search_store",
    "search_text",
    "search_image",
    "search_captions",
    "read_queries_file",
]

RRF_K = 60
"""The constant of reciprocal rank fusion: a row at rank r scores 1 / (RRF_K + r)."""

RRF_DEPTH = 100
"""Each backbone contributes its top ``max(k, RRF_DEPTH)`` rows to a fusion."""

TARGETS = ("images", "captions")

_CAPTION_WIDTH = 60


class _Encoder(Protocol):
    def encode_images(
        self, files: Sequence[Any], *, workers: int | None = ..., progress: bool = ...
    ) -> tuple[np.ndarray, Any]: ...


class _Index(Protocol):
    """What search needs from :class:`clipindex.store.BackboneIndex`."""

    images: pd.DataFrame
    captions: pd.DataFrame
    image_vectors: np.ndarray
    caption_vectors: np.ndarray
    image_valid: np.ndarray
    caption_valid: np.ndarray
    manifest: dict

    def search(
        self, queries: np.ndarray, k: int, *, target: str = ..., rows: Any = ...
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def encoder(self) -> _Encoder: ...

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class SearchResult:
    """The hits of one search call and the notes to show the user.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per hit (see the module docstring for the columns).
    notes : tuple of str
        Things the user should know (k larger than the collection, fusion).
    score_kind : str
        ``"cosine"`` for one backbone, ``"rrf"`` for a fusion of several.
    """

    frame: pd.DataFrame
    notes: tuple[str, ...] = field(default_factory=tuple)
    score_kind: str = "cosine"


# ----------------------------------------------------------------------------- views
def _target_table(index: _Index, target: str) -> pd.DataFrame:
    """The table ``--where`` filters: images, or captions joined with their image's columns."""
    if target == "images":
        return index.images
    extra = [c for c in index.images.columns if c not in index.captions.columns]
    joined = index.captions.join(index.images[extra], on="image_row_id")
    return joined


def _first_captions(index: _Index, image_rows: np.ndarray) -> np.ndarray:
    """The first caption (lowest caption row id) of each of ``image_rows``; "" if none."""
    caps = index.captions
    if len(caps) == 0 or "image_row_id" not in caps or len(image_rows) == 0:
        return np.array([""] * len(image_rows), dtype=object)
    # Only the captions of the hits: a search must not scan-sort the whole table.
    mine = caps[caps["image_row_id"].isin(np.unique(image_rows))]
    first = mine.sort_values("row_id").drop_duplicates("image_row_id")
    lookup = dict(zip(first["image_row_id"].tolist(), first["text"].tolist(), strict=True))
    return np.array([lookup.get(int(r), "") for r in image_rows], dtype=object)


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise UserInputError(f"Unknown target {target!r}. Choose one of: {', '.join(TARGETS)}.")


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise UserInputError(f"k must be a positive whole number, got {k!r}.")
    return int(k)


# ----------------------------------------------------------------------------- ranking
def _is_exact(index: _Index, target: str) -> bool:
    """Whether the FAISS index of ``target`` is exact (flat); unknown means approximate."""
    manifest = index.manifest or {}
    desc: Any = manifest.get("index", manifest.get("index_kind", "flat"))
    if isinstance(desc, dict):
        desc = desc.get(target, desc)  # the store describes each matrix's index
        if isinstance(desc, dict):
            desc = desc.get("kind", manifest.get("index", {}).get("kind", "unknown"))
    return str(desc).lower() == "flat"


def _rank(
    index: _Index, queries: np.ndarray, k: int, target: str, rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, ids) of every query among the allowed valid rows.

    ``rows`` are the allowed row ids (``None``: all). ``k`` must not exceed their
    number. Candidates come from ``index.search``; their scores are recomputed
    from the stored vectors, so they are exact cosines whatever the index kind.
    """
    vectors = index.image_vectors if target == "images" else index.caption_vectors
    valid = np.asarray(index.image_valid if target == "images" else index.caption_valid, bool)
    n_invalid = int((~valid).sum()) if rows is None else int((~valid[rows]).sum())
    pool = len(valid) if rows is None else len(rows)
    fetch = k + n_invalid
    if not _is_exact(index, target):
        fetch = max(fetch, 4 * k, k + 50)
    fetch = min(fetch, pool)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, ids = index.search(q, fetch, target=target, rows=rows)
    ids = np.asarray(ids, dtype=np.int64)
    good = ids >= 0
    good[good] = valid[ids[good]]
    if rows is not None:
        allowed = np.zeros(len(valid), dtype=bool)
        allowed[rows] = True
        good[good] = allowed[ids[good]]
    safe = np.where(good, ids, 0)
    scores = np.einsum("qd,qkd->qk", q, np.asarray(vectors[safe], dtype=np.float32))
    scores = np.where(good, scores, -np.inf)
    # Highest score first; ties by row id so results are deterministic.
    order = np.lexsort((np.where(good, ids, np.iinfo(np.int64).max), -scores), axis=1)
    ids = np.take_along_axis(np.where(good, ids, -1), order, axis=1)[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)[:, :k]
    return scores.astype(np.float32), ids


def rrf_fuse(
    rankings: Sequence[np.ndarray], k: int, *, rrf_k: int = RRF_K
) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of several rankings of the same rows, per query.

    Parameters
    ----------
    rankings : sequence of int arrays, each (n_queries, depth)
        Row ids best first; -1 marks an empty slot.
    k : int
        How many fused rows to keep per query.
    rrf_k : int
        The fusion constant: a row at rank r (from 1) adds ``1 / (rrf_k + r)``.

    Returns
    -------
    scores, ids : (n_queries, k) arrays; ids -1 (score 0) where fewer rows exist.
        Ties are broken by row id.

    Examples
    --------
    >>> s, i = rrf_fuse([np.array([[3, 1]]), np.array([[1, 2]])], 3, rrf_k=60)
    >>> i.tolist(), round(float(s[0, 0]), 5)
    ([[1, 3, 2]], 0.03252)
    """
    n_queries = rankings[0].shape[0]
    out_ids = np.full((n_queries, k), -1, dtype=np.int64)
    out_scores = np.zeros((n_queries, k), dtype=np.float64)
    for q in range(n_queries):
        fused: dict[int, float] = {}
        for ranking in rankings:
            for r, row in enumerate(ranking[q], start=1):
                if row >= 0:
                    fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (rrf_k + r)
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        for j, (row, score) in enumerate(best):
            out_ids[q, j], out_scores[q, j] = row, score
    return out_scores, out_ids


# ----------------------------------------------------------------------------- queries
def _clean_texts(texts: Sequence[str] | str | None) -> list[str]:
    if texts is None:
        return []
    if isinstance(texts, str):
        texts = [texts]
    cleaned = []
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise UserInputError(
                f"Empty text query {text!r}: give some words, --image PATH or --queries-file FILE."
            )
        cleaned.append(text.strip())
    return cleaned


def read_queries_file(path: str | Path) -> list[str]:
    """Text queries from a file, one per line; blank lines are ignored.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "q.txt")
    >>> _ = Path(p).write_text("a photo of a cat\\n\\n a dog \\n")
    >>> read_queries_file(p)
    ['a photo of a cat', 'a dog']
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"Cannot read queries file {str(path)!r}: {exc}") from None
    queries = [line.strip() for line in lines if line.strip()]
    if not queries:
        raise UserInputError(f"Queries file {str(path)!r} holds no query (one per line).")
    return queries


def _check_images(paths: Sequence[str | Path] | str | Path | None) -> list[Path]:
    """The query image paths, each decoded once first so a bad one fails before any model
    is loaded (with the decoder's short reason)."""
    from clipindex.encode.decode import DecodeError, load_rgb

    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    checked = []
    for path in map(Path, paths):
        if path.is_dir():
            raise DataError(f"Cannot read query image {str(path)!r}: it is a folder.")
        try:
            load_rgb(path)
        except DecodeError as exc:
            raise DataError(f"Cannot read query image {str(path)!r}: {exc.reason}.") from None
        checked.append(path)
    return checked


def _skipped_reasons(skipped: Any) -> dict[int, str]:
    """``{position: reason}`` from the encoder's ``[(index, reason)]`` list."""
    return {int(item[0]): str(item[-1]) for item in skipped or ()}


def _query_vectors(index: _Index, texts: list[str], images: list[Path]) -> np.ndarray:
    """One text call and one image call per backbone; rows follow ``texts + images``."""
    parts = []
    if texts:
        parts.append(np.asarray(index.text_vectors(texts), dtype=np.float32))
    if images:
        # A few query files: no DataLoader workers, no progress bar.
        vectors, skipped = index.encoder().encode_images(
            [str(p) for p in images], workers=0, progress=False
        )
        reasons = _skipped_reasons(skipped)
        if reasons:
            pos, reason = sorted(reasons.items())[0]
            raise DataError(f"Cannot read query image {str(images[pos])!r}: {reason}.")
        parts.append(np.asarray(vectors, dtype=np.float32))
    return np.concatenate(parts, axis=0)


# ----------------------------------------------------------------------------- frames
def _backbone_name(index: _Index, i: int) -> str:
    name = getattr(index, "name", None)
    if name:
        return str(name)
    manifest = index.manifest or {}
    return str(manifest.get("backbone", f"backbone{i}"))


def _frame(
    index: _Index, target: str, labels: list[str], scores: np.ndarray, ids: np.ndarray
) -> pd.DataFrame:
    """The hits as a DataFrame, grouped per query (row-major over the (query, rank) grid)."""
    qi, slot = np.nonzero(ids >= 0)
    hit = ids[qi, slot]
    images = index.images
    frame = pd.DataFrame(
        {
            "query_id": qi.astype(np.int64),
            "query": [labels[i] for i in qi],
            "rank": (slot + 1).astype(np.int64),
            "score": scores[qi, slot].astype(np.float64),
            "row_id": hit.astype(np.int64),
        }
    )
    if target == "images":
        image_rows = hit
    else:
        caps = index.captions
        image_rows = caps["image_row_id"].to_numpy()[hit].astype(np.int64)
        frame["image_row_id"] = image_rows
    frame["file"] = images["file"].to_numpy()[image_rows] if len(hit) else []
    table = images if target == "images" else index.captions
    label = table["label"].to_numpy()[hit] if "label" in table else [None] * len(hit)
    frame["label"] = label if len(hit) else []
    if target == "images":
        frame["caption"] = _first_captions(index, hit)
    else:
        frame["text"] = index.captions["text"].to_numpy()[hit] if len(hit) else []
    return frame


# ----------------------------------------------------------------------------- search
def _allowed_rows(
    indexes: Sequence[_Index], target: str, where: Sequence[str] | str | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """(rows passed to the index or None for all, the mask of rows any backbone can return)."""
    n_rows = len(indexes[0].images if target == "images" else indexes[0].captions)
    if where:
        mask = where_mask(_target_table(indexes[0], target), where)
    else:
        mask = np.ones(n_rows, dtype=bool)
    noun = target if target == "images" else "captions"
    if where and not mask.any():
        raise DataError(f"No {noun} match --where {' and '.join(_as_list(where))}.")
    valid = np.zeros(n_rows, dtype=bool)
    for index in indexes:
        valid |= np.asarray(index.image_valid if target == "images" else index.caption_valid)
    if not (mask & valid).any():
        raise DataError(f"No searchable {noun}: every selected row was skipped by the build.")
    rows = np.flatnonzero(mask).astype(np.int64) if where else None
    return rows, mask & valid


def _as_list(value: Sequence[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _check_aligned(indexes: Sequence[_Index]) -> None:
    n_images, n_captions = len(indexes[0].images), len(indexes[0].captions)
    for index in indexes[1:]:
        if len(index.images) != n_images or len(index.captions) != n_captions:
            raise UserInputError(
                "Backbones to fuse must belong to the same dataset folder "
                "(their image and caption tables differ)."
            )


def search_indexes(
    indexes: _Index | Sequence[_Index],
    *,
    texts: Sequence[str] | str | None = None,
    images: Sequence[str | Path] | str | Path | None = None,
    k: int = 10,
    target: str = "images",
    where: Sequence[str] | str | None = None,
    depth: int = RRF_DEPTH,
) -> SearchResult:
    """Search one backbone, or fuse several by reciprocal rank fusion.

    Parameters
    ----------
    indexes : BackboneIndex or sequence of them
        Opened stores of the same dataset (``clipindex.store.open_index``).
    texts, images : text queries and/or query image paths
        All texts are encoded in one call and all images in one call per backbone;
        results follow the order ``texts + images``.
    k : int
        Hits per query. More than the (filtered) collection returns all of it with a note.
    target : {"images", "captions"}
        What to return: images (text→image, image→image) or captions (→text).
    where : ``--where`` expressions (see :func:`parse_where`), ANDed; for captions
        they may also name the image table's columns.
    depth : int
        With several backbones, each contributes its top ``max(k, depth)`` rows.

    Returns
    -------
    SearchResult
        ``frame`` (see the module docstring), ``notes`` and ``score_kind``.

    Examples
    --------
    >>> index = open_index("indexes/demo", "tiny-vit")             # doctest: +SKIP
    >>> search_indexes(index, texts=["a photo of a dog"], k=5).frame  # doctest: +SKIP
    """
    if isinstance(indexes, (list, tuple)):
        indexes = list(indexes)
    else:
        indexes = [cast(_Index, indexes)]
    if not indexes:
        raise UserInputError("Give at least one backbone to search.")
    k = _check_k(k)
    _check_target(target)
    texts_, images_ = _clean_texts(texts), _check_images(images)
    if not texts_ and not images_:
        raise UserInputError(
            "Nothing to search for: give a text query, --image PATH or --queries-file FILE."
        )
    _check_aligned(indexes)
    rows, available = _allowed_rows(indexes, target, where)
    labels = texts_ + [str(p) for p in images_]
    noun = "images" if target == "images" else "captions"
    n_avail = int(available.sum())
    notes = []
    if k > n_avail:
        scope = " matching --where" if where else ""
        notes.append(
            f"k={k} is more than the {n_avail} searchable {noun}{scope}; returning all {n_avail}."
        )
    rankings = []
    for index in indexes:
        valid = np.asarray(index.image_valid if target == "images" else index.caption_valid)
        pool = int((valid & available).sum())
        want = min(k if len(indexes) == 1 else max(k, depth), pool)
        rankings.append(_rank(index, _query_vectors(index, texts_, images_), want, target, rows))
    if len(indexes) == 1:
        scores, ids = rankings[0]
        return SearchResult(_frame(indexes[0], target, labels, scores, ids), tuple(notes))
    names = [_backbone_name(index, i) for i, index in enumerate(indexes)]
    scores, ids = rrf_fuse([r[1] for r in rankings], min(k, n_avail))
    notes.append(
        f"Fused {len(indexes)} backbones ({', '.join(names)}) by reciprocal rank "
        f"fusion (k={RRF_K}, top {max(k, depth)} per backbone): score is the RRF "
        "score sum(1/(60+rank)), not a cosine."
    )
    frame = _frame(indexes[0], target, labels, scores, ids)
    return SearchResult(frame, tuple(notes), score_kind="rrf")


def _with_notes(result: SearchResult) -> pd.DataFrame:
    frame = result.frame
    frame.attrs["notes"] = list(result.notes)
    frame.attrs["score_kind"] = result.score_kind
    return frame


def search_text(
    index: _Index,
    queries: Sequence[str] | str,
    k: int = 10,
    *,
    target: str = "images",
    where: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """Text→image (or, with ``target="captions"``, text→text) search of one backbone.

    Returns a DataFrame with columns ``query_id, query, rank, score, row_id, file,
    label, caption`` (captions: ``image_row_id`` and ``text`` instead of ``caption``);
    ``score`` is the exact cosine; notes are in ``frame.attrs["notes"]``.

    Examples
    --------
    >>> index = open_index("indexes/demo", "tiny-vit")              # doctest: +SKIP
    >>> search_text(index, ["a photo of a cow"], k=10)[["rank", "label"]]  # doctest: +SKIP
    """
    return _with_notes(search_indexes(index, texts=queries, k=k, target=target, where=where))


def search_image(
    index: _Index,
    paths: Sequence[str | Path] | str | Path,
    k: int = 10,
    *,
    target: str = "images",
    where: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """Image→image (or, with ``target="captions"``, image→text) search of one backbone.

    Examples
    --------
    >>> search_image(index, ["query.jpg"], k=5)                    # doctest: +SKIP
    """
    return _with_notes(search_indexes(index, images=paths, k=k, target=target, where=where))


def search_captions(
    index: _Index,
    queries: Sequence[str] | str | None = None,
    k: int = 10,
    *,
    images: Sequence[str | Path] | str | Path | None = None,
    where: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """Captions nearest to text queries and/or query images (text→text, image→text).

    Examples
    --------
    >>> search_captions(index, images=["query.jpg"], k=5)["text"]  # doctest: +SKIP
    """
    return _with_notes(
        search_indexes(index, texts=queries, images=images, k=k, target="captions", where=where)
    )


def _open_index(dataset_dir: str | Path, backbone: str) -> _Index:
    from clipindex.store import open_index  # the store is only needed here

    return open_index(dataset_dir, backbone)


def search_store(
    dataset_dir: str | Path,
    backbones: Sequence[str] | str,
    *,
    texts: Sequence[str] | str | None = None,
    images: Sequence[str | Path] | None = None,
    queries_file: str | Path | None = None,
    k: int = 10,
    target: str = "images",
    where: Sequence[str] | str | None = None,
) -> SearchResult:
    """Open ``dataset_dir`` for every backbone and search it (what ``clipindex search`` runs).

    Queries are ``texts``, then the lines of ``queries_file``, then ``images``.

    Examples
    --------
    >>> search_store("indexes/demo", ["tiny-vit", "tiny-rn"], texts="a dog").frame  # doctest: +SKIP
    """
    k = _check_k(k)
    _check_target(target)
    all_texts = _clean_texts(texts)
    if queries_file is not None:
        all_texts += read_queries_file(queries_file)
    if not all_texts and not images:
        raise UserInputError(
            "Nothing to search for: give a text query, --image PATH or --queries-file FILE."
        )
    _check_images(images)
    names = [backbones] if isinstance(backbones, str) else list(dict.fromkeys(backbones))
    if not names:
        raise UserInputError("Give at least one --backbone.")
    indexes = [_open_index(dataset_dir, name) for name in names]
    return search_indexes(indexes, texts=all_texts, images=images, k=k, target=target, where=where)
