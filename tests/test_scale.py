"""Stores past exact search: ``--index-kind auto`` tuned to a recall target on clustered
(embedding-like) vectors, exact rescoring, memory-mapped stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipindex.index.files import load_index
from clipindex.index.kinds import brute_force
from clipindex.index.topk import exact_top_k, recall_at_k
from clipindex.index.topk import top_k as rescored_search
from clipindex.index.tuning import (
    AutoSettings,
    choose_index,
    parse_memory,
)
from clipindex.store.outputs import write_outputs

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

DIM = 384  # 30k x 384 is past the flat threshold (n * dim > 10M)
N_IMAGES, N_CAPTIONS, N_CENTRES = 30_000, 6_000, 300


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class World:
    """Cluster centres; images and captions are centres plus noise (captions further
    off, with a shared modality offset, as CLIP's text vectors are)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = _unit(rng.standard_normal((N_CENTRES, DIM)))
        self.offset = _unit(rng.standard_normal((1, DIM)))[0] * 0.3

    def images(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = self.centres[rng.integers(0, N_CENTRES, n)]
        return _unit(c + 0.9 * rng.standard_normal((n, DIM)) / np.sqrt(DIM))

    def captions(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = self.centres[rng.integers(0, N_CENTRES, n)]
        return _unit(c + self.offset + 1.1 * rng.standard_normal((n, DIM)) / np.sqrt(DIM))


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def auto_store(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("auto")
    images, captions = world.images(N_IMAGES, 1), world.captions(N_CAPTIONS, 2)
    valid = np.ones(N_IMAGES, dtype=bool)
    valid[::97] = False  # skipped rows: zero vectors, never indexed
    images[~valid] = 0
    desc = write_outputs(folder, images, captions, valid, "float32", "auto",
                         AutoSettings(target_recall=0.95, queries=300))
    return folder, images, captions, valid, desc


def test_choice_follows_size_and_budget():
    assert choose_index(1_000, 64, AutoSettings()) == ("flat", {})
    assert choose_index(1_000_000, 512, AutoSettings()) == ("ivf", {})  # cells: from data
    kind, opts = choose_index(1_000_000, 512, AutoSettings(max_memory=parse_memory("50MB")))
    assert kind == "ivfpq" and opts["pq_m"] == 32  # 50 bytes a vector - 8 for the id
    with pytest.raises(ValueError, match="too small"):
        choose_index(1_000_000, 512, AutoSettings(max_memory=parse_memory("5MB")))
    assert parse_memory("2GiB") == 2 * 1024**3 and parse_memory(123) == 123


def test_pq_code_size_candidates_and_the_choice_rule():
    from clipindex.index.pqsize import pick_pq, pq_candidates

    assert pq_candidates(10_000_000, 512, parse_memory("2GB")) == [128, 64, 32]
    assert pq_candidates(1_000_000, 512, parse_memory("50MB")) == [32, 16, 8]  # 42 B free
    assert pq_candidates(12_000, 64, parse_memory("1MB")) == [32, 16, 8]  # 2-d sub-vectors
    assert pq_candidates(1_000_000, 512, parse_memory("5MB")) == []

    def row(m, reached, p50, recall=0.96):
        return {"pq_m": m, "reached": reached, "p50_ms": p50, "recall": recall}

    # the fastest that reaches the target, not the largest that fits
    assert pick_pq([row(128, True, 2.0), row(64, True, 1.2), row(32, False, 0.8)]) == 64
    # a larger code within 5% of the fastest one's time is taken (more recall, ~free)
    assert pick_pq([row(128, True, 1.04), row(64, True, 1.0), row(32, True, 1.3)]) == 128
    # none reaches the target: the one of most recall
    assert pick_pq([row(128, False, 2.0, 0.90), row(64, False, 1.0, 0.93)]) == 64


def test_auto_records_what_it_chose_and_reached(auto_store):
    folder, _, _, valid, desc = auto_store
    img = desc["images"]
    assert desc["kind"] == "auto" and desc["target_recall"] == 0.95
    assert img["kind"] == "ivf" and img["chosen_by"] == "auto"
    assert img["tuned_knob"] == "nprobe" and img["nprobe"] == img["tuned_value"] < img["nlist"]
    assert img["reached"] and img["recall_at_10"] >= 0.95
    assert set(img["recall_at_10_by_query"]) == {"image_to_image", "text_to_image"}
    # measured on held-out halves (150 + 150 of the 300 drawn per set), tuned on the others
    assert img["held_out_by_query"] == {"image_to_image": 150, "text_to_image": 150}
    assert img["held_out_queries"] == 300 and img["ntotal"] == int(valid.sum())
    # the cell count came from candidates trained on a sample; the chosen is the cheapest
    cands = {c["nlist"]: c for c in img["cell_candidates"]}
    assert img["nlist"] in cands and len(cands) >= 2
    assert cands[img["nlist"]]["cost_dot_products"] == min(
        c["cost_dot_products"] for c in cands.values())
    # the knob: a value that reaches the target on the tuning half; the value below misses
    trials = {int(v): r for v, r in img["knob_trials"].items()}
    assert trials[img["nprobe"]] >= 0.95
    below = [v for v in trials if v < img["nprobe"]]
    assert not below or trials[max(below)] < trials[img["nprobe"]]
    assert img["p50_ms"] > 0 and img["memory_bytes"] == (folder / "images.faiss").stat().st_size
    # 6k captions x 384 is under the threshold: exact flat
    assert desc["captions"]["kind"] == "flat" and desc["captions"]["chosen_by"] == "auto"
    json.dumps(desc)  # manifest-ready


def test_recorded_recall_holds_on_fresh_queries(world, auto_store):
    folder, images, _, valid, desc = auto_store
    img = desc["images"]
    index = load_index(folder / "images.faiss", mmap=True)
    ids = np.flatnonzero(valid)
    fresh = {"image_to_image": world.images(400, 11), "text_to_image": world.captions(400, 12)}
    for name, queries in fresh.items():
        truth = exact_top_k(images, ids, queries, 10)
        scores, found = rescored_search(index, images, queries, 10,
                                        rerank=img["rerank_factor"])
        got = recall_at_k(found, truth)
        assert abs(got - img["recall_at_10_by_query"][name]) <= 0.02, (name, got)
        assert got >= 0.95 - 0.005, (name, got)  # the target, on queries not in the index
        # rescored scores are exact cosines of the returned rows
        exact = np.einsum("qd,qkd->qk", queries, images[np.where(found >= 0, found, 0)])
        np.testing.assert_allclose(scores[found >= 0], exact[found >= 0], atol=1e-5)
        assert not np.isin(found, np.flatnonzero(~valid)).any()


def test_exact_top_k_equals_brute_force(world):
    x = world.images(3000, 5)
    q = world.captions(20, 6)
    valid = np.ones(len(x), bool)
    valid[::7] = False
    got = exact_top_k(x, np.flatnonzero(valid), q, 10, chunk=512)
    np.testing.assert_array_equal(got, brute_force(x, q, 10, valid)[1])
    # leave-one-out: the query's own row never comes back
    own = np.flatnonzero(valid)[:20]
    got = exact_top_k(x, np.flatnonzero(valid), x[own], 10, exclude=own)
    assert not (got == own[:, None]).any()


# ----------------------------------------------------------------------------- stores
def _approximate_auto(monkeypatch):
    """Let ``auto`` choose an IVF index on a store of a few hundred rows (its flat
    threshold would keep such a store exact)."""
    import clipindex.index.auto as outputs_mod
    from clipindex.index import tuning

    monkeypatch.setattr(outputs_mod, "choose_index", lambda n, d, s: tuning.choose_index(
        n, d, AutoSettings(target_recall=s.target_recall, max_memory=s.max_memory,
                           flat_max_cells=0)))


def _maps() -> str:
    with open("/proc/self/maps", encoding="utf-8") as fh:
        return fh.read()


KW = {"batch_size": 4, "shard_size": 8, "progress": False, "workers": 0}


def test_opened_store_is_memory_mapped(tmp_path, use_fake_encoders):
    from fixtures_store import make_image_dataset

    from clipindex.store import build_store, open_index

    ds = make_image_dataset(tmp_path / "data", n_per_class=20)
    build_store(ds, ["fake-a"], out=tmp_path / "out", **KW)
    idx = open_index(tmp_path / "out" / "toy", "fake-a")
    assert idx.manifest["index"]["images"]["kind"] == "flat"  # auto: small stays exact
    assert isinstance(idx.stored["images"], np.memmap)
    assert isinstance(idx.image_vectors, np.memmap)  # float32: the map itself
    assert not idx.image_vectors.flags.writeable
    assert idx.index_mmapped == {"images": True, "captions": True}
    maps = _maps()
    for name in ("images.npy", "captions.npy", "images.faiss", "captions.faiss"):
        assert str(idx.path / name) in maps, name  # mapped, not read
    hits = idx.search(idx.image_vectors[:3], 5)
    assert hits.exact and hits.exhaustive
    np.testing.assert_array_equal(hits.ids, brute_force(idx.image_vectors,
                                                        idx.image_vectors[:3], 5)[1])
    # float16: the map stays float16; image_vectors is a float32 copy made on use
    build_store(ds, ["fake-a"], out=tmp_path / "f16", dtype="float16", **KW)
    half = open_index(tmp_path / "f16" / "toy", "fake-a")
    assert isinstance(half.stored["images"], np.memmap)
    assert half.stored["images"].dtype == np.float16
    assert half.image_vectors.dtype == np.float32


def test_search_on_an_approximate_auto_store_is_rescored(tmp_path, use_fake_encoders,
                                                         monkeypatch):
    from click.testing import CliRunner
    from fixtures_store import make_image_dataset

    from clipindex.cli import main
    from clipindex.store import build_store, open_index

    _approximate_auto(monkeypatch)
    ds = make_image_dataset(tmp_path / "data", n_per_class=100)
    build_store(ds, ["fake-a"], out=tmp_path / "out", target_recall=0.9, **KW)
    idx = open_index(tmp_path / "out" / "toy", "fake-a")
    desc = idx.manifest["index"]
    assert desc["kind"] == "auto" and desc["target_recall"] == 0.9
    assert desc["images"]["kind"] == "ivf" and desc["images"]["reached"]
    assert idx.index_mmapped["images"]
    q = idx.image_vectors[:7]
    hits = idx.search(q, 10)
    assert hits.exact and not hits.exhaustive
    exact = np.einsum("qd,qkd->qk", q, idx.image_vectors[hits.ids])
    np.testing.assert_allclose(hits.scores, exact, atol=1e-5)
    raw = idx.search(q, 10, rerank_factor=0)
    assert not raw.exhaustive
    # info prints what auto chose and reached; the JSON output of search says exact
    out = CliRunner().invoke(main, ["info", str(tmp_path / "out" / "toy")])
    assert out.exit_code == 0, out.output
    line = next(s for s in out.output.splitlines() if "images index: auto -> ivf" in s)
    assert "nprobe=" in line and "image to image" in line and "text to image" in line
    assert "target 0.9" in line and "p50" in line
    held = desc["images"]["held_out_queries"]  # recall of queries not in the index
    assert held > 0 and f" on {held} held-out queries (target 0.9" in line, line
    # a rerun with the same settings is up to date; another target re-tunes, no encoding
    from fixtures_store import FakeEncoder

    FakeEncoder.encoded_images = 0
    build_store(ds, ["fake-a"], out=tmp_path / "out", target_recall=0.9, **KW)
    build_store(ds, ["fake-a"], out=tmp_path / "out", target_recall=0.99, **KW)
    assert FakeEncoder.encoded_images == 0
    again = open_index(tmp_path / "out" / "toy", "fake-a").manifest["index"]
    assert again["target_recall"] == 0.99 and again["images"]["recall_at_10"] >= 0.99


def test_classify_on_an_approximate_store_equals_flat(tmp_path, use_fake_encoders,
                                                      monkeypatch):
    from fixtures_store import make_image_dataset

    from clipindex.classifiers.runner import classify
    from clipindex.store import build_store, open_index

    _approximate_auto(monkeypatch)
    ds = make_image_dataset(tmp_path / "data", n_per_class=100)
    build_store(ds, ["fake-a"], out=tmp_path / "auto", **KW)
    build_store(ds, ["fake-a"], out=tmp_path / "flat", index_kind="flat", **KW)
    assert open_index(tmp_path / "auto" / "toy", "fake-a").manifest["index"]["images"][
        "kind"] == "ivf"
    for method in ("linear-probe", "image-knn", "prompt"):
        a = classify(tmp_path / "auto" / "toy", "fake-a", method).predictions
        f = classify(tmp_path / "flat" / "toy", "fake-a", method).predictions
        assert len(a) == len(f) > 0
        assert a["predicted"].tolist() == f["predicted"].tolist(), method


def test_ivf_flat_answer_equals_its_rescored_answer(auto_store, world):
    # IVF-Flat (factor 1) returns its own answer unrescored: it must be what fetching
    # k x 4 candidates and rescoring them from the stored vectors gives.
    folder, images, _, _, desc = auto_store
    assert desc["images"]["kind"] == "ivf" and desc["images"]["rerank_factor"] == 1
    index = load_index(folder / "images.faiss")
    q = world.images(50, 11)  # held out: another seed than the store's
    fast_s, fast_i = rescored_search(index, images, q, 10, rerank=1)
    slow_s, slow_i = rescored_search(index, images, q, 10, rerank=4)
    np.testing.assert_array_equal(fast_i, slow_i)
    np.testing.assert_allclose(fast_s, slow_s, atol=1e-5)
    exact = np.einsum("qd,qkd->qk", q, images[fast_i])
    np.testing.assert_allclose(fast_s, exact, atol=1e-5)


def test_exact_top_k_keeps_the_lower_id_of_tied_rows_across_blocks():
    rng = np.random.default_rng(3)
    x = np.repeat(_unit(rng.standard_normal((5, DIM))), 20, axis=0)  # 20 copies each
    q = x[[0, 25, 99]] + 0.01
    got = exact_top_k(x, np.arange(len(x)), q, 10, chunk=16)  # ties span blocks
    np.testing.assert_array_equal(got, brute_force(x, q, 10)[1])


def test_auto_ivfpq_from_a_float16_map_without_caption_queries(tmp_path, monkeypatch, world):
    """What `import --max-index-memory` of vectors without text_emb runs: the stored
    float16 matrix stays a memory map (indexes convert it a block at a time), the empty
    caption query set is skipped, the compressed index is tuned and rescored."""
    from clipindex.index import kinds as indexes
    from clipindex.index import pqsize
    from clipindex.index.pqsize import pick_pq, pq_candidates

    _approximate_auto(monkeypatch)
    monkeypatch.setattr(indexes, "_ADD_ROWS", 1000)  # several add blocks
    monkeypatch.setattr(pqsize, "SAMPLE_ROWS", 6000)  # candidates on half the rows
    images = world.images(12_000, 8).astype(np.float16)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "captions.npy", np.zeros((0, DIM), np.float16))
    desc = write_outputs(tmp_path, None, None, np.ones(len(images), bool), "float16", "auto",
                         AutoSettings(max_memory=parse_memory("1MB"), queries=100),
                         caption_valid=np.ones(0, bool))
    img = desc["images"]
    assert img["kind"] == "ivfpq" and img["ntotal"] == len(images) and img["reached"]
    assert img["tuning_queries"] == {"image_to_image": 50}  # the other half measures
    # the code size chosen from candidates trained on a sample of the indexed rows (the
    # 100 held-out rows are in none of them), each tuned on truth within its sample
    cands = img["pq_candidates"]
    assert [c["pq_m"] for c in cands] == pq_candidates(len(images), DIM, parse_memory("1MB"))
    assert len(cands) == 3 and img["pq_m"] == pick_pq(cands)
    assert all(c["sample_rows"] == 6000 and c["reached"] for c in cands)
    full_per_cell = (len(images) - 100) / img["nlist"]
    assert all(abs(6000 / c["sample_cells"] / full_per_cell - 1) < 0.05 for c in cands)
    assert desc["captions"]["kind"] == "flat" and desc["captions"]["ntotal"] == 0
    stored = np.load(tmp_path / "images.npy", mmap_mode="r")
    q = world.images(50, 9)
    found = rescored_search(load_index(tmp_path / "images.faiss"), stored, q, 10,
                            rerank=img["rerank_factor"])[1]
    truth = brute_force(stored.astype(np.float32), q, 10)[1]
    assert recall_at_k(found, truth) >= 0.9


def test_build_index_from_a_float16_map_trains_on_a_sample_and_adds_in_blocks(
        tmp_path, monkeypatch, world):
    from clipindex.index import kinds as indexes

    monkeypatch.setattr(indexes, "_ADD_ROWS", 700)
    np.save(tmp_path / "x.npy", world.images(3000, 10).astype(np.float16))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    ids = np.arange(len(x)) * 3
    ivf = indexes._ivf(DIM, len(x), indexes.IndexSpec(kind="ivf", nlist=4))
    assert len(indexes._training_rows(ivf, len(x), 0)) == 4 * 256  # FAISS's own sample
    flat = indexes.build_index(x, ids)
    index = indexes.build_index(x, ids, kind="ivf", nlist=4, nprobe=4)  # every cell
    q = world.images(20, 11)
    want = ids[brute_force(x.astype(np.float32), q, 10)[1]]
    assert index.ntotal == flat.ntotal == len(x)
    np.testing.assert_array_equal(indexes.search_index(flat, q, 10)[1], want)
    np.testing.assert_array_equal(indexes.search_index(index, q, 10)[1], want)


def test_a_rescoring_index_is_not_over_fetched_again(tmp_path, monkeypatch):
    """search_indexes on an IVF-PQ store asks FAISS once for k x 16 candidates (the
    kind's rerank factor), not max(4k, k + 50) x 16 as the ranking and the index each
    over-fetched before; the hits stay exact cosines, the index's rescored top-10."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import _bigstore

    from clipindex.index import kinds
    from clipindex.search import search_indexes
    from clipindex.store import open_index

    ddir = _bigstore.write_store(tmp_path / "pq", 4000, kind="ivfpq", dim=64)
    index = open_index(ddir, "synthetic")
    asked: list[int] = []
    real = kinds.search_index
    monkeypatch.setattr(kinds, "search_index", lambda i, q, k, **kw: (
        asked.append(k), real(i, q, k, **kw))[1])
    x = np.asarray(index.stored["images"], np.float32)
    q = _unit(np.random.default_rng(4).standard_normal((20, 64)) + x[:20])
    found = []
    for v in q:
        frame = search_indexes(index, vectors=v, k=10).frame
        found.append(frame["row_id"].to_numpy())
        np.testing.assert_allclose(frame["score"], x[frame["row_id"]] @ v, atol=1e-5)
    assert set(asked) == {10 * 16}
    # the answer is the index's own rescored top-10 (k x 16 candidates), unchanged
    np.testing.assert_array_equal(np.array(found), index.search(q, 10)[1])


def test_stored_rows_of_a_memory_map_equal_its_rows(tmp_path):
    from clipindex.index.topk import stored_rows
    from clipindex.store.loading import load_matrix

    x = np.random.default_rng(5).standard_normal((300, 24)).astype(np.float16)
    np.save(tmp_path / "m.npy", x)
    m = load_matrix(tmp_path / "m.npy")
    ids = np.array([299, 0, 7, 7, 150])
    got = stored_rows(m, ids)  # pread, not the map
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x[ids].astype(np.float32))
    np.testing.assert_array_equal(stored_rows(m[10:], ids[1:4]), x[10:][ids[1:4]])  # a view
    np.testing.assert_array_equal(stored_rows(x, ids), x[ids].astype(np.float32))


def test_stored_rows_announce_every_read_before_reading(tmp_path, monkeypatch):
    """Rows not in the page cache are fetched at once: each row's byte range is announced
    (POSIX_FADV_WILLNEED) before the first read (cold 10M: 7.7 -> 1.8 ms for 160 rows)."""
    import os

    from clipindex.index import topk
    from clipindex.store.loading import load_matrix

    x = np.random.default_rng(6).standard_normal((300, 24)).astype(np.float16)
    np.save(tmp_path / "m.npy", x)
    m = load_matrix(tmp_path / "m.npy")
    events = []
    real_advise, real_read = os.posix_fadvise, os.preadv
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, at, n, how: events.append(
        ("advise", at, n, how)) or real_advise(fd, at, n, how))
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, at: events.append(("read", at)) or
                        real_read(fd, bufs, at))
    ids = np.array([299, 0, 7])
    np.testing.assert_array_equal(topk.stored_rows(m, ids), x[ids].astype(np.float32))
    row = 24 * 2
    assert events == [*(("advise", m.offset + i * row, row, os.POSIX_FADV_WILLNEED)
                        for i in ids), *(("read", m.offset + i * row) for i in ids)]


def test_recall_recorded_after_an_add_is_that_of_the_rescored_search(tmp_path, world):
    """update_index (what `add` runs) re-measures an IVF-PQ index's recall with its
    candidates rescored, as users search it, not from the raw PQ codes (a 10M store
    recorded 0.47 from the codes after an add, 0.97 rescored)."""
    from clipindex.index import kinds
    from clipindex.index.build import build_faiss
    from clipindex.store.update import update_index

    x = world.images(6000, 12)
    np.save(tmp_path / "m.npy", x)
    matrix = np.load(tmp_path / "m.npy", mmap_mode="r")
    desc = build_faiss(matrix[:5000], np.ones(5000, bool), "ivfpq", tmp_path / "old.faiss")
    out = update_index(tmp_path / "old.faiss", tmp_path / "new.faiss", matrix,
                       np.ones(6000, bool), 5000, {"kind": "ivfpq", "images": desc},
                       "images", lambda: {}, 1)
    index = load_index(tmp_path / "new.faiss")
    assert index.ntotal == 6000 and out["recall_measured_at_generation"] == 1
    q = world.images(200, 13)  # fresh queries, in no index
    truth = brute_force(x, q, 10)[1]
    rescored = recall_at_k(rescored_search(index, matrix, q, 10, rerank=16)[1], truth)
    raw = recall_at_k(kinds.search_index(index, q, 10)[1], truth)
    assert rescored > raw + 0.1
    assert abs(out["recall_at_10"] - rescored) < abs(out["recall_at_10"] - raw)


def test_cell_counts_are_capped_for_ten_million_rows():
    """Adding N vectors costs N x cells x dim: at 10M, 4 sqrt(N) = 12,649 cells would take
    ~3x the CPU of 4,096 to train and fill (bench_10m), so both choices stop at 4,096."""
    from clipindex.index.structure import MAX_NLIST, ivf_candidates
    from clipindex.index.tuning import choose_index

    assert MAX_NLIST == 4096
    assert max(ivf_candidates(10_000_000)) == 4096
    assert ivf_candidates(1_000_000)[0] == 1000  # below the cap: sqrt(N) first, unchanged
    kind, options = choose_index(10_000_000, 512, AutoSettings(max_memory=parse_memory("2GB")))
    assert kind == "ivfpq" and options["nlist"] == 4096
    assert choose_index(1_000_000, 512, AutoSettings(max_memory=parse_memory("1GB")))[1][
        "nlist"] == 4000
