"""``clipindex serve``: the routes through FastAPI's test client, the CLI's JSON, every bad
input as a 4xx JSON error, reloads, schemathesis against /openapi.json, and a real
``clipindex serve`` process on a free loopback port stopped by SIGTERM."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from click.testing import CliRunner
from fastapi.testclient import TestClient
from fixtures_serve import copy_store, free_port
from hypothesis import HealthCheck, settings

from clipindex.cli import main

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


@pytest.fixture(scope="module")
def client(serve_app: Any) -> TestClient:
    return TestClient(serve_app(), raise_server_exceptions=False)


def _cli_json(*args: str) -> list[dict[str, Any]]:
    """``clipindex search ... --json`` in a real process: the JSON document on stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", "from clipindex.cli import main; main()",
                           "search", *args, "--json"], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _image_bytes(store: Path, row: int) -> tuple[Path, bytes]:
    import pandas as pd

    root = Path(json.loads((store / "dataset.json").read_text())["root"])
    path = root / pd.read_parquet(store / "images.parquet")["file"].iloc[row]
    return path, path.read_bytes()


def _error(response: Any, *statuses: int) -> str:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"]
    return str(body["error"])


# ----------------------------------------------------------------------------- the CLI's answers
def test_get_search_equals_the_cli_json(client: TestClient, serve_copy: Path) -> None:
    query = "a photo of a cow in a field"
    served = client.get("/search", params={"q": query, "k": 7, "backbone": "tiny-vit",
                                           "where": "split=test"})
    assert served.status_code == 200, served.text
    cli = _cli_json(query, "--index", str(serve_copy), "--backbone", "tiny-vit", "-k", "7",
                    "--where", "split=test")
    assert served.json() == cli
    assert len(cli) == 7 and [h["rank"] for h in cli] == list(range(1, 8))
    assert {"row_id", "rank", "score", "file", "label", "caption"} <= set(cli[0])


def test_fused_caption_search_equals_the_cli_json(client: TestClient, serve_copy: Path) -> None:
    names = ["tiny-rn", "tiny-vit", "tiny-vit-s"]
    served = client.get("/search", params={"q": "a dog on a road", "k": 5, "to": "captions",
                                           "backbone": names})
    assert served.status_code == 200, served.text
    cli = _cli_json("a dog on a road", "--index", str(serve_copy), "--to", "captions", "-k",
                    "5", *[a for n in names for a in ("--backbone", n)])
    assert served.json() == cli
    assert {h["score_kind"] for h in cli} == {"rrf"} and "text" in cli[0]
    assert "reciprocal rank fusion" in json.loads(served.headers["x-clipindex-notes"])[0]


def test_image_search_equals_the_cli_with_that_file(client: TestClient, serve_copy: Path) -> None:
    path, data = _image_bytes(serve_copy, 17)
    posted = client.post("/search", params={"k": 4, "backbone": "tiny-rn"},
                         files={"image": ("mine.jpg", data, "image/jpeg")})
    assert posted.status_code == 200, posted.text
    like = client.get("/search", params={"like": 17, "k": 4, "backbone": "tiny-rn"})
    cli = _cli_json("--image", str(path), "--index", str(serve_copy), "--backbone", "tiny-rn",
                    "-k", "4")
    strip = [{k: v for k, v in h.items() if k != "query"} for h in cli]
    assert [{k: v for k, v in h.items() if k != "query"} for h in posted.json()] == strip
    # like= searches the row's stored vector (no file re-encoded): the same hits, scores
    # equal to float rounding (the stored vector was encoded in a batch), and exactly
    # what `clipindex search --like` answers
    liked = [{k: v for k, v in h.items() if k not in ("query", "score")} for h in like.json()]
    assert liked == [{k: v for k, v in h.items() if k != "score"} for h in strip]
    assert [h["score"] for h in like.json()] == pytest.approx([h["score"] for h in cli],
                                                              abs=1e-5)
    assert like.json() == _cli_json("--like", "17", "--index", str(serve_copy), "--backbone",
                                    "tiny-rn", "-k", "4")
    assert cli[0]["row_id"] == 17 and cli[0]["score"] > 0.999  # it finds itself
    assert posted.json()[0]["query"] == "upload:mine.jpg"


def test_records_are_plain_json_values_with_none_for_missing() -> None:
    import pandas as pd

    from clipindex.search import SearchResult

    frame = pd.DataFrame({"query_id": np.array([0, 0], dtype=np.int64), "query": ["a", "a"],
                          "rank": np.array([1, 2]), "score": np.array([0.5, np.nan]),
                          "row_id": np.array([3, 4], dtype=np.int64), "file": ["x", "y"],
                          "label": [None, "cat"], "caption": ["", np.nan]})
    records = SearchResult(frame, (), "rrf").records()
    assert records == [
        {"query_id": 0, "query": "a", "rank": 1, "score": 0.5, "row_id": 3, "file": "x",
         "label": None, "caption": "", "score_kind": "rrf", "exact": False,
         "exhaustive": True},
        {"query_id": 0, "query": "a", "rank": 2, "score": None, "row_id": 4, "file": "y",
         "label": "cat", "caption": None, "score_kind": "rrf", "exact": False,
         "exhaustive": True}]
    assert [type(v) for v in records[0].values()] == [int, str, int, float, int, str,
                                                      type(None), str, str, bool, bool]


def test_offset_slices_the_ranking(client: TestClient) -> None:
    full = client.get("/search", params={"q": "a horse", "k": 8, "backbone": "tiny-vit"}).json()
    page = client.get("/search", params={"q": "a horse", "k": 3, "offset": 5,
                                         "backbone": "tiny-vit"}).json()
    assert page == full[5:8]


def test_classify_equals_classify_images(client: TestClient, serve_copy: Path) -> None:
    from clipindex import classify_images

    path, data = _image_bytes(serve_copy, 42)
    for method, real, backbones in (("prototype", "prototype", ["tiny-vit"]),
                                    ("probe", "linear-probe", ["tiny-rn"]),
                                    ("prompt", "prompt", ["tiny-vit", "tiny-vit-s"])):
        r = client.post("/classify", params={"method": method, "backbone": backbones,
                                             "reject_below": 0.9},
                        files={"image": ("x.jpg", data, "image/jpeg")})
        assert r.status_code == 200, r.text
        got = r.json()
        extra = {"ensemble": "soft"} if len(backbones) > 1 else {}
        want = classify_images(serve_copy, backbones, real, [path], **extra)
        classes = [c[2:] for c in want.columns if c.startswith("p_")]
        assert got["method"] == real and got["backbones"] == backbones
        assert got["label"] == want["predicted"].iloc[0]
        assert list(got["probabilities"]) == classes
        np.testing.assert_allclose([got["probabilities"][c] for c in classes],
                                   want[[f"p_{c}" for c in classes]].to_numpy()[0], atol=1e-9)
        assert got["abstain"] == (max(got["probabilities"].values()) < 0.9)


def test_health_info_openapi_images_and_thumbs(client: TestClient, serve_copy: Path) -> None:
    from PIL import Image

    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert [b["name"] for b in info["backbones"]] == ["tiny-rn", "tiny-vit", "tiny-vit-s"]
    assert info["n_images"] == 200 and info["labels"] == ["cat", "cow", "dog", "horse",
                                                          "sheep"]
    assert info["splits"] == ["support", "test"] and info["limits"]["max_k"] == 1000
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/classify", "/images/{row_id}", "/thumbs/{row_id}", "/info",
            "/health", "/reload"} <= set(paths)
    path, data = _image_bytes(serve_copy, 3)
    full = client.get("/images/3")
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-type"] == "image/jpeg"
    assert full.headers["x-content-type-options"] == "nosniff"
    thumb = client.get("/thumbs/3")
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert im.format == "JPEG" and max(im.size) <= 256
    assert client.get("/thumbs/3").content == thumb.content  # cached, same bytes
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN, nothing off-site
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "access-control-allow-origin" not in client.get(
        "/info", headers={"Origin": "http://evil.example"}).headers  # CORS off


# ----------------------------------------------------------------------------- bad input
def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width`` x ``height`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(
        b"IEND", b"")


BAD_SEARCHES = {
    "empty query": {"q": ""},
    "blank query": {"q": "   "},
    "huge query": {"q": "a dog " * 5000},
    "k 0": {"q": "a dog", "k": 0},
    "k -1": {"q": "a dog", "k": -1},
    "k 10^9": {"q": "a dog", "k": 10**9},
    "k not a number": {"q": "a dog", "k": "ten"},
    "k + offset over max_k": {"q": "a dog", "k": 1000, "offset": 1},
    "unknown backbone": {"q": "a dog", "backbone": "ViT-B/31"},
    "unknown target": {"q": "a dog", "to": "videos"},
    "bad where": {"q": "a dog", "where": "nope=1"},
    "where matches nothing": {"q": "a dog", "where": "label=unicorn"},
    "no query": {},
    "both q and like": {"q": "a dog", "like": 1},
    "like out of range": {"like": 200},
    "like path-like": {"like": "../../etc/passwd"},
}


@pytest.mark.parametrize("params", list(BAD_SEARCHES.values()), ids=list(BAD_SEARCHES))
def test_bad_searches_are_4xx_json_errors(client: TestClient, params: dict[str, Any]) -> None:
    _error(client.get("/search", params=params), 404, 422)


@pytest.mark.parametrize("url", [
    "/images/200", "/images/-1", "/images/99999999999999999999", "/thumbs/1e3",
    "/images/..%2F..%2F..%2Fetc%2Fpasswd", "/thumbs/%2E%2E%2F%2E%2E%2Fpyproject.toml",
    "/images/0%2F..%2F..%2Fdataset.json", "/static/..%2F..%2F..%2Fpyproject.toml",
    "/static/%2Fetc%2Fpasswd", "/static/app.py", "/static/../../../pyproject.toml",
    "/nope", "/images/3/../../../../etc/passwd",
])
def test_path_parameters_never_reach_the_filesystem(client: TestClient, url: str) -> None:
    message = _error(client.get(url), 404, 422)
    assert "root:" not in message and "[project]" not in message


def test_image_files_stay_inside_the_data_root(served_snapshot: Any, tmp_path: Path) -> None:
    """A table's file that resolves outside the data root (a symlink out) is a 404."""
    import dataclasses

    from clipindex.serve.errors import ApiError
    from clipindex.serve.media import image_file

    files = served_snapshot.first.images["file"]
    root = tmp_path / "root"
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not for the web")
    inside, outside = root / files.iloc[0], root / files.iloc[1]
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"an image")
    outside.symlink_to(secret)
    snap = dataclasses.replace(served_snapshot, data_root=root.resolve())
    assert image_file(snap, 0) == inside.resolve()
    for row in (1, 2, len(files), -1):  # a symlink out, a missing file, out of range
        with pytest.raises(ApiError) as caught:
            image_file(snap, row)
        assert caught.value.status == 404
    with pytest.raises(ApiError):
        image_file(dataclasses.replace(served_snapshot, data_root=None), 0)


def test_uploads_are_bounded_and_checked(client: TestClient, serve_copy: Path) -> None:
    _, jpeg = _image_bytes(serve_copy, 0)
    for route in ("/search", "/classify"):
        assert "not an image" in _error(client.post(route, files={
            "image": ("a.jpg", b"%PDF-1.4 not an image", "image/jpeg")}), 415)
        _error(client.post(route, files={"image": ("a.jpg", b"", "image/jpeg")}), 422)
        _error(client.post(route, data={"other": "x"}), 422)  # no field named image
        big = jpeg + b"\0" * (50 * MB)
        _error(client.post(route, files={"image": ("big.jpg", big, "image/jpeg")}), 413)
        chunked = client.post(route, content=iter([b"x" * MB] * 12),
                              headers={"content-type": "multipart/form-data; boundary=b"})
        _error(chunked, 413)  # no Content-Length: refused once past the limit
        for w, h in ((20_000, 20_000), (8_000, 8_000)):  # over PIL's limit; over ours only
            bomb = client.post(route, files={"image": ("bomb.png", _png_header(w, h),
                                                       "image/png")})
            assert "bomb" in _error(bomb, 413)
    _error(client.post("/classify", params={"method": "svm"},
                       files={"image": ("a.jpg", jpeg, "image/jpeg")}), 422)
    _error(client.post("/classify", params={"backbone": "nope"},
                       files={"image": ("a.jpg", jpeg, "image/jpeg")}), 422)


def test_a_token_guards_every_route_but_health(serve_app: Any) -> None:
    token = "s3cret-token-123"
    client = TestClient(serve_app(token=token), raise_server_exceptions=False)
    assert client.get("/health").status_code == 200
    for method, url in (("get", "/info"), ("get", "/search?q=a+dog"), ("get", "/images/0"),
                        ("get", "/thumbs/0"), ("get", "/openapi.json"), ("post", "/reload"),
                        ("post", "/search"), ("post", "/classify")):
        for headers in ({}, {"Authorization": "Bearer wrong-token"},
                        {"Authorization": token}):
            r = getattr(client, method)(url, headers=headers)
            assert "token" in _error(r, 401) and r.headers["www-authenticate"].startswith(
                "Bearer")
    good = {"Authorization": f"Bearer {token}"}
    assert client.get("/search", params={"q": "a dog", "k": 2}, headers=good).status_code == 200
    assert client.get("/thumbs/0", headers=good).status_code == 200
    assert client.get("/").status_code == 200  # the page's own files hold no store data


def test_cors_only_for_the_origins_given(serve_app: Any) -> None:
    client = TestClient(serve_app(cors_origins=("http://localhost:3000",)))
    ok = client.get("/health", headers={"Origin": "http://localhost:3000"})
    assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# ----------------------------------------------------------------------------- reload
def test_a_new_build_is_picked_up_between_requests(demo_world: Path, serve_copy: Path,
                                                   tmp_path: Path) -> None:
    from fixtures_store import DEMO_PER_CLASS, DEMO_SUPPORT

    from clipindex.serve import ServedStore, ServeOptions, answers, create_app
    from clipindex.sources import load_dataset
    from clipindex.store import build_store

    store_dir = copy_store(serve_copy, tmp_path)
    store = ServedStore(ServeOptions(index_dir=str(store_dir), backbones=("tiny-vit",),
                                     reload_interval=0))
    client = TestClient(create_app(store=store), raise_server_exceptions=False,
                        base_url="http://127.0.0.1")  # a Host the server answers
    before = client.get("/info").json()
    # the default index kind: auto, which keeps a store this small exact (flat)
    assert before["generation"] == 1 and before["backbones"][0]["index"]["kind"] == "auto"
    in_flight = store.current()  # a request that started before the new build
    dataset = load_dataset("builtin:demo", root=demo_world,
                           per_class=DEMO_PER_CLASS, support_per_class=DEMO_SUPPORT)
    build_store(dataset, ["tiny-vit"], out=tmp_path, index_kind="hnsw", workers=0,
                progress=False)  # a re-index: a new manifest, written last
    after = client.get("/info").json()
    assert after["generation"] == 2 and after["backbones"][0]["index"]["kind"] == "hnsw"
    old, _ = answers.search(in_flight, text="a cat", k=3)  # the old one still answers
    new = client.get("/search", params={"q": "a cat", "k": 3}).json()
    assert [h["row_id"] for h in old] == [h["row_id"] for h in new]  # exact rescoring
    assert client.post("/reload").json()["generation"] == 3
    manifest = store_dir / "tiny-vit" / "manifest.json"
    manifest.write_text("{ not json")  # a broken store: keep serving the last good one
    info = client.get("/info").json()
    assert info["generation"] == 3 and info["reload"]["last_error"]
    assert client.get("/search", params={"q": "a cat", "k": 3}).status_code == 200
    assert "still serving generation 3" in _error(client.post("/reload"), 409)



def test_a_mapped_file_truncated_in_place_is_a_503_not_a_crash(serve_copy: Path,
                                                              tmp_path: Path) -> None:
    """Reading a memory map past its file's new end would kill the server (SIGBUS, exit
    135): the server checks its mappings before each request and answers 503 instead,
    until the file is whole again and a reload opens it."""
    from clipindex.serve import ServedStore, ServeOptions, create_app

    store_dir = copy_store(serve_copy, tmp_path)
    store = ServedStore(ServeOptions(index_dir=str(store_dir), backbones=("tiny-vit",),
                                     reload_interval=0))
    client = TestClient(create_app(store=store), raise_server_exceptions=False,
                        base_url="http://127.0.0.1")  # a Host the server answers
    params = {"q": "a cow in a field", "k": 5, "to": "captions"}
    before = client.get("/search", params=params).json()
    path = store_dir / "tiny-vit" / "captions.npy"
    whole = path.read_bytes()
    os.truncate(path, 1000)  # in place: the same inode the server mapped
    message = _error(client.get("/search", params=params), 503)
    assert "captions.npy was truncated from" in message and "--rebuild" in message
    assert "captions.npy" in _error(client.get("/info"), 503)
    assert client.get("/health").json() == {"status": "ok"}  # alive, just refusing
    fresh = path.with_name("captions.npy.tmp")
    fresh.write_bytes(whole)
    os.replace(fresh, path)  # what a rebuild does: a new file renamed into place
    assert client.get("/search", params=params).json() == before
    assert client.get("/info").json()["generation"] == 2


# ----------------------------------------------------------------------------- schemathesis
FUZZ_EXAMPLES = 10  # per operation and generation mode; seeded (derandomize)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_fuzzing_finds_no_server_error(serve_app: Any, mode: str) -> None:
    """schemathesis draws requests from /openapi.json (valid ones, then invalid ones) for
    every operation; none may get a 5xx, and every error is ``{"error": ...}``."""
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", serve_app(max_k=50))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/search", "/classify", "/images/{row_id}"}
    if mode == "negative":  # an operation that takes nothing has no invalid request
        operations = [op for op in operations if list(op.iter_parameters())
                      or op.get_request_payload_content_types()]
    seen: list[int] = []
    for operation in operations:
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        @given(case=strategy)
        @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call()
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.query,
                                                response.text[:300])
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}

        check()
    assert len(seen) >= len(operations)
    if mode == "negative":
        assert any(400 <= s < 500 for s in seen)


# ----------------------------------------------------------------------------- CLI and process
def test_cli_warns_off_loopback_and_checks_options(serve_copy: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import clipindex.serve as serve

    calls: list[dict[str, Any]] = []
    def fake_run(options: Any, **kw: Any) -> None:
        calls.append({"options": options, **kw})
        kw["ready"]()  # the checks passed: the warning and "Serving" lines come now

    monkeypatch.setattr(serve, "run_server", fake_run)
    runner = CliRunner()
    base = ["serve", "--index", str(serve_copy)]
    done = runner.invoke(main, base)
    assert done.exit_code == 0 and "Warning" not in done.stderr
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8000
    done = runner.invoke(main, [*base, "--host", "0.0.0.0", "--workers", "2"])
    assert done.exit_code == 0 and "NO authentication" in done.stderr
    assert calls[-1]["workers"] == 2
    done = runner.invoke(main, [*base, "--host", "0.0.0.0", "--token", "long-enough-1"])
    assert "Warning" in done.stderr and "needs the token" in done.stderr
    assert calls[-1]["options"].token == "long-enough-1"
    done = runner.invoke(main, [*base, "--token", "short"])
    assert done.exit_code == 2 and done.stderr.startswith("Error:") and len(calls) == 3
    done = runner.invoke(main, ["serve", "--index", str(serve_copy / "nope")])
    assert done.exit_code == 2 and "Traceback" not in done.output
    monkeypatch.undo()  # the real run_server: bad options or store are one line, no more
    for bad in (["--port", "99999"], ["--workers", "0"], ["--backbone", "nope"],
                ["--host", "0.0.0.0", "--port", "99999"],
                ["--backbone", "nope", "--workers", "2"]):
        done = runner.invoke(main, [*base, *bad])
        lines = done.stderr.strip().splitlines()
        assert done.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error:"), \
            (bad, done.stderr)


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_real_serve_process_answers_and_stops_on_sigterm(serve_copy: Path,
                                                            workers: int) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from clipindex.cli import main; main()", "serve", "--index",
         str(serve_copy), "--backbone", "tiny-vit", "--port", str(port), "--workers",
         str(workers)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    assert json.load(r) == {"status": "ok"}
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer /health"
                time.sleep(0.5)
        with urllib.request.urlopen(base + "/search?q=a+photo+of+a+sheep&k=3",
                                    timeout=60) as r:
            hits = json.load(r)
        assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score_kind"] == "cosine"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit -15)
    assert proc.returncode in (0, -signal.SIGTERM), err[-2000:]
    assert "Serving" in err and "Shutting down" in err and "Finished server process" in err
    assert "Traceback" not in err
    if workers > 1:  # a parent process supervising two workers that each loaded the store
        assert "Started parent process" in err and err.count("Started server process") == 2
