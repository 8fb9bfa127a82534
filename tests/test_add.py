"""``clipindex add``, store generations, tombstones, stale backbones and ``compact``.

Most tests run the store mechanics with the stand-in encoders of ``fixtures_store`` on a
few dozen real JPEGs (a fake vector is a fixed projection of the pixels, so it depends
on the file's content only); the IVF case uses synthetic clustered vectors; the CLI test
uses the real ``tiny-vit`` on the ``colors`` folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fixtures_robust import assert_one_line_error, run_cli
from fixtures_store import (
    FAKE_DIM,
    FakeBatch,
    FakeEncoder,
    dataset_from_files,
    fake_resolve,
    write_images,
)

from clipindex.errors import DataError, IndexMismatchError, UserInputError

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

N_PER_CLASS = 12  # 24 JPEGs in cat/ and dog/
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("add-world") / "data"
    return root, write_images(root, N_PER_CLASS)


def _build(ds: Any, out: Path, backbones: Sequence[str] = ("fake-a",), **kw: Any) -> Path:
    from clipindex.store import build_store

    paths = build_store(ds, list(backbones), out=out, workers=0, progress=False, **kw)
    return paths[0].parent


def _add(ds: Any, ddir: Path, **kw: Any) -> Any:
    from clipindex.store import add_to_store

    return add_to_store(ds, index=ddir, workers=0, progress=False, **kw)


def _open(ddir: Path, backbone: str = "fake-a") -> Any:
    from clipindex.store import open_index

    return open_index(ddir, backbone)


def _top_k(idx: Any, k: int = 5, target: str = "images") -> tuple[np.ndarray, np.ndarray]:
    q = idx.image_vectors[np.flatnonzero(idx.image_valid)[:6]]
    scores, ids = idx.search(q, k, target=target)
    return np.asarray(scores), np.asarray(ids)


def _same_store(a: Path, b: Path, backbone: str = "fake-a") -> None:
    ia, ib = _open(a, backbone), _open(b, backbone)
    pd.testing.assert_frame_equal(ia.images, ib.images)
    pd.testing.assert_frame_equal(ia.captions, ib.captions)
    assert np.array_equal(ia.image_vectors, ib.image_vectors)
    assert np.array_equal(ia.caption_vectors, ib.caption_vectors)
    assert np.array_equal(ia.image_valid, ib.image_valid)
    for target in ("images", "captions"):
        assert np.array_equal(_top_k(ia, 8, target)[1], _top_k(ib, 8, target)[1])


# ----------------------------------------------------------------------------- add
def test_add_equals_a_full_build_encoding_only_the_new_images(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    import faiss

    root, rel = world
    n = 16
    part = _build(dataset_from_files(root, rel[:n]), tmp_path / "A")
    full = _build(dataset_from_files(root, rel), tmp_path / "B")
    FakeEncoder.encoded_images = 0
    result = _add(dataset_from_files(root, rel), part)
    assert (result.added, result.removed, result.generation) == (len(rel) - n, 0, 1)
    assert result.encoded == {"fake-a": len(rel) - n}
    assert FakeEncoder.encoded_images == len(rel) - n  # only the new images
    assert result.line() == f"encoded {len(rel) - n} new images, removed 0"
    _same_store(part, full)
    # The top-level paths are the current generation for plain numpy/pandas/faiss users.
    idx = _open(part)
    assert idx.path == part / ".generations" / "g1" / "fake-a"
    assert json.loads((part / "CURRENT").read_text()) == {"generation": 1}
    assert np.array_equal(np.load(part / "fake-a" / "images.npy"), idx.image_vectors)
    pd.testing.assert_frame_equal(pd.read_parquet(part / "images.parquet"), idx.images)
    assert faiss.read_index(str(part / "fake-a" / "images.faiss")).ntotal == len(rel)
    history = json.loads((part / "dataset.json").read_text())["history"]
    assert [(h["generation"], h["added"], h["removed"]) for h in history] == [(1, 8, 0)]
    # The same source again: nothing to do, nothing written, nothing encoded.
    again = _add(dataset_from_files(root, rel), part)
    assert (again.added, again.removed, again.generation) == (0, 0, 1)
    assert FakeEncoder.encoded_images == len(rel) - n


def test_build_after_add_is_up_to_date_and_a_changed_source_names_add(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    root, rel = world
    ddir = _build(dataset_from_files(root, rel[:20]), tmp_path)
    _add(dataset_from_files(root, rel), ddir)
    FakeEncoder.encoded_images = 0
    before = (ddir / "fake-a" / "manifest.json").read_bytes()
    assert _build(dataset_from_files(root, rel), tmp_path) == ddir  # up to date
    assert FakeEncoder.encoded_images == 0
    assert (ddir / "fake-a" / "manifest.json").read_bytes() == before
    _build(dataset_from_files(root, rel), tmp_path, rebuild=True)  # no other version
    assert FakeEncoder.encoded_images == 0 and (ddir / "CURRENT").exists()
    with pytest.raises(DataError) as err:
        _build(dataset_from_files(root, rel[2:]), tmp_path)
    message = str(err.value)
    assert f"clipindex add SOURCE --index {ddir}" in message and "--rebuild" in message
    assert "\n" not in message
    # Only the order (and so the captions' numbers) changed: nothing to add, and the
    # store remembers this source, so building it is up to date too.
    shuffled = rel[::-1]
    same = _add(dataset_from_files(root, shuffled), ddir)
    assert (same.added, same.removed, same.generation) == (0, 0, 1)
    _build(dataset_from_files(root, shuffled), tmp_path)
    assert FakeEncoder.encoded_images == 0
    # A new backbone built on the added store gets the store's rows and a new generation.
    _build(dataset_from_files(root, shuffled), tmp_path, backbones=("fake-b",))
    assert json.loads((ddir / "CURRENT").read_text()) == {"generation": 2}
    b = _open(ddir, "fake-b")
    assert len(b.images) == len(rel) and np.array_equal(b.image_valid, _open(ddir).image_valid)
    # --rebuild of another version drops the generations.
    _build(dataset_from_files(root, rel[2:]), tmp_path, rebuild=True)
    assert not (ddir / "CURRENT").exists() and not (ddir / ".generations").exists()
    assert len(_open(ddir).images) == len(rel) - 2



def test_damaged_tables_after_an_add_name_rebuild_which_replaces_the_store(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    from clipindex.errors import DamagedStoreError

    root, rel = world
    source = rel[::-1]  # another order than the store's rows: the store is not its tables
    ddir = _build(dataset_from_files(root, rel[:20]), tmp_path / "A")
    _add(dataset_from_files(root, source), ddir)
    table = ddir / "captions.parquet"  # a hard link of generation 1's: both are damaged
    os.truncate(table, 100)
    for attempt in (lambda: _open(ddir),
                    lambda: _build(dataset_from_files(root, source), tmp_path / "A"),
                    lambda: _add(dataset_from_files(root, source), ddir)):
        with pytest.raises(DamagedStoreError, match="captions.parquet has 100 bytes") as err:
            attempt()
        assert "--rebuild" in str(err.value) and "\n" not in str(err.value)
    FakeEncoder.encoded_images = 0
    _build(dataset_from_files(root, source), tmp_path / "A", rebuild=True)
    assert FakeEncoder.encoded_images == len(rel)  # the source replaced the store
    assert not (ddir / "CURRENT").exists() and not (ddir / ".generations").exists()
    _same_store(ddir, _build(dataset_from_files(root, source), tmp_path / "B"))
    again = _add(dataset_from_files(root, source), ddir)
    assert (again.added, again.removed) == (0, 0)

def test_removed_images_are_tombstoned_never_returned_and_counted(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    from clipindex.classifiers.runner import classify
    from clipindex.store import store_info

    root, rel = world
    ddir = _build(dataset_from_files(root, rel), tmp_path)
    files_before = _open(ddir).images["file"].tolist()
    gone = [rel[1], rel[5], rel[20]]
    result = _add(dataset_from_files(root, [r for r in rel if r not in gone]), ddir)
    assert (result.added, result.removed, result.removed_captions) == (0, 3, 6)
    idx = _open(ddir)
    dead = [files_before.index(g) for g in gone]
    assert idx.images["file"].tolist() == files_before  # never renumbered
    assert np.flatnonzero(~idx.image_valid).tolist() == sorted(dead)
    assert not idx.image_vectors[dead].any()  # zeroed
    dead_caps = np.flatnonzero(idx.captions["image_row_id"].isin(dead))
    assert np.flatnonzero(~idx.caption_valid).tolist() == dead_caps.tolist()
    _, ids = idx.search(idx.image_vectors[np.flatnonzero(idx.image_valid)], len(rel))
    assert not np.isin(ids, dead).any() and (ids >= 0).sum(axis=1).max() == len(rel) - 3
    _, cap_ids = idx.search(idx.caption_vectors[:4], 2 * len(rel), target="captions")
    assert not np.isin(cap_ids, dead_caps).any()
    preds = classify(ddir, ["fake-a"], "image-knn", k=3, rows="all").predictions
    assert len(preds) == len(rel) - 3 and not preds["row_id"].isin(dead).any()
    info = store_info(ddir)
    assert (info["generation"], info["tombstoned_images"], info["tombstoned_captions"]) \
        == (1, 3, 6)
    res = run_cli("info", ddir)
    assert res.exit_code == 0, res.output
    assert "generation 1: 3 tombstoned images, 6 tombstoned captions" in res.output
    # A tombstoned image that comes back is a new row (ids are never reused).
    back = _add(dataset_from_files(root, [r for r in rel if r != gone[0]]), ddir)
    assert (back.added, back.removed) == (2, 0)
    idx = _open(ddir)
    assert idx.images["file"].tolist()[len(rel):] == [gone[1], gone[2]]
    assert np.flatnonzero(~idx.image_valid).tolist() == sorted(dead)


def test_a_reader_opened_before_an_add_keeps_its_answers(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    root, rel = world
    ddir = _build(dataset_from_files(root, rel[:18]), tmp_path)
    old = _open(ddir)
    expected = _top_k(old, 10)
    seen: list[str] = []

    def hook(stage: str) -> None:
        seen.append(stage)
        got = _top_k(old, 10)
        assert np.array_equal(got[1], expected[1]) and np.array_equal(got[0], expected[0])
        during = _open(ddir)  # before the commit: the old generation; after: the new
        assert len(during.images) == (len(rel) if stage in ("committed", "published") else 18)

    _add(dataset_from_files(root, rel[1:]), ddir, _hook=hook)
    assert {"staged", "renamed", "committed", "published"} <= set(seen)
    assert np.array_equal(_top_k(old, 10)[1], expected[1])  # still its generation
    assert len(old.images) == 18 and old.image_valid.all()
    new = _open(ddir)
    assert len(new.images) == len(rel) - 1 + 1 and not new.image_valid[0]
    assert new.images["file"].tolist()[18:] == rel[18:]


_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import fixtures_store as fs
from clipindex.encode import backbones, encoder
backbones.resolve_backbone = fs.fake_resolve
encoder.load_encoder = fs.fake_load_encoder
from clipindex.store import add_to_store
def hook(stage):
    if stage == {stage!r}:
        os.kill(os.getpid(), signal.SIGKILL)
ds = fs.dataset_from_files({root!r}, {rel!r})
add_to_store(ds, index={ddir!r}, workers=0, progress=False, batch_size=2, shard_size=2,
             _hook=hook)
"""


@pytest.mark.parametrize("stage", ["shard:images-00001", "staged", "renamed", "committed"])
def test_a_killed_add_leaves_the_old_generation_and_the_rerun_ends_equal(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path, stage: str) -> None:
    root, rel = world
    new_rel = rel[2:]  # 2 removed, 6 added
    base = _build(dataset_from_files(root, rel[:18]), tmp_path / "base", batch_size=2)
    ref = tmp_path / "ref" / "toy"
    shutil.copytree(base, ref)
    _add(dataset_from_files(root, new_rel), ref, batch_size=2, shard_size=2)
    ddir = tmp_path / "killed" / "toy"
    shutil.copytree(base, ddir)
    before = _top_k(_open(ddir), 10)
    script = _KILL_SCRIPT.format(tests=str(TESTS), stage=stage, root=str(root),
                                 rel=list(new_rel), ddir=str(ddir))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    between = _open(ddir)
    if stage == "committed":  # committed: readers see the new generation, not yet published
        assert len(between.images) == 24 and not between.image_valid[:2].any()
        assert np.load(ddir / "fake-a" / "images.npy").shape[0] == 18
    else:  # everything before the CURRENT write is staging
        assert len(between.images) == 18 and between.image_valid.all()
        assert np.array_equal(_top_k(between, 10)[1], before[1])
    FakeEncoder.encoded_images = 0
    _add(dataset_from_files(root, new_rel), ddir, batch_size=2, shard_size=2)
    if stage == "shard:images-00001":  # two finished shards were reused
        assert FakeEncoder.encoded_images == 2
    _same_store(ddir, ref)
    assert np.array_equal(np.load(ddir / "fake-a" / "images.npy"),
                          np.load(ref / "fake-a" / "images.npy"))
    assert not (ddir / "fake-a" / "add-shards").exists()


# ----------------------------------------------------------------------------- stale
def test_a_backbone_left_out_is_stale_refused_listed_and_caught_up(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    from clipindex.store import compact_store, store_info

    root, rel = world
    ddir = _build(dataset_from_files(root, rel[:16]), tmp_path / "A", ("fake-a", "fake-b"))
    full = _build(dataset_from_files(root, rel[:20]), tmp_path / "B", ("fake-b",))
    not_built = "'fake-c' is not built in .*clipindex build SOURCE --backbone fake-c"
    with pytest.raises(UserInputError, match=not_built):
        _add(dataset_from_files(root, rel[:20]), ddir, backbones=["fake-c"])
    r1 = _add(dataset_from_files(root, rel[:20]), ddir, backbones=["fake-a"])
    assert r1.stale == ["fake-b"]
    with pytest.raises(IndexMismatchError) as err:
        _open(ddir, "fake-b")
    assert f"clipindex add SOURCE --index {ddir} --backbone fake-b" in str(err.value)
    entry = {b["backbone_folder"]: b for b in store_info(ddir)["backbones"]}
    assert entry["fake-b"]["stale"] and not entry["fake-a"]["stale"]
    assert "generation 0" in entry["fake-b"]["stale_reason"]
    res = run_cli("info", ddir)
    assert "stale backbones: fake-b" in res.output and "STALE (left out of an add" in res.output
    with pytest.raises(UserInputError, match="fake-b of .* is stale .* --backbone fake-b"):
        compact_store(ddir)
    _add(dataset_from_files(root, [r for r in rel[:20] if r != rel[3]]), ddir,
         backbones=["fake-a"])  # a second generation: one tombstone more
    FakeEncoder.encoded_images = 0
    r3 = _add(dataset_from_files(root, [r for r in rel[:20] if r != rel[3]]), ddir,
              backbones=["fake-b"])
    assert (r3.added, r3.removed, r3.encoded, r3.stale) == (0, 0, {"fake-b": 4}, [])
    assert FakeEncoder.encoded_images == 4  # the rows it lacked, across two generations
    b, ref = _open(ddir, "fake-b"), _open(full, "fake-b")
    live = np.arange(20) != 3
    assert np.array_equal(b.image_vectors[live], ref.image_vectors[live])
    assert not b.image_valid[3] and not b.image_vectors[3].any()


# ----------------------------------------------------------------------------- compact
def test_compact_renumbers_keeps_results_and_frees_disk(
        use_fake_encoders: type[FakeEncoder], world: tuple[Path, list[str]],
        tmp_path: Path) -> None:
    root, rel = world
    ddir = _build(dataset_from_files(root, rel[:20]), tmp_path)
    _add(dataset_from_files(root, rel[2:]), ddir)  # 2 removed, 4 added
    _add(dataset_from_files(root, [r for r in rel[2:] if r != rel[10]]), ddir)
    idx = _open(ddir)
    q = idx.image_vectors[np.flatnonzero(idx.image_valid)[:5]]
    before = [[idx.images["file"][i] for i in row] for row in idx.search(q, 6)[1]]
    res = run_cli("compact", "--index", ddir, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["removed_images"], out["removed_captions"], out["generation"]) == (3, 6, 3)
    assert out["freed_bytes"] > 0 and out["bytes_after"] < out["bytes_before"]
    assert out["dropped_generations"] == [1, 2]  # folders: generation 0 was the top level
    assert sorted(p.name for p in (ddir / ".generations").iterdir()) == ["g3"]
    new = _open(ddir)
    assert new.images["row_id"].tolist() == list(range(len(rel) - 3))
    assert new.image_valid.all() and new.caption_valid.all()
    assert set(new.captions["image_row_id"]) == set(range(len(rel) - 3))
    after = [[new.images["file"][i] for i in row] for row in new.search(q, 6)[1]]
    assert after == before
    assert np.array_equal(np.load(ddir / "fake-a" / "images.npy"), new.image_vectors)
    assert len(pd.read_parquet(ddir / "images.parquet")) == len(rel) - 3


# ----------------------------------------------------------------------------- IVF
class ClusterEncoder(FakeEncoder):
    """Clustered synthetic vectors keyed by file name (nothing is read from disk)."""

    centres = np.random.default_rng(7).standard_normal((12, FAKE_DIM))

    def _one(self, path: str) -> np.ndarray:
        seed = int(hashlib.sha256(Path(path).name.encode()).hexdigest(), 16) % 2**32
        rng = np.random.default_rng(seed)
        v = self.centres[rng.integers(len(self.centres))] + 0.35 * rng.standard_normal(FAKE_DIM)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def iter_image_batches(self, files: Sequence[Any], *, batch_size: int | None = None,
                           **_: Any) -> Iterator[FakeBatch]:
        bs = batch_size or 64
        for b in range(0, len(files), bs):
            chunk = files[b:b + bs]
            FakeEncoder.encoded_images += len(chunk)
            yield FakeBatch(b, np.stack([self._one(str(f)) for f in chunk]))


def _recall(idx: Any, queries: np.ndarray) -> float:
    from clipindex.index.kinds import brute_force

    live = np.flatnonzero(idx.image_valid)
    _, truth = brute_force(idx.image_vectors[live], queries, 10)
    truth = live[truth]
    _, found = idx.search(queries, 10)
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))


def test_ivf_add_keeps_recall_and_retrains_past_twice_its_training_size(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from clipindex.encode import backbones
    from clipindex.encode import encoder as encoders

    monkeypatch.setattr(backbones, "resolve_backbone", fake_resolve)
    monkeypatch.setattr(encoders, "load_encoder",
                        lambda spec, **kw: ClusterEncoder(fake_resolve(spec) if isinstance(
                            spec, str) else spec))
    rel = [f"x/{i:04d}.jpg" for i in range(1000)]
    root = tmp_path / "nofiles"
    ddir = _build(dataset_from_files(root, rel[:400]), tmp_path / "A", index_kind="ivf")
    q = ClusterEncoder(fake_resolve("fake-a")).iter_image_batches(
        [f"q/{i}.jpg" for i in range(100)], batch_size=100)
    queries = next(q).vectors
    _add(dataset_from_files(root, rel[:700]), ddir)  # 700 <= 2 x 400: add_with_ids
    desc = _open(ddir).index_description("images")
    assert desc["trained_n"] == 400 and desc["ntotal"] == 700 and "recall_at_10" in desc
    full = _build(dataset_from_files(root, rel[:700]), tmp_path / "B", index_kind="ivf")
    assert abs(_recall(_open(ddir), queries) - _recall(_open(full), queries)) <= 0.02
    _add(dataset_from_files(root, rel), ddir)  # 1000 > 2 x 400: re-trained
    desc = _open(ddir).index_description("images")
    assert (desc["trained_n"], desc["trained_at_generation"], desc["ntotal"]) == (1000, 2, 1000)
    full = _build(dataset_from_files(root, rel), tmp_path / "C", index_kind="ivf")
    assert abs(_recall(_open(ddir), queries) - _recall(_open(full), queries)) <= 0.02


# ----------------------------------------------------------------------------- CLI
def test_cli_add_on_a_class_folder_with_tiny_vit(colors_store: Path, tmp_path: Path) -> None:
    data = tmp_path / "colors"
    shutil.copytree(colors_store.parent.parent / "data" / "colors", data)
    ddir = tmp_path / "indexes" / "colors"
    shutil.copytree(colors_store, ddir)
    moved = tmp_path / "moved" / "colors"  # the same relative paths under another root
    shutil.copytree(data, moved)
    res = run_cli("add", moved, "--index", ddir, "--no-progress", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert res.stderr.strip().splitlines()[-1] == "encoded 0 new images, removed 0"
    shutil.copy(data / "red" / "01.jpg", data / "red" / "09.jpg")
    (data / "blue" / "02.jpg").unlink()
    caps = pd.read_csv(data / "captions.csv")
    caps[caps["file"] != "blue/02.jpg"].to_csv(data / "captions.csv", index=False)
    res = run_cli("build", data, "--backbone", "tiny-vit", "--out", ddir.parent,
                  "--no-progress")
    assert_one_line_error(res, f"clipindex add {data} --index {ddir}", "--rebuild")
    res = run_cli("add", data, "--index", ddir, "--no-progress", "--workers", "0", "--json")
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert (facts["added"], facts["removed"], facts["generation"]) == (1, 1, 1)
    assert res.stderr.strip().splitlines()[-1] == "encoded 1 new images, removed 1"
    idx = _open(ddir, "tiny-vit")
    assert idx.images["file"].iloc[-1] == "red/09.jpg"
    # The copy has the same pixels as red/01.jpg: its vector is that row's.
    twin = int(np.flatnonzero(idx.images["file"] == "red/01.jpg")[0])
    assert np.allclose(idx.image_vectors[-1], idx.image_vectors[twin], atol=1e-6)
    res = run_cli("build", data, "--backbone", "tiny-vit", "--out", ddir.parent,
                  "--no-progress")
    assert res.exit_code == 0 and "up to date" in res.stderr, res.output
    res = run_cli("add", tmp_path / "nowhere", "--index", ddir)
    assert res.exit_code == 2
    res = run_cli("add", data, "--index", tmp_path, "--no-progress")
    assert_one_line_error(res, "not a clipindex store")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not these weights")
    res = run_cli("add", data, "--index", ddir, "--backbone", "tiny-vit", "--pretrained", junk)
    assert_one_line_error(res, "'tiny-vit' is built in", "(tiny-vit) with other weights than "
                          f"--pretrained {junk}", f"--pretrained {junk} --out")


@pytest.mark.parametrize("kind", ["hnsw", "pq"])
def test_kinds_without_cheap_removal_drop_tombstones_and_keep_recall(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str) -> None:
    """HNSW cannot remove ids (rebuilt from the live vectors), PQ removes them: either
    way a tombstoned row is never returned and recall stays that of a full build."""
    from clipindex.encode import backbones
    from clipindex.encode import encoder as encoders

    monkeypatch.setattr(backbones, "resolve_backbone", fake_resolve)
    monkeypatch.setattr(encoders, "load_encoder",
                        lambda spec, **kw: ClusterEncoder(fake_resolve(spec) if isinstance(
                            spec, str) else spec))
    rel = [f"x/{i:04d}.jpg" for i in range(500)]
    root = tmp_path / "nofiles"
    ddir = _build(dataset_from_files(root, rel[:300]), tmp_path / "A", index_kind=kind)
    _add(dataset_from_files(root, rel[20:]), ddir)  # 20 removed, 200 added
    full = _build(dataset_from_files(root, rel), tmp_path / "B", index_kind=kind)
    idx, ref = _open(ddir), _open(full)
    assert np.array_equal(idx.image_vectors[20:], ref.image_vectors[20:])
    assert idx.index_description("images")["ntotal"] == 480
    queries = next(ClusterEncoder(fake_resolve("fake-a")).iter_image_batches(
        [f"q/{i}.jpg" for i in range(60)], batch_size=60)).vectors
    _, ids = idx.search(queries, 50)
    assert (ids >= 0).all() and not np.isin(ids, np.arange(20)).any()
    assert abs(_recall(idx, queries) - _recall(ref, queries)) <= 0.02
