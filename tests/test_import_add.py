"""``clipindex add FOLDER --index STORE`` of a store made by ``clipindex import``: a
clip-retrieval output that grew (or lost a part) brought into the store as a new
generation, nothing encoded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fixtures_robust import assert_one_line_error, run_cli
from test_import import BACKBONE, DIM, make_layout, unit

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

FIRST = {0: 30, 1: 25}


def write_part(folder: Path, suffix: int, n: int, first: int, *, seed: int, dim: int = DIM,
               text: bool = True, nan_row: int | None = None, zero_row: int | None = None,
               extra: dict[str, Any] | None = None) -> np.ndarray:
    """Part ``suffix`` of ``n`` rows whose image paths the store lacks (numbered from
    ``first``); returns its raw vectors."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float16)
    if nan_row is not None:
        x[nan_row, 3] = np.nan
    if zero_row is not None:
        x[zero_row] = 0
    np.save(folder / "img_emb" / f"img_emb_{suffix}.npy", x)
    if text:
        np.save(folder / "text_emb" / f"text_emb_{suffix}.npy",
                rng.normal(size=(n, dim)).astype(np.float16))
    pd.DataFrame({"image_path": [f"/data/photos/{first + j:05d}.jpg" for j in range(n)],
                  "caption": [f"caption of image {first + j}" for j in range(n)],
                  "label": rng.choice(["cat", "dog"], n),
                  "nsfw": rng.choice(["UNLIKELY", "LIKELY"], n),
                  "aesthetic": rng.uniform(0, 10, n), **(extra or {})}
                 ).to_parquet(folder / "metadata" / f"metadata_{suffix}.parquet")
    return x.astype(np.float32)


def imported(tmp: Path, sizes: dict[int, int] = FIRST, *, kind: str = "flat",
             backbone: str = BACKBONE, dim: int = DIM, text: bool = True,
             pretrained: str = "default") -> tuple[Path, Path, np.ndarray]:
    """A clip-retrieval folder ``tmp/clip`` imported into ``tmp/out/clip``."""
    raw = make_layout(tmp / "clip", sizes, dim=dim, text=text)
    res = run_cli("import", tmp / "clip", "--backbone", backbone, "--pretrained", pretrained,
                  "--out", tmp / "out", "--index-kind", kind)
    assert res.exit_code == 0, res.output
    return tmp / "clip", tmp / "out" / "clip", raw


def add(folder: Path | str, ddir: Path, *more: str) -> dict[str, Any]:
    res = run_cli("add", folder, "--index", ddir, "--json", *more)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert res.stderr.strip().splitlines()[-1] == out["summary"]
    return out


def snapshot(ddir: Path) -> dict[str, str]:
    """Every file of the store (the build lock aside) and its content's hash."""
    return {str(p.relative_to(ddir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ddir.rglob("*")) if p.is_file() and "lock" not in p.name}


def _open(ddir: Path, backbone: str = BACKBONE) -> Any:
    from clipindex import open_index

    return open_index(ddir, backbone, verify=True)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_new_part_is_added_from_its_vectors_and_found_first(tmp_path: Path, kind: str
                                                               ) -> None:
    sizes = FIRST if kind == "flat" else {0: 1200, 1: 1000}
    folder, ddir, raw = imported(tmp_path, sizes, kind=kind)
    n0 = sum(sizes.values())
    before = _open(ddir)
    new = write_part(folder, 2, 40, n0, seed=7, zero_row=5,
                     extra={"source": ["web"] * 40})  # a column the store lacks
    out = add(folder, ddir)
    assert (out["added"], out["removed"], out["generation"]) == (40, 0, 1)
    assert out["from_embeddings"] and out["encoded"] == {BACKBONE: 0}
    assert out["summary"] == "added 40 rows from embeddings (nothing encoded), removed 0"
    index = _open(ddir)
    assert len(index.images) == n0 + 40 and len(index.captions) == n0 + 40
    np.testing.assert_allclose(index.image_vectors[n0:], unit(new), atol=2e-3)
    np.testing.assert_allclose(index.image_vectors[:n0], before.image_vectors)
    assert index.images["file"].iat[n0] == f"{n0:05d}.jpg"
    assert index.images["source"].iat[n0] == "web" and index.images["source"].iloc[:n0].isna().all()
    assert index.captions["text"].iat[n0 + 3] == f"caption of image {n0 + 3}"
    assert not index.image_valid[n0 + 5]  # the zero vector: a skipped row
    assert index.manifest["n_skipped"] == 1 and index.manifest["last_add"]["from_embeddings"]
    assert index.index_description("images")["kind"] == kind
    for row in (n0, n0 + 17, n0 + 39):
        res = run_cli("search", "--like", row, "--index", ddir, "--backbone", BACKBONE,
                      "-k", 3, "--json")
        hits = json.loads(res.stdout)
        assert hits[0]["row_id"] == row and hits[0]["score"] == pytest.approx(1, abs=1e-3)
        _, ids = index.search(unit(new[row - n0:row - n0 + 1]), 5)
        assert ids[0][0] == row and n0 + 5 not in ids[0]
    # a reader opened before the add keeps the old generation
    assert len(before.images) == n0
    _, ids = before.search(unit(raw[:1]), 3)
    assert ids[0][0] == 0 and ids[0].max() < n0
    # the recall recorded after the add is measured on held-out rows at generation 1
    desc = index.index_description("images")
    if kind == "ivf":
        assert desc["recall_measured_at_generation"] == 1 and desc["held_out_queries"] > 0
        assert 0.5 <= desc["recall_at_10"] <= 1
    history = json.loads((ddir / "dataset.json").read_text())["history"]
    assert [(h["generation"], h["added"]) for h in history] == [(1, 40)]
    assert json.loads((ddir / "dataset.json").read_text())["imported"]["parts"] == [0, 1, 2]


def test_a_removed_part_is_tombstoned_and_a_second_add_is_a_no_op(tmp_path: Path) -> None:
    folder, ddir, raw = imported(tmp_path, {0: 30, 1: 25, 2: 20})
    for sub, ext in (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet")):
        (folder / sub / f"{sub}_1.{ext}").unlink()
    out = add(folder, ddir)
    assert (out["added"], out["removed"], out["generation"]) == (0, 25, 1)
    index = _open(ddir)
    gone = np.arange(30, 55)
    assert not index.image_valid[gone].any() and index.image_valid[:30].all()
    _, ids = index.search(unit(raw[gone]), 10)
    assert not np.isin(ids, gone).any()
    caps = run_cli("search", "--like", 0, "--to", "captions", "--index", ddir, "--backbone",
                   BACKBONE, "-k", 75, "--json")
    assert not {h["row_id"] for h in json.loads(caps.stdout)} & set(gone.tolist())
    before = snapshot(ddir)
    again = add(folder, ddir)
    assert (again["added"], again["removed"], again["generation"]) == (0, 0, 1)
    assert again["summary"] == "added 0 rows from embeddings (nothing encoded), removed 0"
    named = add(folder, ddir, "--backbone", BACKBONE)  # the backbone resolved by name
    assert (named["added"], named["removed"], named["generation"]) == (0, 0, 1)
    assert snapshot(ddir) == before


def test_nan_dim_and_text_errors_are_one_line_and_leave_the_store_unchanged(
        tmp_path: Path) -> None:
    folder, ddir, _ = imported(tmp_path)
    before = snapshot(ddir)
    write_part(folder, 2, 10, 55, seed=3, nan_row=4)
    assert_one_line_error(run_cli("add", folder, "--index", ddir), "img_emb_2.npy row 4",
                          "NaN")
    assert snapshot(ddir) == before
    write_part(folder, 2, 10, 55, seed=3, dim=32)
    assert_one_line_error(run_cli("add", folder, "--index", ddir), "dims")
    (folder / "img_emb" / "img_emb_2.npy").unlink()
    for name in ("text_emb/text_emb_2.npy", "metadata/metadata_2.parquet"):
        (folder / name).unlink()
    other = tmp_path / "other"
    make_layout(other, {0: 5}, dim=32)
    assert_one_line_error(run_cli("add", other, "--index", ddir), "dim 32", "dim 64")
    write_part(folder, 2, 10, 55, seed=3, text=False)
    assert_one_line_error(run_cli("add", folder, "--index", ddir), "text_emb")
    assert snapshot(ddir) == before


def test_a_text_less_folder_for_a_store_with_caption_vectors_is_an_error(tmp_path: Path
                                                                         ) -> None:
    folder, ddir, _ = imported(tmp_path)
    plain = tmp_path / "plain"
    make_layout(plain, FIRST, text=False)
    before = snapshot(ddir)
    assert_one_line_error(run_cli("add", plain, "--index", ddir), "caption vectors",
                          "text_emb")
    assert snapshot(ddir) == before


def test_paths_outside_the_recorded_root_and_a_root_option_are_refused(
        tmp_path: Path) -> None:
    folder, ddir, _ = imported(tmp_path)
    write_part(folder, 2, 5, 55, seed=1)
    meta = pd.read_parquet(folder / "metadata" / "metadata_2.parquet")
    meta["image_path"] = "/elsewhere/" + meta["image_path"].str.slice(13)
    meta.to_parquet(folder / "metadata" / "metadata_2.parquet")
    before = snapshot(ddir)
    assert_one_line_error(run_cli("add", folder, "--index", ddir), "not under the store's",
                          "/data/photos")
    assert_one_line_error(run_cli("add", folder, "--index", ddir, "--root", tmp_path),
                          "--root")
    assert snapshot(ddir) == before


def test_a_store_built_by_encoding_refuses_an_add_of_embeddings(store_copy: Path,
                                                                 tmp_path: Path) -> None:
    make_layout(tmp_path / "clip", FIRST)
    before = snapshot(store_copy)
    assert_one_line_error(run_cli("add", tmp_path / "clip", "--index", store_copy),
                          "not by `clipindex import`")
    assert snapshot(store_copy) == before


def test_a_text_less_store_imported_with_pretrained_none_takes_a_new_part(tmp_path: Path
                                                                         ) -> None:
    """ViT-B-32 with random weights: nothing is loaded or encoded, the dim comes from the
    store; a folder with text_emb is fine for a store without captions."""
    folder, ddir, _ = imported(tmp_path, {0: 12}, backbone="ViT-B-32", dim=512, text=False,
                               pretrained="none")
    write_part(folder, 1, 6, 12, seed=2, dim=512, text=False)
    out = add(folder, ddir)
    assert (out["added"], out["added_captions"]) == (6, 0)
    index = _open(ddir, "ViT-B-32__none")
    assert len(index.images) == 18 and len(index.captions) == 0
    _, ids = index.search(index.image_vectors[15:16], 1)
    assert ids[0][0] == 15


def test_a_folder_at_a_url_is_fetched_and_added(tmp_path: Path, moto_s3: Any) -> None:
    fs = moto_s3.fs()
    opts = [x for k, v in moto_s3.options.items() for x in ("--storage-option", f"{k}={v}")]
    local = tmp_path / "grow"
    make_layout(local, FIRST)
    url = moto_s3.url("grow")
    fs.put(str(local) + "/", f"{moto_s3.bucket}/grow/", recursive=True)
    res = run_cli("import", url, "--backbone", BACKBONE, "--out", tmp_path / "out",
                  "--index-kind", "flat", *opts)
    assert res.exit_code == 0, res.output
    ddir = tmp_path / "out" / "grow"
    new = write_part(local, 2, 8, 55, seed=9)
    for sub, ext in (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet")):
        fs.put_file(str(local / sub / f"{sub}_2.{ext}"),
                    f"{moto_s3.bucket}/grow/{sub}/{sub}_2.{ext}")
    out = add(url, ddir, *opts)
    assert (out["added"], out["removed"]) == (8, 0)
    index = _open(ddir)
    np.testing.assert_allclose(index.image_vectors[55:], unit(new), atol=2e-3)
    assert index.dataset_info["imported"]["folder"] == url
    assert not list((tmp_path / "out").glob(".*"))  # the staging copy is gone


def test_the_add_of_embeddings_loads_no_model(tmp_path: Path) -> None:
    """The whole ``clipindex add`` of a new part, in a fresh process: no torch, no
    open_clip (nothing is encoded, no weights are resolved)."""
    import subprocess
    import sys

    folder, ddir, _ = imported(tmp_path)
    write_part(folder, 2, 6, 55, seed=4)
    code = ("import sys; from clipindex.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code\n"
            "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, "add", str(folder), "--index",
                          str(ddir), "--json"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[0])["added"] == 6 and lines[-1] == "[]", out.stdout + out.stderr


def test_bench_10m_add_step_runs_the_cli_on_a_grown_folder(tmp_path: Path) -> None:
    """``benchmarks/bench_10m.py add`` end to end on a tiny set: gen, truth, import, add."""
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_10m.py"
    src = tmp_path / "src"
    common = ["--n", "3000", "--out", str(src)]

    def step(*args: str) -> list[dict[str, Any]]:
        out = subprocess.run([sys.executable, str(bench), *args, *common], check=True,
                             capture_output=True, text=True)
        return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]

    step("gen", "--part", "1000", "--add", "30", "--centres", "50", "--queries", "40")
    step("truth")
    res = run_cli("import", src, "--backbone", "ViT-B-32", "--pretrained", "none", "--out",
                  tmp_path / "stores", "--name", "s3k", "--dtype", "float16")
    assert res.exit_code == 0, res.output
    first, after = step("add", "--store", str(tmp_path / "stores" / "s3k"), "--work",
                        str(tmp_path / "work"), "--queries", "40", "--warm", "5",
                        "--backbone", "ViT-B-32__none")
    assert first["summary"] == "added 30 rows from embeddings (nothing encoded), removed 0"
    assert first["wall_s"] > 0 and first["peak_rss_gb"] > 0
    assert (after["rows_after"], after["added"], after["generation"]) == (3030, 30, 1)
    assert after["recall_at_10"] >= 0.9
    assert sorted(p.name for p in (tmp_path / "work" / "grown" / "img_emb").iterdir()) == [
        f"img_emb_{i}.npy" for i in range(4)]


def test_extend_copies_the_stored_rows_file_to_file(tmp_path):
    """`add` writes the new generation's matrix: the old rows copied by the kernel (no
    map of either 10 GB matrix in the process), the new rows after them, tombstoned rows
    zeroed; the same bytes as the old rows and the new ones stacked, float16 or not."""
    from clipindex.store.add import _extend

    rng = np.random.default_rng(5)
    for dtype in ("float16", "float32"):
        old = rng.standard_normal((1000, 24)).astype(dtype)
        np.save(tmp_path / f"old-{dtype}.npy", old)
        new = rng.standard_normal((7, 24)).astype(np.float32)
        ok = np.ones(1007, bool)
        ok[[3, 1004]] = False
        got = _extend(tmp_path / f"old-{dtype}.npy", tmp_path / f"new-{dtype}.npy", new, ok,
                      dtype)
        want = np.concatenate([old, new.astype(dtype)])
        want[~ok] = 0
        assert got.dtype == np.dtype(dtype) and got.shape == (1007, 24)
        np.testing.assert_array_equal(np.asarray(got), want)
        np.testing.assert_array_equal(np.load(tmp_path / f"new-{dtype}.npy"), want)
