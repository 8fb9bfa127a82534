"""clip-retrieval's HTTP protocol over a clipindex store, so its clients work unchanged.

clip-retrieval's back end (``clip_back``) answers three routes, and ``clipindex serve``
answers them the same way (its ``ClipClient`` and its web front are the clients):

- ``POST /knn-service``: a JSON body with one query (``text``, a base64 ``image`` or an
  ``embedding_input`` vector), ``modality`` (``image``: search the image vectors,
  ``text``: the caption vectors), ``num_images`` / ``num_result_ids``, ``indice_name``,
  ``deduplicate`` and options clipindex has no model for (``use_safety_model``,
  ``use_violence_detector``, ``aesthetic_score`` / ``aesthetic_weight``, ``use_mclip``:
  accepted and ignored, said so in the ``X-Clipindex-Notes`` header). The answer is a
  list, best first, of ``{"id", "similarity"}``; the first ``num_images`` also carry the
  image's metadata (:func:`image_metadata`). ``id`` is always an *image* row id (the
  metadata row, as in clip-retrieval, whose caption vectors are aligned with its
  images), so with ``modality=text`` a caption hit answers for its image, ``caption``
  is the caption that matched and an image appears once (at its best caption's rank).
- ``POST /metadata``: ``{"ids": [...]}`` -> ``[{"id", "metadata"}]``.
- ``GET /indices-list``: the store's name, then ``NAME/BACKBONE`` for each served
  backbone when there are several (``NAME`` searches them all, fused as ``/search``
  does; an ``embedding_input`` needs one backbone's space).

The hits are :func:`clipindex.serve.answers.search`'s, so they are ``clipindex search
--json``'s (``similarity`` = its ``score``). ``deduplicate`` drops, as clip-retrieval
does, every hit whose stored vector is within cosine :data:`DEDUP_THRESHOLD` of a
better hit (transitively: connected components, the best of each kept). No URL is
fetched (``image_url`` is refused): the service reads no network and no path a request
names.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from clipindex.serve.errors import ApiError
from clipindex.serve.options import ServeOptions
from clipindex.serve.state import Snapshot

__all__ = ["DEDUP_THRESHOLD", "IGNORED", "KnnQuery", "MetadataQuery", "dedup_keep",
           "image_metadata", "indices", "knn_answer", "metadata_answer"]

#: clip-retrieval's near-duplicate cosine (``get_non_uniques``).
DEDUP_THRESHOLD = 0.94
#: The options clip-retrieval has and clipindex does not: accepted, ignored, noted.
IGNORED = {
    "use_safety_model": "no safety (NSFW) model: nothing was filtered",
    "use_violence_detector": "no violence detector: nothing was filtered",
    "aesthetic_score": "no aesthetic embeddings: the query was not moved",
    "use_mclip": "no multilingual CLIP: the text went through the backbone's own encoder",
}
MAX_VECTOR = 8192
Scalar = int | float | str | None


class KnnQuery(BaseModel):
    """The body of ``POST /knn-service`` (clip-retrieval's names; unknown keys ignored)."""

    model_config = ConfigDict(extra="ignore")

    text: str | None = None
    image: str | None = Field(None, description="the query image, base64")
    image_url: str | None = Field(None, description="refused: the server fetches no URL")
    embedding_input: list[float] | None = Field(None, max_length=MAX_VECTOR)
    modality: Literal["image", "text"] = "image"
    num_images: int = Field(40, ge=1, description="hits that carry metadata")
    num_result_ids: int | None = Field(None, ge=1, description="hits (ids) in all")
    indice_name: str | None = Field(None, max_length=300)
    deduplicate: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    use_mclip: bool = False
    aesthetic_score: Scalar = None
    aesthetic_weight: Scalar = None


class MetadataQuery(BaseModel):
    """The body of ``POST /metadata``."""

    model_config = ConfigDict(extra="ignore")

    ids: list[int] = Field(max_length=100_000)
    indice_name: str | None = Field(None, max_length=300)


def indices(snapshot: Snapshot) -> list[str]:
    """The names ``indice_name`` takes: the store's, then one per backbone if several."""
    name = str(snapshot.first.dataset_info.get("name") or "store")
    if len(snapshot.names) == 1:
        return [name]
    return [name, *(f"{name}/{b}" for b in snapshot.names)]


def _backbones(snapshot: Snapshot, indice_name: str | None) -> list[str]:
    known = indices(snapshot)
    if indice_name in (None, "", known[0]):
        return list(snapshot.names)
    if indice_name not in known:
        raise ApiError(404, f"Unknown indice_name {indice_name!r}. Known: {', '.join(known)}.")
    return [indice_name.split("/", 1)[1]]


def _notes(query: KnnQuery) -> list[str]:
    notes = []
    for key, why in IGNORED.items():
        value = getattr(query, key)
        if value not in (None, False, ""):
            notes.append(f"{key} ignored: clipindex has {why}.")
    return notes


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is not None and not isinstance(value, (str, int, float, bool, dict)):
        import pandas as pd

        return None if pd.isna(value) else str(value)
    return value


def image_metadata(snapshot: Snapshot, rows: Sequence[int], base_url: str
                   ) -> list[dict[str, Any]]:
    """Each image row's metadata: ``caption`` (its first caption), ``url`` (the store's
    own ``url`` column when it has one and the row a value, else ``BASE/images/ROW``)
    and every other column of the images table but ``row_id``. Reads only these rows."""
    from clipindex.search.frames import first_captions
    from clipindex.search.ranking import table_of

    index = snapshot.first
    rows_ = np.asarray(list(rows), dtype=np.int64)
    images = table_of(index, "images")  # by row id: no whole column is decoded
    columns = {c: images.take(c, rows_) for c in images.columns if c != "row_id"}
    caption_rows = first_captions(index, rows_)
    has = caption_rows >= 0
    texts = np.full(len(rows_), "", dtype=object)
    if has.any():
        texts[has] = table_of(index, "captions").take("text", caption_rows[has])
    out = []
    for i, row in enumerate(rows_.tolist()):
        meta = {c: _plain(values[i]) for c, values in columns.items()}
        link = f"{base_url.rstrip('/')}/images/{row}"
        meta["url"] = meta.get("url") or link
        meta["caption"] = str(texts[i])
        out.append(meta)
    return out


def dedup_keep(vectors: np.ndarray, threshold: float = DEDUP_THRESHOLD) -> np.ndarray:
    """Which rows of ``vectors`` (best first) to keep: one per connected component of
    the graph "cosine >= threshold", the best-ranked (clip-retrieval's dedup)."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=bool)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    close = (unit @ unit.T) >= threshold
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i, j in zip(*np.nonzero(np.triu(close, 1)), strict=True):
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)  # the better-ranked row is the root
    return np.array([root(i) == i for i in range(n)])


def _query_kind(query: KnnQuery, max_chars: int) -> tuple[str, Any]:
    given = {"text": (query.text or "").strip() or None, "image": query.image or None,
             "embedding_input": query.embedding_input or None}
    present = {k: v for k, v in given.items() if v is not None}
    if not present:
        if query.image_url:
            raise ApiError(422, "image_url is not supported: clipindex serve fetches no URL; "
                                "send the image itself, base64, in 'image'.")
        raise ApiError(422, "Give one of text, image (base64) or embedding_input.")
    if len(present) > 1:
        raise ApiError(422, f"Give one query, not {' and '.join(present)}.")
    kind, value = next(iter(present.items()))
    if kind == "text" and len(value) > max_chars:
        raise ApiError(422, f"text is over {max_chars} characters.")
    if isinstance(value, str) and kind == "image":
        try:
            return kind, base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "image is not valid base64.") from None
    return kind, value


def knn_answer(snapshot: Snapshot, query: KnnQuery, options: ServeOptions, base_url: str
               ) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``/knn-service`` answer and its notes (see the module docstring)."""
    from clipindex.serve import answers

    if query.num_images > options.max_k:
        raise ApiError(422, f"num_images must be at most {options.max_k}.")
    kind, value = _query_kind(query, options.max_query_chars)
    backbones = _backbones(snapshot, query.indice_name)
    notes = _notes(query)
    k = max(query.num_images, query.num_result_ids or 0)
    if k > options.max_k:
        notes.append(f"num_result_ids={k} is over this server's max_k; "
                     f"returning at most {options.max_k}.")
        k = options.max_k
    target = "images" if query.modality == "image" else "captions"
    if kind == "text":
        records, found = answers.search(snapshot, text=value, k=k, backbones=backbones,
                                        target=target)
    elif kind == "embedding_input":
        records, found = answers.search(snapshot, vectors=[value], k=k,
                                        backbones=backbones, target=target)
    else:
        from clipindex.serve.uploads import upload_file

        with upload_file(value, options.max_pixels) as path:
            records, found = answers.search(snapshot, image=path, k=k, backbones=backbones,
                                            target=target)
    return _entries(snapshot, records, query, target, base_url, backbones[0]), notes + found


def _entries(snapshot: Snapshot, records: list[dict[str, Any]], query: KnnQuery,
             target: str, base_url: str, backbone: str) -> list[dict[str, Any]]:
    """Hits as clip-retrieval lists them: one per image (best first), deduplicated on
    request (by ``backbone``'s stored vectors: the first searched one), the first
    ``num_images`` with their metadata."""
    image_key = "row_id" if target == "images" else "image_row_id"
    seen, kept = set(), []
    for record in records:
        if record[image_key] not in seen:
            seen.add(record[image_key])
            kept.append(record)
    if query.deduplicate and kept:
        index = snapshot.indexes[backbone]
        matrix = index.image_vectors if target == "images" else index.caption_vectors
        rows = np.asarray([r["row_id"] for r in kept], dtype=np.int64)
        keep = dedup_keep(np.asarray(matrix[rows], dtype=np.float32))
        kept = [r for r, k in zip(kept, keep, strict=True) if k]
    head = kept[:query.num_images]
    metas = image_metadata(snapshot, [r[image_key] for r in head], base_url)
    out = []
    for i, record in enumerate(kept):
        entry = metas[i] if i < len(head) else {}
        if target == "captions" and i < len(head):
            entry["caption"] = record["text"]
        entry.update(id=int(record[image_key]), similarity=float(record["score"]))
        out.append(entry)
    return out


def metadata_answer(snapshot: Snapshot, query: MetadataQuery, options: ServeOptions,
                    base_url: str) -> list[dict[str, Any]]:
    """``[{"id", "metadata"}]`` of the asked image rows (at most ``max_k`` of them)."""
    if len(query.ids) > options.max_k:
        raise ApiError(422, f"At most {options.max_k} ids per request, got {len(query.ids)}.")
    _backbones(snapshot, query.indice_name)
    from clipindex.store.generations import tombstones

    n = len(snapshot.first.images)
    bad = [i for i in query.ids if not 0 <= i < n]
    if bad:
        raise ApiError(404, f"No image row {bad[0]}: row ids are 0..{n - 1}.")
    dead = set(tombstones(snapshot.first.dataset_info)[0].tolist()) & set(query.ids)
    if dead:
        raise ApiError(404, f"Image row {min(dead)} was removed from the store.")
    metas = image_metadata(snapshot, query.ids, base_url)
    return [{"id": int(i), "metadata": m} for i, m in zip(query.ids, metas, strict=True)]
