"""Errors as the API gives them: a 4xx status with a JSON body ``{"error": "..."}``.

:class:`ApiError` is what the server's own code raises; :func:`install_handlers` turns
it, clipindex's own errors (a :class:`~clipindex.errors.UserInputError` is a 422), the
framework's validation errors and unknown routes into that shape, and anything
unexpected into a 500 ``{"error": "internal server error"}`` (logged, never a traceback
in the response).
"""

from __future__ import annotations

import logging
from typing import Any

from clipindex.errors import ClipindexError, UserInputError

__all__ = ["ApiError", "error_body", "install_handlers"]

log = logging.getLogger(__name__)
_MAX_MESSAGE = 300


class ApiError(Exception):
    """An error the client caused or may retry: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_body(message: str) -> bytes:
    """The JSON bytes of an error response."""
    import json

    text = " ".join(str(message).split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
    return json.dumps({"error": text}).encode()


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: Any) -> None:
    """Register the JSON error handlers on a FastAPI ``app``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.responses import Response

    def reply(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return Response(error_body(message), status_code=status, headers=headers,
                        media_type="application/json")

    @app.exception_handler(ApiError)
    async def _api(request: Any, exc: ApiError) -> Response:
        return reply(exc.status, exc.message, exc.headers)

    @app.exception_handler(UserInputError)
    async def _user(request: Any, exc: UserInputError) -> Response:
        return reply(422, str(exc))

    @app.exception_handler(ClipindexError)
    async def _ours(request: Any, exc: ClipindexError) -> Response:
        return reply(409, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> Response:
        return reply(422, _validation_message(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def _http(request: Any, exc: HTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"No route {request.url.path!r}."
        return reply(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Any, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return reply(500, "internal server error")
