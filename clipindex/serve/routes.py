"""The routes of :func:`clipindex.serve.create_app` (see :mod:`clipindex.serve.app`).

No ``from __future__ import annotations`` here: FastAPI reads these annotations at
definition time, and their bounds (``max_k``, ``max_query_chars``) are the server's.
"""

import json
from typing import Annotated, Any, Literal

from clipindex.serve import answers, media
from clipindex.serve.errors import ApiError
from clipindex.serve.plain import plain_search_route, run_search
from clipindex.serve.state import ServedStore, Snapshot

__all__ = ["add_routes"]

Target = Literal["images", "captions"]


def _search_response(records: list[dict[str, Any]], notes: list[str]) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(records, ensure_ascii=False, default=str),
                    media_type="application/json",
                    headers={"X-Clipindex-Notes": json.dumps(notes)})


def _info(snapshot: Snapshot, store: ServedStore) -> dict[str, Any]:
    from clipindex.store import FORMAT_VERSION

    first, opts = snapshot.first, store.options
    images = first.images
    backbones = []
    for name in snapshot.names:
        m = snapshot.indexes[name].manifest
        backbones.append({k: m.get(k) for k in (
            "backbone", "backbone_folder", "display_name", "model_name", "pretrained", "dim",
            "dtype", "n_images", "n_captions", "n_skipped", "index", "format_version",
            "clipindex_version")} | {"name": name})

    def column(c: str) -> list[str]:
        return sorted(images[c].dropna().astype(str).unique().tolist()) if c in images else []

    return {"dataset": first.dataset_info.get("name"), "n_images": len(images),
            "n_captions": len(first.captions), "backbones": backbones,
            "labels": column("label"), "splits": column("split"),
            "generation": snapshot.generation, "opened_at": snapshot.opened_at,
            "store_format": FORMAT_VERSION, "methods": answers.methods(),
            "limits": {"max_k": opts.max_k, "max_upload_bytes": opts.max_upload_bytes,
                       "max_query_chars": opts.max_query_chars,
                       "max_pixels": opts.max_pixels},
            "reload": {"interval_s": opts.reload_interval, "last_error": store.last_error},
            "auth": bool(opts.token)}


def add_routes(app: Any, store: ServedStore, static: dict[str, tuple[bytes, str]]) -> None:
    """Register every route on ``app``. long because: one small closure per route, and
    their bounded parameter types, read best side by side."""
    from fastapi import File, Path, Query, UploadFile
    from fastapi.responses import FileResponse
    from starlette.responses import Response

    opts = store.options
    thumbs = media.Thumbnails(opts.thumb_size, opts.thumb_cache)
    K = Annotated[int, Query(ge=1, le=opts.max_k, description="hits per query")]
    Offset = Annotated[int, Query(ge=0, lt=opts.max_k, description="hits to skip")]
    Backbones = Annotated[list[str] | None, Query(
        max_length=16, description="backbone(s) to search; several are fused")]
    Where = Annotated[list[str] | None, Query(
        max_length=answers.MAX_WHERE, description="filters: col=v, col!=v, col<n ...")]
    RowId = Annotated[int, Path(ge=0, le=2**53, description="an image row id")]
    Image = Annotated[UploadFile, File(description="the query image")]

    def bounded(k: int, offset: int) -> None:
        if k + offset > opts.max_k:
            raise ApiError(422, f"k + offset must be at most {opts.max_k}.")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return _info(store.current(), store)

    @app.post("/reload")
    def reload() -> dict[str, Any]:
        try:
            store.reload(wait=True)
        except Exception:  # noqa: BLE001 - the old store keeps serving; say why
            raise ApiError(409, f"The store could not be reopened ({store.last_error}); "
                           f"still serving generation {store.snapshot.generation}.") from None
        return _info(store.current(), store)

    @app.get("/search")
    def search_get(
        q: Annotated[str | None, Query(min_length=1, max_length=opts.max_query_chars,
                                       description="text query")] = None,
        like: Annotated[int | None, Query(ge=0, le=2**53,
                                          description="search by this image row")] = None,
        k: K = 10, offset: Offset = 0, backbone: Backbones = None, where: Where = None,
        to: Target = "images",
    ) -> Any:
        bounded(k, offset)
        if (q is None) == (like is None):
            raise ApiError(422, "Give exactly one of q (a text) or like (an image row id).")
        # like: the row's stored vectors, no file read, no model call
        return _search_response(*run_search(store.current(), q, like, k, offset, backbone,
                                                 where, to))

    @app.post("/search")
    async def search_post(image: Image, k: K = 10, offset: Offset = 0,
                          backbone: Backbones = None, where: Where = None,
                          to: Target = "images") -> Any:
        from starlette.concurrency import run_in_threadpool

        from clipindex.serve.uploads import upload_file, upload_label

        bounded(k, offset)
        data = await image.read()
        snap = store.current()

        def run() -> Any:
            with upload_file(data, opts.max_pixels) as path:
                return answers.search(snap, image=path, label=upload_label(image.filename),
                                      k=k, offset=offset, backbones=backbone, where=where,
                                      target=to)

        return _search_response(*await run_in_threadpool(run))

    @app.post("/classify")
    async def classify(
        image: Image,
        method: Annotated[str, Query(max_length=32, description="prompt, prototype, knn, "
                                     "probe, caption-knn, image-knn, linear-probe, mlp")
                          ] = "prompt",
        backbone: Backbones = None,
        ensemble: Literal["majority", "soft"] | None = None,
        reject_below: Annotated[float | None, Query(ge=0, le=1)] = None,
        k: Annotated[int, Query(ge=1, le=100, description="k-NN neighbours")] = 10,
    ) -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        from clipindex.serve.uploads import upload_file

        if method not in answers.methods():
            raise ApiError(422, f"Unknown method {method!r}. Known: "
                           f"{', '.join(answers.methods())}.")
        data = await image.read()
        snap = store.current()
        threshold = opts.reject_below if reject_below is None else reject_below

        def run() -> dict[str, Any]:
            with upload_file(data, opts.max_pixels) as path:
                return answers.classify_upload(snap, path, method=method, backbones=backbone,
                                               ensemble=ensemble, reject_below=threshold,
                                               k=k)

        return await run_in_threadpool(run)

    @app.get("/images/{row_id}", response_class=FileResponse)
    def image_file(row_id: RowId) -> Any:
        snap = store.current()
        path = media.image_file(snap, row_id)
        if path is None:  # object storage, shard member, parquet cell
            data, _ = media.image_bytes(snap, row_id)
            return Response(data, media_type=media.sniffed_type(data))
        return FileResponse(path, media_type=media.media_type(path))

    @app.get("/thumbs/{row_id}", response_class=Response)
    def thumb(row_id: RowId) -> Any:
        data = thumbs.of_row(store.current(), row_id)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})

    add_knn_routes(app, store)
    # Plain GET /search requests skip FastAPI's parameter solving (clipindex.serve.plain);
    # the route above answers everything else, and documents the API.
    app.router.routes.insert(0, plain_search_route(store, _search_response))

    @app.get("/", include_in_schema=False)
    def page() -> Any:
        body, kind = static["index.html"]
        return Response(body, media_type=kind)

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Any:
        if name not in static:  # a fixed set read at start: no request reaches the disk
            raise ApiError(404, "No such file.")
        body, kind = static[name]
        return Response(body, media_type=kind, headers={"Cache-Control": "no-cache"})


def _body(model: Any) -> dict[str, Any]:
    """OpenAPI for a JSON body read by hand (clip-retrieval's clients send JSON with no
    or a ``text/plain`` content type, which FastAPI's own body parsing refuses)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def add_knn_routes(app: Any, store: ServedStore) -> None:
    """clip-retrieval's routes (:mod:`clipindex.serve.knn`): ``POST /knn-service``,
    ``POST /metadata``, ``GET /indices-list``; the same middleware guards them."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool

    from clipindex.serve import knn

    opts = store.options

    async def parse(request: Request, model: Any) -> Any:
        try:
            return model.model_validate_json(await request.body() or b"null")
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None

    @app.get("/indices-list")
    def indices_list() -> list[str]:
        return knn.indices(store.current())

    @app.post("/knn-service", openapi_extra=_body(knn.KnnQuery))
    async def knn_service(request: Request) -> Any:
        query = await parse(request, knn.KnnQuery)
        snap = store.current()
        found = await run_in_threadpool(knn.knn_answer, snap, query, opts,
                                        str(request.base_url))
        return _search_response(*found)

    @app.post("/metadata", openapi_extra=_body(knn.MetadataQuery))
    async def metadata(request: Request) -> Any:
        query = await parse(request, knn.MetadataQuery)
        snap = store.current()
        return _search_response(await run_in_threadpool(
            knn.metadata_answer, snap, query, opts, str(request.base_url)), [])
