"""Reliability faults (issue #35): each test is one row of the campaign's table, named
``test_<section>_...`` so that sections stay apart.

Sections: ``race`` (readers beside ``compact``/``add``), ``removed`` (tombstoned rows),
``seal`` (``dataset.json``'s seal), ``serve`` (Host allow-list, token, connection
guard), ``message`` (degraded messages), ``source`` (folder sources). The OS-fault rows
(full disk, read-only store, permissions, fd limits) get their own section below.

The store tests use the stand-in encoders of ``fixtures_store`` on a few dozen real
JPEGs; the serve tests run the real app (TestClient, or uvicorn on a free loopback port
with real sockets, bounded in count and time).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_robust import assert_one_line_error, run_cli
from fixtures_serve import free_port
from fixtures_store import FakeEncoder, dataset_from_files, write_images

from clipindex.errors import DamagedStoreError, DataError, IndexMismatchError

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

TESTS = Path(__file__).resolve().parent
N_PER_CLASS = 12  # 24 JPEGs in cat/ and dog/


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("faults-world") / "data"
    return root, write_images(root, N_PER_CLASS)


def _build(ds: Any, out: Path, backbones: Sequence[str] = ("fake-a",), **kw: Any) -> Path:
    from clipindex.store import build_store

    return build_store(ds, list(backbones), out=out, workers=0, progress=False, **kw)[0].parent


def _add(ds: Any, ddir: Path, **kw: Any) -> Any:
    from clipindex.store import add_to_store

    return add_to_store(ds, index=ddir, workers=0, progress=False, **kw)


def _open(ddir: Path, backbone: str = "fake-a") -> Any:
    from clipindex.store import open_index

    return open_index(ddir, backbone)


def _removed_store(world: tuple[Path, list[str]], out: Path, gone: int = 3) -> Path:
    """A store of the 24 images, then an add without image ``gone`` (tombstoned, its
    file still on disk): generation 1."""
    root, rel = world
    ddir = _build(dataset_from_files(root, rel), out)
    _add(dataset_from_files(root, [r for i, r in enumerate(rel) if i != gone]), ddir)
    return ddir


# ============================================================================ race
_COMPACT_LOOP = """
import sys
sys.path.insert(0, {tests!r})
import fixtures_store as fs
from clipindex.encode import backbones, encoder
backbones.resolve_backbone = fs.fake_resolve
encoder.load_encoder = fs.fake_load_encoder
from clipindex.store import add_to_store, compact_store
rel = {rel!r}
for cycle in range({cycles}):
    gone = cycle % len(rel)
    for files in ([r for i, r in enumerate(rel) if i != gone], rel):
        add_to_store(fs.dataset_from_files({root!r}, files), index={ddir!r}, workers=0,
                     progress=False)
        compact_store({ddir!r})
print("cycles done", flush=True)
"""


def test_race_opens_beside_repeated_compacts_never_fail(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Row 1: a reader resolved ``CURRENT``, then a compact dropped that generation. A
    healthy store must never read as damaged: opens retry on the new generation."""
    from clipindex.store import store_info

    root, rel = world
    ddir = _removed_store(world, tmp_path)
    script = _COMPACT_LOOP.format(tests=str(TESTS), rel=list(rel), root=str(root),
                                  ddir=str(ddir), cycles=6)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors: list[str] = []
    opens = 0
    deadline = time.monotonic() + 240
    try:
        while writer.poll() is None and time.monotonic() < deadline:
            try:
                idx = _open(ddir)
                assert len(idx.images) == len(idx.image_vectors)
                if opens % 5 == 0:
                    assert not store_info(ddir)["damaged"]
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(f"{type(exc).__name__}: {exc}")
            opens += 1
    finally:
        if writer.poll() is None:
            writer.kill()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and "cycles done" in out, err[-2000:]
    assert opens > 20, opens
    assert errors == [], f"{len(errors)} of {opens} opens failed: {errors[:3]}"
    gens = sorted(p.name for p in (ddir / ".generations").iterdir())
    assert len(gens) == 1, gens  # every compact dropped the older ones


def test_race_a_reader_holding_a_dropped_generation_never_writes_into_it(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Row 1: a reader kept generation 1 across a compact; its text cache must not
    recreate ``.generations/g1`` (and its memory maps still answer)."""
    from clipindex.store import compact_store

    ddir = _removed_store(world, tmp_path)
    idx = _open(ddir)
    assert idx.path == ddir / ".generations" / "g1" / "fake-a"
    before = idx.search(idx.image_vectors[:2], 5)
    compact_store(ddir)
    assert not (ddir / ".generations" / "g1").exists()
    vectors = idx.text_vectors(["a query after the compact"])
    assert vectors.shape == (1, idx.dim)
    assert not (ddir / ".generations" / "g1").exists()  # nothing written into it
    after = idx.search(idx.image_vectors[:2], 5)
    assert np.array_equal(before[1], after[1])
    assert sorted(p.name for p in (ddir / ".generations").iterdir()) == ["g2"]


class _Killed(Exception):
    pass


def test_race_serve_follows_current_after_an_add_killed_at_commit(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Row 1: an add killed right after its ``CURRENT`` commit leaves the top-level
    copies old; a running serve must still move to the committed generation."""
    from clipindex.serve import ServedStore, ServeOptions

    root, rel = world
    ddir = _build(dataset_from_files(root, rel[:20]), tmp_path)
    _add(dataset_from_files(root, rel[:22]), ddir)  # generation 1
    store = ServedStore(ServeOptions(index_dir=str(ddir), reload_interval=0))
    assert len(store.current().first.images) == 22

    def hook(stage: str) -> None:
        if stage == "committed":
            raise _Killed(stage)

    with pytest.raises(_Killed):
        _add(dataset_from_files(root, rel), ddir, _hook=hook)
    assert json.loads((ddir / "CURRENT").read_text()) == {"generation": 2}
    assert np.load(ddir / "fake-a" / "images.npy").shape[0] == 22  # not published
    snap = store.current()  # the next request
    assert len(snap.first.images) == 24
    assert snap.first.path == ddir / ".generations" / "g2" / "fake-a"


# ============================================================================ removed
def _fake_app(ddir: Path, root: Path, **options: Any) -> Any:
    from clipindex.serve import ServeOptions, create_app

    return create_app(ServeOptions(index_dir=str(ddir), data_root=str(root), **options))


def test_removed_row_is_gone_from_images_thumbs_and_like(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Row 8: README: removed images are never returned by any service."""
    from fastapi.testclient import TestClient

    root, rel = world
    ddir = _removed_store(world, tmp_path, gone=3)
    assert (root / rel[3]).is_file()  # its file is still there: only the store forgot it
    client = TestClient(_fake_app(ddir, root), raise_server_exceptions=False,
                        base_url="http://127.0.0.1")
    assert client.get("/images/4").status_code == 200
    assert client.get("/thumbs/4").status_code == 200
    for path in ("/images/3", "/thumbs/3", "/search?like=3&k=3"):
        res = client.get(path)
        assert res.status_code == 404, (path, res.status_code, res.text[:200])
        assert "removed" in res.json()["error"]
    hits = client.get("/search", params={"q": "a photo of a cat", "k": 23}).json()
    assert len(hits) == 23 and 3 not in {h["row_id"] for h in hits}


def test_removed_row_is_in_no_dedup_pair_or_classifier_row(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Row 8: ``clipindex dedup`` kept a removed row's exact copy as a leakage pair until
    ``compact``; classify and bench rows never hold it either."""
    from clipindex.classifiers.rows import split_rows
    from clipindex.search.dedup import find_duplicates

    root, rel = world
    data = tmp_path / "data"
    shutil.copytree(root, data)
    shutil.copy(data / rel[0], data / "dog" / "copy.jpg")  # row 0 (support) twin
    files = [*rel[:6], "dog/copy.jpg"]  # row 6: test split (i % 5 != 0)
    ddir = _build(dataset_from_files(data, files), tmp_path / "out")
    pairs = find_duplicates(_open(ddir), root=data)
    assert [(p.kind, p.row_id_a, p.row_id_b, p.leakage)
            for p in pairs.itertuples()] == [("exact", 0, 6, True)]
    _add(dataset_from_files(data, files[:6]), ddir)  # the copy is removed
    idx = _open(ddir)
    assert idx.image_removed.tolist() == [False] * 6 + [True]
    assert len(find_duplicates(idx, root=data)) == 0
    res = run_cli("dedup", "--index", ddir, "--backbone", "fake-a", "--root", data, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == []
    support, test = split_rows([idx], ["cat", "dog"], None, 0, rows="all")
    assert set(support) | set(test) == set(range(6))


# ============================================================================ seal
def _edit_json(path: Path, change: Any) -> None:
    """Edit a JSON file in place (the same inode, as an editor saving over it would)."""
    doc = json.loads(path.read_text())
    change(doc)
    with open(path, "r+", encoding="utf-8") as fh:
        fh.truncate(0)
        fh.write(json.dumps(doc, indent=2))


def test_seal_edited_tombstones_are_damage_for_verify_and_open(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Row 9: swapping a tombstone (a live row hidden, a removed row counted as valid)
    in ``.generations/g1/dataset.json`` was "verified"."""
    ddir = _removed_store(world, tmp_path, gone=3)
    assert run_cli("info", "--verify", ddir).exit_code == 0
    meta = ddir / ".generations" / "g1" / "dataset.json"
    assert json.loads(meta.read_text())["tombstones"]["images"] == [3]
    _edit_json(meta, lambda d: d["tombstones"].update(images=[5]))
    res = run_cli("info", "--verify", ddir)
    assert_one_line_error(res, str(meta), "dataset_sha256")
    with pytest.raises(DamagedStoreError, match="dataset_sha256"):
        _open(ddir)
    _edit_json(meta, lambda d: d["tombstones"].update(images=[3]))  # put back: whole again
    assert run_cli("info", "--verify", ddir).exit_code == 0
    _edit_json(meta, lambda d: d.update(root="/elsewhere"))  # any field that changes answers
    with pytest.raises(DamagedStoreError, match="dataset_sha256"):
        _open(ddir)


def test_seal_a_store_sealed_before_still_opens_and_verify_checks_its_tombstones(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Row 9: a ``dataset.json`` written before the seal opens as before; ``info
    --verify`` checks its tombstones against the fingerprint that covers them; the next
    add seals it."""
    root, rel = world
    ddir = _removed_store(world, tmp_path, gone=3)
    meta = ddir / ".generations" / "g1" / "dataset.json"
    _edit_json(meta, lambda d: d.pop("dataset_sha256"))
    assert _open(ddir).image_removed[3]
    assert run_cli("info", "--verify", ddir).exit_code == 0
    _edit_json(meta, lambda d: d["tombstones"].update(images=[5]))
    assert_one_line_error(run_cli("info", "--verify", ddir), str(meta), "fingerprint")
    _edit_json(meta, lambda d: d["tombstones"].update(images=[3]))
    _add(dataset_from_files(root, [r for i, r in enumerate(rel) if i not in (3, 4)]), ddir)
    assert "dataset_sha256" in json.loads((ddir / "dataset.json").read_text())


# ============================================================================ serve
def test_serve_a_host_header_not_allowed_is_421(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Degraded: no Host check (DNS rebinding: ``Host: evil.example`` got the images)."""
    from fastapi.testclient import TestClient

    root, rel = world
    ddir = _build(dataset_from_files(root, rel[:8]), tmp_path)
    client = TestClient(_fake_app(ddir, root), raise_server_exceptions=False)

    def status(host: str, path: str = "/images/0") -> int:
        return int(client.get(path, headers={"host": host}).status_code)

    assert status("evil.example") == 421 and status("evil.example:8000") == 421
    assert status("evil.example", "/health") == 421
    assert "--allow-host evil.example" in client.get(
        "/images/0", headers={"host": "evil.example"}).json()["error"]
    for ok in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.2"):
        assert status(ok) == 200, ok
    allowed = TestClient(_fake_app(ddir, root, allow_hosts=("search.example",)))
    assert allowed.get("/images/0", headers={"host": "search.example"}).status_code == 200
    assert allowed.get("/images/0", headers={"host": "evil.example"}).status_code == 421
    wildcard = TestClient(_fake_app(ddir, root, host="0.0.0.0"))  # any address, no name
    assert wildcard.get("/images/0", headers={"host": "10.1.2.3:80"}).status_code == 200
    assert wildcard.get("/images/0", headers={"host": "evil.example"}).status_code == 421


def _serve_cli(monkeypatch: pytest.MonkeyPatch, *args: object,
               env: dict[str, str] | None = None) -> tuple[Any, list[Any]]:
    """``clipindex serve ARGS`` with the server replaced by a recorder (no socket)."""
    from click.testing import CliRunner

    import clipindex.serve
    from clipindex.cli import main

    seen: list[Any] = []

    def fake_run(options: Any, *, ready: Any = None, **kw: Any) -> None:
        seen.append((options, kw))
        if ready is not None:
            ready()

    monkeypatch.setattr(clipindex.serve, "run_server", fake_run)
    monkeypatch.delenv("CLIPINDEX_SERVE_TOKEN", raising=False)
    res = CliRunner().invoke(main, ["serve", *map(str, args)], env=env)
    return res, seen


def test_serve_token_from_env_or_file_and_a_warning_for_the_flag(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Degraded: ``--token`` shows in ``ps``; the env variable and a file do not."""
    store = tmp_path / "store"
    store.mkdir()
    secret = "s3cret-token-123"
    res, seen = _serve_cli(monkeypatch, "--index", store, "--token", secret)
    assert res.exit_code == 0, res.output
    assert seen[0][0].token == secret and "visible to every local user in `ps`" in res.stderr
    res, seen = _serve_cli(monkeypatch, "--index", store,
                           env={"CLIPINDEX_SERVE_TOKEN": secret})
    assert res.exit_code == 0 and seen[0][0].token == secret and "`ps`" not in res.stderr
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    res, seen = _serve_cli(monkeypatch, "--index", store, "--token-file", token_file)
    assert res.exit_code == 0 and seen[0][0].token == secret and "`ps`" not in res.stderr
    res, _ = _serve_cli(monkeypatch, "--index", store, "--token-file", token_file,
                        "--token", secret)
    assert res.exit_code == 2 and "not both" in res.stderr
    (tmp_path / "empty").write_text("\n")
    res, _ = _serve_cli(monkeypatch, "--index", store, "--token-file", tmp_path / "empty")
    assert res.exit_code == 2 and "is empty" in res.stderr
    res, seen = _serve_cli(monkeypatch, "--index", store, "--host", "0.0.0.0",
                           "--allow-host", "a.example", "--allow-host", "b.example")
    assert seen[0][0].allow_hosts == ("a.example", "b.example")
    assert seen[0][0].host == "0.0.0.0"


class _Uvicorn:
    """The app on a free loopback port with the settings ``run_server`` uses."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from clipindex.serve.server import connection_settings

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning",
                                                    **connection_settings()))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Uvicorn:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "no start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (reads EOF or a reset within 0.05 s)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.fixture
def half_open(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[socket.socket]]:
    """Sockets a test opens (closed at the end); a 2 s header timeout, a cap of 24."""
    from clipindex.serve.connections import GuardedH11Protocol

    monkeypatch.setattr(GuardedH11Protocol, "header_timeout", 2.0)
    monkeypatch.setattr(GuardedH11Protocol, "max_connections", 24)
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def test_serve_half_open_sockets_never_starve_health(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path, half_open: list[socket.socket]) -> None:
    """Degraded: 64 half-open sockets made ``/health`` a 503 without any token. Real
    sockets on loopback: 80 of them (some silent, some with half a request line, one
    dripping a byte at a time) past a cap of 24."""
    root, rel = world
    ddir = _build(dataset_from_files(root, rel[:8]), tmp_path)
    with _Uvicorn(_fake_app(ddir, root, token="a-token-of-16-chars")) as server:
        for i in range(80):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if i % 2:
                s.sendall(b"GET /health HTTP/1.1\r\nHo")
            half_open.append(s)
        t0 = time.monotonic()
        with urllib.request.urlopen(server.url + "/health", timeout=5) as res:
            assert res.status == 200 and json.load(res) == {"status": "ok"}
        assert time.monotonic() - t0 < 3
        evicted = sum(_closed(s) for s in half_open)
        assert evicted >= 80 - 24, evicted  # the oldest idle ones made room
        drip = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        half_open.append(drip)
        for byte in b"GET /health HTTP/1.1\r\n":  # a byte every 0.15 s: not a request
            try:
                drip.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.15)
        deadline = time.monotonic() + 6
        while not all(_closed(s) for s in half_open) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_closed(s) for s in half_open)  # the header timeout closed them all
        req = urllib.request.Request(server.url + "/images/0",
                                     headers={"Authorization": "Bearer a-token-of-16-chars"})
        with urllib.request.urlopen(req, timeout=5) as res:
            assert res.status == 200
        bad = urllib.request.Request(server.url + "/images/0",
                                     headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=5)
        assert err.value.code == 421


# ============================================================================ message
def test_message_a_garbage_current_names_the_fix_that_works(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Degraded: a garbage ``CURRENT`` said "rerun the last clipindex add", which failed
    the same way."""
    root, rel = world
    ddir = _removed_store(world, tmp_path)
    _add(dataset_from_files(root, rel), ddir)  # generation 2
    (ddir / "CURRENT").write_text("garbage{")
    fix = f"""echo '{{"generation": 2}}' > {ddir / "CURRENT"}"""
    line = assert_one_line_error(run_cli("info", ddir), "g1, g2", fix)
    assert "rerun the last" not in line
    with pytest.raises(IndexMismatchError, match="g1, g2"):
        _add(dataset_from_files(root, rel), ddir)
    subprocess.run(["sh", "-c", fix], check=True, timeout=30)  # the fix, as printed
    assert run_cli("info", "--verify", ddir).exit_code == 0
    assert _add(dataset_from_files(root, rel[1:]), ddir).generation == 3


def test_message_compact_with_nothing_to_drop_writes_nothing(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Degraded: compact with nothing to drop wrote a generation and printed "dropped 2
    old generation(s), freed -0.00 MB (-133 bytes)"."""
    root, rel = world
    ddir = _removed_store(world, tmp_path)
    first = run_cli("compact", "--index", ddir)
    assert first.exit_code == 0, first.output
    assert "into generation 2" in first.stdout and "dropped 1 old generation(s) (g1)" in \
        first.stdout
    listing = sorted(p.name for p in (ddir / ".generations").iterdir())
    current = (ddir / "CURRENT").read_bytes()
    again = run_cli("compact", "--index", ddir, "--json")
    facts = json.loads(again.stdout)
    assert (facts["changed"], facts["generation"], facts["dropped_generations"]) == \
        (False, 2, [])
    assert facts["freed_bytes"] == 0
    assert "nothing to compact" in run_cli("compact", "--index", ddir).stdout
    assert sorted(p.name for p in (ddir / ".generations").iterdir()) == listing
    assert (ddir / "CURRENT").read_bytes() == current
    # no tombstone but an older generation: it is dropped, no new one is written
    other = _build(dataset_from_files(root, rel[:20]), tmp_path / "other")
    _add(dataset_from_files(root, rel[:22]), other)
    _add(dataset_from_files(root, rel), other)  # g1, g2: no tombstone
    out = run_cli("compact", "--index", other).stdout
    assert "no tombstoned rows (generation 2 kept), dropped 1 old generation(s) (g1)" in out
    assert "freed -" not in out and "freed" in out
    assert sorted(p.name for p in (other / ".generations").iterdir()) == ["g2"]
    assert "nothing to compact" in run_cli("compact", "--index", other).stdout
    assert _open(other).path == other / ".generations" / "g2" / "fake-a"


def test_message_a_catch_up_add_counts_what_it_encoded(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    """Degraded: a catch-up ``add --backbone B`` printed "encoded 0 new images" after
    encoding the rows B lacked."""
    root, rel = world
    ddir = _build(dataset_from_files(root, rel[:16]), tmp_path, ("fake-a", "fake-b"))
    first = _add(dataset_from_files(root, rel[:20]), ddir, backbones=["fake-a"])
    assert first.line() == "encoded 4 new images, removed 0"
    FakeEncoder.encoded_images = 0
    catch_up = _add(dataset_from_files(root, rel[:20]), ddir, backbones=["fake-b"])
    assert FakeEncoder.encoded_images == 4
    assert catch_up.line() == "encoded 4 new images, removed 0"
    both = _add(dataset_from_files(root, rel[:22]), ddir)
    assert both.line() == "encoded 2 new images, removed 0"


# ============================================================================ source
def test_source_a_class_folder_symlink_outside_the_root_is_refused(tmp_path: Path) -> None:
    """Degraded: a symlink in a class folder to an image outside the root was encoded
    (COCO files, manifests and captions.csv refuse such paths)."""
    from clipindex.sources import load_dataset

    data = tmp_path / "data"
    rel = write_images(data, 3)
    outside = tmp_path / "private"
    write_images(outside, 1, classes=("secret",))
    (data / "cat" / "link.jpg").symlink_to(outside / "secret" / "000.jpg")
    (data / "dog" / "inside.jpg").symlink_to(data / rel[0])  # inside the root: kept
    with pytest.raises(DataError, match="'cat/link.jpg' is a link to .*outside the data root"):
        load_dataset(data)
    res = run_cli("build", data, "--backbone", "tiny-vit", "--out", tmp_path / "out",
                  "--no-progress")
    assert_one_line_error(res, "outside the data root", "--allow-outside-root")
    files = load_dataset(data, allow_outside_root=True).images["file"].tolist()
    assert "cat/link.jpg" in files and "dog/inside.jpg" in files
    (data / "cat" / "link.jpg").unlink()
    assert "dog/inside.jpg" in load_dataset(data).images["file"].tolist()


# ============================================================================ OS faults
# (full disk, read-only store, permissions, fd limits: added by their own change)
