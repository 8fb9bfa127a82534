"""Session fixtures for data kept elsewhere (registered in ``tests/conftest.py``): a moto
S3 server and a static HTTP server on loopback, and a few demo images to put there.

Everything listens on 127.0.0.1 on a free port and is stopped at the end of the session.
"""

from __future__ import annotations

import csv
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
BUCKET = "clipindex-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen | None = None, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if proc is not None:
            assert proc.poll() is None, "the server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.2)


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str

    @property
    def options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3]:
    """moto's S3 server (``moto_server -p PORT``) with an empty bucket; credentials are
    moto's dummies, given as storage options (never read from the user's environment)."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")}
    os.environ.update(AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    try:
        _wait_for(port, proc)
        s3 = S3(f"http://127.0.0.1:{port}", BUCKET)
        s3.fs().mkdir(BUCKET)
        yield s3
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: D401 - no request log on stderr
        pass


@pytest.fixture(scope="session")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(folder, base URL) of a static HTTP server on loopback serving that folder."""
    folder = tmp_path_factory.mktemp("http-root")
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class DemoImages:
    """12 demo-world images (3 classes x 4) with a caption each, and a local manifest
    listing them in row order: the reference every remote source is compared to."""

    root: Path
    files: list[str]
    labels: list[str]
    captions: list[str]
    manifest: Path


@pytest.fixture(scope="session")
def demo_images(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> DemoImages:
    from clipindex.sources import load_dataset

    ds = load_dataset("builtin:demo", root=small_world, per_class=4,
                      support_per_class=None, classes=["cat", "cow", "dog"])
    root = tmp_path_factory.mktemp("demo-images")
    first = ds.captions.groupby("image_row_id")["text"].first()
    files, labels, captions = [], [], []
    for row in ds.images.itertuples():
        name = f"{row.label}/{Path(row.file).name}"
        (root / row.label).mkdir(exist_ok=True)
        (root / name).write_bytes((small_world / row.file).read_bytes())
        files.append(name)
        labels.append(row.label)
        captions.append(str(first[row.row_id]))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "caption"])
        writer.writerows(zip(files, labels, captions, strict=True))
    return DemoImages(root, files, labels, captions, manifest)


def write_shards(images: DemoImages, out: Path, per_shard: int = 5,
                 label_key: str | None = None) -> list[Path]:
    """The images as webdataset shards written by the ``webdataset`` library: ``.jpg``,
    ``.txt`` and ``.cls`` members, or the label in ``.json[label_key]``."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, (file, label, caption) in enumerate(zip(images.files, images.labels,
                                                       images.captions, strict=True)):
            sample = {"__key__": f"{i:06d}", "jpg": (images.root / file).read_bytes(),
                      "txt": caption, "json": {"source": file, "n": i}}
            if label_key:
                sample["json"][label_key] = label
            else:
                sample["cls"] = label
            sink.write(sample)
    return sorted(out.glob("*.tar"))
