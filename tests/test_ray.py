"""``build --engine ray``: the same store as a local build, on a real (local) Ray cluster.

One Ray head for the whole session (``ray start --head --num-cpus 2`` in its own process
group, killed with it at the end); the pytest process and the subprocess drivers join it
by address. The backbone is the shipped ``tiny-vit``, so the actors load a real model.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_store import write_images

from clipindex.cli import main
from clipindex.store import build_store, open_index

CONFIG = "builtin:demo"
FAST = {"batch_size": 4, "shard_size": 8, "workers": 0, "progress": False}
RAY_BIN = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray head with 2 CPUs, joined by this process; its whole process group is
    killed at the end of the session."""
    import ray

    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    # A loopback-only test cluster: Ray's token authentication is off for it (the head,
    # this process and the subprocess drivers share the setting through the environment).
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    head = subprocess.Popen(
        [str(RAY_BIN), "start", "--head", "--num-cpus=2", "--num-gpus=0", f"--port={port}",
         "--node-ip-address=127.0.0.1",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
         "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None, "ray start --head exited"
            try:
                ray.init(address=address, log_to_driver=False)
                break
            except (ConnectionError, RuntimeError):
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(1)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def demo_subset(small_world: Path):
    """20 images (4 a class) and their 100 captions of the small demo world."""
    from clipindex.sources import load_dataset

    return load_dataset(CONFIG, root=small_world, per_class=4, support_per_class=1)


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken") / "fields_roads"
    write_images(root, 6, classes=("fields", "roads"))
    good = (root / "fields" / "000.jpg").read_bytes()
    (root / "fields" / "zz-trunc.jpg").write_bytes(good[:100])
    (root / "roads" / "zz-empty.jpg").write_bytes(b"")
    (root / "roads" / "zz-text.jpg").write_text("not an image")
    return root


def _assert_same_store(a_dir: Path, b_dir: Path, backbone: str = "tiny-vit") -> None:
    a, b = open_index(a_dir, backbone), open_index(b_dir, backbone)
    assert a.images["row_id"].tolist() == b.images["row_id"].tolist()
    for name in ("image_vectors", "caption_vectors"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape
        live = np.linalg.norm(y, axis=1) > 0
        assert np.array_equal(np.linalg.norm(x, axis=1) > 0, live)
        cos = np.sum(x[live] * y[live], axis=1)
        assert np.all(cos >= 1 - 1e-5), (name, cos.min())
    assert a.manifest["skipped"] == b.manifest["skipped"]
    queries = b.image_vectors[b.image_valid][:8]
    for target in ("images", "captions") if len(b.captions) else ("images",):
        _, ids_a = a.search(queries, 10, target=target)
        _, ids_b = b.search(queries, 10, target=target)
        np.testing.assert_array_equal(ids_a, ids_b)


def test_ray_build_equals_the_local_build(ray_address, demo_subset, tmp_path):
    local = build_store(demo_subset, ["tiny-vit"], out=tmp_path / "local", **FAST)
    ray_ = build_store(demo_subset, ["tiny-vit"], out=tmp_path / "ray", engine="ray", **FAST)
    _assert_same_store(ray_[0].parent, local[0].parent)
    m = open_index(ray_[0].parent, "tiny-vit").manifest
    assert m["engine"] == "ray" and m["ray"]["actors"] == 1
    assert set(m["ray"]["stage_seconds"]) == {"images", "captions", "index"}
    # the actor runs the torch threads the build chose; decode tasks take half a CPU
    assert m["ray"]["threads_per_encoder"] == m["timings"]["settings"]["threads"]
    assert m["ray"]["decode_cpus"] == 0.5 and m["ray"]["cpus_per_encoder"] == 1
    assert open_index(local[0].parent, "tiny-vit").manifest["engine"] == "local"
    assert m["timings"]["images_encoded"] == 20 and m["timings"]["captions_encoded"] == 100


def test_skipped_files_and_a_killed_actor(ray_address, broken_folder, tmp_path):
    """Unreadable files are skipped with the local build's reasons; an actor process
    that dies mid-batch is restarted by Ray and the build still equals the local one."""
    marker = tmp_path / "killed-once"
    local = build_store(broken_folder, ["tiny-vit"], out=tmp_path / "local", **FAST)
    ray_ = build_store(broken_folder, ["tiny-vit"], out=tmp_path / "ray", engine="ray",
                       _ray_hooks={"kill_once": str(marker)}, **FAST)
    assert marker.exists()  # the hook did kill a worker
    _assert_same_store(ray_[0].parent, local[0].parent)
    reasons = {s["file"]: s["reason"] for s in open_index(ray_[0].parent,
                                                          "tiny-vit").manifest["skipped"]}
    assert set(reasons) == {"fields/zz-trunc.jpg", "roads/zz-empty.jpg", "roads/zz-text.jpg"}


_DRIVER = """
import sys
from clipindex.sources import load_dataset
from clipindex.store import build_store
config, root, out, address = sys.argv[1:5]
ds = load_dataset(config, root=root, per_class=8, support_per_class=1)
build_store(ds, ["tiny-vit"], out=out, engine="ray", ray_address=address, batch_size=4,
            shard_size=8, workers=0, progress=False, _ray_hooks={"batch_delay": 0.4})
"""


def _kill_ray_driver(world: Path, out: Path, address: str) -> int:
    """Run a ray build in a subprocess driver and SIGKILL it once a shard is written;
    the number of finished image shards it left."""
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(CONFIG), str(world), str(out),
                             address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / "demo" / "tiny-vit" / "shards"
    deadline = time.monotonic() + 240
    try:
        while not list(shards.glob("images-*.json")):
            assert proc.poll() is None, "the ray build finished before it could be killed"
            assert time.monotonic() < deadline, "no shard was finished in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "demo" / "tiny-vit" / "manifest.json").exists()
    return len(list(shards.glob("images-*.json")))


@pytest.mark.parametrize("resume_engine", ["local", "ray"])
def test_killed_ray_driver_resumes_with_either_engine(ray_address, small_world, tmp_path,
                                                      resume_engine):
    from clipindex.sources import load_dataset

    ds = load_dataset(CONFIG, root=small_world, per_class=8, support_per_class=1)  # 40
    out = tmp_path / "out"
    done = _kill_ray_driver(small_world, out, ray_address)
    assert 1 <= done < 5
    built = build_store(ds, ["tiny-vit"], out=out, engine=resume_engine, **FAST)
    m = open_index(built[0].parent, "tiny-vit").manifest
    assert m["timings"]["shards_reused"] >= done
    assert m["timings"]["images_encoded"] == 40 - 8 * done  # only unfinished shards
    assert m["engine"] == resume_engine
    ref = build_store(ds, ["tiny-vit"], out=tmp_path / "ref", **FAST)
    _assert_same_store(built[0].parent, ref[0].parent)
    shutil.rmtree(out)


def _one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_gives_the_local_engines_errors(broken_folder, tmp_path):
    for extra in ([], ["--engine", "ray"]):
        res = CliRunner().invoke(main, ["build", str(broken_folder), "--backbone", "nope",
                                        "--out", str(tmp_path / "o"), *extra])
        _one_line_error(res, "nope")
    res = CliRunner().invoke(main, ["build", str(broken_folder), "--backbone", "tiny-vit",
                                    "--engine", "ray", "--encoders", "0"])
    assert res.exit_code == 2 and "encoders must be a positive integer, got 0" in res.output
    assert not (tmp_path / "o").exists()


def test_ray_missing_names_the_extra(broken_folder, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    res = CliRunner().invoke(main, ["build", str(broken_folder), "--backbone", "tiny-vit",
                                    "--out", str(tmp_path / "o"), "--engine", "ray"])
    _one_line_error(res, "pip install 'clipindex[ray]'")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_ray_starts_only_when_a_backbone_needs_encoding(tmp_path, monkeypatch,
                                                        use_fake_encoders):
    """An up-to-date store built again with the ray engine starts no Ray at all; a
    backbone that needs encoding starts it once, just before encoding (no Ray here:
    the session and the Ray encoding are stand-ins that record the order)."""
    from contextlib import contextmanager

    from fixtures_store import make_image_dataset

    import clipindex.store.engines as engines_mod

    ds = make_image_dataset(tmp_path / "data", n_per_class=3)
    kw = {"out": tmp_path / "out", "batch_size": 2, "shard_size": 2, "workers": 0,
          "progress": False}
    build_store(ds, ["fake-a"], **kw)
    events: list[str] = []

    @contextmanager
    def fake_session(address):
        events.append("start")
        try:
            yield None
        finally:
            events.append("stop")

    def fake_encode(*args, **kwargs):
        events.append("encode")
        raise RuntimeError("stand-in: encoding reached")

    monkeypatch.setattr(engines_mod, "ray_session", fake_session)
    monkeypatch.setattr(engines_mod, "encode_with_ray", fake_encode)
    before = use_fake_encoders.encoded_images
    paths = build_store(ds, ["fake-a"], engine="ray", **kw)
    assert events == [] and paths == [tmp_path / "out" / "toy" / "fake-a"]
    assert use_fake_encoders.encoded_images == before
    with pytest.raises(RuntimeError, match="stand-in"):
        build_store(ds, ["fake-a", "fake-b", "fake-c"], engine="ray", **kw)
    assert events == ["start", "encode", "stop"]


@pytest.mark.parametrize(("n", "batch"), [(2000, 32), (7000, 32), (2053, 32), (33, 32),
                                          (10, 32), (1, 1)])
def test_blocks_are_whole_batches(n, batch):
    """Every block but the last holds whole batches, so the model is never called on a
    batch cut short by a block boundary; the blocks keep every row, in order."""
    import pandas as pd

    from clipindex.store.ray_engine import _frames

    blocks = _frames(pd.DataFrame({"row": np.arange(n)}), batch)
    assert len(blocks) <= 64
    assert all(len(b) % batch == 0 for b in blocks[:-1])
    assert np.concatenate([b["row"].to_numpy() for b in blocks]).tolist() == list(range(n))
    # 2,000 rows in batches of 32: 62 full batches and one of 16 (it was 16 calls of 1)
    sizes = [min(batch, len(b) - i) for b in blocks for i in range(0, len(b), batch)]
    assert sum(s < batch for s in sizes) <= 1


def test_worker_niceness_is_set_only_while_a_local_ray_starts(monkeypatch):
    from clipindex.store.ray_engine import _worker_niceness

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    with _worker_niceness(0):
        assert os.environ["RAY_worker_niceness"] == "0"
    assert "RAY_worker_niceness" not in os.environ
    with _worker_niceness(None):  # joining a cluster: its own setting
        assert "RAY_worker_niceness" not in os.environ
    monkeypatch.setenv("RAY_worker_niceness", "7")  # the user's choice wins
    with _worker_niceness(0):
        assert os.environ["RAY_worker_niceness"] == "7"


def test_a_local_ray_runs_its_workers_at_niceness_zero():
    """The local Ray that ``--engine ray`` starts (no address) runs its tasks at nice 0,
    not Ray's default 15, so nice-0 processes do not preempt the encoder's threads."""
    code = ("import os\n"
            "from clipindex.store.ray_engine import ray_session\n"
            "with ray_session(None) as ray:\n"
            "    print('nice', ray.get(ray.remote(num_cpus=1)(lambda: os.nice(0)).remote()))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               OMP_NUM_THREADS="1")  # Ray's default temp dir: socket paths stay short
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "nice 0" in out.stdout.splitlines()[-1], out.stdout


@pytest.mark.slow
def test_ray_decode_tasks_read_s3_shards_themselves(ray_address, moto_s3, demo_images,
                                                    tmp_path):
    """Inputs on S3 (moto): the decode tasks read the shards' byte ranges themselves (the
    driver's process never opens an image), and the store equals a local build."""
    from fixtures_remote import write_shards

    fs = moto_s3.fs()
    for shard in write_shards(demo_images, tmp_path / "shards"):
        fs.pipe(f"{moto_s3.bucket}/ray-shards/{shard.name}", shard.read_bytes())
        shard.unlink()  # nothing local to fall back on
    pattern = moto_s3.url("ray-shards/{00000..00002}.tar")
    ray_ = build_store(pattern, ["tiny-vit"], out=tmp_path / "ray", engine="ray",
                       storage_options=moto_s3.options, **FAST)
    local = build_store(demo_images.manifest, ["tiny-vit"], out=tmp_path / "local", **FAST)
    a, b = open_index(ray_[0].parent, "tiny-vit"), open_index(local[0].parent, "tiny-vit")
    assert a.manifest["engine"] == "ray" and a.manifest["skipped"] == []
    assert a.images["label"].tolist() == b.images["label"].tolist()
    cos = np.sum(a.image_vectors * b.image_vectors, axis=1)
    assert cos.min() >= 0.9999


@pytest.mark.slow
def test_ray_builds_a_coco_config_from_s3(ray_address, moto_s3, small_world, tmp_path):
    """A COCO config whose root (annotation files and images) is on S3: the decode tasks
    read the objects themselves, and the store equals the local build of the same world."""
    from clipindex.sources import load_dataset

    pick = {"per_class": 2, "support_per_class": 1, "classes": ["cat", "dog"]}
    local = load_dataset("builtin:demo", root=small_world, **pick)
    fs = moto_s3.fs()
    for name in ("instances_val.json", "captions_val.json", "causes_val.json"):
        fs.pipe(f"{moto_s3.bucket}/ray-coco/annotations/{name}",
                (small_world / "annotations" / name).read_bytes())
    for file in local.images["file"]:
        fs.pipe(f"{moto_s3.bucket}/ray-coco/{file}", (small_world / file).read_bytes())
    remote = load_dataset("builtin:demo", root=moto_s3.url("ray-coco"),
                          storage_options=moto_s3.options, **pick)
    ray_ = build_store(remote, ["tiny-vit"], out=tmp_path / "ray", engine="ray", **FAST)
    ref = build_store(local, ["tiny-vit"], out=tmp_path / "local", **FAST)
    a, b = open_index(ray_[0].parent, "tiny-vit"), open_index(ref[0].parent, "tiny-vit")
    assert a.manifest["engine"] == "ray" and a.manifest["skipped"] == []
    assert a.images[["file", "label", "split"]].to_dict("records") == \
        b.images[["file", "label", "split"]].to_dict("records")
    assert a.captions["text"].tolist() == b.captions["text"].tolist()
    cos = np.sum(a.image_vectors * b.image_vectors, axis=1)
    assert cos.min() >= 0.9999
