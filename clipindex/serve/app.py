"""The HTTP application: :func:`create_app` (FastAPI on Starlette; run by uvicorn).

Routes (every error is a 4xx ``{"error": "..."}``; see the README's ``clipindex serve``):

- ``GET /search?q=TEXT`` (or ``like=ROW_ID``, a stored image as the query) and
  ``POST /search`` with an image upload in the multipart field ``image``; ``k``,
  ``offset``, ``backbone`` (repeat to fuse), ``where`` (repeat), ``to=images|captions``;
  the body is the JSON list ``clipindex search --json`` prints;
- ``POST /classify`` with an upload and ``method`` → label, probabilities, abstain;
- ``GET /images/{row_id}``, ``GET /thumbs/{row_id}``: files the tables name, only;
- ``GET /health``, ``GET /info``, ``POST /reload``, ``GET /openapi.json``;
- clip-retrieval's ``POST /knn-service``, ``POST /metadata``, ``GET /indices-list``
  (:mod:`clipindex.serve.knn`), so its ``ClipClient`` and web front work unchanged;
- ``GET /`` and ``/static/{name}``: the web page, from files shipped in the package.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from clipindex.errors import MissingExtraError
from clipindex.serve.options import ServeOptions
from clipindex.serve.state import ServedStore

__all__ = ["create_app", "static_files"]

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (the upload parser)
    except ImportError as exc:
        raise MissingExtraError(
            f"clipindex serve needs the serve extra ({exc.name} is missing): "
            "pip install 'clipindex[serve]'") from None


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once from the package: name -> (bytes, media type)."""
    out = {}
    for entry in resources.files("clipindex.serve").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return out


def create_app(options: ServeOptions | None = None, *, store: ServedStore | None = None
               ) -> Any:
    """The FastAPI application over one store (``options``, or an open ``store``).

    Opening loads every served backbone once and warms its text tower. Middleware, from
    the outside in: security headers, the ``Host`` allow-list, CORS (only with
    ``cors_origins``), the bearer token (only with ``token``), the in-flight limit, the
    body limit.
    """
    _require()
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    from clipindex import __version__
    from clipindex.serve import routes
    from clipindex.serve.errors import install_handlers
    from clipindex.serve.guards import (
        BearerAuth,
        BodyLimit,
        HostGuard,
        InFlightLimit,
        SecurityHeaders,
    )
    from clipindex.serve.options import allowed_hosts

    if store is None:
        if options is None:
            raise TypeError("create_app needs options or a store")
        store = ServedStore(options)
    opts = store.options
    app = FastAPI(title="clipindex", version=__version__, docs_url=None, redoc_url=None,
                  description="Search and classify over a clipindex store.")
    app.state.store = store
    install_handlers(app)
    routes.add_routes(app, store, static_files())
    app.add_middleware(BodyLimit, max_bytes=opts.max_upload_bytes)
    app.add_middleware(InFlightLimit, limit=opts.max_in_flight)
    if opts.token:
        app.add_middleware(BearerAuth, token=opts.token)
    if opts.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(opts.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    names, any_ip = allowed_hosts(opts.host, opts.allow_hosts)
    app.add_middleware(HostGuard, names=names, any_ip=any_ip)
    app.add_middleware(SecurityHeaders)
    return app

