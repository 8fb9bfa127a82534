"""clip-retrieval's protocol in ``clipindex serve``: the unmodified ``ClipClient`` of the
``clip-retrieval`` package against a real ``clipindex serve`` process gives ``clipindex
search --json``'s hits (by text, by a store's image file, by an embedding), and
``/knn-service``, ``/metadata`` and ``/indices-list`` through the test client: ignored
options noted, deduplication as clip-retrieval's, bounds and bad input as 4xx JSON, the
token guarding them as every route."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from fixtures_serve import free_port

REPO = Path(__file__).resolve().parents[1]
BACKBONE = "tiny-vit"


def clip_client_module() -> ModuleType:
    """``clip_retrieval/clip_client.py`` of the installed package, loaded alone (the
    package's ``__init__`` imports its whole back end: flask_restful, faiss, ...)."""
    spec = importlib.util.find_spec("clip_retrieval")
    assert spec is not None and spec.submodule_search_locations, \
        "clip-retrieval is not installed (pip install --no-deps clip-retrieval)"
    path = Path(next(iter(spec.submodule_search_locations))) / "clip_client.py"
    module_spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def cli_json(*args: Any) -> list[dict[str, Any]]:
    """``clipindex search ... --json`` in a real process."""
    done = subprocess.run([sys.executable, "-c", "from clipindex.cli import main; main()",
                           "search", *map(str, args), "--json"], capture_output=True,
                          text=True, env=_env(), timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(done.stdout))


def store_file(store: Path, row: int) -> Path:
    root = Path(json.loads((store / "dataset.json").read_text())["root"])
    return root / pd.read_parquet(store / "images.parquet")["file"].iloc[row]


@pytest.fixture(scope="module")
def serve_process(serve_copy: Path) -> Iterator[str]:
    """``clipindex serve --backbone tiny-vit`` on a free loopback port; its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from clipindex.cli import main; main()", "serve", "--index",
         str(serve_copy), "--backbone", BACKBONE, "--port", str(port)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer /health"
                time.sleep(0.5)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _same_hits(got: list[dict[str, Any]], cli: list[dict[str, Any]], key: str = "row_id"
               ) -> None:
    ids = list(dict.fromkeys(h[key] for h in cli))  # an image once, at its best rank
    assert [g["id"] for g in got] == ids
    best = {}
    for h in cli:
        best.setdefault(h[key], h["score"])
    np.testing.assert_allclose([g["similarity"] for g in got], [best[i] for i in ids],
                               atol=1e-5)


def test_clip_client_gets_the_cli_hits_by_text_image_and_embedding(
        serve_process: str, serve_copy: Path) -> None:
    cc = clip_client_module()
    name = json.loads((serve_copy / "dataset.json").read_text())["name"]
    with urllib.request.urlopen(serve_process + "/indices-list", timeout=30) as r:
        assert json.load(r) == [name]
    client = cc.ClipClient(url=serve_process + "/knn-service", indice_name=name,
                           num_images=12, deduplicate=False)  # safety etc. left on: ignored
    base = ["--index", serve_copy, "--backbone", BACKBONE, "-k", 12]

    by_text = client.query(text="a photo of a sheep")
    cli = cli_json("a photo of a sheep", *base)
    _same_hits(by_text, cli)
    assert [g["caption"] for g in by_text] == [h["caption"] for h in cli]
    assert [g["file"] for g in by_text] == [h["file"] for h in cli]
    assert by_text[0]["url"] == f"{serve_process}/images/{cli[0]['row_id']}"
    with urllib.request.urlopen(by_text[0]["url"], timeout=30) as r:
        assert r.read() == store_file(serve_copy, cli[0]["row_id"]).read_bytes()

    image = store_file(serve_copy, 5)
    by_image = client.query(image=str(image))
    _same_hits(by_image, cli_json("--image", image, *base))
    assert by_image[0]["id"] == 5 and by_image[0]["similarity"] > 0.999

    from clipindex import open_index

    vector = open_index(serve_copy, BACKBONE).image_vectors[9]
    by_vector = client.query(embedding_input=[float(v) for v in vector])
    _same_hits(by_vector, cli_json("--like", 9, *base))

    captions = cc.ClipClient(url=serve_process + "/knn-service", indice_name=name,
                             num_images=12, deduplicate=False, modality=cc.Modality.TEXT)
    by_caption = captions.query(text="a photo of a sheep")
    cli = cli_json("a photo of a sheep", *base, "--to", "captions")
    _same_hits(by_caption, cli, key="image_row_id")
    first = next(h for h in cli if h["image_row_id"] == by_caption[0]["id"])
    assert by_caption[0]["caption"] == first["text"]


# ----------------------------------------------------------------------------- test client
@pytest.fixture(scope="module")
def client(serve_app: Any) -> TestClient:
    return TestClient(serve_app(), raise_server_exceptions=False)


def _post(client: TestClient, path: str, body: Any, **headers: str) -> Any:
    return client.post(path, content=json.dumps(body), headers=headers)


def _error(response: Any, *statuses: int) -> str:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "Traceback" not in body["error"]
    return str(body["error"])


def test_ignored_options_are_noted_and_the_front_content_type_is_read(
        client: TestClient, served_snapshot: Any) -> None:
    names = client.get("/indices-list").json()
    assert len(served_snapshot.names) == 3
    assert names == ["demo", *(f"demo/{b}" for b in served_snapshot.names)]
    body = {"text": "a dog", "modality": "image", "num_images": 5, "num_result_ids": 20,
            "indice_name": f"{names[0]}/{BACKBONE}", "use_safety_model": True,
            "use_violence_detector": True, "use_mclip": True, "aesthetic_score": "9",
            "aesthetic_weight": "0.5", "deduplicate": False, "verbose": True}
    # the front posts a string body: text/plain, no JSON content type
    got = _post(client, "/knn-service", body, **{"content-type": "text/plain;charset=UTF-8"})
    assert got.status_code == 200, got.text
    hits = got.json()
    notes = json.loads(got.headers["x-clipindex-notes"])
    for key in ("use_safety_model", "use_violence_detector", "use_mclip", "aesthetic_score"):
        assert any(n.startswith(f"{key} ignored") for n in notes), notes
    assert len(hits) == 20 and all(set(h) == {"id", "similarity"} for h in hits[5:])
    assert all({"id", "similarity", "caption", "url", "file", "label"} <= set(h)
               for h in hits[:5])
    sims = [h["similarity"] for h in hits]
    assert sims == sorted(sims, reverse=True)
    plain = _post(client, "/knn-service", {**body, "use_safety_model": False,
                                           "use_violence_detector": False,
                                           "use_mclip": False, "aesthetic_score": ""})
    assert [h["id"] for h in plain.json()] == [h["id"] for h in hits]
    assert json.loads(plain.headers["x-clipindex-notes"]) == []
    # /metadata gives the same metadata for the ids past num_images
    ids = [h["id"] for h in hits[5:10]]
    meta = _post(client, "/metadata", {"ids": ids, "indice_name": names[0]}).json()
    assert [m["id"] for m in meta] == ids
    again = _post(client, "/knn-service", {**body, "num_images": 10}).json()
    assert [m["metadata"] for m in meta] == [
        {k: v for k, v in h.items() if k not in ("id", "similarity")} for h in again[5:10]]


def test_deduplicate_drops_near_copies_as_clip_retrieval_does(
        client: TestClient, served_snapshot: Any) -> None:
    from clipindex.serve.knn import DEDUP_THRESHOLD, dedup_keep

    name = client.get("/indices-list").json()[0]
    body = {"text": "a photo of a cow", "num_images": 60, "indice_name":
            f"{name}/{BACKBONE}", "deduplicate": False}
    full = _post(client, "/knn-service", body).json()
    deduped = _post(client, "/knn-service", {**body, "deduplicate": True}).json()
    vectors = served_snapshot.indexes[BACKBONE].image_vectors[[h["id"] for h in full]]
    sims = vectors @ vectors.T
    # reference: clip-retrieval's connected components, best-ranked member kept
    n, comp = len(full), list(range(len(full)))
    for i in range(n):
        for j in range(i + 1, n):
            if sims[i, j] >= DEDUP_THRESHOLD:
                a, b = comp[i], comp[j]
                comp = [min(a, b) if c in (a, b) else c for c in comp]
    expected = [h["id"] for i, h in enumerate(full) if comp[i] == i]
    assert [h["id"] for h in deduped] == expected
    assert dedup_keep(np.array([[1, 0], [0.999, 0.04], [0, 1], [0.03, 0.9995]])).tolist() \
        == [True, False, True, False]
    # chains are transitive: c is close to b only, b to a; only a survives
    chain = np.array([[1, 0], [np.cos(0.3), np.sin(0.3)], [np.cos(0.6), np.sin(0.6)]])
    assert dedup_keep(chain).tolist() == [True, False, False]


@pytest.mark.parametrize("body, status", [
    ({"image_url": "http://127.0.0.1/x.jpg"}, 422),
    ({}, 422),
    ({"text": "a dog", "image": "aGVsbG8="}, 422),
    ({"image": "not base64!!"}, 422),
    ({"image": base64.b64encode(b"not an image").decode()}, 415),
    ({"text": "a dog", "num_images": 100_000}, 422),
    ({"text": "a dog", "num_images": 0}, 422),
    ({"text": "a dog", "modality": "audio"}, 422),
    ({"text": "a dog", "indice_name": "nope"}, 404),
    ({"text": "x" * 5000}, 422),
    ({"embedding_input": [0.1, 0.2]}, 422),
    ({"embedding_input": [0.0] * 64}, 422),
    ("[1, 2", 422),
    ([1, 2], 422),
])
def test_bad_knn_requests_are_4xx_json(client: TestClient, body: Any, status: int) -> None:
    payload = body if isinstance(body, str) else json.dumps(body)
    _error(client.post("/knn-service", content=payload), status)


def test_metadata_bounds_and_the_token(client: TestClient, serve_app: Any) -> None:
    _error(_post(client, "/metadata", {"ids": [10**9]}), 404)
    _error(_post(client, "/metadata", {"ids": list(range(5000))}), 422)
    _error(_post(client, "/metadata", {"ids": ["a"]}), 422)
    assert _post(client, "/metadata", {"ids": []}).json() == []
    guarded = TestClient(serve_app(token="s3cret-token"), raise_server_exceptions=False)
    for method, path in (("get", "/indices-list"), ("post", "/knn-service"),
                         ("post", "/metadata")):
        kwargs = {} if method == "get" else {"content": json.dumps({"text": "a dog"})}
        _error(getattr(guarded, method)(path, **kwargs), 401)
    ok = guarded.post("/knn-service", content=json.dumps({"text": "a dog", "num_images": 2}),
                      headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and len(ok.json()) >= 1
