"""Pytest plugin: a copy of ``demo_store`` served by ``clipindex serve``'s app.

``served_store`` opens the copy once per session (encoders loaded, text towers warm);
``serve_app`` builds an app over it with any options (no second load); ``live_server``
runs an app with uvicorn in a thread on a free loopback port.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_store(store: Path, dest: Path) -> Path:
    """A private copy of a dataset store (``dest/<dataset>``) a test may change."""
    out = dest / store.name
    shutil.copytree(store, out)
    return out


@pytest.fixture(scope="session")
def serve_copy(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``demo_store`` for the serve tests (the CLI writes its text cache there)."""
    return copy_store(demo_store, tmp_path_factory.mktemp("serve-store"))


@pytest.fixture(scope="session")
def served_snapshot(serve_copy: Path) -> Any:
    """The copy opened once, as ``clipindex serve`` opens it (one torch thread)."""
    import torch

    from clipindex.serve import ServeOptions
    from clipindex.serve.state import open_snapshot

    torch.set_num_threads(1)
    return open_snapshot(ServeOptions(index_dir=str(serve_copy)))


@pytest.fixture(scope="session")
def serve_app(serve_copy: Path, served_snapshot: Any) -> Callable[..., Any]:
    """``serve_app(**options)``: an app over the session's snapshot with those options
    (the test client's Host, ``testserver``, allowed unless ``allow_hosts`` is given)."""
    from clipindex.serve import ServedStore, ServeOptions, create_app

    def make(**options: Any) -> Any:
        opts = ServeOptions(index_dir=str(serve_copy),
                            **{"allow_hosts": ("testserver",), **options})
        return create_app(store=ServedStore(opts, opener=lambda o, g: served_snapshot))

    return make


class LiveServer:
    """An app served by uvicorn in a thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live_server(serve_app: Callable[..., Any]) -> Iterator[LiveServer]:
    with LiveServer(serve_app()) as server:
        yield server
