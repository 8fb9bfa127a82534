"""``GET /search``'s plain route (:mod:`clipindex.serve.plain`): the same bytes as FastAPI's
route for every request, good or bad; which requests it takes; when a search runs on the
event loop."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from clipindex.serve import plain
from clipindex.serve.options import ServeOptions


def _clients(serve_app: Any) -> tuple[TestClient, TestClient]:
    with_plain = serve_app()
    without = serve_app()
    without.router.routes[:] = [r for r in without.router.routes
                                if r.__class__.__name__ != "PlainSearch"]
    assert len(without.router.routes) == len(with_plain.router.routes) - 1
    return (TestClient(with_plain, raise_server_exceptions=False),
            TestClient(without, raise_server_exceptions=False))


# Query strings as a client sends them: plain ones (the plain route answers) and every
# kind of unusual or bad one (FastAPI's route answers): the bytes must not differ.
PLAIN = [
    "q=a+photo+of+a+cow&k=7",
    "q=a%20dog%20on%20a%20road&k=5&to=captions&backbone=tiny-rn&backbone=tiny-vit",
    "q=a+cat&k=3&offset=2&where=split%3Dtest&where=label!%3Ddog",
    "q=a+cat&backbone=tiny-vit-s",
    "like=3&k=4",
    "like=0&to=captions&backbone=tiny-vit",
    "q=%20%20a+sheep%20&k=1000",
]
# Plain in form, refused by the search itself (the same function answers on both routes).
PLAIN_BAD = ["q=%20%20", "like=200", "q=a+cat&backbone=ViT-B%2F31", "q=a+cat&where=nope%3D1",
             "q=a+cat&where=label%3Dunicorn"]
# Refused by the plain route (FastAPI's route answers: some are fine, e.g. k=010).
ODD = PLAIN_BAD + [
    "q=a+cat&k=010", "q=a+cat&k=%2B5", "q=a+cat&k=%205", "q=a+cat&k=5.0", "q=a+cat&k=1_0",
    "q=a+cat&q=a+dog", "q=a+cat&k=3&k=4", "q=a+cat&extra=1", "q=a+cat&k=0", "q=a+cat&k=1001",
    "q=a+cat&offset=1000", "q=a+cat&k=1000&offset=1", "q=a+cat&to=videos", "q=",
    "like=3&q=a+cat", "", "like=-1", "like=9007199254740993", "like=..%2F..%2Fetc%2Fpasswd",
    "q=" + "a" * 501,
    "q=a+cat&" + "&".join(["where=split%3Dtest"] * 9),
    "q=a+cat&" + "&".join(["backbone=tiny-vit"] * 17),
]


@pytest.mark.parametrize("query", PLAIN + ODD)
def test_plain_route_answers_exactly_as_fastapis(serve_app: Any, query: str) -> None:
    fast, slow = _clients(serve_app)
    a, b = fast.get(f"/search?{query}"), slow.get(f"/search?{query}")
    assert (a.status_code, a.content) == (b.status_code, b.content), query
    assert a.headers.get("x-clipindex-notes") == b.headers.get("x-clipindex-notes")
    assert a.headers["content-type"] == b.headers["content-type"]
    taken = plain.parse_plain(query.encode(), ServeOptions(index_dir="."))
    assert (taken is not None) == (query in PLAIN or query in PLAIN_BAD), query
    if query in PLAIN:
        assert a.status_code == 200 and isinstance(a.json(), list) and a.json()


def test_parse_plain_reads_the_values() -> None:
    opts = ServeOptions(index_dir=".", max_k=50)
    p = plain.parse_plain(b"q=a+cat&k=5&offset=3&backbone=b1&backbone=b2&where=split%3Dtest"
                          b"&to=captions", opts)
    assert p == plain.PlainQuery("a cat", None, 5, 3, ("b1", "b2"), ("split=test",),
                                 "captions")
    assert plain.parse_plain(b"like=7", opts) == plain.PlainQuery(None, 7, 10, 0, None, None,
                                                                  "images")
    assert plain.parse_plain(b"q=a&k=50&offset=1", opts) is None  # over max_k together
    assert plain.parse_plain(b"q=a&k=51", opts) is None
    assert plain.parse_plain(b"q=a&offset=50", opts) is None


def test_cheap_searches_run_on_the_event_loop_and_others_in_a_thread(
        serve_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    app = serve_app()
    client = TestClient(app, raise_server_exceptions=False)
    seen: list[bool] = []
    real = plain.run_search

    def spy(*args: Any) -> Any:
        seen.append("AnyIO worker" not in threading.current_thread().name)  # on the loop
        return real(*args)

    monkeypatch.setattr(plain, "run_search", spy)
    text = "a photo of a horse near a fence"
    assert client.get("/search", params={"q": text}).status_code == 200  # encodes: a thread
    assert client.get("/search", params={"q": text}).status_code == 200  # in memory: the loop
    assert client.get("/search?like=5").status_code == 200  # stored vectors: the loop
    monkeypatch.setattr(plain, "INLINE_WORK", 10)  # a store too big for the loop
    assert client.get("/search", params={"q": text}).status_code == 200
    assert seen == [False, True, True, False]


def test_the_plain_route_is_not_in_the_openapi_document(serve_app: Any) -> None:
    client = TestClient(serve_app())
    params = {p["name"] for p in client.get("/openapi.json").json()["paths"]["/search"]["get"]
              ["parameters"]}
    assert params == {"q", "like", "k", "offset", "backbone", "where", "to"}


def test_searches_in_worker_threads_are_bounded_by_the_cores(
        serve_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(plain, "INLINE_WORK", 10)  # every search goes to a worker thread
    monkeypatch.setattr(plain.os, "cpu_count", lambda: 2)
    client = TestClient(serve_app(), raise_server_exceptions=False)
    running, most, lock = [0], [0], threading.Lock()
    real = plain.run_search

    def slow(*args: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return real(*args)

    monkeypatch.setattr(plain, "run_search", slow)
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda i: client.get(f"/search?like={i}").status_code,
                              range(6)))
    assert codes == [200] * 6
    assert most[0] == 2  # six at once, two searching: the others waited their turn
