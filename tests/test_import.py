"""``clipindex import`` (clip-retrieval's output as a store) and ``search --like`` /
serve's ``like=`` (a stored image searched by its stored vector)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clipindex.cli import main

DIM = 64  # tiny-vit's embed_dim
SIZES = {0: 30, 1: 25, 2: 12, 10: 20}  # part 10 sorts after 2 (numeric, not by name)
BACKBONE = "tiny-vit"


def make_layout(folder: Path, sizes: dict[int, int] = SIZES, *, text: bool = True,
                dim: int = DIM, seed: int = 0, zero_row: int | None = None) -> np.ndarray:
    """A clip-retrieval output folder; returns the raw image vectors in row order."""
    rng = np.random.default_rng(seed)
    for sub in ("img_emb", "metadata") + (("text_emb",) if text else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows, out = 0, []
    for i in sorted(sizes):
        n = sizes[i]
        centres = rng.normal(size=(3, dim))
        x = (centres[rng.integers(0, 3, n)] + 0.7 * rng.normal(size=(n, dim)))
        x = x.astype(np.float16)
        if zero_row is not None and rows <= zero_row < rows + n:
            x[zero_row - rows] = 0
        np.save(folder / "img_emb" / f"img_emb_{i}.npy", x)
        out.append(x.astype(np.float32))
        if text:
            np.save(folder / "text_emb" / f"text_emb_{i}.npy",
                    rng.normal(size=(n, dim)).astype(np.float16))
        pd.DataFrame({
            "image_path": [f"/data/photos/{rows + j:05d}.jpg" for j in range(n)],
            "caption": [f"caption of image {rows + j}" for j in range(n)],
            "label": rng.choice(["cat", "dog"], n),
            "nsfw": rng.choice(["UNLIKELY", "LIKELY"], n),
            "aesthetic": rng.uniform(0, 10, n),
        }).to_parquet(folder / "metadata" / f"metadata_{i}.parquet")
        rows += n
    return np.concatenate(out)


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0).astype(np.float32)


def brute_force(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None
                ) -> list[list[int]]:
    scores = unit(q) @ unit(x).T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    return [list(np.argsort(-s, kind="stable")[:k]) for s in scores]


def run(*args: str) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 4-part layout with text_emb imported into ``OUT/clipout`` (zero vector at row 7)."""
    base = tmp_path_factory.mktemp("import")
    raw = make_layout(base / "clipout", zero_row=7)
    res = run("import", base / "clipout", "--backbone", BACKBONE, "--out", base / "out",
              "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n_images"] == sum(SIZES.values())
    return base / "out" / "clipout", raw


def test_import_gives_a_store_whose_search_is_numpy_brute_force(imported: Any) -> None:
    from clipindex import open_index, search_text

    ddir, raw = imported
    index = open_index(ddir, BACKBONE, verify=True)
    assert index.manifest["imported"]["layout"] == "clip-retrieval"
    assert index.manifest["engine"] == "import" and index.manifest["n_skipped"] == 1
    np.testing.assert_allclose(index.image_vectors, unit(raw), atol=1e-6)
    assert index.images["file"].tolist()[:2] == ["00000.jpg", "00001.jpg"]
    assert index.dataset_info["root"] == "/data/photos"
    q = index.text_vectors(["a photo of a cat"])
    hits = search_text(index, ["a photo of a cat"], k=8)
    valid = np.ones(len(raw), bool)
    valid[7] = False
    assert hits["row_id"].tolist() == brute_force(raw, q, 8, valid)[0]
    # --like: the stored vector, the row first with cosine 1
    res = run("search", "--like", 3, "--index", ddir, "--backbone", BACKBONE, "-k", 6, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert [h["row_id"] for h in got] == brute_force(raw, raw[3:4], 6, valid)[0]
    assert got[0]["row_id"] == 3 and got[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # captions: text_emb row i is image i's caption
    caps = run("search", "--like", 3, "--to", "captions", "--index", ddir, "--backbone",
               BACKBONE, "-k", 3, "--json")
    text = np.concatenate([np.load(ddir.parent.parent / "clipout" / "text_emb" /
                                   f"text_emb_{i}.npy") for i in sorted(SIZES)])
    assert [h["row_id"] for h in json.loads(caps.output)] == brute_force(
        text.astype(np.float32), raw[3:4], 3)[0]
    assert json.loads(caps.output)[0]["text"].startswith("caption of image")


def test_extra_metadata_columns_filter_with_where(imported: Any) -> None:
    ddir, raw = imported
    images = pd.read_parquet(ddir / "images.parquet")
    res = run("search", "--like", 0, "--index", ddir, "--backbone", BACKBONE, "-k", 5,
              "--where", "nsfw=UNLIKELY", "--where", "aesthetic>3", "--json")
    assert res.exit_code == 0, res.output
    allowed = ((images["nsfw"] == "UNLIKELY") & (images["aesthetic"] > 3)).to_numpy().copy()
    allowed[7] = False
    assert [h["row_id"] for h in json.loads(res.output)] == brute_force(
        raw, raw[0:1], 5, allowed)[0]


def test_info_verify_and_classify_on_an_imported_store(imported: Any) -> None:
    from clipindex import classify

    ddir, _ = imported
    res = run("info", ddir, "--verify")
    assert res.exit_code == 0 and "every file matches" in res.output, res.output
    result = classify(ddir, [BACKBONE], "prototype", shots=5)
    assert set(result.predictions["predicted"]) <= {"cat", "dog"}
    assert len(result.predictions) == sum(SIZES.values()) - 1 - 10  # zero row, support


def test_import_without_text_emb_has_no_captions(tmp_path: Path) -> None:
    from clipindex import import_store, open_index

    raw = make_layout(tmp_path / "clip", {0: 10, 1: 15}, text=False)
    result = import_store(tmp_path / "clip", BACKBONE, out=tmp_path / "out", name="mine",
                          dtype="float16", index_kind="flat")
    index = open_index(tmp_path / "out" / "mine", BACKBONE)
    assert result.n_captions == 0 and len(index.captions) == 0
    assert index.stored["images"].dtype == np.float16
    np.testing.assert_allclose(index.image_vectors, unit(raw), atol=2e-3)
    scores, ids = index.search(index.image_vectors[4:5], 5)
    assert ids[0].tolist() == brute_force(index.image_vectors, index.image_vectors[4:5], 5)[0]


def _no_img_emb(p: Path) -> None:
    for f in (p / "img_emb").iterdir():
        f.unlink()


def _missing_metadata_part(p: Path) -> None:
    (p / "metadata" / "metadata_1.parquet").unlink()


def _row_mismatch(p: Path) -> None:
    frame = pd.read_parquet(p / "metadata" / "metadata_1.parquet")
    frame.iloc[:-1].to_parquet(p / "metadata" / "metadata_1.parquet")


def _nan_vector(p: Path) -> None:
    x = np.load(p / "img_emb" / "img_emb_1.npy")
    x[3, 5] = np.nan
    np.save(p / "img_emb" / "img_emb_1.npy", x)


def _text_shape(p: Path) -> None:
    np.save(p / "text_emb" / "text_emb_0.npy", np.zeros((3, DIM), np.float16))


def _no_image_path(p: Path) -> None:
    frame = pd.read_parquet(p / "metadata" / "metadata_0.parquet")
    frame.rename(columns={"image_path": "url"}).to_parquet(p / "metadata" / "metadata_0.parquet")


def _not_a_matrix(p: Path) -> None:
    np.save(p / "img_emb" / "img_emb_0.npy", np.array(["a", "b"]))


BAD = {
    "no img_emb files": (_no_img_emb, "no img_emb"),
    "a metadata part missing": (_missing_metadata_part, "differ"),
    "npy and parquet row counts differ": (_row_mismatch, "rows but"),
    "a NaN vector": (_nan_vector, "NaN"),
    "text_emb of another shape": (_text_shape, "shape"),
    "no image_path column": (_no_image_path, "image_path"),
    "npy not a float matrix": (_not_a_matrix, "float matrix"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_layouts_are_one_error_line_and_leave_out_unchanged(tmp_path: Path, case: str
                                                               ) -> None:
    spoil, words = BAD[case]
    make_layout(tmp_path / "clip", {0: 10, 1: 15})
    spoil(tmp_path / "clip")
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("kept")
    before = tree(out)
    res = run("import", tmp_path / "clip", "--backbone", BACKBONE, "--out", out)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and words in lines[0], res.output
    assert tree(out) == before


def test_dim_mismatch_and_existing_dataset_are_one_line_and_write_nothing(tmp_path: Path
                                                                           ) -> None:
    make_layout(tmp_path / "clip", {0: 5}, dim=32)
    out = tmp_path / "fresh"
    res = run("import", tmp_path / "clip", "--backbone", BACKBONE, "--out", out)
    assert res.exit_code == 2 and "dim 32" in res.output and "dim 64" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()
    make_layout(tmp_path / "ok", {0: 5})
    assert run("import", tmp_path / "ok", "--backbone", BACKBONE, "--out", out).exit_code == 0
    before = tree(out)
    again = run("import", tmp_path / "ok", "--backbone", BACKBONE, "--out", out)
    assert again.exit_code == 2 and "already exists" in again.output
    assert tree(out) == before


def test_like_errors_are_one_line(imported: Any) -> None:
    ddir, raw = imported
    for row, words in ((len(raw), "row ids are 0.."), (7, "no vector")):
        res = run("search", "--like", row, "--index", ddir, "--backbone", BACKBONE)
        assert res.exit_code == 2 and words in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


def test_like_problem_names_tombstoned_rows() -> None:
    from types import SimpleNamespace

    from clipindex.search.query import like_problem

    fake = SimpleNamespace(images=pd.DataFrame({"file": ["a", "b", "c"]}),
                           image_valid=np.array([True, False, False]),
                           dataset_info={"tombstones": {"images": [1], "captions": []}},
                           manifest={"backbone": "x"})
    assert like_problem([fake], 0) is None
    assert like_problem([fake], 1)[0] == "removed"
    assert like_problem([fake], 2)[0] == "skipped"
    assert like_problem([fake], 3)[0] == "range" and like_problem([fake], -1)[0] == "range"


def test_serve_like_equals_cli_like_without_image_files(imported: Any) -> None:
    """The imported store's image files do not exist: ``like=`` reads only vectors."""
    from fastapi.testclient import TestClient

    from clipindex.serve import ServedStore, ServeOptions, create_app

    ddir, raw = imported
    assert not Path("/data/photos/00003.jpg").exists()
    opts = ServeOptions(index_dir=str(ddir))
    with TestClient(create_app(store=ServedStore(opts)), base_url="http://127.0.0.1") as client:
        served = client.get("/search", params={"like": 3, "k": 6})
        assert served.status_code == 200, served.text
        cli = run("search", "--like", 3, "--index", ddir, "--backbone", BACKBONE, "-k", 6,
                  "--json")
        assert served.json() == json.loads(cli.output)
        for row, status in ((7, 400), (len(raw), 404)):
            bad = client.get("/search", params={"like": row})
            assert bad.status_code == status and set(bad.json()) == {"error"}, bad.text
