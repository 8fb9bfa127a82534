"""The corruption campaign (issue 18): every store file x every damage x every command
that reads the store, in-process on a tiny real store (``colors_store``, tiny-vit).

Files: both vector matrices, both FAISS indexes, both tables, the manifest and the text
cache. Damages: delete, truncate, flip bytes in the middle, flip the header, replace with
valid but different content. ``info``, ``info --verify``, ``classify`` and ``search`` run
on every damage; ``bench`` and ``report`` on one damage per file. A command either refuses
in one line (exit 2, naming the file and the fix) or, for the text cache only, recovers:
one warning and the very answer of a run without a cache. Never a traceback, never a
silently different answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures_robust import assert_one_line_error, run_cli

QUERY = "a small red picture"
FILES = ("tiny-vit/images.npy", "tiny-vit/captions.npy", "tiny-vit/images.faiss",
         "tiny-vit/captions.faiss", "images.parquet", "captions.parquet",
         "tiny-vit/manifest.json", "tiny-vit/text_cache.npz")
DAMAGES = ("delete", "truncate", "flip-middle", "flip-header", "replace")
CACHE = "tiny-vit/text_cache.npz"


def _search(ddir: Path):
    return run_cli("search", QUERY, "--index", ddir, "--backbone", "tiny-vit", "-k", 5,
                   "--json")


def _classify(ddir: Path):
    return run_cli("classify", "--index", ddir, "--backbone", "tiny-vit", "--method",
                   "prompt", "--json")


@pytest.fixture(scope="module")
def warmed(colors_store: Path, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the store whose text cache holds the campaign's texts, and the stdout
    of search and classify on it before any cache existed."""
    ddir = tmp_path_factory.mktemp("campaign") / "indexes" / "colors"
    shutil.copytree(colors_store, ddir)
    clean = {}
    for name, run in (("search", _search), ("classify", _classify)):
        res = run(ddir)
        assert res.exit_code == 0 and not res.stderr.strip(), res.output
        clean[name] = res.stdout
    assert (ddir / CACHE).is_file()
    return ddir, clean


def _replacement(path: Path) -> bytes:
    """Valid content of the same kind that is not what the build wrote."""
    import io

    name = path.name
    if name.endswith(".npy"):
        buf = io.BytesIO()
        np.save(buf, np.roll(np.load(path), 1, axis=0))
        return buf.getvalue()
    if name.endswith(".faiss"):
        from clipindex.index import files
        from clipindex.index import kinds as indexes

        vectors = np.load(path.with_suffix(".npy")).astype(np.float32)
        index = indexes.build_index(np.roll(vectors, 1, axis=0), np.arange(len(vectors)))
        files.save_index(index, path.with_suffix(".other"))
        data = path.with_suffix(".other").read_bytes()
        path.with_suffix(".other").unlink()
        return data
    if name.endswith(".parquet"):
        frame = pd.read_parquet(path)
        column = "label" if name == "images.parquet" else "text"
        frame[column] = np.roll(frame[column].to_numpy(), 1)
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return buf.getvalue()
    if name == "manifest.json":
        manifest = json.loads(path.read_text())
        manifest["skipped"], manifest["n_skipped"] = [], 0  # a valid manifest, not ours
        return (json.dumps(manifest, indent=2) + "\n").encode()
    from clipindex.store.textcache import TextCache

    other = path.with_suffix(".other.npz")  # a sound cache of other weights
    TextCache(other, "0" * 64, 64).save({QUERY: np.ones(64, np.float32) / 8.0})
    data = other.read_bytes()
    other.unlink()
    return data


def damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip-middle":
        data[len(data) // 2: len(data) // 2 + 4] = bytes(b ^ 0xFF for b in
                                                         data[len(data) // 2: len(data) // 2 + 4])
    elif how == "flip-header":
        data[1] ^= 0xFF
    else:
        data = bytearray(_replacement(path))
    path.write_bytes(bytes(data))


def _recovered(res, clean: str, how: str) -> None:
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    assert res.exit_code == 0, res.output
    assert res.stdout == clean
    warnings = [line for line in res.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == (0 if how == "delete" else 1), res.stderr
    assert all("text cache" in w for w in warnings)
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", FILES)
def test_every_damage_is_refused_in_one_line_or_recovered(warmed, tmp_path, name, how):
    source, clean = warmed
    ddir = tmp_path / "indexes" / "colors"
    shutil.copytree(source, ddir)
    damage(ddir / name, how)
    file_name = Path(name).name
    for args in (["info", ddir], ["info", "--verify", ddir]):
        res = run_cli(*args)
        if name == CACHE:  # derived data: info neither reads nor judges it
            assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        else:
            line = assert_one_line_error(res, file_name)
            assert "clipindex build" in line or "--verify" in line
    for run, key in ((_classify, "classify"), (_search, "search")):
        if name == CACHE:
            _recovered(run(ddir), clean[key], how)
            damage_again = how != "delete"
            if damage_again:  # the recovery rewrote the cache: damage it for the next one
                damage(ddir / name, how)
        else:
            line = assert_one_line_error(run(ddir), file_name)
            assert "clipindex build" in line and "--rebuild" in line


# ----------------------------------------------------------------------------- bench/report
def _bench_config(path: Path, data_root: Path) -> Path:
    cfg = {"name": "campaign", "dataset": {"name": "colors", "source": "folder",
                                           "root": str(data_root)},
           "backbones": ["tiny-vit"], "methods": ["prompt"], "ensembles": [],
           "retrieval": False}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _bench(config: Path, out: Path, index_root: Path):
    return run_cli("bench", config, "--out", out, "--index-root", index_root, "--workers", 0,
                   "--no-progress")


def _metrics(out: Path) -> dict:
    (record,) = sorted((out / "records").glob("*.json"))
    rec = json.loads(record.read_text())
    return {k: rec[k] for k in ("accuracy", "confusion", "n") if k in rec}


@pytest.mark.parametrize("name", FILES)
def test_bench_and_report_refuse_or_recover_from_a_damaged_store(
        colors_store, tmp_path, name):
    data_root = colors_store.parent.parent / "data" / "colors"
    config = _bench_config(tmp_path / "bench.yaml", data_root)
    index_root = tmp_path / "indexes"
    shutil.copytree(colors_store, index_root / "colors")
    res = _bench(config, tmp_path / "clean", index_root)
    assert res.exit_code == 0, res.output
    clean = _metrics(tmp_path / "clean")
    assert clean["n"] == 11  # 12 images, blue/03.jpg truncated (skipped)
    how = "truncate" if name.endswith(".json") else "flip-middle"
    # the report of a finished run over a store damaged since: refused (not drawn)
    damage(index_root / "colors" / name, how)
    res = run_cli("report", tmp_path / "clean", "--out", tmp_path / "r.html")
    if name == CACHE:
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    else:
        assert_one_line_error(res, Path(name).name)
    # a bench over the damaged store rebuilds what is damaged: the clean answer, or a
    # one-line refusal; never another answer
    res = _bench(config, tmp_path / "again", index_root)
    if res.exit_code == 0:
        assert _metrics(tmp_path / "again") == clean
        assert "Traceback" not in res.output
        assert run_cli("info", "--verify", index_root / "colors").exit_code == 0
    else:
        assert_one_line_error(res, Path(name).name)
