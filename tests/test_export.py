"""``clipindex export`` (a store in clip-retrieval's layout): export then import gives a
store whose searches answer the same images with the same scores; removed and skipped
images are left out; bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fixtures_robust import assert_one_line_error, run_cli

BACKBONE = "tiny-vit"
QUERIES = ["a red square", "a blue thing", "green"]


@pytest.fixture(scope="module")
def removed_store(colors_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``colors_store`` after an add that removed ``blue/02.jpg`` (tombstoned);
    it also holds the truncated image the build skipped."""
    base = tmp_path_factory.mktemp("export")
    data = base / "colors"
    shutil.copytree(colors_store.parent.parent / "data" / "colors", data)
    ddir = base / "indexes" / "colors"
    shutil.copytree(colors_store, ddir)
    (data / "blue" / "02.jpg").unlink()
    caps = pd.read_csv(data / "captions.csv")
    caps[caps["file"] != "blue/02.jpg"].to_csv(data / "captions.csv", index=False)
    res = run_cli("add", data, "--index", ddir, "--no-progress", "--workers", "0")
    assert res.exit_code == 0, res.output
    return ddir


def _hits(ddir: Path, *args: Any) -> list[tuple[str, float]]:
    res = run_cli("search", *args, "--index", ddir, "--backbone", BACKBONE, "-k", 20,
                  "--json")
    assert res.exit_code == 0, res.output
    root = Path(json.loads((ddir / "dataset.json").read_text())["root"])
    return [(str((root / h["file"]).resolve()), h["score"]) for h in json.loads(res.stdout)]


def _same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    assert [f for f, _ in a] == [f for f, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)


def test_export_then_import_answers_as_the_store(removed_store: Path, tmp_path: Path) -> None:
    from clipindex import open_index

    original = open_index(removed_store, BACKBONE)
    dead = ~np.asarray(original.image_valid)
    assert dead.sum() == 2  # one removed, one skipped at build
    res = run_cli("export", removed_store, "--backbone", BACKBONE, "--out", tmp_path / "clip",
                  "--json")
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert (facts["n_images"], facts["n_removed"], facts["n_skipped"]) == \
        (len(original.images) - 2, 1, 1)
    folder = tmp_path / "clip"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.*")) == [
        "img_emb/img_emb_0.npy", "metadata/metadata_0.parquet", "text_emb/text_emb_0.npy"]
    meta = pd.read_parquet(folder / "metadata" / "metadata_0.parquet")
    live = np.flatnonzero(~dead)
    root = Path(original.dataset_info["root"])
    assert meta["image_path"].tolist() == [str(root / f) for f in
                                           original.images["file"].iloc[live]]
    assert {"image_path", "caption", "label", "split"} <= set(meta.columns)
    assert "row_id" not in meta and "file" not in meta
    vectors = np.load(folder / "img_emb" / "img_emb_0.npy")
    np.testing.assert_array_equal(vectors, original.image_vectors[live])
    caps = original.captions
    first = caps[caps["image_row_id"] == live[0]].sort_values("row_id").iloc[0]
    assert meta["caption"].iloc[0] == first["text"]
    np.testing.assert_array_equal(np.load(folder / "text_emb" / "text_emb_0.npy")[0],
                                  original.caption_vectors[int(first["row_id"])])

    res = run_cli("import", folder, "--backbone", BACKBONE, "--out", tmp_path / "again",
                  "--name", "colors")
    assert res.exit_code == 0, res.output
    again = tmp_path / "again" / "colors"
    for query in QUERIES:
        _same(_hits(removed_store, query), _hits(again, query))
    image = root / original.images["file"].iloc[live[3]]
    _same(_hits(removed_store, "--image", image), _hits(again, "--image", image))
    assert open_index(again, BACKBONE).images["label"].tolist() == \
        original.images["label"].iloc[live].tolist()


def test_export_api_and_bad_input(removed_store: Path, tmp_path: Path) -> None:
    from clipindex import export_store

    result = export_store(removed_store, BACKBONE, out=tmp_path / "empty")
    assert result.n_images == 10 and result.captions and result.dim == 64
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert_one_line_error(run_cli("export", removed_store, "--backbone", BACKBONE,
                                  "--out", full), "not an empty folder")
    assert (full / "keep.txt").read_text() == "mine"
    assert_one_line_error(run_cli("export", removed_store, "--backbone", BACKBONE,
                                  "--out", removed_store / "clip"), "store")
    assert_one_line_error(run_cli("export", removed_store, "--backbone", BACKBONE,
                                  "--out", removed_store), "store")
    assert_one_line_error(run_cli("export", removed_store, "--backbone", "nope",
                                  "--out", tmp_path / "x"))
    assert_one_line_error(run_cli("export", tmp_path / "nowhere", "--backbone", BACKBONE,
                                  "--out", tmp_path / "y"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not list(tmp_path.glob(".*export*"))


@pytest.mark.parametrize("args", [
    ["export", "/nonexistent/ds", "--backbone", "tiny-vit", "--out", "s3://no-bucket/x"],
    ["import", "s3://no-bucket/x", "--backbone", "tiny-vit"],
])
def test_an_unreachable_object_store_is_one_line(args, tmp_path, monkeypatch) -> None:
    # No credentials anywhere: botocore raises its own NoCredentialsError (not an OSError).
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli(*args), "cannot reach s3://no-bucket/x")
