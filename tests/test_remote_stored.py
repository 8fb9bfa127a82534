"""Stores whose images are not local files (moto's S3 on loopback, webdataset shards):
report thumbnails, ``dedup``'s exact hashes, serve's ``/images/ROW`` and ``/thumbs/ROW``
and Grad-CAM read the stored images through ``StoredImages``, with the endpoint the
store recorded and credentials from the environment (never from ``dataset.json``)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from fixtures_remote import write_shards
from fixtures_store import install_fakes
from PIL import Image

from clipindex.errors import DataError
from clipindex.sources import StoredImages, load_dataset
from clipindex.sources.storage import redact
from clipindex.store import build_store, open_index

FAST = {"batch_size": 4, "shard_size": 8, "workers": 0, "progress": False}


@pytest.fixture(scope="module")
def s3_store(moto_s3, demo_images, tmp_path_factory):
    """A store built from a manifest on S3 whose last row is a byte copy of the first
    (an exact duplicate, under another name), with the fake encoder."""
    fs = moto_s3.fs()
    for file in demo_images.files:
        fs.pipe(f"{moto_s3.bucket}/stored/{file}", (demo_images.root / file).read_bytes())
    copy = "dog/copy-of-first.jpg"
    fs.pipe(f"{moto_s3.bucket}/stored/{copy}",
            (demo_images.root / demo_images.files[0]).read_bytes())
    rows = list(zip(demo_images.files, demo_images.labels, demo_images.captions, strict=True))
    rows.append((copy, "dog", "a copy"))
    buf = io.StringIO()
    csv.writer(buf).writerows([("path", "label", "caption"), *rows])
    fs.pipe(f"{moto_s3.bucket}/stored/manifest.csv", buf.getvalue().encode())
    out = tmp_path_factory.mktemp("s3-store")
    ds = load_dataset(moto_s3.url("stored/manifest.csv"), support_per_class=1, seed=0,
                      storage_options={**moto_s3.options,
                                       "client_kwargs": {"aws_session_token": "tok"}})
    with pytest.MonkeyPatch.context() as mp:
        install_fakes(mp)
        return build_store(ds, ["fake-a"], out=out, **FAST)[0].parent


@pytest.fixture(scope="module")
def s3_tiny_store(s3_store, moto_s3, tmp_path_factory):
    """The same S3 manifest built with tiny-rn (a ResNet: Grad-CAM works on it)."""
    return build_store(moto_s3.url("stored/manifest.csv"), ["tiny-rn"],
                       out=tmp_path_factory.mktemp("s3-tiny"),
                       storage_options=moto_s3.options, **FAST)[0].parent


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    """Credentials from the environment only, as on a user's machine."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return moto_s3


def test_dataset_json_keeps_the_endpoint_and_no_credential(s3_store, moto_s3):
    text = (s3_store / "dataset.json").read_text()
    recorded = json.loads(text)["config"]["storage_options"]
    assert recorded == {"endpoint_url": moto_s3.endpoint, "key": "***", "secret": "***",
                        "client_kwargs": {"aws_session_token": "***"}}
    assert "tok" not in text.replace("token", "")
    for path in s3_store.rglob("*"):  # manifests, generations, logs: no credential
        if path.is_file() and path.suffix in (".json", ".txt", ".log", ".yaml"):
            assert "testing" not in path.read_text(errors="replace"), path
    assert redact({"a": {"b": {"password": 1}}}) == {"a": {"b": {"password": "***"}}}


def test_stored_images_read_s3_objects_with_env_credentials(s3_store, s3_env, demo_images,
                                                            use_fake_encoders):
    index = open_index(s3_store, "fake-a")
    stored = StoredImages.of(index)
    assert stored.remote and stored.root == s3_env.url("stored")
    assert stored.options == {"endpoint_url": s3_env.endpoint, "client_kwargs": {}}
    files = index.images["file"].tolist()
    got = stored.read_many(files)
    want = [(demo_images.root / f).read_bytes() for f in demo_images.files]
    assert got == [*want, want[0]]
    with pytest.raises(DataError, match="nope.jpg does not exist"):
        stored.read("cat/nope.jpg")


def test_dedup_hashes_the_s3_objects(s3_store, s3_env, use_fake_encoders):
    from click.testing import CliRunner

    from clipindex.cli import main
    from clipindex.search.dedup import find_duplicates

    index = open_index(s3_store, "fake-a")
    pairs = find_duplicates(index, threshold=1.0)
    exact = pairs[pairs["kind"] == "exact"]
    last = len(index.images) - 1
    assert [(r.row_id_a, r.row_id_b) for r in exact.itertuples()] == [(0, last)]
    assert pairs.attrs["unreadable_files"] == 0
    res = CliRunner().invoke(main, ["dedup", "--index", str(s3_store), "--backbone",
                                    "fake-a", "--threshold", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert [p["kind"] for p in json.loads(res.stdout)] == ["exact"]


def test_report_thumbnails_of_an_s3_store(s3_store, s3_env, tmp_path, use_fake_encoders):
    from clipindex.report._data import ResultsData
    from clipindex.report._sections import thumbnail

    results = tmp_path / "results"
    results.mkdir()
    (results / "run.json").write_text(json.dumps({"dataset_dir": str(s3_store),
                                                  "data_root": s3_env.url("stored")}))
    data = ResultsData(results)
    src = data.image_source("cat/" + Path(data.images["file"].iloc[0]).name)
    assert isinstance(src, bytes) and src[:2] == b"\xff\xd8"
    png = thumbnail(src, 64)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and max(im.size) == 64
    assert data.image_source("cat/nope.jpg") is None


def test_serve_images_and_thumbs_of_an_s3_store(s3_store, s3_env, demo_images,
                                                use_fake_encoders):
    from fastapi.testclient import TestClient

    from clipindex.serve import ServedStore, ServeOptions, create_app

    opts = ServeOptions(index_dir=str(s3_store), allow_hosts=("testserver",))
    with TestClient(create_app(store=ServedStore(opts))) as client:
        res = client.get("/images/0")
        assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
        assert res.content == (demo_images.root / demo_images.files[0]).read_bytes()
        thumb = client.get("/thumbs/3")
        assert thumb.status_code == 200
        with Image.open(io.BytesIO(thumb.content)) as im:
            assert im.format == "JPEG" and max(im.size) <= opts.thumb_size
        assert client.get("/images/999").status_code == 404


def test_serve_and_dedup_of_a_shards_store(demo_images, tmp_path, use_fake_encoders,
                                           monkeypatch):
    """Shard members are read by their byte range in the listed shard; each shard is
    listed once per StoredImages, however many of its members are read."""
    from fastapi.testclient import TestClient

    import clipindex.sources.shards as shards_module
    from clipindex.search.dedup import find_duplicates
    from clipindex.serve import ServedStore, ServeOptions, create_app

    write_shards(demo_images, tmp_path / "shards")
    ds = load_dataset(str(tmp_path / "shards" / "{00000..00002}.tar"))
    store = build_store(ds, ["fake-a"], out=tmp_path / "out", **FAST)[0].parent
    index = open_index(store, "fake-a")
    stored = StoredImages.of(index)
    assert stored.remote and stored.local_path(index.images["file"].iloc[0]) is None
    want = [(demo_images.root / f).read_bytes() for f in demo_images.files]
    listed = []
    real = shards_module.list_shard
    monkeypatch.setattr(shards_module, "list_shard",
                        lambda loc, opts: listed.append(loc) or real(loc, opts))
    assert [stored.read(f) for f in index.images["file"]] == want
    assert stored.read_many(index.images["file"].tolist()) == want
    assert sorted(Path(p).name for p in listed) == ["00000.tar", "00001.tar", "00002.tar"]
    pairs = find_duplicates(index, threshold=1.0)
    assert pairs.attrs["unreadable_files"] == 0 and (pairs["kind"] != "exact").all()
    opts = ServeOptions(index_dir=str(store), allow_hosts=("testserver",))
    with TestClient(create_app(store=ServedStore(opts))) as client:
        res = client.get("/images/7")
        assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
        assert hashlib.sha256(res.content).digest() == hashlib.sha256(want[7]).digest()
        assert client.get("/thumbs/7").status_code == 200


def test_read_ahead_reads_the_next_batch_while_one_decodes(tmp_path):
    """The guessed batch is read in the background and handed over; a wrong guess is
    read again; two reads never overlap (a reader need not be thread-safe)."""
    import pickle
    import threading
    import time

    from clipindex.sources.storage import FileReader, ReadAhead

    class Reader:
        def __init__(self):
            self.calls, self.busy, self.overlaps = [], threading.Lock(), 0

        def read_many(self, files):
            if not self.busy.acquire(blocking=False):
                self.overlaps += 1
                self.busy.acquire()
            try:
                time.sleep(0.02)
                self.calls.append(list(files))
                return [f.encode() for f in files]
            finally:
                self.busy.release()

    reader = Reader()
    ahead = ReadAhead(reader)
    assert ahead.read_many(["a", "b"], ["c", "d"]) == [b"a", b"b"]
    assert ahead.read_many(["c", "d"], ["e"]) == [b"c", b"d"]  # handed over
    assert ahead.read_many(["x"]) == [b"x"]  # a wrong guess: read again
    assert reader.calls == [["a", "b"], ["c", "d"], ["e"], ["x"]]
    assert reader.overlaps == 0
    (tmp_path / "y").write_bytes(b"Y")
    (tmp_path / "z").write_bytes(b"Z")
    files = ReadAhead(FileReader(str(tmp_path)))
    assert files.read_many(["y"], ["z"]) == [b"Y"]  # a read-ahead in flight ...
    again = pickle.loads(pickle.dumps(files))  # ... is not part of a pickled copy
    assert again.read_many(["z"]) == [b"Z"] and files.read_many(["z"]) == [b"Z"]


def test_stored_images_of_an_image_bytes_parquet(demo_images, tmp_path, use_fake_encoders):
    import pandas as pd

    from clipindex.search.dedup import find_duplicates

    want = [(demo_images.root / f).read_bytes() for f in demo_images.files]
    frame = pd.DataFrame({"image": want, "label": demo_images.labels})
    frame.to_parquet(tmp_path / "imgs.parquet", row_group_size=5)
    cfg = tmp_path / "pq.yaml"
    cfg.write_text(f"name: pq\nparquet: {tmp_path / 'imgs.parquet'}\n")
    store = build_store(load_dataset(cfg), ["fake-a"], out=tmp_path / "out", **FAST)[0].parent
    index = open_index(store, "fake-a")
    stored = StoredImages.of(index)
    assert stored.remote and index.images["file"].iloc[6] == "imgs.parquet#6"
    assert stored.read_many(index.images["file"].tolist()[::-1]) == want[::-1]
    assert find_duplicates(index, threshold=1.0).attrs["unreadable_files"] == 0


def test_explain_rows_of_an_s3_store(s3_tiny_store, s3_env, demo_images):
    from clipindex.explain import explain_rows

    index = open_index(s3_tiny_store, "tiny-rn")
    [e] = explain_rows(index, [2])
    with Image.open(demo_images.root / demo_images.files[2]) as original:
        assert e.image.size == original.size
    assert e.cam.shape == (e.image.height, e.image.width) and e.true == demo_images.labels[2]


def test_export_to_s3_and_import_from_s3(s3_tiny_store, s3_env, tmp_path):
    """`export --out s3://...` uploads clip-retrieval's layout (image_path: the images'
    URLs); `import s3://...` reads it back into a store whose images are those URLs."""
    import numpy as np
    import pandas as pd
    from click.testing import CliRunner

    from clipindex.cli import main
    from clipindex.search.dedup import find_duplicates

    store = s3_tiny_store
    opts = [x for k, v in s3_env.options.items() for x in ("--storage-option", f"{k}={v}")]
    url = s3_env.url("exported")
    res = CliRunner().invoke(main, ["export", str(store), "--backbone", "tiny-rn",
                                    "--out", url, "--json", *opts])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["path"] == url
    fs = s3_env.fs()
    assert sorted(fs.find(f"{s3_env.bucket}/exported")) == [
        f"{s3_env.bucket}/exported/{p}" for p in (
            "img_emb/img_emb_0.npy", "metadata/metadata_0.parquet", "text_emb/text_emb_0.npy")]
    meta = pd.read_parquet(io.BytesIO(fs.cat(f"{s3_env.bucket}/exported/metadata/"
                                             "metadata_0.parquet")))
    original = open_index(store, "tiny-rn")
    assert meta["image_path"].tolist() == [s3_env.url(f"stored/{f}")
                                           for f in original.images["file"]]
    again = CliRunner().invoke(main, ["export", str(store), "--backbone", "tiny-rn",
                                      "--out", url, *opts])
    assert again.exit_code == 2 and "already exists" in again.output
    res = CliRunner().invoke(main, ["import", url, "--backbone", "tiny-rn", "--out",
                                    str(tmp_path / "idx"), "--json", *opts])
    assert res.exit_code == 0, res.output
    imported = open_index(tmp_path / "idx" / "exported", "tiny-rn")
    assert imported.dataset_info["root"] == s3_env.url("stored")
    assert imported.manifest["imported"]["folder"] == url
    assert imported.dataset_info["config"]["storage_options"] == {
        "endpoint_url": s3_env.endpoint, "key": "***", "secret": "***"}
    assert imported.images["file"].tolist() == original.images["file"].tolist()
    np.testing.assert_allclose(imported.image_vectors, original.image_vectors, atol=1e-6)
    assert not list((tmp_path / "idx").glob(".*"))  # the staging copy is gone
    pairs = find_duplicates(imported, threshold=1.0)  # hashed from the S3 objects
    assert [(r.row_id_a, r.row_id_b) for r in pairs[pairs["kind"] == "exact"].itertuples()] \
        == [(0, len(imported.images) - 1)]
