"""Search: results against a numpy brute force, filters, fusion, the CLI and bad input.

The logic is tested on a small stand-in of ``clipindex.store.BackboneIndex`` (same
attributes, real FAISS indexes from ``clipindex.index.kinds``); the end-to-end checks on
the demo world with the tiny backbones are in ``test_search_demo_*`` below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import clipindex.search.query as search_mod
from clipindex.cli import main
from clipindex.errors import DataError, UserInputError
from clipindex.index.kinds import brute_force, build_index, search_index
from clipindex.search import (
    RRF_K,
    rrf_fuse,
    search_captions,
    search_image,
    search_indexes,
    search_text,
)
from clipindex.search.filters import parse_where, where_mask
from clipindex.search.ranking import is_exact

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

LABELS = ("cat", "dog", "cow", "sheep", "horse")
DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _write_jpeg(path: Path, seed: int = 0) -> None:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


class FakeEncoder:
    """Encodes a query image by looking its file name up in the tables (or rejects it)."""

    def __init__(self, index: FakeIndex) -> None:
        self.index = index
        self.calls = 0

    def encode_images(self, files, *, workers=None, progress=True):
        self.calls += 1
        assert workers == 0 and progress is False  # a few query images: no workers, no bar
        names = dict(zip(self.index.images["file"], range(len(self.index.images)), strict=True))
        out = np.zeros((len(files), DIM), dtype=np.float32)
        skipped = []
        for i, f in enumerate(files):
            name = Path(f).name
            if name in names:
                out[i] = self.index.image_vectors[names[name]]
            else:
                skipped.append((i, "unsupported image"))
        return out, skipped


class FakeIndex:
    """A stand-in with the attributes and methods of ``BackboneIndex``."""

    def __init__(self, root: Path, seed: int, kind: str = "flat", n: int = 60) -> None:
        rng = np.random.default_rng(seed)
        centres = _unit(np.random.default_rng(99).standard_normal((len(LABELS), DIM)))
        labels = np.array([LABELS[i % len(LABELS)] for i in range(n)])
        self.centres = dict(zip(LABELS, centres, strict=True))
        self.images = pd.DataFrame(
            {
                "row_id": np.arange(n),
                "file": [f"img_{i:03d}.jpg" for i in range(n)],
                "width": rng.integers(100, 640, n),
                "height": rng.integers(100, 640, n),
                "label": labels,
                "split": np.where(np.arange(n) % 6 == 0, "support", "test"),
            }
        )
        cap_img = np.repeat(np.arange(n), 2)
        self.captions = pd.DataFrame(
            {
                "row_id": np.arange(2 * n),
                "image_row_id": cap_img,
                "text": [f"caption {j} of a {labels[i]}" for j, i in enumerate(cap_img)],
                "label": labels[cap_img],
            }
        )
        noise = 1.4 * rng.standard_normal((n, DIM))
        self.image_vectors = _unit(centres[[LABELS.index(x) for x in labels]] + noise)
        self.caption_vectors = _unit(
            self.image_vectors[cap_img] + 0.5 * rng.standard_normal((2 * n, DIM))
        )
        self.image_valid = np.ones(n, dtype=bool)
        self.image_valid[[3, 17]] = False
        self.image_vectors[~self.image_valid] = 0.0
        self.caption_valid = np.ones(2 * n, dtype=bool)
        self.caption_valid[[5]] = False
        self.caption_vectors[~self.caption_valid] = 0.0
        self.manifest = {"backbone": f"fake{seed}", "index": {"kind": kind}}
        self._faiss = {
            t: build_index(v[ok], np.flatnonzero(ok), kind=kind)
            for t, v, ok in (
                ("images", self.image_vectors, self.image_valid),
                ("captions", self.caption_vectors, self.caption_valid),
            )
        }
        self._encoder = FakeEncoder(self)
        self.search_calls = 0
        self.text_calls = 0
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for f in self.images["file"]:
            _write_jpeg(root / f)

    def search(self, queries, k, *, target="images", rows=None):
        self.search_calls += 1
        return search_index(self._faiss[target], queries, k, rows=rows)

    def encoder(self):
        return self._encoder

    def text_vectors(self, texts):
        self.text_calls += 1
        out = []
        for t in texts:
            label = next((x for x in LABELS if t.endswith(x)), None)
            if label is not None:
                out.append(self.centres[label])
            else:
                seed = sum(map(ord, t))
                out.append(_unit(np.random.default_rng(seed).standard_normal(DIM)))
        return np.stack(out).astype(np.float32)


@pytest.fixture()
def fake(tmp_path):
    return FakeIndex(tmp_path / "a", seed=1)


@pytest.fixture()
def fake_pair(tmp_path):
    return FakeIndex(tmp_path / "a", seed=1), FakeIndex(tmp_path / "b", seed=2)


QUERIES = ["a photo of a cat", "a photo of a sheep", "something else entirely"]


def _assert_matches(frame, scores, ids, n_queries):
    """The frame's (query, rank) grid holds exactly the brute-force ids and scores."""
    for q in range(n_queries):
        got = frame[frame["query_id"] == q]
        want = ids[q][ids[q] >= 0]
        assert got["rank"].tolist() == list(range(1, len(want) + 1))
        assert got["row_id"].tolist() == want.tolist()
        np.testing.assert_allclose(got["score"], scores[q][: len(want)], atol=1e-5)


# ------------------------------------------------------------------ equals brute force
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_text_search_equals_brute_force(tmp_path, kind):
    index = FakeIndex(tmp_path, seed=1, kind=kind)
    frame = search_text(index, QUERIES, k=7)
    assert index.text_calls == 1 and index.search_calls == 1  # batched
    scores, ids = brute_force(
        index.image_vectors, index.text_vectors(QUERIES), 7, index.image_valid
    )
    _assert_matches(frame, scores, ids, len(QUERIES))
    assert frame["query"].tolist() == [q for q in QUERIES for _ in range(7)]
    assert list(frame.columns[:8]) == [
        "query_id",
        "query",
        "rank",
        "score",
        "row_id",
        "file",
        "label",
        "caption",
    ]
    assert frame.attrs["notes"] == [] and frame.attrs["score_kind"] == "cosine"
    row = frame.iloc[0]
    assert row["file"] == f"img_{row['row_id']:03d}.jpg"
    assert row["caption"] == index.captions.loc[2 * row["row_id"], "text"]


def test_scores_are_exact_cosines_for_an_approximate_index(tmp_path):
    index = FakeIndex(tmp_path, seed=3, kind="pq")  # PQ scores are far from cosines
    frame = search_text(index, QUERIES, k=5)
    q = index.text_vectors(QUERIES)
    exact = np.einsum("nd,nd->n", q[frame["query_id"]], index.image_vectors[frame["row_id"]])
    np.testing.assert_allclose(frame["score"], exact, atol=1e-6)
    for _, group in frame.groupby("query_id"):
        assert group["score"].is_monotonic_decreasing


def test_skipped_rows_never_appear(fake):
    frame = search_text(fake, QUERIES, k=100)
    assert not set(frame["row_id"]) & {3, 17}
    assert len(frame) == 3 * 58
    caps = search_captions(fake, QUERIES, k=1000)
    assert 5 not in set(caps["row_id"])


def test_captions_target_equals_brute_force(fake):
    frame = search_captions(fake, QUERIES[:2], k=6)
    scores, ids = brute_force(
        fake.caption_vectors, fake.text_vectors(QUERIES[:2]), 6, fake.caption_valid
    )
    _assert_matches(frame, scores, ids, 2)
    assert {"text", "image_row_id", "file", "label"} <= set(frame.columns)
    assert (frame["image_row_id"] == frame["row_id"] // 2).all()
    first = frame.iloc[0]
    assert first["text"] == fake.captions.loc[first["row_id"], "text"]
    assert first["file"] == fake.images.loc[first["image_row_id"], "file"]


# ------------------------------------------------------------------ where
@pytest.mark.parametrize(
    "where",
    [
        ["label=dog"],
        ["label!=dog"],
        ["label=cat,cow"],
        ["width>300", "split=test"],
        ["height<=200"],
    ],
)
def test_where_equals_filtered_brute_force(fake, where):
    frame = search_text(fake, QUERIES, k=8, where=where)
    table = fake.images
    keep = np.ones(len(table), bool)
    for expr in where:  # an independent filter written with pandas' query language
        col, op, val = next(
            (expr.partition(o)[0], o, expr.partition(o)[2])
            for o in ("!=", ">=", "<=", "=", ">", "<")
            if o in expr
        )
        if op in ("=", "!="):
            hit = table[col].isin(val.split(",")).to_numpy()
            keep &= hit if op == "=" else ~hit
        else:
            keep &= table.eval(f"{col} {op} {val}").to_numpy()
    rows = np.flatnonzero(keep)
    scores, ids = brute_force(
        fake.image_vectors, fake.text_vectors(QUERIES), 8, fake.image_valid, rows=rows
    )
    # and the same as ranking everything, then dropping the rows the filter removes
    _, all_ids = brute_force(fake.image_vectors, fake.text_vectors(QUERIES), 60, fake.image_valid)
    for q in range(len(QUERIES)):
        filtered = [i for i in all_ids[q] if i >= 0 and keep[i]][:8]
        assert filtered == ids[q][ids[q] >= 0].tolist()
    _assert_matches(frame, scores, ids, len(QUERIES))
    assert keep[frame["row_id"]].all()


def test_where_on_captions_may_use_image_columns(fake):
    frame = search_captions(fake, ["a photo of a dog"], k=50, where=["split=support"])
    support = set(fake.images.index[fake.images["split"] == "support"])
    assert set(frame["image_row_id"]) <= support
    assert len(frame) == 2 * len(support)  # the skipped caption 5 is of image 2, a test row
    assert "k=50 is more than" in frame.attrs["notes"][0]


def test_parse_where_and_mask():
    conds = parse_where(["label = cat,dog", "width>=3"])
    assert [(c.column, c.op, c.values) for c in conds] == [
        ("label", "=", ("cat", "dog")),
        ("width", ">=", ("3",)),
    ]
    t = pd.DataFrame(
        {"label": ["cat", "dog", "cow"], "width": [1, 3, 5], "ok": [True, False, True]}
    )
    assert where_mask(t, ["label!=cow", "width>=3"]).tolist() == [False, True, False]
    assert where_mask(t, "ok=true").tolist() == [True, False, True]
    assert where_mask(t, "width=1,5").tolist() == [True, False, True]
    with pytest.raises(UserInputError, match="Unknown column 'colour'.*Columns: label, width, ok"):
        where_mask(t, "colour=red")
    with pytest.raises(UserInputError, match="numeric"):
        where_mask(t, "width=wide")
    with pytest.raises(UserInputError, match="needs a numeric column"):
        where_mask(t, "label>3")
    with pytest.raises(UserInputError, match="Cannot read --where"):
        parse_where("label")


def test_where_matching_nothing_is_an_error(fake):
    with pytest.raises(DataError, match="No images match --where label=zebra"):
        search_text(fake, "a cat", where="label=zebra")


# ------------------------------------------------------------------ image queries
def test_image_from_the_store_finds_itself(fake):
    paths = [fake.root / "img_010.jpg", fake.root / "img_042.jpg"]
    frame = search_image(fake, paths, k=3)
    assert fake.encoder().calls == 1
    top = frame[frame["rank"] == 1]
    assert top["row_id"].tolist() == [10, 42]
    np.testing.assert_allclose(top["score"], 1.0, atol=1e-5)
    assert top["query"].tolist() == [str(p) for p in paths]


def test_text_and_image_queries_together_keep_their_order(fake):
    res = search_indexes(fake, texts=["a photo of a cow"], images=[fake.root / "img_007.jpg"], k=2)
    assert (
        res.frame["query"].tolist()
        == ["a photo of a cow"] * 2 + [str(fake.root / "img_007.jpg")] * 2
    )
    assert res.frame.loc[res.frame["query_id"] == 1, "row_id"].iloc[0] == 7


def test_image_to_text(fake):
    frame = search_captions(fake, images=[fake.root / "img_020.jpg"], k=4)
    scores, ids = brute_force(fake.caption_vectors, fake.image_vectors[[20]], 4, fake.caption_valid)
    _assert_matches(frame, scores, ids, 1)


# ------------------------------------------------------------------ fusion
def _independent_rrf(indexes, queries, k, depth, rows=None):
    out = []
    for qi, text in enumerate(queries):
        fused: dict[int, float] = {}
        for index in indexes:
            q = index.text_vectors([text])
            s = (index.image_vectors @ q[0]).astype(np.float64)
            allowed = index.image_valid.copy()
            if rows is not None:
                allowed &= np.isin(np.arange(len(allowed)), rows)
            order = sorted(np.flatnonzero(allowed), key=lambda i: (-s[i], i))
            for r, row in enumerate(order[:depth], start=1):
                fused[row] = fused.get(row, 0.0) + 1.0 / (60 + r)
        for rank, (row, score) in enumerate(
            sorted(fused.items(), key=lambda t: (-t[1], t[0]))[:k], start=1
        ):
            out.append((qi, rank, row, score))
    return out


def test_rrf_fusion_equals_independent_computation(fake_pair):
    fake_pair[1].image_valid[[3, 17]] = True  # skipped in one backbone only
    fake_pair[1].image_valid[[30]] = False
    for t in ("images",):
        ok = fake_pair[1].image_valid
        fake_pair[1]._faiss[t] = build_index(fake_pair[1].image_vectors[ok], np.flatnonzero(ok))
    res = search_indexes(list(fake_pair), texts=QUERIES, k=12, depth=20)
    assert res.score_kind == "rrf" and RRF_K == 60
    assert any("reciprocal rank fusion" in n and "not a cosine" in n for n in res.notes)
    want = _independent_rrf(fake_pair, QUERIES, 12, 20)
    got = list(res.frame[["query_id", "rank", "row_id", "score"]].itertuples(index=False))
    assert [(a, b, c) for a, b, c, _ in got] == [(a, b, c) for a, b, c, _ in want]
    np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], rtol=1e-12)


def test_rrf_fuse_small_example():
    scores, ids = rrf_fuse([np.array([[3, 1, -1]]), np.array([[1, 2, 3]])], 4, rrf_k=60)
    assert ids.tolist() == [[1, 3, 2, -1]]
    np.testing.assert_allclose(
        scores[0], [1 / 62 + 1 / 61, 1 / 61 + 1 / 63, 1 / 62, 0.0], rtol=1e-12
    )


# ------------------------------------------------------------------ bad input (library)
def test_k_larger_than_collection_returns_everything_with_a_note(fake):
    frame = search_text(fake, "a photo of a cat", k=1000)
    assert len(frame) == 58 and frame["rank"].tolist() == list(range(1, 59))
    assert frame.attrs["notes"] == [
        "k=1000 is more than the 58 searchable images; returning all 58."
    ]


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k(fake, k):
    with pytest.raises(UserInputError, match="k must be a positive integer"):
        search_text(fake, "a cat", k=k)


@pytest.mark.parametrize("queries", ["", "   ", ["a cat", ""]])
def test_empty_query(fake, queries):
    with pytest.raises(UserInputError, match="Empty text query"):
        search_text(fake, queries)


def test_nothing_to_search_for(fake):
    with pytest.raises(UserInputError, match="Nothing to search for"):
        search_indexes(fake, texts=[], images=[])


def test_unreadable_query_images(fake, tmp_path):
    with pytest.raises(DataError, match="missing.jpg': missing file"):
        search_image(fake, tmp_path / "missing.jpg")
    with pytest.raises(DataError, match="it is a folder"):
        search_image(fake, tmp_path)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(DataError, match="notes.jpg.*cannot identify image file"):
        search_image(fake, [fake.root / "img_001.jpg", bad])
    assert fake.encoder().calls == 0  # bad files fail before any model is used
    _write_jpeg(tmp_path / "other.jpg")  # decodable, but the encoder skips it
    with pytest.raises(DataError, match="other.jpg': unsupported image"):
        search_image(fake, [fake.root / "img_001.jpg", tmp_path / "other.jpg"])


def test_fusing_different_datasets_is_an_error(tmp_path):
    a, b = FakeIndex(tmp_path / "a", 1), FakeIndex(tmp_path / "b", 2, n=30)
    with pytest.raises(UserInputError, match="same dataset"):
        search_indexes([a, b], texts="a cat")


# ------------------------------------------------------------------ CLI
@pytest.fixture()
def cli_fakes(monkeypatch, fake_pair):
    opened = []

    def open_fake(dataset_dir, backbone):
        opened.append(backbone)
        return {"fake1": fake_pair[0], "fake2": fake_pair[1]}[backbone]

    monkeypatch.setattr(search_mod, "_open_index", open_fake)
    return fake_pair, opened


def _run(*args):
    return CliRunner().invoke(main, ["search", *args])


def test_cli_table(cli_fakes):
    res = _run("a photo of a dog", "--index", "x", "--backbone", "fake1", "-k", "3")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "query: a photo of a dog"
    assert lines[1].split() == ["rank", "score", "row", "id", "file", "label", "caption"]
    assert len(lines) == 5 and lines[2].split()[0] == "1"
    assert res.stderr == ""


def test_cli_json_queries_file_where(cli_fakes, tmp_path):
    qfile = tmp_path / "q.txt"
    qfile.write_text("a photo of a cat\n\na photo of a horse\n")
    res = _run(
        "--queries-file",
        str(qfile),
        "--index",
        "x",
        "--backbone",
        "fake1",
        "--where",
        "label!=cat",
        "-k",
        "4",
        "--json",
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert len(hits) == 8
    assert [h["query"] for h in hits] == ["a photo of a cat"] * 4 + ["a photo of a horse"] * 4
    assert {"query", "rank", "score", "row_id", "file", "label"} <= set(hits[0])
    assert all(h["label"] != "cat" for h in hits)
    assert hits[0]["score_kind"] == "cosine"
    want = search_text(
        cli_fakes[0][0], ["a photo of a cat", "a photo of a horse"], 4, where="label!=cat"
    )
    assert [h["row_id"] for h in hits] == want["row_id"].tolist()


def test_cli_image_to_captions_json(cli_fakes):
    img = str(cli_fakes[0][0].root / "img_011.jpg")
    res = _run(
        "--image",
        img,
        "--to",
        "captions",
        "--index",
        "x",
        "--backbone",
        "fake1",
        "--json",
        "-k",
        "2",
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert {"text", "image_row_id"} <= set(hits[0]) and hits[0]["query"] == img


def test_cli_fusion_says_so(cli_fakes):
    res = _run("a photo of a cow", "--index", "x", "--backbone", "fake1", "--backbone", "fake2")
    assert res.exit_code == 0, res.output
    assert "reciprocal rank fusion" in res.stdout.splitlines()[0]
    assert "not a cosine" in res.stderr and cli_fakes[1] == ["fake1", "fake2"]
    res = _run(
        "a photo of a cow", "--index", "x", "--backbone", "fake1", "--backbone", "fake2", "--json"
    )
    assert json.loads(res.stdout)[0]["score_kind"] == "rrf"
    assert "reciprocal rank fusion" in res.stderr


def test_cli_k_larger_than_collection(cli_fakes):
    res = _run("a cat", "--index", "x", "--backbone", "fake1", "-k", "500", "--json")
    assert res.exit_code == 0
    assert len(json.loads(res.stdout)) == 58
    assert (
        res.stderr.strip() == "Note: k=500 is more than the 58 searchable images; returning all 58."
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "fake1"], "Nothing to search for"),
        (["", "--backbone", "fake1"], "Empty text query"),
        (["a cat", "--backbone", "fake1", "-k", "0"], "k must be a positive integer"),
        (["a cat", "--backbone", "fake1", "-k", "-2"], "k must be a positive integer"),
        (["--image", "nope.jpg", "--backbone", "fake1"], "Cannot read query image 'nope.jpg'"),
        (["a cat", "--backbone", "fake1", "--where", "colour=red"], "Unknown column 'colour'"),
        (["--queries-file", "missing.txt", "--backbone", "fake1"], "Cannot read queries file"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(cli_fakes, args, message):
    res = _run(*args, "--index", "x")
    assert res.exit_code == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_cli_unreadable_image_file(cli_fakes, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00\x01")
    res = _run("--image", str(bad), "--index", "x", "--backbone", "fake1")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "cannot identify image file" in res.stderr


def test_index_kind_is_read_per_matrix_from_the_manifest(fake):
    fake.manifest = {"index": {"kind": "ivf", "images": {"kind": "flat"}, "captions": {}}}
    assert is_exact(fake, "images")
    assert not is_exact(fake, "captions")
    fake.manifest = {"index": {"kind": "flat"}}
    assert is_exact(fake, "captions")


# ------------------------------------------------------------------ a real store
# The store code of clipindex.store with the stand-in encoders of fixtures_store
# (vectors from decoded pixels, no weights): search end to end through open_index.
@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    from fixtures_store import install_fakes, make_image_dataset

    from clipindex.store import build_store

    root = tmp_path_factory.mktemp("search-toy")
    ds = make_image_dataset(root / "data", n_per_class=15)
    (root / "data" / ds.images["file"][4]).write_text("not a jpeg")  # a skipped row
    kw = {"batch_size": 8, "progress": False, "workers": 0}
    with pytest.MonkeyPatch.context() as mp:
        install_fakes(mp)
        build_store(ds, ["fake-a", "fake-b"], out=root / "out", **kw)
        build_store(ds, ["fake-a"], out=root / "approx", index_kind="ivf", dtype="float16", **kw)
    return root / "out" / "toy", root / "approx" / "toy", ds


@pytest.fixture()
def fake_encoders(use_fake_encoders, monkeypatch):
    """fixtures_store's stand-in encoder, plus ``encode_images`` (the Encoder contract)."""

    def encode_images(self, files, *, batch_size=None, workers=None, progress=True):
        parts, skipped = [], []
        for batch in self.iter_image_batches(
            files, batch_size=batch_size, workers=workers, progress=progress
        ):
            parts.append(batch.vectors)
            skipped.extend(batch.skipped)
        return np.concatenate(parts), skipped

    monkeypatch.setattr(use_fake_encoders, "encode_images", encode_images, raising=False)
    return use_fake_encoders


def test_store_text_search_equals_brute_force(toy_store, fake_encoders):
    from clipindex.store import open_index

    ddir, _, ds = toy_store
    texts = ["a photo of a cat", "a photo of a dog", "a red thing"]
    res = search_indexes(open_index(ddir, "fake-a"), texts=texts, k=9, where="split=test")
    idx = open_index(ddir, "fake-a")
    assert not idx.image_valid[4] and idx.image_valid.sum() == 29
    scores, ids = brute_force(
        idx.image_vectors,
        idx.text_vectors(texts),
        9,
        idx.image_valid,
        rows=np.flatnonzero(ds.images["split"] == "test"),
    )
    _assert_matches(res.frame, scores, ids, 3)
    assert 4 not in set(search_text(idx, texts, k=100)["row_id"])


def test_store_images_find_themselves(toy_store, fake_encoders):
    from clipindex.store import open_index

    ddir, _, ds = toy_store
    idx = open_index(ddir, "fake-a")
    rows = np.flatnonzero(idx.image_valid)
    paths = [ds.root / ds.images["file"][r] for r in rows]
    frame = search_image(idx, paths, k=1)  # all 29 in one encode call
    assert frame["row_id"].tolist() == rows.tolist()
    np.testing.assert_allclose(frame["score"], 1.0, atol=1e-5)
    with pytest.raises(DataError, match="Cannot read query image .*cat/004.jpg"):
        search_image(idx, [paths[0], ds.root / ds.images["file"][4]])


def test_store_approximate_float16_scores_are_exact(toy_store, fake_encoders):
    from clipindex.store import open_index

    _, adir, ds = toy_store
    idx = open_index(adir, "fake-a")
    assert idx.manifest["index"]["images"]["kind"] == "ivf"
    frame = search_captions(idx, ["a photo of a cat", "a photo of a dog"], k=12)
    scores, ids = brute_force(
        idx.caption_vectors,
        idx.text_vectors(["a photo of a cat", "a photo of a dog"]),
        12,
        idx.caption_valid,
    )
    _assert_matches(frame, scores, ids, 2)


def test_store_cli_fusion_equals_independent_rrf(toy_store, fake_encoders):
    from clipindex.store import open_index

    ddir, _, _ = toy_store
    texts = ["a photo of a cat", "a photo of a dog"]
    qfile = ddir.parent.parent / "queries.txt"
    qfile.write_text("\n".join(texts) + "\n")
    res = _run(
        "--queries-file",
        str(qfile),
        "--index",
        str(ddir),
        "--backbone",
        "fake-a",
        "--backbone",
        "fake-b",
        "-k",
        "6",
        "--json",
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    indexes = [open_index(ddir, b) for b in ("fake-a", "fake-b")]
    want = _independent_rrf(indexes, texts, 6, 100)
    assert [(h["query_id"], h["rank"], h["row_id"]) for h in hits] == [w[:3] for w in want]
    np.testing.assert_allclose([h["score"] for h in hits], [w[3] for w in want], rtol=1e-9)
    assert "reciprocal rank fusion" in res.stderr and hits[0]["score_kind"] == "rrf"


# ------------------------------------------------------------------ the demo world
# The small demo world built with the three shipped tiny backbones (``demo_store``).
DEMO_CLASSES = ("cat", "dog", "cow", "sheep", "horse")


def _demo_file(demo_world: Path, rel: str) -> Path:
    for candidate in (demo_world / rel, demo_world / "val" / rel):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(rel)


# The demo's own sample: ``clipindex demo`` indexes 200 images a class (demo.yaml, seed 42)
# of the val split of the default-scale world, seed 0. Seeds 1 and 2 are worlds the tiny
# backbones never saw, sampled the same way. Each world's whole val split (about 350 a
# class) is indexed once; the demo's sample is a ``--where coco_id=...`` filter on it, and
# the sampled figures draw further random 200-a-class samples from it.
TOP10_WORLD_SEEDS = (0, 1, 2)
FUSED = "fused"
N_SAMPLES = 100


@pytest.fixture(scope="module")
def top10_figures(val_only_worlds: dict, tmp_path_factory) -> dict:
    """Two tables of "a photo of a {class}" searches:

    ``exact``: (world seed, backbone or "fused", class) -> how many of the top 10 show
    the class, searched with ``search_indexes`` over the demo protocol's own sample;
    ``passes``: (world seed, backbone or "fused") -> the share of ``N_SAMPLES`` seeded
    random 200-a-class samples of the whole val split in which every class has 8+ of 10.
    "fused" is the three backbones' reciprocal rank fusion (``rrf_fuse``, depth 100).
    """
    import torch

    from clipindex import tiny
    from clipindex.search import RRF_DEPTH, rrf_fuse
    from clipindex.sources import load_dataset
    from clipindex.store import build_store, open_index

    torch.set_num_threads(2)
    config = "builtin:demo"
    prompts = [f"a photo of a {c}" for c in DEMO_CLASSES]
    exact, passes = {}, {}
    for seed in TOP10_WORLD_SEEDS:
        root = val_only_worlds[seed]
        demo = load_dataset(config, root=root).images
        assert demo["label"].value_counts().to_dict() == dict.fromkeys(DEMO_CLASSES, 200)
        whole = load_dataset(config, root=root, per_class=None, support_per_class=None)
        store = build_store(
            whole,
            list(tiny.TINY_BACKBONES),
            workers=0,
            batch_size=128,
            out=tmp_path_factory.mktemp(f"s{seed}"),
            progress=False,
        )[0].parent
        indexes = {b: open_index(store, b) for b in tiny.TINY_BACKBONES}
        in_demo = "coco_id=" + ",".join(map(str, demo["coco_id"]))
        table = indexes[tiny.TINY_BACKBONES[0]].images
        labels = table["label"].to_numpy()
        assert sorted(labels[np.isin(table["coco_id"], demo["coco_id"])]) == sorted(demo["label"])
        for name, chosen in [
            *((b, [i]) for b, i in indexes.items()),
            (FUSED, list(indexes.values())),
        ]:
            frame = search_indexes(chosen, texts=prompts, k=10, where=in_demo).frame
            for q, cls in enumerate(DEMO_CLASSES):
                hits = frame[frame["query_id"] == q]
                assert len(hits) == 10
                exact[seed, name, cls] = int((hits["label"] == cls).sum())

        # Random samples: rank each sample's rows by exact search over the stored vectors
        # (what a search of a store holding just that sample returns), fuse with RRF.
        queries = {b: i.text_vectors(prompts) for b, i in indexes.items()}
        rng = np.random.default_rng(seed)
        ok = dict.fromkeys([*indexes, FUSED], 0)
        for _ in range(N_SAMPLES):
            rows = np.concatenate(
                [rng.choice(np.flatnonzero(labels == c), 200, replace=False) for c in DEMO_CLASSES]
            )
            rankings = []
            for b, index in indexes.items():
                _, ids = brute_force(index.image_vectors, queries[b], RRF_DEPTH, rows=rows)
                rankings.append(ids)
                ok[b] += _all_eight(ids[:, :10], labels)
            ok[FUSED] += _all_eight(rrf_fuse(rankings, 10)[1], labels)
        for name, n in ok.items():
            passes[seed, name] = n / N_SAMPLES
    return {"exact": exact, "passes": passes}


def _all_eight(top: np.ndarray, labels: np.ndarray) -> bool:
    """Every query row q (class DEMO_CLASSES[q]) has 8+ of its class among ``top[q]``."""
    return all((labels[top[q]] == c).sum() >= 8 for q, c in enumerate(DEMO_CLASSES))


def _top10_misses(top10: dict, keep) -> tuple[dict, str]:
    chosen = {key: n for key, n in top10.items() if keep(key[0], key[1])}
    table = ", ".join(f"seed {s} {b}/{c}: {n}" for (s, b, c), n in sorted(chosen.items()))
    return {key: n for key, n in chosen.items() if n < 8}, table


# Issue 6's bar, on the demo world: each tiny backbone alone and the three fused put
# 8-10 of the class in the top 10, for every class. Measured 2026-11-24 (cat, dog, horse,
# sheep, cow): tiny-rn 9 10 10 10 9, tiny-vit 10 10 9 9 8, tiny-vit-s 10 9 10 9 8,
# fused 10 9 9 10 10.
@pytest.mark.slow
def test_demo_prompt_finds_its_class_in_the_top_10(top10_figures):
    missed, table = _top10_misses(top10_figures["exact"], lambda seed, name: seed == 0)
    assert not missed, f"fewer than 8 of 10 for {missed}; all: {table}"


# The same sample drawn from two worlds the backbones never saw. Measured 2026-11-24
# (worlds 1 / 2): tiny-rn 8 9 9 9 9 / 9 9 10 10 9, tiny-vit 10 9 9 10 8 / 10 10 10 10 10,
# tiny-vit-s 10 10 10 10 8 / 7 10 9 6 9, fused 10 10 9 10 9 / 9 10 9 10 10.
@pytest.mark.slow
def test_held_out_worlds_prompt_top_10(top10_figures):
    missed, table = _top10_misses(
        top10_figures["exact"], lambda seed, name: seed != 0 and (seed, name) != (2, "tiny-vit-s")
    )
    assert not missed, f"fewer than 8 of 10 for {missed}; all: {table}"


@pytest.mark.xfail(
    strict=True,
    reason="tiny-vit-s alone on world 2's demo-size sample: cat 7, sheep 6 of 10 "
    "(three dogs among its cats; measured 2026-11-24)",
)
@pytest.mark.slow
def test_held_out_world_2_prompt_top_10_tiny_vit_s(top10_figures):
    missed, table = _top10_misses(
        top10_figures["exact"], lambda seed, name: (seed, name) == (2, "tiny-vit-s")
    )
    assert not missed, f"fewer than 8 of 10 for {missed}; all: {table}"


# How often the bar holds over 100 random 200-a-class samples of each world's whole val
# split. Measured 2026-12-07 with open_clip's own pixels (full JPEG decode; worlds
# 0 / 1 / 2): tiny-rn 1.00 / .92 / 1.00, tiny-vit .86 / .81 / 1.00, tiny-vit-s .65 / .94 /
# .45, fused .99 / 1.00 / 1.00 (2026-11-24, draft decoding: tiny-vit-s .77 / .97 / .57;
# the tiny backbones were trained on draft-decoded pixels). A single tiny backbone passes
# most samples, but for tiny-vit-s on world 2, the shortfall the strict xfail above
# records; fusing the three passes nearly all.
@pytest.mark.slow
def test_prompt_top_10_over_random_samples(top10_figures):
    passes = top10_figures["passes"]
    table = ", ".join(f"seed {s} {b}: {p:.2f}" for (s, b), p in sorted(passes.items()))
    assert all(p >= 0.95 for (s, b), p in passes.items() if b == FUSED), table
    weak = (2, "tiny-vit-s")
    assert all(p >= 0.5 for key, p in passes.items() if key != weak), table
    assert passes[weak] >= 0.4, table


def test_demo_search_equals_brute_force(demo_store):
    from clipindex import tiny
    from clipindex.store import open_index

    texts = [f"a photo of a {c}" for c in DEMO_CLASSES] + ["a dog carrying a frisbee"]
    for backbone in tiny.TINY_BACKBONES:
        index = open_index(demo_store, backbone)
        for where in (None, "split=test", "label!=dog"):
            frame = search_text(index, texts, k=15, where=where)
            mask = where_mask(index.images, where)
            scores, ids = brute_force(
                index.image_vectors,
                index.text_vectors(texts),
                15,
                index.image_valid,
                rows=np.flatnonzero(mask),
            )
            _assert_matches(frame, scores, ids, len(texts))
        caps = search_captions(index, texts, k=5)
        scores, ids = brute_force(
            index.caption_vectors, index.text_vectors(texts), 5, index.caption_valid
        )
        _assert_matches(caps, scores, ids, len(texts))


def test_demo_image_finds_itself(demo_store, demo_world):
    from clipindex import tiny
    from clipindex.store import open_index

    for backbone in tiny.TINY_BACKBONES:
        index = open_index(demo_store, backbone)
        rows = np.flatnonzero(index.image_valid)[:: max(1, len(index.images) // 12)][:12]
        paths = [_demo_file(demo_world, index.images["file"][r]) for r in rows]
        frame = search_image(index, paths, k=3)
        top = frame[frame["rank"] == 1]
        assert top["row_id"].tolist() == rows.tolist(), backbone
        assert (top["score"] > 0.999).all(), backbone


def test_demo_installed_command_fuses_three_backbones(demo_store):
    import subprocess
    import sys

    from clipindex import tiny

    exe = Path(sys.executable).parent / "clipindex"
    args = [
        str(exe),
        "search",
        "a photo of a sheep",
        "--index",
        str(demo_store),
        "-k",
        "5",
        "--json",
        "--where",
        "split=test",
    ]
    for backbone in tiny.TINY_BACKBONES:
        args += ["--backbone", backbone]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["score_kind"] == "rrf" for h in hits)
    assert "reciprocal rank fusion" in done.stderr
    # the fused ranking equals an independent RRF over the three backbones (filtered)
    from clipindex.store import open_index

    indexes = [open_index(demo_store, b) for b in tiny.TINY_BACKBONES]
    rows = np.flatnonzero(where_mask(indexes[0].images, "split=test"))
    want = _independent_rrf(indexes, ["a photo of a sheep"], 5, 100, rows=rows)
    assert [h["row_id"] for h in hits] == [w[2] for w in want]
    np.testing.assert_allclose([h["score"] for h in hits], [w[3] for w in want], rtol=1e-9)


def test_docstring_examples_run():
    import doctest

    import clipindex.search.filters

    for module in (search_mod, clipindex.search.filters):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted >= 2, module.__name__


# ----------------------------------------------------------------------------- paging, filters
class _ShortIndex:
    """An approximate-kind index whose FAISS search finds only its 2 best allowed rows
    (what IVF does when a selective filter leaves its probed cells nearly empty)."""

    def __init__(self, n: int = 300, dim: int = 16, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, dim)).astype(np.float32)
        self.image_vectors = x / np.linalg.norm(x, axis=1, keepdims=True)
        self.image_valid = np.ones(n, dtype=bool)
        self.image_valid[::7] = False  # skipped / tombstoned rows
        self.manifest = {"index": {"kind": "ivf", "images": {"kind": "ivf"}}}

    def search(self, q, k, *, target="images", rows=None):
        allowed = np.arange(len(self.image_vectors)) if rows is None else np.asarray(rows)
        sims = q @ self.image_vectors[allowed].T
        top = allowed[np.argsort(-sims, axis=1)[:, :2]]
        ids = np.full((len(q), k), -1, dtype=np.int64)
        ids[:, :2] = top
        return np.zeros(ids.shape, np.float32), ids


def test_a_filter_on_an_approximate_index_still_returns_k_exact_hits():
    from clipindex.search.ranking import rank

    index = _ShortIndex()
    rng = np.random.default_rng(11)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rows = np.flatnonzero(np.arange(300) % 3 == 0)  # a filter passing 100 rows
    scores, ids = rank(index, q, 10, "images", rows)
    passing = rows[index.image_valid[rows]]
    sims = q @ index.image_vectors[passing].T
    expected = passing[np.argsort(-sims, axis=1, kind="stable")[:, :10]]
    assert (ids >= 0).all()  # k hits, although the index found 2 per query
    np.testing.assert_array_equal(ids, expected)  # and they are the exact top-10
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :10], atol=1e-6)
    assert not np.isin(ids, np.flatnonzero(~index.image_valid)).any()
    _, few = rank(index, q, 10, "images", np.array([0, 1, 2, 3]))  # 3 valid rows pass
    assert (few[:, :3] >= 0).all() and (few[:, 3:] == -1).all()  # the store is exhausted


def test_offset_pages_concatenate_to_one_query_and_cli_agrees(demo_store):
    from clipindex.search import search_store

    whole = search_store(demo_store, ["tiny-vit"], texts=["a photo of a dog"], k=10)
    pages = [search_store(demo_store, ["tiny-vit"], texts=["a photo of a dog"], k=5,
                          offset=o) for o in (0, 5)]
    joined = pd.concat([p.frame for p in pages], ignore_index=True)
    pd.testing.assert_frame_equal(joined, whole.frame)
    assert pages[1].frame["rank"].tolist() == [6, 7, 8, 9, 10]
    res = CliRunner().invoke(main, ["search", "a photo of a dog", "--index", str(demo_store),
                                    "--backbone", "tiny-vit", "-k", "5", "--offset", "5",
                                    "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == pages[1].records()
    with pytest.raises(UserInputError, match="offset"):
        search_store(demo_store, ["tiny-vit"], texts=["a dog"], k=5, offset=-1)
