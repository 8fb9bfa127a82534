"""clip-retrieval's own web front (the built page its wheel ships under ``front/build``),
served from another origin and pointed at ``clipindex serve``, shows the service's hits
with their images decoded in a real headless Chromium (as ``test_serve_page.py``)."""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fixtures_serve import LiveServer, free_port
from test_serve_page import _wait, browser  # noqa: F401  (the Chromium fixture)
from test_serve_page import pytestmark as page_marks

pytestmark = page_marks
QUERY = "a photo of a sheep"

_SHOWN = """
var front = document.querySelector('clip-front');
var root = front && front.shadowRoot;
if (!root) { return null; }
var imgs = Array.prototype.slice.call(root.querySelectorAll('img.pic'));
return {srcs: imgs.map(function (i) { return i.getAttribute('src'); }),
        loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
        captions: Array.prototype.map.call(root.querySelectorAll('figcaption'),
                                           function (f) { return f.textContent.trim(); })};"""


def front_build() -> Path:
    spec = importlib.util.find_spec("clip_retrieval")
    assert spec is not None and spec.submodule_search_locations, \
        "clip-retrieval is not installed (pip install --no-deps clip-retrieval)"
    build = Path(next(iter(spec.submodule_search_locations))).parent / "front" / "build"
    assert (build / "index.html").is_file(), f"no clip-retrieval front at {build}"
    return build


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def front(tmp_path: Path, serve_app: Any) -> Iterator[tuple[str, LiveServer]]:
    """The front's files (its config.json naming our server) on one loopback origin,
    ``clipindex serve`` (CORS allowing that origin) on another."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    with LiveServer(serve_app(cors_origins=(origin,))) as server:
        site = tmp_path / "front"
        shutil.copytree(front_build(), site)
        (site / "config.json").write_text(json.dumps(
            {"defaultBackend": server.url, "defaultIndex": "demo", "urlColumn": "url"}))
        httpd = ThreadingHTTPServer(("127.0.0.1", port),
                                    functools.partial(_Quiet, directory=str(site)))
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield origin, server
        finally:
            httpd.shutdown()
            httpd.server_close()


def test_clip_retrievals_front_shows_the_services_hits(front: tuple[str, LiveServer],
                                                       browser: Any) -> None:  # noqa: F811
    origin, server = front
    # what the front asks for a text search (its defaults: 40 shown, 3000 ids, dedup,
    # safety and violence filters on, aesthetic weight "0.5")
    body = {"text": QUERY, "image": None, "image_url": None, "embedding_input": None,
            "modality": "image", "num_images": 40, "indice_name": "demo",
            "num_result_ids": 3000, "use_mclip": False, "deduplicate": True,
            "use_safety_model": True, "use_violence_detector": True, "aesthetic_score": "",
            "aesthetic_weight": "0.5"}
    request = urllib.request.Request(server.url + "/knn-service",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as r:
        expected = json.load(r)
    assert len(expected) > 40
    params = urllib.parse.urlencode({"back": server.url, "index": "demo", "query": QUERY})
    browser.get(f"{origin}/?{params}")

    def shown(d: Any) -> dict[str, Any] | bool:
        got = d.execute_script(_SHOWN)
        done = got and len(got["srcs"]) >= 40 and got["loaded"] == len(got["srcs"])
        return dict(got) if done else False

    got = _wait(browser, shown)
    assert got["srcs"][:40] == [h["url"] for h in expected[:40]]
    assert all(u.startswith(f"{server.url}/images/") for u in got["srcs"])
    captions = [h["caption"] for h in expected[:40]]
    assert [c.removesuffix("...") for c in got["captions"][:40]] == \
        [c if len(c) <= 50 else c[:50] for c in captions]
    errors = [e["message"] for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and server.url in e["message"]]
    assert errors == []
