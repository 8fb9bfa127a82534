"""ASGI middleware that bounds and guards every request before any route runs.

- :class:`BodyLimit`: a body over ``max_bytes`` is a 413 (refused from its
  ``Content-Length`` before a byte is read, or as soon as a chunked body passes the
  limit); bodies are read into memory, at most ``max_bytes`` each. A request with
  neither header has no body (HTTP/1.1) and passes straight through.
- :class:`BearerAuth`: with a token, every route but :data:`PUBLIC_PATHS` (``/health``
  and the page's own static files, which hold no store data) needs
  ``Authorization: Bearer TOKEN`` (compared in constant time); otherwise a 401.
- :class:`SecurityHeaders`: ``nosniff``, no referrer, no framing, and a content
  security policy that lets the page load only its own files.
- :class:`HostGuard`: a request whose ``Host`` names no allowed host is a 421 (DNS
  rebinding: a page of ``evil.example`` resolved to 127.0.0.1 sends ``Host:
  evil.example``); see :func:`clipindex.serve.options.allowed_hosts`.
- :class:`InFlightLimit`: at most ``limit`` requests are handled at once, counted from
  complete headers (and a passed token) to the last byte of the answer; past it a 503.
  Idle or half-open connections hold no slot (they are closed by the connection guard
  of :mod:`clipindex.serve.connections`), so they cannot starve ``/health`` or anyone.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from clipindex.serve.errors import error_body
from clipindex.serve.options import is_ip

__all__ = ["PUBLIC_PATHS", "BearerAuth", "BodyLimit", "HostGuard", "InFlightLimit",
           "SecurityHeaders", "host_name", "is_public"]

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
        bodied = False  # without these headers HTTP/1.1 has no body: nothing to read
        for name, value in scope.get("headers", ()):
            bodied = bodied or name in (b"content-length", b"transfer-encoding")
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _refuse(send, 400, "Content-Length is not a number.")
                    return
                if declared > self.max_bytes:
                    await _refuse(send, 413, too_big)
                    return
        if not bodied:
            await self.app(scope, receive, send)
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


def host_name(value: bytes) -> str:
    """The host of a ``Host`` header value, lower case, without port or brackets."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):  # [::1]:8000
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class HostGuard:
    """Answer only requests whose ``Host`` is allowed (421 otherwise; see the module
    docstring). A request without ``Host`` (HTTP/1.0, never a browser) passes."""

    def __init__(self, app: ASGIApp, names: Iterable[str], any_ip: bool = False) -> None:
        self.app = app
        self.names = frozenset(names)
        self.any_name = "*" in self.names
        self.any_ip = any_ip

    def allows(self, name: str) -> bool:
        """Whether a request for host ``name`` (see :func:`host_name`) is answered."""
        if self.any_name or name in self.names:
            return True
        if not is_ip(name):
            return False
        return self.any_ip or ipaddress.ip_address(name).is_loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
            if given is not None and not self.allows(host_name(given)):
                shown = host_name(given)[:80]
                await _refuse(send, 421, f"This server does not answer for host {shown!r}; "
                              f"start it with --allow-host {shown} to allow that name.")
                return
        await self.app(scope, receive, send)


class InFlightLimit:
    """At most ``limit`` requests in the app at once; a 503 past it (see the module
    docstring). The app runs on one event loop: a plain counter is enough."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await _refuse(send, 503, f"The server is handling {self.limit} requests; retry "
                          "in a moment.", [(b"retry-after", b"1")])
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
