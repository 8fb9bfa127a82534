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
