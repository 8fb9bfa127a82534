"""clipindex.store: build, resume, skipped inputs, reopening and its checks, old stores.

Most tests use the stand-in encoders of ``fixtures_store`` (vectors from decoded pixels,
no weights); the ``demo_store`` tests use the real tiny backbones on the demo world.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_store import (
    DEMO_PER_CLASS,
    FAKE_DIM,
    FakeEncoder,
    dataset_from_files,
    fake_resolve,
    make_image_dataset,
    write_images,
)

from clipindex.errors import DataError, IncompleteIndexError, IndexMismatchError
from clipindex.index.kinds import brute_force
from clipindex.store import (
    BuildInterrupted,
    build_store,
    list_backbones,
    open_index,
    store_info,
)

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

KW = {"batch_size": 4, "shard_size": 8, "progress": False, "workers": 0}


@pytest.fixture
def toy(tmp_path):
    return make_image_dataset(tmp_path / "data", n_per_class=11)  # 22 images: 3 shards


def _expected(ds, backbone="fake-a") -> np.ndarray:
    enc = FakeEncoder(fake_resolve(backbone))
    return np.stack([enc._one(str(p)) for p in ds.image_paths()])


def test_build_reopen_and_search_equal_brute_force(toy, tmp_path, use_fake_encoders):
    paths = build_store(toy, ["fake-a", "fake-b"], out=tmp_path / "out", **KW)
    assert [p.name for p in paths] == ["fake-a", "fake-b"]
    ddir = tmp_path / "out" / "toy"
    assert list_backbones(ddir) == ["fake-a", "fake-b"]
    assert not (paths[0] / "shards").exists()
    idx = open_index(ddir, "fake-a")
    np.testing.assert_allclose(idx.image_vectors, _expected(toy), atol=1e-6)
    assert idx.image_vectors.dtype == np.float32 and idx.dim == FAKE_DIM
    pd.testing.assert_frame_equal(idx.images, toy.images, check_dtype=False)
    m = idx.manifest
    assert m["n_images"] == 22 and m["n_captions"] == 44 and m["skipped"] == []
    assert m["dataset_fingerprint"] == toy.info["fingerprint"]
    assert set(m["files"]) == {"images.npy", "captions.npy", "images.faiss", "captions.faiss"}
    assert m["timings"]["images_per_s"] > 0 and m["params"] == 1234
    for target, vectors in (("images", idx.image_vectors), ("captions", idx.caption_vectors)):
        q = vectors[:7]
        s, i = idx.search(q, 10, target=target)
        rs, ri = brute_force(vectors, q, 10)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_allclose(s, rs, atol=1e-5)
        rows = np.arange(1, len(vectors), 3)
        s, i = idx.search(q, 10, target=target, rows=rows)
        rs, ri = brute_force(vectors, q, 10, rows=rows)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_allclose(s, rs, atol=1e-5)
    # a second open (a fresh process would do the same) gives identical vectors
    again = open_index(ddir, "fake-a")
    np.testing.assert_array_equal(again.caption_vectors, idx.caption_vectors)


def _recall_at_10(idx, target: str) -> float:
    """Recall@10 of the store's kind on the build's held-out rows (the same seeded draw),
    recomputed here: an index of that kind over the other valid rows, searched as the
    store searches (rescored), against numpy brute force over those rows."""
    from clipindex.index.kinds import build_index
    from clipindex.index.topk import top_k
    from clipindex.index.tuning import RERANK_FACTOR, AutoSettings, held_out_sets

    vectors, valid = ((idx.image_vectors, idx.image_valid) if target == "images"
                      else (idx.caption_vectors, idx.caption_valid))
    kind = idx.index_description(target)["kind"]
    ids = np.flatnonzero(valid)
    held = held_out_sets(vectors, ids, {}, "x", AutoSettings(queries=200, k=10)).rows
    rest = np.setdiff1d(ids, held)
    index = build_index(vectors[rest], rest, kind=kind)
    _, got = top_k(index, vectors, vectors[held], 10, rerank=RERANK_FACTOR[kind])
    keep = np.zeros(len(vectors), bool)
    keep[rest] = True
    _, truth = brute_force(vectors, vectors[held], 10, keep)
    assert not np.isin(got, held).any()  # no query finds itself
    return float(np.mean([len(set(g) & set(t)) / len(t)
                          for g, t in zip(got, truth, strict=True)]))


#: Recall@10 measured on the 90-image toy store (fake-a, FAISS 1.x): ivf 1.0 on images,
#: 0.55 on captions (the stand-in's text vectors are uniform noise, which IVF's cells cut
#: badly), hnsw 1.0 on both. The floors leave room for FAISS versions, not for a broken
#: index (a random top-10 of 90 rows has recall ~0.11).
RECALL_FLOOR = {("ivf", "images"): 0.95, ("ivf", "captions"): 0.45,
                ("hnsw", "images"): 0.95, ("hnsw", "captions"): 0.95}


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_report_recall(tmp_path, use_fake_encoders, kind):
    ds = make_image_dataset(tmp_path / "data", n_per_class=45)
    build_store(ds, ["fake-a"], out=tmp_path / "out", index_kind=kind, **KW)
    idx = open_index(tmp_path / "out" / "toy", "fake-a")
    desc = idx.manifest["index"]
    assert desc["kind"] == kind and desc["images"]["kind"] == kind
    for target in ("images", "captions"):
        recall = _recall_at_10(idx, target)  # what the index really finds
        assert desc[target]["recall_at_10"] == pytest.approx(recall, abs=1e-4)
        assert desc[target]["held_out_queries"] == (9 if target == "images" else 18)
        assert recall >= RECALL_FLOOR[kind, target], (target, recall)
    q = idx.image_vectors[:5]
    s, i = idx.search(q, 10)
    exact = np.einsum("qd,qkd->qk", q, idx.image_vectors[np.where(i >= 0, i, 0)])
    np.testing.assert_allclose(s[i >= 0], exact[i >= 0], atol=1e-5)


def test_float16_storage(toy, tmp_path, use_fake_encoders):
    build_store(toy, ["fake-a"], out=tmp_path / "out", dtype="float16", **KW)
    idx = open_index(tmp_path / "out" / "toy", "fake-a")
    assert np.load(idx.path / "images.npy").dtype == np.float16
    assert idx.image_vectors.dtype == np.float32
    np.testing.assert_allclose(idx.image_vectors, _expected(toy), atol=2e-3)
    s, i = idx.search(idx.image_vectors[:3], 5)
    rs, ri = brute_force(idx.image_vectors, idx.image_vectors[:3], 5)
    np.testing.assert_allclose(s, rs, atol=1e-5)


def test_new_index_kind_or_dtype_reuses_the_stored_vectors(tmp_path, use_fake_encoders,
                                                           caplog):
    ds = make_image_dataset(tmp_path / "data", n_per_class=45)
    out = tmp_path / "out"
    build_store(ds, ["fake-a"], out=out, **KW)
    first = open_index(out / "toy", "fake-a")
    flat_vectors, flat_captions = first.image_vectors.copy(), first.caption_vectors.copy()

    FakeEncoder.encoded_images = 0
    with caplog.at_level(logging.INFO, logger="clipindex.store"):
        build_store(ds, ["fake-a"], out=out, index_kind="hnsw", **KW)
    assert FakeEncoder.encoded_images == 0
    assert "re-indexed" in caplog.text and "nothing encoded" in caplog.text
    idx = open_index(out / "toy", "fake-a")
    assert idx.manifest["index"]["kind"] == "hnsw"
    assert idx.manifest["reindexed"]["from_index_kind"] == "auto"  # the default: flat here
    assert idx.manifest["timings"] == first.manifest["timings"]  # the encode it came from
    np.testing.assert_array_equal(idx.image_vectors, flat_vectors)
    np.testing.assert_array_equal(idx.caption_vectors, flat_captions)
    recall = _recall_at_10(idx, "images")
    assert idx.manifest["index"]["images"]["recall_at_10"] == pytest.approx(recall, abs=1e-4)
    assert recall >= RECALL_FLOOR["hnsw", "images"]
    assert not (idx.path / ".reindex").exists()

    # float32 -> float16 is a conversion of what is stored ...
    build_store(ds, ["fake-a"], out=out, index_kind="hnsw", dtype="float16", **KW)
    assert FakeEncoder.encoded_images == 0
    idx = open_index(out / "toy", "fake-a")
    assert np.load(idx.path / "images.npy").dtype == np.float16
    np.testing.assert_array_equal(idx.image_vectors,
                                  flat_vectors.astype(np.float16).astype(np.float32))
    # ... float16 -> float32 needs the dropped bits back: it re-encodes.
    build_store(ds, ["fake-a"], out=out, **KW)
    assert FakeEncoder.encoded_images == len(ds.images)
    idx = open_index(out / "toy", "fake-a")
    assert "reindexed" not in idx.manifest
    np.testing.assert_allclose(idx.image_vectors, flat_vectors, atol=1e-6)


def test_interrupted_reindex_leaves_the_old_store_whole(toy, tmp_path, use_fake_encoders,
                                                       monkeypatch):
    import clipindex.store.outputs as outputs_mod

    out = tmp_path / "out"
    build_store(toy, ["fake-a"], out=out, **KW)
    real = outputs_mod.build_faiss
    calls = []

    def dies_on_the_captions(vectors, valid, kind, path, **kw):
        calls.append(path.name)
        if path.name == "captions.faiss":
            raise KeyboardInterrupt  # Ctrl-C halfway through the new files
        return real(vectors, valid, kind, path, **kw)

    monkeypatch.setattr(outputs_mod, "build_faiss", dies_on_the_captions)
    with pytest.raises(KeyboardInterrupt):
        build_store(toy, ["fake-a"], out=out, index_kind="hnsw", **KW)
    assert calls == ["images.faiss", "captions.faiss"]
    idx = open_index(out / "toy", "fake-a")  # still the finished flat store
    assert idx.manifest["index"]["kind"] == "auto"
    assert idx.manifest["index"]["images"]["kind"] == "flat"
    np.testing.assert_allclose(idx.image_vectors, _expected(toy), atol=1e-6)
    assert (idx.path / ".reindex").is_dir()

    monkeypatch.setattr(outputs_mod, "build_faiss", real)
    FakeEncoder.encoded_images = 0
    build_store(toy, ["fake-a"], out=out, index_kind="hnsw", **KW)
    assert FakeEncoder.encoded_images == 0
    assert open_index(out / "toy", "fake-a").manifest["index"]["kind"] == "hnsw"
    assert not (idx.path / ".reindex").exists()


def test_interrupted_build_resumes_without_reencoding(toy, tmp_path, use_fake_encoders,
                                                      caplog):
    out = tmp_path / "out"
    with pytest.raises(BuildInterrupted):
        build_store(toy, ["fake-a"], out=out, _stop_after_shards=2, **KW)
    bdir = out / "toy" / "fake-a"
    assert not (bdir / "manifest.json").exists()
    assert len(list((bdir / "shards").glob("images-*.json"))) == 2
    with pytest.raises(IncompleteIndexError, match="no manifest.json"):
        open_index(out / "toy", "fake-a")
    assert list_backbones(out / "toy", unfinished=True) == ["fake-a"]
    assert FakeEncoder.encoded_images == 16
    FakeEncoder.encoded_images = 0
    with caplog.at_level(logging.INFO, logger="clipindex.store"):
        build_store(toy, ["fake-a"], out=out, **KW)
    assert FakeEncoder.encoded_images == 22 - 16  # only the unfinished shard
    assert "reusing 2 finished shard(s)" in caplog.text
    encoded = [r.getMessage() for r in caplog.records if "encoded shard images" in r.getMessage()]
    assert encoded == ["encoded shard images-00002"]
    resumed = open_index(out / "toy", "fake-a")
    assert resumed.manifest["timings"]["shards_reused"] == 2
    build_store(toy, ["fake-a"], out=tmp_path / "ref", **KW)
    ref = open_index(tmp_path / "ref" / "toy", "fake-a")
    np.testing.assert_allclose(resumed.image_vectors, ref.image_vectors, atol=1e-5)
    np.testing.assert_allclose(resumed.caption_vectors, ref.caption_vectors, atol=1e-5)


def test_finished_store_is_up_to_date(toy, tmp_path, use_fake_encoders, caplog):
    build_store(toy, ["fake-a"], out=tmp_path / "out", **KW)
    FakeEncoder.encoded_images = 0
    with caplog.at_level(logging.INFO, logger="clipindex.store"):
        build_store(toy, ["fake-a"], out=tmp_path / "out", **KW)
    assert FakeEncoder.encoded_images == 0 and "up to date" in caplog.text


def test_mismatched_shards_are_not_reused(toy, tmp_path, use_fake_encoders):
    out = tmp_path / "out"
    with pytest.raises(BuildInterrupted):
        build_store(toy, ["fake-a"], out=out, _stop_after_shards=1, **KW)
    meta = out / "toy" / "fake-a" / "shards" / "images-00000.json"
    rec = json.loads(meta.read_text())
    rec["stamp"]["dataset_fingerprint"] = "something else"
    meta.write_text(json.dumps(rec))
    FakeEncoder.encoded_images = 0
    build_store(toy, ["fake-a"], out=out, **KW)
    assert FakeEncoder.encoded_images == 22


def _corrupt_dataset(root: Path):
    rel = write_images(root, 6)
    good = (root / rel[0]).read_bytes()
    (root / "cat" / "trunc.jpg").write_bytes(good[: len(good) // 3])
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.jpg").write_text("this is not an image\n")
    bad = ["cat/trunc.jpg", "cat/empty.jpg", "dog/missing.jpg", "dog/notes.jpg"]
    return dataset_from_files(root, rel[:3] + bad + rel[3:]), bad


def test_corrupt_inputs_are_skipped_with_reasons(tmp_path, use_fake_encoders):
    ds, bad = _corrupt_dataset(tmp_path / "data")
    build_store(ds, ["fake-a"], out=tmp_path / "out", **KW)
    idx = open_index(tmp_path / "out" / "toy", "fake-a")
    skipped = idx.manifest["skipped"]
    assert [s["file"] for s in skipped] == bad
    assert [s["row_id"] for s in skipped] == [3, 4, 5, 6]
    assert all(s["reason"] for s in skipped)
    assert "No such file" in skipped[2]["reason"]
    assert not idx.image_vectors[3:7].any()
    assert idx.image_valid.tolist() == [i not in (3, 4, 5, 6) for i in range(len(ds.images))]
    q = np.random.default_rng(0).standard_normal((20, FAKE_DIM)).astype(np.float32)
    _, ids = idx.search(q, len(ds.images))
    assert not np.isin(ids, [3, 4, 5, 6]).any()
    assert (ids[:, -4:] == -1).all()  # fewer valid rows than k
    info = store_info(tmp_path / "out" / "toy")
    assert info["backbones"][0]["n_skipped"] == 4



def test_a_dangling_link_in_a_class_folder_is_a_recorded_skip(tmp_path, use_fake_encoders):
    from clipindex.sources import load_dataset

    root = tmp_path / "data"
    write_images(root, 3)
    (root / "cat" / "link.jpg").symlink_to(root / "cat" / "gone.jpg")  # inside the root
    ds = load_dataset(root)
    assert "cat/link.jpg" in ds.images["file"].tolist()  # listed, not silently dropped
    build_store(ds, ["fake-a"], out=tmp_path / "out", **KW)
    skipped = open_index(tmp_path / "out" / root.name, "fake-a").manifest["skipped"]
    assert [s["file"] for s in skipped] == ["cat/link.jpg"]
    assert "No such file" in skipped[0]["reason"]  # the real encoder says "missing file"


def test_strict_makes_corrupt_inputs_fatal(tmp_path, use_fake_encoders):
    ds, bad = _corrupt_dataset(tmp_path / "data")
    with pytest.raises(DataError, match="cat/trunc.jpg"):
        build_store(ds, ["fake-a"], out=tmp_path / "out", strict=True, **KW)
    assert list_backbones(tmp_path / "out" / "toy") == []
    with pytest.raises(IncompleteIndexError):
        open_index(tmp_path / "out" / "toy", "fake-a")


def test_open_errors(toy, tmp_path, use_fake_encoders):
    out = tmp_path / "out"
    build_store(toy, ["fake-a"], out=out, **KW)
    with pytest.raises(IndexMismatchError, match="Built: fake-a"):
        open_index(out / "toy", "fake-b")
    with pytest.raises(IndexMismatchError, match="Built: fake-a"):
        open_index(out / "toy", "no-such-backbone")
    with pytest.raises(ValueError, match="no dataset.json"):
        open_index(out / "toy" / "fake-a", "fake-a")
    idx = open_index(out / "toy", "fake-a")
    with pytest.raises(IndexMismatchError, match="dim"):
        idx.search(np.ones((1, FAKE_DIM + 1), np.float32), 3)
    # a flipped byte in a stored matrix is caught by its sha256
    path = out / "toy" / "fake-a" / "images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexMismatchError, match="sha256"):
        open_index(out / "toy", "fake-a")


def test_changed_dataset_is_refused_or_rebuilt(toy, tmp_path, use_fake_encoders):
    out = tmp_path / "out"
    build_store(toy, ["fake-a", "fake-b"], out=out, **KW)
    changed = dataset_from_files(toy.root, toy.images["file"].tolist()[:-2])
    with pytest.raises(DataError, match="another version"):
        build_store(changed, ["fake-a"], out=out, **KW)
    assert open_index(out / "toy", "fake-b").manifest["n_images"] == 22  # untouched
    build_store(changed, ["fake-a"], out=out, rebuild=True, **KW)
    assert open_index(out / "toy", "fake-a").manifest["n_images"] == 20
    with pytest.raises(IndexMismatchError, match="another version"):
        open_index(out / "toy", "fake-b")
    stale = {b["backbone_folder"]: b["stale"] for b in store_info(out / "toy")["backbones"]}
    assert stale == {"fake-a": False, "fake-b": True}


def test_concurrent_build_of_one_folder_is_refused(toy, tmp_path, use_fake_encoders):
    import os

    from clipindex.errors import UserInputError
    from clipindex.store.lock import LOCK_NAME, build_lock

    out = tmp_path / "out"
    held_by_me = f"another clipindex build \\(pid {os.getpid()}\\)"
    with build_lock(out / "toy"):
        with pytest.raises(UserInputError, match=held_by_me):
            build_store(toy, ["fake-a"], out=out, **KW)
        # nothing written besides the lock file
        assert sorted(p.name for p in (out / "toy").iterdir()) == [LOCK_NAME]
    build_store(toy, ["fake-a"], out=out, **KW)  # released on exit
    assert open_index(out / "toy", "fake-a").manifest["n_images"] == 22
    assert list_backbones(out / "toy") == ["fake-a"]


def test_pretrained_none_and_checkpoint_get_own_folders(toy, tmp_path, use_fake_encoders):
    ckpt = tmp_path / "my-weights.pt"
    ckpt.write_bytes(b"weights v1")
    out = tmp_path / "out"
    build_store(toy, ["fake-a"], out=out, pretrained="none", **KW)
    paths = build_store(toy, ["fake-a"], out=out, pretrained=str(ckpt), **KW)
    assert list_backbones(out / "toy") == ["fake-a__my-weights", "fake-a__none"]
    m = open_index(out / "toy", "fake-a__my-weights").manifest
    assert m["weights"].startswith("sha256:") and len(m["checkpoint_sha256"]) == 64
    # the same path with other bytes is another model: the store is rebuilt
    ckpt.write_bytes(b"weights v2")
    FakeEncoder.encoded_images = 0
    build_store(toy, ["fake-a"], out=out, pretrained=str(ckpt), **KW)
    assert FakeEncoder.encoded_images == 22
    assert open_index(out / "toy", "fake-a", pretrained=str(ckpt)).path == paths[0]
    build_store(toy, ["fake-a"], out=out, **KW)  # the default weights beside them
    assert open_index(out / "toy", "fake-a", pretrained="none").name == "fake-a__none"
    assert open_index(out / "toy", "fake-a").name == "fake-a"


def test_text_vectors_are_cached_in_the_store(toy, tmp_path, use_fake_encoders, monkeypatch):
    build_store(toy, ["fake-a"], out=tmp_path / "out", **KW)
    idx = open_index(tmp_path / "out" / "toy", "fake-a")
    calls = []
    original = FakeEncoder.encode_texts

    def counting(self, texts):
        calls.append(list(texts))
        return original(self, texts)

    monkeypatch.setattr(FakeEncoder, "encode_texts", counting)
    v = idx.text_vectors(["a cat", "a dog", "a cat"])
    assert v.shape == (3, FAKE_DIM) and calls == [["a cat", "a dog"]]
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(v[0], v[2])
    reopened = open_index(tmp_path / "out" / "toy", "fake-a")
    np.testing.assert_array_equal(reopened.text_vectors(["a dog", "a cat"]), v[[1, 0]])
    assert len(calls) == 1  # served from text_cache.npz
    reopened.text_vectors(["a cow"])
    assert calls[-1] == ["a cow"]


def test_bad_arguments_fail_before_writing(toy, tmp_path, use_fake_encoders):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="Known: fake-a"):
        build_store(toy, ["fake-a", "nope"], out=out, **KW)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        build_store(toy, ["fake-a"], out=out, batch_size=4, shard_size=6)
    with pytest.raises(ValueError, match="Known: auto, flat"):
        build_store(toy, ["fake-a"], out=out, index_kind="annoy")
    assert not out.exists()


# ----------------------------------------------------------------------------- real demo
def test_demo_store_three_tiny_backbones(demo_store):
    from clipindex import tiny

    assert list_backbones(demo_store) == sorted(tiny.TINY_BACKBONES)
    info = store_info(demo_store)
    assert info["n_images"] == 5 * DEMO_PER_CLASS and not info["unfinished"]
    for name in tiny.TINY_BACKBONES:
        idx = open_index(demo_store, name)
        assert idx.image_vectors.shape == (5 * DEMO_PER_CLASS, idx.dim)
        valid = idx.image_valid
        q = idx.image_vectors[valid][:10]
        s, i = idx.search(q, 10)
        rs, ri = brute_force(idx.image_vectors, q, 10, valid)
        np.testing.assert_allclose(s, rs, atol=1e-5)
        same = (i == ri) | np.isclose(rs, np.roll(rs, 1, axis=1), atol=1e-6)
        assert same.all()  # equal ids, except where two rows tie in score
        test_rows = np.flatnonzero(idx.images["split"].to_numpy() == "test")
        s, i = idx.search(q, 10, rows=test_rows)
        rs, ri = brute_force(idx.image_vectors, q, 10, valid, rows=test_rows)
        np.testing.assert_allclose(s, rs, atol=1e-5)
        assert np.isin(i, test_rows).all()


def test_demo_store_vectors_match_a_fresh_encoding(demo_store):
    from clipindex import tiny

    idx = open_index(demo_store, tiny.TINY_BACKBONES[0])
    enc = idx.encoder(device="cpu")
    files = [str(Path(idx.dataset_info["root"]) / f) for f in idx.images["file"][:8]]
    batch = next(iter(enc.iter_image_batches(files, batch_size=8, workers=0, progress=False)))
    np.testing.assert_allclose(batch.vectors, idx.image_vectors[:8], atol=1e-5)
    texts = idx.captions["text"][:4].tolist()
    np.testing.assert_allclose(idx.text_vectors(texts), idx.caption_vectors[:4], atol=1e-5)


def test_copy_of_demo_store_opens(demo_store, tmp_path):
    copy = tmp_path / demo_store.name
    shutil.copytree(demo_store, copy)
    assert list_backbones(copy) == list_backbones(demo_store)


# ----------------------------------------------------------------------------- old stores
STORE_V1 = Path(__file__).resolve().parent / "data" / "store-v1"  # see its README.md


@pytest.fixture
def store_v1(tmp_path) -> Path:
    """A copy (queries write a text cache) of the store written by the code of beacc4a."""
    copy = tmp_path / "store-v1"
    shutil.copytree(STORE_V1, copy)
    return copy


def test_store_written_by_format_1_code_opens(store_v1, caplog):
    from clipindex.search import search_text
    from clipindex.sources import fingerprint, load_dataset

    ddir = store_v1 / "indexes" / "colors"
    idx = open_index(ddir, "tiny-vit")
    assert idx.manifest["format_version"] == 1 and idx.dim == 64
    bdir = ddir / "tiny-vit"
    np.testing.assert_array_equal(idx.image_vectors, np.load(bdir / "images.npy"))
    np.testing.assert_array_equal(idx.caption_vectors, np.load(bdir / "captions.npy"))
    assert idx.image_valid.tolist() == [r != 3 for r in range(12)]  # blue/03.jpg truncated
    assert idx.manifest["skipped"][0]["file"] == "blue/03.jpg"
    # search: the stored FAISS index answers as numpy brute force does
    q = idx.image_vectors[idx.image_valid]
    s, i = idx.search(q, 5)
    rs, ri = brute_force(idx.image_vectors, q, 5, idx.image_valid)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, atol=1e-5)
    # today's encoder (weights checked by sha256) reproduces the stored text vectors,
    # so queries land in the stored space; search goes through clipindex.search
    texts = idx.captions["text"].tolist()
    np.testing.assert_allclose(idx.text_vectors(texts), idx.caption_vectors, atol=1e-5)
    frame = search_text(idx, ["a small red picture"], 4)
    assert len(frame) == 4 and 3 not in frame["row_id"].tolist()
    info = store_info(ddir)
    assert info["n_images"] == 12 and info["n_captions"] == 18 and not info["unfinished"]
    (entry,) = info["backbones"]
    assert entry["backbone_folder"] == "tiny-vit" and entry["n_skipped"] == 1
    assert not entry["stale"]
    # the fingerprint the old code recorded is today's, so a rebuild leaves it alone
    ds = load_dataset(store_v1 / "colors")
    recorded = json.loads((ddir / "dataset.json").read_text())["fingerprint"]
    assert fingerprint(ds.images, ds.captions) == recorded == idx.manifest["dataset_fingerprint"]
    before = (bdir / "manifest.json").read_bytes()
    with caplog.at_level(logging.INFO, logger="clipindex.store"):
        build_store(ds, ["tiny-vit"], out=store_v1 / "indexes", workers=0, batch_size=4,
                    progress=False)
    assert "up to date" in caplog.text
    assert (bdir / "manifest.json").read_bytes() == before


def _set_format(bdir: Path, version) -> None:
    m = json.loads((bdir / "manifest.json").read_text())
    m["format_version"] = version
    (bdir / "manifest.json").write_text(json.dumps(m, indent=2))


def test_reader_refuses_a_newer_format_and_reads_every_older_one(store_v1):
    from clipindex.store.manifest import FORMAT_VERSION, READERS

    assert sorted(READERS) == list(range(1, FORMAT_VERSION + 1))  # a path per version
    ddir = store_v1 / "indexes" / "colors"
    _set_format(ddir / "tiny-vit", FORMAT_VERSION + 1)
    with pytest.raises(IndexMismatchError, match="newer clipindex.*upgrade"):
        open_index(ddir, "tiny-vit")
    with pytest.raises(IndexMismatchError, match="newer clipindex"):
        store_info(ddir)
    _set_format(ddir / "tiny-vit", 0)
    with pytest.raises(IndexMismatchError, match="cannot read"):
        open_index(ddir, "tiny-vit")
    # format 2 manifests are sealed: a format-1 manifest relabelled as 2 is refused
    _set_format(ddir / "tiny-vit", FORMAT_VERSION)
    with pytest.raises(IndexMismatchError, match="manifest_sha256 seal"):
        open_index(ddir, "tiny-vit")
    _set_format(ddir / "tiny-vit", 1)
    assert open_index(ddir, "tiny-vit").manifest["format_version"] == 1
