"""FAISS indexes read on first use (issue 33): opening a store reads neither index; the
lazily read index answers exactly as one read at open; the file read is the one checked
at open, even when another was renamed into place since; a store whose index changed
is still caught at the next open, and a file truncated in place is seen by ``serve``'s
mapping check before it is read."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from clipindex.errors import DamagedStoreError
from clipindex.index.files import load_index
from clipindex.index.kinds import search_index
from clipindex.store import build_store, open_index
from clipindex.store import loading as loading_mod
from clipindex.store.loading import mapped_files, shrunk_in_place

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

KW = {"batch_size": 4, "shard_size": 8, "progress": False, "workers": 0}


@pytest.fixture
def store(tmp_path, use_fake_encoders):
    from fixtures_store import make_image_dataset

    ds = make_image_dataset(tmp_path / "data", n_per_class=20)
    build_store(ds, ["fake-a"], out=tmp_path / "out", **KW)
    return tmp_path / "out" / "toy"


def _maps() -> str:
    with open("/proc/self/maps") as f:
        return f.read()


def test_open_reads_no_index_and_a_query_reads_only_its_own(store):
    idx = open_index(store, "fake-a")
    assert not any(f.is_loaded for f in idx.faiss_files.values())
    if os.path.exists("/proc/self/maps"):
        assert str(idx.path / "images.faiss") not in _maps()
    idx.search(idx.image_vectors[:2], 3)
    assert idx.faiss_files["images"].is_loaded
    assert not idx.faiss_files["captions"].is_loaded  # an image query needs no captions


@pytest.mark.parametrize("target", ["images", "captions"])
def test_lazily_read_index_answers_as_one_read_at_open(store, target):
    idx = open_index(store, "fake-a")
    q = np.asarray(idx.stored[target][:5], dtype=np.float32)
    hits = idx.search(q, 7, target=target)
    eager = load_index(idx.path / f"{target}.faiss", mmap=True)
    scores, ids = search_index(eager, q, 7)
    np.testing.assert_array_equal(hits.ids, ids)
    np.testing.assert_array_equal(hits.scores, scores)
    assert idx.index_mmapped == {"images": True, "captions": True}


@pytest.mark.parametrize("proc", [True, False])
def test_an_index_replaced_after_open(store, monkeypatch, proc):
    """With /proc the file opened at open is read (as if read at open); without it the
    replaced file is refused. Either way the next open sees the change as damage."""
    idx = open_index(store, "fake-a")
    q = np.asarray(idx.stored["captions"][:4], dtype=np.float32)
    before = search_index(load_index(idx.path / "captions.faiss"), q, 5)
    other = store.parent / "other.faiss"
    shutil.copyfile(idx.path / "images.faiss", other)  # another valid index, other size
    os.replace(other, idx.path / "captions.faiss")
    if not proc:
        monkeypatch.setattr(loading_mod, "PROC_FD", store / "no-such-proc")
        with pytest.raises(DamagedStoreError, match="captions.faiss was replaced"):
            idx.search(q, 5, target="captions")
    else:
        hits = idx.search(q, 5, target="captions")
        np.testing.assert_array_equal(hits.ids, before[1])
    with pytest.raises(DamagedStoreError, match="captions.faiss"):
        open_index(store, "fake-a")


def test_an_unread_index_truncated_in_place_is_seen_before_it_is_read(store):
    idx = open_index(store, "fake-a")
    files = mapped_files(idx)
    assert {p.name for p, _, _ in files} == {"images.npy", "captions.npy", "images.faiss",
                                             "captions.faiss"}
    assert shrunk_in_place(files) is None
    path = idx.path / "captions.faiss"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    assert "captions.faiss was truncated" in shrunk_in_place(files)
    with pytest.raises(DamagedStoreError, match="captions.faiss is unreadable"):
        idx.search(np.asarray(idx.stored["captions"][:1], np.float32), 3, target="captions")


# ----------------------------------------------------------------------------- one rescoring
class _OneRescoring:
    """The store as rank saw it before: hits without ``rescored`` (so rank rescored
    them a second time)."""

    def __init__(self, index):
        self._index = index

    def __getattr__(self, name):
        return getattr(self._index, name)

    def search(self, *args, **kwargs):
        scores, ids = self._index.search(*args, **kwargs)
        return scores, ids


@pytest.mark.parametrize(("kind", "dtype"), [("ivf", "float32"), ("hnsw", "float32"),
                                             ("hnsw", "float16"), ("pq", "float32")])
def test_rank_does_not_rescore_twice_and_hits_stay_identical(tmp_path, use_fake_encoders,
                                                             kind, dtype):
    """An index that rescored its candidates (hnsw, pq: rerank factor > 1) hands rank
    scores it keeps; on IVF-Flat (factor 1, FAISS's own scores) rank still rescores.
    Either way hits equal, bit for bit, those of rescoring twice, with and without rows
    (a filter) and with tombstone-like invalid rows."""
    from fixtures_store import make_image_dataset

    from clipindex.search.ranking import rank

    ds = make_image_dataset(tmp_path / "data", n_per_class=45)
    build_store(ds, ["fake-a"], out=tmp_path / "out", index_kind=kind, dtype=dtype, **KW)
    idx = open_index(tmp_path / "out" / "toy", "fake-a")
    for target in ("images", "captions"):
        q = np.asarray(idx.stored[target][:9], dtype=np.float32)
        hits = idx.search(q, 12, target=target)
        assert hits.rescored == (kind != "ivf")
        for rows in (None, np.arange(0, len(idx.stored[target]), 2, dtype=np.int64)):
            new = rank(idx, q, 10, target, rows)
            old = rank(_OneRescoring(idx), q, 10, target, rows)
            np.testing.assert_array_equal(new[1], old[1])
            np.testing.assert_array_equal(new[0], old[0])
            assert (new[1] >= 0).all()
