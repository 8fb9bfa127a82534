"""The connection guard of ``clipindex serve``: uvicorn's h11 protocol with a header
timeout and a connection cap that idle sockets cannot exhaust.

uvicorn (0.55) starts its keep-alive timer only after a first response, and its
``limit_concurrency`` counts open connections: 64 sockets that connect and send nothing
(or half a request line) made every other request, ``/health`` included, a 503 without
any token. Here instead:

- a connection must send complete request headers within :attr:`GuardedH11Protocol.
  header_timeout` seconds of opening (or of its last answer, on a kept-alive
  connection), else it is closed: a slow drip of bytes does not restart the clock;
- past :attr:`GuardedH11Protocol.max_connections` open connections a new one evicts
  the oldest *idle* one (no request in progress); only when every connection carries a
  request is the new one closed;
- the requests handled at once are bounded by the app
  (:class:`clipindex.serve.guards.InFlightLimit`), counted only once headers are in.

Imported only when a server runs (it imports uvicorn).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardedH11Protocol"]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header timeout and the idle-first connection cap
    of the module docstring."""

    #: Seconds a connection has to send complete request headers.
    header_timeout: float = 10.0
    #: Open connections past which the oldest idle one is closed for a new one.
    max_connections: int = 512

    _header_timer: asyncio.TimerHandle | None = None
    _armed_cycle: Any = None
    _armed_at: float = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def idle(self) -> bool:
        """No request in progress (none yet, or the last one answered)."""
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._armed_cycle, self._armed_at = self.cycle, self.loop.time()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _expire(self) -> None:
        """No new request began since the timer was armed: close the connection."""
        self._header_timer = None
        if self.cycle is self._armed_cycle and self.idle() and not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        idle = [c for c in self.connections
                if c is not self and isinstance(c, GuardedH11Protocol) and c.idle()
                and not c.transport.is_closing()]
        if not idle:  # every other connection carries a request: refuse this one
            self.transport.close()
            return
        min(idle, key=lambda c: c._armed_at).transport.close()
