"""Answers built from the hit rows only (issue 33): the row-id path equals the path that
read whole columns, for every direction, ``--where``, fusion and ``--offset``; the first
caption of an image is right after ``add`` and ``compact``; a format-1 store (tables
without hashes) still answers the same way; a query decodes no table it does not need.

The reference (``_old_*``) is the code the row-id path replaced, kept here verbatim: it
picked the k hits' metadata out of whole columns (``to_numpy()``), found first captions
with ``isin`` over every caption and joined the tables to filter captions.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from clipindex.search import search_indexes
from clipindex.search.filters import where_mask
from clipindex.search.fusion import RRF_DEPTH, rrf_fuse
from clipindex.search.ranking import rank, target_table, where_rows
from clipindex.store import open_index
from clipindex.store.tables import FirstCaptions, StoreTable

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

TESTS = Path(__file__).resolve().parent
TEXTS = ["a photo of a cat", "a photo of a sheep in a field", "a dog on a road"]


# ----------------------------------------------------------------------------- the old path
def _old_first_captions(index: Any, image_rows: np.ndarray) -> np.ndarray:
    caps = index.captions
    if len(caps) == 0 or "image_row_id" not in caps or len(image_rows) == 0:
        return np.array([""] * len(image_rows), dtype=object)
    mine = caps[caps["image_row_id"].isin(np.unique(image_rows))]
    first = mine.sort_values("row_id").drop_duplicates("image_row_id")
    lookup = dict(zip(first["image_row_id"].tolist(), first["text"].tolist(), strict=True))
    return np.array([lookup.get(int(r), "") for r in image_rows], dtype=object)


def _old_hits_frame(index: Any, target: str, labels: list[str], scores: np.ndarray,
                    ids: np.ndarray) -> pd.DataFrame:
    qi, slot = np.nonzero(ids >= 0)
    hit = ids[qi, slot]
    images = index.images
    frame = pd.DataFrame({"query_id": qi.astype(np.int64), "query": [labels[i] for i in qi],
                          "rank": (slot + 1).astype(np.int64),
                          "score": scores[qi, slot].astype(np.float64),
                          "row_id": hit.astype(np.int64)})
    if target == "images":
        image_rows = hit
    else:
        image_rows = index.captions["image_row_id"].to_numpy()[hit].astype(np.int64)
        frame["image_row_id"] = image_rows
    frame["file"] = images["file"].to_numpy()[image_rows] if len(hit) else []
    table = images if target == "images" else index.captions
    label = table["label"].to_numpy()[hit] if "label" in table else [None] * len(hit)
    frame["label"] = label if len(hit) else []
    if target == "images":
        frame["caption"] = _old_first_captions(index, hit)
    else:
        frame["text"] = index.captions["text"].to_numpy()[hit] if len(hit) else []
    return frame


def _old_records(frame: pd.DataFrame, score_kind: str, exhaustive: bool) -> list[dict]:
    records = frame.to_dict(orient="records")
    for record in records:
        for key, value in record.items():
            if value is not None and pd.isna(value):
                record[key] = None
        record.update(score_kind=score_kind, exact=score_kind == "cosine",
                      exhaustive=exhaustive)
    return records


def _old_search(indexes: list[Any], queries: list[np.ndarray], labels: list[str], k: int,
                target: str, where: list[str] | None, offset: int) -> pd.DataFrame:
    k = k + offset
    mask = where_mask(target_table(indexes[0], target), where) if where else None
    rows = np.flatnonzero(mask).astype(np.int64) if where else None
    valid = np.zeros(len(mask) if mask is not None else len(
        indexes[0].images if target == "images" else indexes[0].captions), dtype=bool)
    for index in indexes:
        valid |= np.asarray(index.image_valid if target == "images" else index.caption_valid)
    available = valid if mask is None else mask & valid
    rankings = []
    for index, q in zip(indexes, queries, strict=True):
        own = np.asarray(index.image_valid if target == "images" else index.caption_valid)
        pool = int((own & available).sum())
        want = min(k if len(indexes) == 1 else max(k, RRF_DEPTH), pool)
        rankings.append(rank(index, q, want, target, rows))
    if len(indexes) == 1:
        scores, ids = rankings[0]
    else:
        scores, ids = rrf_fuse([r[1] for r in rankings], min(k, int(available.sum())))
    frame = _old_hits_frame(indexes[0], target, labels, scores, ids)
    return frame[frame["rank"] > offset].reset_index(drop=True) if offset else frame


# ----------------------------------------------------------------------------- agreement
@pytest.fixture(scope="module")
def demo_indexes(demo_store: Path) -> list[Any]:
    from clipindex import tiny

    return [open_index(demo_store, name) for name in tiny.TINY_BACKBONES]


def _query_images(index: Any, demo_world: Path) -> list[Path]:
    files = index.images["file"].tolist()
    return [p for p in (demo_world / f for f in (files[3], files[150])) if p.is_file()]


@pytest.mark.parametrize("target", ["images", "captions"])
@pytest.mark.parametrize("where", [None, ["label=cat,dog"], ["split=test", "label!=cow"],
                                   ["width>=200"]])
@pytest.mark.parametrize("fused,offset", [(False, 0), (False, 3), (True, 0), (True, 4)])
def test_row_id_path_equals_the_whole_column_path(demo_indexes, demo_world, target, where,
                                                  fused, offset) -> None:
    from clipindex.encode import encode_query_images

    indexes = demo_indexes if fused else demo_indexes[:1]
    images = _query_images(indexes[0], demo_world)
    assert len(images) == 2
    if where and "width>=200" in where and "width" not in indexes[0].images:
        pytest.fail("the demo store lost its width column")
    got = search_indexes(indexes, texts=TEXTS, images=images, k=6, target=target,
                         where=where, offset=offset)
    queries = [np.concatenate([i.text_vectors(TEXTS), encode_query_images(i.encoder(), images)])
               for i in indexes]
    labels = TEXTS + [str(p) for p in images]
    want = _old_search(indexes, queries, labels, 6, target, where, offset)
    assert len(want) == len(TEXTS + images) * 6
    pd.testing.assert_frame_equal(got.frame, want)
    assert got.records() == _old_records(want, got.score_kind, got.exhaustive)


@pytest.mark.parametrize("where", [["label=cat,dog"], ["split!=test"], ["width<300", "label=cow"],
                                   ["height>=250"], ["label=nothing"]])
def test_coded_filters_equal_where_mask_on_both_tables(demo_indexes, where) -> None:
    index = demo_indexes[0]
    for target in ("images", "captions"):
        want = where_mask(target_table(index, target), where)
        np.testing.assert_array_equal(where_rows(index, target, where), want)


def test_a_query_decodes_only_the_columns_it_returns(demo_store: Path) -> None:
    index = open_index(demo_store, "tiny-vit")
    images, captions = index.table("images"), index.table("captions")
    assert images._frame is None and captions._frame is None  # nothing decoded at open
    search_indexes(index, texts=TEXTS[:1], k=5)
    assert images._frame is None and captions._frame is None
    assert set(images._arrow) == {"file", "label"} and set(captions._arrow) == {"text"}
    assert set(captions._ints) == {"image_row_id"}


def test_store_table_values_equal_the_frame(demo_store: Path) -> None:
    index = open_index(demo_store, "tiny-vit")
    frame = pd.read_parquet(demo_store / "images.parquet")
    table = index.table("images")
    rows = np.array([0, 7, len(frame) - 1, 7])
    def plain(values: list[Any]) -> list[Any]:  # a list column: arrays in pandas
        return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]

    for column in frame.columns:
        assert table.take(column, rows) == plain(frame[column].iloc[rows].tolist()), column
    pd.testing.assert_frame_equal(index.images, frame)


# ----------------------------------------------------------------------------- first captions
def _brute_first(owner: np.ndarray, valid: np.ndarray, images: np.ndarray) -> list[int]:
    out = []
    for image in images.tolist():
        rows = [c for c in range(len(owner)) if owner[c] == image and valid[c]]
        out.append(min(rows) if rows else -1)
    return out


@pytest.mark.parametrize("shuffled", [False, True])
def test_first_captions_equal_brute_force_sorted_or_not(shuffled: bool) -> None:
    rng = np.random.default_rng(0)
    owner = np.sort(rng.integers(0, 40, 150))
    if shuffled:
        rng.shuffle(owner)
    valid = rng.random(150) > 0.3
    images = np.arange(45)  # 40..44 have no caption
    got = FirstCaptions(owner, valid, 45)(images)
    assert got.tolist() == _brute_first(owner, valid, images)
    assert (got == -1).sum() >= 5


def _check_first_captions(ddir: Path) -> None:
    index = open_index(ddir, "fake-a")
    caps = index.captions
    owner = caps["image_row_id"].to_numpy()
    live = np.flatnonzero(index.image_valid)
    want = _brute_first(owner, np.asarray(index.caption_valid), live)
    assert index.first_captions(live).tolist() == want
    assert -1 not in want  # every live image has a live caption
    got = search_indexes(index, texts=["a photo of a cat"], k=len(live))
    texts = caps["text"].to_numpy()
    by_row = dict(zip(live.tolist(), [texts[w] for w in want], strict=True))
    assert [by_row[r] for r in got.frame["row_id"]] == got.frame["caption"].tolist()


def test_first_captions_right_after_add_and_compact(use_fake_encoders, tmp_path: Path) -> None:
    from fixtures_store import dataset_from_files, write_images

    from clipindex.store import add_to_store, build_store, compact_store

    root = tmp_path / "data"
    rel = write_images(root, 8)
    ddir = build_store(dataset_from_files(root, rel[:12]), ["fake-a"], out=tmp_path / "idx",
                       workers=0, progress=False)[0].parent
    _check_first_captions(ddir)
    add_to_store(dataset_from_files(root, rel[3:]), index=ddir, workers=0, progress=False)
    index = open_index(ddir, "fake-a")
    assert (~index.caption_valid).sum() == 6  # three removed images, two captions each
    _check_first_captions(ddir)
    add_to_store(dataset_from_files(root, rel[1:]), index=ddir, workers=0, progress=False)
    _check_first_captions(ddir)  # removed rows come back as new rows
    compact_store(ddir)
    index = open_index(ddir, "fake-a")
    assert index.caption_valid.all()
    _check_first_captions(ddir)


# ----------------------------------------------------------------------------- older stores
def test_format_1_store_answers_as_the_old_path(tmp_path: Path) -> None:
    copy = tmp_path / "store-v1"
    shutil.copytree(TESTS / "data" / "store-v1", copy)
    index = open_index(copy / "indexes" / "colors", "tiny-vit")
    assert index.manifest["format_version"] == 1
    for target, where in (("images", None), ("captions", None), ("images", ["label!=red"])):
        got = search_indexes(index, texts=["a small red picture"], k=4, target=target,
                             where=where)
        want = _old_search([index], [index.text_vectors(["a small red picture"])],
                           ["a small red picture"], 4, target, where, 0)
        pd.testing.assert_frame_equal(got.frame, want)
        assert got.records() == _old_records(want, "cosine", got.exhaustive)


def test_store_table_from_parquet_reads_only_the_footer(tmp_path: Path) -> None:
    frame = pd.DataFrame({"row_id": np.arange(5), "file": list("abcde"),
                          "label": ["x", None, "y", "x", None]})
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    table = StoreTable.from_parquet((tmp_path / "t.parquet").read_bytes())
    assert len(table) == 5 and table.columns == ["row_id", "file", "label"]
    assert table._frame is None and not table._arrow
    assert table.take("label", np.array([1, 2])) == [None, "y"]
    codes, values = table.codes("label")
    pd.testing.assert_series_equal(values.iloc[codes].reset_index(drop=True),
                                   pd.read_parquet(tmp_path / "t.parquet")["label"])
    pd.testing.assert_frame_equal(table.frame, pd.read_parquet(tmp_path / "t.parquet"))
