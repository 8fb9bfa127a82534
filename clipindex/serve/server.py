"""Running the application with uvicorn: :func:`run_server` (what ``clipindex serve`` runs).

One worker serves the app built in this process. With ``workers > 1`` uvicorn starts
that many processes, each building its own app from the options this process puts in
``CLIPINDEX_SERVE_OPTIONS`` (:func:`app_from_env`, a uvicorn factory); each loads the
stores once. uvicorn stops on SIGTERM or SIGINT after the requests in flight finish.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from clipindex.checks import positive_int
from clipindex.errors import UserInputError
from clipindex.serve.options import ServeOptions, is_loopback

__all__ = ["ENV", "app_from_env", "connection_settings", "exposure_warning", "run_server"]

ENV = "CLIPINDEX_SERVE_OPTIONS"


def connection_settings() -> dict[str, Any]:
    """uvicorn settings of every server: the h11 protocol with the connection guard
    (:mod:`clipindex.serve.connections`: header timeout, idle-first connection cap)
    instead of uvicorn's ``limit_concurrency``, which counted idle sockets; requests in
    flight are bounded by the app (``max_in_flight``)."""
    from clipindex.serve.connections import GuardedH11Protocol

    return dict(http=GuardedH11Protocol, timeout_keep_alive=5, server_header=False,
                proxy_headers=False)


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning to print when ``host`` is reachable from other machines."""
    if is_loopback(host):
        return None
    if token:
        return (f"serving on {host}: reachable from other machines; every route but "
                "/health needs the token, and the traffic is plain HTTP (put TLS in front).")
    return (f"serving on {host} with NO authentication: anyone who can reach this port can "
            "search the store and read its images. Set --token to require one.")


def app_from_env() -> Any:
    """The app of one uvicorn worker, from the options in ``CLIPINDEX_SERVE_OPTIONS``."""
    from clipindex.serve.app import create_app

    return create_app(ServeOptions.from_env(os.environ[ENV]))


def run_server(options: ServeOptions, *, host: str = "127.0.0.1", port: int = 8000,
               workers: int = 1, log_level: str = "info",
               ready: Callable[[], None] | None = None) -> None:
    """Serve ``options``' store on ``host:port`` until SIGTERM / SIGINT. ``ready`` is
    called once the options and the store have been checked (the store opened, with one
    worker; each backbone opened once, with several), just before uvicorn starts: a bad
    option or store is one error and nothing else."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise UserInputError(f"--port must be in 0..65535, got {port}")
    positive_int("--workers", workers)
    if options.host != host:  # the Host allow-list starts from the bound address
        options = replace(options, host=host)
    common: dict[str, Any] = dict(host=host, port=port, log_level=log_level,
                                  **connection_settings())
    if workers == 1:
        from clipindex.serve.app import create_app

        app = create_app(options)
        if ready is not None:
            ready()
        uvicorn.run(app, **common)
        return
    from clipindex.store import list_backbones, open_index

    for name in options.backbones or list_backbones(options.index_dir):
        open_index(options.index_dir, name)  # each worker opens them again
    if ready is not None:
        ready()
    os.environ[ENV] = options.to_env()
    uvicorn.run("clipindex.serve.server:app_from_env", factory=True, workers=workers,
                **common)
