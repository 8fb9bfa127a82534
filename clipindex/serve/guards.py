"""ASGI middleware that bounds and guards every request before any route runs.

- :class:`BodyLimit`: a body over ``max_bytes`` is a 413 (refused from its
  ``Content-Length`` before a byte is read, or as soon as a chunked body passes the
  limit); bodies are read into memory, at most ``max_bytes`` each.
- :class:`BearerAuth`: with a token, every route but :data:`PUBLIC_PATHS` (``/health``
  and the page's own static files, which hold no store data) needs
  ``Authorization: Bearer TOKEN`` (compared in constant time); otherwise a 401.
- :class:`SecurityHeaders`: ``nosniff``, no referrer, no framing, and a content
  security policy that lets the page load only its own files.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from clipindex.serve.errors import error_body

__all__ = ["PUBLIC_PATHS", "BearerAuth", "BodyLimit", "SecurityHeaders", "is_public"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = frozenset({"/health", "/", "/favicon.ico"})
_PUBLIC_PREFIX = "/static/"
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'")


def is_public(path: str) -> bool:
    """Whether ``path`` is served without a token (``/health`` and the page's files)."""
    return path in PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIX)


async def _refuse(send: Send, status: int, message: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = error_body(message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"The request body is over the limit of {self.max_bytes:,} bytes."
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _refuse(send, 400, "Content-Length is not a number.")
                    return
                if declared > self.max_bytes:
                    await _refuse(send, 413, too_big)
                    return
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await _refuse(send, 413, too_big)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class BearerAuth:
    """Require ``Authorization: Bearer TOKEN`` on every non-public route."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_public(scope.get("path", "")):
            given = next((v for k, v in scope.get("headers", ()) if k == b"authorization"),
                         b"")
            if not hmac.compare_digest(given, self.expected):
                await _refuse(send, 401, "Missing or wrong token: send Authorization: "
                              "Bearer TOKEN (the --token the server was started with).",
                              [(b"www-authenticate", b'Bearer realm="clipindex"')])
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Add ``nosniff``, no-referrer, no-framing and a same-origin-only CSP to responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY"),
                            (b"content-security-policy", _CSP.encode())]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
