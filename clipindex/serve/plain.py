"""``GET /search`` without FastAPI's per-request parameter solving, for plain requests.

FastAPI validates the route's seven query parameters with pydantic on every request, a
large part of what a search costs the server on a small store (bench_serve). The route
here, placed before FastAPI's, matches a ``GET /search`` only when every parameter is
one the route knows, given once (``backbone`` / ``where``: up to their limits), and
well-formed within its bounds: ``q`` 1..``max_query_chars`` characters, integers as
plain digits, ``to`` ``images`` or ``captions``, exactly one of ``q`` / ``like``, ``k +
offset`` within ``max_k``. It answers with the same function as FastAPI's route
(:func:`run_search`), on the event loop when it is known to be cheap (:func:`is_cheap`:
the thread hop costs more than such a search), else in a worker thread, at most as many
at once as the machine has cores (more only fight for the GIL: at 16 clients on a 1M
IVF store the server's CPU per request fell from 1.98 to 1.33 ms with the bound).
Anything else does not match, so FastAPI's route answers it, with its own validation and
messages: the answers of both are the same bytes (tests/test_serve_plain.py), only the
cost differs.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from clipindex.serve import answers, media
from clipindex.serve.options import ServeOptions
from clipindex.serve.state import ServedStore, Snapshot

__all__ = ["INLINE_WORK", "PlainQuery", "is_cheap", "parse_plain", "plain_search_route",
           "run_search"]

SCOPE_KEY = "clipindex.plain_search"
_SINGLE = frozenset({"q", "like", "k", "offset", "to"})
_MAX_BACKBONES = 16  # the FastAPI route's bound on ``backbone``
_MAX_ROW = 2**53
#: Stored vector components (rows x dim) up to which a search runs on the event loop
#: (:func:`is_cheap`): the demo store holds 64k, a 1M x 512 store 512M.
INLINE_WORK = 2**22


@dataclass(frozen=True)
class PlainQuery:
    """A ``GET /search`` whose parameters all passed the checks of the module docstring."""

    q: str | None
    like: int | None
    k: int
    offset: int
    backbone: tuple[str, ...] | None
    where: tuple[str, ...] | None
    to: str


def _digits(value: str, low: int, high: int) -> int | None:
    """``value`` as an int in ``low..high`` when written as plain digits (no sign, space,
    underscore or leading zero: spellings pydantic may read otherwise), else None."""
    if not (value.isascii() and value.isdigit()) or len(value) > 16 or \
            (len(value) > 1 and value[0] == "0"):
        return None
    number = int(value)
    return number if low <= number <= high else None


def parse_plain(query_string: bytes, opts: ServeOptions) -> PlainQuery | None:
    """The query of a plain ``GET /search`` (parsed as Starlette parses query strings),
    or None when FastAPI's route must answer it."""
    single: dict[str, str] = {}
    backbone: list[str] = []
    where: list[str] = []
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key in _SINGLE:
            if key in single:
                return None
            single[key] = value
        elif key == "backbone":
            backbone.append(value)
        elif key == "where":
            where.append(value)
        else:
            return None
    if len(backbone) > _MAX_BACKBONES or len(where) > answers.MAX_WHERE:
        return None
    if ("q" in single) == ("like" in single):
        return None
    q = single.get("q")
    if q is not None and not 1 <= len(q) <= opts.max_query_chars:
        return None
    like = _digits(single["like"], 0, _MAX_ROW) if "like" in single else None
    k = _digits(single.get("k", "10"), 1, opts.max_k)
    offset = _digits(single.get("offset", "0"), 0, opts.max_k - 1)
    to = single.get("to", "images")
    if ("like" in single and like is None) or k is None or offset is None or \
            k + offset > opts.max_k or to not in ("images", "captions"):
        return None
    return PlainQuery(q, like, k, offset, tuple(backbone) or None, tuple(where) or None, to)


def is_cheap(snap: Snapshot, p: PlainQuery) -> bool:
    """Whether the search of ``p`` may run on the event loop: no model call (a text whose
    vectors are in memory, or a stored row) and at most :data:`INLINE_WORK` stored vector
    components to score in every searched backbone (a flat search of them takes well
    under a millisecond on one core). Anything bigger or slower runs in a worker thread,
    so that a long FAISS search never holds the other connections up."""
    try:
        indexes = snap.pick(p.backbone)
    except Exception:  # noqa: BLE001 - the search itself reports it, in a worker thread
        return False
    for index in indexes:
        rows = len(index.images if p.to == "images" else index.captions)
        if rows * index.dim > INLINE_WORK:
            return False
        if p.q is not None and not (index.knows_text(p.q) and index.knows_text(p.q.strip())):
            return False
    return True


def run_search(snap: Snapshot, q: str | None, like: int | None, k: int, offset: int,
               backbone: Any, where: Any, to: str) -> tuple[list[dict[str, Any]], list[str]]:
    """What ``GET /search`` answers on the snapshot a request took (both routes run this)."""
    if like is None:
        return answers.search(snap, text=q, k=k, offset=offset, backbones=backbone,
                              where=where, target=to)
    media.live_row(snap, like)  # a removed row is no query either
    return answers.search(snap, like=like, k=k, offset=offset, backbones=backbone,
                          where=where, target=to)


def plain_search_route(store: ServedStore, respond: Any) -> Any:
    """The Starlette route of plain ``GET /search`` requests; ``respond(records, notes)``
    makes the response (the one FastAPI's route uses)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.routing import Match, Route

    opts = store.options
    # A thread semaphore, not an event loop's limiter: it holds whatever loop runs the app.
    slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))

    def _bounded_search(*args: Any) -> tuple[list[dict[str, Any]], list[str]]:
        with slots:
            return run_search(*args)

    async def endpoint(request: Any) -> Any:
        p: PlainQuery = request.scope[SCOPE_KEY]
        snap = store.current()  # once a request: it checks the mapped files
        args = (snap, p.q, p.like, p.k, p.offset, list(p.backbone) if p.backbone else None,
                list(p.where) if p.where else None, p.to)
        if is_cheap(snap, p):  # well under a millisecond: the thread hop would cost more
            return respond(*run_search(*args))
        return respond(*await run_in_threadpool(_bounded_search, *args))

    class PlainSearch(Route):
        def matches(self, scope: Any) -> tuple[Any, Any]:
            match, child = super().matches(scope)
            if match is not Match.FULL:
                return match, child
            parsed = parse_plain(scope.get("query_string", b""), opts)
            if parsed is None:
                return Match.NONE, {}
            return match, {**child, SCOPE_KEY: parsed}

    return PlainSearch("/search", endpoint, methods=["GET"], include_in_schema=False)
