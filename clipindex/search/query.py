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
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from clipindex.checks import positive_int
from clipindex.errors import UserInputError
from clipindex.search.arithmetic import Terms, combine, term_vectors
from clipindex.search.frames import HitTable, backbone_name, hit_table
from clipindex.search.fusion import RRF_DEPTH, RRF_K, rrf_fuse
from clipindex.search.ranking import (
    SearchableIndex,
    check_aligned,
    is_exact,
    rank,
    select_rows,
    stored_vectors,
    table_of,
)

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
    "like_problem",
    "Terms",
]

TARGETS = ("images", "captions")

_Index = SearchableIndex
ImagePaths = Sequence[str | Path] | str | Path | None


@dataclass(frozen=True)
class SearchResult:
    """The hits of one search call and the notes to show the user.

    Attributes
    ----------
    hits : HitTable (or a DataFrame)
        One row per hit as columns of Python values (see the module docstring for the
        columns); :attr:`frame` is the DataFrame, :meth:`records` the JSON dicts.
    notes : tuple of str
        Things the user should know (k larger than the collection, fusion).
    score_kind : str
        ``"cosine"`` for one backbone, ``"rrf"`` for a fusion of several.
    exhaustive : bool
        True when every backbone's index is exact (flat), so the rows are the exact
        top-k; False on an approximate index, whose rows are its best candidates
        (rescored exactly: the cosines are exact, the set may miss a true neighbour).
    """

    hits: HitTable | pd.DataFrame
    notes: tuple[str, ...] = field(default_factory=tuple)
    score_kind: str = "cosine"
    exhaustive: bool = True

    @property
    def table(self) -> HitTable:
        hits = self.hits
        return hits if isinstance(hits, HitTable) else HitTable.from_frame(hits)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """One row per hit (built on first use; ``records`` never builds it)."""
        return self.hits if isinstance(self.hits, pd.DataFrame) else self.hits.frame()

    def records(self) -> list[dict[str, Any]]:
        """The hits as JSON-ready dicts, each with ``score_kind``, ``exact`` and
        ``exhaustive``: the list that
        ``clipindex search --json`` prints and ``clipindex serve``'s ``/search`` returns
        (plain Python values; missing values are ``None``)."""
        # "exact": the score is an exact cosine from the stored vectors (an RRF score
        # is not a cosine); "exhaustive": the rows are the exact top-k (False on
        # approximate indexes, whose candidates are rescored exactly).
        extra = {"score_kind": self.score_kind, "exact": self.score_kind == "cosine",
                 "exhaustive": self.exhaustive}
        return [record | extra for record in self.table.records()]


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


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise UserInputError(f"Unknown target {target!r}. Choose one of: {', '.join(TARGETS)}.")


def _check_k(k: Any) -> int:
    return positive_int("k", k)


def _check_images(paths: ImagePaths) -> list[Path]:
    """The query image paths, checked from their headers (no decoding here: that is
    :mod:`clipindex.encode`'s) so a bad one fails before any model is loaded."""
    from clipindex.encode import check_query_images

    return check_query_images(paths)


def like_problem(indexes: Sequence[_Index], row: Any) -> tuple[str, str] | None:
    """Why image row ``row`` cannot be a ``like`` query, as ``(kind, message)`` with kind
    ``range`` (no such row), ``removed`` (tombstoned) or ``skipped`` (no vector: a
    skipped input); None when every backbone holds its vector."""
    first = indexes[0]
    n = len(first.image_valid)  # not len(first.images): that would decode the table
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not 0 <= row < n:
        return "range", f"No image row {row!r}: row ids are 0..{n - 1}."
    from clipindex.store.generations import tombstones

    if int(row) in set(tombstones(getattr(first, "dataset_info", {}) or {})[0].tolist()):
        return "removed", f"Image row {row} was removed from the store (tombstoned)."
    for index in indexes:
        if not bool(np.asarray(index.image_valid)[int(row)]):
            return "skipped", (f"Image row {row} has no vector in {backbone_name(index, 0)} "
                               "(skipped at build: unreadable or a zero vector).")
    return None


def _check_like(indexes: Sequence[_Index], like: Sequence[int] | int | None) -> list[int]:
    rows = [] if like is None else [like] if isinstance(like, (int, np.integer)) else list(like)
    for row in rows:
        problem = like_problem(indexes, row)
        if problem is not None:
            raise UserInputError(problem[1])
    return [int(r) for r in rows]


def _check_vectors(indexes: Sequence[_Index], vectors: Any) -> np.ndarray:
    """Query vectors as a float32 ``(n, dim)`` matrix, L2-normalised; they are in one
    backbone's space, so only one backbone may be searched with them."""
    if vectors is None:
        return np.zeros((0, 0), dtype=np.float32)
    if len(indexes) != 1:
        raise UserInputError("A query vector is in one backbone's space: search one "
                             f"backbone with it, not {len(indexes)}.")
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise UserInputError("Query vectors must be numbers.") from None
    dim = int(indexes[0].manifest["dim"])
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise UserInputError(f"A query vector must have {dim} numbers (the backbone's dim), "
                             f"got shape {tuple(array.shape)}.")
    if not np.isfinite(array).all():
        raise UserInputError("A query vector holds NaN or infinite values.")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not (norms > 0).all():
        raise UserInputError("A query vector is all zeros.")
    return array / norms


def _like_labels(index: _Index, like: list[int]) -> list[str]:
    if not like:
        return []
    return [str(f) for f in table_of(index, "images").take("file", np.asarray(like))]


def _query_vectors(index: _Index, texts: list[str], images: list[Path],
                   like: Sequence[int] = (), vectors: np.ndarray | None = None
                   ) -> np.ndarray:
    """One text call and one image call per backbone, then the stored vectors of the
    ``like`` rows (no file read, no model call) and the given ``vectors``; rows follow
    ``texts + images + like + vectors``."""
    parts = []
    if texts:
        parts.append(np.asarray(index.text_vectors(texts), dtype=np.float32))
    if images:
        from clipindex.encode import encode_query_images

        parts.append(encode_query_images(index.encoder(), images))
    if len(like):
        stored = stored_vectors(index, "images")  # a float16 store stays float16
        parts.append(np.asarray(stored[np.asarray(like, dtype=np.int64)], dtype=np.float32))
    if vectors is not None and len(vectors):
        parts.append(vectors)
    return np.concatenate(parts, axis=0)


def _queries(texts: Sequence[str] | str | None, images: ImagePaths, like: bool = False
             ) -> tuple[list[str], list[Path]]:
    texts_, images_ = _clean_texts(texts), _check_images(images)
    if not texts_ and not images_ and not like:
        raise UserInputError(
            "Nothing to search for: give a text query, --image PATH or --queries-file FILE."
        )
    return texts_, images_


def _k_note(k: int, n_avail: int, target: str, where: Sequence[str] | str | None) -> list[str]:
    if k <= n_avail:
        return []
    noun = "images" if target == "images" else "captions"
    scope = " matching --where" if where else ""
    return [f"k={k} is more than the {n_avail} searchable {noun}{scope}; returning all {n_avail}."]


def search_indexes(
    indexes: _Index | Sequence[_Index],
    *,
    texts: Sequence[str] | str | None = None,
    images: ImagePaths = None,
    k: int = 10,
    target: str = "images",
    where: Sequence[str] | str | None = None,
    depth: int = RRF_DEPTH,
    device: str | None = None,
    terms: Terms | None = None,
    offset: int = 0,
    like: Sequence[int] | int | None = None,
    vectors: Any = None,
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
    device : str, optional
        ``cuda`` searches the stored vectors on the GPU (faiss-gpu or torch); default
        the FAISS index on CPU.
    terms : Terms, optional
        Query arithmetic: ``--add`` / ``--subtract`` texts and images combined with
        every query (:mod:`clipindex.search.arithmetic`).
    offset : int
        Paging: skip each query's first ``offset`` hits (``k + offset`` are ranked; the
        hits keep their ranks, so page 2 of ``k=10`` is ``offset=10``, ranks 11-20).
    like : image row id(s), optional
        Stored images as queries (after ``texts + images``; labelled by their file):
        each backbone's stored vector of the row, so no file is read and no model is
        called. As for a query image that is in the store, the row itself is the first
        hit (cosine 1). A removed, skipped or unknown row is a :class:`UserInputError`
        (:func:`like_problem`).
    vectors : array-like ``(n, dim)`` or ``(dim,)``, optional
        Query vectors already in the backbone's space (one backbone only), searched
        last and labelled ``vector <i>``; L2-normalised here.

    Returns
    -------
    SearchResult
        ``frame`` (see the module docstring), ``notes`` and ``score_kind``.

    Examples
    --------
    >>> index = open_index("indexes/demo", "tiny-vit")             # doctest: +SKIP
    >>> search_indexes(index, texts=["a photo of a dog"], k=5).frame  # doctest: +SKIP
    """
    indexes = list(indexes) if isinstance(indexes, (list, tuple)) else [cast(_Index, indexes)]
    if not indexes:
        raise UserInputError("Give at least one backbone to search.")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise UserInputError(f"offset must be a whole number >= 0, got {offset!r}.")
    k = _check_k(k) + int(offset)
    _check_target(target)
    like_ = _check_like(indexes, like)
    vectors_ = _check_vectors(indexes, vectors)
    texts_, images_ = _queries(texts, images, bool(like_) or len(vectors_) > 0)
    terms = terms if terms is not None and not terms.empty else None
    term_images = (_check_images(list(terms.add_images + terms.subtract_images))
                   if terms is not None else [])
    check_aligned(indexes)
    selection = select_rows(indexes, target, where, k)
    labels = texts_ + [str(p) for p in images_] + _like_labels(indexes[0], like_) + \
        [f"vector {i}" for i in range(len(vectors_))]
    if terms is not None:
        labels = [terms.label(q) for q in labels]
    n_avail = selection.n_avail
    notes = _k_note(k, n_avail, target, where) if n_avail is not None else []
    rankings = []
    for index, pool in zip(indexes, selection.pool, strict=True):
        want = min(k if len(indexes) == 1 else max(k, depth), pool)
        queries = _query_vectors(index, texts_, images_, like_, vectors_)
        if terms is not None:
            queries = combine(queries, *term_vectors(index, terms, term_images))
        rankings.append(rank(index, queries, want, target, selection.rows, device=device))
    exhaustive = all(is_exact(index, target) for index in indexes)
    if len(indexes) == 1:
        scores, ids = rankings[0]
        return SearchResult(hit_table(indexes[0], target, labels, scores, ids, offset),
                            tuple(notes), exhaustive=exhaustive)
    names = [backbone_name(index, i) for i, index in enumerate(indexes)]
    scores, ids = rrf_fuse([r[1] for r in rankings], k if n_avail is None else min(k, n_avail))
    notes.append(
        f"Fused {len(indexes)} backbones ({', '.join(names)}) by reciprocal rank "
        f"fusion (k={RRF_K}, top {max(k, depth)} per backbone): score is the RRF "
        "score sum(1/(60+rank)), not a cosine."
    )
    hits = hit_table(indexes[0], target, labels, scores, ids, offset)
    return SearchResult(hits, tuple(notes), score_kind="rrf", exhaustive=exhaustive)


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
    device: str | None = None,
    terms: Terms | None = None,
    offset: int = 0,
    like: Sequence[int] | None = None,
) -> SearchResult:
    """Open ``dataset_dir`` for every backbone and search it (what ``clipindex search`` runs).

    Queries are ``texts``, then the lines of ``queries_file``, then ``images``, then the
    stored images ``like`` (row ids; see :func:`search_indexes`).

    Examples
    --------
    >>> search_store("indexes/demo", ["tiny-vit", "tiny-rn"], texts="a dog").frame  # doctest: +SKIP
    """
    k = _check_k(k)
    _check_target(target)
    all_texts = _clean_texts(texts)
    if queries_file is not None:
        all_texts += read_queries_file(queries_file)
    if not all_texts and not images and not like:
        raise UserInputError(
            "Nothing to search for: give a text query, --image PATH, --like ROW_ID or "
            "--queries-file FILE."
        )
    _check_images(images)
    names = [backbones] if isinstance(backbones, str) else list(dict.fromkeys(backbones))
    if not names:
        raise UserInputError("Give at least one --backbone.")
    indexes = [_open_index(dataset_dir, name) for name in names]
    return search_indexes(indexes, texts=all_texts, images=images, k=k, target=target,
                          where=where, device=device, terms=terms, offset=offset,
                          like=like)
