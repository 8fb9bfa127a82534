"""What the routes compute: searches and classifications against one :class:`Snapshot`.

Search runs :func:`clipindex.search.search_indexes` (the function ``clipindex search``
runs) on the snapshot's indexes, so ``/search`` returns the very list ``clipindex
search --json`` prints for the same query (:meth:`SearchResult.records`). Model work
(encoding a query text or image) holds the snapshot's model lock; ranking does not.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.serve.errors import ApiError
from clipindex.serve.state import Snapshot

__all__ = ["METHOD_ALIASES", "classify_upload", "methods", "search"]

#: Short method names the API also takes (the issue's ``knn`` and ``probe``).
METHOD_ALIASES = {"knn": "caption-knn", "probe": "linear-probe"}
MAX_WHERE = 8
MAX_WHERE_CHARS = 200
_PINNED = threading.local()


def pin_threads(n: int) -> None:
    """Limit FAISS to ``n`` OpenMP threads in this request thread (an OpenMP setting is
    per thread, and a new thread starts with every core: 16 concurrent searches would
    each spin up all of them)."""
    if getattr(_PINNED, "n", None) != n:
        from clipindex.index.kinds import set_search_threads

        set_search_threads(n)
        _PINNED.n = n


def methods() -> list[str]:
    """The classification methods ``/classify`` takes (aliases after the real names)."""
    from clipindex.classifiers.runner import METHODS

    return [*METHODS, *METHOD_ALIASES]


def _check_where(where: Sequence[str] | None) -> list[str]:
    where = list(where or ())
    if len(where) > MAX_WHERE:
        raise ApiError(422, f"At most {MAX_WHERE} where filters, got {len(where)}.")
    for w in where:
        if len(w) > MAX_WHERE_CHARS:
            raise ApiError(422, f"A where filter is over {MAX_WHERE_CHARS} characters.")
    return where


def search(snapshot: Snapshot, *, text: str | None = None, image: Path | None = None,
           like: int | None = None, vectors: Any = None, label: str | None = None,
           k: int = 10, offset: int = 0,
           backbones: Sequence[str] | None = None, where: Sequence[str] | None = None,
           target: str = "images") -> tuple[list[dict[str, Any]], list[str]]:
    """The hits (``clipindex search --json``'s records) and notes of one query.

    ``offset`` skips the first hits after ranking (``k + offset`` are ranked, the hits
    keep their ranks); ``label`` replaces an image query's file name in ``query``.
    ``like`` is a stored image row searched by its stored vectors (no file, no model):
    an unknown or removed row is a 404, a skipped one (no vector) a 400. ``vectors``
    are query vectors in the (one) searched backbone's space (clip-retrieval's
    ``embedding_input``).
    """
    from clipindex.search import search_indexes
    from clipindex.search.query import like_problem

    pin_threads(snapshot.threads)
    indexes = snapshot.pick(backbones)
    where_ = _check_where(where)
    if text is not None:
        for index in indexes:  # encode under the model lock, rank without it
            index.text_vectors([text.strip()] if text.strip() else [])
        result = search_indexes(indexes, texts=[text], k=k, offset=offset, target=target,
                                where=where_ or None)
    elif image is not None:
        with snapshot.model_lock:
            result = search_indexes(indexes, images=[image], k=k, offset=offset,
                                    target=target,
                                    where=where_ or None)
    elif like is not None:
        problem = like_problem(indexes, like)
        if problem is not None:
            raise ApiError(400 if problem[0] == "skipped" else 404, problem[1])
        result = search_indexes(indexes, like=[like], k=k, offset=offset, target=target,
                                where=where_ or None)
    elif vectors is not None:
        result = search_indexes(indexes, vectors=vectors, k=k, offset=offset, target=target,
                                where=where_ or None)
    else:
        raise ApiError(422, "Give a text or an image to search for.")
    records = result.records()
    if label is not None:
        for r in records:
            r["query"] = label
    return records, list(result.notes)


def _vectors(snapshot: Snapshot, names: Sequence[str], image: Path) -> list[np.ndarray]:
    from clipindex.encode import encode_query_images

    with snapshot.model_lock:
        return [encode_query_images(snapshot.indexes[n].encoder(), [image]) for n in names]


def classify_upload(snapshot: Snapshot, image: Path, *, method: str,
                    backbones: Sequence[str] | None = None, ensemble: str | None = None,
                    reject_below: float = 0.5, k: int = 10) -> dict[str, Any]:
    """Label, probabilities and abstention of one uploaded image (the classifier is
    fitted on the store's support rows once per snapshot and settings)."""
    from clipindex.classifiers import fit_classifier
    from clipindex.classifiers import reject_below as reject

    pin_threads(snapshot.threads)
    real = METHOD_ALIASES.get(method, method)
    indexes = snapshot.pick(backbones)
    names = tuple(dict.fromkeys(backbones or ())) or snapshot.names
    if len(indexes) > 1 and ensemble is None:
        ensemble = "soft"
    key = (real, names, ensemble, k)
    fitted = snapshot.classifier(key, lambda: fit_classifier(
        [i.index for i in indexes], real, ensemble=ensemble, k=k))
    table = fitted.predict(_vectors(snapshot, names, image))
    proba = table[[f"p_{c}" for c in fitted.classes]].to_numpy()
    return {
        "label": str(table["predicted"].iloc[0]),
        "probabilities": {c: float(p) for c, p in zip(fitted.classes, proba[0], strict=True)},
        "abstain": bool(reject(proba, reject_below)[0]),
        "reject_below": reject_below,
        "method": real,
        "backbones": list(names),
        "ensemble": fitted.ensemble,
    }
